"""Geometry of :mod:`CMRSynthLib.data.volume`: write → read round trips, LPS ↔ RAS, bad input."""

from __future__ import annotations

import itertools

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from CMRSynthLib.data.volume import (
    Volume, check_finite, check_same_geometry, read_frames, read_volume, write_volume,
)
from CMRSynthLib.errors import InputError

# NIfTI stores spacing, origin and the sform in float32 (and the rotation as a float32 quaternion), so a
# voxel position survives to ~1e-5 mm at a few hundred mm from the origin; NRRD and MHA write decimal
# doubles and keep it to rounding error.
POSITION_TOL = {".nii.gz": 1e-4, ".nrrd": 1e-9, ".mha": 1e-9}


def _rotation(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) → rotation matrix."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


quaternions = st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=4).filter(
    lambda q: np.linalg.norm(q) > 0.1)
spacings = st.lists(st.floats(0.2, 12.0), min_size=3, max_size=3)
origins = st.lists(st.floats(-400.0, 400.0), min_size=3, max_size=3)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6))
dtypes = st.sampled_from([np.uint8, np.int16, np.float32])


def _corners(volume: Volume) -> np.ndarray:
    """RAS positions (8, 3) of the grid's corner voxels."""
    k, j, i = volume.shape
    ijk = np.array([(a, b, c, 1.0) for a, b, c in itertools.product((0, i - 1), (0, j - 1), (0, k - 1))])
    return (volume.ijk_to_ras @ ijk.T).T[:, :3]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=quaternions, flip=st.booleans(), spacing=spacings, origin=origins, shape=shapes, dtype=dtypes,
       seed=st.integers(0, 2**16))
@pytest.mark.parametrize("suffix", sorted(POSITION_TOL))
def test_round_trip_keeps_voxels_and_positions(tmp_path, suffix, q, flip, spacing, origin, shape, dtype, seed):
    rotation = _rotation(q)
    if flip:  # left-handed grids (NIfTI qfac = -1) are common in DICOM-derived files
        rotation[:, 2] *= -1
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * np.asarray(spacing)
    matrix[:3, 3] = origin
    array = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    volume = Volume(array, matrix)

    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))

    assert back.array.dtype == array.dtype
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(_corners(back), _corners(volume), rtol=0, atol=POSITION_TOL[suffix])
    np.testing.assert_allclose(back.spacing, spacing, rtol=1e-6)


def test_lps_file_read_as_ras_at_hand_computed_voxel(tmp_path):
    # ITK (LPS): origin (10, 20, 30), spacing (1, 2, 3), columns of D = L, P, S axes.
    # Voxel (i, j, k) = (1, 2, 3) sits at LPS (10 + 1, 20 + 2*2, 30 + 3*3) = (11, 24, 39) → RAS (-11, -24, 39).
    image = sitk.Image(4, 5, 6, sitk.sitkInt16)
    image.SetOrigin((10.0, 20.0, 30.0))
    image.SetSpacing((1.0, 2.0, 3.0))
    image[1, 2, 3] = 7
    sitk.WriteImage(image, str(tmp_path / "lps.nrrd"))

    volume = read_volume(tmp_path / "lps.nrrd")

    np.testing.assert_allclose(volume.ijk_to_ras @ [1, 2, 3, 1], [-11, -24, 39, 1])
    assert volume.array[3, 2, 1] == 7  # KJI order
    assert volume.array.sum() == 7
    np.testing.assert_allclose(volume.spacing, [1, 2, 3])
    np.testing.assert_allclose(volume.direction, np.diag([-1, -1, 1]))


def test_nifti_affine_matches_nibabel(tmp_path):
    """nibabel reads NIfTI in RAS natively: an independent check of our LPS ↔ RAS flip."""
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation([0.9, 0.2, -0.3, 0.1]) * [1.25, 1.25, 8.0]
    matrix[:3, 3] = [-120.5, 33.25, 71.0]
    volume = Volume(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4), matrix)
    write_volume(volume, tmp_path / "v.nii.gz")

    nib = nibabel.load(tmp_path / "v.nii.gz")

    np.testing.assert_allclose(nib.affine, matrix, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nib.dataobj).transpose(2, 1, 0), volume.array)  # IJK → KJI


def test_descrip_metadata_survives_every_format(tmp_path):
    volume = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4), {"descrip": "SYNTHETIC cmrsynth"})
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        assert read_volume(write_volume(volume, tmp_path / f"m{suffix}")).metadata["descrip"] == "SYNTHETIC cmrsynth"


