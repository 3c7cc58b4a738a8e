"""Privacy–utility on the phantom cohort (issue 4): ε ∈ {1, 4, 10, ∞} × {with, without public pre-training}.

Protocol (every arm sees the same data, steps and expected batch; only ε and the starting weights change):

- a phantom cohort (``PATIENTS`` patients, 8×64×64 stacks) split by patient, stratified by vendor, into a public
  and a private half as ``cmrsynth demo`` does (:func:`CMRSynthLib.jobs.demo.split_cohort`); images prepared at
  32×32, tiny flow-matching generator;
- public pre-training: the tiny flow trained WITHOUT DP on the public half;
- each arm trains on the private half (the trainer's own patient split: its training patients are the members)
  for ``STEPS`` steps at an expected ``BATCH`` per step: ε = ∞ is ordinary training (batches of slices); a finite
  ε is patient-level DP-SGD (Poisson sampling of patients, one slice each, C = 1, δ = ``DELTA``) with the noise
  Opacus calibrates to ε for those steps. "with" starts from the public model (``--init``), "without" from
  random weights;
- the judge is the audit's segmenter (:func:`CMRSynthLib.audit.segmenter.train_segmenter`, its quick setting)
  trained on the real slices of the private members; it segments one image generated from every slice mask of
  the non-members (validation + held-out patients of the private half) and the table reports the mean Dice
  over LV, MYO and RV against those masks (:func:`~CMRSynthLib.audit.adherence.mask_adherence`; 95% CI over
  patients), and FD-seg, the Fréchet distance to the real non-member slices in the judge's feature space;
- full mode also runs the audit's membership attacks (members vs non-members; AUC of the strongest attack on
  its evaluation half of the patients; 0.5 = no leak detected, the interval is wide with so few patients).
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.common import Settings, Table, load_average

EPSILONS = (1.0, 4.0, 10.0, math.inf)
DELTA = 1e-3
MAX_GRAD_NORM = 1.0
LR = 2e-3
# mode → (patients, private steps, public pre-training steps, expected batch, judge steps, membership attacks)
PLANS = {"smoke": (24, 3, 3, 2, 5, False), "quick": (32, 60, 150, 6, 120, False),
         "full": (64, 300, 600, 8, 250, True)}


def run(settings: Settings, context: dict) -> list[Table]:
    patients, steps, public_steps, batch, judge_steps, attacks = PLANS[settings.mode]
    started, loads = time.perf_counter(), [load_average()]
    with tempfile.TemporaryDirectory(prefix="cmrsynth-privacy-utility-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        root = Path(tmp)
        public, private = _cohorts(root, patients)
        public_model = _train(public, root / "models" / "public", steps=public_steps, batch=batch, settings=settings)
        epsilons = EPSILONS[-2:] if settings.smoke else EPSILONS  # smoke: checks the section runs
        arms = {(eps, pre): _train(private, root / "models" / f"eps{eps}-{pre}", steps=steps, batch=batch,
                                   settings=settings, epsilon=eps, init=public_model if pre else None)
                for eps in epsilons for pre in (True, False)}
        judge, real_m, real_n, ceiling = _judge(arms[(math.inf, False)], private, judge_steps, settings)
        table = Table(f"Privacy–utility: phantom cohort, tiny flow 32×32, {steps} private steps, "
                      f"expected batch {batch}",
                      ["ε target", "public pre-training", "ε spent (δ = 1e-3)", "noise σ", "mask Dice (95% CI)",
                       "FD-seg", "membership AUC (95% CI)"])
        table.add("—", "public model only (no private data)", "0", "—",
                  *_scores(public_model, judge, real_m, real_n, settings, attacks))
        for (eps, pre), model in arms.items():
            spent, sigma = _ledger(model)
            table.add("∞ (no DP)" if math.isinf(eps) else f"{eps:g}", "with" if pre else "without", spent, sigma,
                      *_scores(model, judge, real_m, real_n, settings, attacks))
    loads.append(load_average())
    table.notes += [
        f"{patients} phantom patients: {len(set(real_m.patients))} private members, {len(set(real_n.patients))} "
        f"private non-members; public pre-training {public_steps} steps without DP on the other half.",
        f"Judge: the audit's quick segmenter ({judge_steps} steps) on the real member slices; its Dice on the "
        f"real non-member images (the ceiling) is {_estimate(ceiling)}.",
        "DP arms: patient-level DP-SGD (Opacus RDP accountant, C = 1, one slice per sampled patient); noise "
        "calibrated to the target ε for the planned steps; ε spent is the ledger's.",
        *([] if attacks else ["Membership AUC runs in full mode only."]),
        f"Wall time {time.perf_counter() - started:.0f} s; load average " + " → ".join(loads) + ".",
    ]
    context["privacy_utility"] = table.rows
    return [table]


def _cohorts(root: Path, patients: int) -> tuple[Path, Path]:
    from CMRSynthLib.data.phantom import write_phantom_cohort
    from CMRSynthLib.jobs.demo import split_cohort

    write_phantom_cohort(root / "phantom", patients, seed=7, shape=(8, 64, 64))
    return split_cohort(root / "phantom", root, public_fraction=0.5, seed=7)


def _train(data: Path, out: Path, *, steps: int, batch: int, settings: Settings, epsilon: float = math.inf,
           init: Path | None = None) -> Path:
    """A tiny flow trained on ``data`` (with DP-SGD at ``epsilon`` unless it is infinite); its folder."""
    from CMRSynthLib.training.config import TrainConfig
    from CMRSynthLib.training.loop import Trainer
    from CMRSynthLib.training.privacy import DPConfig, DPTraining, init_privacy

    shape = {} if init is not None else {"preset": "tiny", "image_size": 32}
    config = TrainConfig(data=str(data), family="flow", out=str(out), max_steps=steps, batch_size=batch, lr=LR,
                         lr_schedule="constant", device=settings.device, seed=0,
                         init=None if init is None else str(init), **shape)
    privacy = None
    if not math.isinf(epsilon):
        privacy = DPTraining(DPConfig(delta=DELTA, max_grad_norm=MAX_GRAD_NORM, target_epsilon=epsilon),
                             init=None if init is None else init_privacy(str(init), str(data), unit="patient"))
    Trainer(config, privacy=privacy).run()
    return out


def _judge(model: Path, private: Path, steps: int, settings: Settings):
    """The segmenter judge, the real member and non-member slices of the private half, and the judge's ceiling."""
    from CMRSynthLib.audit.adherence import segmenter_ceiling
    from CMRSynthLib.audit.run import load_slices
    from CMRSynthLib.audit.segmenter import SegmenterConfig, train_segmenter
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.data.preprocess import PreprocessConfig
    from CMRSynthLib.training.checkpoint import read_card
    from CMRSynthLib.training.membership import known_splits

    card = read_card(model)
    splits = known_splits(card, model)
    cohort, preprocessing = open_cohort(private), PreprocessConfig.from_dict(card["preprocessing"])
    real_m = load_slices(cohort, splits["members"], preprocessing, what="member")
    real_n = load_slices(cohort, splits["validation"] + splits["holdout"], preprocessing, what="non-member")
    with tempfile.TemporaryDirectory(prefix="cmrsynth-judge-") as cache:
        judge = train_segmenter(real_m, SegmenterConfig.quick(steps=steps), cache=Path(cache), device=settings.device)
    return judge, real_m, real_n, segmenter_ceiling(judge, real_n, n_boot=300)["mean"]["dice"]


