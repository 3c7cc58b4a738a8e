"""Poisson sampling of privacy units (patients) and a loader that keeps each row's unit for the optimizer.

Why not Opacus's ``DPDataLoader``: it samples *rows* (slices), so a patient with 20 slices could enter a step 20
times and the accountant's q would be the slice rate — slice-level DP. Here each *unit* (a patient; a single
slice only with ``--slice-level``) enters a step independently with probability q, and then contributes
``min(k, its slices)`` distinct random slices, each repeated K times for noise multiplicity. All rows of one unit
carry the unit's group number, and :class:`~CMRSynthLib.training.dp_optimizer.PatientDPOptimizer` averages them
into ONE gradient before clipping, so one unit's influence on a step is bounded by the clipping norm C — the
sensitivity the accountant assumes.

Several processes (torchrun): every process draws the same full sample (the same secret generator state, sent
by rank 0), then keeps the units whose
number is its rank modulo the world size (:func:`shard`). The shares are disjoint and their union is exactly the
single-process draw, so the accountant's q (over all patients) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

FILLER = -1  # the group of a row that is computed but does not count (its gradient is dropped before clipping)


@dataclass(frozen=True)
class Draw:
    """One step's sample. ``rows``: dataset indices ``(R,)`` in batch order; ``groups``: ``(R,)`` the position
    (0..G-1) of each row's unit among the ``G`` units drawn; ``units``: the G unit numbers."""

    rows: tuple[int, ...]
    groups: tuple[int, ...]
    units: tuple[int, ...]


class PoissonUnitSampler:
    """Draws Poisson samples of units.

    Args:
        units: for each unit, the dataset indices of its items (slices, or stacks for 3D).
        sample_rate: q, the probability a unit enters a step.
        slices_per_unit: k, the most items of one unit in one step (distinct, drawn without replacement).
        multiplicity: K, how many times each drawn item is repeated (independent noise/timestep per copy).
    """

    def __init__(self, units: Sequence[Sequence[int]], *, sample_rate: float, slices_per_unit: int = 1,
                 multiplicity: int = 1):
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if slices_per_unit < 1 or multiplicity < 1:
            raise ValueError(f"slices_per_unit ({slices_per_unit}) and multiplicity ({multiplicity}) must be ≥ 1")
        if not units or any(len(u) == 0 for u in units):
            raise ValueError("every unit needs at least one item, and there must be at least one unit")
        self.units = [list(u) for u in units]
        self.sample_rate = float(sample_rate)
        self.slices_per_unit = int(slices_per_unit)
        self.multiplicity = int(multiplicity)

    def draw(self, generator: torch.Generator | None = None) -> Draw:
        """One step: each unit enters with probability q; an entering unit gives ≤ k distinct items × K copies."""
        chosen = torch.rand(len(self.units), generator=generator) < self.sample_rate
        rows: list[int] = []
        groups: list[int] = []
        units = tuple(int(u) for u in torch.nonzero(chosen).flatten())
        for position, unit in enumerate(units):
            items = self.units[unit]
            order = torch.randperm(len(items), generator=generator)[: self.slices_per_unit]
            for item in order.tolist():
                rows.extend([items[item]] * self.multiplicity)
                groups.extend([position] * self.multiplicity)
        return Draw(tuple(rows), tuple(groups), units)


def shard(draw: Draw, *, rank: int, world: int) -> Draw:
    """Process ``rank``'s share of ``draw``: its units (unit number ≡ rank mod ``world``), groups renumbered.

    A process whose share is empty while the draw is not gets one filler row (the draw's first, group
    :data:`FILLER`), so every process runs the same step; the optimizer
    drops the filler's gradient before clipping.
    """
    if world == 1:
        return draw
    kept = [position for position, unit in enumerate(draw.units) if unit % world == rank]
    renumber = {old: new for new, old in enumerate(kept)}
    pairs = [(row, renumber[group]) for row, group in zip(draw.rows, draw.groups) if group in renumber]
    if not pairs and draw.rows:
        pairs = [(draw.rows[0], FILLER)]
    return Draw(tuple(r for r, _ in pairs), tuple(g for _, g in pairs), tuple(draw.units[p] for p in kept))


class UnitLoader:
    """Iterates collated batches of :class:`PoissonUnitSampler` draws over a map-style dataset; one pass
    (an "epoch", each unit drawn once on average) hands out ``steps_per_epoch`` batches.

    Each draw uses ``next_generator()`` (under DP a secret generator: :func:`~.privacy.secret_generator`). Before
    yielding a batch it
    calls ``on_draw(draw)`` (the optimizer needs the rows' groups), so the groups always belong to the batch
    just handed out. An empty draw yields ``None``: it is a step like any other (the accountant counts it, and
    DP-SGD must take it as a noise-only step, or skipping it would reveal that nobody was drawn), so the
    trainer counts the same steps as the planner. Iteration ends early once ``stop()``;
    a pass that yields nothing therefore means the run is over. With ``world`` > 1 each batch is this
    process's :func:`shard` of the draw (an empty draw is empty for every process, so they stay in step).
    """

    def __init__(self, dataset, sampler: PoissonUnitSampler, collate_fn: Callable, *, steps_per_epoch: int,
                 next_generator: Callable[[], torch.Generator], on_draw: Callable[[Draw], None],
                 stop: Callable[[], bool], rank: int = 0, world: int = 1):
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.steps_per_epoch = int(steps_per_epoch)
        self.next_generator = next_generator
        self.on_draw = on_draw
        self.stop = stop
        self.rank, self.world = int(rank), int(world)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self):
        handed = 0
        while handed < self.steps_per_epoch and not self.stop():
            draw = self.sampler.draw(self.next_generator())
            handed += 1
            if not draw.rows:
                yield None
                continue
            draw = shard(draw, rank=self.rank, world=self.world)
            self.on_draw(draw)
            yield self.collate_fn([self.dataset[i] for i in draw.rows])
