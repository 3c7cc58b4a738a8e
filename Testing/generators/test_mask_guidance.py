"""Guidance on the mask: a flow/LDM model trained with ``p_mask_uncond`` sees some samples with no condition at
all (all-zero mask, null tokens), and its guided sampling contrasts the masked prediction with the maskless one;
its config's ``guidance`` is the weight sampling uses unless told otherwise. Old models (no such fields) load
and sample as before."""

from __future__ import annotations

import pytest
import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators import build_generator, config_from_dict, config_to_dict, preset_config
from CMRSynthLib.generators.base import NULL, Conditions
from CMRSynthLib.generators.common import drop_conditions, guided_output
from Testing.generators.test_contract import VOCABULARY, batch, seeded


def model(family: str = "flow", **overrides):
    torch.manual_seed(0)
    config = preset_config(family, "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY, **overrides)
    generator = build_generator(family, config).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convolution: jitter so that outputs differ
        for parameter in generator.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=seeded(1)))
    return generator


def test_dropped_samples_lose_the_mask_and_every_token_and_the_others_keep_both():
    _, cond = batch(2, size=64)
    tokens = torch.stack([cond.vendor, cond.phase, cond.group], 1)
    mask, dropped_tokens = drop_conditions(cond.mask, tokens, 0.3, seeded(0))
    dropped = (mask.flatten(1) == 0).all(1)
    assert 5 < int(dropped.sum()) < 40  # about 30% of 64
    assert (dropped_tokens[dropped] == NULL).all()
    assert torch.equal(mask[~dropped], cond.mask[~dropped]) and torch.equal(dropped_tokens[~dropped], tokens[~dropped])
    assert (cond.mask.sum(1) == 1).all()  # a real one-hot labels every pixel: the all-zero mask is no real mask


def test_no_dropout_draws_nothing_so_earlier_models_train_on_the_same_random_stream():
    _, cond = batch(2)
    tokens = torch.stack([cond.vendor, cond.phase, cond.group], 1)
    rng = seeded(5)
    mask, same = drop_conditions(cond.mask, tokens, 0.0, rng)
    assert mask is cond.mask and same is tokens
    assert torch.equal(rng.get_state(), seeded(5).get_state())


class Recorder(torch.nn.Module):
    """A network that records the masks it is given and answers with their mean (a function of the mask)."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def forward(self, x, timesteps, mask, tokens):
        self.masks.append(mask)
        return x * 0 + mask.mean((1, 2, 3)).view(-1, 1, 1, 1) + tokens.sum(1).view(-1, 1, 1, 1)


@pytest.mark.parametrize("guide_mask", [False, True])
def test_guided_output_drops_the_mask_of_the_unconditional_half_only_for_a_model_that_learnt_that(guide_mask):
    _, cond = batch(2)
    tokens = torch.stack([cond.vendor, cond.phase, cond.group], 1)
    net, x = Recorder(), torch.zeros(2, 1, 32, 32)
    out = guided_output(net, x, torch.zeros(2), cond.mask, tokens, 3.0, guide_mask=guide_mask)
    (both,) = net.masks
    assert torch.equal(both[:2], cond.mask)
    assert torch.equal(both[2:], torch.zeros_like(cond.mask) if guide_mask else cond.mask)
    conditional = cond.mask.mean((1, 2, 3)) + tokens.sum(1)
    unconditional = (0.0 if guide_mask else cond.mask.mean((1, 2, 3))) + NULL * 3
    assert torch.allclose(out[:, 0, 0, 0], unconditional + 3.0 * (conditional - unconditional))


@pytest.mark.parametrize("family", ["flow", "ldm"])
def test_training_with_mask_dropout_changes_the_loss_draws_and_still_learns(family):
    images, cond = batch(2, size=8)
    plain, dropping = model(family), model(family, p_mask_uncond=0.5)
    if family == "ldm":
        plain.freeze_autoencoder(images), dropping.freeze_autoencoder(images)
    loss_plain = plain.loss(images, cond, generator=seeded(2))
    loss_dropping = dropping.loss(images, cond, generator=seeded(2))
    assert loss_dropping.shape == (8,) and torch.isfinite(loss_dropping).all()
    assert not torch.allclose(loss_plain, loss_dropping)  # same weights, same draws: some samples lost the mask
    loss_dropping.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dropping.net.parameters())


def test_the_configs_guidance_is_the_default_weight_and_an_explicit_one_wins():
    _, cond = batch(2)
    guided = model(p_mask_uncond=0.2, guidance=2.0)
    default = guided.sample(cond, steps=2, generator=seeded(3))
    assert torch.equal(default, guided.sample(cond, steps=2, guidance=2.0, generator=seeded(3)))
    assert not torch.equal(default, guided.sample(cond, steps=2, guidance=1.0, generator=seeded(3)))
    assert guided.check_sampling(None, None, None)[2] == 2.0 and guided.check_sampling(None, None, 1.5)[2] == 1.5


def test_mask_guidance_moves_the_sample_further_than_token_guidance_alone():
    _, cond = batch(2)
    tokens_only = model()
    with_mask = model(p_mask_uncond=0.2)  # the same weights: only the unconditional branch differs
    with_mask.load_state_dict(tokens_only.state_dict())
    reference = tokens_only.sample(cond, steps=2, guidance=1.0, generator=seeded(3))
    a = tokens_only.sample(cond, steps=2, guidance=3.0, generator=seeded(3))
    b = with_mask.sample(cond, steps=2, guidance=3.0, generator=seeded(3))
    assert torch.equal(reference, with_mask.sample(cond, steps=2, guidance=1.0, generator=seeded(3)))
    assert not torch.equal(a, b)


def test_a_card_written_before_mask_guidance_loads_with_no_dropout_and_weight_1():
    config = config_to_dict(preset_config("ldm", "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY))
    old = {k: v for k, v in config.items() if k not in ("p_mask_uncond", "guidance")}
    loaded = config_from_dict("ldm", old)
    assert loaded.p_mask_uncond == 0.0 and loaded.guidance == 1.0
    assert build_generator("ldm", loaded).default_guidance == 1.0


@pytest.mark.parametrize("overrides,message", [
    (dict(p_mask_uncond=1.0), "p_mask_uncond"), (dict(p_mask_uncond=-0.1), "p_mask_uncond"),
    (dict(guidance=-1.0), "guidance")])
def test_bad_guidance_fields_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        preset_config("flow", "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY, **overrides)


def test_an_anatomy_model_has_no_mask_to_drop():
    with pytest.raises(ValueError, match="anatomy"):
        preset_config("anatomy", "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY, p_mask_uncond=0.1)


def test_conditions_of_a_dropped_sample_are_still_valid_conditions():
    _, cond = batch(2)
    tokens = torch.stack([cond.vendor, cond.phase, cond.group], 1)
    mask, dropped = drop_conditions(cond.mask, tokens, 0.99, seeded(0))
    Conditions(mask, *dropped.unbind(1))  # shapes and dtypes a network accepts


@pytest.mark.parametrize("flags,message", [
    (dict(family="ddpm", mask_dropout=0.1), "--mask-dropout applies to --generator flow or ldm only"),
    (dict(family="hybrid", guidance=2.0), "--guidance applies"),
    (dict(family="ldm", mask_dropout=1.0), "--mask-dropout must be in"),
    (dict(family="flow", guidance=-1.0), "--guidance must be ≥ 0")])
def test_train_refuses_guidance_flags_it_cannot_honour(flags, message):
    from CMRSynthLib.training.config import TrainConfig

    with pytest.raises(InputError, match=message):
        TrainConfig(data="d", out="o", **flags)
