"""``cmrsynth phantom --out DIR [--patients N] [--seed S] [--shape K H W]``: write the built-in phantom cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

from CMRSynthLib.errors import InputError

HELP = "write the built-in simulated phantom cohort (NIfTI image/label pairs + cohort.csv)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="new (or empty) folder to write; a folder already holding this very cohort is reused")
    parser.add_argument("--patients", default="20", metavar="N",
                        help="number of patients, each with ED and ES (default 20)")
    parser.add_argument("--seed", default="0", metavar="S", help="random seed, >= 0 (default 0)")
    parser.add_argument("--shape", nargs=3, default=["12", "128", "128"], metavar=("K", "H", "W"),
                        help="slices, rows and columns of every stack (default 12 128 128)")


def _integer(flag: str, text: str, *, minimum: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise InputError(f"{flag} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise InputError(f"{flag} must be an integer >= {minimum}, got {value}")
    return value


def run(args, progress) -> int:
    from CMRSynthLib.data.phantom import existing_phantom, phantom_parameters, write_phantom_cohort

    patients = _integer("--patients", args.patients, minimum=1)
    seed = _integer("--seed", args.seed, minimum=0)
    k = _integer("--shape K", args.shape[0], minimum=1)
    h, w = (_integer(f"--shape {name}", v, minimum=16) for name, v in zip("HW", args.shape[1:]))
    out = Path(args.out)
    parameters = phantom_parameters(patients, seed=seed, shape=(k, h, w))
    if existing_phantom(out, parameters):
        progress.warning(f"{out} already holds this phantom cohort ({patients} patients, seed {seed}, "
                         f"shape {k} {h} {w}); reusing it")
    else:
        progress.start("phantom", total=patients)
        write_phantom_cohort(out, patients, seed=seed, shape=(k, h, w),
                             callback=lambda i: progress.update(i + 1, message=f"patient {i + 1}/{patients}"))
    progress.artefact(str(out.resolve()), "cohort")
    progress.done(out=str(out.resolve()), patients=patients, cases=2 * patients, seed=seed, shape=[k, h, w],
                  simulated=True)
    print(out.resolve() / "cohort.csv")
    return 0
