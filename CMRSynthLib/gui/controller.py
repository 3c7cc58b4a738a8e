"""What the panel asks the command line to do, and what a job is doing. No Qt, no widgets.

* Settings dataclasses (one per command of DESIGN §9) turn what a person chose into the argument list of
  a ``cmrsynth`` command. They check values up front and raise :class:`~CMRSynthLib.errors.InputError`
  naming the field, so a mistake is reported before any process starts.
* :class:`JobStatus` is the state machine of one job, idle → running → done / cancelled / failed, fed with
  the progress-protocol events of DESIGN §4 (see :mod:`CMRSynthLib.jobs.progress`).

The standalone panel, the Slicer module's Logic and the tests all build their command lines here.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from CMRSynthLib.errors import InputError

GENERATORS = ("ddpm", "ldm", "flow", "hybrid")
# the invertible families, which `cmrsynth restyle` accepts: flow matching, and the LDM (flow matching in a latent)
RESTYLE_FAMILIES = ("flow", "ldm")
PRESETS = ("tiny", "small", "base")
DEVICES = ("auto", "cpu", "cuda", "mps")
# a guidance box's value one step below 0 means "the model's own" (its card's config.guidance): 0 is a weight
GUIDANCE_MODEL_DEFAULT = -0.5


def chosen_guidance(value: float) -> float | None:
    """A guidance box's value as a sample setting: None (the model's own) for :data:`GUIDANCE_MODEL_DEFAULT`."""
    return None if value < 0 else value
ACCOUNTANTS = ("rdp", "prv")
CHILD_MODULE = "CMRSynthLib.gui.child"


# -- checks shared by the settings -----------------------------------------------------------------
def _text(name: str, value: str) -> str:
    if not str(value).strip():
        raise InputError(f"{name} is empty; choose a value")
    return str(value)


def _integer(name: str, value, minimum: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return str(value)


def _positive(name: str, value, *, below: float = math.inf, zero: bool = False) -> str:
    """``value`` as a command-line number, refused unless above 0 (``zero``: at least 0) and below ``below``."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not (0 <= value if zero else 0 < value) or not value < below:
        limit = f" and below {below:g}" if math.isfinite(below) else ""
        raise InputError(f"{name} must be a number {'of at least' if zero else 'above'} 0{limit}, got {value!r}")
    return repr(float(value))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _optional(flag: str, value: str | None) -> list[str]:
    return [] if value in (None, "") else [flag, value]


def _optional_count(flag: str, name: str, value: int | None) -> list[str]:
    """``[flag, value]`` for a whole number >= 1, nothing for None (the command's default)."""
    return [] if value is None else [flag, _integer(name, value, 1)]


def _device(value: str) -> list[str]:
    """``--device`` unless it is ``auto`` (the command's default)."""
    return [] if _choice("device", value, DEVICES) == "auto" else ["--device", value]


# -- one settings class per command ------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSettings:
    """``cmrsynth sample``: synthetic images for a mask file (or a folder of masks), or for new anatomy.

    ``new_anatomy`` > 0 draws that many new masks with the stage-1 model instead of reading ``mask``.
    """

    command: ClassVar[str] = "sample"
    model: str
    out: str
    mask: str = ""
    vendor: str = ""
    count: int = 1
    seed: int = 0
    steps: int | None = None
    sampler: str = ""
    guidance: float | None = None
    device: str = "auto"
    new_anatomy: int = 0
    group: str = ""
    privacy_filter: bool = False

    def arguments(self) -> list[str]:
        args = ["--model", _text("model", self.model)]
        if _integer("new anatomy", self.new_anatomy, 0) != "0":
            if self.mask:
                raise InputError("choose either a mask or new anatomy, not both")
            args += ["--new-anatomy", str(self.new_anatomy)] + _optional("--group", self.group)
        else:
            args += ["--mask", _text("mask", self.mask)]
        args += ["--out", _text("output folder", self.out), "--count", _integer("count", self.count, 1),
                 "--seed", _integer("seed", self.seed, 0)]
        args += _optional("--vendor", self.vendor) + _optional_count("--steps", "steps", self.steps)
        args += _optional("--sampler", self.sampler)
        if self.guidance is not None:
            args += ["--guidance", _positive("guidance", self.guidance, zero=True)]
        args += ["--privacy-filter"] if self.privacy_filter else []
        return args + _device(self.device)


