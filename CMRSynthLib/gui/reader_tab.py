"""The Reader study tab: a blinded visual Turing test, one slice at a time (logic in :mod:`.reader_study`).

Standalone, slices show in the tab; in Slicer, ``show_slice(image, item_id)`` puts them in the slice view.
Every answer is saved at once (atomically) to the results CSV, which several readers can share: the same
folders, number per class and seed give the same items, each reader in their own order. The metrics
(accuracy, sensitivity, specificity, Cohen's κ between readers) are rewritten beside it after every answer.
"""

from __future__ import annotations

import math
from pathlib import Path

from CMRSynthLib.errors import InputError
from CMRSynthLib.gui import reader_study as rs
from CMRSynthLib.gui.qt import QtCore, QtWidgets, read
from CMRSynthLib.gui.widgets import PathField, pixmap_from_gray


class ReaderStudyTab(QtWidgets.QWidget):
    SUMMARY = ("reader", "answered", "accuracy", "sensitivity", "specificity", "confidence")

    def __init__(self, *, show_slice=None, parent=None):
        super().__init__(parent)
        self.show_slice = show_slice
        self.items: list[rs.StudyItem] = []
        self.answers: list[rs.Answer] = []
        self.queue: list[rs.StudyItem] = []
        form = QtWidgets.QFormLayout()
        self.real = PathField(folder=True, placeholder="folder of real image volumes")
        self.synthetic = PathField(folder=True, placeholder="folder of synthetic image volumes")
        self.per_class = QtWidgets.QSpinBox()
        self.per_class.setRange(1, 1000)
        self.per_class.setValue(10)
        self.seed = QtWidgets.QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.reader = QtWidgets.QLineEdit()
        self.reader.setPlaceholderText("your name or initials")
        self.results = PathField(folder=False, placeholder="results CSV (shared by all readers)")
        self.results.set_path(str(Path.home() / "CMRSynth-reader-study" / "results.csv"))
        for label, widget in (("Real:", self.real), ("Synthetic:", self.synthetic),
                              ("Slices per class:", self.per_class), ("Study seed:", self.seed),
                              ("Reader:", self.reader), ("Results:", self.results)):
            form.addRow(label, widget)
        self.start_button = QtWidgets.QPushButton("Start reading")
        self.counter = QtWidgets.QLabel("Choose the folders and your name, then start.")
        self.counter.setWordWrap(True)
        self.image = QtWidgets.QLabel("shown in the slice view" if show_slice else "")
        self.image.setAlignment(QtCore.Qt.AlignCenter)
        self.image.setMinimumSize(220, 220 if show_slice is None else 20)
        self.image.setStyleSheet("background: #101316; color: #c7ced6")
        answer_row = QtWidgets.QHBoxLayout()
        self.real_button = QtWidgets.QPushButton("Real")
        self.synthetic_button = QtWidgets.QPushButton("Synthetic")
        self.confidence = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.confidence.setRange(1, 5)
        self.confidence.setValue(3)
        self.confidence_label = QtWidgets.QLabel("confidence 3 (1 guess … 5 certain)")
        for widget in (self.real_button, self.synthetic_button, self.confidence, self.confidence_label):
            answer_row.addWidget(widget)
        self.summary = QtWidgets.QTableWidget(0, len(self.SUMMARY))
        self.summary.setHorizontalHeaderLabels(list(self.SUMMARY))
        self.summary.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.summary.verticalHeader().setVisible(False)
        self.summary.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Stretch)
        self.summary.setMaximumHeight(120)
        self.kappa = QtWidgets.QLabel("")
        self.kappa.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.start_button)
        layout.addWidget(self.counter)
        layout.addWidget(self.image, 1)
        layout.addLayout(answer_row)
        layout.addWidget(self.summary)
        layout.addWidget(self.kappa)
        self.start_button.clicked.connect(self.start)
        self.real_button.clicked.connect(lambda *a: self.answer("real"))
        self.synthetic_button.clicked.connect(lambda *a: self.answer("synthetic"))
        self.confidence.valueChanged.connect(
            lambda value: self.confidence_label.setText(f"confidence {value} (1 guess … 5 certain)"))
        self._enable_answers(False)

    def reader_name(self) -> str:
        return str(read(self.reader, "text")).strip()

    def start(self) -> None:
        try:
            if not self.reader_name():
                raise InputError("reader is empty; type your name or initials")
            items = rs.build_study(rs.image_files(self.real.path()), rs.image_files(self.synthetic.path()),
                                   per_class=read(self.per_class, "value"), seed=read(self.seed, "value"))
            answers = []
            results = Path(self.results.path())
            if results.is_file():
                saved_items, answers = rs.load_results(results)
                known = {item.item: item for item in items}
                if any(known.get(item.item) != item for item in saved_items):
                    raise InputError("holds answers to a different study (other folders, count or seed); "
                                     "choose another results file", path=results)
        except InputError as exc:
            self.counter.setText(str(exc))
            return
        self.items, self.answers = items, answers
        done = {a.item for a in answers if a.reader == self.reader_name()}
        self.queue = [item for item in rs.reader_order(items, self.reader_name(), seed=read(self.seed, "value"))
                      if item.item not in done]
        self._show_summary()
        self._next()

    def answer(self, kind: str) -> None:
        if not self.queue:
            return
        item = self.queue.pop(0)
        confidence = int(read(self.confidence, "value"))
        rs.check_answer(kind, confidence)
        self.answers.append(rs.Answer(self.reader_name(), item.item, kind, confidence))
        rs.save_results(self.results.path(), self.items, self.answers)
        rs.save_summary(rs.summary_path(self.results.path()), rs.summary(self.items, self.answers))
        self._show_summary()
        self._next()

    def _next(self) -> None:
        total = len(self.items)
        if not self.queue:
            self.counter.setText(f"Done: {total} of {total} answered; answers saved to {self.results.path()}, "
                                 f"metrics to {rs.summary_path(self.results.path()).name}")
            self._enable_answers(False)
            if self.show_slice is None:
                self.image.clear()
            return
        item = self.queue[0]
        self.counter.setText(f"{item.item} — {total - len(self.queue) + 1} of {total}: real or synthetic?")
        image = rs.display_image(rs.load_slice(item))
        if self.show_slice is not None:
            self.show_slice(image, item.item)
        else:
            self.image.setPixmap(pixmap_from_gray(image, 256))
        self._enable_answers(True)

    def _enable_answers(self, enabled: bool) -> None:
        for widget in (self.real_button, self.synthetic_button, self.confidence):
            widget.setEnabled(enabled)

    def _show_summary(self) -> None:
        result = rs.summary(self.items, self.answers) if self.answers else {"readers": {}, "kappa": {}}
        self.summary.setRowCount(len(result["readers"]))
        for r, (reader, metrics) in enumerate(result["readers"].items()):
            cells = (reader, metrics["answered"], metrics["accuracy"], metrics["sensitivity"],
                     metrics["specificity"], metrics["mean_confidence"])
            for c, value in enumerate(cells):
                text = f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else \
                    ("–" if isinstance(value, float) else str(value))
                self.summary.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        self.kappa.setText("; ".join(f"Cohen's κ {pair}: {value:.2f}" if math.isfinite(value) else f"κ {pair}: –"
                                     for pair, value in result["kappa"].items()))
