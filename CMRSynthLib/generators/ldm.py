"""Latent diffusion (Rombach et al. 2022): a KL autoencoder, then flow matching in its latent space.

Two stages, switched by the trainer through :attr:`LDMGenerator.stage`:

1. ``"autoencoder"``: :meth:`~LDMGenerator.loss` is the autoencoder's per-sample loss
   (:mod:`CMRSynthLib.models.autoencoder`); only the autoencoder trains.
2. ``"diffusion"`` (after :meth:`~LDMGenerator.freeze_autoencoder`): the autoencoder is frozen and
   :meth:`~LDMGenerator.loss` is the flow-matching loss on the scaled latents ``z = μ(x) · latent_scale``.
3. ``"decoder"`` (optional, a fine-tune: ``cmrsynth train --stage decoder``): only the autoencoder's decoder
   trains, adversarially (:meth:`SliceAutoencoder.adversarial_loss
   <CMRSynthLib.models.autoencoder.SliceAutoencoder.adversarial_loss>`, through the trainer, which holds the
   discriminator); the encoder, the latent network and the coarse stage stay frozen, so the latents do not move.

The latent diffusion is flow matching, not DDPM: a few-step ODE sampler keeps sampling cheap, and the ODE
is invertible, so :meth:`restyle` works here too. Everything of :mod:`.flow` applies, in latent space: the mask
enters the network at latent resolution as the area fraction of each label in every latent cell (average
pooling of the one-hot by the autoencoder factor, in-plane only for 3D), concatenated to the latent.

``latent_scale`` = 1 / std of the latents of the images given to :meth:`freeze_autoencoder`, so the flow sees
unit-variance data (Rombach et al. §4.3.2). It and the stage are buffers: saved and restored with the weights.

3D (``spatial_dims=3``): the autoencoder works slice by slice (in-plane 4×, the slice axis kept), the latent
network is a 3D UNet over ``(c, D, H/4, W/4)``.

Coarse stage (2D, optional: ``LDMConfig.coarse``, made by ``cmrsynth cascade``): a pixel-space flow model on the
latent grid (pixels ``f`` times larger: 6.25 mm for 1.5625 mm images) draws the whole field's layout (body outline,
air, lungs, liver) from the mask, whose majority label per latent cell it is given; its image, upsampled
bilinearly and encoded, noised to ``coarse_start`` (x = (1 − t)·z + t·ε), is where the latent flow starts instead
of pure noise (SDEdit, Meng et al. 2022). Why: the latent network learns from tiles and, on a CPU budget, draws
tissue texture without the whole field's layout, while a flow on 16× fewer pixels learns that layout cheaply; on
the ACDC val.list patients the latent flow started at t = 0.85 from their own images, reduced to 6.25 mm, keeps
the air around the body (near-black share 0.22 against 0.22 real, 0.11 from noise). The coarse model is frozen
with the autoencoder: training trains the latent network only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

from CMRSynthLib.generators.base import Conditions, ProgressCallback
from CMRSynthLib.generators.common import HEART_COORDINATE_UNIT, mask_channels, randn, with_heart_coordinates
from CMRSynthLib.generators.flow import FlowConfig, FlowGenerator
from CMRSynthLib.models.autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, SliceAutoencoder
from CMRSynthLib.models.unet import UNET_PRESETS, ConditionalUNet, UNetConfig, token_counts

STAGES = ("autoencoder", "diffusion", "decoder")
# The latent grid is 16× smaller than the image, so the latent network can afford more width than the
# pixel-space "small" preset: 32×32 latents of a 128×128 slice cost about 0.9 GFLOPs per forward.
LATENT_UNET_PRESETS = {
    "tiny": UNET_PRESETS["tiny"],
    "small": UNetConfig(channels=(32, 64, 128), attention_levels=(False, False, True), num_res_blocks=1,
                        num_head_channels=32, norm_num_groups=16),
    "base": UNetConfig(channels=(64, 128, 256), attention_levels=(False, True, True), num_res_blocks=2,
                       num_head_channels=32, norm_num_groups=32),
}


# a latent forward costs a fifth of a pixel-space one, so the LDM affords more ODE steps; small: ab2 10 = 10
# forwards, half of Heun 10's, within 0.004 RMS of a Heun-50 reference on the LDM starter (Dice unchanged)
DEFAULT_SAMPLERS = {"tiny": "heun", "small": "ab2", "base": "heun"}
DEFAULT_STEPS = {"tiny": 6, "small": 10, "base": 25}


@dataclass(frozen=True)
class LDMConfig(FlowConfig):
    """A :class:`FlowConfig` for the latent flow (``network`` works on latents) plus the autoencoder."""

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    coarse: FlowConfig | None = None  # the coarse stage's flow model (module notes), or none
    coarse_start: float = 0.85  # the flow time its encoded image is noised to

    def __post_init__(self):
        super().__post_init__()
        f = self.autoencoder.factor
        if self.image_size[-1] % f or self.image_size[-2] % f:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the autoencoder factor {f} "
                             "in-plane")
        if not 0.0 < self.coarse_start <= 1.0:
            raise ValueError(f"coarse_start must be in (0, 1], got {self.coarse_start}")
        if self.coarse is not None:
            check_coarse(self.coarse, self)


def check_coarse(coarse: FlowConfig, refiner: LDMConfig) -> None:
    """A coarse stage must be a 2D flow (not a latent one) that knows exactly the refiner's vocabulary."""
    if type(coarse) is not FlowConfig:
        raise ValueError(f"the coarse stage must be a flow model's config, got {type(coarse).__name__}")
    if coarse.spatial_dims != 2 or refiner.spatial_dims != 2:
        raise ValueError("a coarse stage works on 2D slices: both models must be 2D")
    if coarse.vocabulary != refiner.vocabulary:
        raise ValueError(f"the coarse stage knows other vendors/phases/groups ({coarse.vocabulary}) than the "
                         f"latent model ({refiner.vocabulary})")

    @classmethod
    def preset(cls, name: str, *, spatial_dims: int, image_size, vocabulary, **overrides):
        defaults = {"network": LATENT_UNET_PRESETS.get(name), "autoencoder": AUTOENCODER_PRESETS.get(name),
                    "sampler": DEFAULT_SAMPLERS.get(name), "steps": DEFAULT_STEPS.get(name)}
        return super().preset(name, spatial_dims=spatial_dims, image_size=image_size, vocabulary=vocabulary,
                              **{**defaults, **overrides})