def test_nifti_refuses_a_sheared_grid_that_nrrd_keeps(tmp_path):
    matrix = np.eye(4)
    matrix[0, 1] = 0.3  # J axis leans towards I
    volume = Volume(np.zeros((2, 3, 4), np.uint8), matrix)
    with pytest.raises(InputError, match="not orthogonal"):
        write_volume(volume, tmp_path / "s.nii.gz")
    assert not list(tmp_path.iterdir())
    np.testing.assert_allclose(read_volume(write_volume(volume, tmp_path / "s.nrrd")).ijk_to_ras, matrix)


def test_detached_header_formats_are_read_not_written(tmp_path):
    volume = Volume(np.ones((2, 3, 4), np.uint8), np.eye(4))
    with pytest.raises(InputError, match="unsupported output type"):
        write_volume(volume, tmp_path / "v.nhdr")
    sitk.WriteImage(sitk.GetImageFromArray(volume.array), str(tmp_path / "w.mhd"))
    np.testing.assert_array_equal(read_volume(tmp_path / "w.mhd").array, volume.array)


def test_read_frames_splits_a_4d_cine_and_read_volume_refuses_it(tmp_path):
    frames = np.stack([np.full((2, 3, 4), t, np.int16) for t in range(5)])  # (T, K, J, I)
    image = sitk.GetImageFromArray(frames, isVector=False)
    image.SetSpacing((1.5, 1.5, 8.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "cine.nii.gz"))

    volumes = read_frames(tmp_path / "cine.nii.gz")

    assert [int(v.array[0, 0, 0]) for v in volumes] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(volumes[0].spacing, [1.5, 1.5, 8.0], rtol=1e-6)
    with pytest.raises(InputError, match=r"cine.nii.gz: is 4D"):
        read_volume(tmp_path / "cine.nii.gz")


def test_2d_file_reads_as_one_slice(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4), np.uint8)), str(tmp_path / "slice.nrrd"))
    assert read_volume(tmp_path / "slice.nrrd").shape == (1, 3, 4)


@pytest.mark.parametrize("name, content, message", [
    ("missing.nii.gz", None, "file not found"),
    ("notes.txt", b"hello", "unsupported file type"),
    ("corrupt.nii.gz", b"\x1f\x8b not really gzip", "not a readable image"),
])
def test_unreadable_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_volume(path)
    assert info.value.path == str(path)


def test_checks_name_the_problem(tmp_path):
    image = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
    with pytest.raises(InputError, match="1 NaN or infinite"):
        check_finite(image.with_array(np.where(np.arange(24).reshape(2, 3, 4) == 5, np.nan, 0).astype(np.float32)))
    check_finite(image)
    moved = np.eye(4)
    moved[0, 3] = 0.5
    with pytest.raises(InputError, match="geometry differs"):
        check_same_geometry(image, Volume(np.zeros((2, 3, 4), np.uint8), moved), label_path="l.nii.gz")
    with pytest.raises(InputError, match="differs from image shape"):
        check_same_geometry(image, Volume(np.zeros((2, 3, 5), np.uint8), np.eye(4)))
    check_same_geometry(image, Volume(np.zeros((2, 3, 4), np.uint8), np.eye(4)))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_voxels_survive_reading(tmp_path, suffix, dtype):
    """ITK's NIfTI reader zeroes NaN/inf (ITK < 6); read_volume and read_frames must keep them."""
    array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    array[0, 1, 2], array[1, 2, 3], array[1, 0, 0] = np.nan, np.inf, -np.inf
    path = write_volume(Volume(array, np.eye(4)), tmp_path / f"v{suffix}")

    np.testing.assert_array_equal(read_volume(path).array, array)  # NaN compares equal here
    np.testing.assert_array_equal(read_frames(path)[0].array, array)
    with pytest.raises(InputError, match="holds 3 NaN or infinite"):
        check_finite(read_volume(path), path=path)


def test_non_finite_voxels_survive_in_a_4d_nifti(tmp_path):
    frames = np.ones((3, 2, 3, 4), np.float32)
    frames[2, 1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(frames, isVector=False), str(tmp_path / "cine.nii.gz"))
    volumes = read_frames(tmp_path / "cine.nii.gz")
    assert [int(np.isnan(v.array).sum()) for v in volumes] == [0, 0, 1]
    assert np.isnan(volumes[2].array[1, 2, 3])


def test_nifti_accepts_directions_rounded_to_float32(tmp_path):
    """A grid read from a float32 header is orthonormal only to ~1e-7: it must write without complaint."""
    matrix = np.eye(4)
    matrix[:3, :3] = (_rotation([0.3, -0.8, 0.2, 0.5]) * [0.7, 0.7, 6.0]).astype(np.float32)
    matrix[:3, 3] = [10.0, -20.0, 30.0]
    volume = Volume(np.ones((2, 3, 4), np.uint8), matrix)
    back = read_volume(write_volume(volume, tmp_path / "f32.nii.gz"))
    np.testing.assert_allclose(_corners(back), _corners(volume), atol=1e-4)
