"""``cmrsynth sample``: synthetic images for each mask, on the mask file's exact geometry (DESIGN §9).

Writes ``<maskstem>_synth_<vendor>_<seed>.nii.gz`` (``.nrrd``, or a DICOM series folder of that name) per
mask and per ``--count`` (seeds ``seed``, ``seed + 1``, ...). ``--new-anatomy N`` first draws N new masks
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
from pathlib import Path

HELP = "generate synthetic images from masks (or new anatomy) with a trained or starter model"
FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom": ""}
CALIBRATED = "calibrated"  # --privacy-filter without a value: the re-identification model's own threshold
SIDECAR = ".privacy.json"
SIDECAR_MEANING = ("Every slice of this image was checked with the generator's re-identification model and drawn "
                   "again while it lay closer than the threshold to a training patient's slice; every image of the "
                   "run was filtered alike. What the filter did to this image is not recorded in shared outputs.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint folder or starter name (default: acdc-ldm, the real starter; see "
                             "Resources/models/STARTERS.md)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mask", help="a mask file (canonical labels 0-3) or a folder of mask files")
    source.add_argument("--new-anatomy", type=int, metavar="N", help="draw N new masks with the anatomy generator")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vendor", default=None, help="vendor style (default: unconditional)")
    parser.add_argument("--phase", default=None, help="cardiac phase ED or ES (default: unconditional)")
    parser.add_argument("--group", default=None, help="pathology group NOR, DCM, HCM, MINF, ARV")
    parser.add_argument("--count", type=int, default=1, help="images per mask (seeds seed, seed+1, ...)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps (default: the model's; a model with a coarse stage takes them from its "
                             "start time, its coarse stage its own)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance weight (≥ 0; default: the model's own, its card's config.guidance)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 runs the network in bfloat16 (about 2x faster on recent CPUs; same seed gives the "
                             "fp32 image within 0.1, recorded in the header)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="nifti")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    parser.add_argument("--anatomy-model", default=None, help="stage-1 mask generator for --new-anatomy")
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
    """A file-name-safe spelling of a vendor or group name."""
    if not text:
        return "any"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def mask_files(path: Path) -> list[Path]:
    """The mask file, or the image files directly inside a folder (sorted; hidden files skipped)."""
    from CMRSynthLib.data.volume import is_image_file
    from CMRSynthLib.errors import InputError

    if not path.exists():
        raise InputError("file not found", path=path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith("."))
    if not files:
        raise InputError("holds no mask files (.nii.gz, .nii, .nrrd, .mha)", path=path)
    return files


def stem(path: Path) -> str:
    from CMRSynthLib.files import _split_suffix

    return _split_suffix(path.name)[0]


def run(args, progress) -> int:
    from CMRSynthLib.data.volume import read_volume
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.reid.filter import FilterLog
    from CMRSynthLib.synthesis import conditions, prepare, synthesize, tokens
    from CMRSynthLib.training.checkpoint import load_checkpoint
    from CMRSynthLib.training.loop import resolve_device
    from CMRSynthLib.training.distributed import World

    if args.count < 1:
        raise InputError(f"--count must be a positive whole number, got {args.count}")
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
        masks = [(stem(p), read_volume(p), p) for p in mask_files(Path(args.mask))]
    for name, volume, path in masks:  # check every mask before generating anything
        labels, _ = prepare(card, volume, path=path)
        conditions(generator, labels, (0, 0, 0), path=path)  # a 3D model refuses stacks deeper than its own
        _check_writable(volume, args.format, path)

    progress.start("sample", total=len(masks) * args.count, model=card["model_id"], masks=len(masks))
    log = None
    if privacy_filter is not None:
        _warn_outside_dp(card, progress)
        log = FilterLog(out)
        log.start(privacy_filter, model_id=card["model_id"])
    for number, (name, volume, path) in enumerate(masks):
        done = number * args.count
        images = synthesize(generator, card, volume, vendor=args.vendor, phase=args.phase, group=args.group,
                            seed=args.seed, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                            count=args.count, path=path, precision=args.precision, privacy_filter=privacy_filter,
                            screened=_recorder(log, name, path, args),
                            callback=lambda d, t, base=done, label=name: progress.update(
                                base + d * args.count // t, message=f"{label}: step {d} of {t}"))
        for index, image in enumerate(images):
            target = out / image_name(name, args.vendor, args.seed + index, args.format)
            _write(image, target, args.format)
            progress.artefact(str(target), "synthetic")
            if privacy_filter is not None:
                sidecar = out / (image_name(name, args.vendor, args.seed + index, None) + SIDECAR)
                progress.artefact(str(_write_sidecar(sidecar, target, privacy_filter, card)), "privacy-record")
    result = {}
    if privacy_filter is not None:
        progress.artefact(str(log.path), "private-log")
        result = {"privacy_filter": privacy_filter.describe()}
    progress.done(out=str(out), images=len(masks) * args.count, **result)
    return 0


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
        name = f"anatomy{index:03d}_{safe_word(args.group)}_{safe_word(args.phase)}_{args.seed + index}"
        path = write_volume(mask, out / f"{name}_mask.nii.gz")
        progress.artefact(str(path), "mask")
        progress.update(index + 1)
        named.append((name, mask, path))
    return named
