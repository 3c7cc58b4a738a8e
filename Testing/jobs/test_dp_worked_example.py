"""The README's worked DP example runs as written: a stand-in for a hospital's cohort, the training split's size
shown before training, the planner fed that size, and a DP fine-tune of a starter whose ε is the planner's."""

import json
import re
import shlex

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

# The README block, word for word (README.md, "A DP fine-tune, step by step").
EXAMPLE = r"""
cmrsynth phantom --out private --patients 12 --seed 7     # stands in for a hospital's cohort (other patients than the starters')
cmrsynth inspect private                                  # ... training split (cmrsynth train): 8 patients to train on, ...
cmrsynth privacy-budget --patients 8 --batch-size 4 --epochs 5 --epsilon 10 --delta 1e-3
cmrsynth train --data private --init phantom-tiny-flow --out models/flow-dp \
         --dp --epsilon 10 --delta 1e-3 --max-grad-norm 1.0 --batch-size 4 --epochs 5
cmrsynth models models/flow-dp                            # its card: the ε spent, the model it was fine-tuned from
"""


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
