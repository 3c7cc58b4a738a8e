"""``cmrsynth demo``: the whole walk on the phantom cohort, ending in a receipt (DESIGN §2, issue 8).

``--tour`` (what ``make demo`` runs; minutes) shows what the product is for, in three stages (:func:`run_tour`):
real-looking hearts from the default real model (``acdc-ldm``) drawn around held-out phantom masks, with a
picture; a DP fine-tune of a public phantom starter on the phantom patients at ε = 10, planned first; and the
receipt of that DP model. The whole walk below is ``make demo-full``.

1. a phantom cohort (four vendors, five pathology groups), split by patient into a public and a private part
   (the private part's own training split keeps a held-out set: the card records who was in and who was not);
2. the DP planner's numbers; a flow model and a DDPM trained on the private part without DP; a flow model
   pre-trained on the public part then fine-tuned on the private part with DP-SGD at ε = 10 (patient-level);
3. a synthetic cohort from held-out masks in every vendor style, and new anatomies from the stage-1 model;
4. a held-out real image restyled into every other vendor;
5. the audit of every model together (fidelity, mask adherence, utility incl. cross-vendor, membership
   inference, memorisation) → ``DIR/report/report.html``, whose top compares the privacy and utility of
   the non-DP and DP models; the verdict table and the report's path are printed at the end.

``--data DIR`` walks a real cohort instead (:func:`run_real`): inspect it, plan DP, fine-tune the real starter
(``acdc-ldm``, whole field of view) on its training patients without DP, and train with DP: a fine-tune of the
starter when it has seen none of the patients, else a whole-field flow model from scratch (a fine-tune of a model
that saw a patient without DP can promise that patient nothing, and there is no public cardiac model to start
from; an LDM is DP-trained only on a frozen public autoencoder); whole-field-of-view volumes from held-out masks
and from new anatomies; the audit of the starter, the fine-tune and the DP model on the held-out patients.

The demo is a script over the public commands: every stage is the ``cmrsynth`` command a user would type,
printed before it runs. Re-running reuses what is done (each stage leaves a marker with its command line;
the train command itself resumes unfinished runs). ``--quick`` fine-tunes the bundled starter models briefly
(minutes on a laptop CPU); the full demo trains from scratch. Both audit with ``--quick`` (a few patients a side,
three slices per image, briefly trained segmenters): the report says so, and ``cmrsynth audit`` without it is the
audit to base decisions on.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from CMRSynthLib.errors import InputError
from CMRSynthLib.training.config import DEVICES

HELP = ("the whole walk on the phantom cohort (or a real one with --data): cohort → train (with and without DP) → "
        "generate → restyle → audit")

VENDORS = ("Siemens", "Philips", "GE", "Canon")
COHORT_SEED = 2026  # not the starter models' cohort seed: the demo's patients are new to them


@dataclass(frozen=True)
class DemoPlan:
    """How much work each stage does."""

    patients: int           # phantom patients in all (public + private)
    public_fraction: float  # share of patients in the public part
    preset: str
    image_size: int
    train_steps: int        # non-DP training steps of each model
    train_batch: int        # slices per non-DP step
    public_steps: int       # public pre-training steps of the model that is then DP fine-tuned
    dp_epochs: float        # DP fine-tuning epochs (passes over the private training patients)
    dp_batch: int           # expected patients per DP step
    from_starters: bool     # fine-tune the bundled starter models instead of training from scratch
    heldout_masks: int      # held-out mask stacks rendered in every vendor style
    new_anatomies: int


PLANS = {
    "quick": DemoPlan(patients=32, public_fraction=0.25, preset="small", image_size=64, train_steps=20,
                      train_batch=8, public_steps=0, dp_epochs=3, dp_batch=5, from_starters=True,
                      heldout_masks=2, new_anatomies=1),
    "full": DemoPlan(patients=48, public_fraction=0.25, preset="small", image_size=64, train_steps=500,
                     train_batch=8, public_steps=400, dp_epochs=15, dp_batch=8, from_starters=False,
                     heldout_masks=4, new_anatomies=4),
}
EPSILON, DELTA, MAX_GRAD_NORM = 10.0, 1e-3, 1.0


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder for the cohort, models, synthetic images and report")
    parser.add_argument("--quick", action="store_true",
                        help="fine-tune the starter models briefly (a few minutes on 2 CPU cores)")
    parser.add_argument("--tour", action="store_true",
                        help="the short tour (what make demo runs): the default real model's hearts on phantom masks, "
                             "a DP fine-tune with its ε, its receipt")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where training and sampling run (auto: CUDA, else MPS, else the CPU)")
    parser.add_argument("--data", default=None,
                        help="a real cohort (ACDC, M&Ms, image/label pairs) to walk instead of the phantom: fine-tunes "
                             "the real starter on it (default: the built-in phantom cohort; make demo stays on it)")


class Stages:
    """Runs ``cmrsynth`` commands in this process, each once: a marker records the finished command line."""

    def __init__(self, out: Path, progress_mode: str):
        self.out = out
        self.progress_mode = progress_mode
        self.markers = out / ".stages"
        self.seconds: dict[str, float] = {}

    def run(self, name: str, *argv) -> None:
        from CMRSynthLib.cli import main
        from CMRSynthLib.files import atomic_write_text

        argv = [str(a) for a in argv]
        marker = self.markers / f"{name}.json"
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == argv:
            _say(f"[{name}] done before, reused:  cmrsynth {shlex.join(argv)}")
            return
        _say(f"[{name}]  cmrsynth {shlex.join(argv)}")
        start = time.monotonic()
        code = main([*argv[:1], "--progress", self.progress_mode, *argv[1:]])
        if code != 0:
            raise SystemExit(code)
        self.seconds[name] = time.monotonic() - start
        _say(f"[{name}] {self.seconds[name]:.0f} s")
        atomic_write_text(marker, json.dumps(argv))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def split_cohort(cohort: Path, out: Path, *, public_fraction: float, seed: int) -> tuple[Path, Path]:
    """Write ``out/public`` and ``out/private`` cohort.csv files over the phantom folder, split by patient
    (stratified by vendor so both parts see every vendor)."""
    from CMRSynthLib.data.splits import split_patients
    from CMRSynthLib.files import atomic_write_text

    with open(cohort / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    vendor_of = {row["patient"]: row["vendor"] for row in rows}
    split = split_patients(sorted(vendor_of), fractions=(public_fraction, 1 - public_fraction, 0.0), seed=seed,
                           strata=vendor_of)
    parts = {"public": set(split.train), "private": set(split.validation)}
    for name, patients in parts.items():
        lines = [list(rows[0])]
        for row in rows:
            if row["patient"] in patients:
                row = dict(row, image=f"../{cohort.name}/{row['image']}", label=f"../{cohort.name}/{row['label']}")
                lines.append([row[k] for k in lines[0]])
        text = "".join(",".join(map(str, line)) + "\n" for line in lines)
        atomic_write_text(out / name / "cohort.csv", text)
    return out / "public", out / "private"


def held_out_cases(model_dir: Path, private: Path, *, count: int) -> list[dict]:
    """The first ``count`` ED cases of patients the model's card lists as held out, one per vendor first."""
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    holdout = set(card["holdout"])
    with open(private / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["patient"] in holdout and r["phase"] == "ED"]
    if not rows:
        raise InputError("the model's card lists no held-out patients in the private cohort", path=model_dir)
    rows.sort(key=lambda r: (VENDORS.index(r["vendor"]) if r["vendor"] in VENDORS else 99, r["patient"]))
    return [dict(r, image=str((private / r["image"]).resolve()), label=str((private / r["label"]).resolve()))
            for r in rows[:count]]


