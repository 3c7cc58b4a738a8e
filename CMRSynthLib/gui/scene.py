"""The pure part of moving data between a Slicer scene and CMRSynth files: matrices, labels and names.

The Slicer module (``CMRSynth/CMRSynth.py``) does the node calls; everything here works on numpy arrays
and vtk matrices, so it is tested without Slicer. Conventions (see :mod:`CMRSynthLib.data.conventions`):
arrays are KJI like ``slicer.util.arrayFromVolume``; geometry is the 4×4 IJK-to-RAS matrix of a volume node.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from CMRSynthLib.data.conventions import LV, MYO, RV
from CMRSynthLib.data.volume import Volume
from CMRSynthLib.errors import InputError

# Words that name each structure in segment names and terminology strings (lower case). Order matters:
# the myocardium test runs first ("left ventricle myocardium" also names the left ventricle).
_STRUCTURE_WORDS = (
    (MYO, ("myocardium", "myocard", "myo", "lv wall", "lvm", "left ventricular wall")),
    (RV, ("right ventricle", "right ventricular", "rv")),
    (LV, ("left ventricle", "left ventricular", "lv", "blood pool", "lumen", "cavity")),
)
STRUCTURE_NAMES = {LV: "LV blood pool", MYO: "LV myocardium", RV: "RV blood pool"}


def matrix_to_array(matrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` (or anything with ``GetElement``) as a (4, 4) float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def array_to_matrix(array: np.ndarray):
    """A (4, 4) array as a new ``vtkMatrix4x4``."""
    import vtk

    array = np.asarray(array, dtype=np.float64)
    if array.shape != (4, 4):
        raise ValueError(f"a 4x4 matrix is expected, got shape {array.shape}")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def guess_structure(name: str, terminology: str = "") -> int | None:
    """The canonical label a segment most likely holds, from its name and terminology entry, or None.

    ``terminology`` is Slicer's terminology string (``"SCT^85756007^Tissue~..."``) or empty.
    """
    text = f"{name} {terminology}".lower().replace("_", " ").replace("-", " ").replace("^", " ")
    words = set(re.findall(r"[a-z]+", text))
    for label, keys in _STRUCTURE_WORDS:
        for key in keys:
            if (" " in key and key in text) or key in words:
                return label
    return None


def guess_mapping(segments: dict[str, tuple[str, str]]) -> dict[int, str]:
    """Structure label → segment id for segments ``{id: (name, terminology)}``; the first match wins."""
    mapping: dict[int, str] = {}
    for segment_id, (name, terminology) in segments.items():
        label = guess_structure(name, terminology)
        if label is not None and label not in mapping:
            mapping[label] = segment_id
    return mapping


def combine_structures(binaries: dict[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """One canonical label map (uint8) from binary KJI arrays per structure label.

    Later labels win where structures overlap (LV, then MYO, then RV); returns the map and the number of
    voxels claimed by more than one structure, so the caller can warn.
    """
    if not binaries:
        raise InputError("no segment is mapped to a structure; map at least one of LV, MYO, RV")
    unknown = sorted(set(binaries) - {LV, MYO, RV})
    if unknown:
        raise ValueError(f"structure labels must be among {LV, MYO, RV}, got {unknown}")
    shapes = {np.shape(b) for b in binaries.values()}
    if len(shapes) != 1:
        raise ValueError(f"segment arrays differ in shape: {sorted(shapes)}")
    labels = np.zeros(shapes.pop(), dtype=np.uint8)
    claims = np.zeros(labels.shape, dtype=np.uint8)
    for label in sorted(binaries):
        inside = np.asarray(binaries[label]) > 0
        labels[inside] = label
        claims += inside
    return labels, int(np.count_nonzero(claims > 1))


def mask_volume(binaries: dict[int, np.ndarray], ijk_to_ras: np.ndarray) -> tuple[Volume, int]:
    """The mask file content for a reference geometry: (Volume of canonical labels, overlapping voxels)."""
    labels, overlap = combine_structures(binaries)
    return Volume(labels, ijk_to_ras), overlap


def parse_synthetic_name(path: str | Path) -> tuple[str, int]:
    """(vendor, seed) of a sample output file named ``<maskstem>_synth_<vendor>_<seed>.<ext>``."""
    name = Path(path).name
    match = re.search(r"_synth_(.+)_(\d+)\.[A-Za-z][A-Za-z.]*$", name)
    if match is None:
        raise ValueError(f"{name!r} is not named <mask>_synth_<vendor>_<seed>.<ext>")
    return match.group(1), int(match.group(2))


def synthetic_node_name(volume_name: str, path: str | Path) -> str:
    """The scene name ``<volume>_synth_<vendor>_<seed>`` of a sample output file."""
    vendor, seed = parse_synthetic_name(path)
    return f"{volume_name}_synth_{vendor}_{seed}"
