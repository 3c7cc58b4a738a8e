"""cmrsynth reid and cmrsynth sample --privacy-filter: the re-identification model is built beside (never in)
the model, a filtered run records what it did in the header and a sidecar, the same seed gives the same
result, and an image that keeps re-identifying a training patient is withheld with a clear message."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.data.volume import read_volume
from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def reid_folder(tiny_flow, phantom, tmp_path_factory):  # noqa: F811
    from CMRSynthLib.cli import main

    out = tmp_path_factory.mktemp("reid") / "flow.PRIVATE-reid"
    assert main(["reid", "--model", str(tiny_flow), "--data", str(phantom), "--out", str(out), "--steps", "20",
                 "--calibration", "validation+holdout", "--device", "cpu", "--progress", "none"]) == 0
    return out


@pytest.fixture
def member_mask(tiny_flow, phantom):  # noqa: F811
    """The label file of a patient the tiny model was trained on."""
    card = json.loads((tiny_flow / "card.json").read_text(encoding="utf-8"))
    record = next(r for r in open_cohort(phantom).records if r.patient == card["members"][0])
    return record.label_path


def sample(run_cli, model, mask, out, *extra):
    return run_cli("sample", "--model", model, "--mask", mask, "--out", out, "--vendor", "Siemens", "--steps", "3",
                   "--device", "cpu", "--format", "nrrd", *extra)


def test_reid_is_written_where_asked_owner_only_with_its_calibration(reid_folder, tiny_flow):  # noqa: F811
    record = json.loads((reid_folder / "reid.json").read_text(encoding="utf-8"))
    card = json.loads((tiny_flow / "card.json").read_text(encoding="utf-8"))
    assert record["generator"]["model_id"] == card["model_id"] and record["threshold"] > 0
    assert record["calibration"]["split"] == "validation+holdout"
    assert record["calibration"]["patients"] == len(card["validation"]) + len(card["holdout"])
    assert record["training"]["patients"] == len(card["members"])
    assert record["training"]["unused_patients"] == len(card.get("unused") or [])
    assert (reid_folder.stat().st_mode & 0o077) == 0 and not any(p.name.startswith("reid") for p in tiny_flow.iterdir())


def test_filtered_sample_records_the_filter_and_is_reproducible(run_cli, tiny_flow, reid_folder, member_mask,  # noqa: F811
                                                                  tmp_path):
    for folder in ("a", "b"):
        code, out, err = sample(run_cli, tiny_flow, member_mask, tmp_path / folder, "--privacy-filter",
                                "--reid", reid_folder, "--seed", "3")
        assert code == 0, err
    image = next((tmp_path / "a").glob("*.nrrd"))
    sidecar = json.loads(image.with_name(image.name[:-len(".nrrd")] + ".privacy.json").read_text(encoding="utf-8"))
    threshold = json.loads((reid_folder / "reid.json").read_text(encoding="utf-8"))["threshold"]
    assert sidecar["filter"]["threshold"] == threshold and sidecar["seed"] == 3
    assert sidecar["rejected_draws"] >= 0 and sidecar["filter"]["false_match_rate"] <= 0.5
    header = sitk.ReadImage(str(image))
    assert float(header.GetMetaData("cmrsynth_privacy_filter")) == pytest.approx(threshold, rel=1e-5)
    assert header.GetMetaData("cmrsynth_privacy_rejected") == str(sidecar["rejected_draws"])
    assert np.array_equal(read_volume(image).array, read_volume(tmp_path / "b" / image.name).array)


def test_an_image_that_always_reidentifies_is_withheld(run_cli, tiny_flow, reid_folder, member_mask, tmp_path):  # noqa: F811
    # unit embeddings lie at most 2 apart: at threshold 2.5 every draw "re-identifies" a training patient
    code, out, err = sample(run_cli, tiny_flow, member_mask, tmp_path / "out", "--privacy-filter", "2.5",
                            "--reid", reid_folder, "--privacy-retries", "1")
    assert code == 2
    assert "still re-identifies a training patient after 1 redraws" in err and "withheld" in err
    assert str(member_mask) in err
    assert not list((tmp_path / "out").glob("*.nrrd"))


def test_filter_options_are_checked(run_cli, tiny_flow, reid_folder, member_mask, tmp_path):  # noqa: F811
    code, _, err = sample(run_cli, tiny_flow, member_mask, tmp_path / "o1", "--privacy-filter")
    assert code == 2 and "no re-identification model" in err and "cmrsynth reid --model" in err
    code, _, err = sample(run_cli, tiny_flow, member_mask, tmp_path / "o2", "--reid", reid_folder)
    assert code == 2 and "--reid applies only with --privacy-filter" in err
    code, _, err = sample(run_cli, tiny_flow, member_mask, tmp_path / "o3", "--privacy-filter", "near",
                          "--reid", reid_folder)
    assert code == 2 and "--privacy-filter takes an embedding distance" in err


def test_reid_refuses_a_model_without_its_patients_in_the_data(run_cli, tiny_flow, tmp_path):  # noqa: F811
    from CMRSynthLib.data.phantom import write_phantom_cohort

    other = write_phantom_cohort(tmp_path / "other", 3, seed=11, shape=(4, 48, 48))
    code, _, err = run_cli("reid", "--model", tiny_flow, "--data", other, "--out", tmp_path / "r", "--steps", "2",
                           "--device", "cpu")
    assert code == 2 and "training patients" in err and "is --data the cohort this model was trained on" in err
