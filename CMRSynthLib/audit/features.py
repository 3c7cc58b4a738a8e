"""Feature spaces for distribution distances, and the distances themselves.

"FD-seg" / "KD-seg": Fréchet and kernel distances in the encoder of the audit's own segmenter, trained on
the real training patients of the cohort being audited (:mod:`.segmenter`). It is available offline and is
in-domain, but its numbers are comparable only between audits that share the same segmenter (same data
fingerprint): they are not ImageNet-Inception FIDs and must not be quoted as such. Inception features are
used only when the user supplies the weights file (:mod:`.inception`).

Distances: the Fréchet distance between Gaussians fitted to the two feature sets (MONAI
``get_fid_score``) and the kernel distance: the unbiased MMD² with the cubic polynomial kernel of KID, both on
all features at once. The MMD² is written here because torchmetrics' ``poly_mmd`` assumes two sets of the SAME
size (it divides the cross term by m(m−1)): at 200 vs 700 samples of one Gaussian it gives ≈ 7.5 instead of 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class FeatureSpace:
    """A named image → feature map.

    Attributes:
        name: short name used as the metric prefix ("seg" → "FD-seg"; "Inception" → "FD-Inception").
        description: one sentence for the report saying what the features are.
        encode: images ``(N, H, W)`` float32 in [-1, 1] → features ``(N, F)`` float64.
    """

    name: str
    description: str
    encode: Callable[[np.ndarray], np.ndarray]


def segmenter_space(segmenter) -> FeatureSpace:
    """The in-domain feature space of a trained :class:`~.segmenter.Segmenter`."""
    width = sum(segmenter.config.channels[-2:])
    return FeatureSpace(
        "seg", f"global averages ({width} features) of the two deepest encoder levels of the audit's UNet "
        f"segmenter trained on the real training patients (in-domain, offline; not comparable to Inception FID)",
        segmenter.encode)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features ``a`` ``(N, F)`` and ``b`` ``(M, F)``."""
    import torch
    from monai.metrics.fid import get_fid_score

    _check_features(a, b)
    with warnings.catch_warnings():  # MONAI passes scipy's deprecated ``disp`` to sqrtm
        warnings.simplefilter("ignore", DeprecationWarning)
        value = float(get_fid_score(torch.from_numpy(np.asarray(a, np.float64)),
                                    torch.from_numpy(np.asarray(b, np.float64))))
    return max(value, 0.0)  # tiny negative values are round-off of sqrtm on (near-)identical sets


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the polynomial kernel k(x, y) = (x·y/F + 1)³ between features ``a`` ``(m, F)`` and
    ``b`` ``(n, F)`` (KID), for any m, n ≥ 2 (Gretton et al. 2012, eq. 3)::

        Σ_{i≠j} k(a_i, a_j) / (m(m−1)) + Σ_{i≠j} k(b_i, b_j) / (n(n−1)) − 2 Σ_{i,j} k(a_i, b_j) / (mn)
    """
    _check_features(a, b)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m, n, features = len(a), len(b), a.shape[1]

    def kernel(x, y):
        return (x @ y.T / features + 1.0) ** 3

    k_aa, k_bb = kernel(a, a), kernel(b, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * kernel(a, b).mean())


def _check_features(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, F) and (M, F), got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"distances need at least 2 images per set, got {len(a)} and {len(b)}")
