"""Train / validation / holdout splits by patient, never by slice (the patient is the privacy unit).

The split depends only on the *set* of patient ids, the fractions, the strata and the seed: ids are sorted
first, so the order a cohort lists them in does not matter.

Counts: each part gets ``round(n · fraction)`` patients by the largest-remainder rule, then every part with
a non-zero fraction that got none takes one from the largest part. Fewer patients than non-zero fractions
is refused. Stratification (e.g. by vendor or pathology group) lays the shuffled strata end to end and deals
the parts along that list in an interleaved pattern that keeps every prefix proportional, so each stratum
receives each part in proportion, within one patient.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Mapping

import numpy as np

from CMRSynthLib.errors import InputError

PARTS = ("train", "validation", "holdout")


@dataclass(frozen=True)
class Split:
    """Patient ids of each part, sorted; the parts are disjoint."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    holdout: tuple[str, ...]

    def __post_init__(self):
        seen: set[str] = set()
        for name in PARTS:
            ids = tuple(sorted(getattr(self, name)))
            overlap = seen.intersection(ids)
            if overlap or len(set(ids)) != len(ids):
                raise ValueError(f"split parts must be disjoint lists of unique patients; {name} repeats "
                                 f"{sorted(overlap)[:5] or 'an id'}")
            seen.update(ids)
            object.__setattr__(self, name, ids)

    def to_dict(self) -> dict:
        return {name: list(getattr(self, name)) for name in PARTS}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Split":
        unknown = sorted(set(data) - set(PARTS))
        if unknown:
            raise InputError(f"unknown split keys {unknown}; expected {', '.join(PARTS)}")
        return cls(**{f.name: tuple(data.get(f.name, ())) for f in fields(cls)})


def part_counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Patients per part: largest remainder, then ≥ 1 for every non-zero fraction (needs enough patients)."""
    exact = np.asarray(fractions, dtype=np.float64) / sum(fractions) * n
    counts = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[index] += 1
    for index in np.flatnonzero((np.asarray(fractions) > 0) & (counts == 0)):
        counts[np.argmax(counts)] -= 1
        counts[index] += 1
    return counts.tolist()


def _deal(counts: list[int]) -> list[int]:
    """The part index for each position: at every step the part furthest behind its quota."""
    n = sum(counts)
    quota = np.asarray(counts, dtype=np.float64) / n
    dealt = np.zeros(len(counts))
    order = []
    for position in range(1, n + 1):
        behind = np.where(dealt < counts, quota * position - dealt, -np.inf)
        part = int(np.argmax(behind))
        dealt[part] += 1
        order.append(part)
    return order


def _check(patients: list[str], fractions: tuple[float, ...], strata) -> None:
    duplicates = sorted({p for p in patients if patients.count(p) > 1})
    if duplicates:
        raise InputError(f"patient ids must be unique to split by patient; repeated: {duplicates[:5]}")
    if len(fractions) != len(PARTS) or any(not (f >= 0) for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"split fractions must be {len(PARTS)} non-negative numbers (train, validation, "
                         f"holdout) summing to 1, got {tuple(fractions)}")
    needed = sum(f > 0 for f in fractions)
    if len(patients) < needed:
        raise InputError(f"{len(patients)} patients cannot fill {needed} parts of the split "
                         f"{tuple(fractions)}; at least {needed} are needed")
    if strata is not None:
        missing = [p for p in patients if p not in strata]
        if missing:
            raise InputError(f"strata give no stratum for patients {missing[:5]}")


def split_patients(patients: Iterable[str], *, fractions=(0.7, 0.1, 0.2), seed: int = 0,
                   strata: Mapping[str, str] | None = None) -> Split:
    """Split unique patient ids into train / validation / holdout, deterministically from ``seed``.

    ``strata`` maps every patient to a stratum (vendor, group, ...) whose proportions each part keeps.
    """
    patients = sorted(str(p) for p in patients)
    fractions = tuple(float(f) for f in fractions)
    _check(patients, fractions, strata)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for patient in patients:
        groups.setdefault(str(strata[patient]) if strata is not None else "", []).append(patient)
    names = sorted(groups)
    ordered = [p for name in rng.permutation(names) for p in rng.permutation(groups[name])]
    parts: list[list[str]] = [[] for _ in PARTS]
    for patient, part in zip(ordered, _deal(part_counts(len(patients), fractions))):
        parts[part].append(str(patient))
    return Split(*(tuple(part) for part in parts))
