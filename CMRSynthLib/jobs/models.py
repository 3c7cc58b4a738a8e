"""``cmrsynth models [NAME_OR_PATH] [--json]``: which models there are, and what one of them knows.

Without a name: one line per model, the bundled starters first (``Resources/models`` or ``$CMRSYNTH_MODELS``),
then the checkpoints in the model folder (``--model-folder``, default the panel's: ``$CMRSYNTH_MODEL_FOLDER`` or
``~/.cmrsynth/models``), or in the folder of checkpoints given. With a starter name or a checkpoint folder: its
card in words: training data and license, patients, spacing assumption, the vendors, groups and phases it can
render, field of view, guidance, default sampler, privacy with the lineage's ledgers, and the training time.
The cards are read as JSON without torch, through the panel's catalogue (:mod:`CMRSynthLib.gui.catalogue`), so
this command and the panel describe a model alike.
"""

from __future__ import annotations

import json
from pathlib import Path

HELP = "list the models (starters and your checkpoints), or show what one model learnt from and can do"


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="NAME_OR_PATH",
                        help="a starter name or checkpoint folder: show its card in words; a folder of checkpoints: "
                             "list them after the starters (default: list the starters and the model folder's)")
    parser.add_argument("--model-folder", default=None,
                        help="where your trained models are kept (default: $CMRSYNTH_MODEL_FOLDER or "
                             "~/.cmrsynth/models, as the panel)")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of models, or one model) instead")


def run(args, progress) -> int:
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.gui.catalogue import CARD, find_model, list_models

    if args.model is None or _holds_checkpoints(Path(args.model)):
        infos = list_models(args.model or args.model_folder)
        summaries = [summary(info) for info in infos]
        print(json.dumps(summaries, indent=2) if args.json else format_table(summaries))
        return 0
    path = Path(args.model)
    if path.is_dir() and not (path / CARD).is_file():
        raise InputError(f"is neither a checkpoint folder (no {CARD}) nor a folder of checkpoints", path=path)
    if not path.exists() and len(path.parts) > 1:
        raise InputError("no such checkpoint folder", path=path)
    info = find_model(args.model, args.model_folder)
    print(json.dumps(summary(info), indent=2) if args.json else format_card(summary(info)))
    return 0


def _holds_checkpoints(path: Path) -> bool:
    """A folder without a card of its own whose sub-folders hold cards (a model folder)."""
    from CMRSynthLib.gui.catalogue import CARD

    return path.is_dir() and not (path / CARD).is_file() and any((p / CARD).is_file() for p in path.iterdir())


def summary(info) -> dict:
    """What ``cmrsynth models`` says about one :class:`~CMRSynthLib.gui.catalogue.ModelInfo`, as plain values."""
    from CMRSynthLib.training.card import runs_of

    card = info.card
    config = card.get("config") or {}
    runs = runs_of(card)
    return {
        "name": info.name, "path": str(info.path), "starter": info.starter, "model_id": info.model_id,
        "family": info.family, "cascade": _cascade(card), "data": info.data_source() or "not stated",
        "dataset": info.dataset.get("name"), "license": info.dataset.get("license"),
        "simulated": info.simulated, "citation": info.dataset.get("citation"), "url": info.dataset.get("url"),
        "patients": info.patients, "held_out": len(card.get("holdout") or []) + len(card.get("validation") or []),
        "spacing": info.dataset.get("spacing"), "vendors": list(info.vendors), "groups": list(info.groups),
        "phases": list(info.phases), "field_of_view": _field_of_view(card.get("preprocessing") or {}),
        "guidance": config.get("guidance", 1.0), "mask_dropout": config.get("p_mask_uncond", 0.0),
        "sampler": config.get("sampler"), "steps": config.get("steps"),
        "epsilon": info.epsilon, "delta": info.delta, "lineage": _lineage(card),
        "training_runs": len(runs), "training_steps": sum(run.get("steps") or 0 for run in runs),
        "training_cpu_minutes": _minutes(runs, "cpu_seconds"), "training_wall_minutes": _minutes(runs, "wall_seconds"),
    }


def _field_of_view(preprocessing: dict) -> dict:
    """The card's field of view: ``kind`` whole (tiles of the whole field; generates the reference's entire grid)
    or heart (a heart-centred crop), its ``size_px`` and ``pixel_mm`` (None where the card says nothing)."""
    size, spacing = ((preprocessing.get(key) or [None])[0] for key in ("size", "spacing"))
    return {"kind": preprocessing.get("field_of_view") or "heart", "size_px": size, "pixel_mm": spacing}


def _field_words(fov: dict) -> str:
    """"whole field (...), learnt on 192 px tiles at 1.5625 mm (300 mm)", "heart crop, 64 px at 2.5 mm (160 mm)"."""
    if fov["size_px"] is None or fov["pixel_mm"] is None:
        return f"{fov['kind']}, size not stated"
    extent = f"{fov['size_px']} px at {fov['pixel_mm']:g} mm ({fov['size_px'] * fov['pixel_mm']:g} mm)"
    if fov["kind"] == "whole":
        return f"whole field (generates on the reference's entire grid), learnt on tiles of {extent}"
    return f"heart crop of {extent}"


