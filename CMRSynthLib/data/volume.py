"""One volume type everywhere: a KJI voxel array plus a 4×4 IJK-to-RAS matrix (Slicer's convention).

Reading and writing go through SimpleITK; the LPS ↔ RAS flip happens here and nowhere else.

Geometry algebra (ITK): a voxel index ``(i, j, k)`` sits at ``origin_LPS + D @ diag(spacing) @ (i, j, k)``
where the columns of ``D`` are the axis directions in LPS. So ``ijk_to_lps = [[D·diag(s), o], [0, 1]]``
and ``ijk_to_ras = LPS_TO_RAS @ ijk_to_lps``. A 2D file is read as a one-slice volume (spacing 1 along K).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from CMRSynthLib.data.conventions import LPS_TO_RAS
from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Writing is limited to single-file formats: a detached header (.nhdr/.mhd) names its data file, which an
# atomic rename of the header alone would leave behind under its temporary name.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# NIfTI stores the direction as a quaternion (qform) and a float32 sform: a sheared (non-orthonormal) grid
# cannot be represented, and ITK's NIfTI writer silently "coerces" it to the nearest rotation. Refuse instead
# when the axes are further than this from orthonormal (|DᵀD − I| max); NRRD and MHA keep any grid exactly.
NIFTI_ORTHONORMAL_TOL = 1e-4


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D voxel array in KJI order and its IJK-to-RAS matrix.

    Attributes:
        array: ``(K, J, I)`` voxels (slices, rows, columns).
        ijk_to_ras: ``(4, 4)`` affine taking a voxel index ``(i, j, k, 1)`` to RAS millimetres.
        metadata: free-form header fields (e.g. ``{"descrip": "SYNTHETIC ..."}``) written with the file.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (K, J, I), got shape {self.array.shape}")
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise ValueError(f"Volume.ijk_to_ras must be a 4x4 affine, got {matrix!r}")
        if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
            raise ValueError("Volume.ijk_to_ras is singular")
        object.__setattr__(self, "ijk_to_ras", matrix)

    # -- geometry accessors (IJK order, RAS space) -----------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along I, J, K."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3×3 matrix whose columns are the unit I, J, K axes in RAS."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])) / 1000.0)

    def with_array(self, array: np.ndarray, **metadata: str) -> "Volume":
        """Same geometry, new voxels (same KJI shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.ijk_to_ras, {**self.metadata, **metadata})

    def same_geometry(self, other: "Volume", *, atol: float = 1e-4) -> bool:
        """Same voxel grid: same shape and every voxel at the same RAS point (within ``atol`` mm)."""
        return self.shape == other.shape and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol)


# -- SimpleITK bridge ------------------------------------------------------------------------------
def ijk_to_ras_from_itk(spacing, origin, direction) -> np.ndarray:
    """IJK-to-RAS from ITK's (LPS) spacing, origin and row-major direction."""
    n = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = d * np.asarray(spacing[:3], dtype=np.float64)
    lps[:3, 3] = np.asarray(origin[:3], dtype=np.float64)
    return LPS_TO_RAS @ lps


