"""Training throughput: samples/s, peak RSS and achieved FLOP/s per generator, with and without DP-SGD.

One step is what :class:`CMRSynthLib.training.loop.Trainer` does per batch: the per-sample losses of
:class:`~CMRSynthLib.training.loop.LossModel`, their mean, backward, AdamW. FLOPs per step (forward + backward)
come from ``FlopCounterMode``; achieved FLOP/s are compared with the CPU's measured fp32 matmul peak.

The DP step is the one :class:`CMRSynthLib.training.privacy.DPTraining` attaches: Opacus's per-sample gradient
hooks (``GRAD_SAMPLE_MODE``) on the loss model and :class:`~CMRSynthLib.training.dp_optimizer.PatientDPOptimizer`
(each row its own unit here: the clipping, summing and noise are the same whatever the unit). DP and non-DP
steps are timed in turn on two copies of the same generator, so the ratio survives a noisy machine.
"""

from __future__ import annotations

import copy
import statistics
import warnings

import torch

from benchmarks import subjects
from benchmarks.common import (PeakRSS, Settings, Table, Timing, count_flops, gib, load_average, measure,
                               measure_interleaved, ratio, seconds, timing_cell)

BATCH = {"smoke": 4, "quick": 8, "full": 16}
DP_PAIRS = {"smoke": 1, "quick": 3, "full": 7}  # interleaved (non-DP, DP) step pairs per family
# what keeps a small conditional UNet below the matmul peak (stated in the targets table)
PEAK_LIMIT = ("narrow convolutions (16–128 channels) on large feature maps are memory-bound, and GroupNorm/SiLU/"
              "concatenation passes cost time without FLOPs; the matmul peak needs wide operands")


def images_for(batch: int, size: int, device: str) -> torch.Tensor:
    """A stand-in batch of images ``(B, 1, size, size)`` in [-1, 1] (speed does not depend on the content)."""
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1), device=device) * 2 - 1


def trainable(family: str, preset: str, settings: Settings, *, stage: str | None = None):
    """A random-weight generator in training mode (the LDM in the given stage, default its diffusion stage)."""
    generator = subjects.build(family, preset=preset, size=settings.size, device=settings.device).train()
    if family == "ldm":
        generator.stage = stage or "diffusion"
    return generator


def step_fn(generator, images: torch.Tensor, cond, *, dp: bool = False):
    """A closure taking one optimiser step (with DP-SGD if ``dp``) on the fixed batch."""
    from CMRSynthLib.training.loop import LossModel

    model = LossModel(generator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    if dp:
        from opacus.grad_sample import GradSampleHooks

        from CMRSynthLib.training.dp_optimizer import PatientDPOptimizer

        hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=False)
        hooks.forbid_grad_accumulation()
        optimizer = PatientDPOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0,
                                       expected_batch_size=len(images), loss_reduction="mean",
                                       generator=torch.Generator().manual_seed(0))
    noise = torch.Generator(images.device)
    rows = torch.arange(len(images))

    def step() -> float:
        noise.manual_seed(0)
        losses = model(images, cond.mask, cond.vendor, cond.phase, cond.group, noise)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        if dp:
            optimizer.set_groups(rows)
        optimizer.step()
        return float(losses.detach().mean())

    return step


def forward_backward_flops(generator, images, cond) -> int:
    """FLOPs of one loss forward + backward on the batch (the optimiser's element-wise work is not counted)."""
    from CMRSynthLib.training.loop import LossModel

    model = LossModel(copy.deepcopy(generator))
    return count_flops(lambda: model(images, cond.mask, cond.vendor, cond.phase, cond.group,
                                     torch.Generator().manual_seed(0)).mean().backward())


def rows_for(settings: Settings) -> list[tuple[str, str, str | None]]:
    """(family, preset, LDM stage) rows of the throughput table."""
    families = subjects.families(settings)
    presets = ["tiny"] if settings.smoke else (["tiny", settings.preset] if settings.full else [settings.preset])
    if settings.smoke:
        families = families[-1:]
    rows = [(f, p, None) for p in presets for f in families]
    if "ldm" in families and settings.full:
        rows.append(("ldm", settings.preset, "autoencoder"))
    return rows


