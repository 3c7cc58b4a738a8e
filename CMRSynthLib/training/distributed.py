"""Data-parallel training across processes (DESIGN §8): torchrun + DistributedDataParallel.

``torchrun --nproc_per_node N -m CMRSynthLib train ...`` starts N copies of the command; torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address. Each process joins one process group
(gloo on CPU, NCCL on CUDA), trains on its shard of every epoch (:class:`ResumableSampler`), and DDP
averages the gradients. Only rank 0 writes checkpoints and reports progress; the others are silent.
Without torchrun's variables everything here is a no-op (world size 1).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world torchrun describes in the environment (a single process when it does not)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def start(world: World, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA devices, gloo otherwise."""
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def mean_across(world: World, value: float, device: torch.device) -> float:
    """The mean of a per-process number over all processes (for the logged loss)."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.size


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when the world has several processes."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


class ResumableSampler(DistributedSampler):
    """A seeded shuffle per epoch, sharded over processes, that can skip the start of an epoch.

    torch's :class:`DistributedSampler` gives every epoch its own permutation (``seed + epoch``) and each
    rank a disjoint shard; ``skip`` drops the first indices of the current epoch, so a resumed run sees the
    rest of the interrupted epoch exactly as an uninterrupted run would. With one process it is a plain
    seeded shuffle.
    """

    def __init__(self, dataset, world: World, *, seed: int):
        super().__init__(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.skip = 0

    def start_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = skip
        if hasattr(self.dataset, "epoch"):  # datasets that draw per epoch (random tiles) follow along
            self.dataset.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)
