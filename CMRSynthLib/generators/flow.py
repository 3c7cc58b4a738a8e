"""Flow matching: rectified flow / conditional flow matching (Liu et al. 2023; Lipman et al. 2023).

The one convention of CMRSynth (matches :mod:`.base`'s noise level: 0 = data, 1 = noise)::

    x_t = (1 − t) · x_0 + t · ε,      t ∈ [0, 1], x_0 = data, ε ~ N(0, I)
    v   = dx_t/dt = ε − x_0           (the network's regression target)

Sampling integrates dx/dt = v(x, t) from t = 1 (noise) down to t = 0 (data); inversion integrates the same
ODE upwards, from an image at t = 0 to its noise at t = 1 — deterministic, hence vendor restyling.

How the libraries differ (so their formulas are not mixed with ours):

* diffusers ``FlowMatchEulerDiscreteScheduler``: the same (σ = t, 1 = noise, model output ε − x_0).
* MONAI ``RFlowScheduler``: the same interpolation with timesteps ``T·t`` in [0, 1000], but the velocity has
  the opposite sign, v_monai = x_0 − ε, and its ``step`` adds ``v · (t − t_next)/T``.
* torchcfm: time runs the other way (t = 0 noise, t = 1 data), x_t = t·x_1 + (1 − t)·x_0 with x_0 the noise and
  u_t = x_1 − x_0 = data − noise; so v_ours(x, t) = −u_cfm(x, 1 − t).

The integrators (Euler, Heun, midpoint, Adams–Bashforth 2) are written here (:func:`integrate`) because no library
offers them together with inversion (integrating towards noise). Sampling times follow an optional shift
(Esser et al. 2024) ``t' = s·t / (1 + (s − 1)·t)``: s > 1 spends more steps at high noise. Training draws t
uniformly or from a logit-normal (Esser et al. 2024), which favours mid-range t.

The network sees ``t · 1000`` as its timestep so that MONAI's sinusoidal embedding has the frequencies it
was designed for. Subclasses (the latent and the anatomy models) change the space the flow lives in through
three hooks: :meth:`FlowGenerator.encode`, :meth:`FlowGenerator.decode`, :meth:`FlowGenerator.model_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from CMRSynthLib.generators.base import Conditions, Generator, ProgressCallback, Vocabulary
from CMRSynthLib.generators.common import (HEART_COORDINATE_UNIT, check_config, drop_conditions, drop_tokens,
                                           guided_output, mask_channels, mse_per_sample, preset_fields, randn,
                                           tokens_of, with_heart_coordinates)
from CMRSynthLib.models.config import FrozenConfig
from CMRSynthLib.models.unet import ConditionalUNet, UNetConfig, token_counts

SAMPLERS = ("euler", "heun", "midpoint", "ab2")
T_SAMPLING = ("uniform", "logit_normal")
TIME_SCALE = 1000.0  # network timestep = t · TIME_SCALE
# small: the CPU speed preset. ab2 8 = 8 forwards of a 4-GFLOP UNet; on the flow starter it lands closer to a
# Heun-50 reference than Heun 6 (12 forwards) does, at the same mask Dice (benchmarks' solver table).
DEFAULT_SAMPLERS = {"tiny": "heun", "small": "ab2", "base": "heun"}
DEFAULT_STEPS = {"tiny": 6, "small": 8, "base": 25}

Velocity = Callable[[torch.Tensor, float], torch.Tensor]  # (x (B, C, *spatial), t) → dx/dt


def time_grid(steps: int, *, shift: float = 1.0, start: float = 1.0, end: float = 0.0) -> list[float]:
    """``steps + 1`` times from ``start`` to ``end``, evenly spaced then shifted by ``t' = s·t/(1 + (s−1)·t)``."""
    grid = torch.linspace(start, end, steps + 1, dtype=torch.float64)
    return (shift * grid / (1 + (shift - 1) * grid)).tolist()