def itk_geometry(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """ITK (LPS) spacing, origin and row-major direction from an IJK-to-RAS matrix."""
    lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return tuple(spacing.tolist()), tuple(lps[:3, 3].tolist()), tuple(direction.ravel().tolist())


def to_sitk(volume: Volume):
    import SimpleITK as sitk

    array = volume.array
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing, origin, direction = itk_geometry(volume.ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    for key, value in volume.metadata.items():
        image.SetMetaData(str(key), str(value))
    if "descrip" in volume.metadata:  # ITK's NIfTI writer fills the header's descrip (80 chars) from this key
        image.SetMetaData("ITK_FileNotes", str(volume.metadata["descrip"]))
    return image


def from_sitk(image, *, path=None) -> Volume:
    """A SimpleITK image (2D or 3D) as a :class:`Volume`."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar (grey-level or label) image is expected", path=path)
    dim = image.GetDimension()
    if dim == 2:
        image = sitk.JoinSeries(image)  # one slice, spacing 1 along K
    elif dim != 3:
        raise InputError(f"is {dim}D; a 3D volume is expected (4D cine files are read per frame by the "
                         "cohort readers)", path=path)
    array = _voxels(image, path)
    metadata = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if k == "descrip" or k.startswith("cmrsynth")}
    return Volume(array, ijk_to_ras_from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection()), metadata)


def _voxels(image, path) -> np.ndarray:
    """The voxels of a SimpleITK image, C order (…, K, J, I), with a NIfTI file's non-finite values kept."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    if path is not None and str(path).lower().endswith((".nii", ".nii.gz")) and array.dtype.kind == "f":
        array = _restore_nonfinite(Path(path), array)
    return array


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes of float32 / float64


def _restore_nonfinite(path: Path, array: np.ndarray) -> np.ndarray:
    """Put back the NaN/±inf voxels that ITK's NIfTI reader silently turns into 0.

    ITK < 6 (SimpleITK 2.x) zeroes every non-finite float voxel in ``nifti_read_buffer`` (ITK pull request
    6683 makes keeping them the default in ITK 6). A 0 is a valid intensity, so the corruption would pass
    every check; we re-read the raw NIfTI-1 voxels (x fastest, the same order as ``array``) and restore the
    non-finite ones so :func:`check_finite` can refuse them. NIfTI-2 files are left as ITK read them.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(348)
        endian = next((e for e in "<>" if len(header) == 348 and struct.unpack(e + "i", header[:4])[0] == 348), None)
        if endian is None:
            return array
        code = _NIFTI_FLOATS.get(struct.unpack(endian + "h", header[70:72])[0])
        if code is None:
            return array
        handle.seek(int(struct.unpack(endian + "f", header[108:112])[0]))
        raw = np.frombuffer(handle.read(array.size * int(code[1])), dtype=endian + code)
    if raw.size != array.size:
        return array
    bad = ~np.isfinite(raw)
    if not bad.any():
        return array
    restored = np.array(array, copy=True)
    restored.reshape(-1)[bad] = raw[bad]
    return restored


def _read_sitk(path: Path):
    import SimpleITK as sitk

    if not path.exists():
        raise InputError("file not found", path=path)
    if path.is_dir():
        raise InputError("is a folder; an image file is expected here", path=path)
    if not is_image_file(path):
        raise InputError(f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}", path=path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"not a readable image ({first[:160]})", path=path) from None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D (or 2D) NIfTI, NRRD or MetaImage file. Raises :class:`InputError` naming the file."""
    path = Path(path)
    return from_sitk(_read_sitk(path), path=path)


def read_frames(path: str | os.PathLike) -> list[Volume]:
    """Read a 4D cine file (x, y, z, t) as one :class:`Volume` per frame; a 3D file gives one frame."""
    import SimpleITK as sitk

    path = Path(path)
    image = _read_sitk(path)
    if image.GetDimension() != 4:
        return [from_sitk(image, path=path)]
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("a 4D file with vector voxels is not a cine stack", path=path)
    array = _voxels(image, path)  # (T, K, J, I)
    matrix = ijk_to_ras_from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return [Volume(np.ascontiguousarray(frame), matrix) for frame in array]


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write atomically (NIfTI, NRRD or MetaImage by suffix). Metadata keys go into the header.

    NIfTI keeps only ``descrip`` (80 characters) of the metadata and stores the geometry in float32
    (voxel positions agree to ~1e-5 mm); NRRD and MHA keep every key and the geometry in full precision.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not str(path).lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"unsupported output type; use one of {', '.join(WRITE_SUFFIXES)}", path=path)
    if str(path).lower().endswith((".nii", ".nii.gz")):
        direction = volume.direction
        skew = float(np.abs(direction.T @ direction - np.eye(3)).max())
        if skew > NIFTI_ORTHONORMAL_TOL:
            raise InputError(f"the voxel axes are not orthogonal (deviation {skew:.3g}); NIfTI cannot store a "
                             "sheared grid: write .nrrd or .mha instead", path=path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(to_sitk(volume), str(tmp), compress)
    return path


def check_finite(volume: Volume, *, path=None) -> None:
    """Raise :class:`InputError` if the volume holds NaN or infinite intensities."""
    if np.issubdtype(volume.array.dtype, np.floating) and not np.all(np.isfinite(volume.array)):
        bad = int(np.size(volume.array) - np.count_nonzero(np.isfinite(volume.array)))
        raise InputError(f"holds {bad} NaN or infinite intensities", path=path)


def check_same_geometry(image: Volume, label: Volume, *, image_path=None, label_path=None) -> None:
    """Raise :class:`InputError` if a label does not lie voxel-for-voxel on its image."""
    if image.shape != label.shape:
        raise InputError(f"label shape {label.shape} (KJI) differs from image shape {image.shape} "
                         f"({image_path})", path=label_path)
    if not image.same_geometry(label):
        offset = float(np.abs(image.ijk_to_ras - label.ijk_to_ras).max())
        raise InputError(f"label geometry differs from its image {image_path} (max matrix difference "
                         f"{offset:.3g} mm)", path=label_path)
