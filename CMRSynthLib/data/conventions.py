"""Every convention that differs between sources, written down once (STYLE practice 8).

Labels
------
Canonical (M&Ms / UK Biobank): 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool.
ACDC numbers the same structures 1 = RV, 2 = MYO, 3 = LV: reading an ACDC label swaps 1 and 3.
A mask read in the wrong convention shows it in its shapes: the myocardium rings the LV blood pool, while the RV
blood pool is a crescent beside the ring (:func:`looks_swapped`).

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

ENCLOSED = 0.6  # share of a blood pool's in-plane border that is myocardium, from which the pool is "ringed"
# canonical ↔ the convention that swaps LV and RV (what a swapped-looking mask was probably written in)
SWAPPED_CONVENTION = {"canonical": "acdc", "mnms": "acdc", "acdc": "canonical"}

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


def myocardial_border(label: np.ndarray, structure: int) -> float | None:
    """The share of the in-plane border of ``structure`` that is myocardium (canonical values, ``(K, J, I)``).

    The border is the pixels just outside the structure in its own slice (4-neighbours); None when the label
    holds no ``structure`` voxel or no border pixel.
    """
    from scipy import ndimage

    inside = np.asarray(label) == structure
    if not inside.any():
        return None
    in_plane = np.zeros((1, 3, 3), dtype=bool)
    in_plane[0, 1, :] = in_plane[0, :, 1] = True
    border = ndimage.binary_dilation(inside, in_plane) & ~inside
    return float(np.mean(np.asarray(label)[border] == MYO)) if border.any() else None


def looks_swapped(label: np.ndarray) -> bool:
    """Whether a canonical label map looks like one read in the wrong convention: the myocardium rings label 3
    (canonical RV) and not label 1 (canonical LV), as when ACDC's 1 = RV, 3 = LV is read as canonical.

    Says nothing (False) when neither or both pools are ringed, or one is missing and the other is not ringed.
    """
    lv, rv = myocardial_border(label, LV), myocardial_border(label, RV)
    return rv is not None and rv >= ENCLOSED and (lv is None or lv < ENCLOSED)
