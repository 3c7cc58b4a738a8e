"""A generator's re-identification model: the embedding, its training patients' gallery and a calibrated
threshold, kept beside the generator's folder in ``<folder>.PRIVATE-reid/``.

The decision: a slice *re-identifies a training patient* when its embedding lies closer than ``threshold`` to
the embedding of some slice of some training patient (the gallery: every heart slice of every member, both
phases). A volume is checked slice by slice.

Calibration, on patients the generator never saw (by default the checkpoint's validation split): each of
their slices is checked exactly as a generated slice is, against the whole gallery, and every hit is a false
match (none of them is a training patient). The threshold is the distance at which at most
``false_match_rate`` of these slices match: with their nearest-gallery distances sorted, the
``⌊rate·n⌋``-th (0-based), and a slice matches when its distance is strictly smaller. The false-match rate
measured there is reported with a patient-level bootstrap interval (:func:`CMRSynthLib.audit.stats.bootstrap`).
The same slices show what the embedding can do: the *true-match rate* is the share of them whose nearest
other slice of their own patient (another level, the other phase) is closer than the threshold.

Who teaches the embedding: the generator's members and, when the run used only part of its training split
(``--train-patients``), the split's other, *unused* patients (``others``). The embedding is a general "same
patient?" metric, and a few members alone teach it little (a model memorising 4 patients would leave 4 classes
to learn from); more patients of the same private training split sharpen it. Only members enter the gallery, and
calibration patients are never among the patients it learns from.

Privacy: the network and the gallery are computed from the training patients' images without DP, so the
folder is private data in the spirit of ``<folder>.PRIVATE-membership.json``: it is never written inside a
checkpoint folder (a DP model's folder stays shareable), it is created owner-only, and ``reid.json`` says so
(``shareable`` is true only when the training data is simulated, e.g. the phantom cohort).

Layout: ``reid.safetensors`` (``network.*`` weights, ``gallery`` ``(N, dim)``, ``calibration_distances``
``(M,)``) and ``reid.json`` (format ``cmrsynth-reid``: config, threshold, calibration, generator, privacy).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.audit.stats import NOT_MEASURABLE, Estimate, bootstrap, small_sample_warning
from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_dir
from CMRSynthLib.reid import DEFAULT_FALSE_MATCH_RATE, reid_path  # noqa: F401 - reid_path is part of this API
from CMRSynthLib.reid.embedding import ReidConfig, build_network, crop, embed, fit_embedding, heart_corner

FORMAT = "cmrsynth-reid"
VERSION = 1
WEIGHTS = "reid.safetensors"
RECORD = "reid.json"
PRIVATE_NOTE = ("Computed from the PRIVATE training patients' images without differential privacy (an embedding "
                "network and every training slice's embedding). Keep it inside the hospital; never share it with "
                "the model.")
SIMULATED_NOTE = "Computed from simulated patients (no real person): it may be shared."


def nearest_distances(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distance ``(M,)`` from each probe embedding ``(M, D)`` to its nearest gallery embedding ``(N, D)``."""
    return torch.cdist(torch.as_tensor(probes), torch.as_tensor(gallery)).min(dim=1).values.numpy()


def calibrate_threshold(distances: np.ndarray, false_match_rate: float) -> float:
    """The threshold at which at most ``false_match_rate`` of the held-out ``distances`` fall strictly below it."""
    if not 0.0 < false_match_rate < 1.0:
        raise InputError(f"--false-match-rate must be in (0, 1), got {false_match_rate}")
    ordered = np.sort(np.asarray(distances, np.float64))
    if ordered.size == 0:
        raise ValueError("calibration needs at least one held-out slice")
    return float(ordered[min(int(np.floor(false_match_rate * ordered.size)), ordered.size - 1)])


def match_rate(matched: np.ndarray, patients: np.ndarray, *, method: str, n_boot: int = 1000,
               seed: int = 0) -> Estimate:
    """Share of ``matched`` ``(N,)`` slices, with a bootstrap interval over their ``patients`` ``(N,)``."""
    ids, index = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    hits = np.bincount(index, weights=np.asarray(matched, dtype=np.float64), minlength=len(ids))
    counts = np.bincount(index, minlength=len(ids)).astype(np.float64)
    low, high = bootstrap(lambda draw: hits[draw].sum() / counts[draw].sum(), len(ids), n_boot=n_boot, seed=seed)
    return Estimate(float(hits.sum() / counts.sum()), low, high, len(ids), method, unit="patients",
                    warning=small_sample_warning(len(ids)))


def measured_false_match_rate(calibration_distances: np.ndarray, threshold: float, rate: float) -> float | None:
    """The share of the ``(M,)`` held-out calibration slices' nearest-gallery distances below ``threshold`` (each
    a false match), or None when there is none among fewer than 1/``rate`` slices: with M slices a rate below 1/M
    cannot be observed, so there no false match measures nothing, not 0% (the rule
    :func:`CMRSynthLib.audit.stats.tpr_measurable` applies to the TPR at a low FPR). ``rate`` is the false-match
    rate the threshold was calibrated for; with at least 1/``rate`` slices, none below the threshold is 0.0."""
    distances = np.asarray(calibration_distances)
    matches = int(np.count_nonzero(distances < threshold))
    if not matches and len(distances) * rate < 1 - 1e-9:
        return None
    return matches / len(distances)


