"""Fidelity: how close synthetic images are to real ones, as a distribution and tissue by tissue.

- Fréchet / kernel distance in a feature space (:mod:`.features`), with an interval from half-samples of the
  patients of both sets drawn without replacement (:func:`~.stats.half_sample_interval`; a bootstrap with
  replacement repeats patients, which inflates these distances: its interval excluded its own estimate), and
  the same distance between two *real* patient sets as the yardstick.
- MS-SSIM between random pairs of images of different patients: a diversity measure (lower = more
  diverse); synthetic should be as diverse as real, not more alike (mode collapse).
- Intensity statistics per tissue and vendor, real vs synthetic, including tissue outside the heart: a
  generator that matches the mask but invents the rest of the anatomy shows up here (DESIGN §5).
"""

from __future__ import annotations

import numpy as np

from CMRSynthLib.audit.features import FeatureSpace, frechet_distance, kernel_distance
from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.audit.stats import Estimate, bootstrap, half_sample_interval, small_sample_warning

TISSUES = ("LV blood pool", "myocardium", "RV blood pool", "around the heart", "far from the heart")
RING_MM = 10.0  # "around the heart": background within this distance of the heart


def _patient_index(slices: Slices) -> list[np.ndarray]:
    return [np.flatnonzero(slices.patients == p) for p in slices.patient_ids()]


def feature_distances(space: FeatureSpace, real: Slices, synthetic: Slices, *, n_boot: int = 200,
                      seed: int = 0, features: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Estimate]:
    """``FD-<space>`` and ``KD-<space>`` between real and synthetic slices, intervals from ``n_boot`` half-samples
    of the patients of each set (:func:`~.stats.half_sample_interval`; 0: no interval).

    Features are standardised with the real set's mean and standard deviation first, so that no single
    channel's scale dominates (KID's cubic kernel is very sensitive to it). ``features`` may pass
    precomputed ``(real (N, F), synthetic (M, F))`` features. A Fréchet distance is never negative: its
    interval is cut at 0.
    """
    fr, fs = features if features is not None else (space.encode(real.images), space.encode(synthetic.images))
    groups_r, groups_s = _patient_index(real), _patient_index(synthetic)
    n_r, n_s = len(groups_r), len(groups_s)

    def standardised(fn, rows_r, rows_s):
        mean, std = fr[rows_r].mean(0), fr[rows_r].std(0) + 1e-8
        return fn((fr[rows_r] - mean) / std, (fs[rows_s] - mean) / std)

    def on_patients(fn):  # the standardisation is part of the statistic, so its own spread is in the interval
        def statistic(draw):
            rows_r = np.concatenate([groups_r[i] for i in draw[draw < n_r]])
            rows_s = np.concatenate([groups_s[i - n_r] for i in draw[draw >= n_r]])
            if min(len(rows_r), len(rows_s)) < 2:
                return np.nan
            try:
                return standardised(fn, rows_r, rows_s)
            except ValueError:  # MONAI's matrix square root refuses a half whose covariance is too singular
                return np.nan
        return statistic

    strata = np.r_[np.zeros(n_r, int), np.ones(n_s, int)]
    n = f"{len(fr)} real slices of {n_r} patients vs {len(fs)} synthetic slices from {n_s} patients' masks"
    out = {}
    for kind, fn in (("FD", frechet_distance), ("KD", kernel_distance)):
        value = standardised(fn, np.arange(len(fr)), np.arange(len(fs)))
        low, high = half_sample_interval(on_patients(fn), n_r + n_s, estimate=value, strata=strata, n_draws=n_boot,
                                         seed=seed)
        if kind == "FD" and low is not None:
            low = max(low, 0.0)
        notes = [small_sample_warning(min(n_r, n_s))]
        if kind == "FD":
            notes.append(singular_covariance_warning(min(len(fr), len(fs)), fr.shape[1]))
        out[f"{kind}-{space.name}"] = Estimate(
            value, low, high, n_r + n_s,
            f"{kind} in {space.description}, on features standardised by the real set (not a published FID/KID: "
            f"not comparable with them); {n}; interval: spread over half-samples of the patients of each set",
            warning="; ".join(w for w in notes if w) or None)
    return out


def singular_covariance_warning(samples: int, features: int) -> str | None:
    """A Fréchet distance fits a covariance of ``features`` dimensions: with no more samples than that it is
    singular (rank < features), and the distance is biased and unstable."""
    if samples > features:
        return None
    return (f"{samples} images per set but {features} features: the fitted covariances are singular, so this "
            "Fréchet distance is biased and unstable; compare it only with distances of the same set sizes")


