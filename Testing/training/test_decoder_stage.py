"""An LDM's decoder stage (``cmrsynth train --stage decoder``): only the decoder learns, against a discriminator that
learns from its own loss only; the latents and every other network stay bit for bit; it resumes exactly, discriminator
included; a later fine-tune trains the latent network again; and DP, other families and stray flags are refused."""

from __future__ import annotations

import pytest
import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.base import Vocabulary
from CMRSynthLib.generators.ldm import LDMConfig, LDMGenerator
from CMRSynthLib.models.autoencoder import patch_discriminator
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training.loop import Trainer
from CMRSynthLib.training.privacy import DPConfig, DPTraining
from training_fixtures import phantom, run_stopped_at_step, train_config  # noqa: F401 - fixture


def decoder_stage_model() -> LDMGenerator:
    torch.manual_seed(0)
    model = LDMGenerator(LDMConfig.preset("tiny", spatial_dims=2, image_size=32, vocabulary=Vocabulary(vendors=("A",))))
    model.freeze_autoencoder(torch.rand(4, 1, 32, 32) * 2 - 1)
    model.stage = "decoder"
    return model


def grads(loss: torch.Tensor, params) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]


def test_the_decoder_stage_trains_the_decoder_alone():
    model = decoder_stage_model()
    decoder = {id(p) for p in model.autoencoder.decoder_parameters()}
    assert decoder and all(p.requires_grad == (id(p) in decoder) for p in model.parameters())
    with pytest.raises(RuntimeError, match="--stage decoder"):
        model.loss(torch.zeros(2, 1, 32, 32), None)
    model.stage = "diffusion"  # and back: the decoder freezes again
    assert not any(p.requires_grad for p in model.autoencoder.parameters())


def test_each_player_learns_from_its_own_objective_and_each_image_from_itself():
    model, discriminator = decoder_stage_model(), patch_discriminator()
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    theirs, mine = list(discriminator.parameters()), model.autoencoder.decoder_parameters()

    def loss(weight: float, x=images) -> torch.Tensor:
        return model.autoencoder.adversarial_loss(x, discriminator, weight, generator=torch.Generator().manual_seed(0))

    assert loss(0.05).shape == (3,)
    # the adversarial weight moves the decoder's gradient, never the discriminator's
    for a, b in zip(grads(loss(0.0).sum(), theirs), grads(loss(10.0).sum(), theirs)):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(grads(loss(0.0).sum(), mine), grads(loss(10.0).sum(), mine)))
    # the encoder gets nothing; one image's loss does not depend on another's (instance norm, no batch statistics)
    encoder = list(model.autoencoder.kl.encoder.parameters())
    for p in encoder:
        p.requires_grad_(True)
    assert all(g is None for g in torch.autograd.grad(loss(0.05).sum(), encoder, allow_unused=True))
    other = images.clone()
    other[1:] = -other[1:]
    assert torch.allclose(loss(0.05)[0], loss(0.05, other)[0], atol=1e-6)


@pytest.fixture
def latent_model(phantom, tmp_path):  # noqa: F811
    Trainer(train_config(phantom, tmp_path / "ldm", family="ldm", max_steps=6, autoencoder_fraction=0.5)).run()
    return tmp_path / "ldm"


def test_a_decoder_stage_keeps_the_latents_resumes_exactly_and_hands_back_to_diffusion(phantom, latent_model,  # noqa: F811
                                                                                        tmp_path):
    kwargs = dict(family="ldm", init=str(latent_model), stage="decoder", adversarial_weight=0.1, max_steps=6)
    Trainer(train_config(phantom, tmp_path / "whole", **kwargs)).run()
    run_stopped_at_step(Trainer(train_config(phantom, tmp_path / "parts", save_every=2, **kwargs)), 5)
    assert Trainer(train_config(phantom, tmp_path / "parts", save_every=2, **kwargs)).run().resumed_from == 4
    init, whole = ckpt.read_checkpoint(latent_model), ckpt.read_checkpoint(tmp_path / "whole")
    parts = ckpt.read_checkpoint(tmp_path / "parts")
    for name in whole.weights:
        assert torch.equal(whole.weights[name], parts.weights[name]), name
        assert torch.equal(whole.ema[name], parts.ema[name]), name
        tuned = name.startswith(("autoencoder.kl.decoder.", "autoencoder.kl.post_quant_conv.")) or name == "stage_index"
        assert torch.equal(whole.weights[name], init.ema[name]) != tuned, name
    assert not any(name.startswith("discriminator") for name in whole.weights)  # training state, not the model
    assert whole.card["training"]["arguments"]["stage"] == "decoder"
    generator, _ = ckpt.load_checkpoint(tmp_path / "whole")
    assert generator.stage == "decoder"

    Trainer(train_config(phantom, tmp_path / "after", family="ldm", init=str(tmp_path / "whole"), max_steps=2)).run()
    after = ckpt.read_checkpoint(tmp_path / "after")
    assert ckpt.load_checkpoint(tmp_path / "after")[0].stage == "diffusion"
    assert all(torch.equal(after.weights[n], whole.ema[n]) for n in after.weights if n.startswith("autoencoder."))
    assert not all(torch.equal(after.weights[n], whole.ema[n]) for n in after.weights if n.startswith("net."))


@pytest.mark.parametrize("overrides, message", [
    (dict(family="flow", stage="decoder", init="x"), "--generator ldm and --init"),
    (dict(family="ldm", stage="decoder"), "--generator ldm and --init"),
    (dict(family="ldm", stage="encoder", init="x"), "--stage 'encoder' is not one of"),
    (dict(family="ldm", init="x", adversarial_weight=0.1), "--stage decoder only"),
    (dict(family="ldm", init="x", stage="decoder", adversarial_weight=-1.0), "≥ 0"),
])
def test_stray_stage_arguments_are_refused(phantom, tmp_path, overrides, message):  # noqa: F811
    with pytest.raises(InputError, match=message):
        train_config(phantom, tmp_path / "run", **overrides)


def test_dp_never_trains_the_decoder_stage(phantom, latent_model, tmp_path):  # noqa: F811
    privacy = DPTraining(DPConfig(delta=1e-3, max_grad_norm=1.0, noise_multiplier=1.0))
    config = train_config(phantom, tmp_path / "dp", family="ldm", init=str(latent_model), stage="decoder", max_steps=2)
    with pytest.raises(InputError, match="--dp cannot train --stage decoder"):
        Trainer(config, privacy=privacy).run()
    assert not (tmp_path / "dp" / "card.json").exists()


def test_a_stage_is_refused_for_an_init_whose_autoencoder_is_unfinished(phantom, tmp_path):  # noqa: F811
    unfinished = tmp_path / "unfinished"
    run_stopped_at_step(Trainer(train_config(phantom, unfinished, family="ldm", max_steps=6, autoencoder_fraction=0.5,
                                             save_every=1)), 2)
    assert ckpt.load_checkpoint(unfinished)[0].stage == "autoencoder"
    for stage in ("decoder", "diffusion"):
        config = train_config(phantom, tmp_path / stage, family="ldm", init=str(unfinished), stage=stage, max_steps=2)
        with pytest.raises(InputError, match="has not finished training its autoencoder"):
            Trainer(config).run()
