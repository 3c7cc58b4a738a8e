"""The stage-1 anatomy generator: label maps in and out, vendor-free, mask-free network, and a tiny model that
learns which anatomy goes with which pathology group."""

from __future__ import annotations

import torch

from CMRSynthLib.generators.anatomy import AnatomyConfig, AnatomyGenerator
from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.generators.flow import FlowConfig, FlowGenerator

VOCABULARY = Vocabulary(vendors=("A", "B"))


def anatomy(**overrides) -> AnatomyGenerator:
    torch.manual_seed(0)
    return AnatomyGenerator(AnatomyConfig.preset("tiny", spatial_dims=2, image_size=32, vocabulary=VOCABULARY,
                                                 **overrides))


def two_anatomies() -> tuple[torch.Tensor, Conditions]:
    """Group 1: a small LV ring on the left; group 2: a large one on the right with an RV."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    for b, (cx, r) in enumerate([(11, 4), (19, 7)]):
        d = ((yy - 16) ** 2 + (xx - cx) ** 2).float().sqrt()
        labels[b][d <= r + 3] = 2
        labels[b][d <= r] = 1
    labels[1][(yy - 16).abs().le(5) & (xx - 4).abs().le(2)] = 3
    mask = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1).float()
    return labels, Conditions(mask, vendor=torch.tensor([1, 2]), phase=torch.tensor([1, 1]), group=torch.tensor([1, 2]))


def test_label_maps_round_trip_through_the_flow_space():
    model = anatomy()
    labels, cond = two_anatomies()
    x0 = model.encode(torch.zeros(2, 1, 32, 32), cond)
    assert set(x0.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(model.decode(x0), cond.mask)
    assert model.noise_like(torch.zeros(2, 1, 32, 32)).shape == (2, 4, 32, 32)


def test_vendor_and_images_do_not_matter():
    model = anatomy()
    labels, cond = two_anatomies()
    t, noise = torch.tensor([0.3, 0.7]), torch.randn(2, 4, 32, 32)
    other_vendor = Conditions(cond.mask, torch.tensor([2, 0]), cond.phase, cond.group)
    with torch.no_grad():
        first = model.loss_at(torch.zeros(2, 1, 32, 32), cond, t, noise)
        assert torch.equal(first, model.loss_at(torch.rand(2, 1, 32, 32), other_vendor, t, noise))


def test_placeholder_sets_only_the_shape():
    model = anatomy()
    _, cond = two_anatomies()
    placeholder = model.placeholder(2, phase=1, group=2, spatial=(32, 32))
    assert placeholder.mask.shape == (2, 4, 32, 32) and placeholder.mask[:, 0].all()
    assert placeholder.vendor.tolist() == [0, 0] and placeholder.group.tolist() == [2, 2]
    seeded = torch.Generator().manual_seed
    a = model.sample(placeholder, steps=2, generator=seeded(0))
    b = model.sample(Conditions(cond.mask, placeholder.vendor, placeholder.phase, placeholder.group), steps=2,
                     generator=seeded(0))
    assert torch.equal(a, b)


def test_tiny_model_learns_which_anatomy_belongs_to_which_group():
    """After 120 steps on two masks (group 1: small LV, no RV; group 2: large LV, an RV) the model prefers
    each mask under its own group, and its samples carry the groups' difference in LV and RV size."""
    model = anatomy(t_sampling="uniform").train()
    labels, cond = two_anatomies()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(0)
    for _ in range(120):
        optimiser.zero_grad()
        model.loss(torch.zeros(2, 1, 32, 32), cond, generator=rng).mean().backward()
        optimiser.step()
    model.eval()
    t, noise = torch.tensor([0.3, 0.6]), torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    swapped = Conditions(cond.mask, cond.vendor, cond.phase, cond.group.flip(0))
    with torch.no_grad():
        own = model.loss_at(torch.zeros(2, 1, 32, 32), cond, t, noise)
        other = model.loss_at(torch.zeros(2, 1, 32, 32), swapped, t, noise)
    assert torch.all(other > 1.1 * own), (own, other)
    made = {g: model.sample_labels(4, phase=1, group=g, steps=6, generator=torch.Generator().manual_seed(g))
            for g in (1, 2)}
    assert made[1].shape == (4, 32, 32) and made[1].dtype == torch.uint8 and int(made[1].max()) <= 3
    area = {(g, s): (made[g] == s).sum((1, 2)).float().mean() for g in (1, 2) for s in (1, 3)}
    assert area[2, 1] > 2 * area[1, 1] and area[2, 3] > area[1, 3], area


def test_new_anatomies_condition_a_stage_two_model():
    stage1 = anatomy()
    stage2 = FlowGenerator(FlowConfig.preset("tiny", spatial_dims=2, image_size=32, vocabulary=VOCABULARY))
    masks = stage1.sample(stage1.placeholder(2, group=3), steps=2, generator=torch.Generator().manual_seed(0))
    cond = Conditions(masks, torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([3, 3]))
    assert stage2.sample(cond, steps=2).shape == (2, 1, 32, 32)
