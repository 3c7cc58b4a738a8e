"""The visual Turing test: can readers tell synthetic slices from real ones?

A study is a balanced, shuffled set of 2D slices from real and synthetic volumes, each shown under a
blinded id. Readers answer "real" or "synthetic" with a confidence from 1 (guess) to 5 (certain). Results,
per reader, treat *synthetic* as the positive class: sensitivity is the share of synthetic slices caught,
specificity the share of real slices accepted as real. Agreement between two readers is Cohen's κ on the
items both answered. Accuracy near 0.5 means the readers could not tell the difference.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from CMRSynthLib.data.conventions import LPS_TO_RAS
from CMRSynthLib.data.volume import is_image_file, read_volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_write_text

ANSWERS = ("real", "synthetic")
CONFIDENCE = (1, 2, 3, 4, 5)
COLUMNS = ("reader", "item", "answer", "confidence", "truth", "source", "slice")
_LABEL_FILE = re.compile(r"(_gt|label|mask|seg)", re.IGNORECASE)
# Where a viewer that places images in patient space (Slicer's slice views) puts a study slice: its IJK-to-RAS
# matrix. Column i runs toward the patient's left and row j toward posterior (ITK's identity direction, LPS, as
# RAS: how Slicer places a NIfTI slice written with that direction, e.g. an ACDC volume as data/ssl4mis.py reads
# it). Slicer's axial view shows patient right on the screen's left and anterior up, so voxel (0, 0), the
# right-anterior corner, is at the top left: row 0 at the top, column 0 at the left, as the standalone tab draws
# the array. (An identity matrix put (0, 0) at the left-posterior corner: the bottom right, turned 180°.)
DISPLAY_IJK_TO_RAS = LPS_TO_RAS


@dataclass(frozen=True)
class StudyItem:
    """One slice of the study: ``item`` is its blinded id; ``truth`` and ``source`` are hidden from readers."""

    item: str
    source: str
    slice_index: int
    truth: str


@dataclass(frozen=True)
class Answer:
    reader: str
    item: str
    answer: str
    confidence: int


def image_files(path: str | os.PathLike) -> list[Path]:
    """Image volumes in a file or folder (recursively), skipping label/mask files by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError("file or folder not found", path=path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p) and not _LABEL_FILE.search(p.name)
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise InputError("holds no image volumes (label and mask files are skipped)", path=path)
    return files


def central_slices(depth: int, count: int) -> list[int]:
    """``count`` slice indices spread evenly (cell centres) over the central 60% of ``depth`` slices."""
    lo, hi = int(np.floor(0.2 * depth)), int(np.ceil(0.8 * depth)) - 1
    lo, hi = min(lo, depth - 1), max(hi, min(lo, depth - 1))
    return sorted({int(np.floor(lo + (hi - lo) * (i + 0.5) / count + 0.5)) for i in range(count)})


def build_study(real: list[Path], synthetic: list[Path], *, per_class: int, slices_per_volume: int = 2,
                seed: int = 0) -> list[StudyItem]:
    """A balanced study: ``per_class`` real and ``per_class`` synthetic slices, shuffled, with blinded ids."""
    rng = np.random.default_rng(seed)
    chosen = []
    for truth, files in (("real", real), ("synthetic", synthetic)):
        candidates = []
        for path in files:
            depth = read_volume(path).shape[0]
            candidates += [(str(path), k, truth) for k in central_slices(depth, slices_per_volume)]
        if len(candidates) < per_class:
            raise InputError(f"only {len(candidates)} {truth} slices are available; ask for at most that many "
                             f"per class or add volumes")
        picked = rng.choice(len(candidates), size=per_class, replace=False)
        chosen += [candidates[i] for i in sorted(picked)]
    order = rng.permutation(len(chosen))
    return [StudyItem(f"item{n + 1:03d}", *chosen[i]) for n, i in enumerate(order)]


def reader_order(items: list[StudyItem], reader: str, *, seed: int = 0) -> list[StudyItem]:
    """The order one reader sees: the same items, shuffled per reader (stable for a reader and seed)."""
    digest = int(hashlib.sha256(f"{seed}:{reader}".encode()).hexdigest()[:8], 16)
    return [items[i] for i in np.random.default_rng(digest).permutation(len(items))]


def load_slice(item: StudyItem) -> np.ndarray:
    """The item's slice as a float32 (H, W) array."""
    return np.asarray(read_volume(item.source).array[item.slice_index], dtype=np.float32)