class LDMGenerator(FlowGenerator):
    """Latent flow matching. Images ``(B, 1, *spatial)`` in [-1, 1]; latents ``(B, c, *spatial[:-2], H/f, W/f)``."""

    family = "ldm"
    config_class = LDMConfig

    def __init__(self, config: LDMConfig):
        super().__init__(config)
        self.autoencoder = SliceAutoencoder(config.autoencoder)
        self.coarse = None if config.coarse is None else FlowGenerator(config.coarse)
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.register_buffer("stage_index", torch.tensor(0))
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_trainable())
        self._sync_trainable()

    def build_network(self, config: LDMConfig) -> nn.Module:
        return ConditionalUNet(spatial_dims=config.spatial_dims, channels=config.autoencoder.latent_channels,
                               mask_channels=mask_channels(config), token_counts=token_counts(config.vocabulary),
                               config=config.network)

    # ------------------------------------------------------------------------------------------------- stages
    @property
    def stage(self) -> str:
        """``"autoencoder"`` (training the autoencoder), ``"diffusion"`` (training the latent flow) or ``"decoder"``
        (fine-tuning the decoder alone)."""
        return STAGES[int(self.stage_index)]

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {value!r}")
        self.stage_index.fill_(STAGES.index(value))
        self._sync_trainable()

    def _sync_trainable(self) -> None:
        """Only the current stage's parameters require gradients (optimisers and Opacus see just those)."""
        self.autoencoder.requires_grad_(self.stage == "autoencoder")
        for parameter in self.autoencoder.decoder_parameters() if self.stage == "decoder" else ():
            parameter.requires_grad_(True)
        self.net.requires_grad_(self.stage == "diffusion")
        if self.coarse is not None:
            self.coarse.requires_grad_(False)

    @torch.no_grad()
    def freeze_autoencoder(self, images: torch.Tensor | None = None) -> None:
        """End stage 1: freeze the autoencoder, switch to the diffusion stage and, given a representative
        batch of images ``(B, 1, *spatial)``, set ``latent_scale`` to 1 / std of their latents."""
        self.stage = "diffusion"
        if images is not None:
            self.latent_scale.fill_(1.0 / self.autoencoder.encode(images).std().clamp_min(1e-6).item())

    # ----------------------------------------------------------------------------- the latent space (hooks)
    def encode(self, images: torch.Tensor, cond: Conditions) -> torch.Tensor:
        with torch.no_grad():
            return self.autoencoder.encode(images) * self.latent_scale

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(x / self.latent_scale).clamp(-1, 1)

    def model_mask(self, cond: Conditions) -> torch.Tensor:
        """The one-hot mask pooled to the latent grid: the fraction of each label in every latent cell (and the
        heart coordinates, in the same physical unit as at image resolution)."""
        f = self.config.autoencoder.factor
        kernel = (f, f) if self.config.spatial_dims == 2 else (1, f, f)
        pool = F.avg_pool2d if self.config.spatial_dims == 2 else F.avg_pool3d
        return with_heart_coordinates(pool(cond.mask, kernel), self.config, unit=HEART_COORDINATE_UNIT / f)

    def model_shape(self, batch: int, spatial) -> tuple[int, ...]:
        return (batch, self.config.autoencoder.latent_channels, *self.autoencoder.latent_spatial(spatial))

    # ---------------------------------------------------------------------------------------------- training
    def autoencoder_loss(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage-1 per-sample loss ``(B,)``: L1 reconstruction + KL (see :mod:`CMRSynthLib.models.autoencoder`)."""
        return self.autoencoder.loss(images, generator=generator)

    def loss(self, images: torch.Tensor, cond: Conditions, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """The current stage's per-sample loss ``(B,)``: the autoencoder's, or the latent flow's (the decoder
        stage's needs the trainer's discriminator: :meth:`SliceAutoencoder.adversarial_loss`)."""
        if self.stage == "decoder":
            raise RuntimeError("the decoder stage's loss is adversarial: train it with cmrsynth train --stage decoder")
        if self.stage == "autoencoder":
            return self.autoencoder_loss(images, generator=generator)
        return super().loss(images, cond, generator=generator)

    # ------------------------------------------------------------------------------------ the coarse stage
    def with_coarse(self, coarse: FlowGenerator, start: float) -> "LDMGenerator":
        """A copy of this model with ``coarse`` (a trained 2D flow model) as its coarse stage, from ``start``."""
        cascade = LDMGenerator(replace(self.config, coarse=coarse.config, coarse_start=start))
        cascade.load_state_dict({**self.state_dict(), **{f"coarse.{k}": v for k, v in coarse.state_dict().items()}})
        cascade.stage = self.stage
        return cascade

    def coarse_conditions(self, cond: Conditions) -> Conditions:
        """The conditions on the latent grid: each cell's majority label, one-hot (as a mask resampled to the
        coarse pixel size, which is how the coarse model was trained), and the same tokens."""
        f = self.config.autoencoder.factor
        labels = F.avg_pool2d(cond.mask, f).argmax(1)
        mask = F.one_hot(labels, cond.mask.shape[1]).movedim(-1, 1).to(cond.mask.dtype)
        return Conditions(mask, cond.vendor, cond.phase, cond.group)

    def coarse_start_state(self, cond: Conditions, generator: torch.Generator | None) -> torch.Tensor:
        """The latent flow's state at ``coarse_start``: the coarse image, upsampled, encoded and noised."""
        coarse = self.coarse.sample(self.coarse_conditions(cond), generator=generator)
        image = F.interpolate(coarse, scale_factor=self.config.autoencoder.factor, mode="bilinear",
                              align_corners=False)
        z = self.encode(image, cond)
        t = self.config.coarse_start
        return (1 - t) * z + t * randn(z.shape, generator, z.device, z.dtype)

    def sample(self, cond: Conditions, *, sampler: str | None = None, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None,
               callback: ProgressCallback | None = None) -> torch.Tensor:
        if self.coarse is None:
            return super().sample(cond, sampler=sampler, steps=steps, guidance=guidance, generator=generator,
                                  callback=callback)
        x = self.coarse_start_state(cond, generator)
        return self.decode(self.flow(x, cond, start=self.config.coarse_start, end=0.0, sampler=sampler,
                                     steps=steps, guidance=guidance, callback=callback))
