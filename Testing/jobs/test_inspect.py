"""``cmrsynth inspect``: exact JSON values, problems listed for folders, exit 2 for one bad file, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cohort_fixtures import (
    EXPECTED_ML, SHAPE, canonical_label, image_for, make_acdc, make_generic, make_mnms1, matrix,
    write_dicom_series, write_pair,
)

from CMRSynthLib.data.cohort_report import orientation_code
from CMRSynthLib.data.volume import Volume, write_volume
from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures

KEYS = ["patient", "phase", "vendor", "group", "image", "label", "shape", "spacing", "origin", "direction",
        "volumes_ml", "problems"]


def _json(run_cli, *argv):
    code, out, err = run_cli("inspect", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_acdc_json_exact(run_cli, tmp_path):
    root = make_acdc(tmp_path / "acdc")
    report = _json(run_cli, root)

    assert list(report) == ["layout", "cases", "problems", "training_split"]
    assert report["layout"] == "acdc" and report["problems"] == []
    assert "2 patients cannot fill 3 parts" in report["training_split"]["problem"]
    assert [(c["patient"], c["phase"], c["group"], c["vendor"]) for c in report["cases"]] == [
        ("patient001", "ED", "DCM", "unknown"), ("patient001", "ES", "DCM", "unknown"),
        ("patient002", "ED", "ARV", "unknown"), ("patient002", "ES", "ARV", "unknown")]
    m = matrix()
    for case in report["cases"]:
        assert list(case) == KEYS
        assert case["volumes_ml"] == EXPECTED_ML[case["phase"]]  # canonical LV although ACDC stores LV as 3
        assert case["shape"] == [16, 16, 3]  # I, J, K
        assert case["spacing"] == [1.5, 1.5, 8.0]
        assert case["origin"] == [-12.5, 30.0, 55.0]
        np.testing.assert_allclose(case["direction"], m[:3, :3] / [1.5, 1.5, 8.0], atol=2e-6)
        assert case["problems"] == []
    assert report["cases"][1]["image"] == str(root / "patient001" / "patient001_frame03.nii.gz")
    assert report["cases"][1]["label"] == str(root / "patient001" / "patient001_frame03_gt.nii.gz")


def test_mnms1_json_vendors_and_frames(run_cli, tmp_path):
    report = _json(run_cli, make_mnms1(tmp_path / "m", vendor_column="Vendor"))
    assert report["layout"] == "mnms1"
    assert [(c["patient"], c["phase"], c["vendor"], c["volumes_ml"]["LV"]) for c in report["cases"]] == [
        ("A0S9V9", "ED", "Siemens", 3.6), ("A0S9V9", "ES", "Siemens", 1.8),
        ("B1C2D3", "ED", "Philips", 3.6), ("B1C2D3", "ES", "Philips", 1.8)]


def test_generic_label_convention_flag(run_cli, tmp_path):
    root = make_generic(tmp_path / "g", convention="acdc")
    assert _json(run_cli, root, "--label-convention", "acdc")["cases"][0]["volumes_ml"] == EXPECTED_ML["ED"]
    swapped = _json(run_cli, root)["cases"][0]["volumes_ml"]
    assert swapped == {"LV": 1.08, "MYO": 1.8, "RV": 3.6}


def test_folder_problems_are_listed_not_fatal(run_cli, tmp_path):
    good = canonical_label()
    write_pair(tmp_path / "good.nii.gz", tmp_path / "good_gt.nii.gz")
    shifted = matrix()
    shifted[:3, 3] += 3.0
    write_volume(Volume(image_for(good), matrix()), tmp_path / "moved.nii.gz")
    write_volume(Volume(good, shifted), tmp_path / "moved_gt.nii.gz")
    write_volume(Volume(image_for(good), matrix()), tmp_path / "odd.nrrd")
    write_volume(Volume(np.where(good == 2, 5, good).astype(np.uint8), matrix()), tmp_path / "odd_gt.nrrd")
    write_volume(Volume(image_for(good), matrix()), tmp_path / "blank.mha")
    write_volume(Volume(np.zeros(SHAPE, np.uint8), matrix()), tmp_path / "blank_label.mha")
    nan_image = image_for(good)
    nan_image[0, 0, :3] = np.nan
    write_volume(Volume(nan_image, matrix()), tmp_path / "nan.nii.gz")
    write_volume(Volume(good, matrix()), tmp_path / "nan_gt.nii.gz")
    (tmp_path / "torn.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    write_volume(Volume(good, matrix()), tmp_path / "torn_gt.nii.gz")
    write_volume(Volume(image_for(good), matrix()), tmp_path / "nolabel.nii.gz")

    report = _json(run_cli, tmp_path)

    cases = {c["patient"]: c for c in report["cases"]}
    assert sorted(cases) == ["blank", "good", "moved", "nan", "odd", "torn"]
    assert cases["good"]["problems"] == [] and cases["good"]["volumes_ml"] == EXPECTED_ML["ED"]
    (moved,) = cases["moved"]["problems"]
    assert moved.startswith(str(tmp_path / "moved_gt.nii.gz")) and "label geometry differs" in moved
    assert cases["moved"]["volumes_ml"] == {"LV": None, "MYO": None, "RV": None}
    (odd,) = cases["odd"]["problems"]
    assert "odd_gt.nrrd: label values [5] are outside the canonical convention" in odd
    (blank,) = cases["blank"]["problems"]
    assert "blank_label.mha: label map is empty" in blank
    assert cases["blank"]["volumes_ml"] == {"LV": 0.0, "MYO": 0.0, "RV": 0.0}
    (nan,) = cases["nan"]["problems"]
    assert "nan.nii.gz: holds 3 NaN or infinite intensities" in nan
    assert cases["nan"]["volumes_ml"] == EXPECTED_ML["ED"]
    (torn,) = cases["torn"]["problems"]
    assert "torn.nii.gz: not a readable image" in torn
    assert cases["torn"]["shape"] is None and cases["torn"]["spacing"] is None
    assert len(report["problems"]) == 1 and "nolabel.nii.gz: no label" in report["problems"][0]


def test_single_file_with_label_beside(run_cli, tmp_path):
    write_pair(tmp_path / "heart.mha", tmp_path / "heart_seg.mha", phase="ES")
    report = _json(run_cli, tmp_path / "heart.mha")
    assert report["layout"] == "file"
    (case,) = report["cases"]
    assert case["label"] == str(tmp_path / "heart_seg.mha") and case["volumes_ml"] == EXPECTED_ML["ES"]


def test_single_unreadable_file_exits_2_with_one_line(run_cli, tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"garbage")
    code, out, err = run_cli("inspect", tmp_path / "scan.nii.gz", "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(tmp_path / "scan.nii.gz") in err and "not a readable image" in err


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is an empty folder"),
    (lambda p: None, "not found"),
])
def test_bad_paths_exit_2(run_cli, tmp_path, make, message):
    make(tmp_path / "x")
    code, out, err = run_cli("inspect", tmp_path / "x")
    assert code == 2 and message in err and "Traceback" not in err


def test_dicom_cine_folder(run_cli, tmp_path):
    frames = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    folder = write_dicom_series(tmp_path / "cine", frames, trigger_times=[0.0, 400.0])

    code, _, err = run_cli("inspect", folder)
    assert code == 2 and "cine series: 2 frames at each of 3 slice positions" in err and "--frame" in err

    report = _json(run_cli, folder, "--frame", "1")
    (case,) = report["cases"]
    assert report["layout"] == "dicom" and case["shape"] == [5, 4, 3]
    assert case["spacing"] == pytest.approx([1.25, 1.5, 8.0], abs=1e-4)  # positions are written to 1e-4 mm
    assert case["label"] is None
    assert case["volumes_ml"] == {"LV": None, "MYO": None, "RV": None}
    assert case["problems"] == [f"{folder}: no label file; volumes unknown"]


def test_human_table(run_cli, tmp_path):
    make_mnms1(tmp_path / "m")
    (tmp_path / "m" / "Training" / "Labeled" / "B1C2D3" / "B1C2D3_sa_gt.nii.gz").write_bytes(b"broken")
    code, out, _ = run_cli("inspect", tmp_path / "m")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("layout: mnms1")
    assert "cases: 4  patients: 2" in out and "vendors: Philips 2, Siemens 2" in out and "16×16×3 4" in out
    header = next(line for line in lines if line.startswith("patient"))
    assert header.split() == ["patient", "phase", "vendor", "group", "shape", "spacing", "mm", "axes", "LV", "ml",
                              "MYO", "ml", "RV", "ml", "problems"]
    row = next(line for line in lines if line.startswith("A0S9V9") and " ED " in line).split()
    assert row == ["A0S9V9", "ED", "Siemens", "NOR", "16×16×3", "1.5×1.5×8", "RAS~", "3.6", "1.8", "1.1", "0"]
    assert "problems: 2" in out and out.count("B1C2D3_sa_gt.nii.gz: not a readable image") == 2


def test_jsonl_progress_and_json_share_stdout(run_cli, tmp_path):
    code, out, _ = run_cli("inspect", make_generic(tmp_path / "g"), "--json", "--progress", "jsonl")
    assert code == 0
    objects = [json.loads(line) for line in out.splitlines()]
    events = [o["event"] for o in objects if "event" in o]
    assert events[0] == "start" and events[-1] == "done" and events.count("progress") == 4
    (report,) = [o for o in objects if "event" not in o]
    assert report["layout"] == "generic" and len(report["cases"]) == 4


def test_orientation_code():
    assert orientation_code(np.eye(3)) == "RAS"
    assert orientation_code(np.diag([-1.0, -1.0, 1.0])) == "LPS"
    assert orientation_code([[0, 0, 1], [1, 0, 0], [0, -1, 0]]) == "AIR"  # I → A, J → I(nferior), K → R
    tilt = np.radians(2.0)
    assert orientation_code([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]) == "RAS~"


def test_the_training_split_is_the_one_train_makes(run_cli, phantom, tiny_flow):  # noqa: F811
    """What privacy-budget --patients needs before a DP run: the training split's size, shown by inspect, is the
    number of patients a model trained on the cohort lists as members."""
    card = json.loads((tiny_flow / "card.json").read_text(encoding="utf-8"))
    split = {"train": len(card["members"]), "validation": len(card["validation"]), "holdout": len(card["holdout"])}
    assert _json(run_cli, phantom)["training_split"] == split
    code, out, err = run_cli("inspect", phantom)
    assert code == 0, err
    assert (f"training split (cmrsynth train): {split['train']} patients to train on, {split['validation']} "
            f"validation, {split['holdout']} held out") in out
    assert f"cmrsynth privacy-budget --patients {split['train']} " in out
