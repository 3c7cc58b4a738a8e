"""``python -m benchmarks.privacy_filter --data DIR`` runs the filter's proof on a cohort given by path (ACDC in
practice; the phantom here, as the real data stay outside the repository): three models, their rows, and the
trained models kept in ``--work`` for a rerun."""

import os
import re
import subprocess
import sys
from pathlib import Path

from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]


def test_real_cohort_run_writes_a_row_per_model_and_keeps_them(phantom, tiny_flow, tmp_path):  # noqa: F811
    run = subprocess.run([sys.executable, "-m", "benchmarks.privacy_filter", "--data", str(phantom), "--work",
                          str(tmp_path / "work"), "--threads", "1", "--smoke", "--model", str(tiny_flow)], cwd=ROOT, capture_output=True,
                         text=True, encoding="utf-8", timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["overfit", "normal", "DP ε = 10", tiny_flow.name]
    assert " → " in rows[-1].split("|")[7]  # a given model's sampling time, plain and filtered
    for row in rows:
        assert re.fullmatch(r"\d+\.\d% of \d+", row.split("|")[2].strip()), row  # re-identified before
    assert sorted(p.name for p in (tmp_path / "work").iterdir() if p.is_dir()) == ["dp", "normal", "overfit"]
