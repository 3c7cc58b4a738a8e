"""``cmrsynth audit``: the receipt (DESIGN §6) — fidelity, mask adherence, utility and privacy in one report."""

from __future__ import annotations

HELP = "audit generators: fidelity, mask adherence, utility and privacy → report.html + report.json"


def add_arguments(parser) -> None:
    from CMRSynthLib.training.config import DEVICES

    parser.add_argument("--model", action="append", required=True, metavar="CKPT",
                        help="checkpoint folder or starter name; repeat to audit several models together")
    parser.add_argument("--data", required=True, help="the cohort the model(s) were trained on")
    parser.add_argument("--out", required=True, help="folder for report.html, report.json and figures/")
    parser.add_argument("--synthetic", metavar="DIR",
                        help="a cohort folder of synthetic images with their masks, audited instead of generating (default: "
                             "generate them from the held-out masks)")
    parser.add_argument("--members", metavar="SPLIT_OR_IDS",
                        help="member patients instead of the card's: a split of the card (members, validation, "
                             "holdout, unused; join with +), a file of ids or comma-separated ids (default: the card's "
                             "members)")
    parser.add_argument("--holdout", metavar="SPLIT_COHORT_OR_IDS",
                        help="non-member patients (default: the card's held-out patients): a split of the card "
                             "(e.g. validation+holdout), a cohort folder, a file of ids or comma-separated ids")
    parser.add_argument("--inception-weights", metavar="FILE",
                        help="Inception-v3 weights (safetensors) to add ImageNet-Inception FID/KID (default: none, FD-seg only)")
    parser.add_argument("--quick", action="store_true", help="small n: minutes on a laptop (tests, demo)")
    parser.add_argument("--patients", type=int, metavar="N",
                        help="at most N members and N held-out patients, matched by vendor and group (the "
                             "membership attacks still use all); default all, 6 with --quick")
    parser.add_argument("--slices-per-case", type=int, metavar="K",
                        help="at most K heart slices per image, evenly spaced base to apex; default all, 3 with "
                             "--quick")
    parser.add_argument("--segmenter-steps", type=int, metavar="S",
                        help="training steps of the audit's segmenters (default 800, 250 with --quick); real "
                             "whole-field images need more than the phantom; a utility arm with more images "
                             "(real + synthetic) trains proportionally longer")
    parser.add_argument("--redact", action="store_true",
                        help="draw outlines instead of real images in the nearest-neighbour gallery")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where the models and the audit's segmenters run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling, the segmenters and the bootstrap")


def run(args, progress) -> int:
    from dataclasses import replace

    from CMRSynthLib.audit.run import AuditPlan, run_audit
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.distributed import World
    from CMRSynthLib.training.loop import resolve_device

    sizes = {"--patients": args.patients, "--slices-per-case": args.slices_per_case,
             "--segmenter-steps": args.segmenter_steps}
    for flag, value in sizes.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    base = AuditPlan.quick() if args.quick else AuditPlan()  # what a flag not given keeps
    plan = replace(base, seed=args.seed, max_patients=args.patients or base.max_patients,
                   slices_per_case=args.slices_per_case or base.slices_per_case,
                   segmenter=replace(base.segmenter, steps=args.segmenter_steps or base.segmenter.steps))
    report = run_audit(args.model, args.data, args.out, synthetic=args.synthetic, members=args.members,
                       holdout=args.holdout, quick=args.quick, redact=args.redact,
                       device=str(resolve_device(args.device, World())), plan=plan,
                       inception_weights=args.inception_weights, progress=progress)
    progress.done(report=f"{args.out}/report.html",
                  verdict={m["name"]: {r["axis"]: r["number"] for r in m["verdict"]} for m in report["models"]})
    if progress.mode == "jsonl":  # stdout carries the protocol; the verdict is in the done event
        return 0
    for model in report["models"]:
        print(f"{model['name']}:")
        for row in model["verdict"]:
            print(f"  {row['axis']:<26} {row['number']:<40} {row['meaning']}")
    print(f"report: {args.out}/report.html")
    return 0
