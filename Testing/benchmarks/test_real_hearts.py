"""``python -m benchmarks.real_hearts`` runs end to end: on a phantom cohort and a tiny model (the ACDC data it
is meant for stay outside the repository), it writes the table with every column and the base/mid/apex figure,
only for the held-out patients of the model's card."""

import json
import os
import subprocess
import sys
from pathlib import Path

from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]


def test_real_hearts_writes_its_table_and_figure(phantom, tiny_flow, tmp_path):  # noqa: F811
    out = tmp_path / "rh"
    run = subprocess.run([sys.executable, "-m", "benchmarks.real_hearts", "--data", str(phantom), "--model",
                          str(tiny_flow), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         encoding="utf-8", timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    header, _, row = (out / "real_hearts.md").read_text(encoding="utf-8").splitlines()
    assert header.count("|") == row.count("|") == 11 and "peak RSS" in header
    held_out = json.loads((Path(tiny_flow) / "card.json").read_text(encoding="utf-8"))["holdout"]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == Path(tiny_flow).name and int(cells[1]) == 2 * len(held_out)  # ED and ES of each
    assert all(0 <= float(cells[k]) <= 1 for k in (2, 3))  # near-black shares
    assert all(0 <= float(v) <= 1 for v in cells[6].split(" / "))  # neighbour-slice agreement
    assert (out / f"real_vs_synthetic_{Path(tiny_flow).name}.png").stat().st_size > 10_000
