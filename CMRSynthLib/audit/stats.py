"""Exact ROC statistics and patient-level confidence intervals (bootstrap; half-sampling for distances).

Written with numpy/scipy because scikit-learn is not a dependency; every function is checked against
hand-computed values in ``Testing/audit/test_stats.py``.

Convention: a *higher* score means "more likely a member" (the positive class).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy.stats import rankdata

# Below this many patients (per class, for attacks) a bootstrap interval is reported with a warning.
MIN_PATIENTS_FOR_CI = 8


@dataclass(frozen=True)
class Estimate:
    """A number with how it was obtained: ``value`` and its ``level`` bootstrap interval [low, high]
    over ``n`` units (patients), or no interval (None) when it cannot be computed."""

    value: float
    low: float | None
    high: float | None
    n: int
    method: str
    level: float = 0.95
    unit: str = "patients"
    warning: str | None = None

    def to_dict(self) -> dict:
        return {key: _plain(value) for key, value in asdict(self).items()}


def _plain(value):
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_scores(scores, labels, *, columns: bool = False) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.ndim != (2 if columns else 1) or labels.shape != scores.shape[:1] or labels.ndim != 1:
        shape = "(N, K)" if columns else "(N,)"
        raise ValueError(f"scores must be {shape} and labels (N,) of equal length, got {scores.shape}, {labels.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    if labels.all() or not labels.any():
        raise ValueError("ROC statistics need both positives (members) and negatives (non-members)")
    return scores, labels


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact empirical ROC curve, one point per distinct score (ties move diagonally).

    Args:
        scores: ``(N,)`` attack scores, higher = member.
        labels: ``(N,)`` True for members.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(M + 1,)`` for M distinct scores; point ``m`` classifies
        ``score >= thresholds[m]`` as member. The first point is (0, 0) at threshold +inf.
    """
    scores, labels = _check_scores(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_run]
    fps = np.cumsum(~labels)[last_of_run]
    fpr = np.r_[0.0, fps / (~labels).sum()]
    tpr = np.r_[0.0, tps / labels.sum()]
    return fpr, tpr, np.r_[np.inf, scores[last_of_run]]


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(member score > non-member score) + ½ P(tie) (Mann–Whitney U / (P·N))."""
    scores, labels = _check_scores(scores, labels)
    return float(roc_aucs(scores[:, None], labels)[0])


def roc_aucs(scores, labels) -> np.ndarray:
    """:func:`roc_auc` of every column of ``scores`` ``(N, K)`` at once → ``(K,)`` (e.g. one per timestep)."""
    scores, labels = _check_scores(scores, labels, columns=True)
    ranks = rankdata(scores, axis=0)  # mid-ranks for ties
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return (ranks[labels].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def tpr_at_fpr(scores, labels, fpr: float) -> float:
    """The highest TPR among ROC points whose FPR is at most ``fpr`` (no interpolation).

    With N non-members the smallest non-zero FPR is 1/N: when ``fpr < 1/N`` this is the TPR at zero
    false positives, which is what an attacker who must never be wrong can reach.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    fprs, tprs, _ = roc_curve(scores, labels)
    return float(tprs[fprs <= fpr + 1e-12].max())


