"""``cmrsynth sample``: synthetic images for each mask, on the mask file's exact geometry (DESIGN §9).

``--mask`` takes a mask file, a folder of masks, or a cohort or patient folder as ``inspect`` and ``train`` read
it (its label files, never its images; :mod:`CMRSynthLib.data.masks`), in the label convention of
``--label-convention``, else the layout's (ACDC: 1 = RV, 3 = LV), else canonical; a mask whose myocardium rings
label 3 rather than label 1 is warned about as looking swapped. Writes
``<mask name>_synth_<vendor>_<seed>.nii.gz`` (``.nrrd``, or a DICOM series folder of that name) per mask and per
``--count`` (seeds ``seed``, ``seed + 1``, ...): the mask name without its label tag (``case_gt`` → ``case``, so
that no ``*_gt*`` glob takes an image for a label), the vendor ``unconditional`` when none is given. An image
follows its reference (the image the mask labels, when one is found) in voxel type and intensity scale, else
it is float32 on the model's range (:func:`CMRSynthLib.synthesis.follow_reference`). Every written path is
printed on stdout, one a line (with ``--progress jsonl``: in the artefact events). A phantom model sampled on a
mask whose grid looks like a real scan's is warned about. ``--new-anatomy N`` first draws N new masks
with the stage-1 anatomy generator (``--anatomy-model``, else the checkpoint's ``anatomy/`` folder, else
the anatomy starter matching the model's data: ``acdc-anatomy`` or ``phantom-anatomy``) and writes each mask
(``anatomy<i>_<group>_<phase>_<seed>_mask.nii.gz``) beside its images. Every input is checked before anything is generated: bad input writes nothing.

``--privacy-filter [THRESHOLD]`` checks every generated slice against the model's training patients with its
re-identification model (``cmrsynth reid``; :mod:`CMRSynthLib.reid.filter`) and draws again what
re-identifies one. Each image gets a sidecar ``<image name>.privacy.json`` and ``cmrsynth_privacy_*`` header
keys saying only what is true of every image alike (the threshold and its false-match rate); what the filter
did to each image (rejected draws, redrawn slices) would tell whether its mask's patient was a training
patient, so it goes to the owner-only ``<out>.PRIVATE-filter-log.jsonl`` beside the output folder. An image
still re-identifying a training patient after ``--privacy-retries`` redraws is withheld and the run stops
(exit code 2), naming the mask. On a DP model the filter steps outside the DP guarantee
(:data:`CMRSynthLib.reid.DP_NOTE`): the run warns, and every sidecar says so.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from CMRSynthLib.data.conventions import LABEL_CONVENTIONS
from CMRSynthLib.training.config import DEVICES

if TYPE_CHECKING:
    from CMRSynthLib.data.volume import Volume
    from CMRSynthLib.synthesis import ReferenceScale

HELP = "generate synthetic images from masks (or new anatomy) with a trained or starter model"
FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom": ""}
CALIBRATED = "calibrated"  # --privacy-filter without a value: the re-identification model's own threshold
SIDECAR = ".privacy.json"
# The widest field of view of a phantom image (mm): the largest vendor field (200 mm) with its ±3% jitter
# (CMRSynthLib.data.phantom_vendors). A mask wider than this lies on a real scan's grid, not a phantom's.
PHANTOM_FIELD_MM = 206.0
SIDECAR_MEANING = ("Every slice of this image was checked with the generator's re-identification model and drawn "
                   "again while it lay closer than the threshold to a training patient's slice; every image of the "
                   "run was filtered alike. What the filter did to this image is not recorded in shared outputs.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint folder or starter name (default: acdc-ldm, the real starter; see "
                             "Resources/models/STARTERS.md)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mask", help="a mask file, a folder of masks, or a cohort or patient folder (ACDC, M&Ms, "
                                       "phantom, image/label pairs; symlinks followed): its label files, whose images "
                                       "give the outputs their voxel type and intensity scale (without one: float32 "
                                       "on the model's intensity range, e.g. 0-1 for the ACDC models)")
    source.add_argument("--new-anatomy", type=int, metavar="N", help="draw N new masks with the anatomy generator")
    parser.add_argument("--label-convention", choices=sorted(LABEL_CONVENTIONS), default=None,
                        help="how the masks number LV, MYO and RV: canonical/mnms 1 LV, 2 MYO, 3 RV; acdc 1 RV, 2 MYO, "
                             "3 LV (default: the cohort layout's, ACDC's for files named like ACDC's labels, else "
                             "canonical)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vendor", default=None, help="vendor style (default: unconditional)")
    parser.add_argument("--phase", default=None, help="cardiac phase ED or ES (default: unconditional)")
    parser.add_argument("--group", default=None,
                        help="pathology group NOR, DCM, HCM, MINF, ARV (default: unconditional)")
    parser.add_argument("--count", type=int, default=1, help="images per mask (seeds seed, seed+1, ...)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps (default: the model's; a model with a coarse stage takes them from its "
                             "start time, its coarse stage its own)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance weight (≥ 0; default: the model's own, its card's config.guidance)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the first image (the next ones: seed+1, ...); with --privacy-filter the draws "
                             "are seeded in secret and this only numbers the files")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 runs the network in bfloat16 (about 2x faster on recent CPUs; same seed gives the "
                             "fp32 image within 0.1, recorded in the header)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="nifti", help="file format of the images")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the network runs (auto: CUDA, else "
                        "MPS, else the CPU)")
    parser.add_argument("--anatomy-model", default=None,
                        help="stage-1 mask generator for --new-anatomy (default: the model's anatomy/ folder, else "
                             "acdc-anatomy for a real model or phantom-anatomy for a phantom one)")
    privacy = parser.add_argument_group("privacy filter")
    privacy.add_argument("--privacy-filter", nargs="?", const=CALIBRATED, default=None, metavar="THRESHOLD",
                         help="redraw every slice that re-identifies a training patient (the model's re-identification "
                              "model, built by cmrsynth reid); THRESHOLD: an embedding distance (default: the calibrated "
                              "one, at its false-match rate). What it did to each image goes to the owner-only "
                              "<out>.PRIVATE-filter-log.jsonl beside --out, never into the images. Off by default. "
                              "On a DP model: the filter reads the private training images (the re-identification "
                              "gallery) outside DP-SGD, so the filtered images are no longer covered by the model's ε "
                              "alone; the filter itself has no formal guarantee")
    privacy.add_argument("--reid", default=None,
                         help="re-identification model folder (default: <model folder>.PRIVATE-reid beside the model)")
    privacy.add_argument("--privacy-retries", type=int, default=None,
                         help="redraws of a flagged slice before the image is withheld (default 4)")


def default_model() -> str:
    """The best real starter (:data:`~CMRSynthLib.DEFAULT_MODEL`), when it is installed."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.checkpoint import models_dir
    from CMRSynthLib import DEFAULT_MODEL

    if not (models_dir() / DEFAULT_MODEL).is_dir():
        raise InputError(f"no --model given and the default starter {DEFAULT_MODEL} is not in {models_dir()}; "
                         "name a checkpoint folder or a starter")
    return DEFAULT_MODEL


