"""Small widgets the panel's tabs share: a path field, a job box (progress, status, Cancel, log), a loss plot.

Written for both Qt homes (see :mod:`CMRSynthLib.gui.qt`): setters as methods, getters through ``read``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from CMRSynthLib.gui.catalogue import default_model_folder
from CMRSynthLib.gui.controller import JobState, job_command
from CMRSynthLib.gui.jobs import JobRunner
from CMRSynthLib.gui.qt import QtCore, QtGui, QtWidgets, read


@dataclass
class JobContext:
    """How the panel starts jobs: which Python, which environment, where models live, and what to do first.

    ``prepare(ask)`` runs before every job; in Slicer it checks the Python packages jobs need and, when ``ask``,
    installs the missing ones after the user agrees. It raises RuntimeError (shown in the tab, in words) when they
    are missing and not asked for, declined, or their installation fails.
    """

    python: str = field(default_factory=lambda: sys.executable)
    environment: dict | None = None
    model_folder: Callable[[], str] = field(default_factory=lambda: (lambda: str(default_model_folder())))
    prepare: Callable[[bool], None] | None = None

    def start(self, runner: JobRunner, settings, *, ask: bool = True) -> None:
        """Check ``settings`` and start its command in ``runner`` (raises InputError on bad settings).

        ``ask`` False (a job nobody clicked for, such as the privacy planner) never opens an install prompt.
        """
        argv = job_command(settings, python=self.python)
        if self.prepare is not None:
            self.prepare(ask)
        runner.start(argv, environment=self.environment, name=settings.command)


class PathField(QtWidgets.QWidget):
    """A line edit with a Browse button for a file or a folder."""

    def __init__(self, *, folder: bool, placeholder: str = "", filter: str = "", parent=None):
        super().__init__(parent)
        self.folder, self.filter = folder, filter
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = QtWidgets.QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.button = QtWidgets.QToolButton()
        self.button.setText("…")
        self.button.setToolTip("Browse")
        self.button.clicked.connect(self.browse)
        layout.addWidget(self.edit)
        layout.addWidget(self.button)

    def path(self) -> str:
        return str(read(self.edit, "text")).strip()

    def set_path(self, path: str) -> None:
        self.edit.setText(str(path))

    def browse(self) -> None:
        start = self.path() or os.path.expanduser("~")
        if self.folder:
            chosen = QtWidgets.QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        else:
            chosen = QtWidgets.QFileDialog.getOpenFileName(self, "Choose a file", start, self.filter)
            chosen = chosen[0] if isinstance(chosen, (tuple, list)) else chosen
        if chosen:
            self.set_path(chosen)


class LossPlot(QtWidgets.QWidget):
    """The training loss so far, as a line (log scale when it spans more than a decade)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumHeight(70)

    def set_values(self, values: list[float]) -> None:
        self.values = [v for v in values if np.isfinite(v)]
        self.update()

    def paintEvent(self, event) -> None:
        painter = QtGui.QPainter(self)
        rect = self.rect().adjusted(4, 4, -4, -4)
        painter.fillRect(self.rect(), QtGui.QColor("#f4f6f8"))
        painter.setPen(QtGui.QColor("#8a96a3"))
        painter.drawText(rect, QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft,
                         f"loss {self.values[-1]:.4g}" if self.values else "loss: no steps yet")
        if len(self.values) > 1:
            y = np.asarray(self.values, dtype=float)
            if y.min() > 0 and y.max() / y.min() > 10:
                y = np.log10(y)
            y = (y - y.min()) / (np.ptp(y) or 1.0)
            x = np.linspace(rect.left(), rect.right(), len(y))
            points = [QtCore.QPointF(float(px), float(rect.bottom() - py * (rect.height() - 16))) for px, py in zip(x, y)]
            painter.setPen(QtGui.QPen(QtGui.QColor("#2c6fbb"), 2))
            for a, b in zip(points[:-1], points[1:]):
                painter.drawLine(a, b)
        painter.end()


class JobBox(QtWidgets.QWidget):
    """Progress bar, status line, Cancel button and a collapsible log, following one :class:`JobRunner`."""

    def __init__(self, runner: JobRunner, parent=None):
        super().__init__(parent)
        self.runner = runner
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QtWidgets.QHBoxLayout()
        self.bar = QtWidgets.QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the job; nothing half-written is kept")
        self.cancel_button.clicked.connect(runner.cancel)
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.status = QtWidgets.QLabel("ready")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.log_toggle = QtWidgets.QToolButton()
        self.log_toggle.setText("Show log")
        self.log_toggle.setCheckable(True)
        self.log = QtWidgets.QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setVisible(False)
        self.log_toggle.toggled.connect(self.log.setVisible)
        layout.addWidget(self.log_toggle)
        layout.addWidget(self.log)
        for kind in ("started", "start", "progress", "artefact", "warning", "error", "finished"):
            runner.on(kind, self._update)
        runner.on("log", lambda status, line: self.log.appendPlainText(line))
        runner.on("warning", lambda status, event: self.log.appendPlainText(f"warning: {event.get('message')}"))

    def show_error(self, message: str) -> None:
        """A problem found before any job started (bad settings), shown where job errors appear."""
        self.status.setText(message)
        self.status.setStyleSheet("color: #b00020")

    def _update(self, status, payload) -> None:
        fraction = status.fraction
        if status.state is JobState.RUNNING and fraction is None:
            self.bar.setRange(0, 0)  # busy indicator until the job knows its total
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * (fraction or 0)))
        self.status.setText(status.summary())
        self.status.setStyleSheet("color: #b00020" if status.state is JobState.FAILED else "")
        self.cancel_button.setEnabled(status.state is JobState.RUNNING)


def pixmap_from_gray(image: np.ndarray, size: int) -> "QtGui.QPixmap":
    """A (H, W) uint8 array as a QPixmap scaled to fit ``size`` pixels (standalone panel only)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape
    qimage = QtGui.QImage(image.tobytes(), w, h, w, QtGui.QImage.Format_Grayscale8).copy()
    return QtGui.QPixmap.fromImage(qimage).scaled(size, size, QtCore.Qt.KeepAspectRatio, QtCore.Qt.SmoothTransformation)
