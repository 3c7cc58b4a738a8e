"""The standalone panel under offscreen Qt (PySide6 via Qt.py), driving real ``cmrsynth`` subprocesses.

Set ``CMRSYNTH_SCREENSHOTS=1`` to refresh the README's screenshots in docs/images/ (otherwise they go to a
temporary folder; each is still grabbed, saved and checked for content). Set ``CMRSYNTH_SCREENSHOT_DATA`` to an
SSL4MIS ACDC folder (``.../ACDC_H5/data``, outside the repository) and the Generate test runs the default real model
on a real mask, so its screenshot shows what users get; without it (CI has no real data) it runs the phantom's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CMRSynthLib import DEFAULT_MODEL
from CMRSynthLib.data.volume import read_volume, write_volume
from CMRSynthLib.gui import catalogue
from CMRSynthLib.gui.controller import JobState
from CMRSynthLib.gui.qt import QtCore, QtWidgets, read

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses POSIX process groups")
ROOT = Path(__file__).resolve().parents[2]
SHAPE = (4, 48, 48)
SCREENSHOT_DATA = os.environ.get("CMRSYNTH_SCREENSHOT_DATA")


def wait_for(runner, seconds=240.0):
    timer = QtCore.QElapsedTimer()
    timer.start()
    while runner.running:
        assert timer.elapsed() < seconds * 1000, "job did not finish"
        QtCore.QCoreApplication.processEvents()
        QtCore.QThread.msleep(20)
    QtCore.QCoreApplication.processEvents()
    return runner.status


def wait_until(predicate, seconds=240.0):
    timer = QtCore.QElapsedTimer()
    timer.start()
    while not predicate():
        assert timer.elapsed() < seconds * 1000, "condition not reached"
        QtCore.QCoreApplication.processEvents()
        QtCore.QThread.msleep(20)


def screenshot(widget, name: str, tmp_path: Path) -> Path:
    folder = ROOT / "docs" / "images" if os.environ.get("CMRSYNTH_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    QtCore.QCoreApplication.processEvents()
    path = folder / f"panel_{name}.png"
    assert widget.grab().save(str(path))
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= 400 and len(np.unique(np.asarray(image.convert("L")))) > 20  # drawn, not blank
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from CMRSynthLib.data.phantom import write_phantom_cohort

    return write_phantom_cohort(tmp_path_factory.mktemp("gui") / "cohort", 3, seed=0, shape=SHAPE)


@pytest.fixture(scope="module")
def model(cohort, tmp_path_factory) -> str:
    """The bundled flow starter model; until one ships, a two-step flow model trained here."""
    starters = [m for m in catalogue.list_models(tmp_path_factory.mktemp("none")) if m.starter and m.family == "flow"]
    if starters:
        return starters[0].argument
    out = tmp_path_factory.mktemp("model") / "flow"
    subprocess.run([sys.executable, "-m", "CMRSynthLib", "train", "--data", str(cohort), "--generator", "flow",
                    "--out", str(out), "--preset", "tiny", "--max-steps", "2", "--image-size", "32",
                    "--batch-size", "2", "--device", "cpu", "--progress", "none"], check=True)
    return str(out)


def real_mask(data: Path, folder: Path) -> Path:
    """The first val.list case of an SSL4MIS ACDC folder (never a test.list patient) as ACDC's NIfTI pair in
    ``folder``: its label ``<case>_gt.nii.gz`` (ACDC's numbering, told by the name) and its image beside it."""
    from CMRSynthLib.data.ssl4mis import LABEL_KEY, read_ssl4mis

    case = (data / "val.list").read_text(encoding="utf-8").split()[0]
    assert case[:10] not in (data / "test.list").read_text(encoding="utf-8"), "test.list patients are reserved"
    source = str(data / f"{case}.h5")
    write_volume(read_ssl4mis(source), folder / f"{case}.nii.gz")
    return write_volume(read_ssl4mis(source + LABEL_KEY), folder / f"{case}_gt.nii.gz")


@pytest.fixture(scope="module")
def generate_case(cohort, tmp_path_factory, request):
    """(mask, model, steps) of the Generate test: the phantom's mask and flow model in two steps, or with
    CMRSYNTH_SCREENSHOT_DATA the default real model, at its own number of steps, on a real mask."""
    if SCREENSHOT_DATA:
        return real_mask(Path(SCREENSHOT_DATA), tmp_path_factory.mktemp("acdc")), DEFAULT_MODEL, 0
    return cohort / "phantom000" / "phantom000_ED_gt.nii.gz", request.getfixturevalue("model"), 2


@pytest.fixture
def panel(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRSYNTH_MODEL_FOLDER", str(tmp_path / "models"))
    from CMRSynthLib.gui.panel import CMRSynthPanel

    widget = CMRSynthPanel()
    widget.resize(560, 820)
    widget.show()
    yield widget
    for runner in (widget.generate.runner, widget.train.runner, widget.train.planner, widget.audit.runner):
        if runner.running:
            runner.cancel()
            wait_for(runner)
    widget.close()


def choose_model(tab, model: str) -> None:
    if Path(model).is_dir():
        tab.model.add(model)
    else:
        tab.model.refresh(select=model)
    assert tab.model.argument() == model


def test_generate_from_a_mask_file_shows_the_output(panel, generate_case, tmp_path):
    tab = panel.generate
    mask, model, steps = generate_case
    tab.mask.set_path(str(mask))
    choose_model(tab, model)
    vendors = [tab.vendor.itemText(i) for i in range(tab.vendor.count())]
    assert vendors[0] == "" and len(vendors) > 1  # unconditional, then the model's vendors
    vendor = read(tab.vendor, "currentText")
    tab.steps.setValue(steps)
    tab.seed.setValue(3)
    tab.device.setCurrentIndex(tab.device.findText("cpu"))
    tab.out.set_path(str(tmp_path / "out"))
    tab.generate_button.click()
    assert tab.runner.running and read(tab.job.cancel_button, "enabled")
    status = wait_for(tab.runner)
    assert status.state is JobState.DONE, status.error
    expected = tmp_path / "out" / f"{mask.name.removesuffix('_gt.nii.gz')}_synth_{vendor}_3.nii.gz"
    assert expected.is_file() and tab.results.item(0).text() == expected.name
    assert tab.results.item(0).toolTip() == str(expected)
    assert read_volume(expected).same_geometry(read_volume(mask))
    assert tab.preview.pixmap() is not None and not tab.preview.pixmap().isNull()
    assert "sample finished" in tab.job.status.text() and tab.job.bar.value() == 1000
    panel.setCurrentIndex(0)
    screenshot(panel, "generate", tmp_path)


def test_a_bad_mask_shows_a_readable_error_and_writes_nothing(panel, cohort, model, tmp_path):
    good = read_volume(cohort / "phantom000" / "phantom000_ED_gt.nii.gz")
    labels = good.array.copy()
    labels[0, 0, 0] = 7
    bad = write_volume(good.with_array(labels), tmp_path / "bad_mask.nii.gz")
    tab = panel.generate
    tab.mask.set_path(str(bad))
    choose_model(tab, model)
    tab.out.set_path(str(tmp_path / "out"))
    tab.generate_button.click()
    status = wait_for(tab.runner)
    assert status.state is JobState.FAILED and status.exit_code == 2
    text = tab.job.status.text()
    assert "bad_mask.nii.gz" in text and "label values [7]" in text and "Traceback" not in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_settings_errors_show_before_any_job_starts(panel):
    tab = panel.generate
    tab.mask.set_path("")
    tab.generate_button.click()
    assert not tab.runner.running and tab.runner.status.state is JobState.IDLE
    assert "mask is empty" in tab.job.status.text() or "model is empty" in tab.job.status.text()


def test_guidance_is_the_models_own_until_the_user_sets_one(panel, model):
    tab = panel.generate
    choose_model(tab, model)
    tab.mask.set_path("mask.nii.gz")
    tab.out.set_path("out")
    assert tab.guidance.text() == "model default" and "--guidance" not in tab.settings().arguments()
    tab.guidance.setValue(2.0)
    arguments = tab.settings().arguments()
    assert arguments[arguments.index("--guidance") + 1] == "2.0"
    tab.guidance.setValue(-0.5)


def test_generate_offers_only_what_the_model_knows_and_names_its_data(panel, tmp_path):
    folder = tmp_path / "models" / "acdc-flow"
    folder.mkdir(parents=True)
    shipped = Path(__file__).resolve().parents[2] / "Resources" / "models" / "acdc-flow" / "card.json"
    dataset = {**json.loads(shipped.read_text(encoding="utf-8"))["dataset"], "patients": 100}
    (folder / "card.json").write_text(json.dumps({
        "family": "flow", "dataset": dataset, "data": {"simulated": False},
        "vocabulary": {"vendors": ["Siemens"], "groups": ["NOR", "DCM"], "phases": ["ED", "ES"]}}))
    tab = panel.generate
    tab.model.refresh(select=str(folder))
    assert [tab.vendor.itemText(i) for i in range(tab.vendor.count())] == ["", "Siemens"]
    assert [tab.group.itemText(i) for i in range(tab.group.count())] == ["", "NOR", "DCM"]
    assert f"trained on ACDC ({dataset['license']}), 100 patients" in tab.model.card.text()
    assert f"Spacing: {dataset['spacing']}" in tab.model.card.toolTip()
    assert f"Cite: {dataset['citation']}" in tab.model.card.toolTip()
    phantom = next(info for info in tab.model.models if info.starter and info.simulated)
    tab.model.refresh(select=phantom.argument)
    assert "trained on a simulated phantom" in tab.model.card.text()
    assert [tab.vendor.itemText(i) for i in range(tab.vendor.count())] == ["", *phantom.vendors]


def test_every_job_tab_prepares_before_its_first_job_and_shows_a_refusal(panel, tmp_path):
    """In Slicer, ``prepare`` installs the missing packages after asking; declined, no job starts."""
    asked = []

    def decline(ask):
        if not ask:  # the planner runs as numbers are edited: it never asks (issue 29, item 7)
            raise RuntimeError("CMRSynth needs these Python packages, not installed yet: opacus>=1.5.")
        asked.append(True)
        raise RuntimeError("CMRSynth cannot run without its Python packages (installation declined).")

    panel.context.prepare = decline
    train, audit = panel.train, panel.audit
    train.data.set_path(str(tmp_path))
    train.train_button.click()
    assert asked and not train.runner.running and "installation declined" in train.job.status.text()
    train.phantom_button.click()
    assert len(asked) == 2 and not train.runner.running
    train.dp.setChecked(True)
    train.update_plan()
    assert len(asked) == 2 and not train.planner.running and "not installed yet: opacus" in train.plan.text()
    audit.data.set_path(str(tmp_path))
    audit.run_button.click()
    assert len(asked) == 3 and not audit.runner.running and "installation declined" in audit.job.status.text()
    panel.context.prepare = lambda ask: asked.append("installed")
    train.phantom_button.click()
    assert asked[-1] == "installed" and train.runner.running
    train.stop_jobs()  # what Slicer's cleanup does for this tab
    assert not train.runner.running and train.runner.status.state is JobState.CANCELLED


def test_train_tab_makes_a_cohort_plans_the_budget_and_cancels_training(panel, tmp_path, monkeypatch):
    tab = panel.train
    panel.setCurrentIndex(1)
    tab.phantom_patients.setValue(5)
    tab.phantom_button.click()
    status = wait_for(tab.runner)
    assert status.state is JobState.DONE, status.error
    cohort = Path(tab.data.path())
    assert (cohort / "cohort.csv").is_file()
    train_patients = read(tab.patients, "value")
    assert 1 <= train_patients < 5  # the training split, not the whole cohort, is what DP accounts for

    tab.dp.setChecked(True)
    tab.epsilon.setValue(8.0)
    tab.batch.setValue(train_patients + 1)
    wait_until(lambda: tab.planner.status.state.finished)  # more patients per batch than patients: refused
    assert f"{train_patients} patients, got {train_patients + 1}" in tab.plan.text(), tab.plan.text()
    tab.batch.setValue(1)
    wait_until(lambda: "σ =" in tab.plan.text() or tab.planner.status.state is JobState.FAILED and not tab.planner.running
               and "patients, got" not in tab.plan.text())
    assert "σ =" in tab.plan.text() and "ε = 8" in tab.plan.text(), tab.plan.text()

    from CMRSynthLib.cli import build_parser

    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    tab.dp.setChecked("--dp" in train_help)  # DP training once `cmrsynth train` has its DP flags
    tab.max_steps.setValue(10000)
    tab.device.setCurrentIndex(tab.device.findText("cpu"))
    out = tmp_path / "models" / "run"
    tab.out.set_path(str(out))
    tab.train_button.click()
    assert tab.runner.running
    wait_until(lambda: tab.runner.status.step >= 2 or not tab.runner.running)
    assert tab.runner.running, tab.runner.status.error
    job_pid = int(tab.runner._process.processId())
    wait_until(lambda: tab.loss.values or not tab.runner.running)
    assert tab.loss.values == tab.runner.status.losses and "loss" in tab.job.status.text()  # live loss
    if read(tab.dp, "checked"):  # live ε spent
        assert tab.runner.status.epsilon > 0 and f"ε {tab.runner.status.epsilon:.3g}" in tab.job.status.text()
    screenshot(panel, "train", tmp_path)
    tab.job.cancel_button.click()
    status = wait_for(tab.runner)
    assert status.state is JobState.CANCELLED and "cancelled" in tab.job.status.text()
    wait_until(lambda: not Path(f"/proc/{job_pid}").exists()
               or open(f"/proc/{job_pid}/stat").read().split(") ")[1][0] == "Z")
    assert not out.exists() or not (out / "card.json").exists()  # no partial checkpoint
    assert not list(out.parent.glob(".run*partial*"))


def test_a_trained_model_joins_the_model_lists(panel, tmp_path):
    from CMRSynthLib.gui.controller import JobStatus

    folder = tmp_path / "models" / "flow-new"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"family": "flow", "members": ["p1", "p2"], "privacy":
                                                  {"epsilon": 7.9, "delta": 1e-5}, "vocabulary": {"vendors": ["GE"]}}))
    status = JobStatus()
    status.start("train")
    status.apply({"event": "artefact", "path": str(folder), "kind": "checkpoint"})
    status.finish(0)
    panel.train._finished(status, None)  # what the runner calls when a training job ends
    for chooser in (panel.generate.model, panel.audit.model):
        assert chooser.argument() == str(folder) and "DP ε = 7.9" in chooser.card.text()
    assert [panel.generate.vendor.itemText(i) for i in range(panel.generate.vendor.count())] == ["", "GE"]


