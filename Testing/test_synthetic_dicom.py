"""The synthetic DICOM writer's storage: the grey range survives (slope/intercept), whole numbers stay exact,
and the window spans the robust range."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from CMRSynthLib.data.volume import Volume
from CMRSynthLib.synthetic_dicom import LEVELS, stored_values, window, write_dicom_series


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (-0.37, 0.02), (2.7, 518.9), (-1000.5, 3000.25)])
def test_float_values_keep_their_grey_range_within_half_a_step(lo, hi):
    values = np.random.default_rng(0).uniform(lo, hi, (3, 20, 30))
    stored, slope, intercept = stored_values(values)
    assert stored.dtype == np.uint16 and stored.max() == LEVELS
    assert np.abs(stored * slope + intercept - values).max() <= slope / 2 + 1e-9 * (hi - lo)
    assert len(np.unique(stored)) > 1000


def test_whole_numbers_are_stored_as_themselves():
    values = np.array([[[0, 1, 999, 1000]]], dtype=np.int16)
    stored, slope, intercept = stored_values(values)
    assert (slope, intercept) == (1.0, 0.0) and np.array_equal(stored, values)
    stored, slope, intercept = stored_values(values - 50)  # negative whole numbers: shifted, still exact
    assert slope == 1.0 and np.array_equal(stored * slope + intercept, values - 50)


def test_window_spans_the_1st_to_99th_percentile():
    values = np.concatenate([np.linspace(0.0, 1.0, 9950), np.full(50, 50.0)])  # 0.5% bright outliers
    centre, width = window(values, 1e-5)
    assert centre == pytest.approx(0.5, abs=0.02) and width == pytest.approx(1.0, abs=0.05)


def test_a_zero_to_one_volume_reads_back_in_pydicom_and_itk(tmp_path):
    values = np.random.default_rng(1).uniform(0.0, 1.0, (2, 12, 10)).astype(np.float32)
    volume = Volume(values, np.diag([1.5, 1.5, 8.0, 1.0]), {"cmrsynth_model": "m"})
    folder = write_dicom_series(volume, tmp_path / "series", description="test")
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    step = float(ds.RescaleSlope)
    assert 0 < step < 1e-4 and 0.3 < float(ds.WindowCenter) < 0.7 and 0.8 < float(ds.WindowWidth) <= 1.0
    np.testing.assert_allclose(ds.pixel_array * step + float(ds.RescaleIntercept), values[0], atol=step)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    np.testing.assert_allclose(sitk.GetArrayFromImage(reader.Execute()), values, atol=step)
