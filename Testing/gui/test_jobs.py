"""The job runner with real subprocesses: protocol parsing, failure, and Cancel ending the process tree,
also when the job runs behind a launcher that forwards no signal (Slicer's PythonSlicer)."""

import os
import sys
import textwrap

import pytest

from CMRSynthLib.gui import catalogue
from CMRSynthLib.gui.controller import JobState, SampleSettings, job_command
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


def test_the_gui_child_leads_its_own_process_group_and_reports_it_first(tmp_path):
    runner = JobRunner()
    lines, starts = [], []
    runner.on("log", lambda status, line: lines.append(line))
    runner.on("start", lambda status, event: starts.append(event))
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
    assert starts[0]["pid"] == starts[0]["pgid"] == int(pid)  # reported before the command ran


# -- behind a launcher ---------------------------------------------------------------------------------------
# Slicer's PythonSlicer is CTK's AppLauncher: it starts the real interpreter as its own child, forwards no signal,
# waits for it and exits with its code. The runner only ever holds the launcher's pid.
LAUNCHER = """
    import subprocess, sys
    sys.exit(subprocess.call(sys.argv[1:]))
"""


def launcher(tmp_path) -> list[str]:
    path = tmp_path / "launcher.py"
    path.write_text(textwrap.dedent(LAUNCHER), encoding="utf-8")
    return [sys.executable, str(path)]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(parent_of(int(entry)), []).append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.fixture
