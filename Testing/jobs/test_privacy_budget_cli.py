"""``cmrsynth privacy-budget``: JSON and table output, agreement with the library, one-line errors."""

import json
import re

import pytest

from CMRSynthLib.training.privacy_planner import plan_epsilon

BASE = ["privacy-budget", "--patients", "100", "--batch-size", "10", "--epochs", "5", "--delta", "1e-3"]


def test_json_for_a_given_noise(run_cli):
    code, out, err = run_cli(*BASE, "--noise-multiplier", "1.1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert list(result) == ["epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant", "unit"]
    assert result == plan_epsilon(100, 10, 5, 1.1, 1e-3, "rdp").to_dict()
    assert result["unit"] == "patient" and result["steps"] == 50 and result["sample_rate"] == 0.1


def test_json_for_a_target_epsilon_does_not_overshoot(run_cli):
    code, out, err = run_cli(*BASE, "--epsilon", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert 2.99 <= result["epsilon"] <= 3.0
    assert plan_epsilon(100, 10, 5, result["noise_multiplier"], 1e-3).epsilon == result["epsilon"]


def test_table(run_cli):
    code, out, err = run_cli(*BASE, "--noise-multiplier", "1.1")
    assert code == 0, err
    lines = out.strip().splitlines()
    table = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines)
    assert table["privacy unit"] == "patient" and table["steps"].startswith("50")
    assert float(table["ε"]) == pytest.approx(plan_epsilon(100, 10, 5, 1.1, 1e-3).epsilon, rel=1e-3)


@pytest.mark.parametrize("change, flag", [
    (["--noise-multiplier", "1", "--epsilon", "2"], "exactly one"),
    ([], "exactly one"),
    (["--epsilon", "0"], "--epsilon"),
    (["--epsilon", "-1"], "--epsilon"),
    (["--noise-multiplier", "0"], "--noise-multiplier"),
    (["--epsilon", "1e-4"], "cannot be reached"),
    (["--epsilon", "2", "--patients", "0"], "--patients"),
    (["--epsilon", "2", "--patients", "-5"], "--patients"),
    (["--epsilon", "2", "--batch-size", "0"], "--batch-size"),
    (["--epsilon", "2", "--batch-size", "101"], "--batch-size"),
    (["--epsilon", "2", "--epochs", "0"], "--epochs"),
    (["--epsilon", "2", "--delta", "0"], "--delta"),
    (["--epsilon", "2", "--delta", "0.01"], "--delta"),
    (["--epsilon", "2", "--delta", "-0.1"], "--delta"),
])
def test_bad_input_exits_2_with_one_line(run_cli, change, flag):
    code, out, err = run_cli(*BASE, *change)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and flag in err


def test_an_unbounded_epsilon_is_null_in_json_and_warned(run_cli):
    code, out, err = run_cli("privacy-budget", "--patients", "10", "--batch-size", "10", "--epochs", "100",
                             "--noise-multiplier", "0.1", "--delta", "1e-3", "--accountant", "prv", "--json")
    assert code == 0
    assert json.loads(out)["epsilon"] is None and "no meaningful guarantee" in err
