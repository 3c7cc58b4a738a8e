"""Closed-form tests of the DDPM maths: q(x_k | x_0), the ε and v targets, the t ↦ timestep map, and every
sampler reconstructing x_0 exactly when the network is a perfect oracle."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.generators.ddpm import DDPMConfig, DDPMGenerator

VOCABULARY = Vocabulary(vendors=("A", "B"))
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2


def ddpm(**overrides) -> DDPMGenerator:
    torch.manual_seed(0)
    return DDPMGenerator(DDPMConfig.preset("tiny", spatial_dims=2, image_size=8, vocabulary=VOCABULARY, **overrides))


def conditions(batch: int, size: int = 8) -> Conditions:
    mask = torch.zeros(batch, 4, size, size)
    mask[:, 0] = 1
    tokens = torch.arange(batch) % 2 + 1
    return Conditions(mask, tokens, tokens, tokens)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_forward_process_mean_and_variance(schedule):
    model = ddpm(beta_schedule=schedule)
    abar = model.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and 0 < abar[-1] < abar[0] < 1
    x0 = torch.full((20000, 1, 1, 1), 0.6)
    for k in (0, 250, 999):
        noisy, _ = model.diffuse(x0, torch.full((len(x0),), k), torch.randn_like(x0))
        assert abs(noisy.mean() - abar[k].sqrt() * 0.6) < 0.02
        assert abs(noisy.var() - (1 - abar[k])) < 0.03


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_noising_and_targets_agree_with_diffusers(prediction):
    model = ddpm(prediction_type=prediction)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=model.config.beta_schedule)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    k = torch.tensor([0, 10, 500, 999])
    noisy, target = model.diffuse(x0, k, noise)
    assert torch.allclose(noisy, reference.add_noise(x0, noise, k), atol=1e-6)
    expected = noise if prediction == "epsilon" else reference.get_velocity(x0, noise, k)
    assert torch.allclose(target, expected, atol=1e-6)


def test_v_prediction_conversion_identities():
    """x_0 = √ᾱ·x_k − √(1−ᾱ)·v and ε = √(1−ᾱ)·x_k + √ᾱ·v (Salimans & Ho 2022, §4)."""
    model = ddpm(prediction_type="v_prediction")
    x0, noise = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)
    k = torch.tensor([1, 100, 400, 700, 999])
    noisy, v = model.diffuse(x0, k, noise)
    a = model.alphas_cumprod[k].view(-1, 1, 1, 1)
    assert torch.allclose(a.sqrt() * noisy - (1 - a).sqrt() * v, x0, atol=1e-5)
    assert torch.allclose((1 - a).sqrt() * noisy + a.sqrt() * v, noise, atol=1e-5)


def test_presets_predict_v_on_the_cosine_schedule_and_older_epsilon_configs_still_load():
    for name in ("tiny", "small", "base"):
        config = DDPMConfig.preset(name, spatial_dims=2, image_size=16, vocabulary=VOCABULARY)
        assert (config.prediction_type, config.beta_schedule) == ("v_prediction", "squaredcos_cap_v2")
    old = config.to_dict()
    del old["prediction_type"], old["beta_schedule"]  # a config written before these fields existed
    assert (DDPMConfig.from_dict(old).prediction_type, DDPMConfig.from_dict(old).beta_schedule) == ("epsilon", "linear")
    old.update(prediction_type="epsilon", beta_schedule="linear")
    assert DDPMGenerator(DDPMConfig.from_dict(old)).alphas_cumprod[-1] > 1e-5  # the linear schedule's ᾱ_T ≈ 4e-5


def test_v_network_learns_a_fixed_batch():
    """A tiny v-prediction DDPM: 60 Adam steps on one batch cut its loss, measured at fixed timesteps (the
    noisiest included) and noise, below half of its start."""
    model = ddpm(prediction_type="v_prediction")
    assert model.config.prediction_type == "v_prediction"
    x0 = torch.zeros(4, 1, 8, 8)
    x0[:, :, 2:6, 2:6] = 0.8
    cond = conditions(4)
    t, noise = torch.tensor([1.0, 0.8, 0.5, 0.2]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def measured():
        with torch.no_grad():
            return model.loss_at(x0, cond, t, noise).mean()

    before = measured()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(2)
    for _ in range(60):
        optimiser.zero_grad()
        model.loss(x0, cond, generator=rng).mean().backward()
        optimiser.step()
    assert measured() < 0.5 * before, (before, measured())


def test_noise_level_maps_to_rounded_timesteps():
    model = ddpm()
    t = torch.tensor([0.0, 1.0, 0.5, 0.1234])
    assert model.timesteps_of(t).tolist() == [0, 999, 500, 123]


class Oracle(nn.Module):
    """A perfect 'network' for a known clean batch x_0: returns the exact ε (or v) for any x_k."""

    def __init__(self, x0, alphas_cumprod, prediction):
        super().__init__()
        self.x0, self.abar, self.prediction = x0, alphas_cumprod, prediction

    def forward(self, x, timesteps, mask, tokens):
        a = self.abar[timesteps.long()].view(-1, 1, 1, 1)
        x0 = self.x0.repeat(len(x) // len(self.x0), 1, 1, 1)  # guidance batches cond + uncond
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler,steps", [("ddim", 4), ("ddim", 50), ("dpmpp", 6), ("ancestral", 8)])
def test_every_sampler_reconstructs_x0_from_a_perfect_oracle(prediction, sampler, steps, schedule):
    model = ddpm(prediction_type=prediction, beta_schedule=schedule)
    x0 = torch.rand(3, 1, 8, 8) * 1.8 - 0.9
    model.net = Oracle(x0, model.alphas_cumprod, prediction)
    for guidance in (1.0, 2.0):
        out = model.sample(conditions(3), sampler=sampler, steps=steps, guidance=guidance,
                           generator=torch.Generator().manual_seed(4))
        assert torch.allclose(out, x0, atol=1e-4), (out - x0).abs().max()


def test_same_seed_same_chain_for_deterministic_and_stochastic_samplers():
    model = ddpm()
    cond = conditions(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    runs = {s: [model.sample(cond, sampler=s, steps=5, generator=torch.Generator().manual_seed(1)) for _ in "ab"]
            for s in ("ddim", "ancestral")}
    assert torch.equal(*runs["ddim"]) and torch.equal(*runs["ancestral"])  # ancestral draws all noise from the seed
    assert not torch.equal(runs["ddim"][0], runs["ancestral"][0])  # same start, but ancestral adds fresh noise


def test_more_steps_than_trained_timesteps_are_refused():
    model = ddpm(num_train_timesteps=50)
    with pytest.raises(InputError, match="--steps"):
        model.sample(conditions(1), sampler="ancestral", steps=51)
