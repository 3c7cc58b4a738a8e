"""Discriminability: can a small CNN tell synthetic slices from real ones? (a classifier two-sample test)

If real and synthetic slices come from the same distribution, no classifier beats chance on slices it was not
trained on: its held-out ROC AUC is 0.5 (Lopez-Paz & Oquab, "Revisiting classifier two-sample tests", ICLR
2017). The further above 0.5, the easier the synthetic images are to spot. Unlike FD-seg, this needs no
feature space chosen in advance: the classifier finds whatever differs (texture, noise, edges, background).

Protocol (on the audit's prepared grid, images in [-1, 1]; the synthetic class is the positive one):

1. The patients are split into halves A and B, alternating within each (vendor, group) stratum. A patient's
   real slices and the synthetic slices generated from that patient's masks go to the same half, so the
   classifier cannot score by recognising a patient's anatomy.
2. Within each half the larger class is subsampled (seeded) to the size of the smaller one.
3. Cross-fitting: a MONAI classifier learns real vs synthetic on A (random flips, a light intensity jitter)
   and scores B, and another one learns on B and scores A; every slice is scored by a network that never
   saw its patient.
4. AUC = the mean of the two held-out AUCs (each network's scores are only compared among themselves);
   accuracy = the share of held-out slices on the right side of logit 0. Their 95% percentile bootstrap
   intervals resample patients within each half: they cover which patients were evaluated, not the
   randomness of training the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.audit.stats import MIN_PATIENTS_FOR_CI, Estimate, bootstrap, roc_auc, small_sample_warning
from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import FrozenConfig

MIN_PATIENTS_PER_HALF = 2  # fewer and a half has no bootstrap interval

RULE = ("good when the AUC's 95% interval includes 0.5 (indistinguishable at this sample size) or the AUC is "
        f"below 0.6; fair below 0.8; poor otherwise. With fewer than {MIN_PATIENTS_FOR_CI} evaluated patients an "
        "AUC of 0.6 or more is at best fair, as its interval is too wide to call the sets indistinguishable")


@dataclass(frozen=True)
class DiscriminatorConfig(FrozenConfig):
    """A MONAI :class:`~monai.networks.nets.Classifier` (batch norm, one logit) and how long to train it.

    Batch normalisation, not MONAI's default instance normalisation: instance norm would erase each image's
    intensity level and contrast, which are among the differences the test must be able to see.
    """

    channels: tuple[int, ...] = (16, 32, 64, 64)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    steps: int = 300
    batch_size: int = 32  # half real, half synthetic
    learning_rate: float = 1e-3
    jitter: float = 0.05  # intensity augmentation: x * (1 + a) + b with a, b uniform in [-jitter, jitter]
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.strides) != len(self.channels):
            raise ValueError(f"strides must have one entry per channel level ({len(self.channels)}), got {self.strides}")
        if self.steps < 1 or self.batch_size < 2 or not self.learning_rate > 0 or not 0 <= self.jitter < 1:
            raise ValueError(f"steps >= 1, batch_size >= 2, learning_rate > 0 and 0 <= jitter < 1 are required, "
                             f"got {self}")

    @classmethod
    def quick(cls, **changes) -> "DiscriminatorConfig":
        """A small, fast setting for ``--quick`` runs and tests."""
        return cls(**{"channels": (8, 16, 32), "strides": (2, 2, 2), "steps": 60, "batch_size": 16, **changes})


def split_patients(strata: dict[str, tuple], seed: int) -> tuple[list[str], list[str]]:
    """Two halves of the patients (``strata``: patient → stratum, e.g. (vendor, group)), alternating within
    each stratum in a seeded random order, so the halves differ in size by at most one and match in strata."""
    rng = np.random.default_rng(seed)
    halves: tuple[list[str], list[str]] = ([], [])
    turn = 0
    for stratum in sorted(set(strata.values())):
        members = sorted(p for p, s in strata.items() if s == stratum)
        for patient in rng.permutation(members).tolist():
            halves[turn].append(patient)
            turn = 1 - turn
    return sorted(halves[0]), sorted(halves[1])


def _balanced(real: Slices, synthetic: Slices, patients: list[str], rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``(2K, H, W)``, labels ``(2K,)`` (1 = synthetic) and patients of one half, K per class."""
    r, s = real.of_patients(patients), synthetic.of_patients(patients)
    k = min(len(r), len(s))
    r, s = r.take(np.sort(rng.permutation(len(r))[:k])), s.take(np.sort(rng.permutation(len(s))[:k]))
    return (np.concatenate([r.images, s.images]), np.r_[np.zeros(k), np.ones(k)].astype(np.float32),
            np.concatenate([r.patients, s.patients]))


