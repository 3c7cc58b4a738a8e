"""ACDC as the SSL4MIS HDF5 snapshots publish it: ``patientNNN_frameFF.h5`` (a volume) or
``patientNNN_frameFF_slice_K.h5`` (one slice each, K from 1), each holding ``image`` (float32, min-max
normalised per volume) and ``label`` (uint8, ACDC convention 1 RV, 2 MYO, 3 LV), arrays ``(slices, rows,
columns)``, and optional ``{train,val,test}.list`` files naming ``patientNNN_frameFF`` cases.

The files carry **no spacing**. ACDC's own headers give 1.37–1.68 mm in-plane for most patients and 5–10 mm
between slices; a few volumes are stored on about twice the usual matrix (half the spacing). Without the
headers CMRSynth assumes, per file, from its matrix alone (:func:`assumed_spacing`):

- in-plane 1.5625 mm (ACDC's most frequent value, a 400 mm field of view on 256 pixels) when the longer side
  is at most :data:`DOUBLE_MATRIX` pixels, else 1.5625 × 256 / longer side (the doubled matrices);
- 10 mm between slices (ACDC's most frequent slice spacing).

A ``spacing.csv`` beside the files (columns ``patient, row_mm, column_mm, slice_mm``) overrides the
assumption per patient, e.g. with the values of the original NIfTI headers. Every case records which one
applied (``attributes["spacing_source"]``), and :func:`spacing_note` is the sentence inspect, the training
card and the audit report repeat wherever a number depends on it.

Phases: ACDC's ED is the lower frame number, ES the higher (frame01/frame02 in one snapshot, frame01/frameNN
in the other). Groups follow the patient number: 001–020 DCM, 021–040 HCM, 041–060 MINF, 061–080 NOR,
081–100 ARV (ACDC's RV). The 20 patients of ``test.list`` are reserved (never trained, tuned or chosen on):
the cohort leaves them out unless asked to keep them (:func:`list_ssl4mis` ``reserved="keep"``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from CMRSynthLib.data.case import CaseRecord
from CMRSynthLib.errors import InputError

VOLUME_FILE = re.compile(r"^(patient\d{3})_frame(\d+)\.h5$")
SLICE_FILE = re.compile(r"^(patient\d{3})_frame(\d+)_slice_(\d+)\.h5$")
LABEL_KEY = "#label"  # appended to a case's path: the same file's ``label`` array
SLICE_PATTERN = "_slice_*.h5"  # a case stored as one file per slice: ``<case>_slice_*.h5``
USUAL_SPACING_MM = 1.5625
USUAL_MATRIX = 256
DOUBLE_MATRIX = 320  # a longer side above this is a doubled matrix
SLICE_SPACING_MM = 10.0
GROUP_BY_NUMBER = ((20, "DCM"), (40, "HCM"), (60, "MINF"), (80, "NOR"), (100, "ARV"))
SPLIT_FILES = {"train": "train.list", "val": "val.list", "test": "test.list"}
SPACING_CSV = "spacing.csv"
DATASET = {
    "name": "ACDC",
    "license": "CC BY-NC-SA 4.0 (research and non-commercial use; share alike)",
    "citation": "Bernard O. et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures "
                "Segmentation and Diagnosis: Is the Problem Solved? IEEE TMI 37(11), 2018",
    "url": "https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    "vendor": "Siemens (1.5 T and 3 T)",
}


def spacing_note() -> str:
    return (f"ACDC HDF5 files hold no spacing: assumed {USUAL_SPACING_MM} mm in-plane (1.5625 × 256 / longer "
            f"side above {DOUBLE_MATRIX} pixels) and {SLICE_SPACING_MM:g} mm between slices unless spacing.csv "
            "gives the patient's own")


def is_ssl4mis_name(name: str) -> bool:
    return bool(VOLUME_FILE.match(name) or SLICE_FILE.match(name))


def group_of(patient: str) -> str:
    number = int(patient[-3:])
    return next((group for last, group in GROUP_BY_NUMBER if number <= last), "unknown")


def assumed_spacing(shape: tuple[int, ...]) -> tuple[float, float, float]:
    """``(row_mm, column_mm, slice_mm)`` assumed for a ``(slices, rows, columns)`` array (module notes)."""
    longer = max(shape[-2:])
    in_plane = USUAL_SPACING_MM if longer <= DOUBLE_MATRIX else USUAL_SPACING_MM * USUAL_MATRIX / longer
    return in_plane, in_plane, SLICE_SPACING_MM


def _read_lists(root: Path) -> dict[str, str]:
    """patient → split name (train, val, test) from the list files in ``root``."""
    splits = {}
    for name, filename in SPLIT_FILES.items():
        path = root / filename
        if path.is_file():
            for line in path.read_text(encoding="utf-8").split():
                splits[line.strip()[:10]] = name
    return splits


def _read_spacing_csv(root: Path) -> dict[str, tuple[float, float, float]]:
    path = root / SPACING_CSV
    if not path.is_file():
        return {}
    table = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                values = tuple(float(row[k]) for k in ("row_mm", "column_mm", "slice_mm"))
                patient = row["patient"].strip()
            except (KeyError, TypeError, ValueError):
                raise InputError(f"line {line}: needs patient, row_mm, column_mm, slice_mm as numbers",
                                 path=path) from None
            if not all(np.isfinite(v) and v > 0 for v in values):
                raise InputError(f"line {line}: spacing must be positive millimetres, got {values}", path=path)
            table[patient] = values
    return table


def list_ssl4mis(root: Path, *, reserved: str = "exclude") -> tuple[list[CaseRecord], list[str]]:
    """The cases of an SSL4MIS ACDC folder and the problems found (see the module notes).

    ``reserved="exclude"`` leaves out the patients of ``test.list``; ``"keep"`` keeps them (for the final,
    one-time evaluation a user decides to run), marked ``attributes["split"] == "test"``.
    """
    files: dict[tuple[str, int], dict] = {}
    for path in sorted(root.iterdir()):
        volume, slice_ = VOLUME_FILE.match(path.name), SLICE_FILE.match(path.name)
        if volume:
            files.setdefault((volume.group(1), int(volume.group(2))), {})["volume"] = path
        elif slice_:
            files.setdefault((slice_.group(1), int(slice_.group(2))), {}).setdefault("slices", []).append(
                int(slice_.group(3)))
    splits, spacings = _read_lists(root), _read_spacing_csv(root)
    records, problems, left_out = [], [], set()
    frames_by_patient: dict[str, list[int]] = {}
    for patient, frame in files:
        frames_by_patient.setdefault(patient, []).append(frame)
    for (patient, frame), found in sorted(files.items()):
        split = splits.get(patient, "")
        if split == "test" and reserved == "exclude":
            left_out.add(patient)
            continue
        frames = sorted(frames_by_patient[patient])
        phase = "ED" if frame == frames[0] else ("ES" if len(frames) > 1 and frame == frames[-1] else "unknown")
        if "volume" in found:
            image = str(found["volume"])
        else:
            numbers = sorted(found["slices"])
            if numbers != list(range(1, len(numbers) + 1)):
                problems.append(f"{root / f'{patient}_frame{frame:02d}'}: slice files {numbers} have gaps; skipped")
                continue
            image = str(root / f"{patient}_frame{frame:02d}{SLICE_PATTERN}")
        attributes = {"frame_number": frame, "spacing_source": "spacing.csv" if patient in spacings else "assumed"}
        if split:
            attributes["split"] = split
        records.append(CaseRecord(patient=patient, phase=phase, image_path=image, label_path=image + LABEL_KEY,
                                  vendor="Siemens", group=group_of(patient), label_convention="acdc",
                                  attributes=attributes))
    if left_out:
        problems.append(f"{len(left_out)} patients of test.list are reserved (never trained, tuned or chosen on) "
                        "and left out")
    if any(r.attributes["spacing_source"] == "assumed" for r in records):
        problems.append(spacing_note())
    return records, problems


def _h5_array(path: Path, key: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if key not in handle:
                raise InputError(f"HDF5 file has no {key!r} array (has {sorted(handle.keys())})", path=path)
            return np.asarray(handle[key][()])
    except OSError as error:
        raise InputError(f"not a readable HDF5 file ({error})", path=path) from None


def read_ssl4mis(path: str):
    """The :class:`~CMRSynthLib.data.volume.Volume` at ``path``: a volume file, a ``_slice_*.h5`` pattern
    (restacked in slice order), either with :data:`LABEL_KEY` appended for the label. The geometry uses the
    patient's spacing (spacing.csv or the assumption) and ITK's identity direction (LPS), as RAS."""
    from CMRSynthLib.data.volume import Volume

    key = "label" if path.endswith(LABEL_KEY) else "image"
    file = Path(path[: -len(LABEL_KEY)] if key == "label" else path)
    if file.name.endswith(SLICE_PATTERN):
        stem = file.name[: -len(SLICE_PATTERN)]
        parts = sorted(file.parent.glob(f"{stem}_slice_*.h5"), key=lambda p: int(SLICE_FILE.match(p.name).group(3)))
        if not parts:
            raise InputError("no slice files", path=file)
        slices = [_h5_array(p, key) for p in parts]
        if len({s.shape for s in slices}) > 1 or slices[0].ndim != 2:
            raise InputError(f"slice files hold arrays of different or non-2D shapes {sorted({s.shape for s in slices})}",
                             path=file)
        array = np.stack(slices)
    else:
        array = _h5_array(file, key)
        if array.ndim != 3:
            raise InputError(f"{key} must be a (slices, rows, columns) array, got shape {array.shape}", path=file)
    patient = file.name[:10]
    row, column, slice_ = _read_spacing_csv(file.parent).get(patient) or assumed_spacing(array.shape)
    ijk_to_ras = np.diag([-column, -row, slice_, 1.0])
    return Volume(array if key == "label" else array.astype(np.float32), ijk_to_ras)
