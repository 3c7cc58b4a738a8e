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

Protocol (DESIGN §5): members and non-members are first balanced by (vendor, group) by random subsampling;
the balanced patients are split, stratified, into a CALIBRATION half (choose the timestep, the direction
and the threshold, fit (c)) and an EVALUATION half (report). The direction matters: for a memorising
flow-matching model the proximal noise of a member is *small*, so its loss along the path is higher, the
reverse of the DDPM intuition; an adversary with calibration data learns that, and so does the audit. Scores are per patient: the mean over the patient's
slices. Higher score = "member". Per-timestep AUCs are reported on both halves.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from CMRSynthLib.audit.slices import Slices, to_conditions
from CMRSynthLib.audit.stats import auc_estimate, roc_auc, roc_curve, tpr_estimate
from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import FrozenConfig

FPRS = (0.01, 0.001)
MIN_PER_HALF = 2  # members and non-members in each of the calibration and evaluation halves
HEADLINE_RULE = ("the headline attack is the one with the highest AUC on the calibration patients, so its "
                 "evaluation AUC, interval and p-value need no correction for the choice")


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

def _balanced(members: dict[str, tuple], nonmembers: dict[str, tuple], key, rng) -> tuple[list, list]:
    by_m, by_n = defaultdict(list), defaultdict(list)
    for p in sorted(members):
        by_m[key(members[p])].append(p)
    for p in sorted(nonmembers):
        by_n[key(nonmembers[p])].append(p)
    kept_m, kept_n = [], []
    for stratum in sorted(set(by_m) & set(by_n)):
        k = min(len(by_m[stratum]), len(by_n[stratum]))
        kept_m += sorted(rng.choice(by_m[stratum], size=k, replace=False).tolist())
        kept_n += sorted(rng.choice(by_n[stratum], size=k, replace=False).tolist())
    return kept_m, kept_n


def balance(members: dict[str, tuple], nonmembers: dict[str, tuple], *, seed: int = 0,
            enough: int = 4) -> tuple[list, list, str]:
    """Subsample members and non-members (patient → (vendor, group)) to equal counts within each stratum.

    Balances by (vendor, group) when that keeps at least ``enough`` patients per side, else by vendor alone
    when that does, else by whichever keeps more (at least 2); with fewer, no balancing. The returned note
    says which was done and how many of each were kept.
    """
    options = []
    for key_name, key in (("vendor and group", lambda s: s), ("vendor", lambda s: s[:1])):
        kept_m, kept_n = _balanced(members, nonmembers, key, np.random.default_rng(seed))
        options.append((key_name, kept_m, kept_n))
    chosen = next((o for o in options if len(o[1]) >= enough), max(options, key=lambda o: len(o[1])))
    key_name, kept_m, kept_n = chosen
    if len(kept_m) >= 2:
        note = (f"balanced by {key_name}: {len(kept_m)} of {len(members)} members and {len(kept_n)} of "
                f"{len(nonmembers)} non-members kept (random subsample, seed {seed})")
        return kept_m, kept_n, note
    note = (f"NOT balanced: members and non-members share too few vendors; all {len(members)} members and "
            f"{len(nonmembers)} non-members used, so the attack may detect vendor differences, not membership")
    return sorted(members), sorted(nonmembers), note


def split_halves(patients: list[str], strata: dict[str, tuple], *, seed: int = 0) -> tuple[list, list]:
    """Split patients into calibration and evaluation halves, alternating within each stratum."""
    rng = np.random.default_rng(seed + 1)
    calibration, evaluation = [], []
    by_stratum = defaultdict(list)
    for p in sorted(patients):
        by_stratum[strata[p]].append(p)
    turn = 0
    for stratum in sorted(by_stratum):
        for p in rng.permutation(by_stratum[stratum]).tolist():
            (calibration if turn % 2 == 0 else evaluation).append(p)
            turn += 1
    return sorted(calibration), sorted(evaluation)


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


def _patient_scores(values: np.ndarray, slices: Slices, patients: list[str]) -> np.ndarray:
    """Mean per patient of per-slice values ``(N, ...)`` → ``(P, ...)`` in the order of ``patients``."""
    return np.stack([values[slices.patients == p].mean(axis=0) for p in patients])


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


# -- choose on calibration, report on evaluation -------------------------------------------------------

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


def _threshold_attack(name: str, description: str, per_t_cal: np.ndarray, per_t_eval: np.ndarray,
                      labels_cal: np.ndarray, labels_eval: np.ndarray, timesteps, n_boot: int) -> dict:
    """Choose the noise level and the direction on calibration AUC, then the threshold; evaluate.

    Scores ``(P, T)`` are minus the losses, so direction +1 means "lower loss = member" (the usual
    direction) and -1 the reverse; the adversary learns which from the calibration patients. Per-timestep
    AUCs are reported in the usual direction (below 0.5: the reverse holds).
    """
    auc_cal = [roc_auc(per_t_cal[:, j], labels_cal) for j in range(len(timesteps))]
    auc_eval = [roc_auc(per_t_eval[:, j], labels_eval) for j in range(len(timesteps))]
    choices = [(j, sign) for sign in (1, -1) for j in range(len(timesteps))]
    best, sign = max(choices, key=lambda c: auc_cal[c[0]] if c[1] == 1 else 1.0 - auc_cal[c[0]])
    cal, ev = sign * per_t_cal[:, best], sign * per_t_eval[:, best]
    direction = "lower loss = member" if sign == 1 else "higher loss = member"
    return {"name": name, "description": description, "timestep": timesteps[best], "direction": direction,
            "calibration_auc": roc_auc(cal, labels_cal),
            "per_timestep": [{"t": t, "calibration_auc": a, "evaluation_auc": e}
                             for t, a, e in zip(timesteps, auc_cal, auc_eval)],
            "evaluation": evaluate(ev, labels_eval, youden_threshold(cal, labels_cal), n_boot=n_boot,
                                   method=f"{name} at t={timesteps[best]:g}, {direction} (chosen on calibration "
                                          f"patients); evaluation patients")}


