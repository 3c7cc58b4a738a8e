"""Cohort layouts: detection, listing, canonical labels with known volumes, and every bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from cohort_fixtures import (
    EXPECTED_ML, SHAPE, canonical_label, image_for, in_convention, make_acdc, make_generic, make_mnms1,
    make_mnms2, make_phantom_layout, matrix, write_4d, write_dicom_series, write_pair,
)

from CMRSynthLib.data.cohort_layouts import vendor_name
from CMRSynthLib.data.cohorts import load_case, open_cohort
from CMRSynthLib.data.volume import Volume, read_volume, write_volume
from CMRSynthLib.errors import InputError

BUILDERS = {"acdc": make_acdc, "mnms1": make_mnms1, "mnms2": make_mnms2, "generic": make_generic,
            "cmrsynth": make_phantom_layout}


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_layout_detected_and_labels_canonical_with_known_volumes(tmp_path, layout):
    cohort = open_cohort(BUILDERS[layout](tmp_path / layout))

    assert cohort.layout == layout
    assert cohort.problems == []
    assert len(cohort.records) == 4
    for case in cohort.cases():
        phase = "ES" if case.phase == "ES" else "ED"  # generic cases without a phase hold the ED label
        assert case.label.array.dtype == np.uint8
        np.testing.assert_array_equal(case.label.array, canonical_label(phase))  # LV really is label 1
        np.testing.assert_array_equal(case.image.array, image_for(canonical_label(phase)))
        np.testing.assert_allclose(case.image.ijk_to_ras, matrix(), atol=1e-4)
        volumes = {name: np.count_nonzero(case.label.array == value) * case.label.voxel_volume_ml
                   for name, value in (("LV", 1), ("MYO", 2), ("RV", 3))}
        assert volumes == pytest.approx(EXPECTED_ML[phase], abs=1e-6)


def test_acdc_phases_groups_attributes_and_swapped_labels(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    cohort = open_cohort(root)

    assert [(r.patient, r.phase, r.group) for r in cohort.records] == [
        ("patient001", "ED", "DCM"), ("patient001", "ES", "DCM"),
        ("patient002", "ED", "ARV"), ("patient002", "ES", "ARV")]
    assert all(r.label_convention == "acdc" and not r.image_path.endswith("_4d.nii.gz") for r in cohort.records)
    assert cohort.records[0].attributes == {"height": 184.0, "weight": 95.0, "frames": 30, "frame_number": 1}
    assert cohort.records[1].image_path.endswith("patient001_frame03.nii.gz")
    raw = read_volume(cohort.records[0].label_path).array
    assert raw[0, 5, 5] == 3 and load_case(cohort.records[0]).label.array[0, 5, 5] == 1  # ACDC LV=3 → canonical 1
    assert raw[0, 14, 1] == 1 and load_case(cohort.records[0]).label.array[0, 14, 1] == 3  # ACDC RV=1 → 3
    assert cohort.patients() == ["patient001", "patient002"]


def test_acdc_without_info_cfg_lists_a_problem(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    (root / "patient002" / "Info.cfg").unlink()
    cohort = open_cohort(root)
    assert [r.phase for r in cohort.records if r.patient == "patient002"] == ["unknown", "unknown"]
    assert len(cohort.problems) == 1 and "patient002: no Info.cfg" in cohort.problems[0]


@pytest.mark.parametrize("vendor_column", ["VendorName", "Vendor"])
def test_mnms1_frames_and_vendors(tmp_path, vendor_column):
    root = make_mnms1(tmp_path / "mnms", vendor_column=vendor_column)
    # the CSV sits two folders above the one given, as in the released OpenDataset
    cohort = open_cohort(root / "Training" / "Labeled")

    assert cohort.layout == "mnms1"
    assert [(r.patient, r.phase, r.frame, r.vendor, r.group) for r in cohort.records] == [
        ("A0S9V9", "ED", 0, "Siemens", "NOR"), ("A0S9V9", "ES", 2, "Siemens", "NOR"),
        ("B1C2D3", "ED", 0, "Philips", "HCM"), ("B1C2D3", "ES", 2, "Philips", "HCM")]
    assert cohort.records[0].label_convention == "mnms"


def test_mnms1_folder_missing_from_csv_and_bad_frame(tmp_path):
    root = make_mnms1(tmp_path / "mnms")
    extra = root / "Training" / "Labeled" / "Z9Z9Z9"
    write_4d(extra / "Z9Z9Z9_sa.nii.gz", [image_for(canonical_label())])
    write_4d(extra / "Z9Z9Z9_sa_gt.nii.gz", [canonical_label()])
    cohort = open_cohort(root)
    assert {r.patient for r in cohort.records} == {"A0S9V9", "B1C2D3"}
    assert any("Z9Z9Z9 has no row" in p for p in cohort.problems)

    record = cohort.records[0]
    bad = type(record)(**{**record.__dict__, "frame": 9})
    with pytest.raises(InputError, match=r"A0S9V9_sa.nii.gz: frame 9 does not exist: the file holds 4 frame"):
        load_case(bad)


def test_mnms2_ignores_long_axis_and_names_vendors(tmp_path):
    cohort = open_cohort(make_mnms2(tmp_path / "mnms2"))
    assert [(r.patient, r.phase, r.vendor, r.group) for r in cohort.records] == [
        ("001", "ED", "Philips", "DLV"), ("001", "ES", "Philips", "DLV"), ("002", "ED", "Siemens", "NOR"),
        ("002", "ES", "Siemens", "NOR")]
    assert not any("_LA_" in r.image_path for r in cohort.records)
    assert cohort.records[0].attributes == {"sex": "M", "age": 60.0}


def test_vendor_names():
    assert [vendor_name(v) for v in ("A", "b", "GE MEDICAL SYSTEMS", "TOSHIBA", "Siemens Healthineers", "Acme",
                                     "", None)] == ["Siemens", "Philips", "GE", "Canon", "Siemens", "Acme",
                                                    "unknown", "unknown"]


def test_generic_pairs_nested_and_named(tmp_path):
    cohort = open_cohort(make_generic(tmp_path / "g"))
    assert [(r.patient, r.phase) for r in cohort.records] == [
        ("caseA", "ED"), ("caseA", "ES"), ("caseB", "unknown"), ("caseC", "unknown")]
    assert cohort.records[3].label_path.endswith("caseC_mask.nii.gz")


def test_generic_acdc_convention_needs_the_flag(tmp_path):
    root = make_generic(tmp_path / "g", convention="acdc")
    case = load_case(open_cohort(root, label_convention="acdc").records[0])
    np.testing.assert_array_equal(case.label.array, canonical_label("ED"))
    wrong = load_case(open_cohort(root).records[0])  # read as canonical, LV and RV trade places
    np.testing.assert_array_equal(wrong.label.array, in_convention(canonical_label("ED"), "acdc"))


def test_same_name_in_two_folders_keeps_patients_apart(tmp_path):
    for site in ("s1", "s2"):
        write_pair(tmp_path / site / "heart.nii.gz", tmp_path / site / "heart_gt.nii.gz")
    assert open_cohort(tmp_path).patients() == ["s1/heart", "s2/heart"]


def test_single_file_and_dicom_folder(tmp_path):
    write_pair(tmp_path / "one.nrrd", tmp_path / "one_seg.nrrd")
    cohort = open_cohort(tmp_path / "one.nrrd")
    assert cohort.layout == "file" and cohort.records[0].label_path.endswith("one_seg.nrrd")
    write_volume(Volume(image_for(canonical_label()), matrix()), tmp_path / "alone.mha")
    alone = open_cohort(tmp_path / "alone.mha")
    assert alone.records[0].label_path is None and "no label" in alone.problems[0]
    assert load_case(alone.records[0]).label is None

    frames = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    folder = write_dicom_series(tmp_path / "dicom", frames, trigger_times=[0.0, 40.0])
    dicom = open_cohort(folder, frame=1)
    assert dicom.layout == "dicom"
    np.testing.assert_array_equal(load_case(dicom.records[0]).image.array, frames[1])


@pytest.mark.parametrize("setup, message", [
    (lambda p: p.mkdir(), "is an empty folder"),
    (lambda p: None, "not found"),
    (lambda p: (p.mkdir(), (p / "readme.txt").write_text("x")), "holds no image files"),
    (lambda p: write_volume(Volume(np.zeros(SHAPE, np.float32), matrix()), p / "lonely.nii.gz"),
     "found no usable case: .*lonely.nii.gz: no label"),
])
def test_bad_folders(tmp_path, setup, message):
    path = tmp_path / "cohort"
    setup(path)
    with pytest.raises(InputError, match=message):
        open_cohort(path)


def test_options_that_do_not_apply_are_refused(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    with pytest.raises(InputError, match="--label-convention mnms contradicts the detected acdc layout"):
        open_cohort(root, label_convention="mnms")
    assert open_cohort(root, label_convention="acdc").layout == "acdc"
    with pytest.raises(InputError, match="--label-convention 'ukbb' is unknown"):
        open_cohort(root, label_convention="ukbb")
    with pytest.raises(InputError, match="--frame 2 applies only to a DICOM cine"):
        open_cohort(root, frame=2)


def _bad_pair(tmp_path, *, image=None, label=None, label_matrix=None):
    """One generic pair with a chosen defect; returns its only record."""
    good = canonical_label()
    write_volume(Volume(image if image is not None else image_for(good), matrix()), tmp_path / "bad.nii.gz")
    write_volume(Volume(label if label is not None else good, label_matrix if label_matrix is not None else matrix()),
                 tmp_path / "bad_gt.nii.gz")
    return open_cohort(tmp_path).records[0]


def _shifted():
    m = matrix()
    m[:3, 3] += [2.0, 0.0, 0.0]
    return m


@pytest.mark.parametrize("defect, message, culprit", [
    (dict(label=np.where(canonical_label() == 3, 7, canonical_label()).astype(np.uint8)),
     r"label values \[7\] are outside the canonical convention", "bad_gt.nii.gz"),
    (dict(label=np.zeros(SHAPE, np.uint8)), "label map is empty", "bad_gt.nii.gz"),
    (dict(image=np.where(canonical_label() == 1, np.nan, 1.0).astype(np.float32)), "holds 200 NaN or infinite",
     "bad.nii.gz"),
    (dict(label_matrix=_shifted()), "label geometry differs from its image", "bad_gt.nii.gz"),
    (dict(label=canonical_label()[:2]), r"label shape \(2, 16, 16\) \(KJI\) differs", "bad_gt.nii.gz"),
    (dict(label=canonical_label().astype(np.float32) + 0.5), "non-integer values", "bad_gt.nii.gz"),
])
def test_bad_case_names_the_file(tmp_path, defect, message, culprit):
    record = _bad_pair(tmp_path, **defect)
    with pytest.raises(InputError, match=message) as info:
        load_case(record)
    assert info.value.path.endswith(culprit)


def test_4d_where_3d_expected_and_corrupt_files(tmp_path):
    write_4d(tmp_path / "cine.nii.gz", [image_for(canonical_label())] * 2)
    write_pair(tmp_path / "x.nii.gz", tmp_path / "cine_gt.nii.gz")
    with pytest.raises(InputError, match=r"cine.nii.gz: is 4D; a 3D volume is expected"):
        load_case(open_cohort(tmp_path / "cine.nii.gz").records[0])

    (tmp_path / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all"))
    write_volume(Volume(canonical_label(), matrix()), tmp_path / "broken_gt.nii.gz")
    with pytest.raises(InputError, match=r"broken.nii.gz: not a readable image"):
        load_case(open_cohort(tmp_path / "broken.nii.gz").records[0])


def test_hidden_files_below_the_root_are_skipped_but_a_hidden_parent_is_fine(tmp_path):
    root = make_generic(tmp_path / ".cache" / "cohort")
    write_pair(root / ".caseZ.partial.nii.gz", root / ".caseZ.partial_gt.nii.gz")  # a half-written output
    write_pair(root / ".trash" / "caseY.nii.gz", root / ".trash" / "caseY_gt.nii.gz")
    cohort = open_cohort(root)
    assert cohort.patients() == ["caseA", "caseB", "caseC"] and cohort.problems == []
