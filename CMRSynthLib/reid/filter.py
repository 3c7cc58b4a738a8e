"""The generation-time privacy filter: no synthetic slice leaves that re-identifies a training patient.

Every generated slice is checked with the generator's re-identification model (:mod:`.model`): one closer
than the threshold to some training patient's slice is *rejected* and drawn again with a seed derived from
the draw's own (:func:`redraw_seed`). A 2D model redraws only the rejected slices (each slice is its own
draw); a 3D model redraws the whole volume. A slice still rejected after ``retries`` redraws is *refused*:
the model reproduces a training patient for that mask, and the caller withholds the image
(:func:`CMRSynthLib.synthesis.synthesize` raises :class:`PrivacyFilterRefusal`). Screening is deterministic:
the same draw seed gives the same images, rejections and refusals.

But a filtered run's draw seeds are secret (:func:`secret_draw_seed`), written only to the private log: with a
reproducible first draw, anyone holding the shareable model and the mask could draw it again, compare it with the
shared image and see which slices were redrawn, and so whether the mask's patient was a training patient.

What the filter did to one image (how many draws it rejected, which slices it redrew) tells whoever reads it
whether the mask's patient was a training patient: a memorising model's member masks are rejected almost
always, other masks at the false-match rate. So shared outputs carry only what is true of every image alike
(:meth:`PrivacyFilter.describe`: the threshold and its false-match rate), and the counts go to ONE private log
beside the output folder, ``<out>.PRIVATE-filter-log.jsonl`` (:class:`FilterLog`: owner-only, one JSON line
per screened draw, appended).
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from CMRSynthLib.errors import InputError
from CMRSynthLib.reid.model import NOT_MEASURABLE, ReidModel, measured_false_match_rate

DEFAULT_RETRIES = 4
LOG_SUFFIX = ".PRIVATE-filter-log.jsonl"
LOG_FORMAT = "cmrsynth-privacy-filter-log"
LOG_NOTE = ("What the privacy filter did to each image (rejected draws, redrawn and refused slices): it tells "
            "whether a mask's patient was a training patient. Keep it inside the hospital; never share it with the "
            "images.")


class PrivacyFilterRefusal(InputError):
    """A draw still re-identified a training patient after every redraw; the image is withheld."""


def redraw_seed(seed: int, attempt: int) -> int:
    """The seed of redraw ``attempt`` (1, 2, ...) of the draw seeded ``seed`` (a 32-bit number from NumPy's
    ``SeedSequence([seed, attempt])``: the same on every machine, unrelated to the run's plain seeds)."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    return int(np.random.SeedSequence([int(seed) % 2 ** 63, int(attempt)]).generate_state(1)[0])


def secret_draw_seed() -> int:
    """The seed of one filtered draw, from the operating system's CSPRNG (:mod:`secrets`): never derived from
    ``--seed``, written only to the private log (see the module notes)."""
    return secrets.randbits(63)


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
    def false_match_rate(self) -> float | None:
        """The held-out calibration slices' false-match rate at this threshold (None: not measurable, see
        :func:`measured_false_match_rate`)."""
        return measured_false_match_rate(self.reid.calibration_distances, self.threshold,
                                         self.reid.record["calibration"]["target_false_match_rate"])

    def describe(self) -> dict:
        """What a shared output (sidecar, done event) may say about the filter: only what is true of every image
        of the run alike. No count of anything: not of the image's rejected draws, nor of the held-out patients
        or slices (a false-match rate that is not measurable is None, with a note that does not count them)."""
        described = {"threshold": self.threshold, "false_match_rate": self.false_match_rate}
        if described["false_match_rate"] is None:
            described["false_match_rate_note"] = f"{NOT_MEASURABLE}: too few held-out calibration slices"
        return described

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


class FilterLog:
    """The private log of a filtered run's counts, ``<out>.PRIVATE-filter-log.jsonl`` beside the output folder.

    One JSON object per line: a ``run`` line (model, threshold, when), then an ``image`` line per screened draw
    (:meth:`record`). Runs into the same folder append to the same log. The file is created owner-only (0600)
    and made so again if it was not; every line is one ``write`` to a file opened for appending, so lines of a
    cancelled run are whole.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(os.path.abspath(out))
        self.path = self.out.with_name(self.out.name + LOG_SUFFIX)

    def start(self, privacy_filter: PrivacyFilter, *, model_id: str) -> None:
        """The ``run`` line: what every ``image`` line after it was screened with."""
        self._append({"event": "run", "format": LOG_FORMAT, "note": LOG_NOTE, "out": str(self.out),
                      "model": model_id, "retries": privacy_filter.retries,
                      "calibration_slices": len(privacy_filter.reid.calibration_distances),
                      **privacy_filter.describe()})

    def record(self, screening: Screening, *, image: str, mask: str | os.PathLike, seed: int) -> None:
        """An ``image`` line: the draw seeded ``seed`` for ``mask`` (written as ``image`` unless withheld)."""
        redrawn = [index for index, kept in enumerate(screening.seeds) if kept != seed]
        self._append({"event": "image", "image": image, "mask": os.fspath(mask), "seed": int(seed),
                      "withheld": bool(screening.refused), "rejected_draws": screening.rejected,
                      "redrawn_slices": redrawn, "refused_slices": list(screening.refused),
                      "rounds": screening.rounds, "min_distance": screening.min_distance})

    def summary(self) -> str:
        """What the filter did in the last run into this output folder, for the operator's console only (the
        counts tell whether masks' patients were training patients: never into a shared output)."""
        images = [entry for entry in self._last_run() if entry["event"] == "image"]
        withheld = sum(entry["withheld"] for entry in images)
        redrawn = sum(len(entry["redrawn_slices"]) for entry in images)
        return (f"privacy filter: {_count(len(images) - withheld, 'image')} written, {_count(redrawn, 'slice')} "
                f"redrawn, {_count(withheld, 'image')} withheld; what it did to each image: {self.path} (private: "
                "keep it inside the hospital)")

    def _last_run(self) -> list[dict]:
        """The lines from the last ``run`` line into this output folder on (runs into it append)."""
        entries = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        starts = [i for i, entry in enumerate(entries) if entry["event"] == "run" and entry["out"] == str(self.out)]
        return entries[starts[-1]:] if starts else []

    def _append(self, entry: dict) -> None:
        line = json.dumps({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           **entry}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
            os.write(descriptor, line.encode("utf-8"))
        finally:
            os.close(descriptor)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
