"""The job runner with real subprocesses: protocol parsing, failure, and Cancel ending the process tree."""

import os
import sys
import textwrap

import pytest

from CMRSynthLib.gui.controller import JobState
from CMRSynthLib.gui.jobs import JobRunner
from CMRSynthLib.gui.qt import QtCore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process-group checks are POSIX")


def script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


def wait_until(predicate, seconds=30.0):
    timer = QtCore.QElapsedTimer()
    timer.start()
    while not predicate():
        if timer.elapsed() > seconds * 1000:
            raise AssertionError("condition not reached")
        QtCore.QCoreApplication.processEvents()
        QtCore.QThread.msleep(10)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie is gone for our purpose
    except FileNotFoundError:
        return False


def test_events_reach_listeners_and_status(tmp_path):
    argv = script(tmp_path, """
        import json, sys, time
        def emit(**e): print(json.dumps(e), flush=True)
        emit(event="start", command="fake", total=4)
        print("a stray line from some library", flush=True)
        for i in range(1, 5):
            emit(event="progress", step=i, total=4, loss=1.0 / i, epsilon=0.5 * i)
        sys.stdout.write('{"event": "artefact", "path": "/x/out.nii.gz",'); sys.stdout.flush(); time.sleep(0.2)
        sys.stdout.write(' "kind": "image"}\\n'); sys.stdout.flush()
        emit(event="warning", message="careful")
        emit(event="done", seconds=0.5, result={"images": 1})
    """)
    runner = JobRunner()
    seen = []
    for kind in ("start", "progress", "artefact", "warning", "done", "log", "finished"):
        runner.on(kind, lambda status, payload, kind=kind: seen.append((kind, payload)))
    runner.start(argv, name="fake")
    status = runner.wait()
    assert status.state is JobState.DONE and status.exit_code == 0
    kinds = [k for k, _ in seen]
    assert kinds.count("progress") == 4 and kinds[-1] == "finished"
    assert ("log", "a stray line from some library") in seen
    assert status.artefacts == [("/x/out.nii.gz", "image")]  # a line split across two reads
    assert status.losses == [1.0, 0.5, pytest.approx(1 / 3), 0.25] and status.epsilon == 2.0
    assert status.warnings == ["careful"] and status.result == {"images": 1}
    assert status.fraction == 1.0 and "finished" in status.summary()


def test_error_event_and_exit_code_make_a_failed_job(tmp_path):
    argv = script(tmp_path, """
        import json, sys
        print(json.dumps({"event": "error", "message": "mask.nii.gz: label values [7] are outside", "code": 2}))
        print("cmrsynth sample: error: mask.nii.gz: label values [7] are outside", file=sys.stderr)
        sys.exit(2)
    """)
    runner = JobRunner()
    runner.start(argv)
    status = runner.wait()
    assert status.state is JobState.FAILED and status.exit_code == 2
    assert status.error == "mask.nii.gz: label values [7] are outside"
    assert "failed: mask.nii.gz" in status.summary()


def test_a_crash_without_protocol_reports_the_last_stderr_line(tmp_path):
    argv = script(tmp_path, "raise SystemExit('something broke: disk full')\n")
    runner = JobRunner()
    runner.start(argv)
    status = runner.wait()
    assert status.state is JobState.FAILED and status.error == "something broke: disk full"


def test_a_second_job_while_one_runs_is_refused(tmp_path):
    argv = script(tmp_path, "import time; time.sleep(30)\n")
    runner = JobRunner(grace_seconds=0.2)
    runner.start(argv)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(argv)
    runner.cancel()
    assert runner.wait().state is JobState.CANCELLED


CANCELLABLE = """
    import json, os, signal, subprocess, sys, time
    os.setpgid(0, 0)  # what CMRSynthLib.gui.child does
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # what CMRSynthLib.cli does
    from CMRSynthLib.files import atomic_path
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"event": "start", "command": "fake", "total": 1000, "worker": worker.pid}), flush=True)
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half of a result")
        for i in range(1000):
            print(json.dumps({"event": "progress", "step": i + 1, "total": 1000}), flush=True)
            time.sleep(0.05)
"""


@pytest.mark.parametrize("ignore_term", [False, True], ids=["terminate", "kill-after-grace"])
def test_cancel_ends_the_process_tree_and_leaves_no_partial_output(tmp_path, ignore_term):
    body = CANCELLABLE
    if ignore_term:
        body = body.replace("lambda *a: sys.exit(143)", "signal.SIG_IGN")
    out = tmp_path / "out" / "result.txt"
    argv = script(tmp_path, body) + [str(out)]
    runner = JobRunner(grace_seconds=0.5)
    workers = []
    runner.on("start", lambda status, event: workers.append(event["worker"]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    runner.start(argv, environment=env, name="fake")
    wait_until(lambda: runner.status.step >= 3)
    job_pid = int(runner._process.processId())
    assert alive(job_pid) and alive(workers[0])
    runner.cancel()
    status = runner.wait()
    assert status.state is JobState.CANCELLED and "no outputs" in status.summary()
    wait_until(lambda: not alive(job_pid) and not alive(workers[0]))
    assert not out.exists()  # the result never appears half-written
    if not ignore_term:  # a job that obeys SIGTERM also removes its temporary file (SIGKILL cannot)
        assert list(out.parent.glob("*")) == []


def test_the_gui_child_entry_point_leads_its_own_process_group(tmp_path):
    runner = JobRunner()
    lines = []
    runner.on("log", lambda status, line: lines.append(line))
    # run the child module the way the runner does, then ask it who leads its group
    runner.start([sys.executable, "-c",
                  "import os, runpy, sys\n"
                  "sys.argv = ['child', '--version']\n"
                  "import atexit; atexit.register(lambda: print(os.getpid(), os.getpgid(0), flush=True))\n"
                  "runpy.run_module('CMRSynthLib.gui.child', run_name='__main__')\n"],
                 environment=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    status = runner.wait()
    assert status.state is JobState.DONE, status.error
    pid, group = next(line.split() for line in lines if line.split()[0].isdigit())
    assert pid == group
