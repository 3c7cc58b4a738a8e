"""The privacy filter in the receipt, proven on the phantom: a deliberately overfit model's images from member
masks are caught (≥ 90%), images that show no training patient pass at about the false-match rate, and the
audit reports the rates before and after the filter with the threshold's calibration.

One module fixture trains a tiny flow model to memorise 8 phantom patients (one 32-px slice of each phase)
and fits the re-identification model on those 8; 4 validation patients calibrate it, 4 others are held out.
"""

import json

import numpy as np
import pytest
import torch

from CMRSynthLib.audit.reidentification import reidentification
from CMRSynthLib.audit.run import AuditPlan, generate, load_slices, run_audit
from CMRSynthLib.audit.segmenter import SegmenterConfig
from CMRSynthLib.audit.membership import AttackConfig
from CMRSynthLib.audit.slices import to_conditions
from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.data.phantom import write_phantom_cohort
from CMRSynthLib.data.preprocess import PreprocessConfig
from CMRSynthLib.generators import build_generator, preset_config
from CMRSynthLib.generators.base import Vocabulary
from CMRSynthLib.jobs.progress import Progress
from CMRSynthLib.models.unet import UNetConfig
from CMRSynthLib.reid.embedding import ReidConfig
from CMRSynthLib.reid.model import build_reid, reid_path, save_reid
from CMRSynthLib.training.checkpoint import save_checkpoint

PREPROCESSING = PreprocessConfig(spacing=(6.0, 6.0), size=(32, 32))
TINY = AuditPlan(segmenter=SegmenterConfig.quick(steps=10), attack=AttackConfig(timesteps=(0.05, 0.2), draws=1,
                                                                               n_boot=50), n_boot=50)


@pytest.fixture(scope="module")
def memoriser(tmp_path_factory):
    root = tmp_path_factory.mktemp("reid-audit")
    cohort_path = write_phantom_cohort(root / "cohort", 16, seed=0, shape=(1, 48, 48))
    cohort = open_cohort(cohort_path)
    ids = cohort.patients()
    splits = {"members": ids[:8], "validation": ids[8:12], "holdout": ids[12:]}
    vocabulary = Vocabulary(vendors=("Canon", "GE", "Philips", "Siemens"))
    members = load_slices(cohort, splits["members"], PREPROCESSING, what="member")
    model = _flow_on(members, vocabulary, steps=300)  # deliberately far too long for so few images: it memorises them
    card = save_checkpoint(root / "memoriser", model, {**splits, "vocabulary": vocabulary.to_dict(),
                                                       "preprocessing": PREPROCESSING.to_dict(), "privacy": None})
    calibration = load_slices(cohort, splits["validation"], PREPROCESSING, what="validation")
    reid = build_reid(card, members, calibration, config=ReidConfig(size=(32, 32), steps=80), n_boot=100)
    save_reid(reid, reid_path(root / "memoriser"))
    return {"root": root, "cohort": cohort_path, "model": model, "vocabulary": vocabulary, "reid": reid,
            "members": members, "holdout": load_slices(cohort, splits["holdout"], PREPROCESSING, what="held-out")}


def _flow_on(members, vocabulary, *, steps: int):
    """A tiny flow model fitted on ``members`` for ``steps`` full-batch steps (seeded), in eval mode."""
    torch.manual_seed(0)
    network = UNetConfig(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=4,
                         num_head_channels=8)
    model = build_generator("flow", preset_config("flow", "tiny", spatial_dims=2, image_size=32, vocabulary=vocabulary,
                                                  network=network, p_uncond=0.0, t_sampling="uniform"))
    images, cond = torch.from_numpy(members.images)[:, None], to_conditions(members, vocabulary)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    noise = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model.loss(images, cond, generator=noise).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _redraw(memoriser, slices):
    def redraw(which, seed):
        return generate(memoriser["model"], memoriser["vocabulary"], slices.take(which), seed=seed, batch_size=64,
                        progress=Progress("none"), label="redraw").images
    return redraw


def test_overfit_models_near_copies_are_caught(memoriser):
    members = memoriser["members"]
    synthetic = generate(memoriser["model"], memoriser["vocabulary"], members, seed=0, batch_size=64,
                         progress=Progress("none"), label="members")
    section = reidentification(memoriser["reid"], synthetic, _redraw(memoriser, members), seed=0, n_boot=50)
    assert section["before"].value >= 0.9
    assert section["rejected_draws"] >= round(0.9 * len(members))
    assert section["after"].value >= 0.5  # redraws of a memoriser copy the member again: most are withheld


def test_a_model_that_has_not_memorised_passes_on_the_same_member_masks(memoriser):
    """The contrast to the memoriser: the same member masks, the same re-identification model, but a model fitted
    for 30 steps instead of 300 draws its own surroundings, and the filter lets them through. What it catches is
    copying, not the mask."""
    members = memoriser["members"]
    early = _flow_on(members, memoriser["vocabulary"], steps=30)
    synthetic = generate(early, memoriser["vocabulary"], members, seed=0, batch_size=64, progress=Progress("none"),
                         label="members")
    assert reidentification(memoriser["reid"], synthetic, None, seed=0, n_boot=50)["before"].value <= 0.25


def test_images_of_no_training_patient_pass_at_about_the_false_match_rate(memoriser):
    holdout = memoriser["holdout"]  # real scans of patients neither the model nor the embedding saw
    section = reidentification(memoriser["reid"], holdout, None, seed=0, n_boot=50)
    assert section["before"].value <= 0.25 and section["after"] is None and "cannot be redrawn" in section["note"]


def test_audit_reports_rates_before_and_after_with_the_calibration(memoriser):
    out = memoriser["root"] / "report"
    report = run_audit([str(memoriser["root"] / "memoriser")], memoriser["cohort"], out, plan=TINY,
                       cache=memoriser["root"] / "cache")
    stored = json.loads((out / "report.json").read_text(encoding="utf-8"))["models"][0]["reidentification"]
    assert stored["before"]["value"] >= 0.9 and stored["after"]["value"] <= stored["before"]["value"]
    assert stored["threshold"] == memoriser["reid"].threshold and stored["calibration"]["patients"] == 4
    assert stored["before"]["n"] == 8 and stored["rejected_draws"] >= 1
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Re-identification (the privacy filter" in html and "re-identified before" in html
    assert report["models"][0]["reidentification"]["before"].value == stored["before"]["value"]


def test_audit_without_a_reid_model_says_how_to_build_one(memoriser, tmp_path):
    import shutil

    shutil.copytree(memoriser["root"] / "memoriser", tmp_path / "copy")
    report = run_audit([str(tmp_path / "copy")], memoriser["cohort"], tmp_path / "report", plan=TINY,
                       cache=memoriser["root"] / "cache")
    assert "build it with cmrsynth reid" in report["models"][0]["reidentification"]["skipped"]
    assert "Re-identification (privacy filter): not measured" in (tmp_path / "report" / "report.html").read_text(
        encoding="utf-8")
