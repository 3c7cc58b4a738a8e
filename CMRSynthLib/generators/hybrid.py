"""Hybrid: flow matching for the global structure, then a short stochastic DDPM refinement.

Sampling (``steps`` ODE steps, then ``refine_steps`` ancestral steps):

1. integrate the flow ODE (:mod:`.flow`) from noise at t = 1 down to ``t_switch``:
   x_t = (1 − t)·x_0 + t·ε;
2. hand the state to the DDPM at equal signal-to-noise ratio: dividing by r = √((1 − t)² + t²) gives
   x_t / r = √ᾱ·x_0 + √(1 − ᾱ)·ε with ᾱ = (1 − t)²/r², so the DDPM starts at the timestep k whose
   ``alphas_cumprod[k]`` is closest to that ᾱ;
3. run DDPM ancestral steps from k to 0 on ``refine_steps`` evenly spaced timesteps; the fresh noise of each
   step is what should restore fine texture and sharp boundaries that a few-step ODE tends to smooth.

Two networks, decided deliberately: a :class:`~.flow.FlowGenerator` and a full :class:`~.ddpm.DDPMGenerator`
trained on the same batches (the training loss is the sum of both per-sample losses). The price is training
two models; the gain is that one checkpoint holds both parts, so the benchmark can compare the hybrid with
its flow part and its DDPM part trained on exactly the same data (DESIGN §3: kept only if it wins).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from CMRSynthLib.generators.base import Conditions, Generator, ProgressCallback, Vocabulary
from CMRSynthLib.generators.common import randn
from CMRSynthLib.generators.ddpm import PRESET_PARAMETERISATION, DDPMConfig, DDPMGenerator
from CMRSynthLib.generators.flow import SAMPLERS, FlowConfig, FlowGenerator

# small: 6 ab2 forwards + 3 refinement forwards (Heun 4 + 3 took 11 and landed farther from a Heun-50 reference)
DEFAULT_SAMPLERS = {"tiny": "heun", "small": "ab2", "base": "heun"}
DEFAULT_STEPS = {"tiny": 4, "small": 6, "base": 15}
DEFAULT_REFINE_STEPS = {"tiny": 3, "small": 3, "base": 10}


@dataclass(frozen=True)
class HybridConfig(FlowConfig):
    """The flow part's fields (:class:`FlowConfig`: ``sampler``/``steps`` are the flow part's) plus the DDPM
    refinement's; both parts share the network hyper-parameters."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    t_switch: float = 0.3
    refine_steps: int = 4
    steps: int = 6

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.t_switch < 1.0:
            raise ValueError(f"t_switch must be in (0, 1), got {self.t_switch}")
        if self.refine_steps < 1:
            raise ValueError(f"refine_steps must be ≥ 1, got {self.refine_steps}")
        if self.heart_coordinates:  # the DDPM refinement's network has no such input
            raise ValueError("heart_coordinates must be off for a hybrid model")
        self.ddpm_config()  # the refinement part validates its own fields

    @classmethod
    def preset(cls, name: str, *, spatial_dims: int, image_size, vocabulary: Vocabulary, **overrides):
        """The "tiny" (tests), "small" (CPU) or "base" (GPU) configuration; keyword overrides win. The
        refinement part is parameterised as the DDPM presets are (v on the cosine schedule)."""
        return super().preset(name, spatial_dims=spatial_dims, image_size=image_size, vocabulary=vocabulary,
                              **{**PRESET_PARAMETERISATION, "sampler": DEFAULT_SAMPLERS[name], "steps": DEFAULT_STEPS[name],
                                 "refine_steps": DEFAULT_REFINE_STEPS[name],
                                 **overrides})

    def flow_config(self) -> FlowConfig:
        return FlowConfig(**{f.name: getattr(self, f.name) for f in fields(FlowConfig)})

    def ddpm_config(self) -> DDPMConfig:
        return DDPMConfig(spatial_dims=self.spatial_dims, image_size=self.image_size, vocabulary=self.vocabulary,
                          network=self.network, num_train_timesteps=self.num_train_timesteps,
                          beta_schedule=self.beta_schedule, prediction_type=self.prediction_type,
                          p_uncond=self.p_uncond, sampler="ancestral", steps=self.refine_steps)


class HybridGenerator(Generator):
    """Flow to ``t_switch``, then DDPM ancestral refinement. Images ``(B, 1, *spatial)`` in [-1, 1]."""

    family = "hybrid"
    samplers = SAMPLERS
    config_class = HybridConfig

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.config = config
        self.default_sampler, self.default_steps, self.default_guidance = config.sampler, config.steps, config.guidance
        self.flow_model = FlowGenerator(config.flow_config())
        self.ddpm_model = DDPMGenerator(config.ddpm_config())

    def loss(self, images: torch.Tensor, cond: Conditions, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return (self.flow_model.loss(images, cond, generator=generator)
                + self.ddpm_model.loss(images, cond, generator=generator))

    def loss_at(self, images: torch.Tensor, cond: Conditions, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.flow_model.loss_at(images, cond, t, noise) + self.ddpm_model.loss_at(images, cond, t, noise)

    def switch_point(self) -> tuple[float, int]:
        """``(r, k)``: the flow state at ``t_switch`` divided by ``r`` is the DDPM state at timestep ``k`` of
        (nearly) the same signal-to-noise ratio."""
        t = self.config.t_switch
        r = ((1 - t) ** 2 + t**2) ** 0.5
        k = int(torch.argmin((self.ddpm_model.alphas_cumprod - (1 - t) ** 2 / r**2).abs()))
        return r, k

    def refine_timesteps(self, k: int) -> list[int]:
        """``refine_steps`` evenly spaced, strictly decreasing timesteps from ``k`` to 0."""
        grid = torch.linspace(k, 0, self.config.refine_steps).round().long().tolist()
        return sorted(set(grid), reverse=True)

    @torch.no_grad()
    def sample(self, cond: Conditions, *, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               callback: ProgressCallback | None = None) -> torch.Tensor:
        sampler, steps, guidance = self.check_sampling(sampler, steps, guidance)
        r, k = self.switch_point()
        timesteps = self.refine_timesteps(k)
        total = steps + len(timesteps)
        x = randn((len(cond), 1, *cond.mask.shape[2:]), generator, cond.mask.device)
        x = self.flow_model.flow(x, cond, start=1.0, end=self.config.t_switch, sampler=sampler, steps=steps,
                                 guidance=guidance, callback=_offset(callback, 0, total))
        scheduler = self.ddpm_model.scheduler("ancestral")
        scheduler.set_timesteps(timesteps=timesteps)
        return self.ddpm_model.denoise(x / r, cond, scheduler, guidance=guidance, generator=generator,
                                       callback=_offset(callback, steps, total))


def _offset(callback: ProgressCallback | None, done: int, total: int) -> ProgressCallback | None:
    """A callback reporting a part's progress ``i`` as ``done + i`` out of ``total``."""
    return None if callback is None else (lambda i, _: callback(done + i, total))