def _extent(fov: dict) -> str:
    """The field of view in a few words: "whole, 1.5625 mm pixels", "heart, 160 mm"."""
    if fov["size_px"] is None or fov["pixel_mm"] is None:
        return fov["kind"]
    if fov["kind"] == "whole":
        return f"whole, {fov['pixel_mm']:g} mm pixels"
    return f"heart, {fov['size_px'] * fov['pixel_mm']:g} mm"


def _cascade(card: dict) -> str | None:
    cascade = card.get("cascade")
    if not isinstance(cascade, dict):
        return None
    spacing = ((cascade.get("coarse_preprocessing") or {}).get("spacing") or [None])[0]
    at = f" at {spacing:g} mm" if isinstance(spacing, (int, float)) else ""
    return f"a coarse flow stage{at} draws the layout, refined from t = {cascade.get('start')}"


def _lineage(card: dict) -> list[dict]:
    """Each model the card's was fine-tuned from (its ``lineage``, nearest first): its model id, patients (when
    the card lists them) and (ε, δ) per patient, None without DP."""
    from CMRSynthLib.training.ledger import patient_level

    ancestors = []
    for ancestor in card.get("lineage") or []:
        epsilon, delta = patient_level(ancestor.get("privacy"))
        members = ancestor.get("members")
        ancestors.append({"model_id": ancestor.get("model_id"), "epsilon": epsilon, "delta": delta,
                          "patients": len(members) if isinstance(members, list) else None})
    return ancestors


def _minutes(runs: list[dict], key: str) -> float | None:
    values = [run.get(key) for run in runs]
    return round(sum(values) / 60, 1) if values and all(values) else None


def _privacy(epsilon: float | None, delta: float | None) -> str:
    if epsilon is None:
        return "no DP"
    return f"DP ε = {epsilon:.3g}" + (f", δ = {delta:.1e}" if delta else "")


def _vendors(model: dict) -> str:
    vendors = model["vendors"]
    if not vendors:
        return "none (unconditional)"
    kind = "simulated vendor styles" if model["simulated"] else "the only vendor style it renders" \
        if len(vendors) == 1 else "the vendor styles it renders"
    return f"{', '.join(vendors)} ({kind})"


def format_table(models: list[dict]) -> str:
    """One line per model: name, family, real or phantom, data and license, vendors, field of view, privacy."""
    header = ["model", "family", "data", "learnt from", "vendors", "field of view", "privacy"]
    rows = [[m["name"] + ("" if m["starter"] else f"  ({m['path']})"),
             m["family"] + (" + coarse" if m["cascade"] else ""), "phantom" if m["simulated"] else "real",
             _source(m) + (f", {m['patients']} patients" if m["patients"] is not None else ""),
             ", ".join(m["vendors"]) or "-", _extent(m["field_of_view"]), _privacy(m["epsilon"], m["delta"])]
            for m in models]
    if not rows:
        return "no models found"
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines + ["", "cmrsynth models NAME: the whole card in words"])


def _source(model: dict) -> str:
    """The data in a few words: "ACDC (CC BY-NC-SA 4.0)", "simulated phantom"."""
    if model["simulated"]:
        return "simulated phantom"
    if not model["dataset"]:
        return model["data"]
    return f"{model['dataset']} ({(model['license'] or 'license not stated').split(' (')[0]})"


def format_card(model: dict) -> str:
    """The card of one model in words (see the module docstring)."""
    where = "starter model" if model["starter"] else "checkpoint"
    data = ("the built-in simulated phantom cohort (no real patient)" if model["simulated"]
            else f"{model['dataset']}: real patients" if model["dataset"] else model["data"])
    runs = model["training_runs"]
    training = f"{runs} run{'s' if runs > 1 else ''}, {model['training_steps']} steps" + "".join(
        f", {model[key]:g} {unit}" for key, unit in (("training_cpu_minutes", "CPU-minutes"),
                                                     ("training_wall_minutes", "minutes wall"))
        if model[key] is not None)
    rows = [
        ("model", f"{model['name']} ({where}: {model['path']})"),
        ("model id", model["model_id"]),
        ("generator", model["family"] + (f"; {model['cascade']}" if model["cascade"] else "")),
        ("data", data),
        ("license", None if model["simulated"] else model["license"] or "not stated"),
        ("cite", model["citation"]),
        ("source", model["url"]),
        ("patients", None if model["patients"] is None else
         f"{model['patients']} trained on, {model['held_out']} held out"),
        ("spacing", model["spacing"]),
        ("vendors", _vendors(model)),
        ("groups", ", ".join(model["groups"]) or "none (unconditional)"),
        ("phases", ", ".join(model["phases"]) or "none (unconditional)"),
        ("field of view", _field_words(model["field_of_view"])),
        ("guidance", f"{model['guidance']:g}" + (f" (mask dropout {model['mask_dropout']:g})"
                                                 if model["mask_dropout"] else "")),
        ("sampler", f"{model['sampler']}, {model['steps']} steps" if model["sampler"] else None),
        ("privacy", _privacy(model["epsilon"], model["delta"])),
        ("fine-tuned from", "; ".join(f"{a['model_id']}: {_privacy(a['epsilon'], a['delta'])}"
                              + (f", {a['patients']} patients" if a["patients"] is not None else "")
                              for a in model["lineage"]) or None),
        ("training", training),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}}  {value}" for name, value in rows if value not in (None, ""))
