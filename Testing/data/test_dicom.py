"""DICOM series folders: one series, oblique geometry, cine phase selection, bad folders."""

from __future__ import annotations

import numpy as np
import pytest

from cohort_fixtures import COL, GAP, NORMAL, ORIGIN, PIXEL, ROW, write_dicom_series

from CMRSynthLib.data.dicom import is_dicom_folder, read_dicom_series
from CMRSynthLib.errors import InputError


def _frames(n_frames, n_slices=3, rows=5, cols=6):
    """Voxel value = 100·t + 10·k + row·0 + col: each (phase, slice) is recognisable."""
    t, k, j, i = np.meshgrid(*(np.arange(n) for n in (n_frames, n_slices, rows, cols)), indexing="ij")
    return (100 * t + 10 * k + i + 0 * j).astype(np.int16)


def test_single_phase_series_geometry(tmp_path):
    frames = _frames(1)
    folder = write_dicom_series(tmp_path / "sax", frames)
    assert is_dicom_folder(folder)

    volume = read_dicom_series(folder)

    np.testing.assert_array_equal(volume.array, frames[0])
    np.testing.assert_allclose(volume.spacing, [*PIXEL, GAP], rtol=1e-5)
    lps = np.diag([-1.0, -1.0, 1.0])
    # voxel (i, j, k) = (2, 3, 1) at origin + 2·1.25·ROW + 3·1.5·COL + 1·8·NORMAL (LPS), flipped to RAS
    expected = lps @ (ORIGIN + 2 * 1.25 * ROW + 3 * 1.5 * COL + 1 * GAP * NORMAL)
    np.testing.assert_allclose((volume.ijk_to_ras @ [2, 3, 1, 1])[:3], expected, atol=1e-3)


def test_cine_series_needs_a_phase_and_stacks_only_that_phase(tmp_path):
    frames = _frames(4)
    times = [0.0, 35.5, 71.0, 106.5]
    folder = write_dicom_series(tmp_path / "cine", frames, trigger_times=times)

    with pytest.raises(InputError, match=r"cine series: 4 frames at each of 3 slice positions.*--frame 0\.\.3"):
        read_dicom_series(folder)
    for t in range(4):
        np.testing.assert_array_equal(read_dicom_series(folder, frame=t).array, frames[t])
    np.testing.assert_array_equal(read_dicom_series(folder, trigger_time=71.0).array, frames[2])
    with pytest.raises(InputError, match="no image at trigger time 50 ms"):
        read_dicom_series(folder, trigger_time=50.0)
    with pytest.raises(InputError, match="frame 4 is out of range"):
        read_dicom_series(folder, frame=4)


def test_cine_with_a_missing_phase_is_not_stacked(tmp_path):
    folder = write_dicom_series(tmp_path / "cine", _frames(3), trigger_times=[0.0, 40.0, 80.0])
    (folder / "IM0002.dcm").unlink()  # slice 0, phase 1
    with pytest.raises(InputError, match="different numbers of images per position"):
        read_dicom_series(folder, frame=0)


def test_two_series_in_one_folder_are_listed(tmp_path):
    folder = write_dicom_series(tmp_path / "mixed", _frames(1), series_uid="1.2.3.4.1")
    write_dicom_series(folder, _frames(1), series_uid="1.2.3.4.2", start_instance=100)
    listing = r"holds 2 DICOM series \(1\.2\.3\.4\.1 \(3 files\); 1\.2\.3\.4\.2 \(3 files\)\)"
    with pytest.raises(InputError, match=listing):
        read_dicom_series(folder)


def test_missing_slice_is_refused(tmp_path):
    folder = write_dicom_series(tmp_path / "gap", _frames(1, n_slices=4), positions=[0.0, 8.0, 24.0, 32.0])
    with pytest.raises(InputError, match="slice gaps are irregular"):
        read_dicom_series(folder)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert not is_dicom_folder(tmp_path)
    with pytest.raises(InputError, match="holds no DICOM series"):
        read_dicom_series(tmp_path)
