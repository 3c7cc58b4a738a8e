"""What ``cmrsynth inspect`` reports about a cohort: geometry, canonical volumes and every problem found.

The report is plain JSON-ready data::

    {"layout": "acdc",
     "cases": [{"patient", "phase", "vendor", "group", "image", "label",
                "shape": [I, J, K], "spacing": [mm, mm, mm], "origin": [R, A, S], "direction": 3×3 rows,
                "volumes_ml": {"LV": ml, "MYO": ml, "RV": ml}, "problems": [...]}],
     "problems": [...]}

``shape`` and ``spacing`` are in I, J, K order (columns, rows, slices); ``origin`` and ``direction`` are RAS
(the columns of ``direction`` are the I, J, K axes). Volumes use the canonical labels and the true voxel
size. A case's problems do not stop the report: what could not be read is ``null``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from CMRSynthLib.data.case import CaseRecord
from CMRSynthLib.data.cohorts import Cohort, check_label_not_empty, read_case_image, read_case_label
from CMRSynthLib.data.conventions import STRUCTURES
from CMRSynthLib.data.volume import Volume, check_finite
from CMRSynthLib.errors import InputError

DECIMALS = 6


def _numbers(values) -> list:
    """Rounded floats without negative zeros, nested like ``values``."""
    array = np.round(np.asarray(values, dtype=np.float64), DECIMALS) + 0.0
    return array.tolist()


def structure_volumes_ml(label: Volume) -> dict[str, float]:
    """Millilitres of LV, MYO and RV in a canonical label map (voxel count × true voxel volume)."""
    counts = np.bincount(label.array.ravel(), minlength=max(STRUCTURES.values()) + 1)
    return {name: round(float(counts[value]) * label.voxel_volume_ml, DECIMALS) for name, value in STRUCTURES.items()}


def orientation_code(direction) -> str:
    """Nearest anatomical axis code of a 3×3 RAS direction (columns = I, J, K), e.g. ``"LPS"``.

    Each letter is where that voxel axis points (R/L, A/P, S/I); a trailing ``~`` marks an oblique grid
    (some axis more than 1° away from the letter it is given).
    """
    letters = ("RL", "AP", "SI")
    direction = np.asarray(direction, dtype=np.float64)
    code = ""
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        code += letters[axis][0 if column[axis] > 0 else 1]
    oblique = np.abs(direction).max(axis=0).min() < np.cos(np.radians(1.0))
    return code + ("~" if oblique else "")


def inspect_case(record: CaseRecord, *, fatal: bool = False) -> dict:
    """One case's entry of the report. With ``fatal`` an unreadable image raises instead of being listed."""
    entry = {"patient": record.patient, "phase": record.phase, "vendor": record.vendor, "group": record.group,
             "image": record.image_path, "label": record.label_path, "shape": None, "spacing": None,
             "origin": None, "direction": None, "volumes_ml": {name: None for name in STRUCTURES},
             "problems": []}
    try:
        image = read_case_image(record)
    except InputError as exc:
        if fatal:
            raise
        entry["problems"].append(str(exc))
        return entry
    entry.update(shape=list(image.shape[::-1]), spacing=_numbers(image.spacing), origin=_numbers(image.origin),
                 direction=_numbers(image.direction))
    _note(entry, lambda: check_finite(image, path=record.image_path))
    if record.label_path is None:
        entry["problems"].append(f"{record.image_path}: no label file; volumes unknown")
        return entry
    label = _note(entry, lambda: read_case_label(record, image))
    if label is not None:
        entry["volumes_ml"] = structure_volumes_ml(label)
        _note(entry, lambda: check_label_not_empty(label, path=record.label_path))
    return entry


def _note(entry: dict, check: Callable):
    """Run ``check``; an :class:`InputError` becomes one of the entry's problems (and None is returned)."""
    try:
        return check()
    except InputError as exc:
        entry["problems"].append(str(exc))
        return None


def inspect_cohort(cohort: Cohort, *, fatal: bool = False, callback: Callable[[int], None] | None = None) -> dict:
    """The report of the whole cohort; ``callback(n)`` is called after each of its ``n`` cases."""
    cases = []
    for number, record in enumerate(cohort.records, start=1):
        cases.append(inspect_case(record, fatal=fatal))
        if callback is not None:
            callback(number)
    return {"layout": cohort.layout, "cases": cases, "problems": list(cohort.problems)}
