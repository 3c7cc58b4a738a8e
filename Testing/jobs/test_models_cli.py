"""cmrsynth models: every model on one line (starters first, then a folder of checkpoints), one model's card in
words (data and license, patients, spacing assumption, vendors, field of view, guidance, sampler, privacy and
lineage, training time), JSON for programs, and a one-line error for a bad path."""

import json
import shutil

import pytest

from CMRSynthLib.training.checkpoint import models_dir

STARTERS = sorted(p.name for p in models_dir().iterdir() if (p / "card.json").is_file())


def card_of(folder):
    return json.loads((folder / "card.json").read_text(encoding="utf-8"))


@pytest.fixture
def dp_model(tmp_path):
    """A copy of the tiny starter whose card says it was DP fine-tuned from a DP ancestor."""
    folder = tmp_path / "mine" / "flow-dp"
    shutil.copytree(models_dir() / "phantom-tiny-flow", folder)
    card = card_of(folder)
    card.update(privacy={"epsilon": 7.5, "delta": 1e-3, "unit": "patient", "patients": 8}, members=None,
                lineage=[{"model_id": "ancestor01", "privacy": {"epsilon": 3.0, "delta": 1e-4, "unit": "patient"},
                          "members": None}])
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def test_the_list_has_one_line_per_starter_that_says_what_it_learnt_from(run_cli, tmp_path):
    code, out, err = run_cli("models", "--model-folder", tmp_path)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith("cmr")}
    assert sorted(lines) == STARTERS and out.splitlines()[1].startswith("acdc-ldm ")  # the default first
    for name, line in lines.items():
        card = card_of(models_dir() / name)
        vendors = ", ".join(card["vocabulary"]["vendors"])
        assert card["family"] in line and vendors in line and "no DP" in line
        assert ("phantom" if card["data"]["simulated"] else "ACDC (CC BY-NC-SA 4.0)") in line
    assert "Siemens " in lines["acdc-ldm"] and "Philips" not in lines["acdc-ldm"]  # one real vendor


def test_a_folder_of_checkpoints_is_listed_after_the_starters(run_cli, dp_model):
    code, out, err = run_cli("models", dp_model.parent, "--json")
    assert code == 0, err
    models = json.loads(out)
    assert [m["name"] for m in models][-1] == "flow-dp" and sorted(m["name"] for m in models[:-1]) == STARTERS
    assert models[-1]["epsilon"] == 7.5 and models[-1]["patients"] == 8 and not models[-1]["starter"]


def test_the_real_default_card_in_words(run_cli):
    code, out, err = run_cli("models", "acdc-ldm")
    assert code == 0, err
    card = card_of(models_dir() / "acdc-ldm")
    fields = dict(line.split(":  ", 1) for line in out.splitlines())
    fields = {name.rstrip(":").strip(): value.strip() for name, value in fields.items()}
    assert fields["license"].startswith("CC BY-NC-SA 4.0") and fields["data"] == "ACDC: real patients"
    assert fields["patients"] == f"{len(card['members'])} trained on, {len(card['holdout'])} held out"
    assert fields["spacing"] == card["dataset"]["spacing"] and "assumed 1.5625 mm" in fields["spacing"]
    assert fields["vendors"] == "Siemens (the only vendor style it renders)"
    assert fields["field of view"].startswith("whole field") and "1.5625 mm" in fields["field of view"]
    assert fields["guidance"] == "2 (mask dropout 0.2)" and fields["sampler"] == "ab2, 10 steps"
    assert fields["privacy"] == "no DP" and "coarse flow stage at 6.25 mm" in fields["generator"]
    assert [a["model_id"] for a in card["lineage"]] == [part.split(": ")[0]
                                                        for part in fields["fine-tuned from"].split("; ")]
    assert fields["training"].startswith("4 runs,") and "CPU-minutes" in fields["training"]


def test_a_dp_model_shows_its_guarantee_and_its_lineage_ledgers(run_cli, dp_model):
    code, out, err = run_cli("models", dp_model)
    assert code == 0, err
    assert "privacy:          DP ε = 7.5, δ = 1.0e-03" in out
    assert "fine-tuned from:  ancestor01: DP ε = 3, δ = 1.0e-04" in out
    assert "Canon, GE, Philips, Siemens (simulated vendor styles)" in out


@pytest.mark.parametrize("argument, problem", [("no/such/folder", "no such checkpoint folder"),
                                               ("no-such-model", "no model named 'no-such-model'"),
                                               (".", "neither a checkpoint folder")])
def test_a_bad_name_or_path_is_one_line_and_exit_2(run_cli, argument, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("models", argument)
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1 and out == ""
