"""What every benchmark shares: the run settings, timing, peak memory, FLOPs, the machine, and tables.

Timing is the median of several runs after warm-up runs (these machines are shared and noisy; the spread is
reported too). Peak memory is the resident-set high-water mark (``VmHWM``) of this process, read from
``/proc/self/status`` and reset before each measurement by writing ``5`` to ``/proc/self/clear_refs``
(Linux ≥ 4.0); where that is impossible the lifetime peak from :mod:`resource` is reported and marked.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions, matmuls and
attention — element-wise work is not counted, so achieved FLOP/s are a lower bound).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

GiB = 1024 ** 3


@dataclass(frozen=True)
class Settings:
    """How big a run is. ``smoke`` (tests, < 60 s), ``quick`` (< 5 min), ``full`` (the committed results).

    Attributes:
        size: in-plane image size of the sampling/training tables (128 except in smoke mode).
        preset: generator preset of the main tables ("small"; "tiny" in smoke mode).
        repeats, warmup: timed runs (median reported) and untimed warm-up runs per measurement.
        baseline_steps: timed steps of the 1000-step ancestral baseline (the rest is extrapolated).
        batch: the "many slices" batch size (16).
        stack: slices of a short-axis stack (12).
    """

    mode: str
    size: int
    preset: str
    repeats: int
    warmup: int
    baseline_steps: int
    batch: int = 16
    stack: int = 12
    threads: int = 2
    device: str = "cpu"
    extras: dict = field(default_factory=dict)

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    @property
    def full(self) -> bool:
        return self.mode == "full"


def settings_for(mode: str, *, threads: int = 2, device: str = "auto") -> Settings:
    """The :class:`Settings` of ``mode`` ("smoke", "quick" or "full") on ``device`` ("auto" → cuda if present)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    common = dict(threads=threads, device=device)
    if mode == "smoke":
        return Settings(mode, size=32, preset="tiny", repeats=1, warmup=0, baseline_steps=2, batch=4, stack=3,
                        **common)
    if mode == "quick":
        return Settings(mode, size=128, preset="small", repeats=1, warmup=1, baseline_steps=5, **common)
    if mode == "full":
        return Settings(mode, size=128, preset="small", repeats=3, warmup=1, baseline_steps=20, **common)
    raise ValueError(f"mode must be smoke, quick or full, got {mode!r}")


# -- timing --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Seconds of ``runs`` timed calls: the median and the range."""

    median: float
    low: float
    high: float
    runs: int
    cpu: float = float("nan")  # median process CPU seconds (all threads): less sensitive to other load

    def scaled(self, factor: float) -> "Timing":
        return Timing(self.median * factor, self.low * factor, self.high * factor, self.runs, self.cpu * factor)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, repeats: int, warmup: int, device: str = "cpu") -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; the median and range in seconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times, cpu = [], []
    for _ in range(max(1, repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return Timing(statistics.median(times), min(times), max(times), len(times), statistics.median(cpu))


def measure_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
                        device: str = "cpu") -> dict[str, Timing]:
    """Like :func:`measure` for several variants, timed in turn (A B A B …) so that a change of the machine's load
    hits all of them alike: their ratios stay meaningful on a shared machine."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(statistics.median(t), min(t), max(t), len(t), statistics.median(cpu[name]))
            for name, t in times.items()}


# -- memory ----------------------------------------------------------------------------------------------

def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            match = re.search(rf"^{key}:\s+(\d+)\s+kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that the resident
    size no longer counts memory an earlier measurement freed."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may include memory freed earlier
        pass


class PeakRSS:
    """Context manager: the peak resident memory (bytes) of the process inside the block, in :attr:`bytes`.

    On entry freed memory is returned to the OS and the high-water mark is reset to the current resident size
    (which includes torch and the models already loaded). :attr:`exact` is False when the mark could not be
    reset (then it is the process's lifetime peak, an upper bound).
    """

    def __enter__(self) -> "PeakRSS":
        self.bytes = 0
        release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.exact = _status_kib("VmHWM") is not None
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc) -> None:
        kib = _status_kib("VmHWM")
        if kib is None:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.bytes = kib * 1024


# -- FLOPs and the machine ---------------------------------------------------------------------------------

def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (forward, and backward if ``fn`` calls it) by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(*, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 7,
                device: str = "cpu") -> dict[str, float]:
    """Measured throughput of ``size``² × ``size``² matmuls, the practical peak of the CPU: ``"wall"`` FLOP per
    second (best run) and ``"cpu"`` FLOP per CPU-second of all threads (median run; on a busy machine the
    wall rate falls with other load, the CPU rate much less)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    timing = measure(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    flops = 2 * size ** 3
    return {"wall": flops / timing.low, "cpu": flops / timing.cpu}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            match = re.search(r"^model name\s*:\s*(.+)$", info.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device: str = "cpu") -> str:
    """A host-name-free description, e.g. ``linux-x86_64-cpu-2core-intel-xeon-processor`` (file-name safe)."""
    if device.startswith("cuda"):
        model = torch.cuda.get_device_name(0)
        kind = "gpu"
    else:
        model, kind = cpu_model(), f"cpu-{os.cpu_count()}core"
    model = re.sub(r"\((r|tm|c)\)|\bcpu\b|@.*$", "", model.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", model).strip("-")
    return f"{platform.system().lower()}-{platform.machine().lower()}-{kind}-{slug}"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def isa_flags() -> str:
    """The vector/matrix extensions that decide CPU kernel speed (AVX-512, AMX, bf16)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = set(re.search(r"^flags\s*:\s*(.+)$", info.read(), re.MULTILINE).group(1).split())
    except (OSError, AttributeError):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


# -- tables ----------------------------------------------------------------------------------------------

@dataclass
class Table:
    """A markdown table with a title and notes (stated under it)."""

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: a row needs {len(self.columns)} cells, got {len(cells)}")
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "| " + " | ".join("---" for _ in self.columns) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def seconds(value: float | Timing | None) -> str:
    """A duration with three significant figures (``n/a`` for None)."""
    if value is None:
        return "n/a"
    if isinstance(value, Timing):
        value = value.median
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def timing_cell(timing: Timing) -> str:
    """``median (low–high)`` when several runs were timed, else the single value."""
    if timing.runs == 1:
        return seconds(timing)
    return f"{seconds(timing)} ({seconds(timing.low)}–{seconds(timing.high)})"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.2f}"


def ratio(value: float | None, *, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}×"


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**missed**")
