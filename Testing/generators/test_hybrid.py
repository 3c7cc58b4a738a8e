"""The hybrid's hand-over from the flow to the DDPM: equal signal-to-noise ratio, the refinement timesteps,
exact reconstruction when both parts are perfect oracles, and one progress count over both parts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.generators.flow import TIME_SCALE
from CMRSynthLib.generators.hybrid import HybridConfig, HybridGenerator

VOCABULARY = Vocabulary(vendors=("A", "B"))


def hybrid(**overrides) -> HybridGenerator:
    torch.manual_seed(0)
    return HybridGenerator(HybridConfig.preset("tiny", spatial_dims=2, image_size=8, vocabulary=VOCABULARY,
                                               **overrides))


def conditions(batch: int) -> Conditions:
    mask = torch.zeros(batch, 4, 8, 8)
    mask[:, 0] = 1
    tokens = torch.ones(batch, dtype=torch.long)
    return Conditions(mask, tokens, tokens, tokens)


@pytest.mark.parametrize("t_switch", [0.1, 0.3, 0.6])
def test_switch_matches_the_signal_to_noise_ratio(t_switch):
    model = hybrid(t_switch=t_switch)
    r, k = model.switch_point()
    abar = model.ddpm_model.alphas_cumprod
    snr_flow = ((1 - t_switch) / t_switch) ** 2
    snr_ddpm = abar / (1 - abar)
    assert abs(torch.log(snr_ddpm[k] / snr_flow)) < 0.02  # the nearest of 1000 timesteps
    # x_t / r = ((1 − t)/r)·x_0 + (t/r)·ε must be the DDPM state √ᾱ_k·x_0 + √(1 − ᾱ_k)·ε
    assert abs((1 - t_switch) / r - abar[k].sqrt()) < 0.01
    assert abs(t_switch / r - (1 - abar[k]).sqrt()) < 0.01


def test_refinement_timesteps_are_strictly_decreasing_to_zero():
    model = hybrid(refine_steps=5)
    assert model.refine_timesteps(200) == [200, 150, 100, 50, 0]
    assert model.refine_timesteps(2) == [2, 1, 0]  # never a repeated timestep


class FlowOracle(nn.Module):
    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, timesteps, mask, tokens):
        return (x - self.x0) / (timesteps / TIME_SCALE).view(-1, 1, 1, 1)


class EpsOracle(nn.Module):
    def __init__(self, x0, abar):
        super().__init__()
        self.x0, self.abar = x0, abar

    def forward(self, x, timesteps, mask, tokens):
        a = self.abar[timesteps.long()].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def test_perfect_parts_reconstruct_the_image_and_report_one_progress():
    model = hybrid(t_switch=0.4, refine_steps=4)
    x0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    model.flow_model.net = FlowOracle(x0)
    model.ddpm_model.net = EpsOracle(x0, model.ddpm_model.alphas_cumprod)
    seen = []
    out = model.sample(conditions(2), sampler="euler", steps=3, generator=torch.Generator().manual_seed(0),
                       callback=lambda i, n: seen.append((i, n)))
    # the flow part lands exactly on the path; the DDPM part sees a slightly different SNR (nearest timestep),
    # which a perfect ε-oracle absorbs: its x_0 estimate is exact whatever the noise level
    assert torch.allclose(out, x0, atol=1e-4)
    assert seen == [(i, 7) for i in range(1, 8)]


def test_loss_is_the_sum_of_its_parts():
    model = hybrid()
    images, cond = torch.rand(2, 1, 8, 8) * 2 - 1, conditions(2)
    t, noise = torch.tensor([0.2, 0.7]), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        parts = model.flow_model.loss_at(images, cond, t, noise) + model.ddpm_model.loss_at(images, cond, t, noise)
        assert torch.equal(model.loss_at(images, cond, t, noise), parts)