def integrate(velocity: Velocity, x: torch.Tensor, times: list[float], *, sampler: str,
              callback: ProgressCallback | None = None) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) along ``times`` (decreasing: towards data; increasing: towards noise).

    Euler: x' = x + h·v(x, t). Heun (trapezoid): x̃ = x + h·v₁, x' = x + h/2·(v₁ + v(x̃, t + h)).
    Midpoint: x' = x + h·v(x + h/2·v₁, t + h/2). Heun and midpoint take two evaluations per step.
    ab2 (Adams–Bashforth, variable step): x' = x + h·((1 + r/2)·v₁ − r/2·v₀) with v₀ the previous step's
    velocity and r = h/h₀; the first step is Euler. Second order like Heun at one evaluation per step.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {SAMPLERS}")
    total = len(times) - 1
    previous = None  # ab2: (h, v) of the step before
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        h = t_next - t
        v = velocity(x, t)
        if sampler == "euler" or (sampler == "ab2" and previous is None):
            x = x + h * v
        elif sampler == "ab2":
            r = h / previous[0]
            x = x + h * ((1 + 0.5 * r) * v - 0.5 * r * previous[1])
        elif sampler == "heun":
            x = x + 0.5 * h * (v + velocity(x + h * v, t_next))
        else:
            x = x + h * velocity(x + 0.5 * h * v, t + 0.5 * h)
        previous = (h, v)
        if callback is not None:
            callback(i + 1, total)
    return x


@dataclass(frozen=True)
class FlowConfig(FrozenConfig):
    """Everything needed to rebuild a :class:`FlowGenerator` (saved in every checkpoint)."""

    spatial_dims: int
    image_size: tuple[int, ...]
    vocabulary: Vocabulary
    network: UNetConfig = field(default_factory=UNetConfig)
    p_uncond: float = 0.1
    p_mask_uncond: float = 0.0  # share of fully unconditional training samples (no mask either): mask guidance
    guidance: float = 1.0  # the guidance weight sampling uses unless told otherwise
    heart_coordinates: bool = False  # the mask input carries each pixel's offset from the heart (common.py)
    t_sampling: str = "logit_normal"
    time_shift: float = 1.0
    sampler: str = "heun"
    steps: int = 10

    def __post_init__(self):
        check_config(self, samplers=SAMPLERS)
        if self.t_sampling not in T_SAMPLING:
            raise ValueError(f"t_sampling {self.t_sampling!r} is not one of {T_SAMPLING}")
        if not self.time_shift > 0:
            raise ValueError(f"time_shift must be positive, got {self.time_shift}")
        if not 0.0 <= self.p_mask_uncond < 1.0:
            raise ValueError(f"p_mask_uncond must be in [0, 1), got {self.p_mask_uncond}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be ≥ 0, got {self.guidance}")

    @classmethod
    def preset(cls, name: str, *, spatial_dims: int, image_size, vocabulary: Vocabulary, **overrides):
        """The "tiny" (tests), "small" (CPU) or "base" (GPU) configuration; keyword overrides win."""
        fields = preset_fields(name, spatial_dims=spatial_dims, image_size=image_size, vocabulary=vocabulary)
        return cls(**{**fields, "sampler": DEFAULT_SAMPLERS[name], "steps": DEFAULT_STEPS[name], **overrides})


