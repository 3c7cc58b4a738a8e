"""The KL autoencoder of the latent diffusion model: MONAI's AutoencoderKL, applied slice by slice.

The autoencoder is always 2D. A 3D stack ``(B, 1, D, H, W)`` is encoded slice by slice into a latent
``(B, c, D, H/f, W/f)``: the in-plane axes are downsampled ``f`` times and the slice axis is kept, because
cine short-axis stacks have few thick slices (about 10 of 8–10 mm) that an isotropic 4× downsampling would
reduce to two or three. The latent diffusion network on top is 3D, so the slices are still generated jointly.

Its loss (Kingma & Welling 2014; Rombach et al. 2022 without the perceptual and adversarial terms) is
``L1(x, x̂) + kl_weight · KL(N(μ, σ²) ‖ N(0, I))`` per sample. The perceptual term needs pretrained network
weights, which cannot be downloaded here, so it is left out.

L1 alone blurs: on the ACDC val.list patients the small autoencoder's reconstructions of real slices are told from
the real ones at AUC 1.00 and lie at FD-seg 100 (real-vs-real 28) — as far as the latent model's samples (121), so
the texture gap is the decoder's. :meth:`SliceAutoencoder.adversarial_loss` therefore fine-tunes the decoder alone
with the adversarial term put back (a PatchGAN discriminator, least squares; Isola et al. 2017, Rombach et al.
2022): the encoder stays frozen, so the latents, and every network trained on them, stay valid (the decoder-only
fine-tune of Stable Diffusion's released ft-MSE/ft-EMA autoencoders does the same). On the same patients the
acdc-ldm starter's sharpened decoder reconstructs at FD-seg 36 and AUC 0.59, and its samples lie at FD-seg 53
(``benchmarks.autoencoder_ceiling``, ``cmrsynth audit``; FD-seg in the feature space of the audit's earlier,
two-down-sampling segmenter, real vs real 28).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.func import functional_call

from CMRSynthLib.models.config import FrozenConfig


@dataclass(frozen=True)
class AutoencoderConfig(FrozenConfig):
    """Hyper-parameters of :class:`SliceAutoencoder`; ``len(channels) − 1`` halvings give the factor ``f``.

    ``train_patch`` > 0 trains on one random square patch of that many pixels per image instead of the whole
    image: the autoencoder is convolutional and local, and full-field-of-view slices at 1.5 mm cost it 4–6×
    more per step than such a patch (0: whole images).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    kl_weight: float = 1e-6
    train_patch: int = 0

    def __post_init__(self):
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be a multiple of norm_num_groups "
                             f"{self.norm_num_groups}")
        if self.train_patch < 0 or self.train_patch % self.factor:
            raise ValueError(f"train_patch must be 0 or a positive multiple of the factor {self.factor}, "
                             f"got {self.train_patch}")
        if self.latent_channels < 1 or self.kl_weight < 0:
            raise ValueError(f"latent_channels must be ≥ 1 and kl_weight ≥ 0, got {self.latent_channels}, "
                             f"{self.kl_weight}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


AUTOENCODER_PRESETS = {
    "tiny": AutoencoderConfig(channels=(16, 32, 32), norm_num_groups=8),
    "small": AutoencoderConfig(channels=(32, 64, 64), norm_num_groups=16),
    "base": AutoencoderConfig(channels=(64, 128, 128), num_res_blocks=2, norm_num_groups=32),
}


class SliceAutoencoder(nn.Module):
    """Images ``(B, 1, *spatial)`` (2D or 3D) ↔ latents ``(B, c, *spatial[:-2], H/f, W/f)``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        levels = len(config.channels)
        self.kl = AutoencoderKL(
            spatial_dims=2, in_channels=1, out_channels=1, channels=config.channels,
            latent_channels=config.latent_channels, num_res_blocks=config.num_res_blocks,
            attention_levels=(False,) * levels, norm_num_groups=config.norm_num_groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)

    def latent_spatial(self, spatial) -> tuple[int, ...]:
        """Latent size for an image of ``spatial`` size; the in-plane sizes must be multiples of ``f``."""
        f = self.config.factor
        if spatial[-1] % f or spatial[-2] % f:
            raise ValueError(f"image size {tuple(spatial)} must be a multiple of {f} in-plane for this autoencoder")
        return (*spatial[:-2], spatial[-2] // f, spatial[-1] // f)

    def _per_slice(self, fn, x: torch.Tensor) -> torch.Tensor:
        """Apply a 2D ``fn`` to every slice of ``x`` ``(B, C, [D,] H, W)``."""
        if x.ndim == 4:
            return fn(x)
        b, _, d = x.shape[:3]
        out = fn(x.movedim(2, 1).flatten(0, 1))
        return out.unflatten(0, (b, d)).movedim(1, 2)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean μ ``(B, c, *latent_spatial)``: the deterministic latent of the images."""
        self.latent_spatial(images.shape[2:])
        return self._per_slice(lambda x: self.kl.encode(x)[0], images)

    def _patch(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One random ``train_patch`` square per image (whole images when 0 or larger than the image)."""
        size = self.config.train_patch
        height, width = images.shape[-2:]
        if not size or (size >= height and size >= width):
            return images
        size_y, size_x = min(size, height), min(size, width)
        corners = torch.rand((len(images), 2), generator=generator, device=images.device)
        ys = (corners[:, 0] * (height - size_y + 1)).long().tolist()
        xs = (corners[:, 1] * (width - size_x + 1)).long().tolist()
        return torch.stack([image[..., y:y + size_y, x:x + size_x] for image, y, x in zip(images, ys, xs)])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, c, *latent_spatial)`` → images ``(B, 1, *spatial)``."""
        return self._per_slice(self.kl.decode, latents)

    def _posterior_draw(self, images: torch.Tensor, generator: torch.Generator | None):
        """The training input (one ``train_patch`` square per image when configured), the encoder's posterior
        ``μ, σ`` and a reparameterised draw ``z = μ + σ·ε`` from ``generator``."""
        images = self._patch(images, generator)
        self.latent_spatial(images.shape[2:])
        mu, sigma = self._per_slice(lambda x: torch.cat(self.kl.encode(x), dim=1), images).chunk(2, dim=1)
        return images, mu, sigma, mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device,
                                                            dtype=mu.dtype)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """What the decoder stage trains: the decoder and the convolution from the latent into it."""
        return [*self.kl.post_quant_conv.parameters(), *self.kl.decoder.parameters()]

    def adversarial_loss(self, images: torch.Tensor, discriminator: nn.Module, weight: float, *,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """The decoder stage's per-sample loss ``(B,)`` (on one ``train_patch`` square per image): the decoder's
        ``L1 + weight · adversarial`` plus the discriminator's own least-squares loss, so that one backward pass
        trains both players. The decoder's term reaches the discriminator only through detached weights, and the
        discriminator's term the decoder only through detached reconstructions: each learns only from its own
        objective. The latent is a draw of the frozen encoder's posterior, as in :meth:`loss`.
        """
        with torch.no_grad():
            images, _, _, z = self._posterior_draw(images, generator)
        fake = self.decode(z)
        frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
        judged = functional_call(discriminator, frozen, (fake,))[-1]
        real_logits, fake_logits = discriminator(images)[-1], discriminator(fake.detach())[-1]
        fooled = _per_sample(_ADVERSARIAL(judged, target_is_real=True, for_discriminator=False))
        told = 0.5 * (_per_sample(_ADVERSARIAL(real_logits, target_is_real=True, for_discriminator=True))
                      + _per_sample(_ADVERSARIAL(fake_logits, target_is_real=False, for_discriminator=True)))
        return (fake - images).abs().flatten(1).mean(1) + weight * fooled + told

    def loss(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample ``L1 + kl_weight · KL`` ``(B,)`` with a reparameterised latent draw from ``generator``
        (on one random ``train_patch`` square of each image when configured)."""
        images, mu, sigma, z = self._posterior_draw(images, generator)
        l1 = (self.decode(z) - images).abs().flatten(1).mean(1)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * torch.log(sigma) - 1).flatten(1).sum(1)
        return l1 + self.config.kl_weight * kl


_ADVERSARIAL = PatchAdversarialLoss(criterion="least_squares", reduction="none")


def _per_sample(loss: list[torch.Tensor]) -> torch.Tensor:
    return loss[0].flatten(1).mean(1)  # reduction "none" gives one map per discriminator scale


def patch_discriminator() -> PatchDiscriminator:
    """The decoder stage's discriminator: MONAI's PatchGAN (3 strided layers, 32 channels: 70-pixel receptive
    field, about 110 mm at 1.5625 mm). Instance norm, not batch norm: each image's loss depends on that image only,
    as the trainer's per-sample losses (and running statistics that the decoder's pass would also move) require."""
    return PatchDiscriminator(spatial_dims=2, num_layers_d=3, channels=32, in_channels=1, out_channels=1,
                              norm="INSTANCE")
