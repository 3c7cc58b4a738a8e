"""Every convention that differs between sources, written down once (STYLE practice 8).

Labels
------
Canonical (M&Ms / UK Biobank): 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool.
ACDC numbers the same structures 1 = RV, 2 = MYO, 3 = LV: reading an ACDC label swaps 1 and 3.

Coordinates
-----------
A volume's voxel array is in KJI order (slice, row, column), like ``slicer.util.arrayFromVolume`` and
``SimpleITK.GetArrayFromImage``. Its geometry is a 4×4 IJK-to-RAS matrix (Slicer's convention). ITK and
DICOM work in LPS; :data:`LPS_TO_RAS` converts (it is its own inverse).

Vendors, phases and pathology groups
------------------------------------
Vendors are the user's strings. M&Ms letters A–D map to the manufacturers below. Phases are ``ED``/``ES``.
Pathology groups use ACDC's codes, with ACDC's ``RV`` spelled ``ARV`` (abnormal RV) so it never reads as
the structure.
"""

from __future__ import annotations

import numpy as np

from CMRSynthLib.errors import InputError

BACKGROUND, LV, MYO, RV = 0, 1, 2, 3
STRUCTURES = {"LV": LV, "MYO": MYO, "RV": RV}  # report names → canonical label values
CANONICAL_LABELS = (BACKGROUND, LV, MYO, RV)
NUM_CLASSES = len(CANONICAL_LABELS)

# source convention → lookup table taking a source label value to its canonical value
LABEL_CONVENTIONS: dict[str, dict[int, int]] = {
    "canonical": {0: 0, 1: 1, 2: 2, 3: 3},
    "mnms": {0: 0, 1: 1, 2: 2, 3: 3},
    "acdc": {0: 0, 1: RV, 2: MYO, 3: LV},
}

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

PHASES = ("ED", "ES")
GROUPS = ("NOR", "DCM", "HCM", "MINF", "ARV")
GROUP_ALIASES = {"RV": "ARV", "NORMAL": "NOR", "NOR": "NOR", "DCM": "DCM", "HCM": "HCM", "MINF": "MINF",
                 "ARV": "ARV"}
MNMS_VENDORS = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}
UNKNOWN = "unknown"


def to_canonical(label: np.ndarray, convention: str, *, path=None) -> np.ndarray:
    """Map a label array from ``convention`` to canonical values (uint8).

    Raises :class:`InputError` naming ``path`` if the array holds non-integer values or values the
    convention does not define.
    """
    if convention not in LABEL_CONVENTIONS:
        raise InputError(f"unknown label convention {convention!r}; choose one of {sorted(LABEL_CONVENTIONS)}")
    if not np.all(np.isfinite(label)):
        raise InputError("label map holds NaN or infinite values", path=path)
    rounded = np.rint(label)
    if not np.array_equal(rounded, label):
        raise InputError("label map holds non-integer values (is this an image rather than a label map?)",
                         path=path)
    table = LABEL_CONVENTIONS[convention]
    values = np.unique(rounded.astype(np.int64))
    unexpected = [int(v) for v in values if int(v) not in table]
    if unexpected:
        raise InputError(f"label values {unexpected[:10]} are outside the {convention} convention "
                         f"(expected {sorted(table)})", path=path)
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for source, canonical in table.items():
        lut[source] = canonical
    return lut[rounded.astype(np.int64)]


def canonical_group(name: str | None) -> str:
    """A pathology group name in ACDC's codes (``ARV`` for ACDC's ``RV``), or ``unknown``."""
    if not name:
        return UNKNOWN
    return GROUP_ALIASES.get(str(name).strip().upper(), str(name).strip())
