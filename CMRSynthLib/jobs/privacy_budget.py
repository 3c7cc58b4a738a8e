"""``cmrsynth privacy-budget``: the DP planner (issue 4) — ε for a given noise, or the noise for a target ε."""

from __future__ import annotations

import json
import math

HELP = "plan differential privacy before training: ε for a given noise, or the noise for a target ε"


def add_arguments(parser) -> None:
    parser.add_argument("--patients", type=int, required=True, help="number of patients in the private training set: the training split's, which cmrsynth inspect DATA shows")
    parser.add_argument("--batch-size", type=int, required=True,
                        help="expected number of patients per step (Poisson sampling rate = batch size / patients)")
    parser.add_argument("--epochs", type=float, required=True, help="passes over the patients (steps = epochs / rate)")
    parser.add_argument("--noise-multiplier", type=float, default=None, help="σ: give it to get ε (one of --noise-multiplier and --epsilon is required)")
    parser.add_argument("--epsilon", type=float, default=None, help="target ε: give it to get the noise needed (one of --noise-multiplier and --epsilon is required)")
    parser.add_argument("--delta", type=float, required=True, help="δ, below 1/patients")
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp",
                        help="Opacus accountant: rdp (Rényi DP) or prv (privacy random variables, tighter)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")


def run(args, progress) -> int:
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.privacy_planner import plan_epsilon, plan_noise

    if (args.noise_multiplier is None) == (args.epsilon is None):
        raise InputError("give exactly one of --noise-multiplier (to get ε) or --epsilon (to get the noise)")
    if args.epsilon is None:
        plan = plan_epsilon(args.patients, args.batch_size, args.epochs, args.noise_multiplier, args.delta,
                            args.accountant)
    else:
        plan = plan_noise(args.patients, args.batch_size, args.epochs, args.epsilon, args.delta, args.accountant)
    if not math.isfinite(plan.epsilon):
        progress.warning(f"noise multiplier {plan.noise_multiplier:g} gives no meaningful guarantee (ε is "
                         "unbounded); raise --noise-multiplier")
    if args.json:  # an unbounded ε is null (JSON has no infinity)
        print(json.dumps({**plan.to_dict(), "epsilon": plan.epsilon if math.isfinite(plan.epsilon) else None}))
    else:
        print(_table(plan, args))
    return 0


def _table(plan, args) -> str:
    rows = [
        ("privacy unit", plan.unit),
        ("accountant", plan.accountant),
        ("patients", f"{args.patients}"),
        ("expected patients / step", f"{args.batch_size}"),
        ("sample rate q", f"{plan.sample_rate:.6g}"),
        ("steps", f"{plan.steps}  ({args.epochs:g} epochs)"),
        ("noise multiplier σ", f"{plan.noise_multiplier:.6g}" + ("  (calibrated)" if args.epsilon is not None else "")),
        ("ε", (f"{plan.epsilon:.4g}" if math.isfinite(plan.epsilon) else "∞ (no meaningful guarantee)")
         + (f"  (target {args.epsilon:g})" if args.epsilon is not None else "")),
        ("δ", f"{plan.delta:.3g}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
