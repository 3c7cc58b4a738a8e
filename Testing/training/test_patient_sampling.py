"""Patient-level Poisson sampling: no patient ever contributes more than the declared bound to a step."""

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from CMRSynthLib.training.patient_sampling import PoissonUnitSampler, UnitLoader


def units_from_counts(counts):
    """Patient i owns ``counts[i]`` consecutive dataset indices."""
    units, start = [], 0
    for n in counts:
        units.append(list(range(start, start + n)))
        start += n
    return units


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=12), rate=st.floats(0.05, 1.0),
       k=st.integers(1, 4), multiplicity=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_no_patient_exceeds_the_bound(counts, rate, k, multiplicity, seed):
    units = units_from_counts(counts)
    owner = {index: unit for unit, items in enumerate(units) for index in items}
    sampler = PoissonUnitSampler(units, sample_rate=rate, slices_per_unit=k, multiplicity=multiplicity)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(5):
        draw = sampler.draw(generator)
        assert len(draw.rows) == len(draw.groups)
        assert len(set(draw.units)) == len(draw.units)  # a unit enters a step at most once
        for row, group in zip(draw.rows, draw.groups):
            assert owner[row] == draw.units[group]  # every row is grouped under its own patient
        per_unit = Counter(owner[row] for row in draw.rows)
        for unit, rows in per_unit.items():
            distinct = Counter(row for row in draw.rows if owner[row] == unit)
            assert len(distinct) <= k and len(distinct) == min(k, counts[unit])  # ≤ k distinct slices ...
            assert set(distinct.values()) == {multiplicity}  # ... each repeated exactly K times
            assert rows == min(k, counts[unit]) * multiplicity
        assert sorted(set(draw.groups)) == list(range(len(draw.units)))


def test_inclusion_rate_is_q_per_patient_not_per_slice():
    # patient 0 has 20 slices, the others 1: Poisson on patients gives every patient the same rate
    units = units_from_counts([20] + [1] * 9)
    sampler = PoissonUnitSampler(units, sample_rate=0.3)
    generator = torch.Generator().manual_seed(0)
    hits = torch.zeros(10)
    draws = 2000
    for _ in range(draws):
        for unit in sampler.draw(generator).units:
            hits[unit] += 1
    rates = hits / draws
    assert (rates - 0.3).abs().max() < 0.04  # 4σ of a Bernoulli(0.3) mean over 2000 draws is 0.041
    assert abs(rates.mean() - 0.3) < 0.015


def test_draws_are_determined_by_the_generator_seed():
    sampler = PoissonUnitSampler(units_from_counts([3, 5, 2, 7]), sample_rate=0.5, slices_per_unit=2)
    first = [sampler.draw(torch.Generator().manual_seed(s)) for s in range(5)]
    again = [sampler.draw(torch.Generator().manual_seed(s)) for s in range(5)]
    assert first == again and len({d.rows for d in first}) > 1


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="sample_rate"):
        PoissonUnitSampler([[0]], sample_rate=0.0)
    with pytest.raises(ValueError, match="slices_per_unit"):
        PoissonUnitSampler([[0]], sample_rate=0.5, slices_per_unit=0)
    with pytest.raises(ValueError, match="at least one item"):
        PoissonUnitSampler([[0], []], sample_rate=0.5)


def test_loader_hands_groups_with_their_batch_and_an_empty_draw_as_a_step():
    """An empty draw is a step (None): a pass hands out exactly ``steps_per_epoch`` steps, empty ones included,
    as the accountant counts them (before: empty draws were extra steps the trainer did not count)."""
    dataset = [{"row": i} for i in range(6)]
    sampler = PoissonUnitSampler(units_from_counts([2, 2, 2]), sample_rate=0.4, slices_per_unit=2)
    draws, seeds = [], iter(range(1000))
    loader = UnitLoader(dataset, sampler, lambda items: [item["row"] for item in items], steps_per_epoch=40,
                        next_generator=lambda: torch.Generator().manual_seed(next(seeds)),
                        on_draw=lambda draw: draws.append(list(draw.rows)), stop=lambda: False)
    assert len(loader) == 40
    steps = list(loader)
    assert len(steps) == 40 and None in steps  # P(empty) = 0.6³ ≈ 0.22 per draw
    assert [batch for batch in steps if batch is not None] == draws and all(draws)


def test_loader_stops_when_told():
    steps = []
    loader = UnitLoader([{"row": 0}], PoissonUnitSampler([[0]], sample_rate=1.0), list, steps_per_epoch=10,
                        next_generator=torch.Generator, on_draw=lambda d: steps.append(1),
                        stop=lambda: len(steps) >= 3)
    assert len(list(loader)) == 3
