"""``cmrsynth reid``: build a model's re-identification model, which ``cmrsynth sample --privacy-filter`` uses.

The gallery holds every patient the model's lineage trained on: its own members (the card's ``members``, or the
``<folder>.PRIVATE-membership.json`` beside a DP model) and those of every model it was fine-tuned from
(:func:`~CMRSynthLib.training.membership.lineage`), found in ``--data`` or in the ``--lineage-data`` cohorts. A
lineage whose patients are not known here, or not all found, is refused: a filter that cannot look for a patient
the model descends from would pass that patient's look-alikes unscreened. The embedding is fitted on the gallery's
patients (plus the training split's ``unused`` patients when the run trained on part of it), and its threshold is
calibrated on patients no model of the lineage saw (``--calibration``, default the checkpoint's validation split,
or its holdout split when it has no validation patients: the ACDC starters hold out ``val.list`` as their holdout)
at ``--false-match-rate``. It is written
beside the checkpoint folder, ``<folder>.PRIVATE-reid/`` (or ``--out``), never inside it (an ``--out`` in the
model folder, the folder itself, a folder holding it or any other folder it would replace is refused): it is
computed from the private training images without DP (:mod:`CMRSynthLib.reid.model`). With fewer calibration slices than 1 / rate the threshold's
false-match rate cannot be measured and is reported so (None in the result), never as 0%.
"""

from __future__ import annotations

import argparse