def _network(config: DiscriminatorConfig, shape: tuple[int, int]):
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(1, *shape), classes=1, channels=config.channels, strides=config.strides,
                      num_res_units=config.num_res_units, norm="batch")


def _augment(images, generator, jitter: float):
    """Random horizontal and vertical flips and an intensity scale/shift, per image of ``(B, 1, H, W)``.

    Written on the batch with one torch generator (MONAI's Rand* transforms draw per image from their own
    state), so a run is reproducible from the config's seed alone."""
    import torch

    def draw(*shape):
        return torch.rand(images.shape[0], *shape, generator=generator)

    images = torch.where(draw(1, 1, 1) < 0.5, images.flip(-1), images)
    images = torch.where(draw(1, 1, 1) < 0.5, images.flip(-2), images)
    return images * (1 + jitter * (2 * draw(1, 1, 1) - 1)) + jitter * (2 * draw(1, 1, 1) - 1)


def _fit_and_score(train: tuple, test_images: np.ndarray, config: DiscriminatorConfig, *, seed: int, device: str,
                   progress, label: str) -> np.ndarray:
    """Train a classifier on ``train`` (images, labels, patients) and return its logits ``(N,)`` on ``test_images``."""
    import torch

    images, labels, _ = train
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = _network(config, images.shape[1:]).to(device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    per_class = min(config.batch_size // 2, len(by_class[0]))
    if progress is not None:
        progress.start(f"audit: {label}", config.steps)
    for step in range(1, config.steps + 1):
        index = torch.from_numpy(np.concatenate([rng.choice(c, size=per_class, replace=False) for c in by_class]))
        logits = network(_augment(x[index], generator, config.jitter).to(device))[:, 0]
        loss = loss_fn(logits, y[index].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None and (step % 25 == 0 or step == config.steps):
            progress.update(step, loss=loss.item())
    network.eval()
    with torch.no_grad():
        test = torch.from_numpy(np.ascontiguousarray(test_images, dtype=np.float32))[:, None]
        return torch.cat([network(test[i:i + 256].to(device))[:, 0].cpu() for i in range(0, len(test), 256)]).numpy()


def classifier_two_sample_test(real: Slices, synthetic: Slices, config: DiscriminatorConfig, *, n_boot: int = 1000,
                               seed: int = 0, device: str = "cpu", progress=None) -> dict:
    """Held-out ROC AUC of CNNs that tell ``synthetic`` from ``real`` slices, cross-fitted over patient halves.

    Args:
        real, synthetic: slices ``(N, H, W)`` in [-1, 1] on the same grid; ``synthetic.patients`` names the
            patient whose mask conditioned each image.
        config: the classifier and its training (:meth:`DiscriminatorConfig.quick` for ``--quick``).

    Returns:
        ``{"auc": Estimate, "accuracy": Estimate, "halves": [...], "protocol": str, "rule": str}``; each half
        lists its patients, its balanced slice counts and the AUC and accuracy of the classifier trained on
        the other half.

    Raises:
        InputError: fewer than :data:`MIN_PATIENTS_PER_HALF` patients per half, a half without real or
            synthetic slices, or real and synthetic images of different sizes.
    """
    if real.shape != synthetic.shape:
        raise InputError(f"discriminability: real slices are {real.shape} pixels but synthetic ones "
                         f"{synthetic.shape}; both must be on the audit's prepared grid")
    strata = {**synthetic.patient_strata(), **real.patient_strata()}
    if len(strata) < 2 * MIN_PATIENTS_PER_HALF:
        raise InputError(f"discriminability needs at least {2 * MIN_PATIENTS_PER_HALF} patients "
                         f"({MIN_PATIENTS_PER_HALF} per half: train on one half, test on the other), got {len(strata)}")
    rng = np.random.default_rng(seed)
    split = split_patients(strata, seed)
    data = [_balanced(real, synthetic, half, rng) for half in split]
    for half, (_, labels, _) in zip(split, data):
        if len(labels) == 0:
            raise InputError(f"discriminability: the half {', '.join(half[:3])}{', ...' if len(half) > 3 else ''} "
                             "has no real or no synthetic slices; each half needs both")
    scores = [_fit_and_score(data[1 - h], data[h][0], config, seed=config.seed + h, device=device, progress=progress,
                             label=f"real-vs-synthetic classifier {h + 1} of 2") for h in (0, 1)]
    # Bootstrap units: the patients of both halves, resampled within their half.
    units = [(h, p) for h in (0, 1) for p in sorted(set(data[h][2].tolist()))]
    slices_of = [np.flatnonzero(data[h][2] == p) for h, p in units]
    half_of = np.array([h for h, _ in units])

    def statistic(kind: str):
        def of(draw: np.ndarray) -> float:
            values = []
            for h in (0, 1):
                chosen = np.concatenate([slices_of[u] for u in draw if half_of[u] == h])
                s, y = scores[h][chosen], data[h][1][chosen].astype(bool)
                if kind == "auc":
                    if y.all() or not y.any():
                        return float("nan")
                    values.append(roc_auc(s, y))
                else:
                    values.append(float(np.mean((s > 0) == y)))
            return float(np.mean(values))
        return of

    everyone = np.arange(len(units))
    method = ("CNN trained on one half of the patients, tested on the other, and the other way round "
              f"(mean of the two); 95% bootstrap over the {len(units)} evaluated patients within their half (which "
              "does not include the randomness of training the classifier)")
    estimates = {}
    for kind in ("auc", "accuracy"):
        low, high = bootstrap(statistic(kind), len(units), strata=half_of, n_boot=n_boot, seed=seed)
        estimates[kind] = Estimate(statistic(kind)(everyone), low, high, len(units), method,
                                   warning=small_sample_warning(len(units), "evaluated patients"))
    halves = []
    for h, patients in enumerate(split):
        labels = data[h][1].astype(bool)
        halves.append({"patients": patients, "slices": {"real": int((~labels).sum()), "synthetic": int(labels.sum())},
                       "auc": roc_auc(scores[h], labels), "accuracy": float(np.mean((scores[h] > 0) == labels))})
    return {"auc": estimates["auc"], "accuracy": estimates["accuracy"], "halves": halves,
            "protocol": ("A classifier two-sample test: real and synthetic slices split by patient into two halves "
                         "(a patient's real slices and the synthetic slices from its masks in the same half), "
                         "real and synthetic balanced per half; a small CNN learns to tell them apart on one half "
                         "and is scored on the other, then the halves swap"),
            "rule": RULE}


def verdict(auc: Estimate) -> tuple[str, str]:
    """The level (good / fair / poor) of a discriminability AUC and what it means, by :data:`RULE`."""
    includes_chance = auc.low is not None and auc.low <= 0.5 <= auc.high
    if includes_chance and (auc.value < 0.6 or auc.n >= MIN_PATIENTS_FOR_CI):
        return "good", "a classifier cannot tell synthetic slices from real ones better than chance"
    if auc.value < 0.6:
        return "good", "a classifier tells synthetic slices from real ones only slightly better than chance"
    if includes_chance:
        return "fair", (f"no difference shown, but {auc.n} evaluated patients are too few to call the synthetic "
                        "slices indistinguishable from real ones")
    if auc.value < 0.8:
        return "fair", "a classifier tells synthetic slices from real ones more often than chance, but far from always"
    return "poor", "a classifier readily tells synthetic slices from real ones"
