"""cmrsynth train: the progress protocol, a finished run, resuming, and bad input."""

import json
import re

import pytest

from CMRSynthLib.jobs.progress import read_events
from CMRSynthLib.training.checkpoint import load_checkpoint
from training_fixtures import phantom  # noqa: F401 - fixture

TINY = ("--generator", "flow", "--preset", "tiny", "--image-size", "32", "--spacing", "5", "--batch-size", "4",
        "--device", "cpu")


def test_train_reports_progress_and_writes_a_loadable_checkpoint(run_cli, phantom, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    code, stdout, err = run_cli("train", "--data", phantom, "--out", out, *TINY, "--max-steps", "4",
                                "--save-every", "2", "--progress", "jsonl")
    assert code == 0, err
    events = list(read_events(stdout.splitlines()))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("artefact") == 2
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    assert all(e["loss"] > 0 for e in events if e["event"] == "progress")
    generator, card = load_checkpoint(out)
    assert card["family"] == "flow" and card["training"]["steps"] == 4
    assert card["training"]["command"][:1] and card["training"]["arguments"]["max_steps"] == 4

    code, stdout, err = run_cli("train", "--data", phantom, "--out", out, *TINY, "--max-steps", "4",
                                "--progress", "jsonl")
    assert code == 0
    warnings = [e["message"] for e in read_events(stdout.splitlines()) if e["event"] == "warning"]
    assert warnings and "already holds a finished run (4 steps)" in warnings[0]

    code, stdout, err = run_cli("train", "--data", phantom, "--out", out, *TINY, "--max-steps", "5")
    assert code == 2 and "other arguments (max_steps: 4 → 5)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (("--batch-size", "0"), "--batch-size must be a positive whole number"),
    (("--train-patients", "99"), "--train-patients must be between 1 and"),
    (("--precision", "fp16"), "--precision fp16 needs --device cuda"),
    (("--lr", "-1"), "--lr must be > 0"),
    (("--init", "missing-model"), "no checkpoint folder or starter model"),
    (("--stage", "decoder"), "--stage chooses what a fine-tune of an LDM trains"),
    (("--adversarial-weight", "0.1"), "--adversarial-weight applies to --stage decoder only"),
])
def test_bad_input_exits_2_and_writes_nothing(run_cli, phantom, tmp_path, extra, message):  # noqa: F811
    code, stdout, err = run_cli("train", "--data", phantom, "--out", tmp_path / "model", *TINY, "--max-steps", "1",
                                *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "model").exists()


def test_missing_cohort_exits_2(run_cli, tmp_path):
    code, stdout, err = run_cli("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "model", *TINY)
    assert code == 2 and "nowhere: not found" in err
    assert not (tmp_path / "model").exists()


def test_card_of_a_jsonl_run_is_plain_json(run_cli, phantom, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    assert run_cli("train", "--data", phantom, "--out", out, *TINY, "--max-steps", "1", "--train-patients", "1")[0] == 0
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert len(card["members"]) == 1 and card["privacy"] is None


def test_a_fine_tune_keeps_its_init_models_field_of_view_and_refuses_another(run_cli, phantom, tmp_path):  # noqa: F811
    whole = tmp_path / "whole"
    assert run_cli("train", "--data", phantom, "--out", whole, *TINY, "--max-steps", "1",
                   "--field-of-view", "whole")[0] == 0
    tuned = ("train", "--data", phantom, "--generator", "flow", "--batch-size", "4", "--device", "cpu",
             "--max-steps", "1", "--init", whole)
    code, _, err = run_cli(*tuned, "--out", tmp_path / "heart", "--field-of-view", "heart")
    assert code == 2 and "--init is a whole field-of-view model" in err and str(whole) in err
    assert not (tmp_path / "heart").exists()
    assert run_cli(*tuned, "--out", tmp_path / "tuned")[0] == 0
    card = json.loads((tmp_path / "tuned" / "card.json").read_text(encoding="utf-8"))
    # the card records what was asked (nothing: the init's) and what was built (whole), never a default it ignored
    assert card["preprocessing"]["field_of_view"] == "whole" and card["training"]["arguments"]["field_of_view"] is None
    # a fine-tune recorded when --field-of-view defaulted to "heart" (and was ignored) is still the same run
    state_file = tmp_path / "tuned" / "trainer_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    state["arguments"]["field_of_view"] = "heart"
    state_file.write_text(json.dumps(state), encoding="utf-8")
    code, _, err = run_cli(*tuned, "--out", tmp_path / "tuned")
    assert code == 0 and "already holds a finished run" in err


def test_the_generator_is_implied_by_init_and_a_mismatch_is_refused(run_cli, phantom, tmp_path):  # noqa: F811
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "a", "--init", "phantom-tiny-flow",
                           "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "--progress", "none")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "card.json").read_text(encoding="utf-8"))["family"] == "flow"
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "b", "--init", "phantom-tiny-flow",
                           "--generator", "ddpm", "--max-steps", "1", "--progress", "none")
    assert code == 2 and "--generator ddpm: --init phantom-tiny-flow is a flow model" in err
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "c", "--progress", "none")
    assert code == 2 and "--generator is required without --init" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_dp_batch_larger_than_the_training_split_names_its_size(run_cli, phantom, tmp_path):  # noqa: F811
    code, stdout, _ = run_cli("inspect", phantom, "--json", "--progress", "none")
    patients = json.loads(stdout)["training_split"]["train"]
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", "--generator", "flow",
                           "--dp", "--delta", "1e-2", "--max-grad-norm", "1", "--epsilon", "10", "--progress", "none")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
    assert f"--batch-size 16: with --dp it is the expected number of patients per step, at most the {patients} " \
           "patients the run trains on" in err and f"cmrsynth inspect {phantom}" in err


def test_the_help_says_what_dp_requires(capsys):
    from CMRSynthLib.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--delta", "--max-grad-norm"):
        assert re.search(re.escape(flag) + r" \w+ [^-]*required with --dp", text), flag
    assert "needs --delta, --max-grad-norm and --epsilon or --noise-multiplier" in text
    assert "default with --init: the --init model's family" in text
