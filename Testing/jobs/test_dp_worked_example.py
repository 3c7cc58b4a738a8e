"""The README's worked DP example runs as written: a stand-in for a hospital's cohort, the training split's size
shown before training, the planner fed that size, and a DP fine-tune of a starter whose ε is the planner's."""

import json
import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "A DP fine-tune, step by step"


def readme_example() -> str:
    """The first ```bash block after the README heading that contains HEADING: the README itself is what runs,
    so the example and the test cannot drift apart."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and HEADING in line), None)
    assert start is not None, f"README.md has no heading containing {HEADING!r}"
    opening = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == "```bash"), None)
    assert opening is not None, f"README.md: no ```bash block after the heading {HEADING!r}"
    closing = next((i for i in range(opening + 1, len(lines)) if lines[i].strip() == "```"), None)
    assert closing is not None, "README.md: the example's ```bash block is not closed"
    return "\n".join(lines[opening + 1:closing]) + "\n"


EXAMPLE = readme_example()


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block.strip())
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_the_worked_dp_example_runs_as_written(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = []
    for words in commands(EXAMPLE):
        assert words[0] == "cmrsynth"
        code, out, err = run_cli(*words[1:], "--progress", "none")
        assert code == 0, f"{' '.join(words)}: {err}"
        outputs.append(out)
    _, inspected, planned, _, described = outputs
    train_patients = int(re.search(r"training split \(cmrsynth train\): (\d+) patients to train on", inspected)[1])
    assert f"--patients {train_patients} " in EXAMPLE and f"--batch-size at most {train_patients}" in inspected
    noise = float(re.search(r"noise multiplier σ\s+([\d.e+-]+)", planned)[1])
    planned_epsilon = float(re.search(r"\nε\s+([\d.e+-]+)", planned)[1])
    ledger = json.loads((tmp_path / "models" / "flow-dp" / "card.json").read_text(encoding="utf-8"))["privacy"]
    assert ledger["patients"] == train_patients and ledger["noise_multiplier"] == pytest.approx(noise, rel=1e-5)
    assert ledger["epsilon"] == pytest.approx(planned_epsilon, rel=1e-3) and ledger["epsilon"] <= 10
    assert f"DP ε = {ledger['epsilon']:.3g}" in described and "fine-tuned from:" in described