def membership_inference(generator, vocabulary, members: Slices, nonmembers: Slices, config: AttackConfig, *,
                         progress=None) -> dict:
    """Run attacks (a)–(c) on member vs non-member patients (see the module docstring for the protocol).

    Raises InputError when fewer than :data:`MIN_PER_HALF` members and non-members per half remain after
    balancing.
    """
    strata = {**members.patient_strata(), **nonmembers.patient_strata()}
    kept_m, kept_n, note = balance(members.patient_strata(), nonmembers.patient_strata(), seed=config.seed)
    cal_m, ev_m = split_halves(kept_m, strata, seed=config.seed)
    cal_n, ev_n = split_halves(kept_n, strata, seed=config.seed)
    if min(len(cal_m), len(ev_m), len(cal_n), len(ev_n)) < MIN_PER_HALF:
        raise InputError(f"membership inference needs at least {MIN_PER_HALF} members and {MIN_PER_HALF} non-members "
                         f"in each half (calibration, evaluation) after balancing ({note}); give the audit more "
                         "held-out patients")
    slices = Slices.cat([members.of_patients(kept_m), nonmembers.of_patients(kept_n)])
    if progress is not None:
        progress.start("audit: membership losses", 2 * len(slices))
    losses = loss_table(generator, slices, vocabulary, config, progress=progress)
    proximal = loss_table(generator, slices, vocabulary, config, proximal=True, progress=progress, done=len(slices))
    halves = {"calibration": (cal_m, cal_n), "evaluation": (ev_m, ev_n)}
    scores, labels = {}, {}
    for half, (m, n) in halves.items():
        labels[half] = np.r_[np.ones(len(m), bool), np.zeros(len(n), bool)]
        scores[half] = {key: -_patient_scores(table, slices, m + n) for key, table in
                        (("loss", losses), ("proximal", proximal))}
    attacks = [
        _threshold_attack("loss threshold", "denoising loss with fresh noise",
                          scores["calibration"]["loss"], scores["evaluation"]["loss"], labels["calibration"],
                          labels["evaluation"], config.timesteps, config.n_boot),
        _threshold_attack("PIA-style proximal noise", "denoising loss with the model's own noise estimate of "
                          "the clean image (proximal initialisation)",
                          scores["calibration"]["proximal"], scores["evaluation"]["proximal"],
                          labels["calibration"], labels["evaluation"], config.timesteps, config.n_boot),
        _learned_attack(losses, proximal, slices, halves, labels, config),
    ]
    return {"protocol": note, "calibration_patients": {"members": cal_m, "non_members": cal_n},
            "evaluation_patients": {"members": ev_m, "non_members": ev_n}, "config": config.to_dict(),
            "attacks": attacks, "headline": choose_headline(attacks), "headline_rule": HEADLINE_RULE}


def choose_headline(attacks: list[dict]) -> str:
    """The attack an adversary would pick: the best on the CALIBRATION patients. Picking the best evaluation AUC
    of several attacks would bias the reported AUC and p-value upwards (an uncorrected selection)."""
    return max(attacks, key=lambda a: a["calibration_auc"])["name"]


def _learned_attack(losses, proximal, slices: Slices, halves: dict, labels: dict, config: AttackConfig) -> dict:
    features = np.log(np.c_[losses, proximal] + 1e-12)
    cal_m, cal_n = halves["calibration"]
    rows = np.isin(slices.patients, cal_m + cal_n)
    mean, std = features[rows].mean(0), features[rows].std(0) + 1e-8
    z = (features - mean) / std
    weights = fit_logistic(z[rows], np.isin(slices.patients[rows], cal_m).astype(float))
    logits = np.c_[z, np.ones(len(z))] @ weights
    patient_scores = {half: _patient_scores(logits, slices, m + n) for half, (m, n) in halves.items()}
    threshold = youden_threshold(patient_scores["calibration"], labels["calibration"])
    name = "learned (logistic regression on error features)"
    return {"name": name, "description": "logistic regression on the log-losses of (a) and (b) at every noise "
            "level, fitted on calibration slices (the SynCMRI benchmark's style of attack)",
            "timestep": None, "calibration_auc": roc_auc(patient_scores["calibration"], labels["calibration"]),
            "per_timestep": [],
            "evaluation": evaluate(patient_scores["evaluation"], labels["evaluation"], threshold,
                                   method=f"{name}; fitted on calibration patients, evaluation patients",
                                   n_boot=config.n_boot)}
