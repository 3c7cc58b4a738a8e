"""The starter models shipped in ``Resources/models`` (issue 3 item 8), and how to make them again.

Reproduce them all (about an hour on a 2-core CPU; each run resumes if interrupted)::

    python -m CMRSynthLib.training.starters --out Resources/models          # or: make starters
    python -m CMRSynthLib.training.starters --out Resources/models --only flow tiny-flow

Every starter is trained on the built-in phantom cohort (:data:`PHANTOM`: 40 simulated patients, seed 0,
12×128×128 stacks, all four vendors) with the arguments in :data:`STARTERS`, on the CPU with seed 0, through
the same :class:`~CMRSynthLib.training.loop.Trainer` as ``cmrsynth train``. Runs go to ``--work`` (resumable
checkpoints); the shipped folder keeps only the EMA weights and the card, which records the members, the
held-out patients and the training record. The weights are stored compactly (:data:`STORAGE`): convolution
kernels and linear maps as int8 with a float32 scale per output channel, the other parameters as float16,
buffers such as noise schedules as float32; loading rebuilds float32 weights (see
:mod:`CMRSynthLib.training.checkpoint`). This halves the float16 size (the total is ~17 MB instead of 33 MB)
and moves the flow starter's images by 0.005 on average (images in [-1, 1]) without changing its mask Dice.
``STARTERS.md`` beside them tabulates steps, minutes, final loss and size.

Names: ``ddpm``, ``ldm``, ``flow``, ``hybrid`` (the four image families, small preset, 64×64 slices at
2.5 mm), ``anatomy`` (the stage-1 mask generator for ``--new-anatomy``), and ``tiny-flow`` (tiny preset,
32×32, trained for a minute: for fast tests of the GUI, the audit and the demo, not for quality).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from CMRSynthLib.training import checkpoint as ckpt

PHANTOM = {"patients": 40, "seed": 0, "shape": (12, 128, 128)}
_SMALL = dict(preset="small", image_size=64, spacing=2.5, batch_size=8, lr=4e-4, warmup=50, lr_schedule="cosine",
              ema_decay=0.999, seed=0)
STARTERS: dict[str, dict] = {
    "flow": dict(family="flow", max_steps=1200, **_SMALL),
    "ddpm": dict(family="ddpm", max_steps=1500, **_SMALL),
    "ldm": dict(family="ldm", max_steps=1500, autoencoder_fraction=0.3, **_SMALL),
    "hybrid": dict(family="hybrid", max_steps=1000, **_SMALL),
    "anatomy": dict(family="anatomy", max_steps=1000, **_SMALL),
    "tiny-flow": dict(family="flow", preset="tiny", image_size=32, spacing=5.0, batch_size=8, lr=2e-3, warmup=10,
                      lr_schedule="cosine", ema_decay=0.99, seed=0, max_steps=300),
}
COMMAND = "python -m CMRSynthLib.training.starters --out Resources/models"
STORAGE = torch.int8  # parameters_dtype of the shipped weights (save_checkpoint)
STORAGE_NOTE = "int8 kernels/matrices with a float32 scale per output channel, other parameters float16"


def export_starter(run: Path, out: Path, *, name: str) -> dict:
    """Ship a finished run: EMA weights (stored as :data:`STORAGE`) and its card, no trainer state."""
    contents = ckpt.read_checkpoint(run)
    generator = ckpt.build_from_card(contents.card, path=run)
    ckpt.load_weights(generator, contents.ema or contents.weights, path=run / ckpt.WEIGHTS)
    card = {k: v for k, v in contents.card.items() if k not in ("model_id", "created")}
    card["starter"] = {"name": name, "reproduce": f"{COMMAND} --only {name}", "phantom": {
        **PHANTOM, "shape": list(PHANTOM["shape"])}, "storage": STORAGE_NOTE}
    return ckpt.save_checkpoint(out, generator, card, parameters_dtype=STORAGE)


def train_starter(name: str, *, data: Path, work: Path, out: Path, progress) -> dict:
    from CMRSynthLib.training.config import TrainConfig
    from CMRSynthLib.training.loop import Trainer

    config = TrainConfig(data=str(data), out=str(work / name), device="cpu", save_every=100, **STARTERS[name])
    Trainer(config, progress=progress).run()
    return export_starter(work / name, out / name, name=name)


def summary(out: Path) -> str:
    """``STARTERS.md``: one row per shipped starter, from its card."""
    rows = ["| model | family | preset | image | steps | minutes | final loss | default sampler | MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in STARTERS:
        folder = out / name
        if not (folder / ckpt.CARD).is_file():
            continue
        card = json.loads((folder / ckpt.CARD).read_text(encoding="utf-8"))
        t = card["training"]
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        rows.append(f"| {name} | {card['family']} | {t['arguments']['preset']} | "
                    f"{'×'.join(map(str, card['preprocessing']['size']))} | {t['steps']} | "
                    f"{t['wall_seconds'] / 60:.1f} | {t['final_loss']:.4f} | "
                    f"{card['config']['sampler']} {card['config']['steps']} | {size:.1f} |")
    return ("# Starter models\n\nTrained on the simulated phantom cohort (never real patients) by\n"
            f"`{COMMAND}` (one starter: add `--only NAME`); see `CMRSynthLib/training/starters.py`.\n\n"
            + "\n".join(rows) + f"\n\nWeights: the EMA weights, stored as {STORAGE_NOTE}; loading rebuilds "
            "float32 weights.\n")


def main(argv: list[str] | None = None) -> int:
    from CMRSynthLib.data.phantom import write_phantom_cohort
    from CMRSynthLib.files import atomic_write_text
    from CMRSynthLib.jobs.progress import Progress

    parser = argparse.ArgumentParser(prog="python -m CMRSynthLib.training.starters", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where the starter folders go (Resources/models)")
    parser.add_argument("--only", nargs="+", choices=tuple(STARTERS), default=list(STARTERS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cmrsynth-starters",
                        help="phantom cohort and resumable training runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = write_phantom_cohort(args.work / "phantom", PHANTOM["patients"], seed=PHANTOM["seed"],
                                shape=PHANTOM["shape"])
    for name in args.only:
        train_starter(name, data=data, work=args.work, out=args.out, progress=Progress(args.progress))
    atomic_write_text(args.out / "STARTERS.md", summary(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
