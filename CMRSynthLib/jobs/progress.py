"""The progress protocol (DESIGN §4): how a long job tells a person, or the GUI, what it is doing.

With ``--progress jsonl`` a job writes one JSON object per line to stdout::

    {"event": "start",    "command": "train", "total": 2000, "time": 1763780000.0}
    {"event": "progress", "step": 10, "total": 2000, "loss": 0.41, "epsilon": 0.8, "eta": 95.2, "message": "..."}
    {"event": "artefact", "path": "/abs/path/model", "kind": "checkpoint"}
    {"event": "warning",  "message": "..."}
    {"event": "error",    "message": "a sentence a person can act on", "code": 2}
    {"event": "done",     "seconds": 12.3, "result": {...}}

On a terminal (``--progress bar``, the default) the same calls draw a tqdm bar on stderr and print
warnings and artefacts as lines. ``--progress log`` (the default when stderr is not a terminal: a batch job's log
file, ``nohup``) prints the first and the last step of each stage and at most one progress line per
:data:`LOG_INTERVAL` seconds between them, so that a cluster job's log shows how far it is. ``--progress none``
is silent except for warnings and errors.
Every event carries ``"event"``; readers ignore keys they do not know.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

MODES = ("bar", "log", "jsonl", "none")
LOG_INTERVAL = 60.0  # seconds between two progress lines in "log" mode


class Progress:
    """Reports one job's progress in one of :data:`MODES`. Stages may restart the bar with :meth:`start`."""

    def __init__(self, mode: str = "bar", *, stream: TextIO | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream
        self._bar = None
        self._t0 = time.monotonic()
        self._stage_t0 = self._t0
        self._total: int | None = None
        self._command = ""
        self._logged_at = -math.inf

    # -- protocol events -------------------------------------------------------------------------
    def start(self, command: str, total: int | None = None, **info: Any) -> None:
        """Begin a job, or a new stage of it, with ``total`` steps (None when unknown)."""
        self._close_bar()
        self._total = total
        self._stage_t0 = time.monotonic()
        self._emit({"event": "start", "command": command, "total": total, "time": time.time(), **info})
        self._command, self._logged_at = command, -math.inf
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=command, file=sys.stderr, dynamic_ncols=True, leave=True)

    def update(self, step: int, *, total: int | None = None, loss: float | None = None,
               epsilon: float | None = None, message: str | None = None, **extra: Any) -> None:
        """Report that ``step`` of ``total`` steps are complete."""
        total = total if total is not None else self._total
        elapsed = time.monotonic() - self._stage_t0
        eta = elapsed / step * (total - step) if total and step > 0 else None
        event = {"event": "progress", "step": step, "total": total, "loss": _finite(loss),
                 "epsilon": _finite(epsilon), "eta": _finite(eta), "message": message, **extra}
        self._emit({k: v for k, v in event.items() if v is not None})
        if self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.n = step
            postfix = {}
            if loss is not None:
                postfix["loss"] = f"{loss:.4g}"
            if epsilon is not None:
                postfix["ε"] = f"{epsilon:.3g}"
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            if message:
                self._bar.set_description_str(message, refresh=False)
            self._bar.refresh()
        elif self.mode == "log":
            self._log_update(step, total, loss, epsilon, eta, message)

    def artefact(self, path: str, kind: str) -> None:
        """A finished output file or folder the user (or GUI) can open."""
        self._emit({"event": "artefact", "path": str(path), "kind": kind})
        if self.mode != "jsonl":
            self._line(f"{kind}: {path}", quiet_ok=False)

    def warning(self, message: str) -> None:
        self._emit({"event": "warning", "message": message})
        if self.mode != "jsonl":
            self._line(f"warning: {message}", quiet_ok=True)

    def error(self, message: str, code: int) -> None:
        self._close_bar()
        self._emit({"event": "error", "message": message, "code": code})

    def done(self, **result: Any) -> None:
        self._close_bar()
        seconds = round(time.monotonic() - self._t0, 3)
        self._emit({"event": "done", "seconds": seconds, "result": result})
        if self.mode == "log":
            job = self._command.split(":")[0] or "job"  # stages are named "job: stage"; the time is the job's
            self._line(f"{job}: done in {seconds / 60:.1f} min", quiet_ok=False)

    # -- plumbing --------------------------------------------------------------------------------
    def _log_update(self, step, total, loss, epsilon, eta, message) -> None:
        """One line for ``log`` mode, unless one was printed less than :data:`LOG_INTERVAL` seconds ago
        (the last step always gets one)."""
        now = time.monotonic()
        if now - self._logged_at < LOG_INTERVAL and step != total:
            return
        self._logged_at = now
        parts = [f"{self._command}: step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if epsilon is not None:
            parts.append(f"ε {epsilon:.3g}")
        if eta is not None and step != total:
            parts.append(f"eta {eta / 60:.1f} min")
        if message:
            parts.append(message)
        self._line(", ".join(parts), quiet_ok=False)

    def _emit(self, event: dict) -> None:
        if self.mode == "jsonl":
            out = self.stream or sys.stdout
            out.write(json.dumps(event, default=str) + "\n")
            out.flush()

    def _line(self, text: str, *, quiet_ok: bool) -> None:
        if self.mode == "none" and not quiet_ok:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_events(lines):
    """Parse protocol lines (an iterable of str), skipping anything that is not a JSON event.

    The GUI uses this on a subprocess's stdout, where a library may print stray lines.
    """
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event:
            yield event
