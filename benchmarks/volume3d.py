"""3D: seconds and peak memory for a whole short-axis stack from the 3D latent model, next to the 2D routes.

The 3D LDM generates the stack at once (a 3D UNet over the ``(c, D, H/4, W/4)`` latent, decoded slice by
slice); the 2D generators make the same stack as a batch of its slices. Both are timed on one stack, with the
decoder's share measured separately (``LDMGenerator.decode`` on a latent of the right shape).
"""

from __future__ import annotations

import torch

from benchmarks import subjects
from benchmarks.common import PeakRSS, Settings, Table, count_flops, gib, load_average, measure, ratio, seconds
from benchmarks.sampling import run_sampler


def stack_row(generator, cond, sampler: str, steps: int, settings: Settings) -> dict:
    """Seconds, FLOPs and peak RSS of one stack (``cond`` holds one volume or the stack's slices)."""
    flops = count_flops(lambda: run_sampler(generator, cond, sampler, steps))  # also the warm-up
    with PeakRSS() as rss:
        timing = measure(lambda: run_sampler(generator, cond, sampler, steps), repeats=settings.repeats,
                         warmup=0, device=settings.device)
    return {"timing": timing, "flops": flops, "peak_rss": rss.bytes}


def decode_seconds(generator, cond, settings: Settings) -> float:
    """Seconds of decoding one stack's latent (the LDM's fixed cost on top of the ODE steps)."""
    latent = torch.randn(generator.model_shape(len(cond), cond.mask.shape[2:]), device=settings.device)
    with torch.no_grad():
        return measure(lambda: generator.decode(latent), repeats=settings.repeats, warmup=1,
                       device=settings.device).median


def run(settings: Settings, context: dict) -> list[Table]:
    depth, size = settings.stack, settings.size
    table = Table(f"3D: one {depth}×{size}×{size} stack ({settings.preset} preset)",
                  ["route", "sampler", "steps", "GFLOPs/stack", "s/stack", "of which decoding (s)",
                   "peak RSS GiB", "time vs 3D LDM (default)"])
    loads = [load_average()]
    volume = subjects.build("ldm", preset=settings.preset, size=size, spatial_dims=3, depth=depth,
                            device=settings.device)
    cond3 = subjects.conditions(1, size, spatial_dims=3, depth=depth, device=settings.device)
    default = (volume.default_sampler, volume.default_steps)
    plans = [default] if not settings.full else [default, ("euler", 4)]
    routes = [("3D LDM (whole stack at once)", volume, cond3, s, n) for s, n in plans]
    slices = subjects.build("ldm", preset=settings.preset, size=size, device=settings.device)
    if not settings.quick:  # the quick run has the 2D LDM stack in its sampling table
        cond2 = subjects.conditions(depth, size, device=settings.device)
        routes.append(("2D LDM (stack as a batch of slices)", slices, cond2, slices.default_sampler,
                       slices.default_steps))
    measured = []
    for name, generator, cond, sampler, steps in routes:
        row = stack_row(generator, cond, sampler, steps, settings)
        row["decode"] = decode_seconds(generator, cond, settings)
        measured.append((name, sampler, steps, row))
    reference = measured[0][3]["timing"].median
    for name, sampler, steps, row in measured:
        table.add(name, sampler, steps, f"{row['flops'] / 1e9:,.0f}", seconds(row["timing"]),
                  seconds(row["decode"]), gib(row["peak_rss"]), ratio(row["timing"].median / reference))
    loads.append(load_average())
    first = measured[0][3]
    context["volume3d"] = {
        "shape": f"{depth}×{size}×{size}", "seconds": first["timing"].median, "peak_rss": first["peak_rss"],
        "limit": f"decoding {seconds(first['decode'])} s of {seconds(first['timing'])} s; "
                 f"{first['flops'] / 1e9:,.0f} GFLOPs per stack"}
    table.notes += [
        f"Random weights, fp32, {torch.get_num_threads()} threads; median of {settings.repeats} run(s) after a "
        f"warm-up. 3D LDM: {subjects.parameters(volume) / 1e6:.2f} M parameters; 2D LDM: "
        f"{subjects.parameters(slices) / 1e6:.2f} M. Load average before/after: " + " → ".join(loads) + ".",
        "Peak RSS here is the benchmark process's: it keeps what earlier sections (training, DP-SGD) left resident, "
        "so it overstates a generation; the memory table measures each stack generation in a fresh process.",
    ]
    return [table]
