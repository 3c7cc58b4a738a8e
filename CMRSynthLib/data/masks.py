"""The masks ``cmrsynth sample`` generates from: one mask file, a folder of masks, or a cohort's labels.

What a path holds is told by the same readers ``inspect`` and ``train`` use (:mod:`.cohorts`):

* a **mask file**: itself; its image, when one lies beside it (``name.ext`` for ``name_gt.ext``, ``_label``,
  ``_seg``, ``_mask``), is its reference;
* a **cohort folder** (ACDC, M&Ms-1/2, the phantom's ``cohort.csv``, SSL4MIS HDF5) or a patient folder of one:
  its label files, each with its case's image as the reference, never the images themselves;
* any other folder (nested, symlinked folders followed): its label-named files (``*_gt``, ``_label``, ``_seg``,
  ``_mask``) with the images beside them; a folder without label names is a folder of masks, every file one;
* a DICOM series is an image, not a mask: refused.

Label convention (:mod:`.conventions`): ``--label-convention`` when given (a cohort whose layout fixes its
numbering refuses a contradicting one), else the layout's own (ACDC: 1 = RV, 3 = LV), else ACDC's when the file
is named as ACDC names its labels (``patientNNN_frameNN_gt.nii.gz``), else canonical. :func:`looks_swapped`
checks the result.

A reference gives the synthetic image its type and intensity range (:mod:`CMRSynthLib.synthesis`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from CMRSynthLib.data.case import CaseRecord
from CMRSynthLib.data.cohort_layouts import (
    ACDC_FRAME, LABEL_SUFFIXES, find_files, is_label_name, split_suffix,
)
from CMRSynthLib.data.conventions import LABEL_CONVENTIONS, UNKNOWN
from CMRSynthLib.data.volume import IMAGE_SUFFIXES, Volume, is_image_file
from CMRSynthLib.errors import InputError

DEFAULT = "canonical"


@dataclass(frozen=True)
class MaskSource:
    """One mask to generate from.

    ``name`` is the stem of the outputs (the label file's name without its label tag, e.g. ``patient001_frame01``
    for ``patient001_frame01_gt.nii.gz``); ``record`` says how to read it (``label_path``, ``frame``,
    ``label_convention``; ``image_path`` is the reference image, or the mask itself when there is none);
    ``convention_from`` says where the convention came from, in words.
    """

    name: str
    record: CaseRecord
    convention_from: str
    has_reference: bool

    @property
    def path(self) -> str:
        return self.record.label_path

    @property
    def convention(self) -> str:
        return self.record.label_convention

    @property
    def reference(self) -> str | None:
        return self.record.image_path if self.has_reference else None


def find_masks(path: str | os.PathLike, *, convention: str | None = None) -> list[MaskSource]:
    """The masks at ``path`` (module notes), in a stable order with distinct output names.

    Raises :class:`InputError` naming the path when it is missing, holds no mask, is an image series, or when
    ``convention`` is unknown or contradicts the layout.
    """
    if convention is not None and convention not in LABEL_CONVENTIONS:
        raise InputError(f"--label-convention {convention!r} is unknown; choose one of "
                         f"{', '.join(sorted(LABEL_CONVENTIONS))}")
    root = Path(path)
    if not root.exists():
        raise InputError("file not found", path=root)
    if root.is_file():
        return [_mask_file(root, convention)]
    return _distinct(_in_folder(root, convention), root)


def read_mask(source: MaskSource) -> Volume:
    """The mask in canonical values (uint8) on its own grid."""
    from CMRSynthLib.data.cohorts import read_label

    return read_label(source.record)


def read_reference(source: MaskSource) -> Volume | None:
    """The image the mask labels, as stored (None without one)."""
    from CMRSynthLib.data.cohorts import read_case_image

    return read_case_image(source.record) if source.has_reference else None


def _mask_file(path: Path, convention: str | None) -> MaskSource:
    from CMRSynthLib.data.cohort_layouts import label_beside

    if not is_image_file(path):
        raise InputError(f"unsupported file type; a mask is one of {', '.join(IMAGE_SUFFIXES)}", path=path)
    label = label_beside(path)
    if label is not None:
        raise InputError(f"is an image with its label {label.name} beside it; give the label with --mask",
                         path=path)
    image = image_beside(path)
    if convention is not None:
        chosen, why = convention, "--label-convention"
    elif _acdc_label_name(path):
        chosen, why = "acdc", "the ACDC file name"
    else:
        chosen, why = DEFAULT, "the default"
    record = CaseRecord(patient=_name(path), phase=UNKNOWN, image_path=str(image or path), label_path=str(path),
                        label_convention=chosen)
    return MaskSource(_name(path), record, why, image is not None)


def _in_folder(root: Path, convention: str | None) -> list[MaskSource]:
    from CMRSynthLib.data.cohort_layouts import detect_layout
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.data.dicom import is_dicom_folder

    if is_dicom_folder(root):
        raise InputError("is a DICOM image series, not a mask; give label masks (.nii.gz, .nii, .nrrd, .mha) or a "
                         "cohort folder with labels", path=root)
    layout = detect_layout(root)
    if layout is None:
        raise InputError("holds no mask files (.nii.gz, .nii, .nrrd, .mha) and no cohort with labels", path=root)
    if layout == "generic":
        return _generic(root, convention)
    cohort = open_cohort(root, label_convention=convention)
    why = "--label-convention" if convention is not None else f"the {layout} layout"
    sources = [MaskSource(_record_name(r), r, why, True) for r in cohort.records if r.label_path]
    if not sources:
        raise InputError(f"is a {layout} cohort without label files; sample needs masks", path=root)
    return sources


def _generic(root: Path, convention: str | None) -> list[MaskSource]:
    """Label-named files with the images beside them; without label names, every file is a mask."""
    files = [p for p in find_files(root, "*") if p.is_file() and is_image_file(p)]
    labels = [p for p in files if is_label_name(p)]
    if labels:
        return [_mask_file(path, convention) for path in labels]
    return [_plain_mask(path, convention) for path in files]


def _plain_mask(path: Path, convention: str | None) -> MaskSource:
    """A file of a folder of masks (no label names, so no image beside it to find)."""
    chosen = convention or DEFAULT
    record = CaseRecord(patient=_name(path), phase=UNKNOWN, image_path=str(path), label_path=str(path),
                        label_convention=chosen)
    return MaskSource(_name(path), record, "--label-convention" if convention else "the default", False)


def image_beside(label: Path) -> Path | None:
    """The image a label file labels (``name.ext`` beside ``name_gt.ext`` etc., any image suffix), or None."""
    stem, _ = split_suffix(label)
    tag = next((t for t in LABEL_SUFFIXES if stem.lower().endswith(t)), None)
    if tag is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = label.with_name(stem[: -len(tag)] + suffix)
        if candidate.is_file():
            return candidate
    return None


def _acdc_label_name(path: Path) -> bool:
    """Whether ``path`` is named as ACDC names its labels: ``patientNNN_frameNN_gt.nii[.gz]``."""
    return "_gt.nii" in path.name and bool(ACDC_FRAME.match(path.name.replace("_gt.nii", ".nii", 1)))


def _name(label_path: str | Path) -> str:
    """A label file's name without its suffix and its label tag: ``case_ED_gt.nii.gz`` → ``case_ED``;
    ``patient001_frame01.h5#label`` → ``patient001_frame01``."""
    stem, _ = split_suffix(str(label_path).split("#")[0])
    if stem.endswith(".h5"):
        stem = stem[: -len(".h5")]
    for tag in LABEL_SUFFIXES:
        if stem.lower().endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)]
    return stem


def _record_name(record: CaseRecord) -> str:
    """A cohort case's output stem: its label's name, with the phase when one file holds several (4D)."""
    name = _name(record.label_path)
    return name if record.frame is None else f"{name}_{record.phase if record.phase != UNKNOWN else record.frame}"


def _distinct(sources: list[MaskSource], root: Path) -> list[MaskSource]:
    """Sources whose names repeat (the same name in several sub-folders) are named after their folders too."""
    counts = Counter(s.name for s in sources)
    renamed = []
    for source in sources:
        if counts[source.name] > 1:
            parts = Path(os.path.relpath(Path(source.path.split("#")[0]).parent, root)).parts
            source = replace(source, name=re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(parts)) + "_" + source.name)
        renamed.append(source)
    clashes = [n for n, c in Counter(s.name for s in renamed).items() if c > 1]
    if clashes:
        raise InputError(f"holds several masks named {clashes[0]}; their outputs would overwrite each other",
                         path=root)
    return renamed
