"""The one interface every generator family implements, and the conditions it is given.

A generator learns p(image | mask, vendor, phase, group). Images are ``(B, 1, *spatial)`` in [-1, 1]
(after preprocessing); ``spatial`` is ``(H, W)`` for ``spatial_dims=2`` and ``(D, H, W)`` for 3.

Time: every family exposes a *noise level* ``t ∈ [0, 1]`` to callers outside the family (the audit's
per-timestep attacks, the trainer): 0 is the clean image, 1 is pure noise. Each family maps it onto its own
schedule (DDPM: timestep ``round(t·(T-1))``; flow: the interpolation time of :mod:`.flow`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from CMRSynthLib.data.conventions import NUM_CLASSES
from CMRSynthLib.errors import InputError

NULL = 0  # token index of "no condition" (classifier-free guidance), for vendor, phase and group alike


@dataclass(frozen=True)
class Vocabulary:
    """Names of the vendors, phases and groups a model knows. Index 0 of each embedding is the null token,
    so name ``names[i]`` has token ``i + 1``."""

    vendors: tuple[str, ...]
    phases: tuple[str, ...] = ("ED", "ES")
    groups: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "ARV")

    def token(self, kind: str, name: str | None) -> int:
        """Token of ``name`` among ``kind`` ("vendors", "phases", "groups"); None or "" gives the null token."""
        if name is None or name == "":
            return NULL
        names = getattr(self, kind)
        if name not in names:
            raise InputError(f"unknown {kind[:-1]} {name!r}; this model knows {', '.join(names) or 'none'} (the "
                             f"{kind} of its training data: it cannot render others)")
        return names.index(name) + 1

    def to_dict(self) -> dict:
        return {"vendors": list(self.vendors), "phases": list(self.phases), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls(**{f.name: tuple(data[f.name]) for f in fields(cls)})


@dataclass
class Conditions:
    """What a batch is conditioned on.

    Attributes:
        mask: ``(B, 4, *spatial)`` float one-hot of the canonical labels (background, LV, MYO, RV).
        vendor, phase, group: ``(B,)`` long tokens from a :class:`Vocabulary`; 0 is the null token.
    """

    mask: torch.Tensor
    vendor: torch.Tensor
    phase: torch.Tensor
    group: torch.Tensor

    def __post_init__(self):
        if self.mask.ndim not in (4, 5) or self.mask.shape[1] != NUM_CLASSES:
            raise ValueError(f"mask must be (B, {NUM_CLASSES}, *spatial) one-hot, got {tuple(self.mask.shape)}")
        for name in ("vendor", "phase", "group"):
            value = getattr(self, name)
            if value.shape != (self.mask.shape[0],):
                raise ValueError(f"{name} must be ({self.mask.shape[0]},) tokens, got {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.mask.shape[0]

    def to(self, device) -> "Conditions":
        return Conditions(*(getattr(self, f.name).to(device) for f in fields(self)))

    def without_tokens(self) -> "Conditions":
        """The same masks with every token set to null: the unconditional branch of guidance."""
        return Conditions(self.mask, *(torch.full_like(getattr(self, n), NULL) for n in ("vendor", "phase", "group")))

    def __getitem__(self, index) -> "Conditions":
        return Conditions(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def cat(parts: Sequence["Conditions"]) -> "Conditions":
        return Conditions(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Conditions)))


ProgressCallback = Callable[[int, int], None]  # (steps done, total steps)


class Generator(nn.Module, ABC):
    """A conditional image generator. Subclasses set the class attributes and implement three methods.

    The trainer calls :meth:`loss` and averages; DP-SGD needs it per sample, so it returns ``(B,)``.
    The audit calls :meth:`loss_at` to attack the model at chosen noise levels.
    """

    family: ClassVar[str]
    samplers: ClassVar[tuple[str, ...]]
    default_sampler: ClassVar[str]
    default_steps: ClassVar[int]
    default_guidance: float = 1.0  # a family whose config names another sets it per model
    config_class: ClassVar[type]  # the family's frozen config dataclass (``preset``, ``to_dict``/``from_dict``)

    @abstractmethod
    def loss(self, images: torch.Tensor, cond: Conditions, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample training loss ``(B,)`` at random noise levels (with CFG condition dropout)."""

    @abstractmethod
    def loss_at(self, images: torch.Tensor, cond: Conditions, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``(B,)`` at given noise levels ``t`` ``(B,)`` in [0, 1] and given noise (no dropout)."""

    @abstractmethod
    def sample(self, cond: Conditions, *, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               callback: ProgressCallback | None = None) -> torch.Tensor:
        """Images ``(B, 1, *spatial)`` in [-1, 1] for the conditions. Same generator seed → same images."""

    def noise_like(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise for :meth:`loss_at` for these images: shaped like the space the family
        diffuses in (the images' own shape, except for latent and label-map models, which override this)."""
        return torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)

    def check_sampling(self, sampler: str | None, steps: int | None,
                       guidance: float | None) -> tuple[str, int, float]:
        """Validate sampling options (names the argument and the allowed values); fill the model's defaults."""
        sampler = sampler or self.default_sampler
        steps = self.default_steps if steps is None else steps
        guidance = self.default_guidance if guidance is None else guidance
        if sampler not in self.samplers:
            raise InputError(f"--sampler {sampler!r} is not available for {self.family}; choose one of "
                             f"{', '.join(self.samplers)}")
        if int(steps) != steps or steps <= 0:
            raise InputError(f"--steps must be a positive whole number, got {steps}")
        if not guidance >= 0:
            raise InputError(f"--guidance must be ≥ 0, got {guidance}")
        return sampler, int(steps), float(guidance)
