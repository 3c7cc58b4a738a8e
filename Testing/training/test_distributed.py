"""torchrun with 2 CPU processes (gloo): DistributedDataParallel trains, rank 0 alone writes a checkpoint."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from CMRSynthLib.training.checkpoint import load_checkpoint
from CMRSynthLib.training.distributed import ResumableSampler, World
from training_fixtures import phantom  # noqa: F401 - fixture


def test_two_processes_train_and_checkpoint(phantom, tmp_path):  # noqa: F811
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "CMRSynthLib", "train",
               "--data", str(phantom), "--generator", "flow", "--out", str(out), "--preset", "tiny",
               "--image-size", "32", "--spacing", "5", "--batch-size", "2", "--max-steps", "3", "--device", "cpu",
               "--progress", "jsonl"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "done" for e in events) == 1  # only rank 0 reports
    generator, card = load_checkpoint(out)
    assert card["training"]["world_size"] == 2 and card["training"]["steps"] == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no partial folder


def test_sampler_shards_and_skips_consistently():
    data = list(range(10))
    shards = [list(ResumableSampler(data, World(rank, 2, rank), seed=1)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data and len(shards[0]) == 5
    sampler = ResumableSampler(data, World(), seed=1)
    sampler.start_epoch(3)
    full = list(sampler)
    sampler.start_epoch(3, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.start_epoch(4)
    assert list(sampler) != full and sorted(sampler) == data
