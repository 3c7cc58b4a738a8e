"""``python -m benchmarks [--smoke | --quick] [--only SECTIONS]``: run the suite, print markdown tables, and write
them to ``benchmarks/results/<machine>-<date>[-<mode>].md`` (atomically).

Run it from the repository root (Opacus installs an unrelated top-level ``benchmarks`` package into
site-packages; ``python -m`` from the root finds this one first).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the cmrsynth command does (see CMRSynthLib/cli.py)
import torch  # noqa: E402

from benchmarks.common import (Settings, Table, cpu_model, isa_flags, load_average, machine_name, matmul_peak,
                               settings_for)

# section name → (module, function); run in this order (later sections read earlier ones' context)
SECTIONS = {
    "quality": ("benchmarks.quality", "run"),
    "solvers": ("benchmarks.solvers", "run"),
    "sampling": ("benchmarks.sampling", "run"),
    "training": ("benchmarks.training", "run"),
    "dp": ("benchmarks.training", "run_dp"),
    "privacy-utility": ("benchmarks.privacy_utility", "run"),
    "privacy-filter": ("benchmarks.privacy_filter", "run"),
    "3d": ("benchmarks.volume3d", "run"),
    "memory": ("benchmarks.memory", "run"),
    "scaling": ("benchmarks.scaling", "run"),
    "optimisations": ("benchmarks.optimisations", "run"),
    "first-hour": ("benchmarks.first_hour", "run"),
}
# studies that train many models: full and smoke runs include them, a quick run only when asked (--only)
STUDIES = ("solvers", "privacy-utility", "privacy-filter", "first-hour")
RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="a shorter run (< 5 min): fewer rows, one timed run each")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                      help="tiny shapes and presets (< 1 min): checks the suite works, numbers mean little")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated sections among {', '.join(SECTIONS)} (default: all; with --quick all "
                             f"but the studies {', '.join(STUDIES)})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/<machine>-<date>[-<mode>].md; "
                             "'-' writes none)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "full"
    if args.only is None:
        args.only = ",".join(s for s in SECTIONS if args.mode != "quick" or s not in STUDIES)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose among {', '.join(SECTIONS)}")
    if args.threads < 1:
        parser.error(f"--threads must be ≥ 1, got {args.threads}")
    return args


def header(settings: Settings, context: dict, argv: list[str]) -> str:
    peak = context["matmul_peak"]
    lines = [
        f"# CMRSynth benchmarks — {settings.mode} run",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; command: "
        f"`python -m benchmarks {' '.join(argv)}`".rstrip(),
        f"- machine: {machine_name(settings.device)} ({cpu_model()}, {isa_flags()}); "
        f"Python {platform.python_version()}, torch {torch.__version__}, {settings.threads} threads",
        f"- measured matmul peak (2048², {settings.threads} threads): fp32 {peak['fp32']['wall'] / 1e9:,.0f} GFLOP/s "
        f"wall ({peak['fp32']['cpu'] / 1e9:,.0f} per CPU-second), bf16 {peak['bf16']['wall'] / 1e9:,.0f} GFLOP/s "
        f"wall ({peak['bf16']['cpu'] / 1e9:,.0f} per CPU-second)",
        f"- OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} (idle OpenMP threads sleep, as in the "
        "cmrsynth command)",
        f"- load average (1/5/15 min) at start: {context['load_start']} — this machine is shared; "
        "compare ratios within one file rather than absolute times across files",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    settings = settings_for(args.mode, threads=args.threads, device=args.device)
    started = time.perf_counter()
    context: dict = {"load_start": load_average(), "sections": args.only}
    context["matmul_peak"] = {"fp32": matmul_peak(device=settings.device),
                              "bf16": matmul_peak(dtype=torch.bfloat16, device=settings.device)}
    tables: list[Table] = []
    for name in SECTIONS:
        if name not in args.only:
            continue
        module, function = SECTIONS[name]
        section_start = time.perf_counter()
        produced = getattr(importlib.import_module(module), function)(settings, context)
        if produced:
            produced[-1].notes.append(f"section `{name}` took {time.perf_counter() - section_start:.0f} s")
        for table in produced:
            print(table.markdown(), flush=True)
        tables += produced
    from benchmarks.targets import headline_table, targets_table

    summary = [headline_table(settings, context), targets_table(settings, context)]
    for table in summary:
        print(table.markdown())
    text = header(settings, context, argv) + "\n" + "\n".join(t.markdown() for t in [*summary, *tables])
    text += f"\nTotal wall time {time.perf_counter() - started:.0f} s; load average at the end: {load_average()}.\n"
    write(text, args.out, settings)
    return 0


def write(text: str, out: Path | None, settings: Settings) -> None:
    from CMRSynthLib.files import atomic_write_text

    if out is not None and str(out) == "-":
        return
    if out is None:
        suffix = "" if settings.full else f"-{settings.mode}"
        out = RESULTS / f"{machine_name(settings.device)}-{datetime.date.today():%Y-%m-%d}{suffix}.md"
    atomic_write_text(out, text)
    print(f"results written to {out}")


if __name__ == "__main__":
    sys.exit(main())
