"""From a cohort folder to what the trainer needs: a dataset of member cases, the vocabulary, the split.

The split is by patient (DESIGN §2.4): ``split_patients`` deals every patient to train, validation or
holdout, stratified by vendor and pathology group; ``train_patients`` then keeps only N of the training
patients (a seeded choice). The checkpoint card records exactly who were members, who was held out, and
who was left unused, plus a fingerprint of the data (a hash of patient ids and file sizes: no voxels, no
attributes).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from CMRSynthLib.data.conventions import UNKNOWN
from CMRSynthLib.errors import InputError

if TYPE_CHECKING:  # torch-free at import: `cmrsynth inspect` reads the training split without torch
    from CMRSynthLib.generators.base import Vocabulary

DEPTH_MULTIPLE = 8  # 3D stacks are padded to a multiple of this many slices


@dataclass(frozen=True, eq=False)
class TrainingData:
    """A training set and its provenance (the card's data, members, validation, holdout, unused)."""

    dataset: object  # SliceDataset or StackDataset
    vocabulary: Vocabulary
    preprocessing: object  # PreprocessConfig
    members: tuple[str, ...]
    validation: tuple[str, ...]
    holdout: tuple[str, ...]
    unused: tuple[str, ...]
    fingerprint: dict
    intensity: dict  # vendor → [lo, hi] median original intensities mapped to -1 and 1 ("*" = all)
    depth: int | None  # slices per stack (3D), None for slices (2D)
    source: dict | None = None  # the card's "dataset": name, license, citation, spacing assumption (known sources)
    null_vendors: tuple[str, ...] = ()  # member vendors the vocabulary lacks: their cases train the null token


def fingerprint(cohort) -> dict:
    """A hash of the cohort's patient ids and file sizes, with counts; no patient data."""
    digest = hashlib.sha256()
    for record in sorted(cohort.records, key=lambda r: (r.patient, r.phase, r.image_path)):
        sizes = [_size(cohort.root, p) for p in (record.image_path, record.label_path)]
        digest.update(f"{record.patient}|{record.phase}|{sizes[0]}|{sizes[1]}\n".encode())
    return {"sha256": digest.hexdigest(), "layout": cohort.layout, "patients": len(cohort.patients()),
            "cases": len(cohort.records), "simulated": all(r.simulated for r in cohort.records)}


def _size(root, path) -> int:
    if not path:
        return -1
    full = Path(path) if os.path.isabs(path) else Path(root) / path
    try:
        return full.stat().st_size
    except OSError:
        return -1


def choose_members(train: tuple[str, ...], count: int | None, *, seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``count`` of the training patients (a seeded choice), and the rest; all of them when None."""
    if count is None:
        return tuple(train), ()
    if not 1 <= count <= len(train):
        raise InputError(f"--train-patients must be between 1 and {len(train)} (the training split), got {count}")
    chosen = set(random.Random(seed).sample(sorted(train), count))
    return tuple(p for p in train if p in chosen), tuple(p for p in train if p not in chosen)


def load_training_data(data: str | os.PathLike, *, preprocessing, spatial_dims: int, seed: int,
                       train_patients: int | None = None, vocabulary: Vocabulary | None = None,
                       depth: int | None = None,
                       fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> TrainingData:
    """Open the cohort, split it by patient, prepare the member cases and wrap them in a dataset.

    ``vocabulary`` (from a checkpoint being fine-tuned, or ``--vendors``) is kept as it is: a member vendor it
    lacks is not learnt as a new token (under DP that would name the private cohort's vendor in the card) but
    trains the null token, as an ``unknown`` vendor does (``null_vendors`` names them, for the caller's
    warning). By default the vocabulary is the sorted member vendors. ``depth`` (3D) is the slices per stack, by
    default the deepest member stack rounded up to a multiple of :data:`DEPTH_MULTIPLE` (what the 3D networks
    can halve).
    """
    from CMRSynthLib.data.cohorts import load_case, open_cohort
    from CMRSynthLib.data.datasets import SliceDataset, StackDataset
    from CMRSynthLib.data.preprocess import prepare_case
    from CMRSynthLib.generators.base import Vocabulary

    cohort = open_cohort(data)
    records = labelled_records(cohort, data)
    split = training_split(records, seed=seed, fractions=fractions)
    members, unused = choose_members(tuple(split.train), train_patients, seed=seed)
    if not members:
        raise InputError(f"the training split is empty ({len(split_strata(records))} patients); add patients",
                         path=data)
    chosen = set(members)
    whole = preprocessing.field_of_view == "whole"
    if whole and spatial_dims != 2:
        raise InputError("whole-field-of-view models are 2D (slice-wise); use --field-of-view heart for 3D")
    prepared = [prepare_case(load_case(r), preprocessing, whole=whole) for r in records if r.patient in chosen]
    vendors = sorted({p.record.vendor for p in prepared if p.record.vendor != UNKNOWN})
    if vocabulary is None:
        vocabulary = Vocabulary(vendors=tuple(vendors))
    if spatial_dims == 2:
        dataset, depth = SliceDataset(prepared, vocabulary, tile=preprocessing.size if whole else None, seed=seed), None
    else:
        deepest = max(len(p.image) for p in prepared)
        depth = depth or DEPTH_MULTIPLE * math.ceil(deepest / DEPTH_MULTIPLE)
        dataset = StackDataset(prepared, vocabulary, depth=depth)
    return TrainingData(dataset=dataset, vocabulary=vocabulary, preprocessing=preprocessing, members=members,
                        validation=tuple(split.validation), holdout=tuple(split.holdout), unused=unused,
                        fingerprint=fingerprint(cohort), intensity=typical_intensity(prepared), depth=depth,
                        source=describe_source(cohort),
                        null_vendors=tuple(v for v in vendors if v not in vocabulary.vendors))


def labelled_records(cohort, data) -> list:
    """The cohort's cases that have a label map (what training uses); refused when there is none."""
    records = [r for r in cohort.records if r.label_path]
    if not records:
        raise InputError("the cohort has no case with a label map; training needs image/label pairs", path=data)
    return records


def split_sizes(cohort, *, seed: int = 0) -> dict[str, int]:
    """How many patients ``cmrsynth train`` puts in each part of ``cohort``'s split (train, validation, holdout):
    ``train`` is the N of ``cmrsynth privacy-budget --patients N`` and the most patients a DP step can expect."""
    split = training_split(labelled_records(cohort, cohort.root), seed=seed)
    return {"train": len(split.train), "validation": len(split.validation), "holdout": len(split.holdout)}


def split_strata(records) -> dict[str, str]:
    """Each patient's stratum of the split: its vendor and pathology group."""
    return {r.patient: f"{r.vendor}/{r.group}" for r in records}


def training_split(records, *, seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)):
    """How ``cmrsynth train --seed SEED`` splits the patients of ``records`` by patient: the cohort's own split
    (:func:`published_split`) or a stratified one. Its part sizes depend on the number of patients only."""
    from CMRSynthLib.data.splits import split_patients

    strata = split_strata(records)
    return published_split(records) or split_patients(sorted(strata), fractions=fractions, seed=seed, strata=strata)


def describe_source(cohort) -> dict | None:
    """What a model card says about where its data came from: name, license and citation of a known public
    dataset (ACDC), with the spacing assumption where the files had none; None for a user's own cohort."""
    from CMRSynthLib.data import ssl4mis

    if cohort.layout == "cmrsynth" and all(r.simulated for r in cohort.records):
        return {"name": "CMRSynth phantom (simulated, no patient data)", "license": "Apache-2.0 (generated)"}
    if cohort.layout not in ("acdc", "acdc-h5"):
        return None
    assumed = sum(r.attributes.get("spacing_source") == "assumed" for r in cohort.records)
    spacing = (f"{ssl4mis.spacing_note()} ({assumed} of {len(cohort.records)} cases assumed)" if assumed
               else "from the image headers" if cohort.layout == "acdc" else "from spacing.csv")
    return {**ssl4mis.DATASET, "layout": cohort.layout, "spacing": spacing}


def published_split(records):
    """The cohort's own split when its records carry one (ACDC's train/val lists: ``attributes["split"]``):
    train → members, val → holdout (the patients audits compare with and choices are made on). None when
    the records carry none."""
    from CMRSynthLib.data.splits import Split

    parts = {r.patient: r.attributes.get("split") for r in records}
    if not any(parts.values()):
        return None
    unlisted = sorted(p for p, part in parts.items() if part not in ("train", "val"))
    if unlisted:
        raise InputError(f"patients {unlisted[:5]} are in no train/val list of the cohort; list them or remove them")
    return Split(train=tuple(p for p, part in parts.items() if part == "train"), validation=(),
                 holdout=tuple(p for p, part in parts.items() if part == "val"))


def typical_intensity(prepared) -> dict:
    """Median original intensity range per vendor (and over all, key "*"), for de-normalising samples."""
    by_vendor: dict[str, list] = {}
    for case in prepared:
        by_vendor.setdefault(case.record.vendor, []).append(case.transform.intensity)
        by_vendor.setdefault("*", []).append(case.transform.intensity)
    return {vendor: [float(v) for v in np.median(np.asarray(ranges), axis=0)] for vendor, ranges in by_vendor.items()}
