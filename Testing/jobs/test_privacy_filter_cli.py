"""cmrsynth reid and cmrsynth sample --privacy-filter: the re-identification model is built beside (never in)
the model, a filtered run's shared outputs (headers, sidecars, progress events) say only what is true of every
image alike while what the filter did to each image goes to an owner-only log beside the output folder, a DP
model's filtered images say they left its guarantee, the same seed gives the same result, and an image that
keeps re-identifying a training patient is withheld with a clear message."""

import json
import os
import shutil
import stat

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


@pytest.fixture(scope="module")
def dp_flow(tiny_flow, tmp_path_factory):  # noqa: F811
    """The tiny model with a DP ledger on its card (same model id, so the same re-identification model fits)."""
    folder = tmp_path_factory.mktemp("dp") / "flow-dp"
    shutil.copytree(tiny_flow, folder)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    card["privacy"] = {"epsilon": 8.0, "delta": 1e-3, "unit": "patient"}
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


@pytest.fixture
def known_draw_seeds(monkeypatch):
    """Filtered runs draw with secret seeds; a test that needs a known outcome fixes them (0, 1, 2, ...)."""
    import itertools

    seeds = itertools.count()
    monkeypatch.setattr("CMRSynthLib.reid.filter.secret_draw_seed", lambda: next(seeds))


def sample(run_cli, model, mask, out, *extra):
    return run_cli("sample", "--model", model, "--mask", mask, "--out", out, "--vendor", "Siemens", "--steps", "3",
                   "--device", "cpu", "--format", "nrrd", *extra)


