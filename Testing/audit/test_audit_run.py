"""End to end: the audit catches a deliberately overfit model, flags a "generator" that returns held-out
real images, refuses overlapping members/holdout and bad input, and writes a report a person can read.

One module fixture trains a tiny flow-matching model to memorise 8 phantom patients (one ED slice each,
32 px); the other 8 patients are held out. Everything else uses small settings (:data:`TINY`).
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from CMRSynthLib.audit.membership import AttackConfig, membership_inference
from CMRSynthLib.audit.memorisation import nearest_neighbours
from CMRSynthLib.audit.run import AuditPlan, generate, load_slices, run_audit, subsample_matched
from CMRSynthLib.audit.segmenter import SegmenterConfig
from CMRSynthLib.audit.slices import to_conditions
from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.data.phantom import write_phantom_cohort
from CMRSynthLib.data.preprocess import PreprocessConfig
from CMRSynthLib.generators import build_generator, preset_config
from CMRSynthLib.generators.base import Vocabulary
from CMRSynthLib.jobs.progress import Progress
from CMRSynthLib.models.unet import UNetConfig
from CMRSynthLib.training.checkpoint import save_checkpoint


MEMBERS = [f"phantom{i:03d}" for i in range(8)]
HOLDOUT = [f"phantom{i:03d}" for i in range(8, 16)]
PREPROCESSING = PreprocessConfig(spacing=(6.0, 6.0), size=(32, 32))
ATTACK = AttackConfig(timesteps=(0.02, 0.05, 0.1, 0.2), draws=2, n_boot=200)
TINY = AuditPlan(segmenter=SegmenterConfig.quick(steps=25), attack=ATTACK, n_boot=100)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 16-patient phantom cohort (ED only: one 32-px slice per patient) and a model that memorised 8."""
    root = tmp_path_factory.mktemp("audit")
    cohort = write_phantom_cohort(root / "cohort", 16, seed=0, shape=(1, 48, 48))
    with open(cohort / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "ED"]
    with open(cohort / "cohort.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    torch.manual_seed(0)
    vocabulary = Vocabulary(vendors=("Canon", "GE", "Philips", "Siemens"))
    network = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=4,
                         num_head_channels=8)
    config = preset_config("flow", "tiny", spatial_dims=2, image_size=32, vocabulary=vocabulary, network=network,
                           p_uncond=0.0, t_sampling="uniform")
    model = build_generator("flow", config)
    members = load_slices(open_cohort(cohort), MEMBERS, PREPROCESSING, what="member")
    images, cond = torch.from_numpy(members.images)[:, None], to_conditions(members, vocabulary)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    noise = torch.Generator().manual_seed(0)
    for _ in range(300):  # deliberately far too long for 8 images: the model memorises them
        loss = model.loss(images, cond, generator=noise).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    card = {"members": MEMBERS, "holdout": HOLDOUT, "vocabulary": vocabulary.to_dict(),
            "preprocessing": PREPROCESSING.to_dict(), "privacy": None}
    save_checkpoint(root / "memoriser", model, card)
    return {"root": root, "cohort": cohort, "model": model, "vocabulary": vocabulary,
            "checkpoint": root / "memoriser", "cache": root / "cache"}


def test_overfit_model_is_caught(workspace):
    cohort = open_cohort(workspace["cohort"])
    members = load_slices(cohort, MEMBERS, PREPROCESSING, what="member")
    holdout = load_slices(cohort, HOLDOUT, PREPROCESSING, what="held-out")
    result = membership_inference(workspace["model"], workspace["vocabulary"], members, holdout, ATTACK)
    assert "balanced by vendor" in result["protocol"]
    assert len(result["evaluation_patients"]["members"]) == 4
    loss_attack = result["attacks"][0]
    assert loss_attack["evaluation"]["auc"].value >= 0.9
    assert loss_attack["evaluation"]["p_value"] < 0.05
    synthetic = generate(workspace["model"], workspace["vocabulary"], members, seed=0, batch_size=8,
                         progress=Progress("none"), label="test")
    copies = nearest_neighbours(synthetic, members, set(MEMBERS), n_boot=50)
    assert copies["pixel"]["near_copies_of_members"] >= 1


