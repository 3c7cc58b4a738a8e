"""The classifier two-sample test: it spots an obviously different synthetic set, cannot tell two halves of the
same real data apart, keeps every patient in one half, and refuses too few patients in words."""

import numpy as np
import pytest

from audit_helpers import make_slices
from CMRSynthLib.audit.discriminability import (DiscriminatorConfig, classifier_two_sample_test, split_patients,
                                                verdict)
from CMRSynthLib.audit.stats import Estimate
from CMRSynthLib.errors import InputError

TINY = DiscriminatorConfig.quick()


def test_an_obviously_different_synthetic_set_is_told_apart():
    real = make_slices(12, 4, seed=0)
    other = make_slices(12, 4, seed=1)  # the same patients' masks, other noise: then strong noise on top
    noisy = other.with_images(np.clip(other.images + np.random.default_rng(2).normal(0, 0.3, other.images.shape),
                                      -1, 1))
    result = classifier_two_sample_test(real, noisy, TINY, n_boot=200)
    auc = result["auc"]
    assert auc.value > 0.95 and auc.low > 0.5 and auc.n == 12
    assert result["accuracy"].value > 0.9
    assert verdict(auc)[0] == "poor"
    blank = other.with_images(np.full_like(other.images, -1.0))  # a generator that paints nothing
    assert classifier_two_sample_test(real, blank, TINY, n_boot=200)["auc"].low > 0.5


def test_two_halves_of_the_same_real_images_are_indistinguishable():
    every = make_slices(16, 4, seed=3)
    first = np.tile([True, True, False, False], 16)  # per patient: slices 0-1 "real", 2-3 "synthetic"
    result = classifier_two_sample_test(every.take(first), every.take(~first), TINY, n_boot=200)
    auc = result["auc"]
    assert auc.low <= 0.5 <= auc.high
    assert verdict(auc)[0] == "good"
    assert [h["slices"] for h in result["halves"]] == [{"real": 16, "synthetic": 16}] * 2


def test_halves_are_patient_disjoint_and_keep_each_patients_synthetic_slices():
    real = make_slices(10, 3, seed=0, vendors=("Siemens", "Philips", "GE"))
    synthetic = make_slices(10, 2, seed=1, vendors=("Siemens", "Philips", "GE"))  # fewer: balancing
    result = classifier_two_sample_test(real, synthetic, TINY, n_boot=50)
    a, b = (set(h["patients"]) for h in result["halves"])
    assert not a & b and a | b == set(real.patient_ids()) and len(a) == len(b) == 5
    for half in result["halves"]:  # balanced within the half, from its own patients' slices only
        assert half["slices"]["real"] == half["slices"]["synthetic"] == 2 * len(half["patients"])
    strata = real.patient_strata()
    halves = split_patients(strata, seed=4)
    vendors = [sorted(strata[p][0] for p in half) for half in halves]
    assert all(abs(vendors[0].count(v) - vendors[1].count(v)) <= 1 for v in ("Siemens", "Philips", "GE"))
    assert split_patients(strata, seed=4) == halves  # deterministic


def test_the_same_call_gives_the_same_numbers():
    real, synthetic = make_slices(8, 2, seed=0), make_slices(8, 2, seed=1, offset=0.05)
    first = classifier_two_sample_test(real, synthetic, TINY, n_boot=50)
    again = classifier_two_sample_test(real, synthetic, TINY, n_boot=50)
    assert first["auc"] == again["auc"] and first["halves"] == again["halves"]


def test_too_few_patients_or_a_missing_class_are_refused_in_words():
    with pytest.raises(InputError, match="at least 4 patients .2 per half.*got 3"):
        classifier_two_sample_test(make_slices(3, 2), make_slices(3, 2, seed=1), TINY)
    real = make_slices(4, 2)
    with pytest.raises(InputError, match="has no real or no synthetic slices"):
        classifier_two_sample_test(real, real.take(np.zeros(len(real), bool)), TINY)
    with pytest.raises(InputError, match="real slices are .32, 32. pixels but synthetic ones .16, 16."):
        classifier_two_sample_test(make_slices(4, 2), make_slices(4, 2, size=16), TINY)


@pytest.mark.parametrize("value, low, high, n, level", [
    (0.72, 0.45, 0.95, 12, "good"),   # the interval includes chance
    (0.72, 0.45, 0.95, 6, "fair"),    # ... but too few patients to call it indistinguishable
    (0.58, 0.52, 0.64, 12, "good"),   # above chance, below 0.6
    (0.70, 0.60, 0.80, 12, "fair"),
    (0.85, 0.70, 0.95, 12, "poor"),
])
def test_verdict_rule(value, low, high, n, level):
    assert verdict(Estimate(value, low, high, n, "test"))[0] == level
