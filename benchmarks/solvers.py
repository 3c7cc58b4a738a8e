"""Fewer steps at equal quality: the ODE samplers of the flow-matching starters against a fine reference.

For every shipped flow-family starter (flow, LDM, hybrid) the same held-out masks and the same seed are sampled
with each (sampler, steps) row and with a fine reference (Heun 50; Heun 25 in quick runs): the RMS and max |Δ| to the
reference measure the integration error directly (mask Dice saturates long before images stop changing), the
audit's segmenter gives the mask Dice, and the network evaluations give the cost. The preset default is also
run under bf16 autocast (``synthesize(precision="bf16")``), so the precision's effect is measured the same way.
"""

from __future__ import annotations

import contextlib

import torch

from benchmarks import quality, subjects
from benchmarks.common import Settings, Table, load_average
from benchmarks.sampling import network_calls

REFERENCE = {"full": ("heun", 50), "quick": ("heun", 25), "smoke": ("heun", 12)}  # the fine solution
ROWS = {
    "full": [("heun", 10), ("heun", 6), ("heun", 4), ("midpoint", 6), ("euler", 4), ("euler", 8), ("ab2", 4),
             ("ab2", 6), ("ab2", 8), ("ab2", 10)],
    "quick": [("heun", 6)],
    "smoke": [("ab2", 4)],
}
FAMILIES = ("flow", "ldm", "hybrid")


def judge(settings: Settings, card: dict):
    """``(segmenter, held-out source slices)`` on the starter's phantom cohort (the quality section's choices;
    the trained segmenter is cached on disk, so this is cheap after that section)."""
    from CMRSynthLib.audit.segmenter import SegmenterConfig, train_segmenter

    members, holdout = quality.members_and_holdout(card, settings)
    config = SegmenterConfig.quick(steps=20) if settings.smoke else (
        SegmenterConfig() if settings.full else SegmenterConfig.quick())
    return train_segmenter(members, config), quality.spread(holdout, quality.SLICES[settings.mode])


def sample(generator, card, source, sampler: str, steps: int, *, bf16: bool = False):
    """``(synthetic slices, network evaluations per slice)`` for one row, seed 0 (all slices in one batch: one
    forward per evaluation)."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with network_calls(generator) as calls, context, torch.no_grad():
        synthetic, _ = quality.synthesise(generator, card, source, sampler, steps)
    return synthetic, calls[0]


def run(settings: Settings, context: dict) -> list[Table]:
    from CMRSynthLib.audit.adherence import mask_adherence

    table = Table("Solvers: integration error and mask Dice of the flow-matching starters, same masks and seed",
                  ["generator", "sampler", "steps", "precision", "net evals/slice",
                   f"RMS vs Heun {REFERENCE[settings.mode][1]}", f"max |Δ| vs Heun {REFERENCE[settings.mode][1]}",
                   "mean mask Dice"])
    names = {"flow": "phantom-tiny-flow"} if settings.smoke else {f: f"phantom-{f}" for f in FAMILIES}
    loads = [load_average()]
    for family, name in names.items():
        loaded = subjects.starter(name, device=settings.device)
        if loaded is None:
            continue
        generator, card = loaded
        segmenter, source = judge(settings, card)
        fine = REFERENCE[settings.mode]
        reference, _ = sample(generator, card, source, *fine)
        default = quality.preset_default(family, settings)
        rows = [(s, n, False) for s, n in ROWS[settings.mode]]
        rows += [(*default, False), (*default, True)]
        seen = set()
        for sampler, steps, bf16 in [(*fine, False), *rows]:
            if (sampler, steps, bf16) in seen or sampler not in generator.samplers:
                continue
            seen.add((sampler, steps, bf16))
            synthetic, evaluations = sample(generator, card, source, sampler, steps, bf16=bf16)
            delta = torch.from_numpy(synthetic.images) - torch.from_numpy(reference.images)
            dice = mask_adherence(segmenter, synthetic, n_boot=100)["mean"]["dice"].value
            label = family + (" (preset default)" if (sampler, steps) == default else "")
            table.add(label, sampler, steps, "bf16" if bf16 else "fp32", evaluations,
                      f"{float(delta.pow(2).mean().sqrt()):.4f}", f"{float(delta.abs().max()):.3f}", f"{dice:.3f}")
    loads.append(load_average())
    if not table.rows:
        table.add("no flow-family starter shipped", "–", "–", "–", "–", "–", "–", "–")
    table.notes += [
        f"Shipped starters (EMA weights, their own grid), {quality.SLICES[settings.mode]} held-out phantom slices "
        "in one batch, seed 0; images in [-1, 1]. The first row of each model is the reference itself. Time is "
        "proportional to the network evaluations (see the scaling table); the hybrid's include its DDPM "
        "refinement steps. Load average before/after: " + " → ".join(loads) + ".",
    ]
    return [table]