def test_audit_writes_a_truthful_report(workspace):
    out = workspace["root"] / "report"
    report = run_audit([str(workspace["checkpoint"])], workspace["cohort"], out, plan=TINY, redact=True,
                       cache=workspace["cache"])
    model = report["models"][0]
    verdict = {row["axis"]: row for row in model["verdict"]}
    assert verdict["privacy (membership)"]["level"] == "poor"
    assert verdict["privacy (memorisation)"]["level"] == "poor"
    assert verdict["privacy (DP)"]["number"] == "none"
    stored = json.loads((out / "report.json").read_text(encoding="utf-8"))
    auc = stored["models"][0]["membership"]["attacks"][0]["evaluation"]["auc"]
    assert auc["n"] == 8 and auc["method"] and auc["low"] <= auc["value"] <= auc["high"]
    assert stored["models"][0]["adherence"]["ceiling"]["LV"]["dice"]["n"] == 8
    assert "4 patients per class" in auc["warning"]  # the evaluation half is small, and the report says so
    disc = stored["models"][0]["discriminability"]  # real vs synthetic: every patient evaluated once
    assert disc["auc"]["n"] == 16 and disc["auc"]["low"] <= disc["auc"]["value"] <= disc["auc"]["high"]
    assert sorted(disc["halves"][0]["patients"] + disc["halves"][1]["patients"]) == sorted(MEMBERS + HOLDOUT)
    assert verdict["discriminability"]["number"].startswith(f"AUC {disc['auc']['value']:.2f} [")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.index("Fidelity") < html.index("<h3>Discriminability") < html.index("Mask adherence")
    assert "real-vs-synthetic classifier tested on 16 patients" in html[html.index("id=verdict"):]
    assert html.count("data:image/png;base64,") >= 4 and "SENSITIVE" in html and "real images redacted" in html
    assert html.index("no differential privacy") < html.index("Fidelity") < html.index("id=verdict")
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f"memoriser-{k}.png" for k in ("samples", "nearest-neighbours", "intensity", "roc", "timesteps"))
    assert out.stat().st_mode & 0o055 == 0o055 & ~os.umask(os.umask(0))  # redacted: shareable, follows the umask


def test_capped_audit_still_attacks_every_patient(workspace):
    from dataclasses import replace

    report = run_audit([str(workspace["checkpoint"])], workspace["cohort"], workspace["root"] / "report-capped",
                       plan=replace(TINY, max_patients=4), cache=workspace["cache"])
    model = report["models"][0]
    assert len(model["patients"]["members"]) == len(model["patients"]["non_members"]) == 4
    attacked = {side: model["membership"]["calibration_patients"][side] + model["membership"]["evaluation_patients"][side]
                for side in ("members", "non_members")}
    assert sorted(attacked["members"]) == MEMBERS and sorted(attacked["non_members"]) == HOLDOUT
    assert model["membership"]["attacks"][0]["evaluation"]["auc"].value >= 0.9  # the memoriser is still caught
    # it shows real training images (not redacted): owner-only whatever the umask; the redacted one is not
    import stat

    assert stat.S_IMODE((workspace["root"] / "report-capped").stat().st_mode) == 0o700


def test_too_few_patients_for_discriminability_is_a_warning_not_a_crash(workspace, tmp_path):
    cohort = write_phantom_cohort(tmp_path / "cohort", 2, seed=0, shape=(4, 48, 48))  # a few slices per image
    card = {"members": ["phantom000"], "holdout": ["phantom001"], "vocabulary": workspace["vocabulary"].to_dict(),
            "preprocessing": PREPROCESSING.to_dict(), "privacy": None}
    save_checkpoint(tmp_path / "model", workspace["model"], card)
    report = run_audit([str(tmp_path / "model")], cohort, tmp_path / "report", plan=TINY, cache=workspace["cache"])
    model = report["models"][0]
    assert "at least 4 patients" in model["discriminability"]["skipped"]
    assert any("discriminability not measured" in w for w in report["warnings"])
    row = next(r for r in model["verdict"] if r["axis"] == "discriminability")
    assert row["number"] == "not measured" and row["level"] == "info"


def test_generator_returning_held_out_images_is_flagged(workspace):
    copies = workspace["root"] / "copies"
    shutil.copytree(workspace["cohort"], copies)
    with open(copies / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["patient"] in HOLDOUT]
    with open(copies / "cohort.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = run_audit([str(workspace["checkpoint"])], workspace["cohort"], workspace["root"] / "report-copies",
                       synthetic=copies, plan=TINY, cache=workspace["cache"])
    pixel = report["models"][0]["memorisation"]["pixel"]
    assert pixel["near_copies"] == pixel["near_copies_of_non_members"] == len(HOLDOUT)
    assert report["models"][0]["synthetic"]["source"] == "read from --synthetic"


