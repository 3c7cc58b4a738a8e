"""Small pieces every generator family shares: config checks, seeded noise, the per-sample loss."""

from __future__ import annotations

import torch

from CMRSynthLib.models.unet import UNET_PRESETS

PRESETS = tuple(UNET_PRESETS)  # "tiny" (tests), "small" (CPU), "base" (GPU)


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


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not one of {PRESETS}")


def image_size_tuple(image_size, spatial_dims: int) -> tuple[int, ...]:
    """``image_size`` as a tuple of ``spatial_dims`` ints (an int means the same size on every axis)."""
    if isinstance(image_size, int):
        return (image_size,) * spatial_dims
    return tuple(int(s) for s in image_size)


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (same seed → same noise)."""
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def mse_per_sample(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample: ``(B, ...)`` → ``(B,)`` (DP-SGD clips per sample)."""
    return (prediction - target).pow(2).flatten(1).mean(1)
