"""Peak memory of one stack generation, each in a fresh process: what a user's ``cmrsynth sample`` needs.

Measuring inside the benchmark process overstates it: the earlier sections (training, DP-SGD, the 1000-step
baseline, segmenters) leave the process larger than a generation ever makes it — freed heap that glibc cannot
hand back (fragmented arenas) stays resident, and ``VmHWM`` can only be reset down to the current resident size.
So each route runs in a child ``python -m benchmarks.memory --child ...`` that imports torch, builds the
generator (random weights at the preset), generates one stack with :meth:`Generator.sample` and reports its
own ``VmHWM`` (torch and the model included), the resident size before sampling, and the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import GiB, Settings, Table, gib, load_average, seconds

ROOT = Path(__file__).resolve().parent.parent


def routes(settings: Settings) -> list[dict]:
    """The stack generations measured: every 2D family's default, the 1000-step baseline (its first steps: memory
    does not grow with steps) and the 3D LDM (smoke mode: one family, to stay fast)."""
    from benchmarks import subjects
    from benchmarks.sampling import BASELINE
    from CMRSynthLib.generators import preset_config

    out = []
    for family in subjects.families(settings)[-1:] if settings.smoke else subjects.families(settings):
        config = preset_config(family, settings.preset, vocabulary=subjects.VOCABULARY,
                               image_size=(settings.size, settings.size), spatial_dims=2)
        out.append(dict(family=family, spatial_dims=2, sampler=config.sampler, steps=config.steps))
    if not settings.smoke:
        out.insert(0, dict(family=BASELINE[0], spatial_dims=2, sampler=BASELINE[1], steps=BASELINE[2], stop=3))
        out.append(dict(family="ldm", spatial_dims=3, sampler=None, steps=None))
    return out


def child(argv: list[str]) -> dict:
    """In the child: build, generate one stack, report memory (bytes) and seconds as a dict."""
    parser = argparse.ArgumentParser()
    for name in ("family", "preset", "sampler"):
        parser.add_argument(f"--{name}")
    for name in ("spatial_dims", "size", "stack", "steps", "stop", "threads"):
        parser.add_argument(f"--{name}", type=int)
    args = parser.parse_args(argv)
    import torch

    from benchmarks import subjects
    from benchmarks.common import _status_kib
    from benchmarks.sampling import run_sampler

    torch.set_num_threads(args.threads)
    generator = subjects.build(args.family, preset=args.preset, size=args.size, spatial_dims=args.spatial_dims,
                               depth=args.stack)
    if args.spatial_dims == 2:
        cond = subjects.conditions(args.stack, args.size)
    else:
        cond = subjects.conditions(1, args.size, spatial_dims=3, depth=args.stack)
    sampler, steps = args.sampler or generator.default_sampler, args.steps or generator.default_steps
    before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    with torch.no_grad():
        run_sampler(generator, cond, sampler, steps, stop_after=args.stop)
    return {"peak": _status_kib("VmHWM") * 1024, "before": before, "seconds": time.perf_counter() - start,
            "sampler": sampler, "steps": steps}


def measure_route(route: dict, settings: Settings) -> dict:
    command = [sys.executable, "-m", "benchmarks.memory", "--child", "--family", route["family"], "--preset",
               settings.preset, "--spatial_dims", str(route["spatial_dims"]), "--size", str(settings.size),
               "--stack", str(settings.stack), "--threads", str(settings.threads)]
    for key in ("sampler", "steps", "stop"):
        if route.get(key) is not None:
            command += [f"--{key}", str(route[key])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", check=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(settings: Settings, context: dict) -> list[Table]:
    shape = f"{settings.stack}×{settings.size}×{settings.size}"
    table = Table(f"Memory: peak RSS of one {shape} stack generation, each in a fresh process",
                  ["route", "sampler", "steps", "peak RSS GiB", "RSS before sampling GiB", "s/stack"])
    loads = [load_average()]
    measured = []
    for route in routes(settings):
        result = measure_route(route, settings)
        name = route["family"] + (" 3D (whole stack)" if route["spatial_dims"] == 3 else "")
        steps = result["steps"] if not route.get("stop") else f"{result['steps']} (first {route['stop']} run)"
        table.add(name, result["sampler"], steps, gib(result["peak"]), gib(result["before"]),
                  "–" if route.get("stop") else seconds(result["seconds"]))
        measured.append((name, result["peak"]))
    loads.append(load_average())
    worst = max(measured, key=lambda m: m[1])
    context["memory"] = {"peak": worst[1], "route": worst[0], "routes": len(measured)}
    table.notes += [
        f"Random weights, {settings.preset} preset, fp32, {settings.threads} thread(s), torch.no_grad as the "
        "generators sample. Peak = the child's VmHWM: Python, torch and the model included; before = resident "
        "size after building the generator and its conditions. Load average before/after: " + " → ".join(loads)
        + ".",
        f"Largest: {worst[0]}, {worst[1] / GiB:.2f} GiB.",
    ]
    return [table]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2:])))
    else:
        sys.exit("usage: python -m benchmarks.memory --child --family F ... (run the suite with python -m benchmarks)")
