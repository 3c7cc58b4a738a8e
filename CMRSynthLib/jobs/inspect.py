"""``cmrsynth inspect PATH``: what a cohort folder, an image file or a DICOM series holds, and what is wrong."""

from __future__ import annotations

import json
from collections import Counter

from CMRSynthLib.data.conventions import LABEL_CONVENTIONS, STRUCTURES

HELP = ("report the cases, vendors, shapes, spacing, orientation and LV/MYO/RV volumes (ml, canonical labels) "
        "of a cohort folder, an image file or a DICOM series, and every problem found")


def add_arguments(parser) -> None:
    parser.add_argument("path", help="a cohort folder (ACDC, M&Ms-1, M&Ms-2, image/label pairs, phantom), one "
                                     "image file (its label beside it as NAME_gt / _label / _seg / _mask) "
                                     "or a DICOM series folder")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (layout, cases, problems) instead of a table")
    parser.add_argument("--label-convention", choices=sorted(LABEL_CONVENTIONS), default=None,
                        help="label numbering of a generic folder or single file (default canonical: "
                             "1 LV, 2 MYO, 3 RV; acdc: 1 RV, 2 MYO, 3 LV); ACDC and M&Ms layouts have their own")
    parser.add_argument("--frame", type=int, default=None,
                        help="the cardiac phase (0-based frame) to read from a DICOM cine series (default: none; a cine series "
                             "then asks for it)")


def run(args, progress) -> int:
    from CMRSynthLib.data.cohort_report import inspect_cohort
    from CMRSynthLib.data.cohorts import open_cohort

    cohort = open_cohort(args.path, label_convention=args.label_convention, frame=args.frame)
    progress.start("inspect", total=len(cohort.records), layout=cohort.layout)
    # One file or one DICOM series: if it cannot be read there is nothing to report (exit 2, one line).
    single = cohort.layout in ("file", "dicom")
    report = inspect_cohort(cohort, fatal=single, callback=progress.update)
    if not single:
        report["training_split"] = training_split_of(cohort)
    problems = len(report["problems"]) + sum(len(c["problems"]) for c in report["cases"])
    progress.done(layout=report["layout"], cases=len(report["cases"]), problems=problems)
    if args.json:
        compact = progress.mode == "jsonl"  # one line among the protocol's lines
        print(json.dumps(report) if compact else _indented_json(report))
    else:
        print(format_report(report, root=str(cohort.root)))
    return 0


def training_split_of(cohort) -> dict:
    """The patients per part of the split ``cmrsynth train`` makes of the cohort, or the problem that stops it."""
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.data import split_sizes

    try:
        return split_sizes(cohort)
    except InputError as exc:
        return {"problem": str(exc)}


def _split_lines(split: dict | None) -> list[str]:
    """The training split in words, with the N that ``cmrsynth privacy-budget --patients`` needs."""
    if split is None:
        return []
    if "problem" in split:
        return ["", f"training split: none ({split['problem']})"]
    return ["", f"training split (cmrsynth train): {split['train']} patients to train on, {split['validation']} "
                f"validation, {split['holdout']} held out",
            f"  with --dp: cmrsynth privacy-budget --patients {split['train']} ... (and --batch-size at most "
            f"{split['train']})"]


def _indented_json(report: dict) -> str:
    """Indented JSON with the geometry lists (shape, spacing, origin, direction) kept on one line each."""
    inline = {}
    cases = []
    for case in report["cases"]:
        case = dict(case)
        for key in ("shape", "spacing", "origin", "direction"):
            if case[key] is not None:
                token = f"<inline {len(inline)} {id(report)}>"
                inline[json.dumps(token)] = json.dumps(case[key])
                case[key] = token
        cases.append(case)
    text = json.dumps({**report, "cases": cases}, indent=2)
    for token, value in inline.items():
        text = text.replace(token, value, 1)
    return text


def _cell(values, fmt: str) -> str:
    return "-" if values is None else "×".join(format(v, fmt) for v in values)


def format_report(report: dict, *, root: str) -> str:
    """A human-readable table of the report: one row per case, then counts and every problem.

    ``axes`` is where the I, J, K voxel axes point (RAS letters; ``~`` = oblique).
    """
    from CMRSynthLib.data.cohort_report import orientation_code

    cases = report["cases"]
    lines = [f"layout: {report['layout']}  ({root})",
             f"cases: {len(cases)}  patients: {len({c['patient'] for c in cases})}",
             "vendors: " + ", ".join(f"{v} {n}" for v, n in sorted(Counter(c["vendor"] for c in cases).items())),
             "groups: " + ", ".join(f"{g} {n}" for g, n in sorted(Counter(c["group"] for c in cases).items())),
             "shapes (I×J×K): " + ", ".join(f"{s} {n}" for s, n in sorted(
                 Counter("unreadable" if c["shape"] is None else _cell(c["shape"], "d") for c in cases).items())),
             ""]
    header = ["patient", "phase", "vendor", "group", "shape", "spacing mm", "axes",
              *(f"{s} ml" for s in STRUCTURES), "problems"]
    rows = [[c["patient"], c["phase"], c["vendor"], c["group"], _cell(c["shape"], "d"),
             _cell(c["spacing"], ".3g"), "-" if c["direction"] is None else orientation_code(c["direction"]),
             *("-" if c["volumes_ml"][s] is None else f"{c['volumes_ml'][s]:.1f}" for s in STRUCTURES),
             str(len(c["problems"]))] for c in cases]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    found = report["problems"] + [p for c in cases for p in c["problems"]]
    lines += ["", f"problems: {len(found)}" if found else "problems: none"]
    lines += [f"  - {p}" for p in found]
    return "\n".join(lines + _split_lines(report.get("training_split")))
