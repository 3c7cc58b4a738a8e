"""Argument building and the job state machine of the panel's controller (no Qt)."""

import sys

import pytest

from CMRSynthLib.errors import InputError
from CMRSynthLib.gui import controller as c
from CMRSynthLib.gui.controller import JobState, JobStatus


def test_sample_arguments_carry_every_choice_in_the_contract_spelling():
    settings = c.SampleSettings(model="flow", mask="/m/p1_ED_gt.nii.gz", out="/o", vendor="Philips", count=4,
                                seed=7, steps=12, sampler="heun", guidance=1.5, device="cpu")
    assert settings.arguments() == ["--model", "flow", "--mask", "/m/p1_ED_gt.nii.gz", "--out", "/o",
                                    "--count", "4", "--seed", "7", "--vendor", "Philips", "--steps", "12",
                                    "--sampler", "heun", "--guidance", "1.5", "--device", "cpu"]
    minimal = c.SampleSettings(model="flow", mask="m.nii.gz", out="o").arguments()
    assert minimal == ["--model", "flow", "--mask", "m.nii.gz", "--out", "o", "--count", "1", "--seed", "0"]
    # guidance 0 is a weight (the tokens' unconditional prediction), as on the command line
    assert c.SampleSettings(model="flow", mask="m", out="o", guidance=0).arguments()[-2:] == ["--guidance", "0.0"]
    anatomy = c.SampleSettings(model="flow", out="o", new_anatomy=3, group="DCM").arguments()
    assert anatomy[:6] == ["--model", "flow", "--new-anatomy", "3", "--group", "DCM"] and "--mask" not in anatomy


def test_job_command_runs_the_child_module_with_jsonl_progress():
    argv = c.job_command(c.PhantomSettings(out="/tmp/p", patients=2), python="/opt/PythonSlicer")
    assert argv == ["/opt/PythonSlicer", "-m", "CMRSynthLib.gui.child", "phantom", "--progress", "jsonl",
                    "--out", "/tmp/p", "--patients", "2", "--seed", "0"]
    assert c.job_command(c.PhantomSettings(out="p"))[0] == sys.executable


