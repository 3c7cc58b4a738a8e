"""Real hearts, looked at: whole-field-of-view synthetic volumes from held-out masks beside the real images.

``python -m benchmarks.real_hearts --data ACDC_H5_DIR --model acdc-ldm [--model ...] --out DIR``

For every held-out patient of the first model's card (ACDC: the ``val.list`` patients; the ``test.list``
patients are never read) and both phases, each model generates the whole volume from the real mask on the real
image's grid (``synthesize``, seed 0, the model's only vendor). Printed and written to ``DIR/real_hearts.md``:

- near-black share: the fraction of voxels darker than 5% of the volume's 1–99 percentile range, real vs
  synthetic (a cartoon heart in a black frame scores far above the real images);
- intensity outside the heart: mean and standard deviation of the normalised intensity away from the mask,
  real vs synthetic (chest wall, lungs, liver: is there anatomy, and how much contrast);
- slice-to-slice agreement of the body: Dice of the not-near-black regions of neighbouring slices, averaged
  over the stack, real vs synthetic (a 2D model draws each slice on its own; real bodies change smoothly);
- seconds per 10-slice stack (wall and CPU) and the stack's field of view;
- peak resident memory while the model generates (:class:`benchmarks.common.PeakRSS`: the model and torch
  included, the other models' peaks reset).

``DIR/real_vs_synthetic.png``: three patients (rows) at base, mid and apex (columns), real and synthetic side
by side, with the mask's contours (red LV, green MYO, blue RV). Real data stay outside the repository: the
figure shows held-out patients, so it is as shareable as the data's license allows (ACDC: CC BY-NC-SA 4.0).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import PeakRSS  # noqa: E402

NEAR_BLACK = 0.05  # of the volume's 1–99 percentile range
FIGURE_PATIENTS = 3


def unit_range(array: np.ndarray) -> np.ndarray:
    """A volume scaled so that its 1st and 99th percentiles are 0 and 1 (robust to a few bright voxels)."""
    lo, hi = np.percentile(array, (1, 99))
    return (array - lo) / max(hi - lo, 1e-6)


def volume_stats(image: np.ndarray, mask: np.ndarray) -> dict:
    scaled = unit_range(image)
    outside = scaled[mask == 0]
    body = scaled >= NEAR_BLACK
    neighbours = [2 * (a & b).sum() / max(a.sum() + b.sum(), 1) for a, b in zip(body[:-1], body[1:])]
    return {"near_black": float((scaled < NEAR_BLACK).mean()), "outside_mean": float(outside.mean()),
            "outside_std": float(outside.std()), "neighbours": float(np.mean(neighbours)) if neighbours else 1.0}


def held_out_cases(data: str, card: dict):
    from CMRSynthLib.data.cohorts import load_case, open_cohort

    holdout = set(card.get("holdout") or [])
    if not holdout:
        raise SystemExit("the model's card names no held-out patients")
    cohort = open_cohort(data)
    return [load_case(r) for r in cohort.records if r.patient in holdout and r.label_path]


def generate(generator, card, case, *, seed: int = 0):
    from CMRSynthLib.synthesis import synthesize

    vendors = card["vocabulary"]["vendors"]
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    volume = synthesize(generator, card, case.label, vendor=vendors[0] if len(vendors) == 1 else None,
                        seed=seed)[0]
    return volume, time.perf_counter() - start_wall, time.process_time() - start_cpu


def base_mid_apex(mask: np.ndarray) -> list[int]:
    heart = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    return [int(heart[0]), int(heart[len(heart) // 2]), int(heart[-1])]


def figure(rows: list[tuple], path: Path, model: str) -> None:
    from CMRSynthLib.audit.figures import _blank, _contours, _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 6, figsize=(13, 2.3 * len(rows)), squeeze=False)
    for row, (case, synthetic) in enumerate(rows):
        real, labels = case.image.array, case.label.array
        for col, (level, k) in enumerate(zip(("base", "mid", "apex"), base_mid_apex(labels))):
            for side, array in enumerate((real, synthetic.array)):
                ax = axes[row, 2 * col + side]
                _blank(ax)
                ax.imshow(unit_range(array)[k], cmap="gray", vmin=0, vmax=1)
                _contours(ax, labels[k], linewidth=0.6)
                if row == 0:
                    ax.set_title(f"{level}: {'real' if side == 0 else 'synthetic'}", fontsize=9)
        axes[row, 0].set_ylabel(f"{case.patient} {case.phase}", fontsize=9)
    fig.suptitle(f"Held-out ACDC patients (val.list): real and {model} from the real mask, whole field of view "
                 "(red LV, green MYO, blue RV)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def run(data: str, models: list[str], out: Path) -> str:
    from CMRSynthLib.training.checkpoint import load_checkpoint

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| model | cases | near-black real | near-black synthetic | outside-heart mean / sd real | "
             "synthetic | neighbour-slice body Dice real / synthetic | s per 10-slice stack (wall / CPU) | "
             "field of view | peak RSS |", "|" + " --- |" * 10]
    cases = None
    for model in models:
        generator, card = load_checkpoint(model)
        cases = cases or held_out_cases(data, card)
        real, synthetic, times, shown, peaks = [], [], [], [], []
        for case in cases:
            with PeakRSS() as peak:
                volume, wall, cpu = generate(generator, card, case)
            peaks.append(peak.bytes)
            real.append(volume_stats(case.image.array, case.label.array))
            synthetic.append(volume_stats(volume.array, case.label.array))
            times.append((wall * 10 / case.image.shape[0], cpu * 10 / case.image.shape[0]))
            if case.phase == "ED" and len(shown) < FIGURE_PATIENTS:
                shown.append((case, volume))
        figure(shown, out / f"real_vs_synthetic_{Path(model).name}.png", Path(model).name)
        mean = lambda rows, key: np.mean([r[key] for r in rows])  # noqa: E731
        fov = cases[0].image.shape[1:][::-1] * cases[0].image.spacing[:2]
        lines.append(f"| {Path(model).name} | {len(cases)} | {mean(real, 'near_black'):.3f} | "
                     f"{mean(synthetic, 'near_black'):.3f} | {mean(real, 'outside_mean'):.2f} / "
                     f"{mean(real, 'outside_std'):.2f} | {mean(synthetic, 'outside_mean'):.2f} / "
                     f"{mean(synthetic, 'outside_std'):.2f} | {mean(real, 'neighbours'):.3f} / "
                     f"{mean(synthetic, 'neighbours'):.3f} | {np.median([t[0] for t in times]):.1f} / "
                     f"{np.median([t[1] for t in times]):.1f} | {fov[0]:.0f}×{fov[1]:.0f} mm | "
                     f"{max(peaks) / 2**20:.0f} MiB |")
    table = "\n".join(lines)
    (out / "real_hearts.md").write_text(table + "\n", encoding="utf-8")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ACDC folder (SSL4MIS HDF5 or the NIfTI layout)")
    parser.add_argument("--model", action="append", required=True, help="checkpoint folder or starter name")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    print(run(args.data, args.model, args.out))


if __name__ == "__main__":
    main()
