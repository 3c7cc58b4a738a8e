"""The CMRSynth panel: tabs Generate, Train & DP, Audit, Reader study, working on files.

``cmrsynth gui`` shows all four in a plain window. The Slicer module embeds Train & DP, Audit and Reader
study as they are (they work on files there too) and has its own Generate tab with scene-node selectors.
Every long action is a ``cmrsynth`` job run by :class:`~CMRSynthLib.gui.jobs.JobRunner`; the tabs only
collect settings (:mod:`~CMRSynthLib.gui.controller`) and show what the job reports.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from CMRSynthLib.errors import InputError
from CMRSynthLib.gui import catalogue, controller, reader_study
from CMRSynthLib.gui.controller import JobState
from CMRSynthLib.gui.jobs import JobRunner
from CMRSynthLib.gui.qt import QtCore, QtGui, QtWidgets, read
from CMRSynthLib.gui.reader_tab import ReaderStudyTab
from CMRSynthLib.gui.widgets import JobBox, JobContext, LossPlot, PathField, pixmap_from_gray

IMAGE_FILTER = "Images (*.nii.gz *.nii *.nrrd *.mha *.mhd)"
IMAGE_KINDS = ("synthetic", "restyled")  # the artefacts of a Generate or Restyle job that are images
PRIVACY_FILTER_TEXT = "Privacy filter: redraw any image that re-identifies a training patient"
PRIVACY_FILTER_DP_TEXT = PRIVACY_FILTER_TEXT + " (its images would no longer be covered by this DP model's ε alone)"


def _spin(minimum: int, maximum: int, value: int, *, special: str = "") -> "QtWidgets.QSpinBox":
    box = QtWidgets.QSpinBox()
    box.setRange(minimum, maximum)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _double(minimum: float, maximum: float, value: float, *, decimals: int = 2, step: float = 0.1,
            special: str = ""):
    box = QtWidgets.QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _combo(items, current: str = "") -> "QtWidgets.QComboBox":
    box = QtWidgets.QComboBox()
    for item in items:
        box.addItem(item)
    if current:
        box.setCurrentIndex(max(box.findText(current), 0))
    return box


class ModelChooser(QtWidgets.QWidget):
    """Starter models and the model folder's checkpoints in a combo box, a Browse button, and the card."""

    def __init__(self, context: JobContext, parent=None):
        super().__init__(parent)
        self.context = context
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QtWidgets.QHBoxLayout()
        self.combo = QtWidgets.QComboBox()
        self.combo.setToolTip("Bundled starter models and the checkpoint folders in the model folder")
        browse = QtWidgets.QToolButton()
        browse.setText("…")
        browse.setToolTip("Use any CMRSynth checkpoint folder")
        browse.clicked.connect(self.browse)
        row.addWidget(self.combo, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        self.card = QtWidgets.QLabel()
        self.card.setWordWrap(True)
        self.card.setStyleSheet("color: #4a5561")
        layout.addWidget(self.card)
        self.models: list[catalogue.ModelInfo] = []
        self._listeners: list = []
        self.combo.currentIndexChanged.connect(self._show_card)
        self.refresh()

    def on_change(self, callback) -> None:
        """Call ``callback()`` whenever the chosen model may have changed (a choice, or the list read again)."""
        self._listeners.append(callback)

    def refresh(self, select: str = "") -> None:
        current = select or self.argument()
        self.models = catalogue.list_models(self.context.model_folder(), families=controller.GENERATORS)
        self.combo.blockSignals(True)
        self.combo.clear()
        for info in self.models:
            self.combo.addItem(f"{info.name} ({info.family})", info.argument)
        self.combo.blockSignals(False)
        index = self.combo.findData(current) if current else 0
        self.combo.setCurrentIndex(max(index, 0))
        self._show_card()

    def add(self, path: str) -> None:
        info = catalogue.read_model(path)
        if self.combo.findData(info.argument) < 0:
            self.models.append(info)
            self.combo.addItem(f"{info.name} ({info.family})", info.argument)
        self.combo.setCurrentIndex(self.combo.findData(info.argument))

    def browse(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Choose a CMRSynth checkpoint folder")
        if folder:
            try:
                self.add(folder)
            except InputError as exc:
                self.card.setText(str(exc))

    def argument(self) -> str:
        data = self.combo.itemData(read(self.combo, "currentIndex")) if read(self.combo, "count") else None
        return data or ""

    def info(self) -> catalogue.ModelInfo | None:
        return next((m for m in self.models if m.argument == self.argument()), None)

    def _show_card(self, *args) -> None:
        info = self.info()
        self.card.setText(info.describe() if info else "No model found yet: train one (Train & DP) or browse.")
        self.card.setToolTip(info.details() if info else "")
        for callback in self._listeners:
            callback()


class GenerateTab(QtWidgets.QWidget):
    """Mask file → synthetic images in a vendor's style; or a real image restyled; or new anatomy."""

    def __init__(self, context: JobContext, parent=None):
        super().__init__(parent)
        self.context, self.runner = context, JobRunner()
        form = QtWidgets.QFormLayout()
        self.mask = PathField(folder=False, placeholder="mask file (labels 0 bg, 1 LV, 2 MYO, 3 RV)",
                              filter=IMAGE_FILTER)
        self.model = ModelChooser(context)
        self.vendor = QtWidgets.QComboBox()
        self.count, self.seed = _spin(1, 64, 1), _spin(0, 2**31 - 1, 0)
        self.out = PathField(folder=True, placeholder="output folder")
        self.out.set_path(str(Path.home() / "CMRSynth-output"))
        form.addRow("Mask:", self.mask)
        form.addRow("Model:", self.model)
        form.addRow("Vendor style:", self.vendor)
        form.addRow("Count:", self.count)
        form.addRow("Seed:", self.seed)
        self.privacy_filter = QtWidgets.QCheckBox(PRIVACY_FILTER_TEXT)
        form.addRow("Privacy:", self.privacy_filter)
        form.addRow("Output folder:", self.out)
        self.advanced_toggle = QtWidgets.QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced = QtWidgets.QWidget()
        adv = QtWidgets.QFormLayout(self.advanced)
        self.steps = _spin(0, 1000, 0, special="model default")
        self.sampler = QtWidgets.QLineEdit()
        self.sampler.setPlaceholderText("model default")
        self.guidance = _double(controller.GUIDANCE_MODEL_DEFAULT, 20.0, controller.GUIDANCE_MODEL_DEFAULT, step=0.5,
                                special="model default")
        self.device = _combo(controller.DEVICES)
        self.new_anatomy = _spin(0, 64, 0, special="off (use the mask)")
        self.group = QtWidgets.QComboBox()
        self.image = PathField(folder=False, placeholder="a real image to restyle (with the mask above)",
                               filter=IMAGE_FILTER)
        self.model_folder = PathField(folder=True, placeholder="where trained models are kept")
        self.model_folder.set_path(context.model_folder())
        self.model_folder.setToolTip("Trained models go here and every tab lists them (default: "
                                     "$CMRSYNTH_MODEL_FOLDER or ~/.cmrsynth/models, shared with Slicer)")
        for label, widget in (("Steps:", self.steps), ("Sampler:", self.sampler), ("Guidance:", self.guidance),
                              ("Device:", self.device), ("New anatomy:", self.new_anatomy),
                              ("Pathology group:", self.group), ("Restyle image:", self.image),
                              ("Model folder:", self.model_folder)):
            adv.addRow(label, widget)
        self.advanced.setVisible(False)
        self.advanced_toggle.toggled.connect(self.advanced.setVisible)
        buttons = QtWidgets.QHBoxLayout()
        self.generate_button = QtWidgets.QPushButton("Generate")
        self.restyle_button = QtWidgets.QPushButton("Restyle")
        self.restyle_button.setToolTip("Re-render the restyle image in the chosen vendor's style (flow and latent-diffusion models)")
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.restyle_button)
        self.job = JobBox(self.runner)
        self.results = QtWidgets.QListWidget()
        self.results.setMaximumHeight(90)
        self.preview = QtWidgets.QLabel("The first synthetic image appears here.")
        self.preview.setAlignment(QtCore.Qt.AlignCenter)
        self.preview.setMinimumHeight(180)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.job)
        layout.addWidget(self.results)
        layout.addWidget(self.preview, 1)
        self.model.on_change(self._fill_conditions)
        self.model.on_change(self._fill_privacy_filter)
        self.generate_button.clicked.connect(self.generate)
        self.restyle_button.clicked.connect(self.restyle)
        self.runner.on("artefact", self._artefact)
        self.runner.on("finished", self._finished)
        self._fill_conditions()
        self._fill_privacy_filter()

    def stop_jobs(self) -> None:
        self.runner.stop()

    def _fill_privacy_filter(self) -> None:
        """Offered when the model has a re-identification model beside it; on by default unless the model has DP
        (its card has a privacy ledger), where it would take the images outside the DP guarantee."""
        from CMRSynthLib.reid import DP_NOTE, reid_path

        info = self.model.info()
        available = info is not None and reid_path(info.path).is_dir()
        dp = info is not None and info.card.get("privacy") is not None
        self.privacy_filter.setEnabled(available)
        self.privacy_filter.setChecked(available and not dp)
        self.privacy_filter.setText(PRIVACY_FILTER_DP_TEXT if available and dp else PRIVACY_FILTER_TEXT)
        self.privacy_filter.setToolTip(
            "Checks every slice against the model's training patients and draws again what re-identifies one "
            "(cmrsynth sample --privacy-filter). What it did to each image goes to a private log beside the output "
            f"folder, never into the images.\n\n{DP_NOTE}" if available else
            "This model has no re-identification model beside it: build one with cmrsynth reid --model <model> "
            "--data <its training cohort>")

    def _fill_conditions(self) -> None:
        """Offer the vendors and pathology groups the chosen model knows (its card's vocabulary), nothing else."""
        info = self.model.info()
        vendors, groups = (info.vendors, info.groups) if info else ((), ())
        for box, known, first in ((self.vendor, vendors, 1), (self.group, groups, 0)):
            current = read(box, "currentText")
            box.clear()
            box.addItem("")  # vendor: unconditional; group: any
            for item in known:
                box.addItem(item)
            box.setCurrentIndex(max(box.findText(current), first if read(box, "count") > 1 else 0))

    def settings(self) -> controller.SampleSettings:
        steps = read(self.steps, "value")
        return controller.SampleSettings(
            model=self.model.argument(), mask="" if read(self.new_anatomy, "value") else self.mask.path(),
            out=self.out.path(), vendor=read(self.vendor, "currentText"), count=read(self.count, "value"),
            seed=read(self.seed, "value"), steps=steps or None, sampler=str(read(self.sampler, "text")).strip(),
            guidance=controller.chosen_guidance(read(self.guidance, "value")), device=read(self.device, "currentText"),
            new_anatomy=read(self.new_anatomy, "value"), group=read(self.group, "currentText"),
            privacy_filter=bool(read(self.privacy_filter, "checked")))

    def generate(self) -> None:
        self._start(self.settings)

    def restyle(self) -> None:
        def settings():
            stem = Path(self.image.path()).name.split(".")[0] or "image"
            vendor = read(self.vendor, "currentText") or "any"
            return controller.RestyleSettings(model=self.model.argument(), image=self.image.path(),
                                              mask=self.mask.path(), vendor=read(self.vendor, "currentText"),
                                              out=str(Path(self.out.path()) / f"{stem}_restyled_{vendor}.nii.gz"),
                                              steps=read(self.steps, "value") or None,
                                              device=read(self.device, "currentText"))
        self._start(settings)

    def _start(self, make_settings) -> None:
        self.results.clear()
        try:
            self.context.start(self.runner, make_settings())
        except (InputError, RuntimeError) as exc:
            self.job.show_error(str(exc))

    def _artefact(self, status, event) -> None:
        path = str(event.get("path", ""))
        item = QtWidgets.QListWidgetItem(Path(path).name)
        item.setToolTip(path)
        self.results.addItem(item)

    def _finished(self, status, _payload) -> None:
        images = [path for path, kind in status.artefacts if kind in IMAGE_KINDS]
        if status.state is JobState.DONE and images:
            from CMRSynthLib.data.volume import read_volume

            array = read_volume(images[0]).array
            shown = reader_study.display_image(array[array.shape[0] // 2].astype("float32"))
            self.preview.setPixmap(pixmap_from_gray(shown, 220))
            self.preview.setToolTip(images[0])


class TrainTab(QtWidgets.QWidget):
    """Train or fine-tune a generator, optionally with DP-SGD; the planner shows the privacy cost first."""

    def __init__(self, context: JobContext, *, on_model=None, parent=None):
        super().__init__(parent)
        self.context, self.on_model = context, on_model
        self.runner, self.planner = JobRunner(), JobRunner()
        form = QtWidgets.QFormLayout()
        data_row = QtWidgets.QHBoxLayout()
        self.data = PathField(folder=True, placeholder="cohort folder (ACDC, M&Ms, image/label pairs)")
        self.phantom_button = QtWidgets.QPushButton("Phantom cohort")
        self.phantom_button.setToolTip("Write the built-in simulated cohort (this many patients) and train on it")
        self.phantom_patients = _spin(3, 1000, 10)
        data_row.addWidget(self.data, 1)
        data_row.addWidget(self.phantom_button)
        data_row.addWidget(self.phantom_patients)
        self.generator = _combo(controller.GENERATORS, "flow")
        self.preset = _combo(controller.PRESETS, "tiny")
        self.init = PathField(folder=True, placeholder="optional: a public checkpoint to fine-tune")
        self.epochs, self.batch = _spin(1, 10000, 5), _spin(1, 4096, 4)
        self.max_steps = _spin(0, 10**7, 0, special="no limit")
        self.device = _combo(controller.DEVICES)
        self.out = PathField(folder=True, placeholder="output model folder (default: in the model folder)")
        form.addRow("Data:", data_row)
        form.addRow("Generator:", self.generator)
        form.addRow("Preset:", self.preset)
        form.addRow("Start from:", self.init)
        form.addRow("Epochs:", self.epochs)
        form.addRow("Patients per batch:", self.batch)
        form.addRow("Max steps:", self.max_steps)
        form.addRow("Device:", self.device)
        form.addRow("Output:", self.out)
        self.dp = QtWidgets.QGroupBox("Differential privacy (DP-SGD, the patient is the privacy unit)")
        self.dp.setCheckable(True)
        self.dp.setChecked(False)
        dp_form = QtWidgets.QFormLayout(self.dp)
        self.epsilon = _double(0.01, 1000.0, 8.0)
        self.delta = _combo(("1e-5", "1e-6", "1e-7", "1e-8", "1e-4"))
        self.delta.setEditable(True)
        self.delta.setToolTip("δ: keep it well below 1 / number of patients")
        self.clip = _double(0.01, 100.0, 1.0)
        self.patients = _spin(1, 10**6, 20)
        self.plan = QtWidgets.QLabel("planner: waiting for settings")
        self.plan.setWordWrap(True)
        for label, widget in (("Target ε:", self.epsilon), ("δ:", self.delta), ("Clipping norm:", self.clip),
                              ("Training patients:", self.patients), ("Planner:", self.plan)):
            dp_form.addRow(label, widget)
        self.train_button = QtWidgets.QPushButton("Train")
        self.job = JobBox(self.runner)
        self.loss = LossPlot()
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.dp)
        layout.addWidget(self.train_button)
        layout.addWidget(self.job)
        layout.addWidget(self.loss)
        layout.addStretch(1)
        self._plan_timer = QtCore.QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.timeout.connect(self.update_plan)
        for widget in (self.epsilon, self.patients, self.batch, self.epochs):
            widget.valueChanged.connect(lambda *a: self._plan_timer.start(300))
        self.delta.currentTextChanged.connect(lambda *a: self._plan_timer.start(300))
        self.dp.toggled.connect(lambda *a: self._plan_timer.start(0))
        self.data.edit.textChanged.connect(self._count_patients)
        self.phantom_button.clicked.connect(self.make_phantom)
        self.train_button.clicked.connect(self.train)
        self.planner.on("log", self._plan_line)
        self.planner.on("finished", self._plan_finished)
        self.runner.on("progress", lambda status, event: self.loss.set_values(status.losses))
        self.runner.on("finished", self._finished)

    def stop_jobs(self) -> None:
        """Cancel the training and the planner; return once their processes are gone."""
        self.runner.stop()
        self.planner.stop()

    # -- planner -------------------------------------------------------------------------------------
    def delta_value(self) -> float:
        text = str(read(self.delta, "currentText")).strip()
        try:
            return float(text)
        except ValueError:
            raise InputError(f"δ must be a number such as 1e-5, got {text!r}") from None

    def budget(self) -> controller.BudgetSettings:
        return controller.BudgetSettings(patients=read(self.patients, "value"), batch_size=read(self.batch, "value"),
                                         epochs=read(self.epochs, "value"), delta=self.delta_value(),
                                         epsilon=read(self.epsilon, "value"))

    def update_plan(self) -> None:
        if not read(self.dp, "checked"):
            self.plan.setText("planner: DP is off")
            return
        if self.planner.running:
            self._plan_timer.start(300)
            return
        try:
            self.context.start(self.planner, self.budget(), ask=False)  # editing a number never opens an install prompt
            self.plan.setText("planner: computing…")
        except (InputError, RuntimeError) as exc:
            self.plan.setText(f"planner: {exc}")

    def _plan_line(self, status, line) -> None:
        plan = controller.budget_plan(line)
        if plan:
            self.plan.setText(f"noise σ = {plan['noise_multiplier']:.3g} reaches ε = {plan['epsilon']:.3g} "
                              f"(δ = {plan['delta']:.1e}) in {plan['steps']} steps at sampling rate "
                              f"{plan.get('sample_rate', float('nan')):.3g}; privacy unit: {plan.get('unit', 'patient')}")

    def _plan_finished(self, status, _payload) -> None:
        if status.state is JobState.FAILED:
            self.plan.setText(f"planner: {status.error}")

    def _count_patients(self, *args) -> None:
        """Fill the planner's patient count with the training split `cmrsynth train` will make of the data.

        DP accounting counts the training patients only; the split is by patient, stratified by vendor and
        pathology group, seed 0 (the rule of ``training.data.load_training_data``).
        """
        from CMRSynthLib.data.cohorts import open_cohort
        from CMRSynthLib.data.splits import split_patients

        if not Path(self.data.path()).is_dir():
            return
        try:
            records = [r for r in open_cohort(self.data.path()).records if r.label_path]
            strata = {r.patient: f"{r.vendor}/{r.group}" for r in records}
            train = split_patients(sorted(strata), seed=0, strata=strata).train
        except (InputError, ValueError) as exc:
            self.plan.setText(f"planner: {exc}")
            return
        self.patients.setValue(len(train))

    # -- jobs ----------------------------------------------------------------------------------------
    def make_phantom(self) -> None:
        out = Path(self.context.model_folder()).parent / "phantom-cohort"
        try:
            self.context.start(self.runner, controller.PhantomSettings(
                out=str(out), patients=read(self.phantom_patients, "value")))
        except (InputError, RuntimeError) as exc:
            self.job.show_error(str(exc))

    def settings(self) -> controller.TrainSettings:
        dp = bool(read(self.dp, "checked"))
        generator = read(self.generator, "currentText")
        out = self.out.path() or str(Path(self.context.model_folder()) / f"{generator}-{time.strftime('%Y%m%d-%H%M%S')}")
        return controller.TrainSettings(
            data=self.data.path(), out=out, generator=generator, preset=read(self.preset, "currentText"),
            init=self.init.path(), dp=dp, epsilon=read(self.epsilon, "value") if dp else None,
            delta=self.delta_value() if dp else None, max_grad_norm=read(self.clip, "value") if dp else None,
            max_steps=read(self.max_steps, "value") or None, epochs=read(self.epochs, "value"),
            batch_size=read(self.batch, "value"), device=read(self.device, "currentText"))

    def train(self) -> None:
        try:
            self.context.start(self.runner, self.settings())
        except (InputError, RuntimeError) as exc:
            self.job.show_error(str(exc))

    def _finished(self, status, _payload) -> None:
        if status.state is not JobState.DONE:
            return
        if status.command == "phantom":
            cohort = next((path for path, kind in status.artefacts if kind == "cohort"), "")
            self.data.set_path(cohort)
            return
        folders = [path for path, kind in status.artefacts if kind == "checkpoint"]
        if folders and self.on_model is not None:
            self.on_model(catalogue.read_model(folders[-1]))


class AuditTab(QtWidgets.QWidget):
    """Audit a model against real data: the verdict table here, the full report in a browser."""

    COLUMNS = ("model", "axis", "number", "what it means")
    LEVEL_COLOURS = {"good": "#dcf5e3", "fair": "#fff1cc", "poor": "#ffdcdc", "info": "#e8eef5"}  # as report.html

    def __init__(self, context: JobContext, parent=None):
        super().__init__(parent)
        self.context, self.runner = context, JobRunner()
        self.model = ModelChooser(context)
        self.data = PathField(folder=True, placeholder="the cohort the model was trained on (its held-out patients are the yardstick)")
        self.out = PathField(folder=True, placeholder="report folder")
        self.out.set_path(str(Path.home() / "CMRSynth-audit"))
        self.quick = QtWidgets.QCheckBox("Quick (fewer samples and attacks; minutes instead of hours)")
        self.compare = QtWidgets.QListWidget()
        self.compare.setToolTip("Tick models to audit in the same report, on the same patients, side by side")
        self.compare.setMaximumHeight(64)
        form = QtWidgets.QFormLayout()
        form.addRow("Model:", self.model)
        form.addRow("Compare with:", self.compare)
        form.addRow("Data:", self.data)
        form.addRow("Report folder:", self.out)
        form.addRow("", self.quick)
        self.run_button = QtWidgets.QPushButton("Run audit")
        self.job = JobBox(self.runner)
        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(QtCore.Qt.ElideNone)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().sectionResized.connect(self._fit_rows)
        self.open_button = QtWidgets.QPushButton("Open report.html")
        self.open_button.setEnabled(False)
        self._html = None
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.job)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.open_button)
        self.run_button.clicked.connect(self.run)
        self.open_button.clicked.connect(self.open_report)
        self.runner.on("finished", self._finished)
        self.model.combo.currentIndexChanged.connect(self.fill_compare)
        self.fill_compare()

    def stop_jobs(self) -> None:
        self.runner.stop()

    def refresh_models(self) -> None:
        """List the model folder again (it changed, or a model was trained)."""
        self.model.refresh()
        self.fill_compare()

    def fill_compare(self, *args) -> None:
        """Every other model of the chooser, unticked unless it was ticked before."""
        ticked = set(self.compared())
        self.compare.clear()
        for info in self.model.models:
            if info.argument == self.model.argument():
                continue
            item = QtWidgets.QListWidgetItem(f"{info.name} ({info.family})")
            item.setData(QtCore.Qt.UserRole, info.argument)
            item.setToolTip(info.describe())
            item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
            item.setCheckState(QtCore.Qt.Checked if info.argument in ticked else QtCore.Qt.Unchecked)
            self.compare.addItem(item)

    def compared(self) -> list[str]:
        """The ticked models to compare with."""
        items = [self.compare.item(i) for i in range(read(self.compare, "count"))]
        return [item.data(QtCore.Qt.UserRole) for item in items if item.checkState() == QtCore.Qt.Checked]

    def run(self) -> None:
        try:
            self.context.start(self.runner, controller.AuditSettings(
                model=self.model.argument(), data=self.data.path(), out=self.out.path(),
                quick=bool(read(self.quick, "checked")), compare=tuple(self.compared())))
        except (InputError, RuntimeError) as exc:
            self.job.show_error(str(exc))

    def show_report(self, folder: str | os.PathLike) -> None:
        report = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
        rows = controller.verdict_rows(report)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(("model", "axis", "number", "meaning")):
                item = QtWidgets.QTableWidgetItem(str(row[key]))
                item.setToolTip(str(row[key]))
                if row.get("level") in self.LEVEL_COLOURS:
                    item.setBackground(QtGui.QColor(self.LEVEL_COLOURS[row["level"]]))
                self.table.setItem(r, c, item)
        self.table.setColumnHidden(0, len({row["model"] for row in rows}) < 2)  # one model: no model column
        self.table.resizeColumnToContents(0)
        for column, width in ((1, 110), (2, 150)):  # axis and number wrap; the meaning gets the rest
            self.table.setColumnWidth(column, width)
        self._fit_rows()
        QtCore.QTimer.singleShot(0, self._fit_rows)  # again once the scroll bar took its room
        self._html = Path(folder) / "report.html"
        self.open_button.setEnabled(self._html.is_file())

    def _fit_rows(self, *args) -> None:
        """Row heights that show every wrapped line (Qt's own estimate forgets the cell margins)."""
        metrics = self.table.fontMetrics()
        flags = int(QtCore.Qt.TextWordWrap)
        for r in range(self.table.rowCount()):
            height = 0
            for c in range(self.table.columnCount()):
                item = self.table.item(r, c)
                if item is None or self.table.isColumnHidden(c):
                    continue
                box = QtCore.QRect(0, 0, max(self.table.columnWidth(c) - 12, 20), 10000)
                height = max(height, metrics.boundingRect(box, flags, item.text()).height())
            self.table.setRowHeight(r, height + 8)

    def open_report(self) -> None:
        QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(self._html)))

    def _finished(self, status, _payload) -> None:
        if status.state is JobState.DONE:
            self.show_report(self.out.path())
            if read(self.open_button, "enabled"):
                self.open_report()


class CMRSynthPanel(QtWidgets.QTabWidget):
    """The four tabs over files: what ``cmrsynth gui`` shows."""

    def __init__(self, context: JobContext | None = None, parent=None):
        super().__init__(parent)
        self.context = context or JobContext()
        self.generate = GenerateTab(self.context)
        self.audit = AuditTab(self.context)
        self.train = TrainTab(self.context, on_model=self._model_added)
        self.reader = ReaderStudyTab()
        self.addTab(self.generate, "Generate")
        self.addTab(self.train, "Train && DP")
        self.addTab(self.audit, "Audit")
        self.addTab(self.reader, "Reader study")
        self.generate.model_folder.edit.textChanged.connect(self.set_model_folder)

    def set_model_folder(self, folder: str) -> None:
        """Use ``folder`` for trained models from now on (new trainings go there; the model lists show it)."""
        folder = str(folder).strip()
        if not folder:
            return
        self.context.model_folder = lambda: folder
        self.generate.model.refresh()
        self.audit.refresh_models()

    def _model_added(self, info: catalogue.ModelInfo) -> None:
        for chooser in (self.generate.model, self.audit.model):
            chooser.refresh()
            chooser.add(str(info.path))
        self.audit.fill_compare()
