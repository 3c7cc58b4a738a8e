"""Sampling speed: seconds per 128×128 slice (batch 1 and 16) and per 12-slice stack, per generator × sampler
× steps.

Every row is one call of ``Generator.sample`` (the public interface; ``torch.no_grad`` as the generators
use it). The 1000-step ancestral DDPM — the SynCMRI-style baseline on the *same* backbone — is timed over
its first few steps and extrapolated (its steps all cost the same: one network evaluation and one scheduler
update). Long rows of DDPM, flow and the hybrid are extrapolated the same way — by network evaluations —
when a full run would exceed the mode's budget; such cells are marked ``≈``. The LDM decodes after its loop,
so its rows always run in full.

The peer row rebuilds SynCMRI's DDPM network (diffusers ``UNet2DModel``, 113.7 M parameters) and times a few
forwards, extrapolated to 1000 steps ("peer (reconstructed)").
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from benchmarks import subjects
from benchmarks.common import (PeakRSS, Settings, Table, Timing, count_flops, gib, load_average, measure, ratio,
                               seconds)

BASELINE = ("ddpm", "ancestral", 1000)
UNIFORM_FAMILIES = ("ddpm", "flow")  # every step costs the same (one evaluation, two for Heun/midpoint)
PARTIAL_FAMILIES = ("ddpm", "flow", "hybrid")  # all their work is network evaluations inside the step loop
PLANS = {  # (sampler, steps) rows per family; the family's default is always added
    "ddpm": [("ancestral", 1000), ("ddim", 50), ("dpmpp", 20), ("dpmpp", 10)],
    "flow": [("euler", 4), ("euler", 8), ("euler", 16), ("euler", 50), ("heun", 4), ("heun", 6), ("heun", 10),
             ("heun", 16), ("midpoint", 10), ("ab2", 6)],
    "ldm": [("euler", 4), ("heun", 4), ("heun", 10)],
    "hybrid": [("euler", 4), ("heun", 4), ("heun", 6)],
}
QUICK_PLANS = {
    "ddpm": [("ancestral", 1000), ("ddim", 50), ("dpmpp", 10)],
    "flow": [("euler", 4), ("euler", 16), ("heun", 4), ("heun", 6)],
    "ldm": [("heun", 10)],
    "hybrid": [("heun", 4)],
}
# the small preset's defaults before the ab2 solver (session 2): timed on whole stacks too, for before/after
PREVIOUS_DEFAULTS = {("flow", "heun", 6), ("ldm", "heun", 10), ("hybrid", "heun", 4)}
BUDGET = {"smoke": 4, "quick": 8, "full": 16}  # slice-evaluations timed per run before extrapolating


class _Stop(Exception):
    """Raised from the progress callback to end a run after the timed steps."""


@dataclass(frozen=True)
class Row:
    family: str
    sampler: str
    steps: int
    evaluations: int | None  # network forwards per slice (guidance 1)
    flops: float  # FLOPs per slice
    timings: dict  # batch → Timing of a whole batch (extrapolated to all steps where needed)
    extrapolated: dict  # batch → timed steps (None = run in full)
    peak_rss: float | None  # bytes, during the stack


@contextmanager
def network_calls(generator):
    """Counts forwards of the generator's conditional UNet(s): ``yield``s a one-element list."""
    from CMRSynthLib.models.unet import ConditionalUNet

    count = [0]
    hooks = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
             for m in generator.modules() if isinstance(m, ConditionalUNet)]
    try:
        yield count
    finally:
        for hook in hooks:
            hook.remove()


def run_sampler(generator, cond, sampler: str, steps: int, *, stop_after: int | None = None, seed: int = 0):
    """One ``sample`` call, ended after ``stop_after`` steps when given (the callback raises)."""
    noise = torch.Generator(cond.mask.device).manual_seed(seed)

    def stop(done: int, total: int) -> None:
        if done >= stop_after:
            raise _Stop

    try:
        return generator.sample(cond, sampler=sampler, steps=steps, generator=noise,
                                callback=None if stop_after is None else stop)
    except _Stop:
        return None


