"""ROC, AUC, TPR@FPR against hand-computed values; bootstrap intervals behave as intervals should."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from CMRSynthLib.audit.stats import (auc_estimate, bootstrap, half_sample_interval, mean_estimate, roc_auc, roc_aucs,
                                     roc_curve, tpr_at_fpr, tpr_estimate)

SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4])
LABELS = np.array([1, 1, 0, 1, 0, 0], dtype=bool)


def test_roc_curve_by_hand():
    fpr, tpr, thresholds = roc_curve(SCORES, LABELS)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.55, 0.4])


def test_auc_and_tpr_by_hand():
    # members 0.9, 0.8, 0.6 beat non-members 0.7, 0.55, 0.4 in 3 + 3 + 2 of 9 pairs
    assert roc_auc(SCORES, LABELS) == pytest.approx(8 / 9)
    assert tpr_at_fpr(SCORES, LABELS, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(SCORES, LABELS, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(SCORES, LABELS, 0.34) == pytest.approx(1.0)


def test_ties_count_half():
    assert roc_auc([1.0, 1.0], [True, False]) == 0.5
    fpr, tpr, _ = roc_curve([1.0, 1.0, 0.0], [True, False, False])
    np.testing.assert_allclose(fpr, [0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1, 1])
    assert roc_auc([0.2, 0.1], [False, True]) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_auc_equals_trapezoid_area_of_the_curve(pairs):
    scores = np.array([p[0] for p in pairs], dtype=float)
    labels = np.array([p[1] for p in pairs])
    if labels.all() or not labels.any():
        with pytest.raises(ValueError):
            roc_auc(scores, labels)
        return
    fpr, tpr, _ = roc_curve(scores, labels)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert roc_auc(scores, labels) == pytest.approx(np.trapezoid(tpr, fpr))


def test_bad_scores_refused():
    with pytest.raises(ValueError, match="both"):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([np.nan, 0.2], [True, False])


def test_bootstrap_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (10, 400):
        est = mean_estimate(rng.normal(0.8, 0.1, size=n), method="mean", n_boot=500)
        assert est.low <= est.value <= est.high
        widths.append(est.high - est.low)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(n): sqrt(40) ≈ 6.3
    assert mean_estimate(rng.normal(size=4), method="mean").warning  # few patients → warned


def test_bootstrap_keeps_strata_sizes_and_needs_two_units():
    seen = []
    bootstrap(lambda idx: seen.append(idx) or 0.0, 5, strata=[0, 0, 1, 1, 1], n_boot=20)
    assert all(np.sum(d < 2) == 2 and np.sum(d >= 2) == 3 for d in seen)
    assert bootstrap(lambda idx: 0.0, 1) == (None, None)


def test_auc_and_tpr_estimates():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    scores = rng.normal(size=60) + 1.5 * labels
    auc = auc_estimate(scores, labels, method="test", n_boot=300)
    assert auc.low <= auc.value <= auc.high and 0.7 < auc.value < 1.0 and auc.n == 60
    tpr = tpr_estimate(scores, labels, 0.001, method="test", n_boot=100)
    assert tpr.warning.startswith("not measurable at 0.1% FPR with 30 non-members (needs at least 1000)")
    assert "zero false positives" in tpr.warning
    assert tpr_estimate(np.r_[scores, np.zeros(70)], np.r_[labels, np.zeros(70, bool)], 0.01, method="test",
                        n_boot=20).warning is None  # 100 non-members: 1% FPR is one of them
    assert tpr.to_dict()["value"] == tpr.value


def test_half_samples_take_half_of_each_stratum_without_repeats():
    seen = []
    low, high = half_sample_interval(lambda idx: seen.append(idx) or float(idx.sum()), 9, estimate=20.0,
                                     strata=[0] * 4 + [1] * 5, n_draws=50)
    assert all(len(set(d.tolist())) == len(d) == 4 and np.sum(d < 4) == 2 for d in seen)
    assert low < 20.0 < high  # about the estimate, whatever the half-samples' own level
    assert half_sample_interval(lambda idx: 0.0, 3, estimate=0.0, strata=[0, 0, 1]) == (None, None)


def test_column_aucs_are_the_aucs_of_each_column():
    rng = np.random.default_rng(3)
    scores, labels = rng.normal(size=(12, 4)).round(1), np.arange(12) % 3 == 0
    np.testing.assert_allclose(roc_aucs(scores, labels), [roc_auc(scores[:, k], labels) for k in range(4)])