def run(settings: Settings, context: dict) -> list[Table]:
    batch, size = BATCH[settings.mode], settings.size
    peak = context["matmul_peak"]["fp32"]["cpu"]
    images = images_for(batch, size, settings.device)
    cond = subjects.conditions(batch, size, device=settings.device)
    table = Table(f"Training: one AdamW step on a batch of {batch} {size}×{size} slices",
                  ["generator", "preset", "params (M)", "s/step", "samples/s", "GFLOPs/sample (fwd+bwd)",
                   "achieved GFLOP/s (wall)", "GFLOP per CPU-s", "% of fp32 matmul peak (per CPU-s)",
                   "peak RSS GiB"])
    results = {}
    loads = [load_average()]
    for family, preset, stage in rows_for(settings):
        generator = trainable(family, preset, settings, stage=stage)
        flops = forward_backward_flops(generator, images, cond)
        step = step_fn(generator, images, cond)
        with PeakRSS() as rss:
            timing = measure(step, repeats=settings.repeats, warmup=max(1, settings.warmup), device=settings.device)
        achieved = flops / timing.cpu  # per CPU-second: robust to the other load on a shared machine
        name = family + (f" ({stage} stage)" if stage else "")
        table.add(name, preset, f"{subjects.parameters(generator) / 1e6:.2f}", seconds(timing),
                  f"{batch / timing.median:.3g}", f"{flops / batch / 1e9:.3g}", f"{flops / timing.median / 1e9:.0f}",
                  f"{achieved / 1e9:.0f}",
                  f"{achieved / peak:.0%}", gib(rss.bytes))
        if preset == settings.preset and stage is None:
            results[family] = {"fraction": achieved / peak, "flops_per_s": achieved, "peak": peak,
                               "limit": PEAK_LIMIT}
    loads.append(load_average())
    context["training"] = results
    table.notes += [
        f"fp32, {torch.get_num_threads()} threads; median of {settings.repeats} step(s) after warm-up; random "
        f"weights and images. FLOP rates per CPU-second (process CPU time of all threads) are compared with the "
        f"matmul's, {peak / 1e9:.0f} GFLOP per CPU-second, so that other load on the machine cancels out. "
        "Load average before/after: "
        + " → ".join(loads) + ".",
    ]
    if any(family == "ldm" for family, _, _ in rows_for(settings)):
        table.notes.append("The LDM rows train one stage at a time (the trainer does the same): its diffusion stage "
                           "is the latent flow with the autoencoder frozen (encoding counted), its autoencoder "
                           "stage the KL autoencoder.")
    return [table]


def run_dp(settings: Settings, context: dict) -> list[Table]:
    batch, size = BATCH[settings.mode], settings.size
    images = images_for(batch, size, settings.device)
    cond = subjects.conditions(batch, size, device=settings.device)
    preset = "tiny" if settings.smoke else settings.preset
    families = subjects.families(settings)
    if settings.smoke:  # one family checks the section runs
        families = families[-1:]
    elif not settings.full:
        families = tuple(f for f in families if f in ("ddpm", "flow"))
    table = Table(f"DP-SGD vs non-DP training ({preset} preset, batch {batch}, {size}×{size})",
                  ["generator", "non-DP s/step", "DP s/step", "non-DP samples/s", "DP samples/s",
                   "DP / non-DP throughput (median of pairs)", "range of the pair ratios (pairs)",
                   "DP peak RSS GiB"])
    results = {}
    loads = [load_average()]
    for family in families:
        plain = trainable(family, preset, settings)
        private = copy.deepcopy(plain)
        steps = {"plain": step_fn(plain, images, cond), "dp": step_fn(private, images, cond, dp=True)}
        with PeakRSS() as rss, warnings.catch_warnings():
            # Opacus registers full backward hooks; on the LDM's frozen autoencoder torch warns that they fire
            # with respect to outputs only — expected, the frozen part has no per-sample gradients to compute.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            pairs = [measure_interleaved(steps, repeats=1, warmup=int(i == 0), device=settings.device)
                     for i in range(DP_PAIRS[settings.mode])]
        timings = {name: _pooled([pair[name] for pair in pairs]) for name in steps}
        ratios = sorted(pair["plain"].median / pair["dp"].median for pair in pairs)
        value = statistics.median(ratios)
        results[family] = {"ratio": value, "range": (ratios[0], ratios[-1]), "pairs": len(ratios),
                           "limit": "Opacus per-sample gradient hooks: an extra einsum per layer and B copies of "
                                    "every weight gradient"}
        table.add(family, timing_cell(timings["plain"]), timing_cell(timings["dp"]),
                  f"{batch / timings['plain'].median:.3g}", f"{batch / timings['dp'].median:.3g}", ratio(value),
                  f"{ratios[0]:.3f}–{ratios[-1]:.3f} ({len(ratios)})", gib(rss.bytes))
    loads.append(load_average())
    context["dp"] = results
    table.notes += [
        "DP step = Opacus GradSampleHooks + CMRSynth's PatientDPOptimizer (clip to C = 1, σ = 1, one unit per "
        "row), as `cmrsynth train --dp` attaches them; DP and non-DP steps alternate on copies of one generator "
        "so both see the same machine load; each pair (one non-DP step, then one DP step) gives a ratio, and the "
        "table quotes the median and range of those ratios. Load average before/after: " + " → ".join(loads) + ".",
    ]
    return [table]


def _pooled(timings: list[Timing]) -> Timing:
    """One :class:`Timing` from single-run timings: their median and range."""
    values = [t.median for t in timings]
    return Timing(statistics.median(values), min(values), max(values), len(values),
                  statistics.median(t.cpu for t in timings))