def bootstrap(statistic: Callable[[np.ndarray], float], n_units: int, *, strata=None, n_boot: int = 1000,
              level: float = 0.95, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic`` over resampled units (patients).

    Args:
        statistic: takes an ``(n_units,)`` integer array of unit indices drawn with replacement and returns
            a float (NaN when undefined for that draw; such draws are dropped).
        n_units: number of units.
        strata: optional ``(n_units,)`` labels; units are resampled within each stratum, so e.g. the
            number of members and non-members stays fixed.

    Returns:
        ``(low, high)``, or ``(None, None)`` when fewer than 2 units (per stratum) or no valid draw.
    """
    values = _resampled(statistic, n_units, strata, level=level, seed=seed, n_draws=n_boot,
                        draw=lambda rng, units: rng.choice(units, size=len(units), replace=True))
    if values is None:
        return None, None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def half_sample_interval(statistic: Callable[[np.ndarray], float], n_units: int, *, estimate: float,
                         strata=None, n_draws: int = 200, level: float = 0.95,
                         seed: int = 0) -> tuple[float | None, float | None]:
    """Interval of a statistic that repeated units would bias (a Fréchet or kernel distance), by half-sampling.

    Each draw keeps half of the units of every stratum (rounded down), WITHOUT replacement: no unit is counted
    twice. For a smooth statistic the variance of a b-of-n subsample about its mean scales as 1/b − 1/n, which is
    1/n at b = n/2: the half-samples' spread is the full sample's (McCarthy 1969, half-sampling; Politis & Romano
    1994, subsampling). Rounding an odd count down only widens the interval. The interval is ``estimate`` plus
    the central ``level`` range of the half-sample values about THEIR mean: that removes the bias a smaller
    sample gives the statistic (a Fréchet distance grows as the sets shrink), so it is an interval about the
    estimate. A bootstrap with replacement instead duplicates units, which inflates such distances so much that
    its interval lay entirely above the estimate.

    When both sets come from one distribution a distance shrinks like 1/n, not 1/√n, and the half-samples'
    spread overstates the full sample's (about twice in ``Testing/audit/test_fidelity.py``): the interval errs
    wide, never narrow.

    Args:
        statistic: takes an integer array of distinct unit indices and returns a float (NaN when undefined
            for that draw; such draws are dropped).
        n_units: number of units (patients).
        estimate: the statistic on all units.
        strata: optional ``(n_units,)`` labels; each draw takes half of every stratum (e.g. of each set).

    Returns:
        ``(low, high)``, or ``(None, None)`` when a stratum has fewer than 2 units or no draw is valid.
    """
    values = _resampled(statistic, n_units, strata, level=level, seed=seed, n_draws=n_draws,
                        draw=lambda rng, units: rng.choice(units, size=len(units) // 2, replace=False))
    if values is None:
        return None, None
    alpha = (1.0 - level) / 2.0
    low, high = estimate + np.quantile(values - values.mean(), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resampled(statistic: Callable[[np.ndarray], float], n_units: int, strata, *, level: float, seed: int,
               n_draws: int, draw: Callable) -> np.ndarray | None:
    """The finite values of ``statistic`` over ``n_draws`` resamples, each made of ``draw(rng, units)`` of every
    stratum's units; None when a stratum has fewer than 2 units or no draw gives a value."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = _strata(n_units, strata)
    if n_units == 0 or min(len(g) for g in groups) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(np.concatenate([draw(rng, units) for units in groups])) for _ in range(n_draws)],
                      dtype=float)
    values = values[np.isfinite(values)]
    return values if values.size else None


def _strata(n_units: int, strata) -> list[np.ndarray]:
    """Unit indices of each stratum (one stratum when ``strata`` is None)."""
    strata = np.zeros(n_units, dtype=int) if strata is None else np.asarray(strata)
    if strata.shape != (n_units,):
        raise ValueError(f"strata must have shape ({n_units},), got {strata.shape}")
    return [np.flatnonzero(strata == s) for s in np.unique(strata)]


def small_sample_warning(n: int, what: str = "patients") -> str | None:
    if n < 2:
        return f"only {n} {what}: no confidence interval can be computed"
    if n < MIN_PATIENTS_FOR_CI:
        return f"only {n} {what}: the bootstrap interval is unreliable below {MIN_PATIENTS_FOR_CI}"
    return None


def mean_estimate(values, *, method: str, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of per-patient ``values`` ``(P,)`` (NaN = undefined for that patient, dropped) with a bootstrap CI."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Estimate(float("nan"), None, None, 0, method, warning="no patient with a defined value")
    low, high = bootstrap(lambda idx: values[idx].mean(), len(values), n_boot=n_boot, seed=seed)
    return Estimate(float(values.mean()), low, high, int(values.size), method,
                    warning=small_sample_warning(values.size))


def auc_estimate(scores, labels, *, method: str, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """ROC AUC of per-patient scores with a bootstrap CI resampling members and non-members separately."""
    scores, labels = _check_scores(scores, labels)
    low, high = bootstrap(lambda idx: roc_auc(scores[idx], labels[idx]), len(scores), strata=labels,
                          n_boot=n_boot, seed=seed)
    n_small = int(min(labels.sum(), (~labels).sum()))
    return Estimate(roc_auc(scores, labels), low, high, len(scores), method,
                    warning=small_sample_warning(n_small, "patients per class"))


NOT_MEASURABLE = "not measurable"


def tpr_measurable(fpr: float, non_members: int) -> bool:
    """Whether an FPR of ``fpr`` can be observed at all: one false positive among ``non_members`` is 1/N."""
    return fpr * non_members >= 1 - 1e-9


def tpr_estimate(scores, labels, fpr: float, *, method: str, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """TPR at ``fpr`` with a bootstrap CI (members and non-members resampled separately)."""
    scores, labels = _check_scores(scores, labels)
    low, high = bootstrap(lambda idx: tpr_at_fpr(scores[idx], labels[idx], fpr), len(scores), strata=labels,
                          n_boot=n_boot, seed=seed)
    n_neg = int((~labels).sum())
    note = small_sample_warning(int(min(labels.sum(), n_neg)), "patients per class")
    if not tpr_measurable(fpr, n_neg):
        zero_fp = (f"{NOT_MEASURABLE} at {fpr:.1%} FPR with {n_neg} non-members (needs at least "
                   f"{math.ceil(1 / fpr - 1e-9)}): this is the TPR at zero false positives")
        note = f"{zero_fp}; {note}" if note else zero_fp
    return Estimate(tpr_at_fpr(scores, labels, fpr), low, high, len(scores), method, warning=note)