@pytest.mark.parametrize("settings, words", [
    (c.SampleSettings(model="flow", mask="", out="o"), "mask is empty"),
    (c.SampleSettings(model="flow", mask="m", out="o", count=0), "count must be a whole number >= 1, got 0"),
    (c.SampleSettings(model="flow", mask="m", out="o", steps=2.5), "steps must be a whole number"),
    (c.SampleSettings(model="flow", mask="m", out="o", device="tpu"), "device must be one of auto, cpu"),
    (c.SampleSettings(model="flow", mask="m", out="o", new_anatomy=2), "either a mask or new anatomy, not both"),
    (c.SampleSettings(model="flow", mask="m", out="o", guidance=-1.0), "guidance must be a number of at least 0"),
    (c.TrainSettings(data="d", out="o", generator="gan"), "generator must be one of ddpm, ldm, flow, hybrid"),
    (c.TrainSettings(data="d", out="o", dp=True, epsilon=3.0, delta=1.5), "δ must be a number above 0 and below 1"),
    (c.TrainSettings(data="d", out="o", dp=True, delta=1e-5), "target ε must be a number above 0, got None"),
    (c.TrainSettings(data="d", out="o", epsilon=3.0), "apply to DP training only"),
    (c.AuditSettings(model="flow", data="d", out="o", compare=("ddpm", "flow")), "listed twice: flow"),
    (c.BudgetSettings(patients=10, batch_size=4, epochs=2, delta=1e-5), "exactly one"),
    (c.BudgetSettings(patients=10, batch_size=4, epochs=2, delta=1e-5, epsilon=1, noise_multiplier=1), "exactly one"),
    (c.BudgetSettings(patients=0, batch_size=4, epochs=2, delta=1e-5, epsilon=1), "patients must be"),
])
def test_bad_settings_are_refused_with_the_field_named(settings, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        settings.arguments()


def test_train_dp_and_budget_arguments():
    train = c.TrainSettings(data="/d", out="/o", generator="ddpm", preset="small", init="/pub", dp=True,
                            epsilon=8, delta=1e-5, max_grad_norm=1.0, max_steps=50).arguments()
    assert train == ["--data", "/d", "--generator", "ddpm", "--out", "/o", "--preset", "small", "--init", "/pub",
                     "--dp", "--epsilon", "8.0", "--delta", "1e-05", "--max-grad-norm", "1.0", "--max-steps", "50"]
    planned = c.TrainSettings(data="d", out="o", epochs=3, batch_size=4, device="cpu").arguments()
    assert planned[-6:] == ["--epochs", "3", "--batch-size", "4", "--device", "cpu"]
    budget = c.BudgetSettings(patients=100, batch_size=8, epochs=10, delta=1e-5, epsilon=3).arguments()
    assert budget[-3:] == ["--json", "--epsilon", "3.0"] and "--noise-multiplier" not in budget


def test_budget_plan_is_read_from_the_json_line_only():
    line = '{"epsilon": 7.99, "delta": 1e-05, "noise_multiplier": 1.02, "sample_rate": 0.2, "steps": 25}'
    assert c.budget_plan(line)["noise_multiplier"] == 1.02
    assert c.budget_plan('{"event": "progress", "step": 1}') is None
    assert c.budget_plan("ε  7.99") is None
    assert c.AuditSettings(model="m", data="d", out="o", quick=True).arguments()[-1] == "--quick"
    assert c.RestyleSettings(model="flow", image="i", mask="m", vendor="GE", out="x.nii.gz").arguments()[7] == "GE"


ALL_SETTINGS = [
    c.SampleSettings(model="flow", mask="m.nii.gz", out="o", vendor="GE", count=2, steps=3, sampler="euler",
                     guidance=2.0, device="cpu"),
    c.TrainSettings(data="d", out="o", dp=True, epsilon=3.0, delta=1e-5, max_grad_norm=1.0, max_steps=5, epochs=2,
                    batch_size=4, device="cpu"),
    c.SampleSettings(model="flow", out="o", new_anatomy=2, group="HCM"),
    c.RestyleSettings(model="flow", image="i.nii.gz", mask="m.nii.gz", vendor="GE", out="x.nii.gz", steps=4,
                      device="cpu"),
    c.AuditSettings(model="m", data="d", out="o", quick=True, compare=("ddpm", "/models/flow-dp8")),
    c.BudgetSettings(patients=10, batch_size=4, epochs=2, delta=1e-5, noise_multiplier=1.1),
    c.PhantomSettings(out="o", patients=2, seed=3),
]


@pytest.mark.parametrize("settings", ALL_SETTINGS, ids=lambda s: f"{s.command}-{ALL_SETTINGS.index(s)}")
def test_arguments_parse_with_the_real_command_line(settings):
    from CMRSynthLib.cli import COMMANDS, build_parser

    # A missing command or flag is a failure, not a skip: the panel would build a command the CLI refuses.
    assert settings.command in COMMANDS, f"`cmrsynth {settings.command}` is not registered"
    args = build_parser().parse_args(c.job_command(settings)[3:])
    assert args.command == settings.command and args.progress == "jsonl"
    if settings.command == "audit":  # every model reaches `cmrsynth audit`, in order
        assert args.model == [settings.model, *settings.compare]


def test_status_follows_events_and_ends_in_one_terminal_state():
    status = JobStatus()
    assert status.summary() == "ready" and status.fraction is None
    assert status.apply({"event": "progress", "step": 1}) is None  # not running: ignored
    status.start("train")
    with pytest.raises(RuntimeError, match="used once"):
        status.start("train")
    status.apply({"event": "start", "command": "train", "total": 200})
    assert status.apply({"event": "progress", "step": 50, "total": 200, "loss": 0.4, "epsilon": 0.8,
                         "eta": 95}) == "progress"
    assert status.fraction == 0.25
    assert status.summary() == "train · step 50/200 · loss 0.4 · ε 0.8 · 1 min 35 s left"
    assert status.apply({"event": "telemetry"}) is None  # unknown kinds are ignored
    status.apply({"event": "artefact", "path": "/o/model", "kind": "checkpoint"})
    status.apply({"event": "done", "seconds": 12.3, "result": {"steps": 200}})
    status.finish(0)
    assert status.state is JobState.DONE and status.state.finished
    assert status.summary() == "train finished in 12 s, 1 output(s)"
    with pytest.raises(RuntimeError, match="not running"):
        status.finish(1)


def test_cancel_wins_over_the_exit_code_and_failure_keeps_the_best_message():
    cancelled = JobStatus()
    cancelled.start("sample")
    cancelled.finish(143, cancelled=True)
    assert cancelled.state is JobState.CANCELLED and "no outputs" in cancelled.summary()
    failed = JobStatus()
    failed.start("sample")
    failed.finish(1, stderr="Traceback...\n  line\nRuntimeError: out of memory\n\n")
    assert failed.state is JobState.FAILED and failed.error == "RuntimeError: out of memory"
    silent = JobStatus()
    silent.start("sample")
    silent.finish(None)
    assert silent.error == "the job crashed or could not start"


def test_verdict_rows_flatten_the_audit_report():
    report = {"models": [{"name": "m1", "verdict": [{"axis": "privacy", "number": "AUC 0.51", "meaning": "no signal",
                                                      "level": "good"}]}, {"name": "m2", "verdict": []}]}
    assert c.verdict_rows(report) == [{"model": "m1", "axis": "privacy", "number": "AUC 0.51",
                                       "meaning": "no signal", "level": "good"}]
