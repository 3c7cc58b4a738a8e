"""synthesize(): mask geometry kept exactly, determinism, synthetic marker, bad masks refused."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from CMRSynthLib.data.volume import Volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.synthesis import synthesize
from CMRSynthLib.training import checkpoint as ckpt
import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "training"))  # stand-in until generators land
from test_loop import Toy, ToyConfig, install_toy  # noqa: E402


def oblique_mask(shape=(3, 40, 36), spacing=(1.3, 1.7, 8.0)) -> Volume:
    """Canonical labels on an oblique, anisotropic grid (rotated about all three axes, off-origin)."""
    k, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    labels = np.zeros(shape, np.uint8)
    labels[:, r < 9] = 2
    labels[:, r < 6] = 1
    labels[:, 5:12, 4:10] = 3
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", [25, -40, 70], degrees=True).as_matrix() * np.asarray(spacing)
    matrix[:3, 3] = (-31.5, 12.25, 80.0)
    return Volume(labels, matrix)


@pytest.fixture
def model(monkeypatch):
    install_toy(monkeypatch)
    torch.manual_seed(0)
    card = {"family": "toy", "model_id": "0123456789abcdef", "vocabulary": {"vendors": ["GE", "Siemens"],
            "phases": ["ED", "ES"], "groups": ["NOR"]},
            "preprocessing": {"spacing": [1.5, 1.5], "size": [32, 32], "clip_percentiles": [0.5, 99.5],
                              "n4": False, "interpolation": "linear"},
            "intensity": {"GE": [10.0, 510.0], "*": [0.0, 300.0]}}
    generator = Toy(ToyConfig())
    generator.config = type("C", (), {"spatial_dims": 2, "image_size": (32, 32), "to_dict": lambda s: {}})()
    return generator.eval(), card


def test_output_lies_on_the_oblique_mask_grid_exactly(model):
    generator, card = model
    mask = oblique_mask()
    (image,) = synthesize(generator, card, mask, vendor="GE", seed=4, steps=3)
    assert image.shape == mask.shape and np.array_equal(image.ijk_to_ras, mask.ijk_to_ras)
    assert image.array.dtype == np.float32 and np.isfinite(image.array).all()
    assert 10.0 <= image.array.min() and image.array.max() <= 510.0  # GE's recorded range
    assert image.metadata["descrip"] == "SYNTHETIC CMRSynth toy seed=4 vendor=GE model=0123456789abcdef"
    assert image.metadata["cmrsynth_synthetic"] == "true" and image.metadata["cmrsynth_steps"] == "3"


def test_same_seed_same_image_and_count_uses_successive_seeds(model):
    generator, card = model
    mask = oblique_mask()
    a = synthesize(generator, card, mask, vendor="Siemens", seed=7, steps=2, count=2)
    b = synthesize(generator, card, mask, vendor="Siemens", seed=8, steps=2)
    again = synthesize(generator, card, mask, vendor="Siemens", seed=7, steps=2)
    assert np.array_equal(a[0].array, again[0].array) and np.array_equal(a[1].array, b[0].array)
    assert not np.array_equal(a[0].array, a[1].array)
    assert a[1].metadata["cmrsynth_seed"] == "8"


def test_progress_callback_counts_all_steps(model):
    generator, card = model
    seen = []
    synthesize(generator, card, oblique_mask(), vendor=None, steps=3, count=2, callback=lambda d, t: seen.append((d, t)))
    assert seen == [(d, 6) for d in range(1, 7)]


@pytest.mark.parametrize("change, message", [
    (lambda a: a * 0, "mask is empty"),
    (lambda a: np.where(a == 3, 7, a), r"label values \[7\]"),
    (lambda a: a + 0.5, "non-integer"),
])
def test_bad_masks_are_refused(model, change, message):
    generator, card = model
    mask = oblique_mask()
    bad = Volume(change(mask.array.astype(np.float32)), mask.ijk_to_ras)
    with pytest.raises(InputError, match=message):
        synthesize(generator, card, bad, vendor="GE", path="m.nii.gz")


@pytest.mark.parametrize("kwargs, message", [
    ({"vendor": "Canon"}, "unknown vendor 'Canon'; this model knows GE, Siemens"),
    ({"vendor": "GE", "steps": 0}, "--steps must be a positive"),
    ({"vendor": "GE", "guidance": -1.0}, "--guidance must be ≥ 0"),
    ({"vendor": "GE", "count": 0}, "--count"),
    ({"vendor": "GE", "phase": "MID"}, "unknown phase"),
])
def test_bad_options_are_refused(model, kwargs, message):
    generator, card = model
    with pytest.raises(InputError, match=message):
        synthesize(generator, card, oblique_mask(), **kwargs)
