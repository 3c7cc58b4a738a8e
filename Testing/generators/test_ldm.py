"""The latent diffusion model: its two stages, the latent scale, the mask at latent resolution, the slice-wise
autoencoder of 3D stacks, and the state that travels with the weights."""

from __future__ import annotations

import pytest
import torch

from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.generators.flow import TIME_SCALE
from CMRSynthLib.generators.ldm import LDMConfig, LDMGenerator

VOCABULARY = Vocabulary(vendors=("A", "B"))


def ldm(dims: int = 2) -> LDMGenerator:
    torch.manual_seed(0)
    size = 32 if dims == 2 else (3, 32, 32)
    return LDMGenerator(LDMConfig.preset("tiny", spatial_dims=dims, image_size=size, vocabulary=VOCABULARY))


def data(batch: int = 4, spatial=(32, 32)) -> tuple[torch.Tensor, Conditions]:
    labels = torch.zeros(batch, *spatial, dtype=torch.long)
    labels[..., 8:20, 8:20] = 2
    labels[..., 11:17, 11:17] = 1
    labels[..., 10:22, 22:28] = 3
    for b in range(batch):
        labels[b] = labels[b].roll(b, dims=-1)
    mask = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).float()
    images = torch.tensor([-0.8, 0.7, -0.2, 0.4])[labels].unsqueeze(1)
    tokens = torch.arange(batch) % 2 + 1
    return images, Conditions(mask, tokens, tokens, tokens)


def train(model, images, cond, steps=60):
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimiser.zero_grad()
        model.loss(images, cond, generator=rng).mean().backward()
        optimiser.step()


def test_stages_switch_loss_and_trainable_parameters():
    model = ldm()
    images, cond = data()
    assert model.stage == "autoencoder"
    assert all(p.requires_grad for p in model.autoencoder.parameters())
    assert not any(p.requires_grad for p in model.net.parameters())
    seed = torch.Generator().manual_seed
    assert torch.equal(model.loss(images, cond, generator=seed(0)), model.autoencoder_loss(images, generator=seed(0)))
    model.freeze_autoencoder(images)
    assert model.stage == "diffusion"
    assert not any(p.requires_grad for p in model.autoencoder.parameters())
    assert all(p.requires_grad for p in model.net.parameters())
    with pytest.raises(ValueError, match="stage"):
        model.stage = "encoder"


def test_latent_scale_whitens_the_latents_and_the_loss_is_the_latent_flow_loss():
    model = ldm()
    images, cond = data()
    model.freeze_autoencoder(images)
    latents = model.encode(images, cond)
    assert latents.shape == (4, 4, 8, 8)
    assert abs(latents.std().item() - 1.0) < 1e-4
    noise, t = model.noise_like(images, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1, 0.4, 0.6, 0.9])
    x_t = (1 - t.view(-1, 1, 1, 1)) * latents + t.view(-1, 1, 1, 1) * noise
    tokens = torch.stack([cond.vendor, cond.phase, cond.group], 1)
    prediction = model.net(x_t, t * TIME_SCALE, model.model_mask(cond), tokens)
    expected = (prediction - (noise - latents)).pow(2).flatten(1).mean(1)
    assert torch.allclose(model.loss_at(images, cond, t, noise), expected, atol=1e-6)


def test_both_stages_learn():
    model = ldm().train()
    images, cond = data()
    seed = torch.Generator().manual_seed
    before = model.autoencoder_loss(images, generator=seed(0)).mean().item()
    train(model, images, cond)
    assert model.autoencoder_loss(images, generator=seed(0)).mean().item() < 0.7 * before
    model.freeze_autoencoder(images)
    decoder_before = [p.clone() for p in model.autoencoder.parameters()]
    noise, t = model.noise_like(images, generator=seed(2)), torch.tensor([0.2, 0.4, 0.6, 0.8])
    with torch.no_grad():
        before = model.loss_at(images, cond, t, noise).mean().item()
    train(model, images, cond)
    with torch.no_grad():
        assert model.loss_at(images, cond, t, noise).mean().item() < 0.7 * before
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, model.autoencoder.parameters()))


def test_mask_at_latent_resolution_is_the_area_fraction():
    model = ldm()
    _, cond = data(1)
    pooled = model.model_mask(cond)
    assert pooled.shape == (1, 4, 8, 8)
    assert torch.allclose(pooled.sum(1), torch.ones(1, 8, 8))
    # latent cell (2, 2) covers pixels 8..11 × 8..11: myocardium except the LV's corner pixel (11, 11)
    assert pooled[0, :, 2, 2].tolist() == [0.0, 1 / 16, 15 / 16, 0.0]
    # latent cell (2, 3) covers pixels 8..11 × 12..15; LV starts at row 11: a quarter LV
    assert pooled[0, 1, 2, 3].item() == pytest.approx(4 / 16)


def test_three_d_stacks_are_encoded_slice_by_slice_and_pooled_in_plane():
    model = ldm(3)
    images, cond = data(2, spatial=(3, 32, 32))
    latents = model.autoencoder.encode(images)
    assert latents.shape == (2, 4, 3, 8, 8)
    per_slice = torch.stack([model.autoencoder.encode(images[:, :, k]) for k in range(3)], dim=2)
    assert torch.allclose(latents, per_slice, atol=1e-5)
    assert model.model_mask(cond).shape == (2, 4, 3, 8, 8)
    out = model.sample(cond[:1], steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 1, 3, 32, 32)


def test_stage_and_scale_travel_with_the_state_dict():
    model = ldm()
    images, _ = data()
    model.freeze_autoencoder(images)
    fresh = ldm()
    fresh.load_state_dict(model.state_dict())
    assert fresh.stage == "diffusion" and fresh.latent_scale == model.latent_scale
    assert not any(p.requires_grad for p in fresh.autoencoder.parameters())


def test_sizes_the_autoencoder_cannot_halve_are_refused():
    with pytest.raises(ValueError, match="autoencoder factor 4"):
        LDMConfig.preset("tiny", spatial_dims=2, image_size=30, vocabulary=VOCABULARY)
    model = ldm()
    with pytest.raises(ValueError, match="multiple of 4"):
        model.autoencoder.encode(torch.zeros(1, 1, 30, 32))