def default_anatomy(card: dict) -> str:
    """The anatomy starter that matches an image model's data: ACDC's for ACDC models, else the phantom's."""
    return "acdc-anatomy" if (card.get("dataset") or {}).get("name") == "ACDC" else "phantom-anatomy"


def whole_field_mm(card: dict) -> tuple[float, float] | None:
    """A whole-field-of-view model's training tile in mm ``(rows, columns)``: the field new anatomies are
    placed in, so the image shows the chest around the new heart; None for heart-crop models."""
    pre = card["preprocessing"]
    if pre.get("field_of_view") != "whole":
        return None
    return tuple(float(n) * float(mm) for n, mm in zip(pre["size"], pre["spacing"]))


def safe_word(text: str | None) -> str:
    """A file-name-safe spelling of a vendor or group name (``unconditional`` for none)."""
    from CMRSynthLib.synthesis import ANY_VENDOR

    if not text:
        return ANY_VENDOR
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


@dataclass(frozen=True)
class Input:
    """A checked mask: the outputs' name stem, the canonical mask volume, its file, and the scale of the
    reference image its outputs follow (None: float32 on the model's range)."""

    name: str
    volume: Volume
    path: Path
    reference: ReferenceScale | None = None


def run(args, progress) -> int:
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.reid.filter import FilterLog
    from CMRSynthLib.synthesis import conditions, follow_reference, prepare, synthesize, tokens
    from CMRSynthLib.training.checkpoint import load_checkpoint
    from CMRSynthLib.training.loop import resolve_device
    from CMRSynthLib.training.distributed import World

    if args.count < 1:
        raise InputError(f"--count must be a positive whole number, got {args.count}")
    if args.label_convention is not None and args.mask is None:
        raise InputError("--label-convention applies only with --mask")
    device = resolve_device(args.device, World())
    args.model = args.model or default_model()
    generator, card = load_checkpoint(args.model, device=device)
    generator.check_sampling(args.sampler, args.steps, args.guidance)
    tokens(card, vendor=args.vendor, phase=args.phase, group=args.group)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("--out must be a folder", path=out)
    privacy_filter = _privacy_filter(args, card)

    if args.new_anatomy is not None:
        masks = _new_anatomy(args, card, device, progress)
    else:
        masks = read_inputs(args.mask, card, convention=args.label_convention, progress=progress)
    for mask in masks:  # check every mask before generating anything
        labels, _ = prepare(card, mask.volume, path=mask.path)
        conditions(generator, labels, (0, 0, 0), path=mask.path)  # a 3D model refuses stacks deeper than its own
        _check_writable(mask.volume, args.format, mask.path)
    _warn_phantom_on_real_grid(args.model, card, masks, progress)

    progress.start("sample", total=len(masks) * args.count, model=card["model_id"], masks=len(masks))
    log = None
    if privacy_filter is not None:
        _warn_outside_dp(card, progress)
        log = FilterLog(out)
        log.start(privacy_filter, model_id=card["model_id"])
    try:
        for number, mask in enumerate(masks):
            done = number * args.count
            images = synthesize(generator, card, mask.volume, vendor=args.vendor, phase=args.phase, group=args.group,
                                seed=args.seed, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                                count=args.count, path=mask.path, precision=args.precision, privacy_filter=privacy_filter,
                                screened=_recorder(log, mask.name, mask.path, args),
                                callback=lambda d, t, base=done, label=mask.name: progress.update(
                                    base + d * args.count // t, message=f"{label}: step {d} of {t}"))
            for index, image in enumerate(images):
                if mask.reference is not None:
                    image = follow_reference(image, mask.reference, card, args.vendor)
                target = out / image_name(mask.name, args.vendor, args.seed + index, args.format)
                _write(image, target, args.format)
                report_written(progress, target, "synthetic")
                if privacy_filter is not None:
                    sidecar = out / (image_name(mask.name, args.vendor, args.seed + index, None) + SIDECAR)
                    report_written(progress, _write_sidecar(sidecar, target, privacy_filter, card), "privacy-record")
    finally:  # the operator's summary (stderr only), a withheld image included
        if log is not None:
            print(log.summary(), file=sys.stderr)
    result = {}
    if privacy_filter is not None:
        report_written(progress, log.path, "private-log")
        result = {"privacy_filter": privacy_filter.describe()}
    progress.done(out=str(out), images=len(masks) * args.count, **result)
    return 0


def read_inputs(path: str, card: dict, *, convention: str | None, progress) -> list[Input]:
    """The masks at ``path`` (:func:`~CMRSynthLib.data.masks.find_masks`), read in canonical labels, each with
    its reference's scale; warns about every mask whose LV and RV look swapped."""
    from CMRSynthLib.data.masks import find_masks, read_mask, read_reference
    from CMRSynthLib.synthesis import ReferenceScale

    inputs = []
    for source in find_masks(path, convention=convention):
        volume = read_mask(source)
        _warn_if_swapped(source, volume, progress)
        reference = read_reference(source)
        scale = None if reference is None else ReferenceScale.of(reference, card)
        inputs.append(Input(source.name, volume, Path(source.path), scale))
    return inputs


def report_written(progress, path, kind: str) -> None:
    """Say that ``path`` was written: an artefact event with ``--progress jsonl``, else the path alone on a line of
    stdout (in every other mode, ``none`` included), so that a script can read what was written."""
    if progress.mode == "jsonl":
        progress.artefact(str(path), kind)
    else:
        print(path, flush=True)


def _warn_if_swapped(source, volume, progress) -> None:
    """Warn when the myocardium rings the canonical RV rather than the LV (:func:`~CMRSynthLib.data.conventions.
    looks_swapped`): the mask was probably read in the wrong label convention."""
    from CMRSynthLib.data.conventions import LABEL_CONVENTIONS, RV, SWAPPED_CONVENTION, looks_swapped

    if not looks_swapped(volume.array):
        return
    ringed = next(value for value, canonical in LABEL_CONVENTIONS[source.convention].items() if canonical == RV)
    other = SWAPPED_CONVENTION[source.convention]
    numbering = {"acdc": "ACDC's 1 = RV, 3 = LV", "canonical": "the canonical 1 = LV, 3 = RV"}[other]
    progress.warning(f"{source.path}: read as {source.convention} labels ({source.convention_from}), its LV and RV "
                     f"look swapped: the myocardium (2) rings label {ringed}, which {source.convention} calls the RV. "
                     f"If the mask numbers them as {numbering}, pass --label-convention {other}")


def _warn_phantom_on_real_grid(model: str, card: dict, masks: list[Input], progress) -> None:
    """Warn when a phantom model (trained on simulated patients only) is sampled on a mask whose field of view is
    a real scan's, larger than any phantom image's."""
    from CMRSynthLib import DEFAULT_MODEL

    if not (card.get("data") or {}).get("simulated"):
        return
    for mask in masks:
        rows_mm, cols_mm = (n * float(mm) for n, mm in zip(mask.volume.shape[1:], mask.volume.spacing[1::-1]))
        if max(rows_mm, cols_mm) > PHANTOM_FIELD_MM:
            progress.warning(
                f"{model} is a phantom model (trained on simulated patients only), but {mask.path} lies on a real "
                f"scan's grid ({mask.volume.shape[1]} × {mask.volume.shape[2]} pixels, a {rows_mm:.0f} × "
                f"{cols_mm:.0f} mm field of view; phantom images cover at most {PHANTOM_FIELD_MM:.0f} mm): its "
                f"images will look like the phantom's. For real masks use {DEFAULT_MODEL}, the default (leave out "
                "--model)")
            return


def image_name(mask_name: str, vendor: str | None, seed: int, fmt: str | None) -> str:
    """``<mask name>_synth_<vendor>_<seed>`` with the suffix of ``fmt`` (None: no suffix)."""
    return f"{mask_name}_synth_{safe_word(vendor)}_{seed}{FORMATS[fmt] if fmt else ''}"


def _privacy_filter(args, card: dict):
    """The run's :class:`~CMRSynthLib.reid.filter.PrivacyFilter`, or None without ``--privacy-filter``."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.reid.filter import DEFAULT_RETRIES, PrivacyFilter
    from CMRSynthLib.reid.model import find_reid

    if args.privacy_filter is None:
        for flag, value in (("--reid", args.reid), ("--privacy-retries", args.privacy_retries)):
            if value is not None:
                raise InputError(f"{flag} applies only with --privacy-filter")
        return None
    threshold = None
    if args.privacy_filter != CALIBRATED:
        try:
            threshold = float(args.privacy_filter)
        except ValueError:
            raise InputError(f"--privacy-filter takes an embedding distance (or nothing: the calibrated threshold), "
                             f"got {args.privacy_filter!r}") from None
    reid = find_reid(args.model, card, path=args.reid)
    retries = DEFAULT_RETRIES if args.privacy_retries is None else args.privacy_retries
    return PrivacyFilter.of(reid, threshold, retries)


def _warn_outside_dp(card: dict, progress) -> None:
    """Say, before any image is drawn, that a DP model's filtered images leave its guarantee."""
    from CMRSynthLib.reid import DP_NOTE

    if card.get("privacy") is not None:
        progress.warning(f"--privacy-filter on a model trained with DP ({_guarantee(card)}). {DP_NOTE}")


def _recorder(log, name: str, mask: Path, args):
    """``synthesize``'s ``screened`` callback: every draw for ``mask`` into the private ``log`` (None: no filter)."""
    if log is None:
        return None
    return lambda index, seed, screening: log.record(
        screening, image=image_name(name, args.vendor, args.seed + index, args.format), mask=mask, seed=seed)


def _guarantee(card: dict) -> str:
    """A DP model's per-patient guarantee in words: "ε = 8 and δ = 1e-05 per patient"."""
    from CMRSynthLib.training.ledger import patient_level

    epsilon, delta = patient_level(card["privacy"])
    if epsilon is None:
        return "its ledger states no patient-level ε"
    return f"ε = {epsilon:.3g}" + (f" and δ = {delta:.1e}" if delta is not None else "") + " per patient"


def _write_sidecar(path: Path, target: Path, privacy_filter, card: dict) -> Path:
    """The privacy filter's shared record of one image, as JSON beside it (written atomically): only what is
    true of every image of the run alike, and for a DP model what the filter does to its guarantee."""
    import json

    from CMRSynthLib.files import atomic_write_text
    from CMRSynthLib.reid import DP_NOTE
    from CMRSynthLib.training.ledger import patient_level

    record = {"format": "cmrsynth-privacy-filter", "version": 2, "image": target.name,
              "filter": privacy_filter.describe(), "meaning": SIDECAR_MEANING}
    if card.get("privacy") is not None:
        epsilon, delta = patient_level(card["privacy"])
        record["differential_privacy"] = {"model_epsilon": epsilon, "model_delta": delta,
                                          "covers_these_images": False, "note": DP_NOTE}
    atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False))
    return path