def events(stdout):
    """The progress-protocol events of a ``--progress jsonl`` run's standard output."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def private_log(out):
    path = out.with_name(out.name + ".PRIVATE-filter-log.jsonl")
    return path, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# what would tell a recipient what the filter did to an image, or how many held-out patients calibrated it
COUNT_WORDS = ("reject", "redraw", "refus", "round", "distance", "retries", "patients", "slices", "calibration")


def keys(value):
    """Every key of a JSON value, however deeply nested."""
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in [k, *keys(v)]]
    if isinstance(value, list):
        return [k for item in value for k in keys(item)]
    return []


def test_reid_is_written_where_asked_owner_only_with_its_calibration(reid_folder, tiny_flow):  # noqa: F811
    record = json.loads((reid_folder / "reid.json").read_text(encoding="utf-8"))
    card = json.loads((tiny_flow / "card.json").read_text(encoding="utf-8"))
    assert record["generator"]["model_id"] == card["model_id"] and record["threshold"] > 0
    assert record["calibration"]["split"] == "validation+holdout"
    assert record["calibration"]["patients"] == len(card["validation"]) + len(card["holdout"])
    assert record["training"]["patients"] == len(card["members"])
    assert record["training"]["unused_patients"] == len(card.get("unused") or [])
    assert (reid_folder.stat().st_mode & 0o077) == 0 and not any(p.name.startswith("reid") for p in tiny_flow.iterdir())


def test_filtered_sample_records_the_filter_and_draws_with_secret_seeds(run_cli, tiny_flow, reid_folder,  # noqa: F811
                                                                        member_mask, tmp_path):
    """The same --seed twice gives two different filtered images: a reproducible draw would let anyone holding
    the model and the mask draw it again and see which slices the filter redrew (before: identical images). The
    owner can redraw it: the private log holds the secret seed."""
    for folder in ("a", "b"):
        code, out, err = sample(run_cli, tiny_flow, member_mask, tmp_path / folder, "--privacy-filter",
                                "--reid", reid_folder, "--seed", "3")
        assert code == 0, err
    image = next((tmp_path / "a").glob("*.nrrd"))
    sidecar = json.loads(image.with_name(image.name[:-len(".nrrd")] + ".privacy.json").read_text(encoding="utf-8"))
    threshold = json.loads((reid_folder / "reid.json").read_text(encoding="utf-8"))["threshold"]
    assert sidecar["filter"]["threshold"] == threshold and sidecar["image"] == image.name
    # 12 calibration slices cannot show a 1% false-match rate: not measurable, never "0%"
    assert sidecar["filter"]["false_match_rate"] is None and "not measurable" in sidecar["filter"]["false_match_rate_note"]
    assert "differential_privacy" not in sidecar  # a model without DP has no guarantee to lose
    header = sitk.ReadImage(str(image))
    assert float(header.GetMetaData("cmrsynth_privacy_filter")) == pytest.approx(threshold, rel=1e-5)
    assert header.GetMetaData("cmrsynth_privacy_false_match_rate") == "not measurable"
    assert header.GetMetaData("cmrsynth_seed") == "secret" and "seed=secret" in header.GetMetaData("descrip")
    assert not np.array_equal(read_volume(image).array, read_volume(tmp_path / "b" / image.name).array)
    seeds = [entry["seed"] for folder in ("a", "b") for entry in private_log(tmp_path / folder)[1]
             if entry["event"] == "image"]
    assert len(set(seeds)) == 2 and 3 not in seeds
    code, _, err = sample(run_cli, tiny_flow, member_mask, tmp_path / "owner", "--seed", str(seeds[0]))
    assert code == 0, err
    if not private_log(tmp_path / "a")[1][1]["redrawn_slices"]:  # nothing redrawn: the image is that first draw
        redrawn = read_volume(next((tmp_path / "owner").glob("*.nrrd"))).array
        assert np.array_equal(read_volume(image).array, redrawn)


def test_shared_outputs_carry_no_count_and_the_private_log_holds_them(run_cli, tiny_flow, reid_folder,  # noqa: F811
                                                                       member_mask, tmp_path, known_draw_seeds):
    """Every file the run writes into --out and every protocol event says only what is true of every image alike
    (the filter ran, its threshold, its false-match rate); the rejected draws and redrawn slices are in the
    owner-only log beside the folder."""
    from CMRSynthLib.reid.model import load_reid

    # at the largest held-out distance about half of this model's slices are flagged: there are redraws to hide
    threshold = float(load_reid(reid_folder).calibration_distances.max())
    out = tmp_path / "shared"
    code, stdout, err = sample(run_cli, tiny_flow, member_mask, out, "--privacy-filter", threshold, "--reid",
                               reid_folder, "--count", "2", "--privacy-retries", "10", "--progress", "jsonl")
    assert code == 0, err
    path, log = private_log(out)
    images = [entry for entry in log if entry["event"] == "image"]
    assert [entry["event"] for entry in log] == ["run", "image", "image"] and log[0]["threshold"] == threshold
    assert sum(entry["rejected_draws"] for entry in images) > 0 and any(entry["redrawn_slices"] for entry in images)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {entry["image"] for entry in images} == {p.name for p in out.glob("*.nrrd")}

    shared = [("protocol", event) for event in events(stdout)]
    for file in sorted(out.iterdir()):
        if file.name.endswith(".json"):
            shared.append((file.name, json.loads(file.read_text(encoding="utf-8"))))
        else:
            header = sitk.ImageFileReader()
            header.SetFileName(str(file))
            header.ReadImageInformation()
            shared.append((file.name, {key: header.GetMetaData(key) for key in header.GetMetaDataKeys()}))
    assert sorted(p.name[-5:] for p in out.iterdir()) == [".json", ".json", ".nrrd", ".nrrd"]  # the log is not in it
    for name, content in shared:
        leaked = [key for key in keys(content) if any(word in key.lower() for word in COUNT_WORDS)]
        assert not leaked, f"{name} publishes {leaked}"
    done = next(event for event in events(stdout) if event["event"] == "done")
    assert done["result"]["privacy_filter"] == {"threshold": threshold, "false_match_rate": pytest.approx(11 / 12)}
    assert ("private-log" in [e.get("kind") for e in events(stdout)]
            and str(path) in [e.get("path") for e in events(stdout)])


def test_the_private_log_is_appended_and_kept_owner_only(run_cli, tiny_flow, reid_folder, member_mask,  # noqa: F811
                                                         tmp_path, known_draw_seeds):
    out = tmp_path / "run"
    log_path = out.with_name(out.name + ".PRIVATE-filter-log.jsonl")
    log_path.write_text("", encoding="utf-8")
    os.chmod(log_path, 0o644)  # made by hand, readable by all: the filter makes it private again
    for seed in ("0", "1"):
        code, _, err = sample(run_cli, tiny_flow, member_mask, out, "--privacy-filter", "--reid", reid_folder,
                              "--seed", seed)
        assert code == 0, err
    _, log = private_log(out)
    assert [e["event"] for e in log] == ["run", "image", "run", "image"]
    assert [e["image"][-len("_0.nrrd"):] for e in log if e["event"] == "image"] == ["_0.nrrd", "_1.nrrd"]
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_a_dp_model_is_warned_that_filtering_leaves_its_guarantee(run_cli, dp_flow, reid_folder, member_mask,
                                                                  tmp_path, known_draw_seeds):
    from CMRSynthLib.reid import DP_NOTE

    code, stdout, err = sample(run_cli, dp_flow, member_mask, tmp_path / "out", "--privacy-filter", "--reid",
                               reid_folder, "--progress", "jsonl")
    assert code == 0, err
    warnings = [e["message"] for e in events(stdout) if e["event"] == "warning"]
    assert len(warnings) == 1 and "ε = 8 and δ = 1.0e-03 per patient" in warnings[0] and DP_NOTE in warnings[0]
    assert "outside DP-SGD" in DP_NOTE and "no longer covered by the model's ε alone" in DP_NOTE
    assert "none formally" in DP_NOTE
    sidecar = json.loads(next((tmp_path / "out").glob("*.privacy.json")).read_text(encoding="utf-8"))
    assert sidecar["differential_privacy"] == {"model_epsilon": 8.0, "model_delta": 1e-3,
                                               "covers_these_images": False, "note": DP_NOTE}


def test_the_help_says_what_the_filter_does_to_dp(capsys):
    from CMRSynthLib.cli import main

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines at spaces and after hyphens

    def said(sentence):
        return "".join(sentence.split()) in text

    assert said("On a DP model: the filter reads the private training images (the re-identification gallery) outside "
                "DP-SGD, so the filtered images are no longer covered by the model's ε alone")
    assert said("the filter itself has no formal guarantee") and said("Off by default")
    assert said("What it did to each image goes to the owner-only <out>.PRIVATE-filter-log.jsonl beside --out")


def test_an_image_that_always_reidentifies_is_withheld(run_cli, tiny_flow, reid_folder, member_mask, tmp_path):  # noqa: F811
    # unit embeddings lie at most 2 apart: at threshold 2.5 every draw "re-identifies" a training patient
    code, out, err = sample(run_cli, tiny_flow, member_mask, tmp_path / "out", "--privacy-filter", "2.5",
                            "--reid", reid_folder, "--privacy-retries", "1")
    assert code == 2
    assert "still re-identifies a training patient after 1 redraws" in err and "withheld" in err
    error = err.strip().splitlines()[-1]
    assert str(member_mask) in error and "slice" not in error  # which slices: in the private log only
    assert "privacy filter: 0 images written, 4 slices redrawn, 1 image withheld" in err  # the operator's summary
    assert not list((tmp_path / "out").glob("*.nrrd"))
    _, log = private_log(tmp_path / "out")
    assert log[-1]["withheld"] and log[-1]["refused_slices"] == list(range(4)) and log[-1]["rejected_draws"] == 8


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


@pytest.mark.parametrize("where", ["model", "inside", "deeper", "parent", "other", "file"])
def test_reid_refuses_an_out_that_would_share_it_or_replace_something(run_cli, tiny_flow, tmp_path, where):  # noqa: F811
    """The re-identification model is private: never in the shareable model folder (nor the folder itself, which
    writing would replace), nor over a folder holding the model or holding anything else."""
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine", encoding="utf-8")
    out = {"model": tiny_flow, "inside": tiny_flow / "reid", "deeper": tiny_flow / "a" / "b",
           "parent": tiny_flow.parent, "other": other, "file": other / "keep.txt"}[where]
    before = sorted(p.name for p in tiny_flow.iterdir())
    code, stdout, err = run_cli("reid", "--model", tiny_flow, "--data", tmp_path / "no-such-cohort", "--out", out,
                                "--steps", "2", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--out {out}" in err
    assert {"model": "inside the model folder", "inside": "inside the model folder",
            "deeper": "inside the model folder", "parent": "holds the model folder",
            "other": "not a re-identification model", "file": "is a file"}[where] in err
    assert sorted(p.name for p in tiny_flow.iterdir()) == before and (other / "keep.txt").is_file()


def test_reid_reports_an_unmeasurable_false_match_rate_as_such(run_cli, tiny_flow, phantom, tmp_path):  # noqa: F811
    """12 calibration slices cannot show a 1% false-match rate (it needs 100): not measurable, null in the result,
    never 0%; at 25% (3 of 12) it is measured."""
    for rate, expected in (("0.01", None), ("0.25", 0.25)):
        code, stdout, err = run_cli("reid", "--model", tiny_flow, "--data", phantom, "--out", tmp_path / rate,
                                    "--steps", "2", "--calibration", "validation+holdout", "--false-match-rate", rate,
                                    "--device", "cpu", "--progress", "jsonl")
        assert code == 0, err
        done = next(event for event in events(stdout) if event["event"] == "done")
        assert done["result"]["false_match_rate"] == expected
        if expected is None:
            assert "false-match rate not measurable with 12 calibration slices (a 1.0% rate needs at least 100)" in stdout
        else:
            assert "false-match rate 25.0%" in stdout


def test_reid_screens_the_whole_lineage_or_refuses(run_cli, tmp_path):
    """Privacy integrity II item 8: the gallery held only the last run's members, so the patients a model saw
    through --init were never screened (before: exit 0 with B's members alone). Now the gallery holds every
    patient of the lineage, found in --data or --lineage-data, or the run is refused."""
    from CMRSynthLib.data.phantom import write_phantom_cohort

    public, private = (write_phantom_cohort(tmp_path / name, 6, seed=seed, shape=(4, 48, 48))
                       for name, seed in (("public", 31), ("private", 32)))
    common = ("--generator", "flow", "--batch-size", "2", "--device", "cpu", "--max-steps", "2", "--progress", "none")
    assert run_cli("train", "--data", public, "--out", tmp_path / "A", "--preset", "tiny", "--image-size", "32",
                   "--spacing", "5", *common)[0] == 0
    code, _, err = run_cli("train", "--data", private, "--out", tmp_path / "B", "--init", tmp_path / "A", *common,
                           "--dp", "--delta", "1e-2", "--max-grad-norm", "1", "--noise-multiplier", "1")
    assert code == 0, err
    reid = ("reid", "--model", tmp_path / "B", "--data", private, "--steps", "2", "--device", "cpu",
            "--calibration", "validation+holdout")
    code, _, err = run_cli(*reid, "--out", tmp_path / "r1")
    assert code == 2 and "that the model and the models it was fine-tuned from trained on are in no cohort" in err
    code, _, err = run_cli(*reid, "--out", tmp_path / "r2", "--lineage-data", public)
    assert code == 0, err
    record = json.loads((tmp_path / "r2" / "reid.json").read_text(encoding="utf-8"))
    cards = [json.loads((tmp_path / name / "card.json").read_text(encoding="utf-8")) for name in "BA"]
    assert record["generator"]["lineage"] == [card["model_id"] for card in cards]
    a_members = len(cards[1]["members"])
    b_members = len(json.loads(tmp_path.joinpath("B.PRIVATE-membership.json").read_text())["members"])
    assert record["training"]["patients"] == a_members + b_members
