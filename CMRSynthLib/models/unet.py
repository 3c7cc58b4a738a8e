"""The conditional denoising network every family uses: MONAI's DiffusionModelUNet plus our conditioning.

Conditioning (DESIGN §2.5):

* the mask — a one-hot ``(B, 4, *spatial)`` map — is concatenated to the network input channels;
* vendor, phase and group tokens ``(B, 3)`` each have an embedding (index 0 = the null token); the three
  vectors are summed and added to the timestep embedding. MONAI's UNet adds ``class_embedding(class_labels)``
  to the time embedding for ONE label; we swap that module for :class:`TokenEmbedding`, which takes the
  ``(B, 3)`` tokens and returns the sum — no copy of MONAI's forward needed.

Classifier-free guidance (dropping tokens in training, combining outputs in sampling) lives with the
generators, in :mod:`CMRSynthLib.generators.common`; this module knows only networks.

The network only uses GroupNorm, Linear, Conv and Embedding layers, so Opacus can compute per-sample gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn
from torch.nn import functional as F

from CMRSynthLib.models.config import FrozenConfig


@dataclass(frozen=True)
class UNetConfig(FrozenConfig):
    """Hyper-parameters of :class:`ConditionalUNet` (MONAI DiffusionModelUNet's names).

    ``channels[i]`` are the feature channels at level ``i`` (each level halves the resolution);
    ``attention_levels[i]`` puts self-attention at level ``i``.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16

    def __post_init__(self):
        if len(self.channels) != len(self.attention_levels):
            raise ValueError(f"channels {self.channels} and attention_levels {self.attention_levels} "
                             "must have the same length")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be a multiple of norm_num_groups "
                             f"{self.norm_num_groups}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be ≥ 1, got {self.num_res_blocks}")

    @property
    def factor(self) -> int:
        """Each spatial size must be a multiple of this (the UNet halves it ``len(channels) - 1`` times)."""
        return 2 ** (len(self.channels) - 1)


UNET_PRESETS = {
    "tiny": UNetConfig(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8),
    # CPU speed preset: 16 channels at full resolution keep a 128×128 forward near 4 GFLOPs (about 30 forwards
    # per second on 2 cores); attention only at the lowest level (16×16 for a 128×128 input).
    "small": UNetConfig(channels=(16, 32, 64, 128), attention_levels=(False, False, False, True),
                        num_res_blocks=1, num_head_channels=32, norm_num_groups=8),
    "base": UNetConfig(channels=(64, 128, 256, 256), attention_levels=(False, False, True, True),
                       num_res_blocks=2, num_head_channels=32, norm_num_groups=32),
}


class TokenEmbedding(nn.Module):
    """Sum of a vendor, a phase and a group embedding: tokens ``(B, 3)`` → ``(B, dim)``."""

    def __init__(self, counts: tuple[int, int, int], dim: int):
        super().__init__()
        self.vendor, self.phase, self.group = (nn.Embedding(n, dim) for n in counts)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vendor(tokens[:, 0]) + self.phase(tokens[:, 1]) + self.group(tokens[:, 2])


class ConditionalUNet(nn.Module):
    """``(x (B, C, *spatial), timesteps (B,), mask (B, 4, *spatial) | None, tokens (B, 3))`` → ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: image channels C (1 for images, the latent channels for an LDM, 4 for a label map).
        mask_channels: channels of the concatenated mask (4), or 0 for a network without mask input.
        token_counts: embedding sizes (null token included) for vendor, phase and group.
        config: the UNet's hyper-parameters.
    """

    def __init__(self, *, spatial_dims: int, channels: int, mask_channels: int,
                 token_counts: tuple[int, int, int], config: UNetConfig):
        super().__init__()
        self.mask_channels = mask_channels
        self.factor = config.factor
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims, in_channels=channels + mask_channels, out_channels=channels,
            channels=config.channels, attention_levels=config.attention_levels,
            num_res_blocks=config.num_res_blocks, num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups, num_class_embeds=1)
        self.unet.class_embedding = TokenEmbedding(token_counts, config.channels[0] * 4)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor | None,
                tokens: torch.Tensor) -> torch.Tensor:
        if (mask is None) != (self.mask_channels == 0):
            raise ValueError("give a mask exactly when the network was built with mask channels")
        inputs = x if mask is None else torch.cat([x, mask.to(x.dtype)], dim=1)
        # The UNet halves every axis len(channels) - 1 times: zero-pad each axis up to a multiple of the factor
        # (e.g. a 12-slice stack to 16) and crop the output back, so any size works in training and sampling.
        spatial = x.shape[2:]
        padding = [p for s in reversed(spatial) for p in (0, -s % self.factor)]
        if not any(padding):  # already a multiple (e.g. 128×128 slices): no padded copy, no crop
            return self.unet(inputs, timesteps, class_labels=tokens)
        output = self.unet(F.pad(inputs, padding), timesteps, class_labels=tokens)
        return output[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def token_counts(vocabulary) -> tuple[int, int, int]:
    """Embedding sizes (with the null token) for a :class:`~CMRSynthLib.generators.base.Vocabulary`."""
    return len(vocabulary.vendors) + 1, len(vocabulary.phases) + 1, len(vocabulary.groups) + 1
