"""``--progress log``: plain lines a batch job's log file can show, throttled, and the default off a terminal."""

from CMRSynthLib.jobs import progress as progress_module
from CMRSynthLib.jobs.progress import Progress
from training_fixtures import phantom  # noqa: F401 - fixture


def test_log_lines_are_throttled_and_the_last_step_always_shows(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    log = Progress("log")
    log.start("train", total=4)
    for step, seconds, loss in zip(range(1, 5), (1.0, 2.0, 70.0, 71.0), (0.9, 0.8, 0.7, 0.6)):
        now[0] = seconds
        log.update(step, loss=loss, epsilon=1.5)
    log.done()
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == ""  # stdout stays free for the jsonl protocol's readers
    # step 1 (the first), step 3 (60 s later), step 4 (the last); step 2 came 1 s after step 1
    assert [line.split(",")[0] for line in lines[:3]] == ["train: step 1/4 (25%)", "train: step 3/4 (75%)",
                                                           "train: step 4/4 (100%)"]
    assert "loss 0.9" in lines[0] and "ε 1.5" in lines[0] and "eta" in lines[0] and "eta" not in lines[2]
    assert lines[3].startswith("train: done in") and len(lines) == 4
    log.start("audit: fidelity")
    log.done()
    assert capsys.readouterr().err.startswith("audit: done in")  # the job's time, not the last stage's


def test_cli_defaults_to_log_lines_off_a_terminal(run_cli, phantom, tmp_path):  # noqa: F811
    code, stdout, err = run_cli("train", "--data", phantom, "--out", tmp_path / "model", "--generator", "flow",
                                "--preset", "tiny", "--image-size", "32", "--spacing", "5", "--batch-size", "4",
                                "--device", "cpu", "--max-steps", "3")
    assert code == 0, err
    assert stdout == ""
    assert "train: step 3/3 (100%)" in err and "checkpoint: " in err and "train: done in" in err
