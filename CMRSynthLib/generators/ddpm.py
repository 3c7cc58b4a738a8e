"""DDPM: a mask-conditioned denoising diffusion model (Ho et al. 2020), ε- or v-prediction.

Forward process (Ho et al. eq. 4), with ``ᾱ_k`` = ``alphas_cumprod[k]`` of the diffusers noise schedule::

    x_k = √ᾱ_k · x_0 + √(1 − ᾱ_k) · ε,        k ∈ {0, …, T−1}, ε ~ N(0, I)

The network predicts ε (``prediction_type="epsilon"``) or v = √ᾱ_k · ε − √(1 − ᾱ_k) · x_0
(``"v_prediction"``, Salimans & Ho 2022); the loss is the per-sample MSE to that target. The presets use
v-prediction on the cosine schedule (:data:`PRESET_PARAMETERISATION`). The noise level
``t ∈ [0, 1]`` of :mod:`.base` maps to ``k = round(t · (T − 1))``.

Samplers — diffusers schedulers, all driven by the one loop in :meth:`DDPMGenerator.sample`
(``set_timesteps`` then ``step`` per timestep):

* ``"ancestral"``: DDPM's stochastic reverse chain; ``steps = T`` is the original 1000-step sampler, fewer
  steps respace the chain (diffusers' DDPMScheduler supports it).
* ``"ddim"``: DDIM with η = 0, deterministic (Song et al. 2021).
* ``"dpmpp"``: DPM-Solver++(2M), second-order multistep (Lu et al. 2022) — the fast default.

Timesteps are spaced "trailing" (the first step starts at k = T − 1, Lin et al. 2024), which matters for few steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.base import Conditions, Generator, ProgressCallback, Vocabulary
from CMRSynthLib.generators.common import (check_config, drop_tokens, guided_output, mse_per_sample,
                                           preset_fields, randn, tokens_of)
from CMRSynthLib.models.config import FrozenConfig
from CMRSynthLib.models.unet import ConditionalUNet, UNetConfig, token_counts

SAMPLERS = ("ancestral", "ddim", "dpmpp")
PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# small: the CPU speed preset (< 1 s per 128×128 slice wants ≲ 12 forwards of its 4-GFLOP UNet)
DEFAULT_STEPS = {"tiny": 10, "small": 12, "base": 25}
# Presets predict v on the cosine schedule (Salimans & Ho 2022; Nichol & Dhariwal 2021). An ε-network must
# recover x_0 as (x_k − √(1 − ᾱ_k)·ε̂)/√ᾱ_k, which multiplies its error by ~160 at k = T − 1 of the linear
# schedule: the ε starter (1200 steps) got the anatomy wrong at high noise and its few-step samplers, which
# fix the layout there, missed the mask (Dice 0.16). A v-network predicts x_0 from the mask directly there.
# The dataclass defaults stay ε / linear so that cards written before this change load unchanged.
PRESET_PARAMETERISATION = {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"}


@dataclass(frozen=True)
class DDPMConfig(FrozenConfig):
    """Everything needed to rebuild a :class:`DDPMGenerator` (saved in every checkpoint)."""

    spatial_dims: int
    image_size: tuple[int, ...]
    vocabulary: Vocabulary
    network: UNetConfig = field(default_factory=UNetConfig)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    p_uncond: float = 0.1
    sampler: str = "dpmpp"
    steps: int = 20

    def __post_init__(self):
        check_config(self, samplers=SAMPLERS)
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be ≥ 2, got {self.num_train_timesteps}")

    @classmethod
    def preset(cls, name: str, *, spatial_dims: int, image_size, vocabulary: Vocabulary, **overrides) -> "DDPMConfig":
        """The "tiny" (tests), "small" (CPU) or "base" (GPU) configuration; keyword overrides win."""
        fields = preset_fields(name, spatial_dims=spatial_dims, image_size=image_size, vocabulary=vocabulary)
        return cls(**{**fields, **PRESET_PARAMETERISATION, "steps": DEFAULT_STEPS[name], **overrides})


class DDPMGenerator(Generator):
    """Mask-conditioned DDPM. Images ``(B, 1, *spatial)`` in [-1, 1]; conditions as :class:`Conditions`."""

    family = "ddpm"
    samplers = SAMPLERS
    config_class = DDPMConfig

    def __init__(self, config: DDPMConfig):
        super().__init__()
        self.config = config
        self.default_sampler, self.default_steps = config.sampler, config.steps
        self.net = ConditionalUNet(spatial_dims=config.spatial_dims, channels=1, mask_channels=4,
                                   token_counts=token_counts(config.vocabulary), config=config.network)
        self.register_buffer("alphas_cumprod", self.scheduler("ancestral").alphas_cumprod.float(),
                             persistent=False)

    def scheduler(self, sampler: str):
        """A fresh diffusers scheduler for ``sampler`` (schedulers keep per-run state, so one per call).

        diffusers is imported here, not with the module: importing it costs about 1.5 s (it loads torch._dynamo),
        which every ``cmrsynth`` process paid, also for the default latent flow model that never uses it."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        common = dict(num_train_timesteps=self.config.num_train_timesteps, beta_schedule=self.config.beta_schedule,
                      prediction_type=self.config.prediction_type, timestep_spacing="trailing")
        if sampler == "ancestral":
            return DDPMScheduler(**common, clip_sample=True)
        if sampler == "ddim":
            return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True)
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)

    # ----------------------------------------------------------------------------------------------- training
    def timesteps_of(self, t: torch.Tensor) -> torch.Tensor:
        """Noise levels ``t`` ``(B,)`` in [0, 1] → integer timesteps ``round(t · (T − 1))``."""
        return torch.round(t.clamp(0, 1) * (self.config.num_train_timesteps - 1)).long()

    def diffuse(self, images: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_k, target)`` for images ``(B, 1, *spatial)`` at timesteps ``k`` ``(B,)``: Ho et al. eq. 4 and the
        ε or v target."""
        abar = self.alphas_cumprod[k].view(-1, *[1] * (images.ndim - 1))
        noisy = abar.sqrt() * images + (1 - abar).sqrt() * noise
        if self.config.prediction_type == "epsilon":
            return noisy, noise
        return noisy, abar.sqrt() * noise - (1 - abar).sqrt() * images

    def _loss(self, images, cond: Conditions, k, noise, tokens) -> torch.Tensor:
        noisy, target = self.diffuse(images, k, noise)
        return mse_per_sample(self.net(noisy, k, cond.mask, tokens), target)

    def loss(self, images: torch.Tensor, cond: Conditions, *, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.randint(0, self.config.num_train_timesteps, (len(images),), generator=generator,
                          device=images.device)
        noise = randn(images.shape, generator, images.device, images.dtype)
        return self._loss(images, cond, k, noise, drop_tokens(tokens_of(cond), self.config.p_uncond, generator))

    def loss_at(self, images: torch.Tensor, cond: Conditions, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._loss(images, cond, self.timesteps_of(t), noise, tokens_of(cond))

    # ----------------------------------------------------------------------------------------------- sampling
    def check_sampling(self, sampler, steps, guidance):
        sampler, steps, guidance = super().check_sampling(sampler, steps, guidance)
        if steps > self.config.num_train_timesteps:
            raise InputError(f"--steps must be at most {self.config.num_train_timesteps} (the trained timesteps) "
                             f"for {self.family}, got {steps}")
        return sampler, steps, guidance

    @torch.no_grad()
    def sample(self, cond: Conditions, *, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               callback: ProgressCallback | None = None) -> torch.Tensor:
        sampler, steps, guidance = self.check_sampling(sampler, steps, guidance)
        scheduler = self.scheduler(sampler)
        scheduler.set_timesteps(steps)
        x = randn((len(cond), 1, *cond.mask.shape[2:]), generator, cond.mask.device)
        return self.denoise(x, cond, scheduler, guidance=guidance, generator=generator, callback=callback)

    def denoise(self, x: torch.Tensor, cond: Conditions, scheduler, *, guidance: float,
                generator: torch.Generator | None, callback: ProgressCallback | None = None) -> torch.Tensor:
        """Run ``scheduler`` (already given its timesteps) from ``x`` ``(B, 1, *spatial)`` down to an image."""
        tokens = tokens_of(cond)
        total = len(scheduler.timesteps)
        for i, k in enumerate(scheduler.timesteps):
            timesteps = k.expand(len(x)).to(x.device)
            output = guided_output(self.net, scheduler.scale_model_input(x, k), timesteps, cond.mask, tokens,
                                   guidance)
            x = scheduler.step(output, k, x, generator=generator).prev_sample
            if callback is not None:
                callback(i + 1, total)
        return x.clamp(-1, 1)