@dataclass(frozen=True)
class TrainSettings:
    """``cmrsynth train``: a generator from a cohort, optionally fine-tuned and with DP-SGD."""

    command: ClassVar[str] = "train"
    data: str
    out: str
    generator: str = "flow"
    preset: str = "tiny"
    init: str = ""
    dp: bool = False
    epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float | None = None
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    device: str = "auto"

    def arguments(self) -> list[str]:
        args = ["--data", _text("data", self.data), "--generator", _choice("generator", self.generator, GENERATORS),
                "--out", _text("output folder", self.out), "--preset", _choice("preset", self.preset, PRESETS)]
        args += _optional("--init", self.init)
        if self.dp:
            args += ["--dp", "--epsilon", _positive("target ε", self.epsilon),
                     "--delta", _positive("δ", self.delta, below=1.0)]
            if self.max_grad_norm is not None:
                args += ["--max-grad-norm", _positive("clipping norm", self.max_grad_norm)]
        elif self.epsilon is not None or self.delta is not None or self.max_grad_norm is not None:
            raise InputError("ε, δ and the clipping norm apply to DP training only; switch DP on or clear them")
        args += _optional_count("--max-steps", "max steps", self.max_steps)
        args += _optional_count("--epochs", "epochs", self.epochs)
        args += _optional_count("--batch-size", "batch size", self.batch_size)
        return args + _device(self.device)


@dataclass(frozen=True)
class RestyleSettings:
    """``cmrsynth restyle``: a real image re-rendered in another vendor's style (flow models)."""

    command: ClassVar[str] = "restyle"
    model: str
    image: str
    mask: str
    vendor: str
    out: str
    steps: int | None = None
    device: str = "auto"

    def arguments(self) -> list[str]:
        args = ["--model", _text("model", self.model), "--image", _text("image", self.image),
                "--mask", _text("mask", self.mask), "--vendor", _text("vendor", self.vendor),
                "--out", _text("output file", self.out)]
        return args + _optional_count("--steps", "steps", self.steps) + _device(self.device)


@dataclass(frozen=True)
class AuditSettings:
    """``cmrsynth audit``: the receipt (fidelity, utility, privacy) of a model against real data.

    ``compare`` adds more models to the same report, audited on the same patients and compared side by side.
    """

    command: ClassVar[str] = "audit"
    model: str
    data: str
    out: str
    quick: bool = False
    compare: tuple[str, ...] = ()

    def arguments(self) -> list[str]:
        models = [_text("model", self.model), *(_text("model to compare", m) for m in self.compare)]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise InputError(f"each model is audited once; listed twice: {', '.join(twice)}")
        args = [part for model in models for part in ("--model", model)]
        args += ["--data", _text("data", self.data), "--out", _text("output folder", self.out)]
        return args + (["--quick"] if self.quick else [])


@dataclass(frozen=True)
class BudgetSettings:
    """``cmrsynth privacy-budget``: ε for a noise multiplier, or the noise for a target ε, before training.

    The plan comes back as one JSON line on stdout (``--json``); read it with :func:`budget_plan`.
    """

    command: ClassVar[str] = "privacy-budget"
    patients: int
    batch_size: int
    epochs: int
    delta: float
    noise_multiplier: float | None = None
    epsilon: float | None = None
    accountant: str = "rdp"

    def arguments(self) -> list[str]:
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise InputError("give either a noise multiplier or a target ε (exactly one of them)")
        args = ["--patients", _integer("patients", self.patients, 1),
                "--batch-size", _integer("batch size", self.batch_size, 1),
                "--epochs", _integer("epochs", self.epochs, 1),
                "--delta", _positive("δ", self.delta, below=1.0),
                "--accountant", _choice("accountant", self.accountant, ACCOUNTANTS), "--json"]
        if self.noise_multiplier is not None:
            return args + ["--noise-multiplier", _positive("noise multiplier", self.noise_multiplier)]
        return args + ["--epsilon", _positive("target ε", self.epsilon)]


@dataclass(frozen=True)
class PhantomSettings:
    """``cmrsynth phantom``: the built-in simulated cohort, e.g. as training data for a first try."""

    command: ClassVar[str] = "phantom"
    out: str
    patients: int = 8
    seed: int = 0

    def arguments(self) -> list[str]:
        return ["--out", _text("output folder", self.out), "--patients", _integer("patients", self.patients, 1),
                "--seed", _integer("seed", self.seed, 0)]


def budget_plan(line: str) -> dict | None:
    """The privacy-budget plan (epsilon, delta, noise_multiplier, steps, ...) from one output line, or None."""
    try:
        plan = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(plan, dict) and {"epsilon", "noise_multiplier", "steps"} <= set(plan):
        return plan
    return None


