"""synthesize() and restyle() with a tiny trained flow: exact mask geometry, determinism, marker, bad input."""

import numpy as np
import pytest

from CMRSynthLib.data.volume import Volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.synthesis import restyle, synthesize
from CMRSynthLib.training import checkpoint as ckpt
from training_fixtures import oblique_mask, phantom, tiny_flow  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def model(tiny_flow):  # noqa: F811
    generator, card = ckpt.load_checkpoint(tiny_flow)
    card = {**card, "intensity": {**card["intensity"], "Siemens": [10.0, 510.0]}}
    return generator, card


def test_output_lies_on_the_oblique_mask_grid_exactly(model):
    generator, card = model
    mask = oblique_mask()
    (image,) = synthesize(generator, card, mask, vendor="Siemens", seed=4, steps=3)
    assert image.shape == mask.shape and np.array_equal(image.ijk_to_ras, mask.ijk_to_ras)
    assert image.array.dtype == np.float32 and np.isfinite(image.array).all()
    assert 10.0 <= image.array.min() and image.array.max() <= 510.0  # the recorded range for Siemens
    assert image.metadata["descrip"] == f"SYNTHETIC CMRSynth flow seed=4 vendor=Siemens model={card['model_id']}"
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
        synthesize(generator, card, bad, vendor="Siemens", path="m.nii.gz")


@pytest.mark.parametrize("kwargs, message", [
    ({"vendor": "Hitachi"}, "unknown vendor 'Hitachi'; this model knows Canon, Philips, Siemens"),
    ({"vendor": "Siemens", "steps": 0}, "--steps must be a positive"),
    ({"vendor": "Siemens", "guidance": -1.0}, "--guidance must be ≥ 0"),
    ({"vendor": "Siemens", "count": 0}, "--count"),
    ({"vendor": "Siemens", "phase": "MID"}, "unknown phase"),
    ({"vendor": "Siemens", "sampler": "rk45"}, "--sampler 'rk45' is not available for flow"),
])
def test_bad_options_are_refused(model, kwargs, message):
    generator, card = model
    with pytest.raises(InputError, match=message):
        synthesize(generator, card, oblique_mask(), **kwargs)


def test_restyle_to_the_same_vendor_gives_the_image_back(model, phantom):  # noqa: F811
    from CMRSynthLib.data.cohorts import load_case, open_cohort

    generator, card = model
    case = load_case(open_cohort(phantom).records[0])
    out = restyle(generator, card, case.image, case.label, vendor=case.vendor, source_vendor=case.vendor, steps=8)
    assert out.same_geometry(case.image) and out.metadata["descrip"].startswith("SYNTHETIC")
    original = case.image.array.astype(np.float64)
    error = np.abs(out.array - original)
    assert np.median(error) < 0.02 * np.ptp(original)  # inversion + integration error only
    other = restyle(generator, card, case.image, case.label, vendor="Canon", source_vendor=case.vendor, steps=8)
    assert np.abs(other.array - original).mean() > np.abs(out.array - original).mean()


def test_restyle_refuses_nan_mismatch_and_non_flow_models(model, phantom):  # noqa: F811
    from CMRSynthLib.data.cohorts import load_case, open_cohort

    generator, card = model
    case = load_case(open_cohort(phantom).records[0])
    nan = case.image.array.astype(np.float32).copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        restyle(generator, card, Volume(nan, case.image.ijk_to_ras), case.label, vendor="Siemens", image_path="i.nii.gz")
    moved = case.image.ijk_to_ras.copy()
    moved[0, 3] += 5.0
    with pytest.raises(InputError, match="geometry differs"):
        restyle(generator, card, case.image, Volume(case.label.array, moved), vendor="Siemens")
    from CMRSynthLib.generators import build_generator, config_from_dict

    ddpm = build_generator("ddpm", config_from_dict("ddpm", {k: v for k, v in card["config"].items()
                                                              if k in ("spatial_dims", "image_size", "vocabulary")}))
    with pytest.raises(InputError, match="needs a flow-matching model"):
        restyle(ddpm, {**card, "family": "ddpm"}, case.image, case.label, vendor="Siemens")


def test_an_image_follows_its_reference_s_type_and_scale():
    """The model's range (lo, hi) lands on the reference's values at the card's clip percentiles, in its type."""
    from CMRSynthLib.synthesis import ReferenceScale, follow_reference

    card = {"preprocessing": {"clip_percentiles": [0.5, 99.5], "size": [8, 8], "spacing": [1.0, 1.0]},
            "intensity": {"*": [0.0, 1.0]}}
    reference = Volume(np.arange(0, 1001, dtype=np.int16).reshape(1, 7, 143), np.eye(4))
    scale = ReferenceScale.of(reference, card)
    assert scale.dtype == np.int16 and (scale.lo, scale.hi) == pytest.approx((5.0, 995.0))
    image = Volume(np.array([[[0.0, 0.5, 1.0, 2.0]]], np.float32), np.eye(4))
    followed = follow_reference(image, scale, card, None)
    assert followed.array.dtype == np.int16 and followed.array.tolist() == [[[5, 500, 995, 1985]]]
    assert "int16" in followed.metadata["cmrsynth_intensity"]


def test_the_default_model_loads_and_samples_without_importing_diffusers():
    """Start-up of every `cmrsynth sample` process: diffusers (about 1.5 s to import, with torch._dynamo) is needed
    only by DDPM samplers, not by the default latent flow model."""
    import subprocess
    import sys

    script = ("import sys\nfrom CMRSynthLib.training.checkpoint import load_checkpoint\n"
              "from CMRSynthLib import synthesis\n"
              "generator, card = load_checkpoint('acdc-ldm')\n"
              "assert 'diffusers' not in sys.modules, 'diffusers imported'\n"
              "load_checkpoint('phantom-ddpm')\n"
              "assert 'diffusers' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