@dataclass(frozen=True)
class RealPlan:
    """How much work each stage of the walk on a real cohort does (whole field of view: costly on a CPU)."""

    finetune_steps: int
    dp_epochs: float
    dp_batch: int
    heldout_masks: int
    new_anatomies: int


REAL_DP_TILE = 96  # the DP model from scratch learns from 96-px whole-field tiles, as the real pixel-space starters
REAL_PLANS = {"quick": RealPlan(finetune_steps=20, dp_epochs=1, dp_batch=8, heldout_masks=2, new_anatomies=1),
              "full": RealPlan(finetune_steps=300, dp_epochs=10, dp_batch=8, heldout_masks=4, new_anatomies=4)}


def run_real(args, progress) -> int:
    """The walk on the real cohort ``args.data`` (see the module notes)."""
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.training.checkpoint import read_card, resolve_model
    from CMRSynthLib.training.membership import lineage_patients
    from CMRSynthLib import DEFAULT_MODEL

    out = Path(args.out).resolve()
    plan = REAL_PLANS["quick" if args.quick else "full"]
    stages = Stages(out, "none" if progress.mode == "none" else progress.mode)
    device = ["--device", args.device]
    data = Path(args.data).resolve()
    cohort = open_cohort(data)  # bad data stops here, before any work
    stages.run("inspect", "inspect", data)

    models = out / "models"
    starter = read_card(resolve_model(DEFAULT_MODEL))
    lineage_seen = lineage_patients(starter, resolve_model(DEFAULT_MODEL))
    seen = set(cohort.patients()) if lineage_seen is None else lineage_seen & set(cohort.patients())
    stages.run("train-ldm", "train", "--generator", "ldm", "--data", data, "--out", models / "ldm",
               "--init", DEFAULT_MODEL, "--max-steps", plan.finetune_steps, "--batch-size", 8, "--seed", 0, *device)
    audited = [DEFAULT_MODEL, models / "ldm"]
    stages.run("plan-dp", "privacy-budget", "--patients", _training_patients(models / "ldm"), "--batch-size",
               plan.dp_batch, "--epochs", plan.dp_epochs, "--epsilon", EPSILON, "--delta", DELTA)
    dp = ["--dp", "--epsilon", EPSILON, "--delta", DELTA, "--max-grad-norm", MAX_GRAD_NORM, "--batch-size",
          plan.dp_batch, "--epochs", plan.dp_epochs, "--seed", 0, *device]
    name, argv, dp_model = real_dp_stage(starter, seen, data=data, models=models, dp=dp)
    stages.run(name, *argv)
    audited.append(dp_model)

    masks = _real_heldout_masks(cohort, read_card(models / "ldm"), out / "heldout-masks", count=plan.heldout_masks)
    stages.run("sample", "sample", "--model", models / "ldm", "--mask", masks, "--out", out / "synthetic", *device)
    stages.run("new-anatomy", "sample", "--model", models / "ldm", "--new-anatomy", plan.new_anatomies,
               "--group", "NOR", "--phase", "ED", "--out", out / "synthetic" / "new-anatomy", *device)
    audit = ["audit", "--data", data, "--out", out / "report", "--quick",
             "--device", "cpu" if args.device == "auto" else args.device]
    for model in audited:
        audit[1:1] = ["--model", model]
    stages.run("audit", *audit)
    report = out / "report" / "report.html"
    _print_verdicts(out / "report" / "report.json")
    print(f"\nThe receipt: {report}")
    progress.artefact(report, "report")
    progress.done(report=str(report))
    return 0


