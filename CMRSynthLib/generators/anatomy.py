"""Stage 1 of the two-stage pipeline: new anatomies (label maps) from pathology group and phase.

A flow-matching model (:mod:`.flow`, same convention and samplers) on one-hot label maps scaled to [-1, 1]:
the flow's data is ``x_0 = 2·onehot − 1`` ``(B, 4, *spatial)``; a sample is turned back into labels by the
argmax over the 4 channels. It keeps the :class:`~.base.Generator` interface so the trainer, checkpoints and
the contract test treat it like any family, with three differences, all by design:

* it learns p(mask | phase, group): its training data are the masks of the batch (``cond.mask``); the images
  of the batch are not used;
* its network has no mask input (the mask is what it makes) and no vendor embedding (anatomy does not depend
  on the scanner): the vendor token is always treated as null;
* :meth:`AnatomyGenerator.sample` returns the one-hot ``(B, 4, *spatial)`` float map of the labels, ready to
  be the ``mask`` of the stage-2 :class:`~.base.Conditions`; the ``cond.mask`` it is given only sets the batch
  size and the spatial size (a placeholder: :meth:`AnatomyGenerator.placeholder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from CMRSynthLib.data.conventions import NUM_CLASSES
from CMRSynthLib.generators.base import NULL, Conditions, ProgressCallback
from CMRSynthLib.generators.common import tokens_of
from CMRSynthLib.generators.flow import FlowConfig, FlowGenerator
from CMRSynthLib.models.unet import ConditionalUNet


@dataclass(frozen=True)
class AnatomyConfig(FlowConfig):
    """The same fields as :class:`FlowConfig`; the vocabulary's vendors are not used, nor is ``p_mask_uncond``
    nor ``heart_coordinates`` (the model draws masks, it is not given one)."""

    def __post_init__(self):
        super().__post_init__()
        if self.p_mask_uncond:
            raise ValueError("p_mask_uncond must be 0 for an anatomy model: it is given no mask to drop")
        if self.heart_coordinates:
            raise ValueError("heart_coordinates must be off for an anatomy model: it is given no mask to locate "
                             "the heart in")


class AnatomyGenerator(FlowGenerator):
    """Label maps from (phase, group): one-hot ``(B, 4, *spatial)`` in, one-hot ``(B, 4, *spatial)`` out."""

    family = "anatomy"
    config_class = AnatomyConfig

    def build_network(self, config: AnatomyConfig) -> nn.Module:
        counts = (1, len(config.vocabulary.phases) + 1, len(config.vocabulary.groups) + 1)  # vendor: null only
        return ConditionalUNet(spatial_dims=config.spatial_dims, channels=NUM_CLASSES, mask_channels=0,
                               token_counts=counts, config=config.network)

    def encode(self, images: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """The flow's data: the batch's one-hot masks scaled to [-1, 1] (the images are not used)."""
        return cond.mask * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Flow samples → one-hot float maps ``(B, 4, *spatial)`` of the argmax label."""
        return F.one_hot(x.argmax(1), NUM_CLASSES).movedim(-1, 1).to(x.dtype)

    def model_mask(self, cond: Conditions) -> None:
        return None

    def model_tokens(self, cond: Conditions) -> torch.Tensor:
        tokens = tokens_of(cond).clone()
        tokens[:, 0] = NULL
        return tokens

    def model_shape(self, batch: int, spatial) -> tuple[int, ...]:
        return (batch, NUM_CLASSES, *spatial)

    def placeholder(self, count: int, *, phase: int = NULL, group: int = NULL, spatial=None,
                    device="cpu") -> Conditions:
        """Conditions for ``count`` new anatomies of the given phase and group tokens (0 = any), with an
        all-background mask of ``spatial`` size (default: the trained ``image_size``)."""
        spatial = tuple(self.config.image_size if spatial is None else spatial)
        mask = torch.zeros(count, NUM_CLASSES, *spatial, device=device)
        mask[:, 0] = 1
        tokens = [torch.full((count,), value, dtype=torch.long, device=device) for value in (NULL, phase, group)]
        return Conditions(mask, *tokens)

    def sample_labels(self, count: int, *, phase: int = NULL, group: int = NULL, spatial=None,
                      sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                      generator: torch.Generator | None = None,
                      callback: ProgressCallback | None = None) -> torch.Tensor:
        """``count`` new label maps ``(count, *spatial)`` uint8 in the canonical labels 0–3."""
        device = next(self.parameters()).device
        cond = self.placeholder(count, phase=phase, group=group, spatial=spatial, device=device)
        onehot = self.sample(cond, sampler=sampler, steps=steps, guidance=guidance, generator=generator,
                             callback=callback)
        return onehot.argmax(1).to(torch.uint8)
