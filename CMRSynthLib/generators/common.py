"""Small pieces every generator family shares: config checks, presets, seeded noise, the per-sample loss,
and classifier-free guidance (Ho & Salimans 2022): :func:`drop_tokens` nulls each token with probability
``p_uncond`` in training; :func:`drop_conditions` nulls everything, the mask too (an all-zero one-hot, which no
real mask is: every pixel has a label, background included), with probability ``p_mask_uncond``;
:func:`guided_output` combines the conditional and unconditional outputs as ``out_uncond + w·(out_cond − out_uncond)``,
the unconditional one without the mask as well for a model that learnt to go without it. Guidance on the mask is
what semantic-map diffusion uses to make images follow their map (Wang et al. 2022, "Semantic image synthesis via
diffusion models"); token guidance alone leaves the mask's pull as trained."""

from __future__ import annotations

import torch
from torch import nn

from CMRSynthLib.data.conventions import NUM_CLASSES
from CMRSynthLib.generators.base import NULL, Conditions
from CMRSynthLib.models.unet import UNET_PRESETS

PRESETS = tuple(UNET_PRESETS)  # "tiny" (tests), "small" (CPU), "base" (GPU)
HEART_COORDINATE_UNIT = 64  # image pixels per unit of the heart coordinates: 100 mm at ACDC's 1.5625 mm


def check_config(config, *, samplers: tuple[str, ...], factor: int = 1) -> None:
    """Validate the fields every family config has; raise ValueError naming the field and the allowed values."""
    if config.spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {config.spatial_dims}")
    if len(config.image_size) != config.spatial_dims or any(int(s) <= 0 for s in config.image_size):
        raise ValueError(f"image_size must hold {config.spatial_dims} positive sizes, got {config.image_size}")
    if any(s % factor for s in config.image_size[-2:]):
        raise ValueError(f"image_size {config.image_size} must be a multiple of {factor} in-plane")
    if not 0.0 <= config.p_uncond < 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {config.p_uncond}")
    if config.sampler not in samplers:
        raise ValueError(f"sampler {config.sampler!r} is not one of {samplers}")
    if config.steps <= 0:
        raise ValueError(f"steps must be positive, got {config.steps}")


def preset_fields(name: str, *, spatial_dims: int, image_size, vocabulary) -> dict:
    """The fields every family's preset ``name`` shares: the data description and the preset's UNet.
    ``image_size`` may be one int (the same size on every axis) or ``spatial_dims`` ints."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not one of {PRESETS}")
    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    return dict(spatial_dims=spatial_dims, image_size=size, vocabulary=vocabulary, network=UNET_PRESETS[name])


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (same seed → same noise)."""
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def mse_per_sample(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample: ``(B, ...)`` → ``(B,)`` (DP-SGD clips per sample)."""
    return (prediction - target).pow(2).flatten(1).mean(1)


def tokens_of(cond: Conditions) -> torch.Tensor:
    """The ``(B, 3)`` long tokens (vendor, phase, group) of a batch of conditions."""
    return torch.stack([cond.vendor, cond.phase, cond.group], dim=1)


def drop_tokens(tokens: torch.Tensor, p_uncond: float, generator: torch.Generator | None) -> torch.Tensor:
    """Classifier-free guidance dropout: each of the ``(B, 3)`` tokens becomes null with probability ``p_uncond``."""
    if p_uncond <= 0:
        return tokens
    keep = torch.rand(tokens.shape, generator=generator, device=tokens.device) >= p_uncond
    return torch.where(keep, tokens, torch.full_like(tokens, NULL))


def drop_conditions(mask: torch.Tensor, tokens: torch.Tensor, p_mask_uncond: float,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconditional training samples: each sample of the batch loses its mask (all zeros) and its ``(B, 3)``
    tokens (null) with probability ``p_mask_uncond``. No random draw at 0, so such models train as before."""
    if p_mask_uncond <= 0:
        return mask, tokens
    drop = torch.rand(len(mask), generator=generator, device=mask.device) < p_mask_uncond
    return (torch.where(drop.view(-1, *[1] * (mask.ndim - 1)), torch.zeros_like(mask), mask),
            torch.where(drop[:, None], torch.full_like(tokens, NULL), tokens))


def guided_output(net: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor | None,
                  tokens: torch.Tensor, guidance: float, *, guide_mask: bool = False) -> torch.Tensor:
    """The network output with classifier-free guidance ``w``: one forward if ``w == 1``, else a batched
    conditional + unconditional forward combined as ``u + w·(c − u)``; the unconditional forward has no mask
    either with ``guide_mask`` (a model trained with :func:`drop_conditions`). Shapes as :class:`ConditionalUNet`."""
    if guidance == 1.0:
        return net(x, timesteps, mask, tokens)
    both = net(torch.cat([x, x]), torch.cat([timesteps, timesteps]),
               None if mask is None else torch.cat([mask, torch.zeros_like(mask) if guide_mask else mask]),
               torch.cat([tokens, torch.full_like(tokens, NULL)]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def heart_coordinates(mask: torch.Tensor, unit: float) -> torch.Tensor:
    """Two channels ``(B, 2, *spatial)``: each pixel's column and row offset from the heart's centroid in its
    slice (the LV, MYO and RV area-weighted, ``mask`` being ``(B, 4, *spatial)`` one-hot or its pooled fractions),
    in units of ``unit`` pixels. A slice without heart gets zeros, as does the all-zero mask of an
    unconditional sample. Why: a whole-field model trains on tiles placed anywhere in the image, so nothing but
    the heart tells it where the chest wall, lungs, liver and the air around the body lie."""
    heart = mask[:, 1:].sum(1)  # (B, *rest, H, W)
    rows = torch.arange(heart.shape[-2], device=mask.device, dtype=mask.dtype).view(-1, 1)
    cols = torch.arange(heart.shape[-1], device=mask.device, dtype=mask.dtype).view(1, -1)
    area = heart.sum((-2, -1), keepdim=True)
    weight = heart / area.clamp_min(1e-6)
    centre_row = (weight * rows).sum((-2, -1), keepdim=True)
    centre_col = (weight * cols).sum((-2, -1), keepdim=True)
    present = (area > 0).to(mask.dtype)
    offsets = [((cols - centre_col) * present).expand_as(heart), ((rows - centre_row) * present).expand_as(heart)]
    return torch.stack(offsets, dim=1) / unit


def mask_channels(config) -> int:
    """The channels of a mask-conditioned network's mask input: the one-hot, plus the heart coordinates."""
    return NUM_CLASSES + 2 * config.heart_coordinates


def with_heart_coordinates(mask: torch.Tensor, config, *, unit: float) -> torch.Tensor:
    """``mask`` with :func:`heart_coordinates` appended when ``config.heart_coordinates``, else ``mask``."""
    if not config.heart_coordinates:
        return mask
    return torch.cat([mask, heart_coordinates(mask, unit)], dim=1)