def real_dp_stage(starter: dict, seen: set[str], *, data: Path, models: Path, dp: list) -> tuple[str, list, Path]:
    """The DP stage of the real walk: (stage name, ``cmrsynth`` argv, model folder). A DP fine-tune of the
    default starter when its lineage saw none of the cohort's patients (``seen``); else a whole-field flow model from
    scratch, since no fine-tune of a model trained without DP on a patient can promise that patient anything."""
    from CMRSynthLib import DEFAULT_MODEL

    if not seen:
        out = models / "ldm-dp"
        return "train-ldm-dp", ["train", "--generator", "ldm", "--data", data, "--out", out, "--init",
                                DEFAULT_MODEL, *dp], out
    _say(f"[train-flow-dp] the starter {DEFAULT_MODEL} was trained without DP on {len(seen)} of these patients: "
         "no fine-tune of it could promise them anything, so the DP model is a whole-field flow model trained "
         "from scratch")
    out = models / "flow-dp"
    return "train-flow-dp", ["train", "--generator", "flow", "--data", data, "--out", out, "--preset", "small",
                             "--image-size", REAL_DP_TILE, "--spacing", starter["preprocessing"]["spacing"][0],
                             "--field-of-view", "whole", *dp], out


def _real_heldout_masks(cohort, card: dict, folder: Path, *, count: int) -> Path:
    """The label files of the first ``count`` held-out ED cases, as NIfTI in ``folder`` (canonical labels)."""
    from CMRSynthLib.data.cohorts import load_case
    from CMRSynthLib.data.volume import write_volume

    holdout = set(card["holdout"])
    records = [r for r in cohort.records if r.patient in holdout and r.phase == "ED" and r.label_path][:count]
    if not records:
        raise InputError("the fine-tuned model's card lists no held-out patient with an ED label", path=cohort.root)
    for record in records:
        target = folder / f"{record.case_id}_gt.nii.gz"
        if not target.exists():
            write_volume(load_case(record).label, target)
    return folder


