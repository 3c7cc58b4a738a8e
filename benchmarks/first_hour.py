"""What a newcomer waits for, timed as whole processes (issue 32): ``make demo``'s tour from an empty cache, and one
``cmrsynth sample`` of an ACDC-sized 10-slice mask with the default model, with and without keeping freed memory.

Each run is a fresh ``cmrsynth`` process (imports, model loading and writing included), timed from outside:
wall seconds, CPU seconds (user + system, from ``getrusage`` of the children) and the child's peak RSS. The mask
is a phantom heart on a 256 × 216 grid of 1.5625 mm pixels and 10 slices (ACDC's usual geometry; no patient data).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Settings, Table, load_average

ACDC_GRID = (10, 256, 216)
ACDC_SPACING = (1.5625, 1.5625, 10.0)
COMMAND = [sys.executable, "-m", "CMRSynthLib"]


def acdc_sized_mask(folder: Path) -> Path:
    """A phantom heart mask padded onto ACDC's usual grid (10 × 256 × 216, 1.5625 mm, 10 mm slices)."""
    from CMRSynthLib.data.phantom import write_phantom_cohort
    from CMRSynthLib.data.volume import Volume, read_volume, write_volume

    cohort = write_phantom_cohort(folder / "phantom", 1, seed=3, shape=(10, 128, 128))
    mask = read_volume(next(cohort.rglob("*_ED_gt.nii.gz"))).array
    padded = np.zeros(ACDC_GRID, dtype=mask.dtype)
    top, left = (ACDC_GRID[1] - mask.shape[1]) // 2, (ACDC_GRID[2] - mask.shape[2]) // 2
    padded[:, top:top + mask.shape[1], left:left + mask.shape[2]] = mask
    ijk_to_ras = np.diag([-ACDC_SPACING[0], -ACDC_SPACING[1], ACDC_SPACING[2], 1.0])  # i, j along LPS, as ITK reads
    path = folder / "acdc_sized_gt.nii.gz"
    write_volume(Volume(padded, ijk_to_ras), path)
    return path


def timed(argv: list[str], env: dict) -> dict:
    """Wall and CPU seconds and peak RSS (GiB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "system": after.ru_stime - before.ru_stime, "rss": after.ru_maxrss / 2**20}


def run(settings: Settings, context: dict) -> list[Table]:
    table = Table("The first hour: whole processes a newcomer waits for",
                  ["what", "wall s", "CPU s", "of it system s", "peak RSS GiB"])
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mask = acdc_sized_mask(work)
        env = {**os.environ, "CMRSYNTH_CACHE": str(work / "cache")}
        for label, extra in (("cmrsynth sample, 10-slice ACDC-sized mask, acdc-ldm", {}),
                             ("the same, glibc handing freed memory back (before keep_freed_memory)",
                              {"CMRSYNTH_RELEASE_FREED_MEMORY": "1"})):
            result = timed([*COMMAND, "sample", "--mask", str(mask), "--out", str(work / "out"), "--progress",
                            "none"], {**env, **extra})
            table.add(label, f"{result['wall']:.1f}", f"{result['cpu']:.1f}", f"{result['system']:.1f}",
                      f"{result['rss']:.2f}")
        if not settings.smoke:
            result = timed([*COMMAND, "demo", "--tour", "--out", str(work / "tour"), "--progress", "none"], env)
            table.add("make demo (cmrsynth demo --tour), empty cache", f"{result['wall']:.0f}",
                      f"{result['cpu']:.0f}", f"{result['system']:.0f}", f"{result['rss']:.2f}")
    loads.append(load_average())
    table.notes.append("Each a fresh process (imports, model loading, writing included); RSS is the largest child's "
                       "(getrusage). Load average before/after: " + " → ".join(loads) + ".")
    return [table]
