"""Utility: is synthetic data good for training a segmenter? (the seed papers' central claim, measured)

Three arms train the same MONAI segmenter (:mod:`.segmenter`) on real training patients, on synthetic
images, and on both; each is tested on real held-out patients (Dice and HD95 per structure, patient-level
bootstrap CIs). Every arm sees each of its images as often as the baseline does: an arm with more slices than
the baseline trains proportionally more steps (:func:`steps_for`). With a fixed number of steps, "real +
synthetic" would see each real image half as often as "real": on the ACDC receipt (560 real slices of 70
training patients, 10 val.list test patients, one segmenter per seed) real gained nothing from twice the steps
(mean Dice over seeds 0-2: 0.800 / 0.823 / 0.827 at 1500, 0.797 / 0.827 / 0.818 at 3000) while real +
synthetic went from 0.818 at 1500 to 0.839 / 0.844 at 3000 (seeds 0, 1), so the fixed budget measured the
mixed arm's training length, not its data. The paired per-patient difference "real + synthetic − real"
says whether adding synthetic data helps, with its own interval. That interval covers the test patients only;
the randomness of training a segmenter is measured beside it: the baseline arm is trained a second time with
another seed, and the paired difference between the two ("training noise") is what any arm difference must
clearly exceed.

Cross-vendor protocol: the vendors are split into *seen* and *unseen*. The segmenter is trained on real
patients of the seen vendors only, with and without synthetic images rendered in the unseen vendors' style
(from the seen patients' masks), and tested on real held-out patients of the unseen vendors. Note that the
generator itself was trained on members of every vendor; the protocol measures whether its vendor styles
carry over to segmentation, not domain generalisation without any unseen-vendor data.
"""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from CMRSynthLib.audit.adherence import segmentation_scores, summarise
from CMRSynthLib.audit.segmenter import SegmenterConfig, train_segmenter
from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.audit.stats import mean_estimate
from CMRSynthLib.data.conventions import STRUCTURES


def _mean_dice(scores: dict) -> np.ndarray:
    dice = np.stack([scores[name]["dice"] for name in STRUCTURES], axis=1)
    out = np.full(len(dice), np.nan)
    defined = np.isfinite(dice).any(axis=1)
    out[defined] = np.nanmean(dice[defined], axis=1)
    return out


def compare_training_sets(arms: dict[str, Slices], test: Slices, config: SegmenterConfig, *, baseline: str,
                          cache=None, device: str = "cpu", progress=None, n_boot: int = 1000) -> dict:
    """Train one segmenter per arm and test each on ``test`` (real held-out slices).

    Returns ``{"arms": {name: summary}, "n_train_slices": {name: n}, "n_train_steps": {name: steps},
    "differences": {name: Estimate}, "training_noise": Estimate | None}``: per-structure Dice/HD95 estimates per arm; for every arm but
    ``baseline`` the paired per-patient difference of mean Dice to the baseline arm; and the same difference
    between the baseline and a second baseline segmenter trained with another seed.
    """
    results, n_train, n_steps, mean_dice = {}, {}, {}, {}

    def scores_of(train: Slices, name: str, seed_config: SegmenterConfig) -> dict:
        arm_config = replace(seed_config, steps=steps_for(len(train), len(arms.get(baseline, ())), seed_config.steps))
        n_steps[name] = arm_config.steps
        segmenter = train_segmenter(train, arm_config, cache=cache, device=device, progress=progress,
                                    label=f"segmenter on {name}")
        return segmentation_scores(segmenter.predict(test.images), test.masks, test.patients, spacing=test.spacing)

    for name, train in arms.items():
        if len(train) == 0:
            continue
        scores = scores_of(train, name, config)
        results[name] = summarise(scores, method=f"segmenter trained on {name}, tested on {len(test.patient_ids())} "
                                                 f"real held-out patients", n_boot=n_boot)
        n_train[name] = len(train)
        mean_dice[name] = _mean_dice(scores)
    differences, noise = {}, None
    if baseline in mean_dice:
        for name, dice in mean_dice.items():
            if name != baseline:
                differences[name] = mean_estimate(dice - mean_dice[baseline], n_boot=n_boot,
                                                  method=f"paired per-patient difference of mean Dice: "
                                                         f"{name} − {baseline}; one segmenter per arm, so the "
                                                         f"interval covers test patients, not training randomness")
        if differences:
            again = scores_of(arms[baseline], f"{baseline} (second seed)", replace(config, seed=config.seed + 1))
            noise = mean_estimate(_mean_dice(again) - mean_dice[baseline], n_boot=n_boot,
                                  method=f"paired per-patient difference of mean Dice between two segmenters trained "
                                         f"on {baseline} with seeds {config.seed + 1} and {config.seed}: training noise")
    return {"arms": results, "n_train_slices": n_train, "n_train_steps": n_steps, "differences": differences,
            "training_noise": noise,
            "test_patients": len(test.patient_ids()), "baseline": baseline}


def steps_for(slices: int, baseline_slices: int, baseline_steps: int) -> int:
    """Training steps for an arm of ``slices`` images: as many passes over them as the baseline's
    ``baseline_steps`` make over its ``baseline_slices``, and never fewer steps than the baseline's."""
    if baseline_slices < 1:
        return baseline_steps
    return max(baseline_steps, round(baseline_steps * slices / baseline_slices))


def utility_study(real_train: Slices, synthetic: Slices, test: Slices, config: SegmenterConfig, **kwargs) -> dict:
    """Real / synthetic / real + synthetic training sets, tested on real held-out patients."""
    arms = {"real": real_train, "synthetic": synthetic, "real + synthetic": Slices.cat([real_train, synthetic])}
    return compare_training_sets(arms, test, config, baseline="real", **kwargs)


def split_vendors(train_vendors, test_vendors) -> tuple[list[str], list[str]] | None:
    """Seen vendors (the first half, rounded up, of those in both sets, sorted) and unseen ones; None if < 2."""
    common = sorted(set(train_vendors) & set(test_vendors))
    if len(common) < 2:
        return None
    half = (len(common) + 1) // 2
    return common[:half], common[half:]


def cross_vendor_study(real_train: Slices, synthetic_unseen: Slices, test: Slices, seen: list[str],
                       unseen: list[str], config: SegmenterConfig, **kwargs) -> dict:
    """Train on real patients of ``seen`` vendors, ± synthetic images in ``unseen`` vendors' style; test on
    real held-out patients of ``unseen`` vendors."""
    seen_real = real_train.take(np.isin(real_train.vendors, seen))
    styled = synthetic_unseen.take(np.isin(synthetic_unseen.vendors, unseen))
    arms = {"real, seen vendors": seen_real,
            "real, seen vendors + synthetic in unseen vendors' style": Slices.cat([seen_real, styled])}
    result = compare_training_sets(arms, test.take(np.isin(test.vendors, unseen)), config,
                                   baseline="real, seen vendors", **kwargs)
    result.update(seen_vendors=list(seen), unseen_vendors=list(unseen))
    return result
