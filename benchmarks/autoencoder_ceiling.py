"""The latent family's ceiling: the audit's measures of an LDM's autoencoder reconstructions of the real slices.

``python -m benchmarks.autoencoder_ceiling --data DIR --model acdc-ldm [--model ...] [--out DIR]``

A latent model draws every image through its decoder, so no latent network can be closer to the real images than
the decoder's reconstructions of them. This benchmark treats those reconstructions as the synthetic set and scores
them as ``cmrsynth audit`` scores a model, on the same slices and with the same judge: the members' and held-out
patients of each model's card (ACDC: ``val.list`` held out, ``test.list`` never read), capped and matched as
with ``--patients``/``--slices-per-case``, the segmenter trained ``--segmenter-steps`` on the real members. Printed
and written to ``DIR/autoencoder_ceiling.md``, one row per model:

- FD-seg of the reconstructions of the members against the real held-out slices (real members against the same:
  the yardstick), as the audit's fidelity;
- discriminability: the audit's classifier two-sample test, ROC AUC with its interval (0.5: indistinguishable);
- mask adherence: the judge's Dice for LV / MYO / RV on the reconstructions against their masks (its Dice on the
  real held-out slices beside it).

If a model's samples score about as its reconstructions, its texture gap is the decoder's, not the latent
network's (the case that led to ``cmrsynth train --stage decoder``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

BATCH = 16
LABELS = ("LV", "MYO", "RV")


def reconstruct(generator, slices):
    """The slices through the model's autoencoder (encoder mean, decoder), as the model decodes its latents."""
    with torch.no_grad():
        images = [generator.decode(generator.encode(torch.from_numpy(slices.images[i:i + BATCH])[:, None], None))
                  for i in range(0, len(slices), BATCH)]
    return slices.with_images(torch.cat(images)[:, 0].numpy())


def measure(name: str, generator, card: dict, cohort, plan, *, cache) -> dict:
    from CMRSynthLib.audit.adherence import mask_adherence, segmenter_ceiling
    from CMRSynthLib.audit.discriminability import classifier_two_sample_test
    from CMRSynthLib.audit.features import segmenter_space
    from CMRSynthLib.audit.fidelity import feature_distances
    from CMRSynthLib.audit.run import audited_slices
    from CMRSynthLib.audit.segmenter import train_segmenter
    from CMRSynthLib.audit.slices import Slices
    from CMRSynthLib.jobs.progress import Progress

    warnings: list[str] = []
    real_m, real_n, _ = audited_slices(name, name, card, cohort, plan, warnings=warnings)
    recon_m, recon_n = reconstruct(generator, real_m), reconstruct(generator, real_n)
    judge = train_segmenter(real_m, plan.segmenter, cache=cache, device="cpu", progress=Progress("none"),
                            label="segmenter on real training patients")
    space = segmenter_space(judge)
    n_boot = plan.n_boot // 5
    test = classifier_two_sample_test(Slices.cat([real_m, real_n]), Slices.cat([recon_m, recon_n]),
                                      plan.discriminator, n_boot=plan.n_boot, seed=plan.seed, device="cpu",
                                      progress=Progress("none"))
    return {"name": name, "members": len(real_m.patient_ids()), "held_out": len(real_n.patient_ids()),
            "fd": feature_distances(space, real_n, recon_m, n_boot=n_boot, seed=plan.seed)["FD-seg"],
            "yardstick": feature_distances(space, real_n, real_m, n_boot=n_boot, seed=plan.seed)["FD-seg"],
            "auc": test["auc"], "adherence": mask_adherence(judge, Slices.cat([recon_m, recon_n]), n_boot=plan.n_boot),
            "real": segmenter_ceiling(judge, real_n, n_boot=plan.n_boot), "warnings": warnings}


def table(rows: list[dict]) -> str:
    def dice(result: dict) -> str:
        return " / ".join(f"{result[label]['dice'].value:.2f}" for label in LABELS)

    lines = ["| model | patients (members / held out) | FD-seg of reconstructions (real vs real) | discriminability AUC "
             "| adherence Dice LV / MYO / RV: reconstructions (real held-out) |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        auc = r["auc"]
        lines.append(f"| {r['name']} | {r['members']} / {r['held_out']} | {r['fd'].value:.1f} ({r['yardstick'].value:.1f}) "
                     f"| {auc.value:.2f} [{auc.low:.2f}, {auc.high:.2f}] | {dice(r['adherence'])} ({dice(r['real'])}) |")
    return "\n".join(lines) + "\n"


def run(data: str, models: list[str], *, patients: int | None, slices_per_case: int | None, segmenter_steps: int | None,
        cache=None) -> str:
    from CMRSynthLib.audit.run import AuditPlan
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.errors import InputError
    from CMRSynthLib.training.checkpoint import load_checkpoint

    base = AuditPlan.quick()
    plan = replace(base, max_patients=patients or base.max_patients,
                   slices_per_case=slices_per_case or base.slices_per_case,
                   segmenter=replace(base.segmenter, steps=segmenter_steps or base.segmenter.steps))
    cohort, rows = open_cohort(data), []
    for model in models:
        generator, card = load_checkpoint(model)
        if card["family"] != "ldm":
            raise InputError(f"{model} is a {card['family']} model; only a latent model (ldm) has an autoencoder")
        rows.append(measure(model, generator.eval(), card, cohort, plan, cache=cache))
    return table(rows)


def main(argv=None) -> None:
    from CMRSynthLib.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the cohort the models were trained on")
    parser.add_argument("--model", action="append", required=True, help="LDM checkpoint folder or starter name")
    parser.add_argument("--out", type=Path, default=None, help="folder for autoencoder_ceiling.md")
    parser.add_argument("--patients", type=int, default=None, help="as cmrsynth audit --patients (default 6)")
    parser.add_argument("--slices-per-case", type=int, default=None, help="as cmrsynth audit (default 3)")
    parser.add_argument("--segmenter-steps", type=int, default=None, help="as cmrsynth audit (default 250)")
    args = parser.parse_args(argv)
    text = run(args.data, args.model, patients=args.patients, slices_per_case=args.slices_per_case,
               segmenter_steps=args.segmenter_steps)
    print(text, end="")
    if args.out is not None:
        atomic_write_text(args.out / "autoencoder_ceiling.md", text)


if __name__ == "__main__":
    main()
