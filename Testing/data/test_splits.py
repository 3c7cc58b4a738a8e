"""Splits by patient: a deterministic partition of the patients, stratified on request."""

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from CMRSynthLib.data.splits import Split, part_counts, split_patients
from CMRSynthLib.errors import InputError

ids = st.lists(st.text("abcdefghij0123456789", min_size=1, max_size=6), min_size=3, max_size=60, unique=True)
fraction_sets = st.sampled_from([(0.7, 0.1, 0.2), (0.8, 0.0, 0.2), (1 / 3, 1 / 3, 1 / 3), (0.5, 0.25, 0.25),
                                 (1.0, 0.0, 0.0)])


@settings(max_examples=150, deadline=None)
@given(patients=ids, fractions=fraction_sets, seed=st.integers(0, 2 ** 32 - 1), with_strata=st.booleans())
def test_split_is_a_partition_with_the_right_counts(patients, fractions, seed, with_strata):
    strata = {p: "ABC"[len(p) % 3] for p in patients} if with_strata else None
    split = split_patients(patients, fractions=fractions, seed=seed, strata=strata)
    parts = [split.train, split.validation, split.holdout]
    assert sorted(p for part in parts for p in part) == sorted(patients)  # everyone exactly once
    counts = [len(part) for part in parts]
    assert counts == part_counts(len(patients), fractions)
    for fraction, count in zip(fractions, counts):
        assert (count >= 1) == (fraction > 0)
        assert abs(count - fraction * len(patients)) < 1.0 + (fraction > 0)
    assert split == split_patients(list(reversed(patients)), fractions=fractions, seed=seed, strata=strata)


def test_cases_of_one_patient_stay_together():
    cases = [(f"p{i:03d}", phase) for i in range(30) for phase in ("ED", "ES")]
    split = split_patients(sorted({patient for patient, _ in cases}), seed=3)
    part_of = {p: name for name, part in split.to_dict().items() for p in part}
    for patient in {patient for patient, _ in cases}:
        assert sum(patient in part for part in split.to_dict().values()) == 1
    assert {part_of[patient] for patient, _ in cases} == {"train", "validation", "holdout"}


def test_seed_decides_the_split():
    patients = [f"p{i:03d}" for i in range(40)]
    assert split_patients(patients, seed=1) == split_patients(patients, seed=1)
    assert split_patients(patients, seed=1) != split_patients(patients, seed=2)


def test_stratification_keeps_vendor_proportions():
    vendors = ["Siemens"] * 40 + ["Philips"] * 30 + ["GE"] * 20 + ["Canon"] * 10
    strata = {f"p{i:03d}": vendor for i, vendor in enumerate(vendors)}
    for seed in range(5):
        split = split_patients(strata, fractions=(0.6, 0.2, 0.2), seed=seed, strata=strata)
        for name, part in split.to_dict().items():
            share = Counter(strata[p] for p in part)
            fraction = {"train": 0.6, "validation": 0.2, "holdout": 0.2}[name]
            for vendor, total in Counter(vendors).items():
                assert abs(share[vendor] - fraction * total) <= 1.0 + 1e-9


def test_unstratified_split_can_unbalance_vendors():
    """The stratification test above can fail: a plain split of the same cohort drifts for some seed."""
    vendors = ["Siemens"] * 40 + ["Philips"] * 30 + ["GE"] * 20 + ["Canon"] * 10
    strata = {f"p{i:03d}": vendor for i, vendor in enumerate(vendors)}
    drift = 0.0
    for seed in range(5):
        holdout = split_patients(strata, fractions=(0.6, 0.2, 0.2), seed=seed).holdout
        share = Counter(strata[p] for p in holdout)
        drift = max(drift, max(abs(share[v] - 0.2 * t) for v, t in Counter(vendors).items()))
    assert drift > 1.0


def test_split_round_trips_through_json():
    split = split_patients([f"p{i}" for i in range(12)], seed=5)
    assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    with pytest.raises(InputError, match="unknown split keys"):
        Split.from_dict({**split.to_dict(), "test": []})
    with pytest.raises(ValueError, match="disjoint"):
        Split(("a", "b"), ("b",), ())


@pytest.mark.parametrize("patients, kwargs, message", [
    (["a", "b", "a", "c"], {}, "unique"),
    (["a", "b", "c"], {"fractions": (0.5, 0.2, 0.2)}, "summing to 1"),
    (["a", "b", "c"], {"fractions": (1.2, -0.2, 0.0)}, "non-negative"),
    (["a", "b", "c"], {"fractions": (0.5, 0.5)}, "3 non-negative"),
    (["a", "b"], {}, "at least 3"),
    ([], {"fractions": (1.0, 0.0, 0.0)}, "at least 1"),
    (["a", "b", "c"], {"strata": {"a": "x", "b": "y"}}, "no stratum"),
])
def test_bad_requests_are_refused(patients, kwargs, message):
    with pytest.raises(InputError, match=message):
        split_patients(patients, **kwargs)


def test_smallest_possible_cohort_fills_every_part():
    split = split_patients(["a", "b", "c"], fractions=(0.9, 0.05, 0.05))
    assert len(split.train) == len(split.validation) == len(split.holdout) == 1
