"""Open a cohort (a folder of cases in a known layout, one image file, or a DICOM series) and load its cases.

>>> cohort = open_cohort("ACDC/training")        # layout detected: cohort.layout == "acdc"
>>> case = load_case(cohort.records[0])           # label remapped to canonical (1 LV, 2 MYO, 3 RV)

Layouts are described in :mod:`CMRSynthLib.data.cohort_layouts`; besides those, ``open_cohort`` accepts
one image file (layout ``"file"``, its label beside it as ``name_gt.ext`` / ``_label`` / ``_seg`` /
``_mask``) and a DICOM series folder (layout ``"dicom"``, no label).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from CMRSynthLib.data import cohort_layouts as layouts
from CMRSynthLib.data import ssl4mis
from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.conventions import LABEL_CONVENTIONS, UNKNOWN, to_canonical
from CMRSynthLib.data.dicom import is_dicom_folder, read_dicom_series
from CMRSynthLib.data.volume import Volume, check_finite, check_same_geometry, read_frames, read_volume
from CMRSynthLib.errors import InputError

LAYOUTS = ("cmrsynth", "acdc", "acdc-h5", "mnms1", "mnms2", "generic", "file", "dicom")
# Layouts whose label numbering is fixed by the source; a different --label-convention is a contradiction.
FIXED_CONVENTIONS = {"acdc": "acdc", "acdc-h5": "acdc", "mnms1": "mnms", "mnms2": "mnms"}


@dataclass(frozen=True)
class Cohort:
    """The cases of one source. ``problems`` are sentences about files found wrong or skipped while listing."""

    layout: str
    root: Path
    records: list[CaseRecord]
    problems: list[str] = field(default_factory=list)

    def patients(self) -> list[str]:
        return sorted({r.patient for r in self.records})

    def cases(self) -> Iterator[Case]:
        """Each case loaded and checked (raises :class:`InputError` at the first bad one)."""
        for record in self.records:
            yield load_case(record)


def open_cohort(path: str | os.PathLike, *, label_convention: str | None = None,
                frame: int | None = None) -> Cohort:
    """List the cases at ``path`` and detect its layout. No voxels are read.

    ``label_convention`` (canonical, acdc, mnms) says how a generic folder, a single file or a phantom
    cohort numbers its labels (default canonical); ACDC and M&Ms have their own. ``frame`` picks the phase
    of a DICOM cine series. Raises :class:`InputError` for a missing or empty folder, an unknown layout,
    or options that do not apply.
    """
    root = Path(path)
    if label_convention is not None and label_convention not in LABEL_CONVENTIONS:
        raise InputError(f"--label-convention {label_convention!r} is unknown; choose one of "
                         f"{', '.join(sorted(LABEL_CONVENTIONS))}")
    if not root.exists():
        raise InputError("not found", path=root)
    if frame is not None and not (root.is_dir() and is_dicom_folder(root)):
        raise InputError(f"--frame {frame} applies only to a DICOM cine series folder", path=root)
    convention = label_convention or "canonical"
    if root.is_file():
        return _single_file(root, convention)
    if not any(root.iterdir()):
        raise InputError("is an empty folder; expected a cohort (ACDC, M&Ms, image/label pairs, phantom) "
                         "or a DICOM series", path=root)
    if is_dicom_folder(root):
        record = CaseRecord(patient=root.name, phase=UNKNOWN, image_path=str(root), frame=frame,
                            label_convention=convention)
        return Cohort("dicom", root, [record])
    layout = layouts.detect_layout(root)
    if layout is None:
        raise InputError("holds no image files (.nii.gz, .nii, .nrrd, .mha, ...) and no DICOM series; "
                         "not a cohort", path=root)
    fixed = FIXED_CONVENTIONS.get(layout)
    if label_convention is not None and fixed is not None and label_convention != fixed:
        raise InputError(f"--label-convention {label_convention} contradicts the detected {layout} layout, "
                         f"whose labels follow the {fixed} convention")
    if layout == "cmrsynth":
        records, problems = layouts.list_cmrsynth(root, convention)
    elif layout == "generic":
        records, problems = layouts.list_generic(root, convention)
    elif layout == "acdc-h5":
        records, problems = ssl4mis.list_ssl4mis(root)
    else:
        records, problems = getattr(layouts, f"list_{layout}")(root)
    if not records:
        raise InputError(f"detected the {layout} layout but found no usable case: " + "; ".join(problems[:5]),
                         path=root)
    return Cohort(layout, root, records, problems)


def _single_file(path: Path, convention: str) -> Cohort:
    label = layouts.label_beside(path)
    stem, _ = layouts.split_suffix(path)
    record = CaseRecord(patient=stem, phase=UNKNOWN, image_path=str(path),
                        label_path=None if label is None else str(label), label_convention=convention)
    problems = [] if label is not None else [f"{path}: no label ({stem}_gt, _label, _seg or _mask) beside it"]
    return Cohort("file", path.parent, [record], problems)


# -- loading --------------------------------------------------------------------------------------------
def _read(path: str, frame: int | None) -> Volume:
    if path.endswith((".h5", ssl4mis.LABEL_KEY)):
        return ssl4mis.read_ssl4mis(path)
    if Path(path).is_dir():
        return read_dicom_series(path, frame=frame)
    if frame is None:
        return read_volume(path)
    frames = read_frames(path)
    if not 0 <= frame < len(frames):
        raise InputError(f"frame {frame} does not exist: the file holds {len(frames)} frame(s)", path=path)
    return frames[frame]


def read_case_image(record: CaseRecord) -> Volume:
    """The image of a case as stored (the record's frame of a 4D file). Unchecked intensities."""
    return _read(record.image_path, record.frame)


def read_label(record: CaseRecord) -> Volume:
    """The label of a case in canonical values (uint8) on its own grid, without reading its image (masks for
    ``cmrsynth sample``). Raises :class:`InputError` naming the label file as :func:`read_case_label` does."""
    if record.label_path is None:
        raise InputError("the case has no label file", path=record.image_path)
    label = _read(record.label_path, record.frame)
    return label.with_array(to_canonical(label.array, record.label_convention, path=record.label_path))


def read_case_label(record: CaseRecord, image: Volume) -> Volume:
    """The label of a case on ``image``'s geometry, in canonical values (uint8).

    Raises :class:`InputError` naming the label file if it is unreadable, lies on another grid, or holds
    values outside the record's convention.
    """
    if record.label_path is None:
        raise InputError("the case has no label file", path=record.image_path)
    label = _read(record.label_path, record.frame)
    check_same_geometry(image, label, image_path=record.image_path, label_path=record.label_path)
    return Volume(to_canonical(label.array, record.label_convention, path=record.label_path), image.ijk_to_ras)


def check_label_not_empty(label: Volume, *, path=None) -> None:
    if not np.any(label.array):
        raise InputError("label map is empty (no LV, MYO or RV voxels)", path=path)


def load_case(record: CaseRecord) -> Case:
    """Read and check one case: finite image, label on the same grid, canonical non-empty labels."""
    image = read_case_image(record)
    check_finite(image, path=record.image_path)
    if record.label_path is None:
        return Case(record, image, None)
    label = read_case_label(record, image)
    check_label_not_empty(label, path=record.label_path)
    return Case(record, image, label)