# The verdict table of a real `cmrsynth audit --quick` run (flow and ddpm starters, 40 phantom patients).
REPORT = Path(__file__).resolve().parent / "data" / "audit_report.json"


def test_audit_tab_shows_the_verdict_table_coloured_by_level(panel, tmp_path, monkeypatch):
    import re

    from Qt import QtGui

    from CMRSynthLib.audit import report as audit_report
    from CMRSynthLib.gui.controller import JobStatus

    folder = tmp_path / "audit"
    folder.mkdir()
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.html").write_text("<html></html>")
    tab = panel.audit
    panel.setCurrentIndex(2)
    tab.out.set_path(str(folder))
    opened = []
    monkeypatch.setattr(tab, "open_report", lambda: opened.append(tab._html))
    status = JobStatus()
    status.start("audit")
    status.finish(0)
    tab._finished(status, None)  # what the runner calls when the audit job ends: table, then the report
    rows = [row for model in report["models"] for row in model["verdict"]]
    assert tab.table.rowCount() == len(rows) == 20 and opened == [folder / "report.html"]
    shown = [(tab.table.item(r, 0).text(), tab.table.item(r, 1).text()) for r in range(tab.table.rowCount())]
    assert ("ddpm", "discriminability") in shown and ("flow", "discriminability") in shown
    first = rows[0]
    assert [tab.table.item(0, c).text() for c in range(4)] == [report["models"][0]["name"], first["axis"],
                                                              first["number"], first["meaning"]]
    for r, row in enumerate(rows):
        assert tab.table.item(r, 1).background().color() == QtGui.QColor(tab.LEVEL_COLOURS[row["level"]])
    levels = set(re.findall(r'"(good|fair|poor|info|warn|bad|ok)"', Path(audit_report.__file__).read_text(encoding="utf-8")))
    assert levels and levels <= set(tab.LEVEL_COLOURS)  # every level the audit can write has a colour
    assert read(tab.open_button, "enabled")
    offered = [tab.compare.item(i).data(QtCore.Qt.UserRole) for i in range(tab.compare.count())]
    assert tab.model.argument() not in offered and len(offered) == len(tab.model.models) - 1
    tab.compare.item(0).setCheckState(QtCore.Qt.Checked)
    tab.data.set_path(str(tmp_path / "cohort"))
    started = []
    monkeypatch.setattr(tab.context, "start", lambda runner, settings: started.append(settings))
    tab.run_button.click()
    assert started[0].model == tab.model.argument() and started[0].compare == (offered[0],)
    screenshot(panel, "audit", tmp_path)


