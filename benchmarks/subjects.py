"""What the benchmarks run: CMRSynth's generators (random weights or starter models), their conditions, and
the reconstructed peer network.

Speed does not depend on the weights or on the mask's content, so the speed tables use freshly built
generators (seeded) and a synthetic short-axis mask (an LV disc in a myocardial ring with an RV crescent).
Quality needs trained weights: :func:`starter` loads a bundled starter model when one is present.
"""

from __future__ import annotations

from pathlib import Path

import torch

from CMRSynthLib.generators.base import Conditions, Vocabulary

VOCABULARY = Vocabulary(vendors=("Siemens", "Philips", "GE", "Canon"))
FAMILIES = ("ddpm", "flow", "ldm", "hybrid")

# The SynCMRI DDPM network, rebuilt with diffusers (see /work/shared/ANCHORS.md): diffusers' standard
# 6-level UNet2DModel (attention at 16×16), 1 image + 4 one-hot mask channels in. 113.7 M parameters and
# 124 GFLOPs per forward at 128×128 — both match the peer's published configuration.
PEER_CONFIG = dict(in_channels=5, out_channels=1, layers_per_block=2,
                   block_out_channels=(128, 128, 256, 256, 512, 512),
                   down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)


SMOKE_FAMILIES = ("ddpm", "flow")  # the baseline and the default family: enough to check the suite runs


def families(settings) -> tuple[str, ...]:
    """The generator families a run of ``settings`` covers (all four, or two in smoke mode)."""
    from CMRSynthLib.generators import GENERATORS

    return tuple(f for f in (SMOKE_FAMILIES if settings.smoke else FAMILIES) if f in GENERATORS)


def build(family: str, *, preset: str, size: int, spatial_dims: int = 2, depth: int | None = None,
          seed: int = 0, device: str = "cpu"):
    """A random-weight generator of ``family`` at ``preset`` for ``size``² slices (``depth``×``size``² volumes)."""
    from CMRSynthLib.generators import build_generator, preset_config

    image_size = (size, size) if spatial_dims == 2 else (depth or size, size, size)
    config = preset_config(family, preset, vocabulary=VOCABULARY, image_size=image_size, spatial_dims=spatial_dims)
    torch.manual_seed(seed)
    return build_generator(family, config).to(device).eval()


def starter(name: str, *, device: str = "cpu"):
    """``(generator, card)`` of the bundled starter model ``name`` (``phantom-flow``, ``acdc-ldm``, ...), or None
    if it is not shipped yet."""
    try:
        from CMRSynthLib.training.checkpoint import load_checkpoint, models_dir
    except ImportError:
        return None
    if not (Path(models_dir()) / name / "card.json").is_file():
        return None
    generator, card = load_checkpoint(name, device=device)
    return generator.eval(), card


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mask_labels(size: int, *, slices: int = 1, spatial_dims: int = 2) -> torch.Tensor:
    """A short-axis label map ``(slices, size, size)`` long (canonical labels), the heart shrinking to the apex."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = torch.zeros(slices, size, size, dtype=torch.long)
    for k in range(slices):
        scale = 1.0 - 0.5 * k / max(1, slices - 1)
        r = torch.hypot(x - 0.1, y)
        rv = torch.hypot(x + 0.25 * scale, y) < 0.42 * scale
        out[k][rv] = 3
        out[k][r < 0.32 * scale] = 2
        out[k][r < 0.2 * scale] = 1
    return out


def conditions(batch: int, size: int, *, spatial_dims: int = 2, depth: int = 12, device: str = "cpu") -> Conditions:
    """Conditions for ``batch`` slices (2D, the slices of one stack cycled) or ``batch`` volumes (3D)."""
    if spatial_dims == 2:
        labels = mask_labels(size, slices=max(batch, 1))[:batch]
        mask = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    else:
        labels = mask_labels(size, slices=depth)
        mask = torch.nn.functional.one_hot(labels, 4).permute(3, 0, 1, 2).float()[None].repeat(batch, 1, 1, 1, 1)
    vendor = torch.arange(batch) % len(VOCABULARY.vendors) + 1
    ones = torch.ones(batch, dtype=torch.long)
    return Conditions(mask.to(device), vendor.to(device), ones.to(device), ones.to(device))


def peer_network(size: int, *, device: str = "cpu"):
    """The reconstructed SynCMRI DDPM network (diffusers ``UNet2DModel``), random weights, eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, **PEER_CONFIG).to(device).eval()


def evaluations(generator, sampler: str, steps: int) -> int | None:
    """Network evaluations of a sampling run, if the generator states it (``evaluations(sampler, steps)``)."""
    method = getattr(generator, "evaluations", None)
    return int(method(sampler, steps)) if callable(method) else None


def log_steps(low: int, high: int, count: int) -> list[int]:
    """``count`` step counts spaced evenly on a log scale between ``low`` and ``high``."""
    if count <= 1:
        return [low]
    return sorted({round(low * (high / low) ** (i / (count - 1))) for i in range(count)})