def run(args, progress) -> int:
    if args.data is not None:
        return run_real(args, progress)
    if args.tour:
        return run_tour(args, progress)
    out = Path(args.out).resolve()
    plan = PLANS["quick" if args.quick else "full"]
    mode = "none" if progress.mode == "none" else progress.mode
    stages = Stages(out, mode)
    device = ["--device", args.device]

    # 1. cohort ------------------------------------------------------------------------------------
    stages.run("cohort", "phantom", "--out", out / "phantom", "--patients", plan.patients, "--seed", COHORT_SEED)
    public, private = split_cohort(out / "phantom", out, public_fraction=plan.public_fraction, seed=COHORT_SEED)
    stages.run("inspect", "inspect", private)

    # 2. models ------------------------------------------------------------------------------------
    models = out / "models"
    # a fine-tune keeps the starter's own preset and image size
    shape = [] if plan.from_starters else ["--preset", plan.preset, "--image-size", plan.image_size]
    common = ["--data", private, *shape, "--seed", 0, *device]
    for family in ("flow", "ddpm"):
        init = ["--init", f"phantom-{family}"] if plan.from_starters else []
        stages.run(f"train-{family}", "train", "--generator", family, "--out", models / family,
                   "--max-steps", plan.train_steps, "--batch-size", plan.train_batch, *common, *init)
    if plan.from_starters:
        public_model = "phantom-flow"  # the phantom flow starter was trained on another phantom cohort: public data
    else:
        public_model = models / "flow-public"
        stages.run("train-public", "train", "--generator", "flow", "--out", public_model, "--data", public,
                   "--preset", plan.preset, "--image-size", plan.image_size, "--max-steps", plan.public_steps,
                   "--seed", 0, *device)
    private_patients = _training_patients(models / "flow")
    stages.run("plan-dp", "privacy-budget", "--patients", private_patients, "--batch-size", plan.dp_batch,
               "--epochs", plan.dp_epochs, "--epsilon", EPSILON, "--delta", DELTA)
    stages.run("train-flow-dp", "train", "--generator", "flow", "--out", models / "flow-dp", *common,
               "--init", public_model, "--dp", "--epsilon", EPSILON, "--delta", DELTA,
               "--max-grad-norm", MAX_GRAD_NORM, "--batch-size", plan.dp_batch, "--epochs", plan.dp_epochs)
    stages.run("train-anatomy", "train", "--generator", "anatomy", "--out", models / "anatomy", *common,
               "--max-steps", plan.train_steps, "--batch-size", plan.train_batch,
               *(["--init", "phantom-anatomy"] if plan.from_starters else []))

    # 3. synthetic cohort from held-out masks, every vendor; new anatomies ------------------------------
    cases = held_out_cases(models / "flow", private, count=plan.heldout_masks)
    masks = out / "heldout-masks"
    masks.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = masks / Path(case["label"]).name
        if not link.exists():
            link.symlink_to(case["label"])
    for vendor in VENDORS:
        stages.run(f"sample-{vendor}", "sample", "--model", models / "flow", "--mask", masks,
                   "--out", out / "synthetic" / vendor, "--vendor", vendor, *device)
    stages.run("new-anatomy", "sample", "--model", models / "flow", "--anatomy-model", models / "anatomy",
               "--new-anatomy", plan.new_anatomies, "--group", "DCM", "--phase", "ED", "--vendor", VENDORS[0],
               "--out", out / "synthetic" / "new-anatomy", *device)

    # 4. restyle a held-out real image into every other vendor -----------------------------------------
    source = cases[0]
    for vendor in VENDORS:
        if vendor != source["vendor"]:
            stages.run(f"restyle-{vendor}", "restyle", "--model", models / "flow", "--image", source["image"],
                       "--mask", source["label"], "--source-vendor", source["vendor"], "--vendor", vendor,
                       "--out", out / "restyled" / f"{Path(source['image']).name.split('.')[0]}_{vendor}.nii.gz", *device)

    # 5. the receipt -------------------------------------------------------------------------------
    stages.run("audit", "audit", "--model", models / "flow", "--model", models / "ddpm", "--model",
               models / "flow-dp", "--data", private, "--holdout", "validation+holdout", "--out", out / "report",
               "--quick", "--device", "cpu" if args.device == "auto" else args.device)
    report = out / "report" / "report.html"
    _print_verdicts(out / "report" / "report.json")
    print(f"\nThe receipt: {report}")
    progress.artefact(report, "report")
    progress.done(report=str(report))
    return 0


