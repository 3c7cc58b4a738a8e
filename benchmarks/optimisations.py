"""Optimisations measured from the outside of the generators: before/after, with the image difference.

Each variant wraps the unchanged ``Generator.sample`` call (the generators' own files are not edited here):
``torch.inference_mode`` instead of the generators' ``no_grad``, bf16 autocast on the CPU (AMX/AVX-512-bf16
kernels where the CPU has them), channels-last weights, one thread instead of two, ``torch.compile`` of the
denoising network (full mode only; compile time reported), and — the other way round — a stack generated as
single-slice calls instead of one batch. All variants are timed in turn (interleaved) on the same stack, so
their ratios hold on a shared machine. Quality is kept when the same seed gives the same image within a
tolerance: the max/mean absolute difference to the as-shipped image (values in [-1, 1]) is measured on a
trained starter model when one is shipped (random weights make the network output zero: MONAI initialises the
last convolution to zero).
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch

from benchmarks import subjects
from benchmarks.common import Settings, Table, load_average, measure_interleaved, ratio, seconds
from benchmarks.sampling import UNIFORM_FAMILIES, run_sampler

TOLERANCE = {"max": 0.1, "mean": 0.01}  # |Δ| on images in [-1, 1]: "the same image" for a reader


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def bf16_inference():
    with torch.inference_mode(), bf16():
        yield


def channels_last(generator):
    return copy.deepcopy(generator).to(memory_format=torch.channels_last)


def compiled(generator):
    """A copy whose conditional UNet(s) are ``torch.compile``d (inductor)."""
    from CMRSynthLib.models.unet import ConditionalUNet

    generator = copy.deepcopy(generator)
    for parent in list(generator.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConditionalUNet):
                setattr(parent, name, torch.compile(child, dynamic=False))
    return generator


# name → (make the variant's generator from the as-shipped one, context around each call, slice by slice?)
VARIANTS = {
    "as shipped (no_grad, fp32, batch of slices)": (None, contextlib.nullcontext, False),
    "torch.inference_mode": (None, torch.inference_mode, False),
    "bf16 autocast (CPU)": (None, bf16, False),
    "bf16 autocast + inference_mode": (None, bf16_inference, False),
    "channels_last weights": (channels_last, contextlib.nullcontext, False),
    "1 thread": (None, lambda: threads(1), False),
    "stack as single-slice calls": (None, contextlib.nullcontext, True),
}
FULL_ONLY = {"torch.compile (inductor)": (compiled, contextlib.nullcontext, False)}


def caller(generator, cond, sampler, steps, context, single: bool, stop_after):
    def call():
        with context():
            if not single:
                return run_sampler(generator, cond, sampler, steps, stop_after=stop_after)
            return [run_sampler(generator, cond[i:i + 1], sampler, steps, stop_after=stop_after)
                    for i in range(len(cond))]
    return call


def differences(family: str, variants: dict, settings: Settings) -> dict[str, tuple[float, float] | None]:
    """Variant → (max, mean) |Δ| of its images vs as shipped, on the trained starter (None if not shipped)."""
    loaded = subjects.starter("tiny-flow" if settings.smoke else family, device=settings.device)
    if loaded is None:
        return {name: None for name in variants}
    generator, card = loaded
    size = card["preprocessing"]["size"][0]
    cond = subjects.conditions(2, size, device=settings.device)
    out = {}
    reference = None
    for name, (make, context, single) in variants.items():
        if single:  # each single-slice call draws its own noise: another image by design, not a numerical change
            out[name] = None
            continue
        variant = make(generator) if make else generator
        images = caller(variant, cond, generator.default_sampler, generator.default_steps, context, single, None)()
        if reference is None:
            reference = images.float()
        delta = (images.float() - reference).abs()
        out[name] = (float(delta.max()), float(delta.mean()))
    return out


def family_rows(table: Table, family: str, settings: Settings) -> None:
    generator = subjects.build(family, preset=settings.preset, size=settings.size, device=settings.device)
    sampler, steps = generator.default_sampler, generator.default_steps
    variants = dict(VARIANTS, **(FULL_ONLY if settings.full else {}))
    stop = min(steps, 2 if not settings.full else 4) if family in UNIFORM_FAMILIES else None
    cond = subjects.conditions(settings.stack, settings.size, device=settings.device)
    calls, setup = {}, {}
    for name, (make, context, single) in variants.items():
        start = time.perf_counter()
        variant = make(generator) if make else generator
        calls[name] = caller(variant, cond, sampler, steps, context, single, stop)
        if make is compiled:
            calls[name]()  # compiles
        setup[name] = time.perf_counter() - start
    timings = measure_interleaved(calls, repeats=settings.repeats, warmup=1, device=settings.device)
    scale = steps / stop if stop else 1.0
    diffs = differences(family, variants, settings)
    reference = timings[next(iter(variants))].median
    for name, timing in timings.items():
        diff = diffs[name]
        kept = "n/a (other noise)" if variants[name][2] else "n/a" if diff is None else ("yes" if diff[0] <= TOLERANCE["max"] and diff[1] <= TOLERANCE["mean"]
                                           else "**no**")
        table.add(family, f"{sampler} {steps}", name, ("≈" if stop else "") + seconds(timing.median * scale),
                  ratio(reference / timing.median), "n/a" if diff is None else f"{diff[0]:.2g}",
                  "n/a" if diff is None else f"{diff[1]:.2g}", kept,
                  seconds(setup[name]) if setup[name] > 1 else "–")


def run(settings: Settings, context: dict) -> list[Table]:
    table = Table(f"Optimisations from the outside: one {settings.stack}-slice {settings.size}×{settings.size} stack, "
                  "default sampler", ["generator", "sampler", "variant", "s/stack", "speed-up vs as shipped",
                                      "max |Δ| image", "mean |Δ| image", "same image?", "setup s"])
    loads = [load_average()]
    families = ("flow",) if not settings.full else ("flow", "ddpm", "ldm")
    for family in families:
        family_rows(table, family, settings)
    loads.append(load_average())
    table.notes += [
        f"Speed: random weights, {settings.preset} preset, {settings.threads} threads unless stated, variants "
        f"interleaved, median of {settings.repeats}; ≈ = timed over the first steps and extrapolated. Load average "
        "before/after: " + " → ".join(loads) + ".",
        f"|Δ|: the trained starter of the family at its own grid, 2 slices, same seed; \"same image\" = max |Δ| ≤ "
        f"{TOLERANCE['max']} and mean |Δ| ≤ {TOLERANCE['mean']} (images in [-1, 1]).",
    ]
    return [table]