def _scores(model: Path, judge, real_m, real_n, settings: Settings, attacks: bool) -> tuple[str, str, str]:
    """Mask Dice and FD-seg of images generated from the non-members' masks; the membership AUC."""
    from CMRSynthLib.audit.adherence import mask_adherence
    from CMRSynthLib.audit.features import segmenter_space
    from CMRSynthLib.audit.fidelity import feature_distances
    from CMRSynthLib.audit.membership import AttackConfig, membership_inference
    from CMRSynthLib.audit.run import generate
    from CMRSynthLib.generators.base import Vocabulary
    from CMRSynthLib.jobs.progress import Progress
    from CMRSynthLib.training.checkpoint import load_checkpoint

    generator, card = load_checkpoint(model, device=settings.device)
    vocabulary = Vocabulary.from_dict(card["vocabulary"])
    synthetic = generate(generator, vocabulary, real_n, seed=0, batch_size=32, progress=Progress("none"),
                         label="privacy-utility")
    dice = mask_adherence(judge, synthetic, n_boot=300)["mean"]["dice"]
    space = segmenter_space(judge)
    fd = feature_distances(space, real_n, synthetic, n_boot=0)[f"FD-{space.name}"].value
    auc = "—"
    if attacks:
        result = membership_inference(generator, vocabulary, real_m, real_n, AttackConfig.quick())
        head = next(a for a in result["attacks"] if a["name"] == result["headline"])
        auc = _estimate(head["evaluation"]["auc"])
    return _estimate(dice), f"{fd:.3g}", auc


def _ledger(model: Path) -> tuple[str, str]:
    from CMRSynthLib.training.checkpoint import read_card

    ledger = read_card(model).get("privacy")
    if not ledger:
        return "∞", "—"
    return f"{ledger['epsilon']:.3g}", f"{ledger['noise_multiplier']:.3g}"


def _estimate(estimate) -> str:
    if estimate.low is None or estimate.high is None:
        return f"{estimate.value:.3f}"
    return f"{estimate.value:.3f} ({estimate.low:.3f}–{estimate.high:.3f})"