def test_overlap_and_bad_input_are_refused(workspace, run_cli, tmp_path):
    common = ["audit", "--model", workspace["checkpoint"], "--data", workspace["cohort"]]
    code, _, err = run_cli(*common, "--out", tmp_path / "a", "--members", ",".join(MEMBERS[:4]),
                           "--holdout", ",".join(MEMBERS[3:]))
    assert code == 2 and "overlap" in err and "phantom003" in err
    code, _, err = run_cli(*common, "--out", tmp_path / "b", "--holdout", "nobody1,nobody2")
    assert code == 2 and "none of the 2 held-out patients" in err
    code, _, err = run_cli(*common, "--out", tmp_path / "b", "--holdout", "validation")  # not in this card
    assert code == 2 and "--holdout validation" in err
    code, _, err = run_cli(*common, "--out", tmp_path / "b", "--holdout", "members")
    assert code == 2 and "overlap" in err
    no_masks = tmp_path / "no-masks"
    no_masks.mkdir()
    with open(workspace["cohort"] / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:2]
    for row in rows:
        shutil.copy(workspace["cohort"] / row["image"], no_masks / f"{row['patient']}.nii.gz")
    shutil.copy(workspace["cohort"] / rows[0]["label"], no_masks / f"{rows[0]['patient']}_gt.nii.gz")
    code, _, err = run_cli(*common, "--out", tmp_path / "c", "--synthetic", no_masks)
    assert code == 2 and "needs its mask" in err and "phantom001.nii.gz" in err
    bad = tmp_path / "inception.safetensors"
    from safetensors.torch import save_file

    save_file({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 1, 3, 3)}, str(bad))
    code, _, err = run_cli(*common, "--out", tmp_path / "d", "--inception-weights", bad)
    assert code == 2 and "do not fit Inception-v3" in err
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing written on failure


def test_capped_audit_matches_members_to_the_non_members_strata():
    strata = {f"m{i}": ("ABCD"[i % 4], "NDHMR"[i % 5]) for i in range(28)}
    strata.update({f"n{i}": ("ABCD"[(3 * i) % 4], "NDHMR"[(7 * i) % 5]) for i in range(12)})
    members, nonmembers = subsample_matched(sorted(k for k in strata if k[0] == "m"),
                                            sorted(k for k in strata if k[0] == "n"), strata, 8, 0)
    assert len(members) == len(nonmembers) == 8
    assert sorted(strata[p] for p in members) == sorted(strata[p] for p in nonmembers)


def test_capped_slices_span_the_heart_from_base_to_apex(tmp_path):
    cohort = open_cohort(write_phantom_cohort(tmp_path / "cohort", 1, seed=3, shape=(10, 48, 48)))
    every = load_slices(cohort, ["phantom000-seed3"], PREPROCESSING, what="member")
    capped = load_slices(cohort, ["phantom000-seed3"], PREPROCESSING, what="member", slices_per_case=3)
    assert len(capped) == 6 and len(every) > 6
    for phase in ("ED", "ES"):
        all_of_phase, kept = every.take(every.phases == phase), capped.take(capped.phases == phase)
        # first, middle and last heart slice of each image, in order
        picks = np.linspace(0, len(all_of_phase) - 1, 3).round().astype(int)
        np.testing.assert_array_equal(kept.images, all_of_phase.images[picks])
        np.testing.assert_array_equal(kept.masks, all_of_phase.masks[picks])


def test_patients_and_slices_per_case_flags_size_the_audit(workspace, run_cli, tmp_path):
    common = ["audit", "--model", workspace["checkpoint"], "--data", workspace["cohort"], "--quick"]
    code, _, err = run_cli(*common, "--out", tmp_path / "bad", "--patients", "0")
    assert code == 2 and "--patients must be at least 1" in err and not (tmp_path / "bad").exists()
    code, _, err = run_cli(*common, "--out", tmp_path / "bad", "--segmenter-steps", "-3")
    assert code == 2 and "--segmenter-steps must be at least 1" in err
    code, _, err = run_cli(*common, "--out", tmp_path / "r", "--patients", "7", "--slices-per-case", "1",
                           "--segmenter-steps", "30", "--progress", "none")
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["max_patients"] == 7 and report["settings"]["slices_per_case"] == 1
    assert report["settings"]["segmenter"]["steps"] == 30
    model = report["models"][0]
    assert len(model["patients"]["members"]) == len(model["patients"]["non_members"]) == 7
    assert any(w.startswith("capped run: at most 7 members") for w in report["warnings"])
