"""Optimisations measured from the outside of the generators: before/after, with the image difference.

Each variant wraps the unchanged ``Generator.sample`` call (the generators' own files are not edited here):
``torch.inference_mode`` instead of the generators' ``no_grad``, bf16 autocast on the CPU (AMX/AVX-512-bf16
kernels where the CPU has them), channels-last weights, the other thread count (1 ↔ 2), ``torch.compile`` of the
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
    loaded = subjects.starter("phantom-tiny-flow" if settings.smoke else f"phantom-{family}", device=settings.device)
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


def family_rows(table: Table, family: str, settings: Settings, shared: dict) -> None:
    """The variant rows of ``family``; its fp32/bf16 stack times go to ``shared["precision"]`` (the targets)."""
    generator = subjects.build(family, preset=settings.preset, size=settings.size, device=settings.device)
    sampler, steps = generator.default_sampler, generator.default_steps
    other = 1 if settings.threads > 1 else 2  # the other thread count than the run's
    variants = dict(VARIANTS, **{f"{other} thread{'s' if other > 1 else ''} instead of {settings.threads}":
                                 (None, lambda: threads(other), False)}, **(FULL_ONLY if settings.full else {}))
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
    shared.setdefault("precision", {})[family] = {
        "sampler": f"{sampler} {steps}", "fp32": reference * scale,
        "bf16": timings["bf16 autocast (CPU)"].median * scale, "difference": diffs["bf16 autocast (CPU)"]}
    for name, timing in timings.items():
        diff = diffs[name]
        if variants[name][2]:
            kept = "n/a (other noise)"
        elif diff is None:
            kept = "n/a"
        else:
            kept = "yes" if diff[0] <= TOLERANCE["max"] and diff[1] <= TOLERANCE["mean"] else "**no**"
        table.add(family, f"{sampler} {steps}", name, ("≈" if stop else "") + seconds(timing.median * scale),
                  ratio(reference / timing.median), "n/a" if diff is None else f"{diff[0]:.2g}",
                  "n/a" if diff is None else f"{diff[1]:.2g}", kept,
                  seconds(setup[name]) if setup[name] > 1 else "–")


CATEGORIES = {  # aten op name fragment → what kind of work it is (first match wins)
    "convolution": ("convolution", "conv2d", "conv3d"),
    "matmul / attention": ("mm", "bmm", "addmm", "softmax", "attention", "linear"),
    "normalisation": ("group_norm", "layer_norm", "batch_norm"),
    "activation": ("silu", "gelu", "sigmoid"),
    "copies (cat, pad, upsample, layout)": ("cat", "pad", "copy", "upsample", "contiguous", "clone", "to_dense"),
    "element-wise arithmetic": ("add", "mul", "sub", "div"),
}


def profile_table(settings: Settings) -> Table:
    """Where one network evaluation's time goes (torch.profiler self CPU time by kind of op), at stack batch size."""
    from torch.profiler import ProfilerActivity, profile

    generator = subjects.build("flow", preset=settings.preset, size=settings.size, device=settings.device)
    cond = subjects.conditions(settings.stack, settings.size, device=settings.device)
    x = torch.randn(settings.stack, 1, settings.size, settings.size, device=settings.device)
    velocity = generator.velocity(cond, 1.0)  # one network evaluation per call

    def forward():
        with torch.no_grad():
            velocity(x, 0.5)

    forward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.removeprefix("aten::")
        kind = next((k for k, keys in CATEGORIES.items() if any(key in name for key in keys)), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    table = Table(f"Where the time goes: one forward of the {settings.preset} conditional UNet, "
                  f"batch {settings.stack}, "
                  f"{settings.size}×{settings.size}", ["kind of op", "share of CPU time"])
    for kind, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        table.add(kind, f"{value / whole:.0%}")
    table.notes.append("torch.profiler self CPU time, fp32, as shipped. Only convolutions and matmuls do the FLOPs "
                       "FlopCounterMode counts; the rest is memory traffic.")
    return table


def training_table(settings: Settings) -> Table:
    """One training step of the flow generator in fp32 and under CPU bf16 autocast (the trainer allows mixed
    precision only on CUDA today), with the loss difference on the same batch and noise."""
    from benchmarks.training import BATCH, images_for, step_fn, trainable

    batch = BATCH[settings.mode]
    images = images_for(batch, settings.size, settings.device)
    cond = subjects.conditions(batch, settings.size, device=settings.device)
    plain = trainable("flow", settings.preset, settings)
    mixed = copy.deepcopy(plain)
    fp32_step, bf16_step = step_fn(plain, images, cond), step_fn(mixed, images, cond)
    losses = {}

    def with_bf16():
        with bf16():
            losses["bf16"] = bf16_step()

    def without():
        losses["fp32"] = fp32_step()

    timings = measure_interleaved({"fp32": without, "bf16": with_bf16}, repeats=settings.repeats, warmup=1,
                                  device=settings.device)
    table = Table(f"Training step in bf16 autocast on the CPU: flow, {settings.preset} preset, batch {batch}, "
                  f"{settings.size}×{settings.size}", ["precision", "s/step", "samples/s", "speed-up",
                                                        "loss of the last step", "max |Δ| weights vs fp32"])
    drift = max(float((a - b).abs().max()) for a, b in zip(plain.parameters(), mixed.parameters()))
    for name, timing in timings.items():
        table.add(name, seconds(timing), f"{batch / timing.median:.3g}",
                  ratio(timings["fp32"].median / timing.median), f"{losses[name]:.6g}",
                  "0" if name == "fp32" else f"{drift:.2g}")
    table.notes.append("Same initial weights, batch and noise, the same number of AdamW steps (lr 1e-5) for both "
                       "copies: losses and weights differ only through precision. Random initial weights (MONAI "
                       "zero-initialises the last convolution, so early losses barely depend on the network).")
    return table


def run(settings: Settings, context: dict) -> list[Table]:
    table = Table(f"Optimisations from the outside: one {settings.stack}-slice {settings.size}×{settings.size} stack, "
                  "default sampler", ["generator", "sampler", "variant", "s/stack", "speed-up vs as shipped",
                                      "max |Δ| image", "mean |Δ| image", "same image?", "setup s"])
    loads = [load_average()]
    families = ("flow",) if not settings.full else ("flow", "ddpm", "ldm")
    for family in families:
        family_rows(table, family, settings, context)
    loads.append(load_average())
    table.notes += [
        f"Speed: random weights, {settings.preset} preset, {settings.threads} threads unless stated, variants "
        f"interleaved, median of {settings.repeats}; ≈ = timed over the first steps and extrapolated. Load average "
        "before/after: " + " → ".join(loads) + ".",
        f"|Δ|: the trained starter of the family at its own grid, 2 slices, same seed; \"same image\" = max |Δ| ≤ "
        f"{TOLERANCE['max']} and mean |Δ| ≤ {TOLERANCE['mean']} (images in [-1, 1]).",
    ]
    return [table, training_table(settings), profile_table(settings)]
