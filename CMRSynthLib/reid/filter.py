"""The generation-time privacy filter: no synthetic slice leaves that re-identifies a training patient.

Every generated slice is checked with the generator's re-identification model (:mod:`.model`): one closer
than the threshold to some training patient's slice is *rejected* and drawn again with a seed derived from
the draw's own (:func:`redraw_seed`). A 2D model redraws only the rejected slices (each slice is its own
draw); a 3D model redraws the whole volume. A slice still rejected after ``retries`` redraws is *refused*:
the model reproduces a training patient for that mask, and the caller withholds the image
(:func:`CMRSynthLib.synthesis.synthesize` raises :class:`PrivacyFilterRefusal`). Everything is
deterministic: the same seed gives the same images, rejections and refusals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from CMRSynthLib.errors import InputError
from CMRSynthLib.reid.model import ReidModel

DEFAULT_RETRIES = 4


class PrivacyFilterRefusal(InputError):
    """A draw still re-identified a training patient after every redraw; the image is withheld."""


def redraw_seed(seed: int, attempt: int) -> int:
    """The seed of redraw ``attempt`` (1, 2, ...) of the draw seeded ``seed`` (a 32-bit number from NumPy's
    ``SeedSequence([seed, attempt])``: the same on every machine, unrelated to the run's plain seeds)."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    return int(np.random.SeedSequence([int(seed) % 2 ** 63, int(attempt)]).generate_state(1)[0])


@dataclass(frozen=True)
class Screening:
    """What the filter did to one draw.

    Attributes:
        rejected: draws thrown away (slices for a 2D model, volumes for a 3D one).
        rounds: redraw rounds. refused: stack indices still re-identifying after the last round.
        min_distance: the smallest nearest-training-slice distance among the slices kept.
        seeds: ``(K,)`` the seed each kept slice was drawn with.
    """

    rejected: int
    rounds: int
    refused: tuple[int, ...]
    min_distance: float
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class PrivacyFilter:
    """A :class:`ReidModel` with the threshold and redraw budget of one sampling run."""

    reid: ReidModel
    threshold: float
    retries: int = DEFAULT_RETRIES

    def __post_init__(self):
        if not self.threshold > 0:
            raise InputError(f"--privacy-filter threshold must be a distance > 0, got {self.threshold}")
        if isinstance(self.retries, bool) or int(self.retries) != self.retries or self.retries < 0:
            raise InputError(f"--privacy-retries must be a whole number ≥ 0, got {self.retries}")

    @classmethod
    def of(cls, reid: ReidModel, threshold: float | None = None, retries: int = DEFAULT_RETRIES) -> "PrivacyFilter":
        """The filter at ``threshold`` (None: the model's calibrated threshold)."""
        return cls(reid, reid.threshold if threshold is None else float(threshold), retries)

    @property
    def false_match_rate(self) -> float:
        """The held-out calibration slices' false-match rate at this threshold."""
        return self.reid.false_match_rate_at(self.threshold)

    def describe(self) -> dict:
        """What a header and a sidecar record about the filter."""
        return {"threshold": self.threshold, "false_match_rate": self.false_match_rate, "retries": self.retries,
                "calibrated_threshold": self.reid.threshold,
                "calibration": {k: self.reid.record["calibration"][k] for k in ("split", "patients", "slices")},
                "generator_model_id": self.reid.record["generator"]["model_id"]}

    def screen(self, stack: np.ndarray, labels: np.ndarray, seed: int,
               redraw: Callable[[np.ndarray, int], np.ndarray], *, whole: bool) -> tuple[np.ndarray, Screening]:
        """Check a drawn stack and redraw what re-identifies a training patient.

        Args:
            stack: ``(K, H, W)`` generated slices in [-1, 1] (prepared grid); labels: ``(K, H, W)`` their masks.
            seed: the seed the stack was drawn with.
            redraw: ``redraw(indices, seed)`` → ``(len(indices), H, W)``: those slices drawn again with ``seed``.
            whole: the stack is one draw (3D model): redraw all of it when any slice is rejected.

        Returns:
            The kept stack (refused slices included, as last drawn) and the :class:`Screening`.
        """
        stack = np.array(stack, dtype=np.float32, copy=True)
        seeds = np.full(len(stack), int(seed), dtype=np.int64)
        corner = self.reid.corner(labels)  # one window for the whole stack, as its preprocessing has
        distances = self.reid.distances(stack, labels, corner=corner)
        rejected, rounds = 0, 0
        while (distances < self.threshold).any() and rounds < self.retries:
            rounds += 1
            flagged = np.flatnonzero(distances < self.threshold)
            which = np.arange(len(stack)) if whole else flagged
            rejected += 1 if whole else len(flagged)
            new_seed = redraw_seed(seed, rounds)
            stack[which] = redraw(which, new_seed)
            seeds[which] = new_seed
            distances[which] = self.reid.distances(stack[which], labels[which], corner=corner)
        refused = tuple(int(i) for i in np.flatnonzero(distances < self.threshold))
        if refused:
            rejected += 1 if whole else len(refused)
        return stack, Screening(rejected, rounds, refused, float(distances.min()), tuple(int(s) for s in seeds))
