"""The benchmark suite still runs: ``python -m benchmarks --smoke`` produces every section's table.

Only that is asserted (timings are not tested). It runs as a subprocess from the repository root because
Opacus installs an unrelated top-level ``benchmarks`` package into site-packages.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TITLES = ("### Headline:", "### Targets (issue 7)", "### Quality: mask adherence", "### Sampling:", "### Training:",
          "### DP-SGD vs non-DP training", "### 3D:", "### Scaling with image size", "### Scaling with steps",
          "### Optimisations from the outside", "### Solvers:", "### Memory:", "### Privacy filter:")


def test_smoke_run_writes_every_table(tmp_path):
    out = tmp_path / "results.md"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--threads", "1", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    for title in TITLES:
        assert title in text, f"{title!r} missing from the results file"
        assert title in run.stdout, f"{title!r} not printed"
    assert text.startswith("# CMRSynth benchmarks — smoke run")
    # every table has a header separator and at least one data row
    for block in text.split("### ")[1:]:
        lines = [line for line in block.splitlines() if line.startswith("|")]
        assert len(lines) >= 3, f"table without rows: {block.splitlines()[0]}"


def test_unknown_section_is_refused():
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "sampling,warp", "--out", "-"],
                         cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert run.returncode == 2
    assert "warp" in run.stderr and "sampling" in run.stderr


def test_a_quick_run_leaves_the_studies_out_unless_asked():
    code = ("from benchmarks.__main__ import parse, STUDIES\n"
            "assert not set(parse(['--quick']).only) & set(STUDIES)\n"
            "assert set(STUDIES) <= set(parse([]).only) and set(STUDIES) <= set(parse(['--smoke']).only)\n"
            "assert parse(['--quick', '--only', 'solvers']).only == ['solvers']\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
