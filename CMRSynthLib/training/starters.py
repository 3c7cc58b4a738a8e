"""The starter models shipped in ``Resources/models`` (issue 3 item 8), and how to make them again.

Reproduce them all (about an hour on a 2-core CPU; each run resumes if interrupted)::

    python -m CMRSynthLib.training.starters --out Resources/models          # or: make starters
    python -m CMRSynthLib.training.starters --out Resources/models --only phantom-flow phantom-tiny-flow

Every starter is trained on the built-in phantom cohort (:data:`PHANTOM`: 40 simulated patients, seed 0,
12×128×128 stacks, all four vendors) with the arguments in :data:`STARTERS`, on the CPU with seed 0, through
the same :class:`~CMRSynthLib.training.loop.Trainer` as ``cmrsynth train``. Runs go to ``--work`` (resumable
checkpoints); the shipped folder keeps only the EMA weights and the card, which records the members, the
held-out patients and the training record. The weights are stored compactly (:data:`STORAGE`): convolution
kernels and linear maps as int8 with a float32 scale per output channel, the other parameters as float16,
buffers such as noise schedules as float32; loading rebuilds float32 weights (see
:mod:`CMRSynthLib.training.checkpoint`). This halves the float16 size (the total is ~17 MB instead of 33 MB)
and moves the phantom-flow starter's images by 0.005 on average (images in [-1, 1]) without changing its mask Dice.
``STARTERS.md`` beside them tabulates steps, minutes, final loss and size.

Names: every phantom starter is called ``phantom-…`` so that nobody mistakes it for a real one (the real ACDC
starters, ``acdc-…``, ship beside them; see :data:`REAL_STARTERS`): ``phantom-ddpm``, ``phantom-ldm``,
``phantom-flow``, ``phantom-hybrid`` (the four image families, small preset, 64×64 slices at 2.5 mm),
``phantom-anatomy`` (the stage-1 mask generator for ``--new-anatomy``), and ``phantom-tiny-flow`` (tiny preset,
32×32, trained for a minute: for fast tests of the GUI, the audit and the demo, not for quality).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training.card import decoder_runs, runs_of

PHANTOM = {"patients": 40, "seed": 0, "shape": (12, 128, 128)}
_SMALL = dict(preset="small", image_size=64, spacing=2.5, batch_size=8, lr=4e-4, warmup=50, lr_schedule="cosine",
              ema_decay=0.999, seed=0)
STARTERS: dict[str, dict] = {
    "phantom-flow": dict(family="flow", max_steps=1200, **_SMALL),
    "phantom-ddpm": dict(family="ddpm", max_steps=1500, **_SMALL),
    "phantom-ldm": dict(family="ldm", max_steps=1500, autoencoder_fraction=0.3, **_SMALL),
    "phantom-hybrid": dict(family="hybrid", max_steps=1000, **_SMALL),
    "phantom-anatomy": dict(family="anatomy", max_steps=1000, **_SMALL),
    "phantom-tiny-flow": dict(family="flow", preset="tiny", image_size=32, spacing=5.0, batch_size=8, lr=2e-3,
                              warmup=10, lr_schedule="cosine", ema_decay=0.99, seed=0, max_steps=300),
}
# Real starters: trained on the ACDC training patients (train.list; val.list held out, test.list never read)
# of the SSL4MIS HDF5 snapshot given with --data. Whole field of view at ACDC's usual 1.5625 mm pixels.
_WHOLE = dict(preset="small", spacing=1.5625, field_of_view="whole", batch_size=8, lr=2e-4, warmup=100,
              lr_schedule="cosine", ema_decay=0.999, seed=0)
REAL_STARTERS: dict[str, dict] = {
    "acdc-ldm": dict(family="ldm", image_size=192, max_steps=3500, autoencoder_fraction=0.4, **_WHOLE),
    "acdc-hybrid": dict(family="hybrid", image_size=96, max_steps=2000, **{**_WHOLE, "lr": 4e-4, "warmup": 50}),
    "acdc-anatomy": dict(family="anatomy", preset="small", image_size=96, spacing=2.0, max_steps=1000, batch_size=8,
                         lr=4e-4, warmup=50, lr_schedule="cosine", ema_decay=0.999, seed=0),
}
# Real starters trained in several runs: each later run fine-tunes the export of the one before (``--init``, its
# shipped int8 weights) on the same patients with these arguments. acdc-ldm's first run's cosine schedule had
# ended with the latent model still improving; going on from it cost less than a longer run from scratch (the
# autoencoder is kept).
CONTINUED: dict[str, list[dict]] = {
    "acdc-ldm": [dict(family="ldm", max_steps=4000, batch_size=8, lr=1e-4, warmup=100, lr_schedule="cosine",
                      ema_decay=0.999, seed=1),
                 # the third run learns to go without its mask (guidance 2 on the mask) and gains the heart
                 # coordinates; on the val.list patients: adherence 0.68 / 0.57 / 0.37 (was 0.49 / 0.35 / 0.27)
                 dict(family="ldm", max_steps=2500, batch_size=8, lr=1e-4, warmup=100, lr_schedule="cosine",
                      ema_decay=0.999, seed=2, mask_dropout=0.2, guidance=2.0, heart_coordinates=True)],
}
# Real starters with a coarse stage (generators/ldm.py): a flow model trained on the same patients at the latent
# grid's pixel size (6.25 mm: 48 px tiles of 300 mm, like the latent model's 192 px), joined to the last run; the
# latent flow starts from its image noised to ``start``.
COARSE: dict[str, dict] = {
    "acdc-ldm": dict(family="flow", preset="small", image_size=48, spacing=6.25, field_of_view="whole",
                     heart_coordinates=True, mask_dropout=0.2, guidance=2.0, max_steps=4000, batch_size=16, lr=4e-4,
                     warmup=100, lr_schedule="cosine", ema_decay=0.999, seed=0),
}
COARSE_START = {"acdc-ldm": 0.85}
# Real starters whose decoder is then sharpened (models/autoencoder.py): a decoder-stage fine-tune of the exported
# cascade against a PatchGAN discriminator; the encoder, the latent network and the coarse stage are kept.
DECODER: dict[str, dict] = {
    "acdc-ldm": dict(family="ldm", stage="decoder", adversarial_weight=0.05, max_steps=3000, batch_size=8, lr=5e-5,
                     warmup=100, lr_schedule="cosine", ema_decay=0.999, seed=4),
}
# The real flow and DDPM starters are the two networks of the real hybrid, trained on the same batches (the
# hybrid's loss is the sum of theirs): one CPU run gives the three pixel-space families.
HYBRID_PARTS = {"acdc-flow": "flow", "acdc-ddpm": "ddpm"}
COMMAND = "python -m CMRSynthLib.training.starters --out Resources/models"
STORAGE = torch.int8  # parameters_dtype of the shipped weights (save_checkpoint)
STORAGE_NOTE = "int8 kernels/matrices with a float32 scale per output channel, other parameters float16"


def export_starter(run: Path, out: Path, *, name: str, data: Path | None = None, previous: dict | None = None,
                   coarse: Path | None = None) -> dict:
    """Ship a finished run: EMA weights (stored as :data:`STORAGE`) and its card, no trainer state. A real
    starter (``data``: its cohort) names the data, its license and the spacing assumption in ``dataset``;
    ``previous``: the exported card of the run a :data:`CONTINUED` run went on from; ``coarse``: the finished
    run of its coarse stage (:data:`COARSE`), joined to it."""
    from CMRSynthLib.training.cascade import join

    contents = ckpt.read_checkpoint(run)
    card = {k: v for k, v in contents.card.items() if k not in ("model_id", "created")}
    if coarse is None:
        generator = ckpt.build_from_card(contents.card, path=run)
        ckpt.load_weights(generator, contents.ema or contents.weights, path=run / ckpt.WEIGHTS)
    else:  # the run's EMA weights too, with the coarse run's
        generator, joined = join(coarse, run, COARSE_START[name])
        record = joined["cascade"]
        card["cascade"] = {**record, "coarse_training": _shippable_training(record["coarse_training"])}
    if data is None:
        card["starter"] = {"name": name, "reproduce": f"{COMMAND} --only {name}", "phantom": {
            **PHANTOM, "shape": list(PHANTOM["shape"])}, "storage": STORAGE_NOTE}
    else:
        card["dataset"] = card.get("dataset") or _source(data)
        card["starter"] = {"name": name, "reproduce": f"{COMMAND} --data ACDC_H5_FOLDER --only {name}",
                           "real": True, "storage": STORAGE_NOTE}
        card["training"] = _shippable_training(card["training"])
        if previous is not None:  # same data as the first run: its dataset record, not one "pretrained on" itself
            earlier = runs_of(previous)
            card["dataset"] = previous["dataset"]
            card["training"]["arguments"]["init"] = f"{name} (its run {len(earlier)})"
            card["starter"]["earlier_runs"] = earlier
    return ckpt.save_checkpoint(out, generator, card, parameters_dtype=STORAGE)


def export_hybrid_part(run: Path, out: Path, *, name: str, data: Path) -> dict:
    """Ship one network of a finished hybrid run as a starter of its own family (:data:`HYBRID_PARTS`)."""
    from CMRSynthLib.generators import build_generator, config_to_dict
    from CMRSynthLib.generators.ddpm import DEFAULT_STEPS as DDPM_STEPS
    from CMRSynthLib.generators.flow import DEFAULT_SAMPLERS, DEFAULT_STEPS as FLOW_STEPS

    family = HYBRID_PARTS[name]
    contents = ckpt.read_checkpoint(run)
    hybrid = ckpt.build_from_card(contents.card, path=run)
    ckpt.load_weights(hybrid, contents.ema or contents.weights, path=run / ckpt.WEIGHTS)
    preset = contents.card["training"]["arguments"]["preset"]
    if family == "flow":
        config = replace(hybrid.config.flow_config(), sampler=DEFAULT_SAMPLERS[preset], steps=FLOW_STEPS[preset])
        part = hybrid.flow_model
    else:
        config = replace(hybrid.config.ddpm_config(), sampler="dpmpp", steps=DDPM_STEPS[preset])
        part = hybrid.ddpm_model
    generator = build_generator(family, config)
    generator.load_state_dict(part.state_dict())
    card = {k: v for k, v in contents.card.items() if k not in ("model_id", "created")}
    card.update(family=family, config=config_to_dict(config), dataset=card.get("dataset") or _source(data))
    card["starter"] = {"name": name, "reproduce": f"{COMMAND} --data ACDC_H5_FOLDER --only {name}", "real": True,
                       "part_of": "acdc-hybrid", "storage": STORAGE_NOTE}
    card["training"] = _shippable_training(card["training"])
    return ckpt.save_checkpoint(out, generator, card, parameters_dtype=STORAGE)


def _source(data: Path) -> dict | None:
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.training.data import describe_source

    return describe_source(open_cohort(data))


def _shippable_training(training: dict) -> dict:
    """The training record without the path of the data on the machine that trained it."""
    return {**training, "arguments": {**training["arguments"], "data": "ACDC_H5_FOLDER"}, "command": None}


def train_starter(name: str, *, data: Path, work: Path, out: Path, progress) -> dict:
    from CMRSynthLib.training.config import TrainConfig
    from CMRSynthLib.training.loop import Trainer

    if name in HYBRID_PARTS:
        train_starter("acdc-hybrid", data=data, work=work, out=out, progress=progress)
        return export_hybrid_part(work / "acdc-hybrid", out / name, name=name, data=data)
    real = name in REAL_STARTERS
    arguments = REAL_STARTERS[name] if real else STARTERS[name]
    config = TrainConfig(data=str(data), out=str(work / name), device="cpu", save_every=100 if not real else 250,
                         **arguments)
    Trainer(config, progress=progress).run()
    run, previous = work / name, None
    for number, arguments in enumerate(CONTINUED.get(name, ()), start=2):
        previous = export_starter(run, work / f"{name}-run{number - 1}", name=name, data=data, previous=previous)
        run = work / f"{name}-run{number}"
        config = TrainConfig(data=str(data), out=str(run), init=str(work / f"{name}-run{number - 1}"),
                             device="cpu", save_every=250, **arguments)
        Trainer(config, progress=progress).run()
    coarse = None
    if name in COARSE:
        coarse = work / f"{name}-coarse"
        Trainer(TrainConfig(data=str(data), out=str(coarse), device="cpu", save_every=250, **COARSE[name]),
                progress=progress).run()
    if name not in DECODER:
        return export_starter(run, out / name, name=name, data=data if real else None, previous=previous,
                              coarse=coarse)
    cascade = export_starter(run, work / f"{name}-cascade", name=name, data=data if real else None,
                             previous=previous, coarse=coarse)
    decoder = work / f"{name}-decoder"
    Trainer(TrainConfig(data=str(data), out=str(decoder), init=str(work / f"{name}-cascade"), device="cpu",
                        save_every=250, **DECODER[name]), progress=progress).run()
    return export_starter(decoder, out / name, name=name, data=data if real else None, previous=cascade)


def _row(name: str, folder: Path) -> str:
    card = json.loads((folder / ckpt.CARD).read_text(encoding="utf-8"))
    t = card["training"]
    runs = runs_of(card) + ([card["cascade"]["coarse_training"]] if card.get("cascade") else [])
    size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    cpu = " + ".join(f"{r['cpu_seconds'] / 60:.1f}" for r in runs) if all(r.get("cpu_seconds") for r in runs) else "–"
    wall = " + ".join(f"{r['wall_seconds'] / 60:.1f}" for r in runs)
    part_of = card.get("starter", {}).get("part_of")
    family = f"{card['family']} (a network of {part_of}: its run and loss)" if part_of else card["family"]
    if card.get("cascade"):
        size_mm = card["cascade"]["coarse_preprocessing"]["spacing"][0]
        family += f" with a coarse flow stage at {size_mm:g} mm (its last run)"
    decoder = decoder_runs(runs)
    if decoder:
        family += f", its decoder sharpened adversarially (run {', '.join(map(str, decoder))})"
    return (f"| {name} | {family} | {runs[0]['arguments']['preset']} | "
            f"{'×'.join(map(str, card['preprocessing']['size']))} | {' + '.join(str(r['steps']) for r in runs)} | "
            f"{wall} | {cpu} | {t['final_loss']:.4f} | {_sampling(card['config'])} | {size:.1f} |")


def _sampling(config: dict) -> str:
    """A card's default sampler and steps, and its guidance weights (the coarse stage's too) unless it has one
    weight and that is 1."""
    weights = [f"{config.get('guidance', 1.0):g}"] + ([f"coarse {config['coarse']['guidance']:g}"]
                                                       if config.get("coarse") else [])
    text = f"{config['sampler']} {config['steps']}"
    return text if weights == ["1"] else f"{text}, guidance {' / '.join(weights)}"


HEADER = ["| model | family | preset | image | steps | minutes (wall) | CPU minutes | final loss | default sampler | MB |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def summary(out: Path) -> str:
    """``STARTERS.md``: one row per shipped starter, from its card; real and phantom starters apart."""
    real = [_row(n, out / n) for n in (*REAL_STARTERS, *HYBRID_PARTS) if (out / n / ckpt.CARD).is_file()]
    phantom = [_row(n, out / n) for n in STARTERS if (out / n / ckpt.CARD).is_file()]
    text = "# Starter models\n\n"
    if real:
        text += ("## Real: trained on ACDC (CC BY-NC-SA 4.0)\n\n"
                 "Trained on the 70 ACDC training patients (`train.list`; the 10 `val.list` patients held out, the 20 "
                 "`test.list` patients never read) of the SSL4MIS HDF5 snapshot. "
                 f"{_spacing_note()}. License CC BY-NC-SA 4.0: research and non-commercial use, share alike; "
                 "cite Bernard et al., IEEE TMI 2018. Reproduce: "
                 f"`{COMMAND} --data ACDC_H5_FOLDER --only NAME`.\n\n" + "\n".join(HEADER + real) + "\n\n")
    text += ("## Phantom: simulated, for tests and `demo --quick`\n\nTrained on the simulated phantom cohort (never "
             f"real patients; hence the `phantom-` names) by `{COMMAND}` (one starter: add `--only NAME`); see "
             "`CMRSynthLib/training/starters.py`.\n\n" + "\n".join(HEADER + phantom))
    return (text + f"\n\nWeights: the EMA weights, stored as {STORAGE_NOTE}; loading rebuilds float32 weights. "
            "CPU minutes: the training process's CPU time (– where the run predates that record). Final loss: "
            "the last run's (a decoder stage's is its L1 + weighted adversarial term plus the discriminator's own "
            "loss, not comparable with a diffusion loss).\n")


def _spacing_note() -> str:
    from CMRSynthLib.data.ssl4mis import spacing_note

    return spacing_note()


def main(argv: list[str] | None = None) -> int:
    from CMRSynthLib.data.phantom import write_phantom_cohort
    from CMRSynthLib.files import atomic_write_text
    from CMRSynthLib.jobs.progress import Progress

    parser = argparse.ArgumentParser(prog="python -m CMRSynthLib.training.starters", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where the starter folders go (Resources/models)")
    parser.add_argument("--only", nargs="+", choices=(*STARTERS, *REAL_STARTERS, *HYBRID_PARTS), default=list(STARTERS))
    parser.add_argument("--data", type=Path, default=None,
                        help="the ACDC folder (SSL4MIS HDF5) for the real starters (acdc-*)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cmrsynth-starters",
                        help="phantom cohort and resumable training runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if any(name in REAL_STARTERS or name in HYBRID_PARTS for name in args.only) and args.data is None:
        parser.error("the real starters (acdc-*) are trained on ACDC: give its folder with --data")
    phantom = None
    for name in args.only:
        if name in REAL_STARTERS or name in HYBRID_PARTS:
            data = args.data
        else:
            phantom = phantom or write_phantom_cohort(args.work / "phantom", PHANTOM["patients"], seed=PHANTOM["seed"],
                                                      shape=PHANTOM["shape"])
            data = phantom
        train_starter(name, data=data, work=args.work, out=args.out, progress=Progress(args.progress))
    atomic_write_text(args.out / "STARTERS.md", summary(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