def _ms_ssim_scales(shape: tuple[int, int], kernel: int = 11) -> int:
    """Scales such that the coarsest image is still at least one SSIM window wide (≤ 5), within torchmetrics'
    own size rule for ``n`` scales (side // (n - 1)² > kernel - 1: 96 px allows 3, not 4)."""
    scales = 1
    while (scales < 5 and min(shape) / 2 ** scales >= kernel
           and min(shape) // max(1, scales) ** 2 > kernel - 1):
        scales += 1
    return scales


def ms_ssim_diversity(slices: Slices, *, pairs: int = 200, seed: int = 0) -> Estimate:
    """Mean MS-SSIM of random pairs of slices from different patients (1 = identical, lower = more diverse).

    Uses torchmetrics' MS-SSIM (data range 2 for [-1, 1] images) with as many of its default 5 scales as the
    image size allows, their weights renormalised; the method string states the scale count.
    """
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(slices), size=4 * pairs)
    j = rng.integers(0, len(slices), size=4 * pairs)
    keep = slices.patients[i] != slices.patients[j]
    i, j = i[keep][:pairs], j[keep][:pairs]
    scales = _ms_ssim_scales(slices.shape)
    method = f"MS-SSIM ({scales} scales) of {len(i)} random pairs of slices of different patients"
    if len(i) == 0:
        return Estimate(float("nan"), None, None, 0, method, unit="pairs", warning="fewer than 2 patients")
    betas = np.array((0.0448, 0.2856, 0.3001, 0.2363, 0.1333)[:scales])
    values = ms_ssim(torch.from_numpy(slices.images[i])[:, None], torch.from_numpy(slices.images[j])[:, None],
                     data_range=2.0, betas=tuple((betas / betas.sum()).tolist()), normalize="relu",
                     reduction="none").double().numpy()
    low, high = bootstrap(lambda idx: values[idx].mean(), len(values), n_boot=500, seed=seed)
    return Estimate(float(values.mean()), low, high, len(values), method, unit="pairs")


def tissue_masks(masks: np.ndarray, spacing: tuple[float, float]) -> dict[str, np.ndarray]:
    """Boolean ``(N, H, W)`` masks of each of :data:`TISSUES`.

    "around the heart" is background within :data:`RING_MM` of the heart (2D Euclidean distance in mm, per
    slice); "far from the heart" is the rest of the background.
    """
    from scipy.ndimage import distance_transform_edt

    background = masks == 0
    near = np.zeros_like(background)
    for k in range(len(masks)):
        if not background[k].all():
            near[k] = distance_transform_edt(background[k], sampling=spacing) <= RING_MM
    near &= background
    return {"LV blood pool": masks == 1, "myocardium": masks == 2, "RV blood pool": masks == 3,
            "around the heart": near, "far from the heart": background & ~near}


def tissue_statistics(real: Slices, synthetic: Slices, *, max_pixels: int = 20000, seed: int = 0) -> list[dict]:
    """Intensity mean/std per vendor and tissue for real and synthetic slices, and their distance.

    Returns one row per (vendor, tissue) present in both sets: ``vendor, tissue, real_mean, real_std,
    synthetic_mean, synthetic_std, w1, n_real, n_synthetic``; ``w1`` is the Wasserstein-1 distance between
    the two intensity distributions (scipy; on at most ``max_pixels`` random pixels of each, [-1, 1] units).
    """
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(seed)
    real_tissues = tissue_masks(real.masks, real.spacing)
    synth_tissues = tissue_masks(synthetic.masks, synthetic.spacing)
    rows = []
    for vendor in sorted(set(real.vendors.tolist()) & set(synthetic.vendors.tolist())):
        in_real, in_synth = real.vendors == vendor, synthetic.vendors == vendor
        for tissue in TISSUES:
            a = real.images[in_real][real_tissues[tissue][in_real]]
            b = synthetic.images[in_synth][synth_tissues[tissue][in_synth]]
            if a.size == 0 or b.size == 0:
                continue
            sub_a = rng.choice(a, size=min(a.size, max_pixels), replace=False)
            sub_b = rng.choice(b, size=min(b.size, max_pixels), replace=False)
            rows.append({"vendor": vendor, "tissue": tissue, "real_mean": float(a.mean()), "real_std": float(a.std()),
                         "synthetic_mean": float(b.mean()), "synthetic_std": float(b.std()),
                         "w1": float(wasserstein_distance(sub_a, sub_b)), "n_real": int(a.size),
                         "n_synthetic": int(b.size)})
    return rows
