"""Exponential moving average of a generator's weights, on torch's :class:`AveragedModel`.

torch's own ``get_ema_multi_avg_fn`` uses a constant decay, which makes a short run's average lag far behind
its weights; this one warms the decay up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the
schedule of Tensorflow's ExponentialMovingAverage ``num_updates``), which torch does not offer.
Buffers are averaged too (``use_buffers=True``); constant buffers such as noise schedules stay constant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _warmup_ema(decay: float):
    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], model_params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, weight)
        else:  # integer buffers (counters) follow the model
            for mine, theirs in zip(ema_params, model_params):
                mine.copy_(theirs)

    return update


class EMA:
    """The averaged copy of ``model``; :meth:`update` after every optimizer step.

    ``state_dict()`` has exactly the keys of ``model.state_dict()``, so the EMA weights load into a fresh
    generator of the same config.
    """

    def __init__(self, model: nn.Module, *, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=_warmup_ema(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], *, updates: int) -> None:
        self.averaged.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(updates)