HELP = "build the re-identification model a privacy-filtered sampling run checks its images with"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from CMRSynthLib.reid import DEFAULT_FALSE_MATCH_RATE, DEFAULT_STEPS
    from CMRSynthLib.training.config import DEVICES

    parser.add_argument("--model", required=True, help="checkpoint folder or starter name")
    parser.add_argument("--data", required=True, help="the cohort the model was trained on")
    parser.add_argument("--lineage-data", action="append", default=[], metavar="DIR",
                        help="a cohort holding patients that the models it was fine-tuned from (--init, ...) trained "
                             "on, when --data does not (repeatable; default: none); the filter screens for every one of them")
    parser.add_argument("--out", default=None, help="where to write it (default: <model folder>.PRIVATE-reid beside "
                                                    "the checkpoint folder; never inside the model folder, which is "
                                                    "shareable)")
    parser.add_argument("--calibration", default=None,
                        help="held-out patients to calibrate the threshold on: a split of the checkpoint (validation, "
                             "holdout, validation+holdout), a file of ids or comma-separated ids (default: the "
                             "checkpoint's validation split, or its holdout split when it has no validation patients, "
                             "as the acdc- starters)")
    parser.add_argument("--false-match-rate", type=float, default=DEFAULT_FALSE_MATCH_RATE,
                        help="share of held-out patients' slices the threshold may call a training patient (default 0.01)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="contrastive training steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the embedding's training")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to train the embedding")


def run(args, progress) -> int:
    from pathlib import Path

    from CMRSynthLib.audit.run import load_slices, patient_list
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.data.preprocess import PreprocessConfig
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.reid.embedding import ReidConfig
    from CMRSynthLib.reid.model import (build_reid, format_rate, measured_false_match_rate, not_measurable, reid_path,
                                        save_reid)
    from CMRSynthLib.training.checkpoint import read_checkpoint
    from CMRSynthLib.training.distributed import World
    from CMRSynthLib.training.loop import resolve_device
    from CMRSynthLib.training.membership import known_splits, lineage

    device = resolve_device(args.device, World())
    contents = read_checkpoint(args.model)
    card, folder = contents.card, contents.path
    out = Path(args.out) if args.out else reid_path(folder)
    check_out(out, folder)
    splits = known_splits(card, folder)
    args.calibration = args.calibration or default_calibration(splits)
    calibration = patient_list(args.calibration, flag="--calibration", splits=splits)
    cohort = open_cohort(args.data)
    present = set(cohort.patients())
    chain = lineage(card, folder)
    gallery = gallery_patients(chain, folder)
    seen_calibration = sorted(set(calibration) & set(gallery))
    if seen_calibration:
        raise InputError(f"{len(seen_calibration)} calibration patients ({', '.join(seen_calibration[:3])}) were "
                         "trained on by a model of its lineage; calibrate on patients none of them saw "
                         "(--calibration)", path=folder)
    for what, ids in (("training", splits["members"]), ("calibration", calibration)):
        if not present & set(ids):
            raise InputError(f"none of the model's {len(ids)} {what} patients ({', '.join(ids[:3])}, ...) is in the "
                             "data; is --data the cohort this model was trained on?", path=args.data)
    if not set(calibration) <= present:
        progress.warning(f"{len(set(calibration) - present)} of {len(calibration)} calibration patients are not in "
                         "the data")
    preprocessing = PreprocessConfig.from_dict(card["preprocessing"])
    progress.start("reid: reading slices", None)
    member_slices = gallery_slices(gallery, [cohort, *map(open_cohort, args.lineage_data)], preprocessing)
    unused = [p for p in splits["unused"] if p in present and p not in gallery]
    others = load_slices(cohort, unused, preprocessing, what="unused training") if unused else None
    held_out = load_slices(cohort, [p for p in calibration if p in present], preprocessing, what="calibration")
    config = ReidConfig(size=member_slices.shape, steps=args.steps, seed=args.seed)
    progress.start("reid: contrastive training", config.steps, model=card.get("model_id"),
                   patients=len(member_slices.patient_ids()) + len(unused), slices=len(member_slices))
    model = build_reid(card, member_slices, held_out, others=others, config=config,
                       lineage=[ancestor.model_id for ancestor in chain],
                       false_match_rate=args.false_match_rate, calibration_split=args.calibration, device=device,
                       simulated=all(r.simulated for r in cohort.records),
                       callback=lambda step, total, loss: progress.update(step, loss=loss) if step % 10 == 0 or
                       step == total else None)
    out = save_reid(model, out)
    progress.artefact(str(out), "reid")
    calibration_record = model.record["calibration"]
    fmr, tmr = calibration_record["false_match_rate"], calibration_record["true_match_rate"]
    slices = calibration_record["slices"]
    rate = measured_false_match_rate(model.calibration_distances, model.threshold, args.false_match_rate)
    rate_text = (f"{format_rate(fmr)} on {slices} slices" if rate is not None else
                 not_measurable(slices, args.false_match_rate))
    print(f"threshold {model.threshold:.4g} ({calibration_record['patients']} held-out patients): false-match rate "
          f"{rate_text}; true-match rate {format_rate(tmr)}")
    progress.done(out=str(out), threshold=model.threshold, false_match_rate=rate, true_match_rate=tmr["value"])
    return 0


def default_calibration(splits: dict[str, list[str]]) -> str:
    """The checkpoint's split that calibrates by default: ``validation``, or ``holdout`` when it lists no
    validation patient (a cohort with its own split, as ACDC's, holds its ``val.list`` out as ``holdout``)."""
    return "validation" if splits.get("validation") else "holdout"


def gallery_patients(chain, folder) -> list[str]:
    """Every patient a model of ``chain`` (:func:`~CMRSynthLib.training.membership.lineage`) trained on; refused
    when some model's patients are not known here."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.membership import membership_path

    unknown = [ancestor.model_id for ancestor in chain if ancestor.members is None]
    if unknown:
        raise InputError(f"whom {', '.join(unknown)} of the model's lineage trained on is not known here (is "
                         f"{membership_path(folder).name} beside the folder?): a filter built without them could not "
                         "screen for those patients", path=folder)
    return sorted(set().union(*(ancestor.members for ancestor in chain)))


def gallery_slices(patients: list[str], cohorts: list, preprocessing) -> "Slices":
    """The slices of ``patients``, each from the first of ``cohorts`` that holds it; refused when one is in none
    (a re-identification model must look for every patient of the lineage)."""
    from CMRSynthLib.audit.run import load_slices
    from CMRSynthLib.audit.slices import Slices
    from CMRSynthLib.errors import InputError

    parts, left = [], set(patients)
    for cohort in cohorts:
        found = sorted(left & set(cohort.patients()))
        if found:
            parts.append(load_slices(cohort, found, preprocessing, what="training"))
            left -= set(found)
    if left:
        missing = sorted(left)
        raise InputError(f"{len(missing)} of the {len(patients)} patients that the model and the models it was "
                         f"fine-tuned from trained on are in no cohort given ({', '.join(missing[:3])}, ...): the "
                         "filter could not screen for them; give the cohorts holding them with --data / "
                         "--lineage-data")
    return Slices.cat(parts)


def check_out(out: Path, model_folder: Path) -> None:
    """Refuse an ``--out`` that would put the private re-identification model in the shareable model folder (or
    be that folder, or replace a folder holding it), or replace a folder that is not a re-identification model."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.reid.model import RECORD

    target, model = out.resolve(), model_folder.resolve()
    if target == model or model in target.parents:
        raise InputError(f"--out {out} is inside the model folder {model_folder}, which is shared with the model; "
                         "the re-identification model is private: omit --out to write it beside the folder")
    if target in model.parents:
        raise InputError(f"--out {out} holds the model folder {model_folder}; writing there would replace it")
    if target.is_dir() and any(target.iterdir()) and not (target / RECORD).is_file():
        raise InputError(f"--out {out} is a folder that is not a re-identification model (no {RECORD}); writing "
                         "there would replace it: choose a new folder")
    if target.exists() and not target.is_dir():
        raise InputError(f"--out {out} is a file; choose a new folder")

