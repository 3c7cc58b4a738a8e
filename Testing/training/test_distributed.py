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
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "done" for e in events) == 1  # only rank 0 reports
    generator, card = load_checkpoint(out)
    assert card["training"]["world_size"] == 2 and card["training"]["steps"] == 3
    # no partial folder; beside it, the private record of its paths (training/loop.py, _private_record)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model", "model.PRIVATE-membership.json"]


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


# -- differential privacy on several processes ------------------------------------------------------------
def _dp_step(rank, world, draw, init, result_dir):
    """One patient-level DP-SGD step of a linear model on process ``rank`` of ``world`` (gloo when world > 1);
    writes the updated weights to ``result_dir/<world>-<rank>.pt``."""
    import warnings

    import torch.distributed as dist
    from opacus.grad_sample import GradSampleHooks

    from CMRSynthLib.training.dp_optimizer import DistributedPatientDPOptimizer, PatientDPOptimizer
    from CMRSynthLib.training.patient_sampling import shard

    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{result_dir}/rendezvous", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(init)
    if world > 1:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

        model = DifferentiallyPrivateDistributedDataParallel(model)
    GradSampleHooks(model, loss_reduction="mean", strict=False).forbid_grad_accumulation()
    kind = DistributedPatientDPOptimizer if world > 1 else PatientDPOptimizer
    optimizer = kind(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.7, max_grad_norm=0.05,
                     expected_batch_size=2 / world, loss_reduction="mean", generator=torch.Generator().manual_seed(7))
    part = shard(draw, rank=rank, world=world)
    rows = torch.tensor(part.rows)
    ((model(x[rows]) - y[rows]) ** 2).sum(1).mean().backward()
    optimizer.set_groups(torch.tensor(part.groups))
    optimizer.step()
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, f"{result_dir}/{world}-{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.parametrize("units, rows, groups", [
    ((0, 1, 2, 3), (0, 1, 2, 4, 5, 6), (0, 0, 1, 2, 2, 3)),  # both processes get patients
    ((0, 2), (0, 1, 4), (0, 0, 1)),  # process 1 gets none: it computes a filler row that must not count
])
def test_a_two_process_dp_step_is_the_single_process_step(tmp_path, units, rows, groups):
    """Clipped per-patient sums over disjoint shares + rank 0's noise, reduced = the one-process update (same
    noise draw): noise is added once, every patient counts once."""
    from CMRSynthLib.training.patient_sampling import Draw

    draw = Draw(rows, groups, units)
    init = {k: v.detach().clone() for k, v in torch.nn.Linear(3, 2).state_dict().items()}
    _dp_step(0, 1, draw, init, tmp_path)
    torch.multiprocessing.start_processes(_dp_step, args=(2, draw, init, tmp_path), nprocs=2, start_method="fork")
    single = torch.load(tmp_path / "1-0.pt")
    for rank in (0, 1):
        multi = torch.load(tmp_path / f"2-{rank}.pt")
        for name, value in single.items():
            assert torch.allclose(multi[f"module.{name}"], value, atol=1e-6), (rank, name)
    assert not torch.equal(single["weight"], init["weight"])


def test_dp_training_on_two_processes_accounts_exactly_like_one(phantom, tmp_path):  # noqa: F811
    from CMRSynthLib.training.ledger import Ledger
    from CMRSynthLib.training.loop import Trainer
    from CMRSynthLib.training.membership import read_membership
    from CMRSynthLib.training.privacy import DPConfig, DPTraining
    from CMRSynthLib.training.privacy_planner import epsilon_of
    from training_fixtures import train_config

    out = tmp_path / "dp2"
    result = subprocess.run([*_torchrun(), "train", "--data", str(phantom), "--generator", "flow", "--out", str(out),
                             "--preset", "tiny", "--image-size", "32", "--spacing", "5", "--batch-size", "2",
                             "--max-steps", "4", "--lr", "2e-3", "--device", "cpu", "--seed", "3", "--dp",
                             "--delta", "1e-2", "--max-grad-norm", "1.0", "--noise-multiplier", "1.0",
                             "--progress", "jsonl"],
                            capture_output=True, text=True, encoding="utf-8",
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "done" for e in events) == 1
    generator, card = load_checkpoint(out)
    assert card["training"]["world_size"] == 2 and card["training"]["steps"] == 4
    multi = Ledger.from_dict(card["privacy"])

    privacy = DPTraining(DPConfig(delta=1e-2, max_grad_norm=1.0, noise_multiplier=1.0))
    Trainer(train_config(phantom, tmp_path / "dp1", max_steps=4, batch_size=2), privacy=privacy).run()
    single = Ledger.from_dict(load_checkpoint(tmp_path / "dp1")[1]["privacy"])
    # the (secret) Poisson draws decide how many noise-only steps each run took; (σ, q) are the same
    assert multi.history == ((1.0, single.sample_rate, multi.steps),) and multi.steps >= 4
    assert multi.sample_rate == 2 / multi.patients  # q over ALL patients
    assert multi.epsilon == epsilon_of([(1.0, multi.sample_rate, multi.steps)], delta=1e-2, accountant="rdp")
    assert len(read_membership(out)["members"]) == multi.patients


def _torchrun():
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone", "--nproc_per_node",
            "2", "-m", "CMRSynthLib"]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_of_a_draw_are_disjoint_and_make_up_the_draw(world):
    from CMRSynthLib.training.patient_sampling import FILLER, PoissonUnitSampler, shard

    sampler = PoissonUnitSampler([[3 * u, 3 * u + 1, 3 * u + 2] for u in range(10)], sample_rate=0.3,
                                 slices_per_unit=2, multiplicity=2)
    for seed in range(20):
        draw = sampler.draw(torch.Generator().manual_seed(seed))
        parts = [shard(draw, rank=r, world=world) for r in range(world)]
        assert sorted(u for p in parts for u in p.units) == sorted(draw.units)
        counted = [(row, p.units[g]) for p in parts for row, g in zip(p.rows, p.groups) if g != FILLER]
        assert sorted(counted) == sorted((row, draw.units[g]) for row, g in zip(draw.rows, draw.groups))
        for p in parts:
            assert (FILLER in p.groups) == (not p.units and bool(draw.rows)) and (p.rows or not draw.rows)
