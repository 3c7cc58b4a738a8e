"""Membership inference: can an adversary tell the patients a generator was trained on from others?

Three attacks, all through the generator interface's ``loss_at(images, cond, t, noise) -> (B,)``:

(a) **loss threshold** (Matsumoto et al. 2023; Carlini et al. 2023): the denoising loss at noise level t
    with fresh Gaussian noise; members have lower loss.
(b) **PIA-style proximal noise** (Kong et al. 2024, "An efficient membership inference attack for the
    diffusion model by proximal initialization"): the loss at t with the noise the model itself
    attributes to the clean image instead of fresh noise. The interface has no "predict noise" call, so
    we recover it from ``loss_at`` at t = 0: there the loss is an isotropic quadratic c·‖ε − ε*‖² in the
    noise ε (the network's input does not depend on ε at t = 0), hence c = ‖∇L‖²/(4L) and
    ε* = ε − ∇L/(2c), one gradient evaluation, independent of the family's loss scaling.
(c) **learned attack on error features** (as the SynCMRI benchmark does with logistic regression on error
    features): L2-regularised logistic regression on the log-losses of (a) and (b) at every t, fitted on
    the calibration patients' slices.

Protocol (DESIGN §5):

1. **Balance.** Members and non-members are subsampled so that both have the same make-up by (vendor, group):
   in every stratum the same ratio p : q of members to non-members, the ratio that keeps the most patients
   (:func:`balance`). Only what balance requires is dropped: 12 members and 6 non-members spread alike over
   vendors are all kept, not 6 + 6.
2. **Split.** The balanced patients are split, stratified, into a CALIBRATION half (choose the timestep, the
   direction and the threshold, fit (c), choose the headline attack) and an EVALUATION half (report).
3. **Choose without looking twice.** Each attack's calibration AUC, by which the headline is chosen, is
   *cross-fitted*: the calibration half is dealt into k folds by patient, and every calibration patient is
   scored by the attack as chosen (timestep and direction) or fitted (c) on the other folds, its score
   standardised by those folds. Fitting (c) on the very patients it is scored on made it win the headline
   almost always (in a simulation without any membership signal: 100% of the time, calibration AUC 0.96).
   Ties (several timesteps, or attacks, at calibration AUC 1.0 on a few patients) go to the choice whose
   members and non-members lie further apart (standardised mean difference, :func:`separation`): the AUC
   saturates, the distance does not, and the first timestep of a tie reported 0.75 where the next ones
   reached 1.0 on the same evaluation patients.
4. **Read against a control.** The same pipeline (steps 2–3) runs between two groups of NON-members dealt
   alike by (vendor, group), one labelled "members" (:func:`non_member_control`). No patient of either group
   was trained on, so its headline AUC is what the pipeline finds without membership: selection, small
   samples and any difference between patient groups (Dubiński et al. 2024, "Towards more realistic
   membership inference attacks on large diffusion models", on non-member sets that differ from members).
   The member AUC is read against it.

The direction matters: for a memorising flow-matching model the proximal noise of a member is *small*, so its
loss along the path is higher, the reverse of the DDPM intuition; an adversary with calibration data learns
that, and so does the audit. Scores are per patient: the mean over the patient's slices. Higher score =
"member". Per-timestep AUCs are reported on both halves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from CMRSynthLib.audit.slices import Slices, to_conditions
from CMRSynthLib.audit.stats import (auc_estimate, roc_auc, roc_aucs, roc_curve, small_sample_warning,
                                     tpr_estimate)
from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import FrozenConfig

FPRS = (0.01, 0.001)
MIN_PER_HALF = 2  # members and non-members in each of the calibration and evaluation halves
FOLDS = 5  # cross-fitting folds inside the calibration half (fewer when a class has fewer patients)
HEADLINE_RULE = ("the headline attack is the one with the highest cross-fitted AUC on the calibration patients "
                 "(each scored by the attack as chosen or fitted on the other calibration patients; ties go to "
                 "the larger separation of members from non-members), so its evaluation AUC, interval and "
                 "p-value need no correction for the choice")
CONTROL_RULE = ("the same pipeline between two groups of non-members dealt alike by vendor and group, one labelled "
                "members: no patient of either was trained on, so its headline AUC is what the attacks find "
                "without membership, the yardstick for the member AUC")


@dataclass(frozen=True)
class AttackConfig(FrozenConfig):
    """Noise levels t ∈ (0, 1] probed, noise draws per slice and level, batch size, seed, bootstrap draws."""

    timesteps: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    draws: int = 4
    batch_size: int = 32
    seed: int = 0
    n_boot: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(float(t) for t in self.timesteps))
        if not self.timesteps or not all(0.0 < t <= 1.0 for t in self.timesteps):
            raise ValueError(f"timesteps must be noise levels in (0, 1], got {self.timesteps}")
        if self.draws < 1 or self.batch_size < 1:
            raise ValueError(f"draws and batch_size must be positive, got {self.draws}, {self.batch_size}")


    @classmethod
    def quick(cls) -> "AttackConfig":
        return cls(timesteps=(0.05, 0.1, 0.2, 0.4, 0.7), draws=2, n_boot=300)


# -- patients: balance and split -----------------------------------------------------------------

def _strata_of(patients: dict[str, tuple], key) -> dict[tuple, list[str]]:
    by_stratum = defaultdict(list)
    for p in sorted(patients):
        by_stratum[key(patients[p])].append(p)
    return by_stratum


def _best_ratio(counts: list[tuple[int, int]]) -> tuple[int, int]:
    """The ratio p : q (coprime) of members to non-members kept in every stratum that keeps the most patients.

    ``counts`` are (members, non-members) per shared stratum; stratum s then keeps p·k_s members and q·k_s
    non-members with k_s = min(m_s // p, n_s // q). Ties go to the more even split (a tighter AUC interval).
    """
    def kept(ratio):
        p, q = ratio
        k = sum(min(m // p, n // q) for m, n in counts)
        return (p + q) * k, min(p, q) * k

    ratios = [(p, q) for p in range(1, max(m for m, _ in counts) + 1)
              for q in range(1, max(n for _, n in counts) + 1) if math.gcd(p, q) == 1]
    return max(ratios, key=kept)


def _balanced(members: dict[str, tuple], nonmembers: dict[str, tuple], key, rng) -> tuple[list, list]:
    by_m, by_n = _strata_of(members, key), _strata_of(nonmembers, key)
    shared = sorted(set(by_m) & set(by_n))
    if not shared:
        return [], []
    p, q = _best_ratio([(len(by_m[s]), len(by_n[s])) for s in shared])
    kept_m, kept_n = [], []
    for stratum in shared:
        k = min(len(by_m[stratum]) // p, len(by_n[stratum]) // q)
        kept_m += sorted(rng.choice(by_m[stratum], size=p * k, replace=False).tolist())
        kept_n += sorted(rng.choice(by_n[stratum], size=q * k, replace=False).tolist())
    return kept_m, kept_n


def balance(members: dict[str, tuple], nonmembers: dict[str, tuple], *, seed: int = 0,
            enough: int = 4) -> tuple[list, list, str]:
    """Subsample members and non-members (patient → (vendor, group)) to the same make-up by stratum.

    Every shared stratum keeps members and non-members in one common ratio p : q, the ratio that keeps the most
    patients, so a side is subsampled only as far as balance requires. Balances by (vendor, group) when that
    keeps at least ``enough`` patients per side, else by vendor alone when that does, else by whichever keeps
    more (at least 2 per side); with fewer, no balancing. The note says which was done and how many were kept.
    """
    options = []
    for key_name, key in (("vendor and group", lambda s: s), ("vendor", lambda s: s[:1])):
        kept_m, kept_n = _balanced(members, nonmembers, key, np.random.default_rng(seed))
        options.append((key_name, kept_m, kept_n))
    chosen = next((o for o in options if min(len(o[1]), len(o[2])) >= enough),
                  max(options, key=lambda o: (min(len(o[1]), len(o[2])), len(o[1]) + len(o[2]))))
    key_name, kept_m, kept_n = chosen
    if min(len(kept_m), len(kept_n)) >= 2:
        note = (f"balanced by {key_name}: {len(kept_m)} of {len(members)} members and {len(kept_n)} of "
                f"{len(nonmembers)} non-members kept, in the same proportions per {key_name} (random subsample, "
                f"seed {seed})")
        return kept_m, kept_n, note
    note = (f"NOT balanced: members and non-members share too few vendors; all {len(members)} members and "
            f"{len(nonmembers)} non-members used, so the attack may detect vendor differences, not membership")
    return sorted(members), sorted(nonmembers), note


def _deal(patients: list[str], strata: dict[str, tuple], parts: int, rng) -> dict[str, int]:
    """Deal ``patients`` in turn into ``parts`` parts, stratum by stratum (random order within each), so that
    every part gets each stratum's patients as evenly as possible. Returns patient → part."""
    by_stratum = defaultdict(list)
    for p in sorted(patients):
        by_stratum[strata[p]].append(p)
    part, turn = {}, 0
    for stratum in sorted(by_stratum):
        for p in rng.permutation(by_stratum[stratum]).tolist():
            part[p] = turn % parts
            turn += 1
    return part


def split_halves(patients: list[str], strata: dict[str, tuple], *, seed: int = 0) -> tuple[list, list]:
    """Split patients into calibration and evaluation halves, alternating within each stratum."""
    part = _deal(patients, strata, 2, np.random.default_rng(seed + 1))
    return sorted(p for p in part if part[p] == 0), sorted(p for p in part if part[p] == 1)


def _halves(members: list[str], nonmembers: list[str], strata: dict[str, tuple], seed: int) -> dict:
    """``{"calibration": (members, non-members), "evaluation": (...)}``; InputError when a half has fewer than
    :data:`MIN_PER_HALF` of either."""
    cal_m, ev_m = split_halves(members, strata, seed=seed)
    cal_n, ev_n = split_halves(nonmembers, strata, seed=seed)
    if min(len(cal_m), len(ev_m), len(cal_n), len(ev_n)) < MIN_PER_HALF:
        raise InputError(f"membership inference needs at least {MIN_PER_HALF} members and {MIN_PER_HALF} "
                         f"non-members in each half (calibration, evaluation); {len(members)} members and "
                         f"{len(nonmembers)} non-members give {len(cal_m)} + {len(cal_n)} and {len(ev_m)} + "
                         f"{len(ev_n)}")
    return {"calibration": (cal_m, cal_n), "evaluation": (ev_m, ev_n)}


def calibration_folds(members: list[str], nonmembers: list[str], strata: dict[str, tuple], *,
                      seed: int = 0) -> np.ndarray:
    """Cross-fitting fold ``(P,)`` of each calibration patient, in the order ``members + nonmembers``.

    k = min(:data:`FOLDS`, members, non-members) folds, members and non-members each dealt by stratum, so that
    every fold holds at least one of each and its complement can choose or fit an attack.
    """
    k = min(FOLDS, len(members), len(nonmembers))
    rng = np.random.default_rng(seed + 2)
    fold = {**_deal(members, strata, k, rng), **_deal(nonmembers, strata, k, rng)}
    return np.array([fold[p] for p in members + nonmembers])


# -- per-slice losses --------------------------------------------------------------------------------

def _batches(slices: Slices, vocabulary, batch_size: int):
    import torch

    for start in range(0, len(slices), batch_size):
        part = slices.take(np.arange(start, min(start + batch_size, len(slices))))
        yield torch.from_numpy(part.images)[:, None], to_conditions(part, vocabulary)


def proximal_noise(generator, images, cond, noise):
    """The noise ε* the model attributes to clean ``images`` ``(B, 1, H, W)``: minimiser of loss_at at t=0.

    See the module docstring for why one gradient step is exact there. Returns ``(B, *noise.shape[1:])``.
    """
    import torch

    noise = noise.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = generator.loss_at(images, cond, torch.zeros(len(images)), noise)
        (grad,) = torch.autograd.grad(loss.sum(), noise)
    dims = tuple(range(1, grad.ndim))
    c = (grad.pow(2).sum(dims) / (4.0 * loss.detach().clamp_min(1e-20))).clamp_min(1e-20)
    return (noise - grad / (2.0 * c.view(-1, *[1] * len(dims)))).detach()


def loss_table(generator, slices: Slices, vocabulary, config: AttackConfig, *, proximal: bool = False,
               progress=None, done: int = 0) -> np.ndarray:
    """Per-slice losses ``(N, T)`` at ``config.timesteps``, averaged over ``config.draws`` noise draws.

    With ``proximal`` the noise is the model's own :func:`proximal_noise` of each slice (attack b; one draw).
    Noise comes from a torch generator seeded by ``config.seed``: the same call gives the same table.
    ``progress`` is updated with ``done`` + the slices finished.
    """
    import torch

    rng = torch.Generator().manual_seed(config.seed)
    draws = 1 if proximal else config.draws
    out = np.zeros((len(slices), len(config.timesteps)))
    row = 0
    generator.eval()
    for images, cond in _batches(slices, vocabulary, config.batch_size):
        b = len(images)
        for d in range(draws):
            noise = generator.noise_like(images, generator=rng)  # latent families: their latent's shape
            if proximal:
                noise = proximal_noise(generator, images, cond, noise)
            with torch.no_grad():
                for j, t in enumerate(config.timesteps):
                    out[row:row + b, j] += generator.loss_at(images, cond, torch.full((b,), t), noise).double().numpy()
        row += b
        if progress is not None:
            progress.update(done + row)
    return out / draws


@dataclass(frozen=True, eq=False)
class LossTables:
    """Per-slice losses of attacks (a) and (b) and whose slices they are: all the attacks need of a model.

    Attributes:
        loss: ``(N, T)`` denoising losses with fresh noise at ``timesteps`` (attack a).
        proximal: ``(N, T)`` losses with the model's own noise estimate (attack b).
        patients: ``(N,)`` patient of each slice.
        timesteps: the T noise levels.
    """

    loss: np.ndarray
    proximal: np.ndarray
    patients: np.ndarray
    timesteps: tuple[float, ...]

    def patient_means(self, values: np.ndarray, patients: list[str]) -> np.ndarray:
        """Mean per patient of per-slice ``values`` ``(N, ...)`` → ``(P, ...)`` in the order of ``patients``."""
        return np.stack([values[self.patients == p].mean(axis=0) for p in patients])

    def features(self) -> np.ndarray:
        """The learned attack's per-slice features ``(N, 2T)``: log-losses of (a) and (b)."""
        return np.log(np.c_[self.loss, self.proximal] + 1e-12)


# -- the learned attack (c) -----------------------------------------------------------------------------

def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1.0) -> np.ndarray:
    """L2-regularised logistic regression weights ``(F + 1,)`` (last = bias) for ``x`` ``(N, F)``, y in {0, 1}.

    Written with scipy's L-BFGS because scikit-learn is not a dependency.
    """
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    design = np.c_[x, np.ones(len(x))]

    def objective(w):
        z = design @ w
        nll = -(y * log_expit(z) + (1 - y) * log_expit(-z)).sum()
        grad = design.T @ (expit(z) - y)
        penalty = np.r_[w[:-1], 0.0]
        return nll + 0.5 * l2 * penalty @ penalty, grad + l2 * penalty

    return minimize(objective, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x


def _logits(features: np.ndarray, fitted_on: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Logits ``(N,)`` for every slice of :func:`fit_logistic` fitted on the rows ``fitted_on``, features
    standardised by those rows."""
    mean, std = features[fitted_on].mean(0), features[fitted_on].std(0) + 1e-8
    z = (features - mean) / std
    weights = fit_logistic(z[fitted_on], member[fitted_on].astype(float))
    return np.c_[z, np.ones(len(z))] @ weights


# -- choose on calibration, report on evaluation -------------------------------------------------------

def separation(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Standardised mean difference (Cohen's d) of members' over non-members' ``scores`` ``(P,)`` or of every
    column of ``(P, K)``: the difference of the means over the pooled within-group standard deviation.

    The tie-breaker among choices of equal AUC: with a few patients many choices reach AUC 1.0, which cannot
    tell a clean gap from a hair's breadth; the distance in units of the spread within the groups can.
    """
    m, n = scores[labels], scores[~labels]
    within = ((m - m.mean(0)) ** 2).sum(0) + ((n - n.mean(0)) ** 2).sum(0)
    return (m.mean(0) - n.mean(0)) / np.maximum(np.sqrt(within / len(scores)), 1e-12)


def choose_timestep(scores: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """The timestep index and direction (+1: lower loss = member, -1: higher) of the highest AUC of per-patient
    scores ``(P, T)``; ties go to the larger :func:`separation`, then to the earlier timestep."""
    auc, distance = roc_aucs(scores, labels), separation(scores, labels)
    strength = {(j, sign): (round(auc[j] if sign == 1 else 1.0 - auc[j], 12), sign * distance[j])
                for sign in (1, -1) for j in range(scores.shape[1])}  # rounded: 1 - 0.7 is not 0.3
    return max(strength, key=strength.get)


def cross_fitted(score_fold, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores ``(P,)``: ``score_fold(train, test)`` (boolean masks over the calibration patients)
    scores the ``test`` patients by an attack chosen or fitted on the ``train`` patients only."""
    scores = np.empty(len(folds))
    for fold in np.unique(folds):
        scores[folds == fold] = score_fold(folds != fold, folds == fold)
    return scores


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The ROC threshold maximising TPR − FPR (classify ``score >= threshold`` as member)."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else float(np.max(scores)) + 1.0


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float, *, method: str, n_boot: int) -> dict:
    """AUC, TPR at :data:`FPRS` (with CIs), the one-sided Mann–Whitney p-value of "members score higher"
    (scipy; exact for small samples without ties) and the calibrated threshold's operating point."""
    from scipy.stats import mannwhitneyu

    predicted = scores >= threshold
    fpr, tpr, _ = roc_curve(scores, labels)
    result = {"auc": auc_estimate(scores, labels, method=method, n_boot=n_boot)}
    for target in FPRS:
        result[f"tpr_at_{target:g}_fpr"] = tpr_estimate(scores, labels, target, method=method, n_boot=n_boot)
    result.update(p_value=float(mannwhitneyu(scores[labels], scores[~labels], alternative="greater").pvalue),
                  threshold=float(threshold), tpr_at_threshold=float(predicted[labels].mean()),
                  fpr_at_threshold=float(predicted[~labels].mean()),
                  accuracy_at_threshold=float((predicted == labels).mean()),
                  roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()})
    return result


def _result(name: str, description: str, out_of_fold: np.ndarray, cal: np.ndarray, ev: np.ndarray,
            labels: dict, n_boot: int, method: str, **choice) -> dict:
    """An attack's entry: its cross-fitted calibration AUC and separation (by which the headline is chosen),
    and its evaluation at the threshold calibrated on the calibration scores ``cal``."""
    return {"name": name, "description": description, **choice,
            "calibration_auc": roc_auc(out_of_fold, labels["calibration"]),
            "calibration_separation": float(separation(out_of_fold, labels["calibration"])),
            "evaluation": evaluate(ev, labels["evaluation"], youden_threshold(cal, labels["calibration"]),
                                   method=method, n_boot=n_boot)}


def _threshold_attack(name: str, description: str, losses: np.ndarray, tables: LossTables, halves: dict,
                      labels: dict, folds: np.ndarray, n_boot: int) -> dict:
    """Choose the noise level and the direction on the calibration patients, then the threshold; evaluate.

    Scores ``(P, T)`` are minus the patients' mean losses, so direction +1 means "lower loss = member" (the
    usual direction) and -1 the reverse; the adversary learns which from the calibration patients. Per-timestep
    AUCs are reported in the usual direction (below 0.5: the reverse holds).
    """
    timesteps = tables.timesteps
    per_t = {half: -tables.patient_means(losses, m + n) for half, (m, n) in halves.items()}
    cal_scores = per_t["calibration"]

    def score_fold(train, test):
        j, sign = choose_timestep(cal_scores[train], labels["calibration"][train])
        column = cal_scores[:, j]
        return sign * (column[test] - column[train].mean()) / (column[train].std() + 1e-12)

    best, sign = choose_timestep(cal_scores, labels["calibration"])
    direction = "lower loss = member" if sign == 1 else "higher loss = member"
    per_timestep = [{"t": t, "calibration_auc": float(a), "evaluation_auc": float(e)} for t, a, e in
                    zip(timesteps, roc_aucs(cal_scores, labels["calibration"]),
                        roc_aucs(per_t["evaluation"], labels["evaluation"]))]
    return _result(name, description, cross_fitted(score_fold, folds), sign * cal_scores[:, best],
                   sign * per_t["evaluation"][:, best], labels, n_boot,
                   f"{name} at t={timesteps[best]:g}, {direction} (chosen on calibration patients); evaluation "
                   "patients", timestep=timesteps[best], direction=direction, per_timestep=per_timestep)


def _learned_attack(tables: LossTables, halves: dict, labels: dict, folds: np.ndarray, n_boot: int) -> dict:
    features = tables.features()
    cal_patients = halves["calibration"][0] + halves["calibration"][1]
    member = np.isin(tables.patients, halves["calibration"][0])

    def logits_without(left_out: list[str]) -> np.ndarray:
        return _logits(features, np.isin(tables.patients, cal_patients) & ~np.isin(tables.patients, left_out),
                       member)

    def score_fold(train, test):
        left_out = [p for p, out in zip(cal_patients, test) if out]
        return tables.patient_means(logits_without(left_out), left_out)

    logits = logits_without([])
    scores = {half: tables.patient_means(logits, m + n) for half, (m, n) in halves.items()}
    name = "learned (logistic regression on error features)"
    return _result(name, "logistic regression on the log-losses of (a) and (b) at every noise level, fitted on "
                   "calibration slices (the SynCMRI benchmark's style of attack)", cross_fitted(score_fold, folds),
                   scores["calibration"], scores["evaluation"], labels, n_boot,
                   f"{name}; fitted on calibration patients, evaluation patients", timestep=None, per_timestep=[])


def choose_headline(attacks: list[dict]) -> str:
    """The attack an adversary would pick: the best cross-fitted AUC on the CALIBRATION patients, ties to the
    larger separation. Picking the best evaluation AUC of several attacks would bias the reported AUC and
    p-value upwards (an uncorrected selection); picking an in-sample calibration AUC favours the attack with the
    most parameters (the learned one)."""
    return max(attacks, key=lambda a: (a["calibration_auc"], a["calibration_separation"]))["name"]


def attack_patients(tables: LossTables, members: list[str], nonmembers: list[str], strata: dict[str, tuple], *,
                    seed: int = 0, n_boot: int = 1000) -> dict:
    """Attacks (a)–(c) on ``members`` vs ``nonmembers`` from their per-slice losses: split into halves, choose
    each attack and the headline on the calibration half (cross-fitted), evaluate on the evaluation half.

    Pure numpy on :class:`LossTables`; :func:`membership_inference` computes the tables and runs this for the
    members and for the non-member control. Raises InputError when a half has fewer than :data:`MIN_PER_HALF`
    members or non-members. ``too_few_to_call`` is the small-sample warning of the evaluation half (None from
    :data:`~.stats.MIN_PATIENTS_FOR_CI` patients per class on).
    """
    halves = _halves(members, nonmembers, strata, seed)
    labels = {half: np.r_[np.ones(len(m), bool), np.zeros(len(n), bool)] for half, (m, n) in halves.items()}
    folds = calibration_folds(*halves["calibration"], strata, seed=seed)
    attacks = [
        _threshold_attack("loss threshold", "denoising loss with fresh noise", tables.loss, tables, halves, labels,
                          folds, n_boot),
        _threshold_attack("PIA-style proximal noise", "denoising loss with the model's own noise estimate of the "
                          "clean image (proximal initialisation)", tables.proximal, tables, halves, labels, folds,
                          n_boot),
        _learned_attack(tables, halves, labels, folds, n_boot),
    ]
    (cal_m, cal_n), (ev_m, ev_n) = halves["calibration"], halves["evaluation"]
    return {"calibration_patients": {"members": cal_m, "non_members": cal_n},
            "evaluation_patients": {"members": ev_m, "non_members": ev_n},
            "cross_fitting_folds": int(folds.max()) + 1, "attacks": attacks, "headline": choose_headline(attacks),
            "headline_rule": HEADLINE_RULE,
            "too_few_to_call": small_sample_warning(min(len(ev_m), len(ev_n)), "evaluation patients per class")}


def non_member_control(tables: LossTables, nonmembers: list[str], strata: dict[str, tuple], *, seed: int = 0,
                       n_boot: int = 1000) -> dict:
    """The headline pipeline of :func:`attack_patients` between two groups of ``nonmembers`` dealt alike by
    stratum, the first labelled members: its headline AUC is the member AUC's yardstick (see the module
    docstring). ``{"skipped": reason}`` when the groups are too small for two halves."""
    labelled, others = split_halves(nonmembers, strata, seed=seed + 1000)
    try:
        result = attack_patients(tables, labelled, others, strata, seed=seed, n_boot=n_boot)
    except InputError as exc:
        return {"skipped": f"too few non-members for the control: {exc}"}
    head = next(a for a in result["attacks"] if a["name"] == result["headline"])
    return {"rule": CONTROL_RULE, "groups": {"labelled_members": labelled, "non_members": others},
            "headline": result["headline"], "timestep": head["timestep"], "auc": head["evaluation"]["auc"],
            "p_value": head["evaluation"]["p_value"],
            "evaluation_patients": {side: len(ids) for side, ids in result["evaluation_patients"].items()},
            "too_few_to_call": result["too_few_to_call"]}


def membership_inference(generator, vocabulary, members: Slices, nonmembers: Slices, config: AttackConfig, *,
                         progress=None) -> dict:
    """Run attacks (a)–(c) on member vs non-member patients and the non-member control (see the module
    docstring for the protocol).

    Losses are computed for the balanced members and for every non-member (the control uses them all).
    Raises InputError when fewer than :data:`MIN_PER_HALF` members and non-members per half remain after
    balancing.
    """
    strata = {**members.patient_strata(), **nonmembers.patient_strata()}
    kept_m, kept_n, note = balance(members.patient_strata(), nonmembers.patient_strata(), seed=config.seed)
    try:
        _halves(kept_m, kept_n, strata, config.seed)
    except InputError as exc:
        raise InputError(f"{exc} after balancing ({note}); give the audit more held-out patients") from None
    slices = Slices.cat([members.of_patients(kept_m), nonmembers])
    if progress is not None:
        progress.start("audit: membership losses", 2 * len(slices))
    tables = LossTables(loss_table(generator, slices, vocabulary, config, progress=progress),
                        loss_table(generator, slices, vocabulary, config, proximal=True, progress=progress,
                                   done=len(slices)),
                        slices.patients, config.timesteps)
    result = attack_patients(tables, kept_m, kept_n, strata, seed=config.seed, n_boot=config.n_boot)
    control = non_member_control(tables, list(nonmembers.patient_ids()), strata, seed=config.seed,
                                 n_boot=config.n_boot)
    return {"protocol": note, **result, "config": config.to_dict(), "control": control}
