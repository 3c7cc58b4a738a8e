"""Scaling: how sampling cost grows with the image size (64, 128, 256) and with the number of steps.

Each family's default sampler at batch 1 (rows as in :mod:`.sampling`, same extrapolation rules). The FLOPs of
a convolutional UNet grow with the pixel count (4× per doubling of the side); time follows them once the
feature maps stop fitting in cache.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks import subjects
from benchmarks.common import Settings, Table, load_average, ratio, seconds
from benchmarks.sampling import cell, measure_row, per_slice

SIZES = {"smoke": (32, 64), "quick": (64, 128, 256), "full": (64, 128, 256)}
STEPS = {"smoke": (1, 2), "quick": (2, 8, 32), "full": (1, 2, 4, 8, 16, 32, 64)}


def size_table(settings: Settings, loads: list[str]) -> Table:
    families = [f for f in subjects.families(settings) if f in (("flow", "ldm") if settings.full else ("flow",))]
    sizes = SIZES[settings.mode]
    table = Table("Scaling with image size: default sampler, batch 1",
                  ["generator", "sampler", "steps", "size", "GFLOPs/slice", "s/slice", "achieved GFLOP/s",
                   f"time vs {sizes[0]}²"])
    for family in families:
        first = None
        for size in sizes:
            at = replace(settings, size=size)
            generator = subjects.build(family, preset=settings.preset, size=size, device=settings.device)
            row = measure_row(generator, family, generator.default_sampler, generator.default_steps, at, batches=[1])
            first = first or per_slice(row, 1)
            table.add(family, row.sampler, row.steps, f"{size}×{size}", f"{row.flops / 1e9:.3g}", cell(row, 1),
                      f"{row.flops / per_slice(row, 1) / 1e9:.0f}", ratio(per_slice(row, 1) / first))
    loads.append(load_average())
    return table


def steps_table(settings: Settings, loads: list[str]) -> Table:
    table = Table(f"Scaling with steps: flow Euler, batch 1, {settings.size}×{settings.size}",
                  ["steps", "net evals", "s/slice", "s/step", "time vs 1 step"])
    generator = subjects.build("flow", preset=settings.preset, size=settings.size, device=settings.device)
    first = None
    for steps in STEPS[settings.mode]:
        row = measure_row(generator, "flow", "euler", steps, settings, batches=[1])
        first = first or per_slice(row, 1) / steps
        table.add(steps, row.evaluations, cell(row, 1), seconds(per_slice(row, 1) / steps),
                  ratio(per_slice(row, 1) / first))
    loads.append(load_average())
    return table


def run(settings: Settings, context: dict) -> list[Table]:
    loads = [load_average()]
    tables = [size_table(settings, loads), steps_table(settings, loads)]
    tables[-1].notes.append(f"Random weights, fp32, {torch.get_num_threads()} threads, {settings.preset} preset; "
                            "≈ marks rows timed over their first steps and extrapolated. Load average during the "
                            "section: " + " → ".join(loads) + ".")
    return tables
