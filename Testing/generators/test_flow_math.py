"""Closed-form tests of the flow-matching convention (x_t = (1 − t)·x_0 + t·ε, v = ε − x_0, 1 = noise) and of
its ODE integrators, including agreement with the diffusers and MONAI conventions documented in flow.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from monai.networks.schedulers import RFlowScheduler
from torch import nn

from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.generators.flow import TIME_SCALE, FlowConfig, FlowGenerator, integrate, time_grid

VOCABULARY = Vocabulary(vendors=("A", "B"))


def flow_model(**overrides) -> FlowGenerator:
    torch.manual_seed(0)
    return FlowGenerator(FlowConfig.preset("tiny", spatial_dims=2, image_size=16, vocabulary=VOCABULARY,
                                           **overrides))


def gaussian_velocity(mu: float, sigma: float):
    """Exact marginal velocity when x_0 ~ N(mu, sigma²): x_t = (1 − t)·mu + s(t)·z with
    s(t)² = (1 − t)²·sigma² + t², so v = −mu + s'(t)/s(t)·(x − (1 − t)·mu), s·s' = t − (1 − t)·sigma²."""

    def field(x, t):
        s2 = (1 - t) ** 2 * sigma**2 + t**2
        return -mu + (t - (1 - t) * sigma**2) / s2 * (x - (1 - t) * mu)

    return field


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 1, 4, 8, 8), (2, 4, 6, 6)])
def test_interpolation_and_target_match_the_formula(shape):
    model = flow_model()
    x0, noise = torch.randn(shape), torch.randn(shape)
    t = torch.rand(shape[0])
    x_t, v = model.interpolate(x0, noise, t)
    for b in range(shape[0]):
        assert torch.allclose(x_t[b], (1 - t[b]) * x0[b] + t[b] * noise[b], atol=1e-6)
        assert torch.allclose(v[b], noise[b] - x0[b])
    # v is the time derivative of the path
    h = 1e-3
    ahead, _ = model.interpolate(x0, noise, t + h)
    assert torch.allclose((ahead - x_t) / h, v, atol=1e-2)
    # the endpoints: t = 0 is data, t = 1 is noise
    assert torch.equal(model.interpolate(x0, noise, torch.zeros(shape[0]))[0], x0)
    assert torch.equal(model.interpolate(x0, noise, torch.ones(shape[0]))[0], noise)


def test_same_path_as_diffusers_and_monai_with_their_signs():
    x0, noise = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    t = 0.7
    x_t, v_ours = flow_model().interpolate(x0, noise, torch.tensor([t]))
    # MONAI: the same interpolation at timestep T·t, but its velocity is x_0 − ε
    monai = RFlowScheduler(num_train_timesteps=1000, use_timestep_transform=False)
    assert torch.allclose(monai.add_noise(x0, noise, torch.tensor([700])), x_t, atol=1e-6)
    # diffusers: an Euler step from σ = t with model output ε − x_0 lands on the path at the next σ
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=[t, 0.4])
    stepped = scheduler.step(v_ours, scheduler.timesteps[0], x_t).prev_sample
    expected, _ = flow_model().interpolate(x0, noise, torch.tensor([0.4]))
    assert torch.allclose(stepped, expected, atol=1e-5)
    assert torch.allclose(integrate(lambda x, s: v_ours, x_t, [t, 0.4], sampler="euler"), expected, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "midpoint", "ab2"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_point_target_is_reached_exactly(sampler, shift):
    """For a point target c the exact velocity is (x − c)/t, whose paths are straight lines: every
    integrator lands on c (Euler too). Heun evaluates at t = 0, so it is given the limit there."""
    target, start = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)

    def field(x, t):  # at t = 0 the limit along the straight path from ``start``: its constant velocity
        return (x - target) / t if t > 0 else start - target

    landed = integrate(field, start, time_grid(7, shift=shift), sampler=sampler)
    assert torch.allclose(landed, target, atol=1e-5)


def test_gaussian_target_convergence_orders():
    """The exact flow map of N(mu, sigma²) is z ↦ mu + sigma·z. Halving the step halves Euler's error (first
    order) and at least thirds Heun's, midpoint's and Adams–Bashforth's (second order)."""
    mu, sigma = 0.5, 0.3
    z = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    exact = mu + sigma * z

    def error(sampler, steps):
        return (integrate(gaussian_velocity(mu, sigma), z, time_grid(steps), sampler=sampler) - exact).abs().max()

    assert 1.7 < error("euler", 24) / error("euler", 48) < 2.3
    for sampler, bound in (("heun", 1e-3), ("midpoint", 1e-3), ("ab2", 3e-3)):  # ab2: larger error constant
        assert error(sampler, 24) / error(sampler, 48) > 3.0
        assert error(sampler, 48) < bound
    # ab2 costs one evaluation per step: at equal evaluations it beats Euler by far
    assert error("ab2", 24) < error("euler", 24) / 10


@pytest.mark.parametrize("sampler", ["heun", "midpoint", "ab2"])
def test_invert_then_generate_round_trip_on_a_linear_field(sampler):
    field = gaussian_velocity(-0.2, 0.5)
    images = torch.randn(3, 1, 8, 8) * 0.5 - 0.2
    noise = integrate(field, images, time_grid(60, start=0.0, end=1.0), sampler=sampler)
    back = integrate(field, noise, time_grid(60), sampler=sampler)
    assert torch.allclose(back, images, atol=1e-3 if sampler == "ab2" else 1e-4)
    # the inverted noise is standard normal-ish: the map is x ↦ (x − mu)/sigma
    assert torch.allclose(noise, (images + 0.2) / 0.5, atol=1e-3)


def test_time_grid_endpoints_monotone_and_shift():
    plain, shifted = time_grid(10), time_grid(10, shift=3.0)
    assert plain[0] == 1.0 and plain[-1] == 0.0 and len(plain) == 11
    assert all(a > b for a, b in zip(shifted[:-1], shifted[1:]))
    assert all(s >= p for s, p in zip(shifted, plain))  # a shift > 1 spends more steps at high noise
    assert time_grid(4, start=0.0, end=1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]


class PointOracle(nn.Module):
    """A 'network' that returns the exact velocity towards a fixed point, reading t from the timestep."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x, timesteps, mask, tokens):
        t = (timesteps / TIME_SCALE).view(-1, 1, 1, 1)
        target = self.target.repeat(len(x) // len(self.target), 1, 1, 1)  # guidance batches cond + uncond
        return (x - target) / t


def test_generator_with_an_exact_velocity_samples_the_target():
    model = flow_model()
    target = torch.rand(2, 1, 16, 16) * 2 - 1
    model.net = PointOracle(target)
    mask = torch.zeros(2, 4, 16, 16)
    mask[:, 0] = 1
    cond = Conditions(mask, torch.tensor([1, 2]), torch.tensor([1, 0]), torch.tensor([0, 3]))
    for guidance in (1.0, 2.5):  # the oracle ignores tokens, so guidance must not change the result
        out = model.sample(cond, sampler="euler", steps=5, guidance=guidance, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out, target, atol=1e-5)


def test_training_time_distributions():
    uniform = flow_model(t_sampling="uniform").sample_t(20000, torch.Generator().manual_seed(0), "cpu")
    logit = flow_model().sample_t(20000, torch.Generator().manual_seed(0), "cpu")
    assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(uniform.var() - 1 / 12) < 0.005
    assert abs(logit.mean() - 0.5) < 0.01 and logit.var() < uniform.var()  # concentrated mid-range
