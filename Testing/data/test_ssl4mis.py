"""ACDC in the SSL4MIS HDF5 layout: volumes and per-slice files, split lists, spacing assumption and override."""

import h5py
import numpy as np
import pytest

from CMRSynthLib.data.cohorts import load_case, open_cohort
from CMRSynthLib.data.ssl4mis import assumed_spacing, group_of
from CMRSynthLib.errors import InputError
from CMRSynthLib.training.data import published_split


def acdc_label(shape) -> np.ndarray:
    """ACDC numbering: a 3 (LV) disc inside a 2 (MYO) ring, a 1 (RV) blob beside it."""
    k, h, w = shape
    jj, ii = np.mgrid[0:h, 0:w]
    d = np.hypot(jj - h / 2, ii - w / 2)
    label = np.zeros(shape, np.uint8)
    label[:, d < 10] = 2
    label[:, d < 6] = 3
    label[:, np.hypot(jj - h / 2, ii - w / 2 + 14) < 5] = 1
    return label


def write_volume(root, name, image, label):
    with h5py.File(root / name, "w") as handle:
        handle["image"], handle["label"] = image, label


@pytest.fixture
def acdc_h5(tmp_path):
    """Patient 001 as volumes (frames 01 and 12), patient 061 as slice files (frames 01 and 02, 11 slices
    so that slice 10 sorts after slice 2 only numerically), patient 081 reserved by test.list."""
    rng = np.random.default_rng(0)
    shape = (11, 40, 48)
    label = acdc_label(shape)
    image = rng.random(shape, dtype=np.float32)
    for frame in (1, 12):
        write_volume(tmp_path, f"patient001_frame{frame:02d}.h5", image, label)
        write_volume(tmp_path, f"patient081_frame{frame:02d}.h5", image, label)
    for frame in (1, 2):
        for k in range(shape[0]):
            slice_image = np.full(shape[1:], k, np.float32)  # slice k holds the value k: the order is visible
            write_volume(tmp_path, f"patient061_frame{frame:02d}_slice_{k + 1}.h5", slice_image, label[k])
    (tmp_path / "train.list").write_text("patient001_frame01\npatient001_frame02\n")
    (tmp_path / "val.list").write_text("patient061_frame01\npatient061_frame02\n")
    (tmp_path / "test.list").write_text("patient081_frame01\npatient081_frame02\n")
    return tmp_path


def test_detects_layout_phases_groups_and_reserves_test_patients(acdc_h5):
    cohort = open_cohort(acdc_h5)
    assert cohort.layout == "acdc-h5"
    assert cohort.patients() == ["patient001", "patient061"]  # patient081 is in test.list
    phases = {(r.patient, r.attributes["frame_number"]): r.phase for r in cohort.records}
    assert phases == {("patient001", 1): "ED", ("patient001", 12): "ES", ("patient061", 1): "ED",
                      ("patient061", 2): "ES"}
    assert {r.patient: r.group for r in cohort.records} == {"patient001": "DCM", "patient061": "NOR"}
    assert any("test.list are reserved" in p for p in cohort.problems)
    assert any("assumed 1.5625 mm" in p for p in cohort.problems)


def test_labels_are_remapped_and_slices_restacked_in_order(acdc_h5):
    records = {(r.patient, r.phase): r for r in open_cohort(acdc_h5).records}
    case = load_case(records["patient061", "ED"])
    assert case.image.shape == (11, 40, 48)
    assert case.image.array[:, 0, 0].tolist() == list(range(11))  # slice_10 and slice_11 come last
    source = acdc_label((11, 40, 48))
    assert np.array_equal(case.label.array == 1, source == 3)  # ACDC 3 (LV) → canonical 1
    assert np.array_equal(case.label.array == 3, source == 1)  # ACDC 1 (RV) → canonical 3
    assert np.allclose(case.image.spacing, (1.5625, 1.5625, 10.0))


def test_spacing_csv_overrides_the_assumption(acdc_h5):
    (acdc_h5 / "spacing.csv").write_text("patient,row_mm,column_mm,slice_mm\npatient001,1.37,1.37,5\n")
    cohort = open_cohort(acdc_h5)
    records = {r.patient: r for r in cohort.records}
    assert records["patient001"].attributes["spacing_source"] == "spacing.csv"
    assert records["patient061"].attributes["spacing_source"] == "assumed"
    assert np.allclose(load_case(records["patient001"]).image.spacing, (1.37, 1.37, 5.0))


def test_bad_spacing_csv_names_the_file_and_line(acdc_h5):
    (acdc_h5 / "spacing.csv").write_text("patient,row_mm,column_mm,slice_mm\npatient001,1.4,x,5\n")
    with pytest.raises(InputError, match=r"spacing\.csv: line 2"):
        open_cohort(acdc_h5)


def test_doubled_matrix_gets_half_the_spacing():
    assert assumed_spacing((8, 256, 216)) == (1.5625, 1.5625, 10.0)
    assert assumed_spacing((8, 428, 512)) == pytest.approx((0.78125, 0.78125, 10.0))
    assert [group_of(f"patient{n:03d}") for n in (1, 21, 41, 61, 81, 100)] == ["DCM", "HCM", "MINF", "NOR",
                                                                               "ARV", "ARV"]


def test_corrupt_or_foreign_h5_is_a_clear_error(acdc_h5):
    (acdc_h5 / "patient001_frame01.h5").write_bytes(b"not hdf5")
    record = next(r for r in open_cohort(acdc_h5).records if r.patient == "patient001" and r.phase == "ED")
    with pytest.raises(InputError, match="patient001_frame01.h5: not a readable HDF5 file"):
        load_case(record)
    with h5py.File(acdc_h5 / "patient001_frame01.h5", "w") as handle:
        handle["image"] = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(InputError, match="has no 'label' array"):
        load_case(record)


def test_published_split_trains_on_train_list_and_holds_out_val(acdc_h5):
    split = published_split(open_cohort(acdc_h5).records)
    assert split.train == ("patient001",) and split.holdout == ("patient061",) and split.validation == ()
