"""Opacus's DPOptimizer with per-unit (per-patient) aggregation of per-sample gradients before clipping.

Opacus clips each row of ``p.grad_sample``. Our batch rows are slices (and K noise draws of each slice), and
the privacy unit is the patient, so before Opacus clips we replace each ``p.grad_sample`` ``(R, *p.shape)`` by
the mean over each unit's rows ``(G, *p.shape)``: the unit's gradient of its average loss. Opacus then clips
each unit's gradient to C, sums, adds N(0, σ²C²) noise and divides by the expected number of units per step.
Nothing else of DPOptimizer changes (this aggregation is what Opacus lacks, hence the subclass).

The units' gradients are summed in fp32 whatever the autocast dtype: Opacus takes the clipping norms from these
tensors, and norms of bf16 gradients let a clipped gradient reach 1.006-1.0085 × C, beyond the sensitivity the
accountant assumes (measured; ``test_clipping_is_exact_under_bf16_autocast``).

Rows of group ``FILLER`` (-1, see :mod:`.patient_sampling`) are dropped before clipping: a process of a
multi-process run whose share of a step's patients is empty still runs one forward/backward pass (so every
process takes the same collective steps) on one filler row whose gradient must count for nothing.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

from CMRSynthLib.training.patient_sampling import FILLER


class PatientDPOptimizer(DPOptimizer):
    """DPOptimizer whose clipping unit is a group of rows. Call :meth:`set_groups` before each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._groups: torch.Tensor | None = None

    def set_groups(self, groups: torch.Tensor) -> None:
        """``groups``: ``(R,)`` long, the unit position 0..G-1 of every row of the next backward pass."""
        self._groups = torch.as_tensor(groups, dtype=torch.long)

    def noise_only_step(self) -> None:
        """A step for a draw with no unit in it: zero units, so only noise (keeps Poisson sampling honest).

        The previous step's summed gradients are cleared first (the trainer clears them only before a backward
        pass): they must not be applied again, and Opacus refuses to reuse them."""
        self.zero_grad(set_to_none=True)
        self._groups = torch.zeros(0, dtype=torch.long)
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.step()
        self.zero_grad()

    def pre_step(self, closure=None):
        if self._groups is None:
            raise RuntimeError("PatientDPOptimizer.step() without set_groups(): the rows' units are unknown")
        self._aggregate(self._groups)
        self._groups = None
        return super().pre_step(closure)

    def _aggregate(self, groups: torch.Tensor) -> None:
        """Replace every ``p.grad_sample`` ``(R, ...)`` by its per-group mean ``(G, ...)`` (filler rows dropped)."""
        counted = groups != FILLER
        n_groups = int(groups[counted].max()) + 1 if counted.any() else 0
        counts = torch.bincount(groups[counted], minlength=n_groups)
        for p in self.params:
            sample = p.grad_sample
            if isinstance(sample, list):  # Opacus keeps a list only under gradient accumulation, which we forbid
                raise RuntimeError("per-sample gradients were accumulated over several backward passes; "
                                   "DP-SGD here needs optimizer.step() after every backward")
            if sample is None:  # a trainable parameter the forward pass did not use: every row's gradient is 0
                p.grad_sample = torch.zeros((n_groups, *p.shape), dtype=torch.float32, device=p.device)
                continue
            if sample.shape[0] != len(groups):
                raise RuntimeError(f"{sample.shape[0]} per-sample gradients but {len(groups)} rows in the draw")
            summed = torch.zeros((n_groups, *sample.shape[1:]), dtype=torch.float32, device=sample.device)
            summed.index_add_(0, groups[counted].to(sample.device), sample[counted.to(sample.device)].float())
            shape = (n_groups,) + (1,) * (sample.dim() - 1)
            p.grad_sample = summed / counts.to(sample.device, torch.float32).reshape(shape)


class DistributedPatientDPOptimizer(PatientDPOptimizer, DistributedDPOptimizer):
    """The per-patient optimizer of one process in a multi-process run (Opacus's ``DistributedDPOptimizer``).

    Each process clips and sums the gradients of ITS patients (a disjoint share of the step's Poisson sample);
    only rank 0 adds the N(0, σ²C²) noise; each divides by its ``expected_batch_size`` (the expected patients
    per step over the world size) and the results are summed and averaged over the processes. The update is
    therefore (Σ of all clipped patient gradients + ONE noise draw) / (expected patients per step): the
    single-process mechanism, accounted with the same (σ, q).
    """
