"""The set of 2D slices every audit measure works on.

The audit works slice-wise on the *prepared* grid (the checkpoint's preprocessing), so real and synthetic
images are compared exactly as the generator sees them. The patient stays attached to every slice: the
patient is the privacy unit and the bootstrap unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


_PER_SLICE = ("images", "masks", "patients", "vendors", "phases", "groups")


@dataclass(frozen=True, eq=False)
class Slices:
    """Slices with their masks and who they belong to.

    Attributes:
        images: ``(N, H, W)`` float32 in [-1, 1].
        masks: ``(N, H, W)`` uint8 canonical labels (0 bg, 1 LV, 2 MYO, 3 RV).
        patients, vendors, phases, groups: ``(N,)`` str arrays. For synthetic slices ``patients`` names the
            patient whose mask conditioned the image.
        spacing: pixel size in mm ``(rows, columns)``, for distances in mm (HD95).
    """

    images: np.ndarray
    masks: np.ndarray
    patients: np.ndarray
    vendors: np.ndarray
    phases: np.ndarray
    groups: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        images = np.asarray(self.images, dtype=np.float32)
        masks = np.asarray(self.masks, dtype=np.uint8)
        if images.ndim != 3 or masks.shape != images.shape:
            raise ValueError(f"images and masks must both be (N, H, W); got {images.shape} and {masks.shape}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "masks", masks)
        for name in _PER_SLICE[2:]:
            value = np.asarray(getattr(self, name), dtype=str)
            if value.shape != (len(images),):
                raise ValueError(f"{name} must be ({len(images)},) strings, got shape {value.shape}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])

    def take(self, index) -> "Slices":
        """The slices at ``index`` (an integer array or boolean mask), in that order."""
        return Slices(*(getattr(self, name)[index] for name in _PER_SLICE), spacing=self.spacing)

    def of_patients(self, patients: Iterable[str]) -> "Slices":
        return self.take(np.isin(self.patients, list(patients)))

    def with_images(self, images: np.ndarray) -> "Slices":
        """Same masks and attributes, other images ``(N, H, W)`` (e.g. synthetic ones)."""
        return Slices(images, *(getattr(self, name) for name in _PER_SLICE[1:]), spacing=self.spacing)

    def patient_ids(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.patients.tolist())))

    def patient_strata(self) -> dict[str, tuple[str, str]]:
        """Patient → (vendor, group) of its first slice."""
        strata = {}
        for patient, vendor, group in zip(self.patients, self.vendors, self.groups):
            strata.setdefault(str(patient), (str(vendor), str(group)))
        return strata

    @staticmethod
    def cat(parts: Sequence["Slices"]) -> "Slices":
        if not parts:
            raise ValueError("Slices.cat needs at least one part")
        return Slices(*(np.concatenate([getattr(p, name) for p in parts]) for name in _PER_SLICE),
                      spacing=parts[0].spacing)


def one_hot(labels: np.ndarray):
    """``(N, H, W)`` canonical labels → ``(N, 4, H, W)`` float32 one-hot torch tensor."""
    from CMRSynthLib.data.datasets import one_hot as channels_first

    return channels_first(labels).movedim(0, 1)


def to_conditions(slices: Slices, vocabulary):
    """Generator :class:`~CMRSynthLib.generators.base.Conditions` for slices: one-hot masks and tokens.

    Names are turned into tokens exactly as the training data did (a name the vocabulary lacks, e.g.
    "unknown", becomes the null token), so the attacked model sees what it was trained on.
    """
    import torch

    from CMRSynthLib.data.datasets import lenient_token
    from CMRSynthLib.generators.base import Conditions

    def tokens(kind: str, names: np.ndarray):
        return torch.tensor([lenient_token(vocabulary, kind, str(n)) for n in names], dtype=torch.long)

    return Conditions(one_hot(slices.masks), tokens("vendors", slices.vendors), tokens("phases", slices.phases),
                      tokens("groups", slices.groups))


def per_patient(values: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of per-slice ``values`` ``(N,)`` per patient, ignoring NaN → (patient ids, means), sorted by id.

    A patient whose values are all NaN gets NaN.
    """
    ids = np.array(sorted(set(np.asarray(patients, dtype=str).tolist())))
    means = np.full(len(ids), np.nan)
    for i, patient in enumerate(ids):
        chosen = values[patients == patient]
        chosen = chosen[np.isfinite(chosen)]
        if chosen.size:
            means[i] = chosen.mean()
    return ids, means