def not_measurable(slices: int, rate: float | None = None) -> str:
    """Why a false-match rate is None, in words: "not measurable with 50 calibration slices (a 1.0% rate needs
    at least 100)" (the bracket only for a target ``rate``). For the operator, never for a shared output: it
    counts the held-out slices."""
    needs = f" (a {rate:.1%} rate needs at least {math.ceil(1 / rate - 1e-9)})" if rate else ""
    return f"{NOT_MEASURABLE} with {slices} calibration slices{needs}"


def format_rate(estimate: dict) -> str:
    """A rate from :meth:`Estimate.to_dict` as ``"0.7% (95% CI 0.0%–2.2%)"``, or "not measurable"."""
    if (estimate.get("warning") or "").startswith(NOT_MEASURABLE):
        return NOT_MEASURABLE
    if estimate["low"] is None:
        return f"{estimate['value']:.1%}"
    return f"{estimate['value']:.1%} (95% CI {estimate['low']:.1%}–{estimate['high']:.1%})"


def _own_patient_distances(embeddings: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Per slice, the distance to the nearest *other* slice of the same patient (inf when it has none)."""
    distances = torch.cdist(torch.as_tensor(embeddings), torch.as_tensor(embeddings)).numpy()
    same = patients[:, None] == patients[None, :]
    np.fill_diagonal(same, False)
    return np.where(same, distances, np.inf).min(axis=1)


@dataclass(eq=False)
class ReidModel:
    """A fitted re-identification model (see the module notes).

    Attributes:
        network: the embedding network (eval mode). config: how it was built.
        gallery: ``(N, dim)`` unit embeddings of the training patients' slices.
        calibration_distances: ``(M,)`` sorted nearest-gallery distances of the held-out slices.
        threshold: the calibrated distance. record: everything ``reid.json`` holds.
    """

    network: torch.nn.Module
    config: ReidConfig
    gallery: np.ndarray
    calibration_distances: np.ndarray
    threshold: float
    record: dict

    def distances(self, images: np.ndarray, masks: np.ndarray, *, corner: tuple[int, int] | None = None) -> np.ndarray:
        """Nearest training-slice distance ``(N,)`` of slices ``images`` ``(N, H, W)`` in [-1, 1] with ``masks``.

        Slices larger or smaller than the embedding's size (a whole-field-of-view model's stack) are cropped or
        padded to it around ``corner`` (default: :meth:`corner` of these slices), as preprocessing crops the
        training slices. That crop was centred in the original grid, this one on the prepared grid, so the
        window is tried at ``corner`` and its 8 neighbours (±1 pixel) and the smallest distance counts."""
        if tuple(images.shape[1:]) == self.config.size:
            return self._distances(images, masks)
        row, column = corner if corner is not None else self.corner(masks)
        return np.min([self._distances(crop(np.asarray(images), (row + dr, column + dc), self.config.size, fill=-1.0),
                                       crop(np.asarray(masks), (row + dr, column + dc), self.config.size, fill=0))
                       for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)

    def _distances(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return nearest_distances(embed(self.network, images, masks, heart_margin=self.config.heart_margin),
                                 self.gallery)

    def corner(self, masks: np.ndarray) -> tuple[int, int]:
        """Where the embedding's window lies on a stack ``(K, H, W)`` of another size: centred on its heart."""
        return heart_corner(masks, self.config.size)

    def false_match_rate_at(self, threshold: float) -> float:
        """The share of held-out calibration slices that ``threshold`` would (wrongly) call a training patient."""
        return float(np.mean(self.calibration_distances < threshold))