class FlowGenerator(Generator):
    """Mask-conditioned rectified flow. Images ``(B, 1, *spatial)`` in [-1, 1]; conditions as :class:`Conditions`."""

    family = "flow"
    samplers = SAMPLERS
    config_class = FlowConfig

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.default_sampler, self.default_steps, self.default_guidance = config.sampler, config.steps, config.guidance
        self.net = self.build_network(config)

    def build_network(self, config: FlowConfig) -> nn.Module:
        return ConditionalUNet(spatial_dims=config.spatial_dims, channels=1, mask_channels=mask_channels(config),
                               token_counts=token_counts(config.vocabulary), config=config.network)

    # ------------------------------------------------------------------ the space the flow lives in (hooks)
    def encode(self, images: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Data ``x_0`` of the flow for a batch: here the images themselves."""
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Flow samples ``x_0`` → images ``(B, 1, *spatial)`` in [-1, 1]."""
        return x.clamp(-1, 1)

    def model_mask(self, cond: Conditions) -> torch.Tensor | None:
        """The mask the network is given: the one-hot mask at image resolution (and the heart coordinates)."""
        return with_heart_coordinates(cond.mask, self.config, unit=HEART_COORDINATE_UNIT)

    def model_tokens(self, cond: Conditions) -> torch.Tensor:
        return tokens_of(cond)

    def model_shape(self, batch: int, spatial: torch.Size) -> tuple[int, ...]:
        """Shape of the flow's state for ``batch`` samples whose masks have ``spatial`` size."""
        return (batch, 1, *spatial)

    def noise_like(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return randn(self.model_shape(len(images), images.shape[2:]), generator, images.device, images.dtype)

    # ----------------------------------------------------------------------------------------------- training
    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, v)`` with x_t = (1 − t)·x_0 + t·ε and v = ε − x_0; ``t`` is ``(B,)``."""
        tt = t.view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
        return (1 - tt) * x0 + tt * noise, noise - x0

    def sample_t(self, batch: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Training noise levels ``(B,)``: uniform on [0, 1] or logit-normal (sigmoid of a standard normal)."""
        if self.config.t_sampling == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device))

    def _loss(self, images, cond: Conditions, t, noise, mask, tokens) -> torch.Tensor:
        x_t, target = self.interpolate(self.encode(images, cond), noise, t)
        return mse_per_sample(self.net(x_t, t * TIME_SCALE, mask, tokens), target)

    def loss(self, images: torch.Tensor, cond: Conditions, *, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.sample_t(len(images), generator, images.device)
        noise = self.noise_like(images, generator=generator)
        tokens = drop_tokens(self.model_tokens(cond), self.config.p_uncond, generator)
        mask = self.model_mask(cond)
        if mask is not None:
            mask, tokens = drop_conditions(mask, tokens, self.config.p_mask_uncond, generator)
        return self._loss(images, cond, t, noise, mask, tokens)

    def loss_at(self, images: torch.Tensor, cond: Conditions, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._loss(images, cond, t, noise, self.model_mask(cond), self.model_tokens(cond))

    # ----------------------------------------------------------------------------------------------- sampling
    def velocity(self, cond: Conditions, guidance: float) -> Velocity:
        """The guided velocity field v(x, t) of the network for these conditions."""
        mask, tokens = self.model_mask(cond), self.model_tokens(cond)

        def field(x: torch.Tensor, t: float) -> torch.Tensor:
            timesteps = torch.full((len(x),), t * TIME_SCALE, device=x.device, dtype=x.dtype)
            return guided_output(self.net, x, timesteps, mask, tokens, guidance,
                                 guide_mask=self.config.p_mask_uncond > 0)

        return field

    @torch.no_grad()
    def flow(self, x: torch.Tensor, cond: Conditions, *, start: float, end: float, sampler: str | None = None,
             steps: int | None = None, guidance: float | None = None,
             callback: ProgressCallback | None = None) -> torch.Tensor:
        """Carry the flow state ``x`` from time ``start`` to ``end`` (either direction) with the ODE."""
        sampler, steps, guidance = self.check_sampling(sampler, steps, guidance)
        times = time_grid(steps, shift=self.config.time_shift, start=start, end=end)
        return integrate(self.velocity(cond, guidance), x, times, sampler=sampler, callback=callback)

    def sample(self, cond: Conditions, *, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               callback: ProgressCallback | None = None) -> torch.Tensor:
        noise = randn(self.model_shape(len(cond), cond.mask.shape[2:]), generator, cond.mask.device)
        return self.decode(self.flow(noise, cond, start=1.0, end=0.0, sampler=sampler, steps=steps,
                                     guidance=guidance, callback=callback))

    def invert(self, images: torch.Tensor, cond: Conditions, *, steps: int | None = None,
               sampler: str | None = None, guidance: float | None = None) -> torch.Tensor:
        """Images ``(B, 1, *spatial)`` → their noise (the flow state at t = 1), deterministically."""
        with torch.no_grad():
            x0 = self.encode(images, cond)
        return self.flow(x0, cond, start=0.0, end=1.0, sampler=sampler, steps=steps, guidance=guidance)

    def restyle(self, images: torch.Tensor, source_cond: Conditions, target_cond: Conditions, *,
                steps: int | None = None, sampler: str | None = None, guidance: float | None = None) -> torch.Tensor:
        """Re-render images in another style: invert under ``source_cond`` (e.g. the image's own vendor), then
        integrate back to data under ``target_cond``. The same guidance is used both ways, so restyling to the
        source conditions gives the image back up to the integration error."""
        noise = self.invert(images, source_cond, steps=steps, sampler=sampler, guidance=guidance)
        return self.decode(self.flow(noise, target_cond, start=1.0, end=0.0, sampler=sampler, steps=steps,
                                     guidance=guidance))