def _check_writable(volume, fmt: str, path) -> None:
    """NIfTI cannot store a sheared grid: refuse before generating (``write_volume`` would refuse after)."""
    import numpy as np

    from CMRSynthLib.data.volume import NIFTI_ORTHONORMAL_TOL
    from CMRSynthLib.errors import InputError

    direction = volume.direction
    if fmt == "nifti" and float(np.abs(direction.T @ direction - np.eye(3)).max()) > NIFTI_ORTHONORMAL_TOL:
        raise InputError("mask grid is sheared; NIfTI cannot store it: use --format nrrd", path=path)


def _write(image, target: Path, fmt: str) -> None:
    from CMRSynthLib.data.volume import write_volume

    if fmt == "dicom":
        from CMRSynthLib.synthetic_dicom import write_dicom_series

        write_dicom_series(image, target, description=image.metadata["descrip"][len("SYNTHETIC "):])
    else:
        write_volume(image, target)


def _new_anatomy(args, card: dict, device, progress) -> list:
    """Draw ``--new-anatomy`` masks; each is written at once (they are the inputs of this run)."""
    from CMRSynthLib.data.volume import write_volume
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.synthesis import sample_anatomy
    from CMRSynthLib.training.checkpoint import ANATOMY, load_checkpoint, resolve_model

    if args.new_anatomy < 1:
        raise InputError(f"--new-anatomy must be a positive whole number, got {args.new_anatomy}")
    source = args.anatomy_model
    if source is None:
        bundled = resolve_model(args.model) / ANATOMY
        source = bundled if bundled.is_dir() else default_anatomy(card)
    anatomy, anatomy_card = load_checkpoint(source, device=device)
    if anatomy_card["family"] != "anatomy":
        raise InputError(f"--anatomy-model is a {anatomy_card['family']} model, not an anatomy generator",
                         path=source)
    progress.start("anatomy", total=args.new_anatomy)
    masks = sample_anatomy(anatomy, anatomy_card, count=args.new_anatomy, group=args.group, phase=args.phase,
                           seed=args.seed, field_mm=whole_field_mm(card))
    out, named = Path(args.out), []
    for index, mask in enumerate(masks):
        chosen = [safe_word(word) for word in (args.group, args.phase) if word]  # unconditional parts left out
        name = "_".join([f"anatomy{index:03d}", *chosen, str(args.seed + index)])
        path = write_volume(mask, out / f"{name}_mask.nii.gz")
        report_written(progress, path, "mask")
        progress.update(index + 1)
        named.append(Input(name, mask, path))
    return named
