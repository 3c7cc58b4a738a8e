"""Memorisation: the nearest real neighbours of every synthetic image.

For each synthetic image the audit finds its nearest real slice among members (patients the generator was
trained on) and non-members, in pixel space (root-mean-square difference of [-1, 1] intensities) and in
a feature space (Euclidean distance of features standardised on the real slices).

Near-copy rule (documented in the report): a synthetic image is a near-copy when its nearest real slice is
closer than ``COPY_FRACTION`` × the ``COPY_PERCENTILE``-th percentile of the distances between real
slices and their nearest real slice *of another patient*. In words: closer to one real image than almost
any two different real patients ever are to each other. The ratio d1/d2 (nearest real slice / nearest
real slice of any other patient) is reported alongside; a copy has d1/d2 ≈ 0.

When a synthetic image was generated from a real patient's mask (``Slices.patients`` names that patient)
the distance to that patient's own slices is compared between member and non-member sources: a generator
that memorises reproduces its members' images more closely than it can reproduce images it never saw.
"""

from __future__ import annotations

import numpy as np

from CMRSynthLib.audit.features import FeatureSpace
from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.audit.stats import auc_estimate

COPY_FRACTION = 0.5
COPY_PERCENTILE = 5.0
GALLERY = 8


def pairwise_rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square difference ``(M, N)`` between rows of ``a`` ``(M, D)`` and ``b`` ``(N, D)``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0) / a.shape[1])


def _cross_patient_nearest(distances: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per row, the smallest distance to a column of another patient ``(M,)``."""
    masked = np.where(rows[:, None] == cols[None, :], np.inf, distances)
    return masked.min(axis=1)


def _space_summary(d_syn: np.ndarray, d_real: np.ndarray, synthetic: Slices, real: Slices,
                   is_member: np.ndarray) -> dict:
    """Nearest neighbours in one space from synthetic→real ``(M, N)`` and real→real ``(N, N)`` distances."""
    nearest = d_syn.argmin(axis=1)
    d1 = d_syn[np.arange(len(d_syn)), nearest]
    others = np.where(real.patients[None, :] == real.patients[nearest][:, None], np.inf, d_syn)
    d2 = others.min(axis=1)
    real_floor = _cross_patient_nearest(d_real, real.patients, real.patients)
    real_floor = real_floor[np.isfinite(real_floor)]
    threshold = COPY_FRACTION * float(np.percentile(real_floor, COPY_PERCENTILE)) if real_floor.size else 0.0
    copies = d1 < threshold
    ratio = np.divide(d1, d2, out=np.full_like(d1, np.nan), where=np.isfinite(d2) & (d2 > 0))
    return {
        "threshold": threshold,
        "near_copies": int(copies.sum()),
        "near_copies_of_members": int((copies & is_member[nearest]).sum()),
        "near_copies_of_non_members": int((copies & ~is_member[nearest]).sum()),
        "n_synthetic": int(len(d1)),
        "median_d1": float(np.median(d1)),
        "median_real_to_real": float(np.median(real_floor)) if real_floor.size else None,
        "median_ratio_d1_d2": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else None,
        "nearest_is_member_fraction": float(is_member[nearest].mean()),
        "_nearest": nearest, "_d1": d1,
    }


def nearest_neighbours(synthetic: Slices, real: Slices, members: set[str], *,
                       space: FeatureSpace | None = None, n_boot: int = 1000) -> dict:
    """Nearest real neighbours of every synthetic slice, near-copies, and the gallery of closest pairs.

    Args:
        synthetic: ``M`` synthetic slices (``patients`` = whose mask conditioned them, when known).
        real: ``N`` real slices of members and non-members.
        members: patient ids the generator was trained on.

    Returns:
        ``{"pixel": {...}, "feature": {...} (if space), "gallery": [...], "source_attack": Estimate | None,
        "rule": str}``; gallery entries are ``{"synthetic": i, "real": j, "distance": d, "member": bool}``.
    """
    if len(synthetic) == 0 or len(real) < 2:
        raise ValueError(f"need synthetic slices and at least 2 real slices, got {len(synthetic)} and {len(real)}")
    is_member = np.isin(real.patients, list(members))
    flat_s = synthetic.images.reshape(len(synthetic), -1)
    flat_r = real.images.reshape(len(real), -1)
    result = {"pixel": _space_summary(pairwise_rms(flat_s, flat_r), pairwise_rms(flat_r, flat_r),
                                      synthetic, real, is_member)}
    if space is not None:
        fr, fs = space.encode(real.images), space.encode(synthetic.images)
        mean, std = fr.mean(0), fr.std(0) + 1e-8
        fr, fs = (fr - mean) / std, (fs - mean) / std
        scale = np.sqrt(fr.shape[1])  # rms per feature, like the pixel distance
        result["feature"] = _space_summary(pairwise_rms(fs, fr) * scale, pairwise_rms(fr, fr) * scale,
                                           synthetic, real, is_member)
        result["feature"]["space"] = space.name
    pixel = result["pixel"]
    order = np.argsort(pixel["_d1"], kind="stable")[:GALLERY]
    result["gallery"] = [{"synthetic": int(i), "real": int(pixel["_nearest"][i]),
                          "distance": float(pixel["_d1"][i]), "member": bool(is_member[pixel["_nearest"][i]]),
                          "near_copy": bool(pixel["_d1"][i] < pixel["threshold"])} for i in order]
    result["source_attack"] = _source_attack(synthetic, real, flat_s, flat_r, is_member, n_boot=n_boot)
    for summary in (result["pixel"], result.get("feature", {})):
        summary.pop("_nearest", None), summary.pop("_d1", None)
    result["rule"] = (f"near-copy: nearest real slice closer than {COPY_FRACTION:g} × the "
                      f"{COPY_PERCENTILE:g}th percentile of real-slice to nearest-other-patient distances")
    return result


def _source_attack(synthetic: Slices, real: Slices, flat_s, flat_r, is_member, *, n_boot: int):
    """AUC that synthetic images are closer to their own source patient when that patient is a member."""
    real_ids = set(real.patients.tolist())
    sources = sorted(set(synthetic.patients.tolist()) & real_ids)
    member_ids = set(real.patients[is_member].tolist())
    labels = np.array([s in member_ids for s in sources])
    if labels.all() or not labels.any():
        return None
    scores = []
    for source in sources:
        d = pairwise_rms(flat_s[synthetic.patients == source], flat_r[real.patients == source])
        scores.append(-float(d.min(axis=1).mean()))  # closer to own source → higher score → "member"
    return auc_estimate(np.array(scores), labels, n_boot=n_boot,
                        method="black-box: mean distance of a patient's synthetic slices to that patient's own "
                               "real slices; members expected closer if memorised")
