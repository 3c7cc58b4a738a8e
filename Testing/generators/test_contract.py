"""The contract every generator family and every sampler honours (STYLE practice 9): shapes in 2D and 3D,
determinism, guidance, per-sample losses that backpropagate and learn, strict configs, Opacus compatibility,
and bad sampling options refused with a message naming the argument."""

from __future__ import annotations

import functools

import pytest
import torch
from opacus.validators import ModuleValidator

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators import (GENERATORS, build_generator, config_from_dict, config_to_dict,
                                    preset_config)
from CMRSynthLib.generators.base import Conditions, Vocabulary

VOCABULARY = Vocabulary(vendors=("Siemens", "Philips", "GE", "Canon"))
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2
SIZES = {2: (32, 32), 3: (4, 32, 32)}
THREE_D = {"flow", "ldm", "ddpm", "anatomy"}  # families whose 3D path the contract runs (hybrid = flow + ddpm)
CASES = [(family, sampler, dims) for family, cls in GENERATORS.items() for sampler in cls.samplers
         for dims in (2, 3) if dims == 2 or family in THREE_D]


def make(family: str, dims: int, **overrides):
    torch.manual_seed(0)
    config = preset_config(family, "tiny", spatial_dims=dims, image_size=SIZES[dims], vocabulary=VOCABULARY,
                           **overrides)
    return build_generator(family, config).eval()


@functools.lru_cache(maxsize=None)
def cached(family: str, dims: int):
    """A tiny model with every weight jittered: MONAI zero-initialises the output convolutions, so a fresh
    model predicts exactly 0 and could not show that guidance or the conditions change anything."""
    generator = make(family, dims)
    rng = seeded(0)
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=rng))
    return generator


def batch(dims: int, size: int = 2) -> tuple[torch.Tensor, Conditions]:
    """Images that are a deterministic function of their masks (discs: LV in MYO, RV beside), so that a
    model can learn them, and conditions with distinct tokens."""
    spatial = SIZES[dims]
    h, w = spatial[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = torch.zeros(size, *spatial, dtype=torch.long)
    for b in range(size):
        cy, cx, r = h // 2, w // 2 - 2 + b, 5 + b
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
        plane = torch.zeros(h, w, dtype=torch.long)
        plane[(d > r) & (d <= r + 3)] = 2
        plane[d <= r] = 1
        plane[(((yy - cy) ** 2 + (xx - cx - r - 7) ** 2).float().sqrt() <= 4)] = 3
        labels[b] = plane
    mask = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).float()
    intensity = torch.tensor([-0.8, 0.7, -0.2, 0.4])
    images = intensity[labels].unsqueeze(1)
    tokens = torch.arange(size)
    cond = Conditions(mask, vendor=tokens % 4 + 1, phase=tokens % 2 + 1, group=tokens % 5 + 1)
    return images, cond


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family,sampler,dims", CASES)
def test_sample_shape_range_and_determinism(family, sampler, dims):
    generator = cached(family, dims)
    _, cond = batch(dims)
    first = generator.sample(cond, sampler=sampler, steps=3, generator=seeded(1))
    again = generator.sample(cond, sampler=sampler, steps=3, generator=seeded(1))
    other = generator.sample(cond, sampler=sampler, steps=3, generator=seeded(2))
    channels = 4 if family == "anatomy" else 1
    assert first.shape == (2, channels, *SIZES[dims])
    assert torch.isfinite(first).all()
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("family", list(GENERATORS))
def test_guidance_changes_the_sample(family):
    generator = cached(family, 2)
    _, cond = batch(2)
    plain = generator.sample(cond, steps=2, guidance=1.0, generator=seeded(3))
    guided = generator.sample(cond, steps=2, guidance=3.0, generator=seeded(3))
    assert torch.isfinite(guided).all() and guided.shape == plain.shape
    assert not torch.equal(plain, guided)


@pytest.mark.parametrize("family,dims", [(f, d) for f in GENERATORS for d in (2, 3) if d == 2 or f in THREE_D])
def test_loss_is_per_sample_and_backpropagates(family, dims):
    generator = make(family, dims).train()
    images, cond = batch(dims, size=3)
    loss = generator.loss(images, cond, generator=seeded(0))
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.sum().backward()
    grads = [p.grad for p in generator.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("family", list(GENERATORS))
def test_loss_at_is_deterministic_and_depends_on_t(family):
    generator = cached(family, 2)
    images, cond = batch(2)
    noise = generator.noise_like(images, generator=seeded(0))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        first = generator.loss_at(images, cond, t, noise)
        again = generator.loss_at(images, cond, t, noise)
        later = generator.loss_at(images, cond, torch.tensor([0.9, 0.1]), noise)
    assert first.shape == (2,)
    assert torch.equal(first, again)
    assert not torch.equal(first, later)


@pytest.mark.parametrize("family", list(GENERATORS))
def test_tiny_model_learns_a_fixed_batch(family):
    """60 Adam steps on one batch cut the training loss (measured with fixed noise levels, noise and dropout,
    i.e. a fixed seed) below 0.7 of its start. A staged model (LDM) learns its first stage here."""
    generator = make(family, 2).train()
    images, cond = batch(2, size=4)

    def measured():
        with torch.no_grad():
            return generator.loss(images, cond, generator=seeded(5)).mean()

    before = measured()
    optimiser = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=3e-3)
    rng = seeded(6)
    for _ in range(60):
        optimiser.zero_grad()
        generator.loss(images, cond, generator=rng).mean().backward()
        optimiser.step()
    after = measured()
    assert after < 0.7 * before, (family, before.item(), after.item())


@pytest.mark.parametrize("family", list(GENERATORS))
def test_opacus_finds_nothing_to_fix(family):
    assert ModuleValidator.validate(make(family, 2).train(), strict=False) == []


@pytest.mark.parametrize("family", list(GENERATORS))
def test_config_round_trip_and_unknown_keys(family):
    config = cached(family, 2).config
    data = config_to_dict(config)
    assert config_from_dict(family, data) == config
    with pytest.raises(InputError, match="learning_rat"):
        config_from_dict(family, {**data, "learning_rat": 1})
    with pytest.raises(InputError, match="network.*width"):
        config_from_dict(family, {**data, "network": {**data["network"], "width": 3}})
    with pytest.raises(InputError, match="spatial_dims"):
        config_from_dict(family, {k: v for k, v in data.items() if k != "spatial_dims"})
    with pytest.raises(InputError, match="image_size"):
        config_from_dict(family, {**data, "image_size": 32})
    with pytest.raises(InputError, match="p_uncond"):
        config_from_dict(family, {**data, "p_uncond": 1.5})


@pytest.mark.parametrize("family", list(GENERATORS))
def test_bad_sampling_options_name_the_argument(family):
    generator = cached(family, 2)
    _, cond = batch(2)
    with pytest.raises(InputError, match="--sampler"):
        generator.sample(cond, sampler="nonsense", steps=2)
    for steps in (0, -3, 2.5):
        with pytest.raises(InputError, match="--steps"):
            generator.sample(cond, steps=steps)
    for guidance in (-1.0, float("nan")):
        with pytest.raises(InputError, match="--guidance"):
            generator.sample(cond, steps=2, guidance=guidance)


def test_unknown_family_and_preset_are_refused():
    with pytest.raises(InputError, match="gan"):
        preset_config("gan", "tiny", spatial_dims=2, image_size=32, vocabulary=VOCABULARY)
    with pytest.raises(InputError, match="huge"):
        preset_config("flow", "huge", spatial_dims=2, image_size=32, vocabulary=VOCABULARY)