def timed_steps(family: str, steps: int, batch: int, evals_per_step: float, settings: Settings) -> int | None:
    """How many steps to time (None: the whole run) for a row at ``batch``."""
    if family not in PARTIAL_FAMILIES:
        return None
    fitting = max(2 if steps > 2 else 1, math.ceil(BUDGET[settings.mode] / (batch * evals_per_step)))
    if family == BASELINE[0] and steps == BASELINE[2]:
        fitting = min(fitting, settings.baseline_steps)
    return None if fitting >= steps else fitting


def measure_row(generator, family: str, sampler: str, steps: int, settings: Settings, *, batches) -> Row:
    """Time one (sampler, steps) row of ``generator`` at each batch size (a batch of ``settings.stack`` is the stack).

    A partly timed run is extrapolated by network evaluations: seconds per evaluation in the timed steps × the
    evaluations of the whole run (exact for DDPM and flow, whose steps all cost the same; for the hybrid its
    Heun steps cost two evaluations and its refinement steps one).
    """
    size, device = settings.size, settings.device
    cond1 = subjects.conditions(1, size, device=device)
    first = 1 if family in UNIFORM_FAMILIES else None  # uniform steps: count the first step only
    with network_calls(generator) as calls:  # FLOPs and evaluations of one slice (also the first warm-up)
        flops = count_flops(lambda: run_sampler(generator, cond1, sampler, steps, stop_after=first))
    scale = steps if first else 1
    evaluations = calls[0] * scale
    timings, extrapolated, peak = {}, {}, None
    for batch in batches:
        cond = subjects.conditions(batch, size, device=device)
        k = timed_steps(family, steps, batch, evaluations / steps, settings)
        for _ in range(settings.warmup):
            run_sampler(generator, cond, sampler, steps, stop_after=1 if family in PARTIAL_FAMILIES else None)
        with PeakRSS() as rss, network_calls(generator) as timed:
            timing = measure(lambda: run_sampler(generator, cond, sampler, steps, stop_after=k),
                             repeats=settings.repeats, warmup=0, device=device)
        timings[batch] = timing.scaled(evaluations * timing.runs / timed[0]) if k else timing
        extrapolated[batch] = k
        if batch == settings.stack:
            peak = rss.bytes
    return Row(family, sampler, steps, evaluations, flops * scale, timings, extrapolated, peak)


def plan(generator, family: str, settings: Settings) -> list[tuple[str, int]]:
    """The (sampler, steps) rows for ``family``: the mode's plan within its samplers, plus the default."""
    if settings.smoke:
        rows = [(generator.default_sampler, generator.default_steps)]
        if family == BASELINE[0]:
            rows.insert(0, BASELINE[1:])
        return rows
    table = (PLANS if settings.full else QUICK_PLANS).get(family, [])
    rows = [r for r in table if r[0] in generator.samplers]
    default = (generator.default_sampler, generator.default_steps)
    return rows if default in rows else [*rows, default]


def peer_row(settings: Settings) -> tuple[Timing, float, int] | None:
    """(Timing of 1000 extrapolated steps per slice, FLOPs per forward, parameters) of the reconstructed peer."""
    if settings.smoke:
        return None
    net = subjects.peer_network(settings.size, device=settings.device)
    x = torch.randn(1, 5, settings.size, settings.size, device=settings.device)
    t = torch.tensor([500], device=settings.device)
    with torch.no_grad():
        flops = count_flops(lambda: net(x, t))
        timing = measure(lambda: net(x, t), repeats=2 if settings.full else 1, warmup=1, device=settings.device)
    params = subjects.parameters(net)
    del net
    return timing.scaled(BASELINE[2]), flops, params


def run(settings: Settings, context: dict) -> list[Table]:
    """The sampling table (and the rows in ``context["sampling"]`` for the headline)."""
    torch.manual_seed(0)
    batches = [1, settings.stack] if not settings.full else [1, settings.batch, settings.stack]
    rows: list[Row] = []
    loads = [load_average()]
    for family in subjects.families(settings):
        generator = subjects.build(family, preset=settings.preset, size=settings.size, device=settings.device)
        for sampler, steps in plan(generator, family, settings):
            default = (sampler, steps) == (generator.default_sampler, generator.default_steps)
            whole = default or settings.full or (family, sampler, steps) in {BASELINE, *PREVIOUS_DEFAULTS}
            wanted = batches if whole else [1]
            rows.append(measure_row(generator, family, sampler, steps, settings, batches=wanted))
        context.setdefault("defaults", {})[family] = (generator.default_sampler, generator.default_steps)
        context.setdefault("parameters", {})[family] = subjects.parameters(generator)
        del generator
    loads.append(load_average())
    context["sampling"] = rows
    context["peer"] = peer_row(settings)
    return [sampling_table(rows, settings, context, loads)]