def verdict_rows(report: dict) -> list[dict]:
    """The audit's verdict table from ``report.json``: rows of model, axis, number, meaning and level."""
    rows = []
    for model in report.get("models", []):
        for row in model.get("verdict", []):
            rows.append({"model": model.get("name", ""), "axis": row.get("axis", ""), "number": row.get("number", ""),
                         "meaning": row.get("meaning", ""), "level": row.get("level", "")})
    return rows


Settings = SampleSettings | TrainSettings | RestyleSettings | AuditSettings | BudgetSettings | PhantomSettings


def job_command(settings: Settings, *, python: str | None = None) -> list[str]:
    """The full command line of a GUI job: ``python -m CMRSynthLib.gui.child <command> --progress jsonl ...``.

    ``python`` is the interpreter to run (default: this one; in Slicer, ``PythonSlicer``).
    """
    return [python or sys.executable, "-m", CHILD_MODULE, settings.command, "--progress", "jsonl",
            *settings.arguments()]


# -- the state of one job ------------------------------------------------------------------------------
class JobState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


@dataclass
class JobStatus:
    """What one job is doing. Single use: idle → running → done, cancelled or failed.

    :meth:`apply` takes protocol events while running; :meth:`finish` takes the exit of the process.
    """

    command: str = ""
    state: JobState = JobState.IDLE
    step: int = 0
    total: int | None = None
    loss: float | None = None
    epsilon: float | None = None
    eta: float | None = None
    message: str = ""
    losses: list[float] = field(default_factory=list)
    artefacts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    exit_code: int | None = None
    seconds: float | None = None
    result: dict = field(default_factory=dict)

    def start(self, command: str) -> None:
        if self.state is not JobState.IDLE:
            raise RuntimeError(f"a job status is used once; this one is {self.state.value}")
        self.command, self.state = command, JobState.RUNNING

    def apply(self, event: dict) -> str | None:
        """Update from one protocol event; returns its kind, or None when ignored (unknown or not running)."""
        kind = event.get("event")
        if self.state is not JobState.RUNNING:
            return None
        if kind == "start":
            self.step, self.total, self.eta = 0, event.get("total"), None
            self.message = str(event.get("command") or self.command)
        elif kind == "progress":
            self.step = int(event.get("step", self.step))
            self.total = event.get("total", self.total)
            self.eta = event.get("eta")
            self.message = event.get("message") or self.message
            if event.get("loss") is not None:
                self.loss = float(event["loss"])
                self.losses.append(self.loss)
            if event.get("epsilon") is not None:
                self.epsilon = float(event["epsilon"])
        elif kind == "artefact":
            self.artefacts.append((str(event.get("path", "")), str(event.get("kind", ""))))
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
        elif kind == "error":
            self.error = str(event.get("message", "")) or self.error
        elif kind == "done":
            self.seconds = event.get("seconds")
            self.result = dict(event.get("result") or {})
        else:
            return None
        return kind

    def finish(self, exit_code: int | None, *, cancelled: bool = False, stderr: str = "") -> None:
        """The process ended with ``exit_code`` (None: it crashed or never started)."""
        if self.state is not JobState.RUNNING:
            raise RuntimeError(f"finish() on a job that is {self.state.value}, not running")
        self.exit_code = exit_code
        if cancelled:
            self.state, self.message = JobState.CANCELLED, "cancelled; no outputs of this run were kept"
        elif exit_code == 0:
            self.state, self.message = JobState.DONE, "finished"
        else:
            self.state = JobState.FAILED
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            fallback = ("the job crashed or could not start" if exit_code is None
                        else f"the job stopped with exit code {exit_code}")
            self.error = self.error or (last[-1].strip() if last else fallback)

    @property
    def fraction(self) -> float | None:
        """Share of the current stage done, in [0, 1]; None while the total is unknown."""
        if self.state is JobState.DONE:
            return 1.0
        if not self.total:
            return None
        return min(max(self.step / self.total, 0.0), 1.0)

    def summary(self) -> str:
        """One line for a status label."""
        if self.state is JobState.IDLE:
            return "ready"
        if self.state is JobState.FAILED:
            return f"{self.command} failed: {self.error}"
        if self.state is JobState.CANCELLED:
            return f"{self.command} {self.message}"
        if self.state is JobState.DONE:
            took = f" in {_duration(self.seconds)}" if self.seconds is not None else ""
            outputs = f", {len(self.artefacts)} output(s)" if self.artefacts else ""
            return f"{self.command} finished{took}{outputs}"
        parts = [self.message or self.command]
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.epsilon is not None:
            parts.append(f"ε {self.epsilon:.3g}")
        if self.eta is not None:
            parts.append(f"{_duration(self.eta)} left")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"