TOUR = DemoPlan(patients=32, public_fraction=0.0, preset="tiny", image_size=32, train_steps=0, train_batch=0,
                public_steps=0, dp_epochs=3, dp_batch=4, from_starters=True, heldout_masks=2, new_anatomies=0)
TOUR_INIT = "phantom-tiny-flow"  # public for the tour's patients: trained on another phantom cohort (seed 0)


def run_tour(args, progress) -> int:
    """The short tour (see the module notes): every stage a ``cmrsynth`` command, printed before it runs."""
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.training.data import split_sizes

    if args.quick:
        raise InputError("--tour and --quick are two different walks; choose one")
    out = Path(args.out).resolve()
    stages = Stages(out, "none" if progress.mode == "none" else progress.mode)
    device = ["--device", args.device]
    cohort = out / "phantom"
    stages.run("cohort", "phantom", "--out", cohort, "--patients", TOUR.patients, "--seed", COHORT_SEED)

    masks = tour_masks(cohort, out / "heldout-masks", count=TOUR.heldout_masks)
    stages.run("sample-default", "sample", "--mask", masks, "--out", out / "default-model", "--vendor", "Siemens",
               *device)
    picture = hearts_figure(out / "default-model", masks, out / "default-model.png")
    progress.artefact(picture, "figure")
    _say(f"[sample-default] the default real model's hearts around held-out phantom masks: {picture}")

    patients = split_sizes(open_cohort(cohort))["train"]
    dp = ["--epsilon", EPSILON, "--delta", DELTA]
    stages.run("plan-dp", "privacy-budget", "--patients", patients, "--batch-size", TOUR.dp_batch, "--epochs",
               TOUR.dp_epochs, *dp)
    dp_model = out / "models" / "flow-dp"
    stages.run("train-dp", "train", "--data", cohort, "--init", TOUR_INIT, "--out", dp_model, "--dp", *dp,
               "--max-grad-norm", MAX_GRAD_NORM, "--batch-size", TOUR.dp_batch, "--epochs", TOUR.dp_epochs, "--seed", 0,
               *device)
    stages.run("audit", "audit", "--model", dp_model, "--data", cohort, "--holdout", "validation+holdout", "--out",
               out / "report", "--quick", *device)
    report = out / "report" / "report.html"
    _print_verdicts(out / "report" / "report.json")
    print(f"\nThe default model's hearts: {picture}\nThe receipt of the DP model: {report}")
    progress.artefact(report, "report")
    progress.done(report=str(report), figure=str(picture))
    return 0


def tour_masks(cohort: Path, folder: Path, *, count: int) -> Path:
    """A folder of links to the ED labels of the first ``count`` patients that ``cmrsynth train`` holds out of
    ``cohort`` (no model of the tour trains on them)."""
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.training.data import labelled_records, training_split

    opened = open_cohort(cohort)
    records = labelled_records(opened, opened.root)
    held_out = set(training_split(records, seed=0).holdout)
    labels = sorted((r.patient, r.label_path) for r in records if r.patient in held_out and r.phase == "ED")
    folder.mkdir(parents=True, exist_ok=True)
    for _, label in labels[:count]:
        link = folder / Path(label).name
        if not link.exists():
            link.symlink_to(label)
    return folder


def hearts_figure(images: Path, masks: Path, path: Path) -> Path:
    """Three slices of each synthetic stack in ``images`` beside its mask's contours (``masks``)."""
    from CMRSynthLib.audit.figures import stack_figure
    from CMRSynthLib.data.volume import read_volume

    pairs = []
    for mask_path in sorted(masks.iterdir()):
        stem = mask_path.name.split(".")[0].removesuffix("_gt")
        image = next(images.glob(f"{stem}_synth_*"))
        pairs.append((stem, read_volume(image).array, read_volume(mask_path).array))
    return stack_figure(pairs, path, title="acdc-ldm (the default real model) around held-out phantom masks "
                                           "(red LV, green MYO, blue RV)")


def _training_patients(model_dir: Path) -> int:
    """How many patients the private model was trained on (the DP planner's N)."""
    return len(json.loads((model_dir / "card.json").read_text(encoding="utf-8"))["members"])


def _print_verdicts(report_json: Path) -> None:
    report = json.loads(report_json.read_text(encoding="utf-8"))
    print()
    for model in report["models"]:
        print(f"## {model['name']}")
        width = max(len(row["axis"]) for row in model["verdict"])
        for row in model["verdict"]:
            print(f"  {row['axis']:<{width}}  {row['number']:<34}  {row['meaning']}")
