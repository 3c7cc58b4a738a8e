"""bf16 sampling (``synthesize(precision="bf16")``): the same seed gives the fp32 image within the stated tolerance,
the bf16 path is really taken, the header says so, and an unknown precision is refused."""

import numpy as np
import pytest
import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.synthesis import BF16_TOLERANCE, intensity_range, synthesize
from CMRSynthLib.training.checkpoint import load_checkpoint
from training_fixtures import oblique_mask


@pytest.fixture(scope="module")
def starter():
    torch.set_num_threads(1)
    return load_checkpoint("phantom-tiny-flow")  # the shipped, trained tiny flow (32×32)


def unit(volume, card, vendor):
    """Intensities back to the model's [-1, 1]."""
    lo, hi = intensity_range(card, vendor)
    return (volume.array.astype(np.float64) - lo) / (hi - lo) * 2 - 1


@pytest.mark.parametrize("sampler, steps", [("heun", 4), ("ab2", 6)])
def test_bf16_image_matches_fp32_within_tolerance(starter, sampler, steps):
    generator, card = starter
    mask, vendor = oblique_mask(), card["vocabulary"]["vendors"][0]
    (full,) = synthesize(generator, card, mask, vendor=vendor, seed=3, sampler=sampler, steps=steps)
    (half,) = synthesize(generator, card, mask, vendor=vendor, seed=3, sampler=sampler, steps=steps,
                         precision="bf16")
    difference = np.abs(unit(half, card, vendor) - unit(full, card, vendor))
    assert difference.max() <= BF16_TOLERANCE["max"] and difference.mean() <= BF16_TOLERANCE["mean"]
    assert difference.max() > 0  # bf16 really ran (a silent fp32 fallback would give the same image)
    assert half.metadata["cmrsynth_precision"] == "bf16" and full.metadata["cmrsynth_precision"] == "fp32"
    assert half.array.dtype == np.float32


def test_unknown_precision_is_refused_naming_the_flag(starter):
    generator, card = starter
    with pytest.raises(InputError, match=r"--precision 'fp16' is not one of fp32, bf16"):
        synthesize(generator, card, oblique_mask(), vendor=None, precision="fp16")
