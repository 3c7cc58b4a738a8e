"""The generation-time privacy filter on the phantom cohort (issue 14): who gets caught, and what it costs.

``python -m benchmarks --only privacy-filter`` runs it on the phantom; ``python -m benchmarks.privacy_filter
--data ACDC_DIR`` runs the same three models on a real cohort (:func:`real`: ACDC's training patients; its
``val.list`` patients, the run's holdout, calibrate; ``test.list`` is never read).

Protocol:

- a phantom cohort (``PATIENTS`` patients, 8×64×64 stacks) split into a public and a private half as
  ``cmrsynth demo`` does; every model below is a tiny flow-matching generator at 32×32 trained on the
  private half (the trainer's own patient split: its training patients are the members);
- three generators: **overfit** (only ``OVERFIT_PATIENTS`` training patients, many steps, constant LR: it
  reproduces its members' scans), **normal** (every training patient, the ordinary number of steps) and
  **DP** (patient-level DP-SGD at ε = 10, δ = 1e-3, fine-tuned from a model trained without DP on the public
  half, as the demo's DP model is);
- per model, its re-identification model (:func:`CMRSynthLib.reid.model.build_reid`): fitted on that model's
  training split (for the overfit model its 4 members and the split's unused patients; the gallery holds members
  only), threshold calibrated at a 1% false-match rate on the private half's held-out patients (validation +
  holdout: the phantom's validation split alone is two or three patients);
- the draws: one image per heart slice of every member's mask (the near-copies a memorising model makes are
  made from member masks), each screened by the filter (:class:`CMRSynthLib.reid.filter.PrivacyFilter`,
  4 redraws); *re-identified before* is the share of first draws the filter rejects, *after* the share still
  re-identifying after the last redraw (the filter withholds those images);
- cost: whole member stacks sampled with and without the filter, timed in turn (A B A B) on the normal model,
  and, in full mode, on the bundled ``phantom-flow`` starter (64×64, small preset, the sampler a user gets) with its
  re-identification model built on its own 40-patient phantom cohort.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import Settings, Table, load_average, measure_interleaved, seconds
from benchmarks.privacy_utility import DELTA, LR, MAX_GRAD_NORM, _cohorts

EPSILON = 10.0
OVERFIT_PATIENTS = 4
# mode → (patients, normal steps, overfit steps, public steps, DP steps, batch, reid steps, timed stacks, starter)
PLANS = {"smoke": (24, 4, 4, 3, 3, 4, 5, 1, False), "quick": (48, 400, 1500, 200, 200, 8, 600, 2, False),
         "full": (48, 800, 3000, 400, 400, 8, 600, 4, True)}


def run(settings: Settings, context: dict) -> list[Table]:
    patients, steps, overfit_steps, public_steps, dp_steps, batch, reid_steps, timed, starter = PLANS[settings.mode]
    started, loads = time.perf_counter(), [load_average()]
    table = Table(f"Privacy filter: phantom cohort, tiny flow 32×32; images from every member slice mask",
                  ["model", "re-identified before", "re-identified after (withheld)", "rejected draws",
                   "threshold FMR on held-out (95% CI)", "true-match rate (95% CI)", "sampling time plain → filtered"])
    with tempfile.TemporaryDirectory(prefix="cmrsynth-privacy-filter-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        root = Path(tmp)
        public, private = _cohorts(root, patients)
        models = {
            "overfit": _train(private, root / "models" / "overfit", steps=overfit_steps, batch=batch, settings=settings,
                              train_patients=OVERFIT_PATIENTS),
            "normal": _train(private, root / "models" / "normal", steps=steps, batch=batch, settings=settings)}
        public_model = _train(public, root / "models" / "public", steps=public_steps, batch=batch, settings=settings)
        models[f"DP ε = {EPSILON:g}"] = _train(private, root / "models" / "dp", steps=dp_steps, batch=batch, settings=settings,
                                               epsilon=EPSILON, init=public_model)
        for name, model in models.items():
            table.add(name, *_row(model, private, reid_steps=reid_steps, timed=timed if name == "normal" else 0,
                                  settings=settings, calibration="validation+holdout"))
        if starter:
            cohort = root / "starter-phantom"
            from CMRSynthLib.data.phantom import write_phantom_cohort
            from CMRSynthLib.training.checkpoint import resolve_model

            write_phantom_cohort(cohort, 40, seed=0, shape=(12, 128, 128))  # the flow starter's own cohort
            table.add("flow starter (64×64, small)", *_row(resolve_model("phantom-flow"), cohort, reid_steps=reid_steps,
                                                           timed=timed, settings=settings,
                                                           calibration="validation+holdout"))
    loads.append(load_average())
    table.notes += [
        f"{patients} phantom patients, half public; the overfit model trains on {OVERFIT_PATIENTS} patients for "
        f"{overfit_steps} steps, the normal one on all training patients for {steps} steps, the DP one "
        f"{dp_steps} steps of patient-level DP-SGD (C = {MAX_GRAD_NORM:g}) from a {public_steps}-step public model.",
        "Re-identification: a slice matches a training patient when its embedding (heart blanked out) is closer "
        "than the threshold to one of that patient's slices; threshold at a 1% false-match rate on the held-out "
        f"patients' real slices; {reid_steps} contrastive steps on the model's training split (members, and the "
        "unused patients of a run on part of it; the gallery holds members only). Filter: 4 redraws with derived seeds, then the "
        "image is withheld.",
        "Sampling time: whole member stacks at the model's default sampler, with and without the filter, "
        "interleaved; the overhead is the filter's embedding of every slice plus the redraws.",
        f"Wall time {time.perf_counter() - started:.0f} s; load average " + " → ".join(loads) + ".",
    ]
    context["privacy_filter"] = table.rows
    return [table]


# the real-cohort run: 64-pixel tiles of the whole field of view at 3 mm, steps per model, redraws as above. The
# overfit model sees heart-centred crops instead: on random tiles of 4 patients' whole fields a tiny flow did not
# memorise them in 2500 steps (its images were no closer to their own patient's slice than to others), and a
# model that does not copy has nothing for the filter to catch; a fixed crop is memorised in CPU minutes.
REAL_SHAPE = {"image_size": 64, "spacing": 3.0, "field_of_view": "whole"}
REAL_STEPS = {"overfit": 10000, "normal": 1500, "dp": 600}


def real(data: str, *, work: Path | None = None, smoke: bool = False, models: tuple[str, ...] = ()) -> Table:
    """The three models on a real cohort (``data``): overfit on ``OVERFIT_PATIENTS`` of its training patients,
    normal on all of them, DP-SGD from scratch (no public cardiac data to start from); calibrated on the run's
    holdout (ACDC: ``val.list``). ``work`` keeps the trained models (a rerun reuses them). ``smoke``: a few steps
    on 32-px tiles, to check that it runs. ``models``: trained models (folders or starter names, e.g. the
    shipped ``acdc-ldm``) to measure as well, with the filter's cost on whole member stacks."""
    from CMRSynthLib.training.checkpoint import resolve_model

    settings = Settings("smoke" if smoke else "real", size=64, preset="tiny", repeats=1, warmup=0, baseline_steps=1)
    shape, all_steps = (dict(REAL_SHAPE, image_size=32, spacing=6.0), dict.fromkeys(REAL_STEPS, 3)) if smoke else \
        (REAL_SHAPE, REAL_STEPS)
    reid_steps, batch = (5, 2) if smoke else (600, 8)
    started, loads = time.perf_counter(), [load_average()]
    table = Table(f"Privacy filter: real cohort, tiny flows on {shape['image_size']}-px tiles at {shape['spacing']:g} mm "
                  "(overfit: heart crops; normal, DP: whole field); images from every member slice mask",
                  ["model", "re-identified before", "re-identified after (withheld)", "rejected draws",
                   "threshold FMR on held-out (95% CI)", "true-match rate (95% CI)", "sampling time plain → filtered"])
    with tempfile.TemporaryDirectory(prefix="cmrsynth-privacy-filter-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        root = Path(work) if work is not None else Path(tmp)
        heart_crops = dict(shape, field_of_view="heart")
        plans = {"overfit": ("overfit", dict(train_patients=OVERFIT_PATIENTS, shape=heart_crops)),
                 "normal": ("normal", dict(shape=shape)),
                 "dp": (f"DP ε = {EPSILON:g}", dict(epsilon=EPSILON, shape=shape))}
        for key, (name, plan) in plans.items():
            out = root / key
            if not (out / "card.json").is_file():
                _train(Path(data), out, steps=all_steps[key], batch=batch, settings=settings, **plan)
            table.add(name, *_row(out, Path(data), reid_steps=reid_steps, timed=2 if key == "normal" else 0,
                                  settings=settings, calibration="holdout"))
        for model in models:
            table.add(Path(model).name, *_row(resolve_model(model), Path(data), reid_steps=reid_steps, timed=2,
                                              settings=settings, calibration="holdout"))
    loads.append(load_average())
    table.notes += [
        f"{data}: the overfit model trains on {OVERFIT_PATIENTS} training patients' heart-centred crops for "
        f"{all_steps['overfit']} steps, the normal one on all of them for {all_steps['normal']} steps, the DP one "
        f"{all_steps['dp']} steps of patient-level DP-SGD (ε = {EPSILON:g}, δ = {DELTA:g}, C = {MAX_GRAD_NORM:g}) from scratch; batch {batch}.",
        f"Re-identification as in the phantom table: {reid_steps} contrastive steps on the training split (the "
        "gallery holds each model's members only), threshold at a 1% false-match rate on the held-out patients (ACDC: val.list).",
        f"Wall time {time.perf_counter() - started:.0f} s; load average " + " → ".join(loads) + ".",
    ]
    return table


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.privacy_filter",
                                     description="the privacy filter's proof on a real cohort")
    parser.add_argument("--data", required=True, help="the cohort (ACDC: the SSL4MIS HDF5 folder or the NIfTI layout)")
    parser.add_argument("--work", type=Path, default=None, help="keep the trained models here (a rerun reuses them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a few steps on 32-px tiles: checks that it runs")
    parser.add_argument("--model", action="append", default=[],
                        help="a model trained on this cohort to measure too (folder or starter name; repeatable)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(real(args.data, work=args.work, smoke=args.smoke, models=tuple(args.model)).markdown())


def _train(data: Path, out: Path, *, steps: int, batch: int, settings: Settings, epsilon: float = math.inf,
           init: Path | None = None, train_patients: int | None = None, shape: dict | None = None) -> Path:
    """A tiny flow on ``data`` (DP-SGD at ``epsilon`` unless infinite; ``train_patients`` of the split); its
    folder. ``shape``: the preprocessing of a new model (default 32×32 tiles at 5 mm, cropped on the heart)."""
    from CMRSynthLib.training.config import TrainConfig
    from CMRSynthLib.training.loop import Trainer
    from CMRSynthLib.training.privacy import DPConfig, DPTraining, init_privacy

    shape = {} if init is not None else {"preset": "tiny", "image_size": 32, **(shape or {})}
    config = TrainConfig(data=str(data), family="flow", out=str(out), max_steps=steps, batch_size=batch, lr=LR,
                         lr_schedule="constant", device=settings.device, seed=0, train_patients=train_patients,
                         init=None if init is None else str(init), **shape)
    privacy = None
    if not math.isinf(epsilon):
        privacy = DPTraining(DPConfig(delta=DELTA, max_grad_norm=MAX_GRAD_NORM, target_epsilon=epsilon),
                             init=None if init is None else init_privacy(str(init), str(data), unit="patient"))
    Trainer(config, privacy=privacy).run()
    return out


def _row(model: Path, data: Path, *, reid_steps: int, timed: int, settings: Settings, calibration: str) -> list[str]:
    """The table cells of one model: rates before/after, rejected draws, calibration, sampling times."""
    from CMRSynthLib.audit.run import generate, load_slices, patient_list
    from CMRSynthLib.data.cohorts import load_case, open_cohort
    from CMRSynthLib.data.preprocess import PreprocessConfig
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.generators.base import Vocabulary
    from CMRSynthLib.jobs.progress import Progress
    from CMRSynthLib.reid.embedding import ReidConfig
    from CMRSynthLib.reid.filter import PrivacyFilter
    from CMRSynthLib.reid.model import build_reid, format_rate
    from CMRSynthLib.synthesis import synthesize
    from CMRSynthLib.training.checkpoint import load_checkpoint
    from CMRSynthLib.training.membership import known_splits

    generator, card = load_checkpoint(model, device=settings.device)
    splits = known_splits(card, model)
    cohort, preprocessing = open_cohort(data), PreprocessConfig.from_dict(card["preprocessing"])
    members = load_slices(cohort, splits["members"], preprocessing, what="member")
    unused = load_slices(cohort, splits["unused"], preprocessing, what="unused") if splits["unused"] else None
    held_out = load_slices(cohort, patient_list(calibration, flag="calibration", splits=splits), preprocessing,
                           what="held-out")
    reid = build_reid(card, members, held_out, others=unused, config=ReidConfig(size=members.shape, steps=reid_steps),
                      calibration_split=calibration, simulated=all(r.simulated for r in cohort.records),
                      device=settings.device, n_boot=300)
    privacy_filter = PrivacyFilter.of(reid)
    vocabulary = Vocabulary.from_dict(card["vocabulary"])

    def redraw(which: np.ndarray, seed: int) -> np.ndarray:  # in batches, as the audit draws them
        return generate(generator, vocabulary, members.take(which), seed=seed, batch_size=32,
                        progress=Progress("none"), label="privacy filter").images

    first = redraw(np.arange(len(members)), 0)
    _, screening = privacy_filter.screen(first, members.masks, 0, redraw, whole=False)
    before = float(np.mean(reid.distances(first, members.masks) < reid.threshold))
    after = len(screening.refused) / len(members)
    calibration_record = reid.record["calibration"]
    cells = [f"{before:.1%} of {len(members)}", f"{after:.1%}", str(screening.rejected),
             format_rate(calibration_record["false_match_rate"]), format_rate(calibration_record["true_match_rate"])]
    if not timed:
        return cells + ["—"]
    records = [r for r in cohort.records if r.patient in set(splits["members"])][:timed]
    cases = [(load_case(r), r.vendor) for r in records]

    def sample(filtered: bool):
        def go():
            for case, vendor in cases:
                vendor = vendor if vendor in vocabulary.vendors else None
                try:
                    synthesize(generator, card, case.label, vendor=vendor, seed=0,
                               privacy_filter=privacy_filter if filtered else None)
                except InputError:  # a withheld image costs its redraws all the same
                    pass
        return go

    timing = measure_interleaved({"plain": sample(False), "filtered": sample(True)},
                                 repeats=max(1, settings.repeats), warmup=0, device=settings.device)
    plain, filtered = timing["plain"].median, timing["filtered"].median
    return cells + [f"{seconds(plain)} → {seconds(filtered)} s ({filtered / plain - 1:+.1%}, {len(cases)} stacks)"]


if __name__ == "__main__":
    main()
