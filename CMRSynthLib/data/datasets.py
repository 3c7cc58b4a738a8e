"""Torch datasets of prepared cases: 2D slices or 3D stacks, with their conditions and their patient.

Every item is a dict:

- ``image``: ``(1, H, W)`` (slices) or ``(1, D, H, W)`` (stacks) float32 in [-1, 1];
- ``mask``: one-hot canonical labels ``(4, H, W)`` / ``(4, D, H, W)`` float32 (background, LV, MYO, RV);
- ``vendor``, ``phase``, ``group``: 0-d long tokens from the :class:`Vocabulary`; a name the vocabulary does
  not know (including ``"unknown"``) gets the null token 0, the same token classifier-free guidance drops
  conditions to, so such a case still trains the unconditional branch;
- ``patient`` (the privacy unit), ``case`` (``patient_phase``), and ``slice``: the index in the prepared
  stack of the slice, or for a stack of its first depth position (negative when the stack was padded).

Stacks have a fixed depth ``D``: shorter stacks are padded evenly on both ends with background (mask 0,
image -1, the normalised minimum), longer ones are cropped to the ``D`` slices centred on the heart
(:func:`fit_depth`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from CMRSynthLib.data.conventions import NUM_CLASSES
from CMRSynthLib.data.preprocess import PreparedCase
from CMRSynthLib.generators.base import NULL, Conditions, Vocabulary

KINDS = {"vendor": "vendors", "phase": "phases", "group": "groups"}  # item key → Vocabulary field


def lenient_token(vocabulary: Vocabulary, kind: str, name: str | None) -> int:
    """``vocabulary.token(kind, name)``, or the null token for a name it does not know."""
    return vocabulary.token(kind, name) if name in getattr(vocabulary, kind) else NULL


def one_hot(mask) -> torch.Tensor:
    """Canonical labels ``(..., H, W)`` (array or tensor of 0..3) → float32 one-hot ``(4, ..., H, W)``."""
    labels = (mask if torch.is_tensor(mask) else torch.as_tensor(np.asarray(mask))).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"mask values must be canonical labels 0..{NUM_CLASSES - 1}, "
                         f"got {labels.min().item()}..{labels.max().item()}")
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).movedim(-1, 0).float()


def fit_depth(image: np.ndarray, mask: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pad or crop a ``(K, H, W)`` stack to ``(depth, H, W)``.

    Returns ``(image, mask, start)`` where ``start`` is the stack index of the first output slice, so
    output slice ``d`` is input slice ``start + d``. Padding is even (extra slice at the end) with image -1
    and mask 0; cropping keeps the window centred on the heart's mean slice (the middle if the mask is empty).
    """
    k = image.shape[0]
    if k <= depth:
        start = -((depth - k) // 2)
        pad = ((-start, depth - k + start), (0, 0), (0, 0))
        return np.pad(image, pad, constant_values=-1.0), np.pad(mask, pad, constant_values=0), start
    heart = np.flatnonzero(mask.reshape(k, -1).any(axis=1))
    centre = heart.mean() if heart.size else (k - 1) / 2.0
    start = int(np.clip(np.rint(centre - (depth - 1) / 2.0), 0, k - depth))
    return image[start:start + depth], mask[start:start + depth], start


def collate(items: Sequence[dict]) -> tuple[torch.Tensor, Conditions, list[str]]:
    """Items → ``(images (B, 1, ...), Conditions, patient ids)``; a DataLoader ``collate_fn``."""
    images = torch.stack([item["image"] for item in items])
    cond = Conditions(torch.stack([item["mask"] for item in items]),
                      *(torch.stack([item[key] for item in items]) for key in KINDS))
    return images, cond, [item["patient"] for item in items]


class _PreparedDataset(Dataset):
    """Shared bookkeeping: the cases, their tokens, and which items belong to which patient."""

    def __init__(self, prepared_cases: Sequence[PreparedCase], vocabulary: Vocabulary, *, any_size: bool = False):
        self.cases = list(prepared_cases)
        self.vocabulary = vocabulary
        sizes = {case.image.shape[1:] for case in self.cases}
        if len(sizes) > 1 and not any_size:
            raise ValueError(f"prepared cases must share one in-plane size, got {sorted(sizes)}")
        self._tokens = [{key: torch.tensor(lenient_token(vocabulary, kind, getattr(case.record, key)))
                         for key, kind in KINDS.items()} for case in self.cases]
        self._items: list[tuple[int, int]] = []  # (case index, slice index or stack start)

    def __len__(self) -> int:
        return len(self._items)

    def _item(self, case_index: int, first: int, image: np.ndarray, mask: np.ndarray) -> dict:
        record = self.cases[case_index].record
        return {"image": torch.tensor(image, dtype=torch.float32)[None], "mask": one_hot(mask),
                **self._tokens[case_index], "patient": record.patient, "case": record.case_id, "slice": first}

    def patient_index(self) -> dict[str, list[int]]:
        """Patient id → indices of that patient's items (for patient-level sampling under DP)."""
        index: dict[str, list[int]] = {}
        for position, (case_index, _) in enumerate(self._items):
            index.setdefault(self.cases[case_index].record.patient, []).append(position)
        return index


class SliceDataset(_PreparedDataset):
    """One item per slice of every prepared case; ``skip_empty`` drops slices whose mask is all background.

    ``tile`` ``(H, W)``: the cases are whole fields of view of any size, and every item is a tile of that size
    at a random place in its slice (padded with image -1 / mask 0 where the slice is smaller), so a model
    learns every part of the field of view. The place is drawn from ``(seed, epoch, index)``: the same run
    sees the same tiles, a resumed one included (the trainer's sampler sets :attr:`epoch`).
    """

    def __init__(self, prepared_cases: Sequence[PreparedCase], vocabulary: Vocabulary, *, skip_empty: bool = True,
                 tile: tuple[int, int] | None = None, seed: int = 0):
        super().__init__(prepared_cases, vocabulary, any_size=tile is not None)
        self.tile, self.seed, self.epoch = tile, seed, 0
        for case_index, case in enumerate(self.cases):
            keep = case.mask.reshape(len(case.mask), -1).any(axis=1) if skip_empty else np.ones(len(case.mask), bool)
            self._items += [(case_index, int(k)) for k in np.flatnonzero(keep)]

    def __getitem__(self, index: int) -> dict:
        case_index, k = self._items[index]
        case = self.cases[case_index]
        if self.tile is None:
            return self._item(case_index, k, case.image[k], case.mask[k])
        image, mask = random_tile(case.image[k], case.mask[k], self.tile,
                                  np.random.default_rng([self.seed, self.epoch, index]))
        return self._item(case_index, k, image, mask)


def random_tile(image: np.ndarray, mask: np.ndarray, tile, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``tile`` ``(H, W)`` of a slice at a uniformly random place (padded evenly where the slice is smaller)."""
    pads = [(max(0, t - n) // 2, max(0, t - n) - max(0, t - n) // 2) for t, n in zip(tile, image.shape)]
    image = np.pad(image, pads, constant_values=-1.0)
    mask = np.pad(mask, pads, constant_values=0)
    y, x = (int(rng.integers(0, n - t + 1)) for n, t in zip(image.shape, tile))
    return image[y:y + tile[0], x:x + tile[1]], mask[y:y + tile[0], x:x + tile[1]]


class StackDataset(_PreparedDataset):
    """One item per prepared case, its stack fitted to ``depth`` slices (default: the deepest case)."""

    def __init__(self, prepared_cases: Sequence[PreparedCase], vocabulary: Vocabulary, *, depth: int | None = None):
        super().__init__(prepared_cases, vocabulary)
        if depth is None:
            depth = max((len(case.image) for case in self.cases), default=1)
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be a positive whole number of slices, got {depth!r}")
        self.depth = int(depth)
        self._items = [(case_index, 0) for case_index in range(len(self.cases))]

    def __getitem__(self, index: int) -> dict:
        case_index, _ = self._items[index]
        case = self.cases[case_index]
        image, mask, start = fit_depth(case.image, case.mask, self.depth)
        return self._item(case_index, start, image, mask)