def sample_job(tmp_path):
    """A real ``cmrsynth sample`` GUI job (tiny starter, 64 images) and its output folder."""
    import numpy as np

    from CMRSynthLib.data.volume import Volume, write_volume

    models = [m for m in catalogue.list_models(tmp_path / "none") if m.starter and m.family == "flow"]
    if not models:
        pytest.skip("no flow starter model is bundled")
    model = min(models, key=lambda m: (not m.name.startswith("tiny"), m.name))
    labels = np.zeros((2, 32, 32), np.uint8)
    yy, xx = np.mgrid[:32, :32]
    labels[:, np.hypot(yy - 16, xx - 12) < 8] = 2
    labels[:, np.hypot(yy - 16, xx - 12) < 5] = 1
    labels[:, (np.hypot(yy - 16, xx - 22) < 5) & (labels[0] == 0)] = 3
    mask = write_volume(Volume(labels, np.diag([1.5, 1.5, 8.0, 1.0])), tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    settings = SampleSettings(model=model.name, mask=str(mask), out=str(out), count=64, steps=50, device="cpu")
    return job_command(settings), out


def test_cancel_through_a_launcher_ends_the_real_job_and_leaves_no_partial_output(tmp_path, sample_job):
    argv, out = sample_job
    runner = JobRunner(grace_seconds=60.0)  # SIGTERM alone must do it: the kill after grace never comes into play
    reports = []
    runner.on("start", lambda status, event: reports.append(event))
    runner.start(launcher(tmp_path) + argv, environment=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    wait_until(lambda: runner.status.step >= 1, seconds=240)  # the model is loaded and sampling
    launcher_pid = int(runner._process.processId())
    job_pid = reports[0]["pid"]
    assert parent_of(job_pid) == launcher_pid and reports[0]["pgid"] == job_pid  # the job runs behind the launcher
    tree = descendants(launcher_pid) | {launcher_pid}
    assert job_pid in tree
    runner.cancel()
    status = runner.wait()
    assert status.state is JobState.CANCELLED
    # the launcher ended only because its child did: when the runner reports the end, the whole tree is gone
    assert [pid for pid in tree if alive(pid)] == []
    assert not out.exists() or list(out.rglob("*")) == []  # no image, no partial file


def test_a_cancel_before_the_job_reports_reaches_it_when_it_does(tmp_path, sample_job):
    argv, out = sample_job
    runner = JobRunner(grace_seconds=60.0)
    reports = []
    runner.on("start", lambda status, event: reports.append(event))
    runner.start(launcher(tmp_path) + argv, environment=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    runner.cancel()  # at once: the real interpreter has not started yet, let alone reported its group
    status = runner.wait()
    assert status.state is JobState.CANCELLED
    assert reports and not alive(reports[0]["pid"])
    assert not out.exists() or list(out.rglob("*")) == []


STUBBORN = """
    import json, signal, subprocess, sys, time
    from CMRSynthLib.gui.child import lead_process_group
    from CMRSynthLib.jobs.progress import Progress
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a job that does not stop on SIGTERM
    Progress("jsonl").start("stubborn", **lead_process_group())  # reports like CMRSynthLib.gui.child
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"event": "progress", "step": 1, "total": 10, "worker": worker.pid}), flush=True)
    time.sleep(120)
"""


def test_a_job_behind_a_launcher_that_ignores_sigterm_is_killed_with_its_workers(tmp_path):
    runner = JobRunner(grace_seconds=0.5)
    events = []
    runner.on("start", lambda status, event: events.append(event))
    runner.on("progress", lambda status, event: events.append(event))
    runner.start(launcher(tmp_path) + script(tmp_path, STUBBORN),
                 environment=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    wait_until(lambda: runner.status.step >= 1)
    job_pid, worker_pid = events[0]["pid"], events[1]["worker"]
    runner.cancel()
    assert runner.wait().state is JobState.CANCELLED
    wait_until(lambda: not alive(job_pid) and not alive(worker_pid))  # SIGKILL to the group after the grace


def test_stop_cancels_and_returns_once_the_tree_is_gone(tmp_path, sample_job):
    argv, out = sample_job
    runner = JobRunner()
    reports = []
    runner.on("start", lambda status, event: reports.append(event))
    runner.start(launcher(tmp_path) + argv, environment=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    wait_until(lambda: bool(reports))
    assert runner.stop().state is JobState.CANCELLED and not runner.running
    assert not alive(reports[0]["pid"])


QUITTING = """
    import sys
    from CMRSynthLib.gui.jobs import JobRunner
    from CMRSynthLib.gui.qt import QtCore
    app = QtCore.QCoreApplication([])
    runner = JobRunner()
    reported = []
    runner.on("start", lambda status, event: reported.append(event["pid"]) if "pid" in event else None)
    def sampling(status, event):
        if status.step == 1:
            print(reported[0], flush=True)
            app.quit()  # the user closes Slicer while the job runs
    runner.on("progress", sampling)
    runner.start(sys.argv[1:])
    app.exec()
    print(runner.status.state.value, flush=True)
"""


def test_quitting_the_application_ends_the_job_behind_the_launcher(tmp_path, sample_job):
    import subprocess

    argv, out = sample_job
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(QUITTING), encoding="utf-8")
    done = subprocess.run([sys.executable, str(app), *launcher(tmp_path), *argv], capture_output=True, text=True,
                          encoding="utf-8", env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=600)
    job_pid, state = done.stdout.split()
    assert state == "cancelled" and not alive(int(job_pid))  # gone before the application was
    assert not out.exists() or list(out.rglob("*")) == []


# -- a finished job is let go (issue 29, item 1) -------------------------------------------------------------
class StrongSignal:
    """A signal as PythonQt makes it: connected callables are held strongly until disconnected
    (PythonQtSignalTarget keeps a PythonQtSafeObjectPtr to the callable, PythonQt/src/PythonQtSignalReceiver.h).
    PySide6 holds bound methods weakly, so it cannot show the leak by itself."""

    def __init__(self):
        self.callables = []

    def connect(self, callable_):
        self.callables.append(callable_)


class Result:
    pass


def test_runners_connect_to_aboutToQuit_once_and_a_finished_job_is_let_go(tmp_path, monkeypatch):
    import gc
    import types
    import weakref

    from CMRSynthLib.gui import jobs

    app = types.SimpleNamespace(aboutToQuit=StrongSignal())
    core = types.SimpleNamespace(**{name: getattr(QtCore, name) for name in dir(QtCore) if name.startswith("Q")})
    core.QCoreApplication = types.SimpleNamespace(instance=lambda: app, processEvents=QtCore.QCoreApplication.processEvents)
    monkeypatch.setattr(jobs, "QtCore", core)
    refs = []
    for _ in range(3):
        runner = JobRunner()
        result = Result()  # stands for the job's volumes, held by a listener as CMRSynthJob holds them
        runner.on("finished", lambda status, payload, result=result: None)
        runner.start(script(tmp_path, "print('ok')"))
        runner.wait()
        refs.append(weakref.ref(result))
        del runner, result
    assert app.aboutToQuit.callables == [jobs._application_quits]  # connected once, to a function holding no job
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]


def test_quitting_the_application_still_ends_a_running_job(tmp_path):
    from CMRSynthLib.gui import jobs

    runner = JobRunner(grace_seconds=0.5)
    runner.start(script(tmp_path, "import time; time.sleep(60)"))
    jobs._application_quits()  # what aboutToQuit calls
    assert runner.status.state is JobState.CANCELLED


def test_cancel_on_windows_ends_the_tree_at_once_without_a_console_window(monkeypatch):
    """A console job never gets plain taskkill's close request: /F /T at once, CREATE_NO_WINDOW."""
    from CMRSynthLib.gui import jobs

    calls = []
    monkeypatch.setattr(jobs.subprocess, "run", lambda argv, **options: calls.append((argv, options)))
    monkeypatch.setattr(jobs.sys, "platform", "win32")
    runner = JobRunner()
    runner._process = type("Process", (), {"processId": lambda self: 4242})()
    runner._signal_tree(hard=False)
    (argv, options), = calls
    assert argv == ["taskkill", "/PID", "4242", "/T", "/F"] and options["creationflags"] == 0x08000000
