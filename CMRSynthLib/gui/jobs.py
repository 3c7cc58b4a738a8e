"""Run a ``cmrsynth`` job in its own process and follow its JSON-lines progress (DESIGN §4).

:class:`JobRunner` starts the job with ``QProcess`` (so it lives in the GUI's event loop, in PySide6 and in
Slicer's PythonQt alike), parses each stdout line with :func:`CMRSynthLib.jobs.progress.read_events`,
updates a :class:`~CMRSynthLib.gui.controller.JobStatus` and calls the listeners registered with :meth:`on`.

Cancel ends the whole process tree. The job runs as ``python -m CMRSynthLib.gui.child``, which makes itself a
process-group leader (POSIX) and reports its pid and group in its first ``start`` event. The process the runner
started may be a launcher that forwards no signal (Slicer's ``PythonSlicer``); so Cancel sends SIGTERM to the
reported group, which reaches the job and its workers at once, and the launcher exits when its child does. The
command line turns SIGTERM into a clean exit in which the atomic writers delete their partial files. A Cancel
that comes before the report is sent when the report arrives. Whatever is still alive after the grace period
gets SIGKILL (group and launcher). A job that reports nothing but leads its own group is signalled as a group.
On Windows Cancel is ``taskkill /F /T`` at once, without a console window: a console job has no window to receive
the close request plain ``taskkill`` sends, so asking politely would only wait out the grace period.

Quitting the application ends every running job's tree. The application's ``aboutToQuit`` is connected once, to
a module function that walks a weak set of runners: PythonQt keeps a strong reference to every callable connected
to a signal (PythonQtSignalTarget holds it in a PythonQtSafeObjectPtr, PythonQt/src/PythonQtSignalReceiver.h), so
a runner connected by itself would live, with its listeners and the job's result, until Slicer quits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from typing import Callable

from CMRSynthLib.gui.controller import JobState, JobStatus
from CMRSynthLib.gui.qt import QtCore, to_bytes
from CMRSynthLib.jobs.progress import read_events

KINDS = ("started", "start", "progress", "artefact", "warning", "error", "done", "log", "finished")
STDERR_LINES = 200
CREATE_NO_WINDOW = 0x08000000  # subprocess.CREATE_NO_WINDOW, which exists only on Windows

_runners: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()
_quit_connected_to = None  # the application whose aboutToQuit calls _application_quits


def _application_quits() -> None:
    """The application quits: end every running job's whole tree (Qt alone would kill only the process it
    started, which may be a launcher)."""
    for runner in list(_runners):
        if runner.running:
            runner.stop()


def _connect_quit_once(app) -> None:
    global _quit_connected_to
    if _quit_connected_to is not app:
        app.aboutToQuit.connect(_application_quits)
        _quit_connected_to = app


class JobRunner:
    """One job at a time over ``QProcess``.

    Listeners: ``runner.on(kind, callback)`` with kind in :data:`KINDS`. ``"started"`` gets
    ``(status, argv)`` as the process is launched; protocol events call ``callback(status, event)``;
    ``"log"`` gets ``(status, line)`` for each non-protocol output line; ``"finished"`` gets
    ``(status, None)`` once the job is done, cancelled or failed.
    """

    def __init__(self, *, grace_seconds: float = 5.0):
        app = QtCore.QCoreApplication.instance()
        if app is None:
            app = self._app = QtCore.QCoreApplication([])  # console use: QProcess needs an application object
        _connect_quit_once(app)
        _runners.add(self)
        self.grace_seconds = grace_seconds
        self.status = JobStatus()
        self._listeners: dict[str, list[Callable]] = {kind: [] for kind in KINDS}
        self._process = None
        self._stdout = b""
        self._stderr: list[str] = []
        self._cancelled = False
        self._kill_timer = None
        self._job_group: int | None = None  # the process group the job reported (see CMRSynthLib.gui.child)
        self._terminated_group: int | None = None  # the group SIGTERM went to (sent once: a second one would
        #                                             interrupt the job's own cleanup)

    # -- public -----------------------------------------------------------------------------------
    def on(self, kind: str, callback: Callable) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._listeners[kind].append(callback)

    @property
    def running(self) -> bool:
        return self.status.state is JobState.RUNNING

    def start(self, argv: list[str], *, environment: dict[str, str] | None = None, cwd: str | None = None,
              name: str | None = None) -> JobStatus:
        """Start ``argv`` (program first). ``environment`` replaces the inherited one when given."""
        if self.running:
            raise RuntimeError("a job is already running; cancel it or wait for it first")
        self.status = JobStatus()
        self.status.start(name or (argv[3] if len(argv) > 3 and argv[1] == "-m" else os.path.basename(argv[0])))
        self._stdout, self._stderr, self._cancelled = b"", [], False
        self._job_group = self._terminated_group = None
        process = QtCore.QProcess()
        if environment is not None:
            env = QtCore.QProcessEnvironment()
            for key, value in environment.items():
                env.insert(key, value)
            process.setProcessEnvironment(env)
        if cwd:
            process.setWorkingDirectory(cwd)
        for signal, slot in self._process_slots(process):
            signal.connect(slot)
        self._process = process
        process.start(argv[0], list(argv[1:]))
        if self.running:  # (a program that cannot start has already finished the job)
            self._emit("started", list(argv))
        return self.status

    def cancel(self) -> None:
        """Ask the job to stop (SIGTERM to its process group); kill it after ``grace_seconds``."""
        if not self.running or self._process is None or self._cancelled:
            return
        self._cancelled = True
        self._signal_tree(hard=False)
        self._kill_timer = QtCore.QTimer()
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)
        self._kill_timer.start(int(self.grace_seconds * 1000))

    def stop(self) -> JobStatus:
        """Cancel the job and return once its process tree is gone (closing a window, Slicer quitting)."""
        self.cancel()
        return self.wait()

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job ends (events keep flowing to listeners); cancel it after ``timeout`` seconds."""
        start = time.monotonic()
        while self.running:
            if self._process is not None:
                self._process.waitForFinished(50)
            QtCore.QCoreApplication.processEvents()
            if timeout is not None and time.monotonic() - start > timeout and not self._cancelled:
                self.cancel()
        return self.status

    # -- process plumbing ---------------------------------------------------------------------------
    def _process_slots(self, process) -> tuple:
        """The (signal, slot) pairs that follow ``process``: connected at start, disconnected at the end, so that
        a finished process keeps no callable of this runner alive (PythonQt would, see the module notes)."""
        return ((process.readyReadStandardOutput, self._read_stdout),
                (process.readyReadStandardError, self._read_stderr),
                (process.finished, self._on_finished), (process.errorOccurred, self._on_error))

    def _emit(self, kind: str, payload) -> None:
        for callback in list(self._listeners[kind]):
            callback(self.status, payload)

    def _read_stdout(self) -> None:
        self._stdout += to_bytes(self._process.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split(b"\n")
        self._handle_lines(lines)

    def _handle_lines(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            events = list(read_events([line]))
            if not events:
                if line.strip():
                    self._emit("log", line)
                continue
            if events[0].get("event") == "start" and self._job_group is None:
                self._adopt_group(events[0])
            kind = self.status.apply(events[0])
            if kind is not None:
                self._emit(kind, events[0])

    def _read_stderr(self) -> None:
        text = to_bytes(self._process.readAllStandardError()).decode("utf-8", errors="replace")
        for line in text.splitlines():
            if line.strip():
                self._stderr = (self._stderr + [line])[-STDERR_LINES:]
                self._emit("log", line)

    def _on_finished(self, *args) -> None:
        if not self.running:
            return
        self._read_stdout()
        self._read_stderr()
        if self._stdout:
            self._handle_lines([self._stdout])
            self._stdout = b""
        crashed = self._process.exitStatus() == QtCore.QProcess.CrashExit
        self._end(None if crashed else int(self._process.exitCode()))

    def _on_error(self, error) -> None:
        if error == QtCore.QProcess.FailedToStart and self.running:
            self._stderr.append(f"could not start {self._process.program()}: {self._process.errorString()}")
            self._end(None)

    def _end(self, exit_code: int | None) -> None:
        if self._kill_timer is not None:
            self._kill_timer.stop()
            self._kill_timer = None
        for signal, slot in self._process_slots(self._process):
            signal.disconnect(slot)
        self.status.finish(exit_code, cancelled=self._cancelled, stderr="\n".join(self._stderr))
        self._emit("finished", None)

    def _kill(self) -> None:
        if self.running:
            self._signal_tree(hard=True)

    def _adopt_group(self, event: dict) -> None:
        """Remember the process group a job reports in its ``start`` event; a pending Cancel is sent to it now."""
        pid, group = event.get("pid"), event.get("pgid")
        if isinstance(group, int) and group == pid and group > 1 and group != _own_group():
            self._job_group = group
            if self._cancelled:
                self._signal_tree(hard=False)

    def _signal_tree(self, *, hard: bool) -> None:
        pid = int(self._process.processId())
        if pid <= 0:
            return
        if sys.platform == "win32":  # /F at once: a console job cannot handle the close request of plain taskkill
            subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False,
                           creationflags=CREATE_NO_WINDOW)
            return
        group = self._job_group or (pid if _leads_group(pid) else None)
        if group is not None and (hard or group != self._terminated_group):
            try:
                os.killpg(group, signal.SIGKILL if hard else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):  # already gone
                pass
            self._terminated_group = group
        if hard:  # a launcher stuck after its job died, or a job that never said where it runs
            self._process.kill()


def _own_group() -> int | None:
    return os.getpgrp() if hasattr(os, "getpgrp") else None


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