def build_reid(card: dict, members: Slices, calibration: Slices, *, others: Slices | None = None,
               config: ReidConfig | None = None,
               false_match_rate: float = DEFAULT_FALSE_MATCH_RATE, calibration_split: str = "validation",
               lineage: list[str] | None = None, simulated: bool = False, device: str | torch.device = "cpu",
               n_boot: int = 1000,
               callback: Callable[[int, int, float], None] | None = None) -> ReidModel:
    """Fit the embedding on ``members`` (every patient the generator and the models of its ``lineage``, their
    ``model_id``s, trained on) and ``others`` (the unused rest of its training split, if any; never in the
    gallery), calibrate it on ``calibration`` (patients none of them saw) → a :class:`ReidModel` for the generator
    ``card`` describes."""
    learners = members if others is None else Slices.cat([members, others])
    overlap = sorted(set(learners.patient_ids()) & set(calibration.patient_ids()))
    if overlap:
        raise InputError(f"calibration patients include training patients ({', '.join(overlap[:3])}); "
                         "calibrate on held-out patients")
    if others is not None and set(others.patient_ids()) & set(members.patient_ids()):
        raise ValueError("others must be patients of the training split the generator did not use")
    if len(members.patient_ids()) < 2:
        raise InputError(f"the re-identification model needs at least 2 training patients, found "
                         f"{len(members.patient_ids())}")
    config = config or ReidConfig(size=members.shape)
    started, losses = time.monotonic(), []

    def step(done: int, total: int, loss: float) -> None:
        losses.append(loss)
        if callback is not None:
            callback(done, total, loss)

    network = fit_embedding(learners.images, learners.masks, learners.patients, config, device=device, callback=step)
    gallery = embed(network, members.images, members.masks, heart_margin=config.heart_margin)
    probes = embed(network, calibration.images, calibration.masks, heart_margin=config.heart_margin)
    held_out = nearest_distances(probes, gallery)
    threshold = calibrate_threshold(held_out, false_match_rate)
    own = _own_patient_distances(probes, calibration.patients)
    false_match = match_rate(held_out < threshold, calibration.patients, n_boot=n_boot, method=(
        "share of held-out patients' slices closer than the threshold to some training patient's slice "
        "(each one a false match); bootstrap over held-out patients"))
    if measured_false_match_rate(held_out, threshold, false_match_rate) is None:  # no false match among too few slices: not 0%
        false_match = replace(false_match, low=None, high=None,
                              warning=not_measurable(len(held_out), false_match_rate))
    true_match = match_rate(own < threshold, calibration.patients, n_boot=n_boot, method=(
        "share of held-out patients' slices closer than the threshold to another slice of their own patient "
        "(other level or phase); bootstrap over held-out patients"))
    record = {
        "format": FORMAT, "version": VERSION, "config": config.to_dict(), "threshold": threshold,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "generator": {"model_id": card.get("model_id"), "family": card.get("family"),
                      "dp": card.get("privacy") is not None, "lineage": list(lineage or [card.get("model_id")])},
        "training": {"patients": len(members.patient_ids()), "slices": len(members), "steps": config.steps,
                     "unused_patients": len(learners.patient_ids()) - len(members.patient_ids()),
                     "final_loss": float(np.mean(losses[-20:])), "seconds": round(time.monotonic() - started, 1)},
        "calibration": {"split": calibration_split, "patients": len(calibration.patient_ids()),
                        "slices": len(calibration), "target_false_match_rate": false_match_rate,
                        "false_match_rate": false_match.to_dict(), "true_match_rate": true_match.to_dict(),
                        "rule": "a slice matches a training patient when its embedding distance to some training "
                                "slice is < threshold; threshold = the floor(rate*n)-th smallest held-out distance"},
        "shareable": bool(simulated), "privacy": SIMULATED_NOTE if simulated else PRIVATE_NOTE,
    }
    return ReidModel(network, config, gallery, np.sort(held_out).astype(np.float32), threshold, record)


def save_reid(model: ReidModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as the folder ``path`` atomically, owner-only (0700) whatever the umask."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"network.{k}": v.detach().cpu().contiguous().clone() for k, v in model.network.state_dict().items()}
    tensors["gallery"] = torch.as_tensor(model.gallery)
    tensors["calibration_distances"] = torch.as_tensor(model.calibration_distances)
    with atomic_dir(path, private=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / RECORD).write_text(json.dumps(model.record, indent=1, sort_keys=True), encoding="utf-8")
    return path


def load_reid(path: str | os.PathLike, *, card: dict | None = None) -> ReidModel:
    """Read a re-identification folder; with ``card``, refuse one built for another generator."""
    from safetensors.torch import load_file

    from CMRSynthLib.training.checkpoint import load_weights

    path = Path(path)
    record_path = path / RECORD
    if not record_path.is_file():
        raise InputError(f"is not a re-identification model (no {RECORD})", path=path)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path=record_path) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise InputError(f"is not a version-{VERSION} {FORMAT} record", path=record_path)
    if card is not None and record["generator"]["model_id"] != card.get("model_id"):
        raise InputError(f"was built for the model {record['generator']['model_id']}, not "
                         f"{card.get('model_id')}; rebuild it with cmrsynth reid", path=path)
    config = ReidConfig.from_dict(record["config"])
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise InputError(f"is not a readable safetensors file ({str(exc).splitlines()[0][:120]})",
                         path=path / WEIGHTS) from None
    network = build_network(config)
    load_weights(network, {k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")},
                 path=path / WEIGHTS)
    return ReidModel(network.eval(), config, tensors["gallery"].numpy(), tensors["calibration_distances"].numpy(),
                     float(record["threshold"]), record)


def find_reid(checkpoint: str | os.PathLike, card: dict, *, path: str | os.PathLike | None = None) -> ReidModel:
    """The re-identification model of ``checkpoint`` (``path``, else beside the folder); an
    :class:`InputError` saying how to build it when there is none."""
    from CMRSynthLib.training.checkpoint import resolve_model

    folder = Path(path) if path is not None else reid_path(resolve_model(checkpoint))
    if not folder.is_dir():
        raise InputError(f"no re-identification model for this model (looked for {folder}); build it with "
                         f"`cmrsynth reid --model {checkpoint} --data <its training cohort>`")
    return load_reid(folder, card=card)