def per_slice(row: Row, batch: int) -> float | None:
    timing = row.timings.get(batch)
    return None if timing is None else timing.median / batch


def baseline_row(rows: list[Row]) -> Row | None:
    return next((r for r in rows if (r.family, r.sampler, r.steps) == BASELINE), None)


def cell(row: Row, batch: int, *, divide: bool = True) -> str:
    """Wall seconds per slice (or per batch); per batch also the process CPU seconds, which a busy machine
    inflates far less (with 1 thread they are close to the wall time of an idle core)."""
    if batch not in row.timings:
        return "–"
    timing = row.timings[batch]
    mark = "≈" if row.extrapolated[batch] else ""
    if divide:
        return mark + seconds(timing.median / batch)
    return f"{mark}{seconds(timing.median)} (CPU {seconds(timing.cpu)})"


def sampling_table(rows: list[Row], settings: Settings, context: dict, loads: list[str]) -> Table:
    size, stack = settings.size, settings.stack
    table = Table(f"Sampling: seconds per {size}×{size} slice and per {stack}-slice stack ({settings.preset} preset)",
                  ["generator", "sampler", "steps", "net evals", "GFLOPs/slice", "s/slice (batch 1)",
                   f"s/slice (batch {settings.batch})", f"s/stack ({stack} slices; CPU s)", "peak RSS GiB (stack)",
                   "speed-up vs DDPM-1000 (batch 1)", "mask Dice LV / MYO / RV"])
    base = baseline_row(rows)
    dice = context.get("dice_of", lambda *a: "n/a (random weights)")
    for row in rows:
        speedup = (per_slice(base, 1) / per_slice(row, 1)) if base else None
        name = row.family + (" (default)" if context["defaults"].get(row.family) == (row.sampler, row.steps) else
                             " (previous default)" if (row.family, row.sampler, row.steps) in PREVIOUS_DEFAULTS else "")
        if (row.family, row.sampler, row.steps) == BASELINE:
            name += " — SynCMRI-style baseline, same backbone"
        table.add(name, row.sampler, row.steps, row.evaluations if row.evaluations is not None else "n/a",
                  f"{row.flops / 1e9:.3g}", cell(row, 1), cell(row, settings.batch),
                  cell(row, stack, divide=False), "–" if row.peak_rss is None else gib(row.peak_rss),
                  ratio(speedup), dice(row.family, row.sampler, row.steps))
    peer = context.get("peer")
    if peer is not None:
        timing, flops, params = peer
        speedup = (per_slice(base, 1) / timing.median) if base else None
        table.add(f"peer (reconstructed): diffusers UNet2DModel {params / 1e6:.1f} M", "ancestral", 1000, 1000,
                  f"{flops * 1000 / 1e9:,.0f}", "≈" + seconds(timing), "–",
                  "≈" + seconds(timing.median * stack), "–",
                  ratio(speedup), "n/a (random weights)")
    table.notes += [
        f"Random weights (speed does not depend on them); {settings.preset} preset, fp32, "
        f"{torch.get_num_threads()} threads, device {settings.device}; median of {settings.repeats} timed run(s) "
        "after warm-up. Load average (1/5/15 min) before/after: " + " → ".join(loads) + ".",
        f"≈: timed over the first steps of the run and extrapolated by network evaluations (DDPM, flow, hybrid; "
        f"LDM rows include decoding and always run in full); the {BASELINE[2]}-step ancestral baseline is "
        f"always extrapolated "
        f"(from {settings.baseline_steps} steps at batch 1).",
        "peer: SynCMRI's DDPM network rebuilt with diffusers (1 image + 4 mask channels), one forward timed at "
        f"batch 1 and multiplied by 1000; its stack = 12 × the per-slice time.",
        "GFLOPs counted by torch.utils.flop_counter (convolutions, matmuls, attention). CPU s: process CPU "
        "time of all threads (spin-waiting threads count too).",
    ]
    return table