def test_the_model_folder_is_configurable_and_lists_image_models_only(panel, tmp_path):
    folder = tmp_path / "elsewhere"
    for name, family in (("mine", "ddpm"), ("masks", "anatomy")):
        (folder / name).mkdir(parents=True)
        (folder / name / "card.json").write_text(json.dumps({"family": family, "members": ["p1"]}))
    tab = panel.generate
    assert tab.model_folder.path() == str(tmp_path / "models")  # the context's folder ($CMRSYNTH_MODEL_FOLDER)
    tab.model_folder.set_path(str(folder))
    assert panel.context.model_folder() == str(folder)
    for chooser in (tab.model, panel.audit.model):
        families = {info.family for info in chooser.models}
        assert str(folder / "mine") in [info.argument for info in chooser.models] and "anatomy" not in families
    assert panel.train.settings().out.startswith(str(folder))  # new trainings land there


def test_reader_study_tab_records_answers_and_agreement(panel, cohort, tmp_path):
    real, synthetic = tmp_path / "real", tmp_path / "synthetic"
    for folder in (real, synthetic):
        folder.mkdir()
    for patient in ("phantom000", "phantom001"):
        volume = read_volume(cohort / patient / f"{patient}_ED.nii.gz")
        write_volume(volume, real / f"{patient}.nii.gz")
        smooth = (volume.array + np.roll(volume.array, 1, axis=2)) / 2
        write_volume(volume.with_array(smooth.astype(np.float32)), synthetic / f"{patient}_synth.nii.gz")
    tab = panel.reader
    panel.setCurrentIndex(3)
    tab.real.set_path(str(real))
    tab.synthetic.set_path(str(synthetic))
    tab.per_class.setValue(2)
    results = tmp_path / "study" / "results.csv"
    tab.results.set_path(str(results))
    for reader, answer in (("A", "real"), ("B", None)):
        tab.reader.setText(reader)
        tab.start_button.click()
        assert read(tab.real_button, "enabled") and tab.image.pixmap() is not None
        if reader == "B":
            screenshot(panel, "reader", tmp_path)
        for _ in range(4):
            item = tab.queue[0]
            kind = answer or item.truth  # reader A always says real, reader B is always right
            (tab.real_button if kind == "real" else tab.synthetic_button).click()
        assert "Done: 4 of 4" in tab.counter.text()
    from CMRSynthLib.gui import reader_study as rs

    items, answers = rs.load_results(results)
    assert len(items) == 4 and len(answers) == 8
    table = {tab.summary.item(r, 0).text(): [tab.summary.item(r, c).text() for c in range(1, 5)]
             for r in range(tab.summary.rowCount())}
    assert table == {"A": ["4", "0.50", "0.00", "1.00"], "B": ["4", "1.00", "1.00", "1.00"]}
    header = tab.summary.horizontalHeader()
    assert sum(header.sectionSize(c) for c in range(header.count())) <= tab.summary.viewport().width()
    assert "Cohen's κ A vs B: 0.00" in tab.kappa.text()
    summary = (tmp_path / "study" / "results_summary.csv").read_text(encoding="utf-8").splitlines()
    assert summary[0] == "who,measure,value" and "A vs B,cohens_kappa,0.0" in summary


def test_cmrsynth_gui_opens_the_panel_on_the_chosen_tab(tmp_path):
    from CMRSynthLib.cli import COMMANDS, build_parser
    from CMRSynthLib.jobs import gui

    assert COMMANDS["gui"] == "gui"
    args = build_parser().parse_args(["gui", "--tab", "reader", "--model-folder", str(tmp_path)])
    shown = []

    def look_and_quit():
        panel = next(w for w in QtWidgets.QApplication.topLevelWidgets() if w.windowTitle() == "CMRSynth")
        shown.append((panel.tabText(panel.currentIndex()), panel.context.model_folder(), panel.isVisible()))
        panel.close()
        QtWidgets.QApplication.instance().quit()

    QtCore.QTimer.singleShot(0, look_and_quit)
    assert gui.run(args, progress=None) == 0
    assert shown == [("Reader study", str(tmp_path), True)]