def display_image(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 for display: a 1st–99th percentile window, the same rule for real and synthetic slices."""
    lo, hi = np.percentile(image, [1, 99])
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.ascontiguousarray((np.clip(scaled, 0, 1) * 255).round().astype(np.uint8))


def check_answer(answer: str, confidence: int) -> None:
    if answer not in ANSWERS:
        raise InputError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
    if confidence not in CONFIDENCE:
        raise InputError(f"confidence must be a whole number from 1 to 5, got {confidence!r}")


# -- results ----------------------------------------------------------------------------------------------
def save_results(path: str | os.PathLike, items: list[StudyItem], answers: list[Answer]) -> Path:
    """Write every answer with its item's truth and source as CSV (atomically)."""
    by_id = {item.item: item for item in items}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for a in answers:
        item = by_id[a.item]
        writer.writerow((a.reader, a.item, a.answer, a.confidence, item.truth, item.source, item.slice_index))
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def summary_path(results: str | os.PathLike) -> Path:
    """Where the metrics of ``results.csv`` go: ``results_summary.csv`` beside it."""
    results = Path(results)
    return results.with_name(f"{results.stem}_summary.csv")


def save_summary(path: str | os.PathLike, result: dict) -> Path:
    """Write :func:`summary`'s metrics as a long CSV ``who,measure,value`` (atomically).

    One row per reader and measure (answered, accuracy, sensitivity, specificity, mean_confidence) and one
    ``cohens_kappa`` row per pair of readers (``A vs B``); an undefined value is left empty.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("who", "measure", "value"))
    rows = [(reader, measure, value) for reader, metrics in result["readers"].items()
            for measure, value in metrics.items()]
    rows += [(pair, "cohens_kappa", value) for pair, value in result["kappa"].items()]
    for who, measure, value in rows:
        writer.writerow((who, measure, "" if isinstance(value, float) and not np.isfinite(value) else value))
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def load_results(path: str | os.PathLike) -> tuple[list[StudyItem], list[Answer]]:
    """Items and answers from a results CSV written by :func:`save_results`."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and set(COLUMNS) - set(rows[0]):
        raise InputError(f"is not a reader-study results file (columns {', '.join(COLUMNS)} expected)", path=path)
    items = {r["item"]: StudyItem(r["item"], r["source"], int(r["slice"]), r["truth"]) for r in rows}
    answers = [Answer(r["reader"], r["item"], r["answer"], int(r["confidence"])) for r in rows]
    return list(items.values()), answers


def reader_metrics(items: list[StudyItem], answers: list[Answer]) -> dict[str, float | int]:
    """Accuracy, sensitivity (synthetic caught), specificity (real accepted) and counts for one reader."""
    truth = {item.item: item.truth for item in items}
    tp = sum(1 for a in answers if truth[a.item] == "synthetic" and a.answer == "synthetic")
    fn = sum(1 for a in answers if truth[a.item] == "synthetic" and a.answer == "real")
    tn = sum(1 for a in answers if truth[a.item] == "real" and a.answer == "real")
    fp = sum(1 for a in answers if truth[a.item] == "real" and a.answer == "synthetic")
    n = tp + fn + tn + fp
    return {"answered": n, "accuracy": (tp + tn) / n if n else float("nan"),
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "mean_confidence": float(np.mean([a.confidence for a in answers])) if answers else float("nan")}


def cohens_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) of two raters' labels on the same items (NaN if p_e is 1)."""
    if len(first) != len(second) or not first:
        raise ValueError("κ needs two equally long, non-empty lists of answers")
    a, b = np.asarray(first), np.asarray(second)
    observed = float(np.mean(a == b))
    expected = sum(float(np.mean(a == label)) * float(np.mean(b == label)) for label in ANSWERS)
    return float("nan") if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def summary(items: list[StudyItem], answers: list[Answer]) -> dict:
    """Per-reader metrics and pairwise κ (on the items both readers answered)."""
    readers = sorted({a.reader for a in answers})
    per_reader = {r: reader_metrics(items, [a for a in answers if a.reader == r]) for r in readers}
    kappa = {}
    for r1, r2 in combinations(readers, 2):
        first = {a.item: a.answer for a in answers if a.reader == r1}
        second = {a.item: a.answer for a in answers if a.reader == r2}
        shared = sorted(set(first) & set(second))
        if shared:
            kappa[f"{r1} vs {r2}"] = cohens_kappa([first[i] for i in shared], [second[i] for i in shared])
    return {"readers": per_reader, "kappa": kappa}
