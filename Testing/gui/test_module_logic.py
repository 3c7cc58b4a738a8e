"""CMRSynth.py's Logic executed here, over a small stand-in for Slicer's scene API.

The stand-in implements only the handful of ``slicer.util`` functions the Logic calls, with the documented
semantics (KJI arrays, IJK-to-RAS matrices, segment arrays resampled to the reference geometry — here the
segments already lie on it). It proves that the Logic's own code runs: mask export, the real ``cmrsynth
sample`` job with the starter model, node names and attributes, cleanup, cancel, dependency checks. It proves
nothing about Slicer itself; that is what the module's self-test is for (run inside Slicer).
"""

import importlib.util
import os
import shutil
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import vtk

from CMRSynthLib.data.conventions import LV, MYO, RV
from CMRSynthLib.gui import catalogue, dependencies

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses POSIX process groups")


class VolumeNode:
    def __init__(self, array, ijk_to_ras, name, class_name="vtkMRMLScalarVolumeNode"):
        self.array, self.matrix, self.name, self.attributes = array, np.asarray(ijk_to_ras, float), name, {}
        self.class_name = class_name

    def IsA(self, class_name):  # a label map volume is a scalar volume, as in MRML
        return class_name in (self.class_name, "vtkMRMLScalarVolumeNode")

    def GetName(self):
        return self.name

    def GetIJKToRASMatrix(self, matrix):
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, self.matrix[r, c])

    def GetParentTransformNode(self):
        return None

    def SetAttribute(self, key, value):
        self.attributes[key] = value

    def GetAttribute(self, key):
        return self.attributes.get(key)


class Segment:
    def __init__(self, name):
        self.name = name

    def GetName(self):
        return self.name


SEGMENT_ADDED, SEGMENT_REMOVED, SEGMENT_MODIFIED = "SegmentAdded", "SegmentRemoved", "SegmentModified"


class Segmentation:
    """vtkSegmentation as far as the module uses it, with its SegmentAdded/Removed/Modified events."""

    def __init__(self, segments):
        self.segments = segments  # id → (name, binary KJI array on the reference grid)
        self.observers = {}  # tag → (event, callback)

    def GetNumberOfSegments(self):
        return len(self.segments)

    def GetNthSegmentID(self, index):
        return list(self.segments)[index]

    def GetNthSegment(self, index):
        return Segment(self.segments[self.GetNthSegmentID(index)][0])

    def AddObserver(self, event, callback):
        tag = len(self.observers) + 1 + max(self.observers, default=0)
        self.observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag):
        del self.observers[tag]

    def invoke(self, event):
        for observed, callback in list(self.observers.values()):
            if observed == event:
                callback(self, event)

    def add(self, segment_id, name, array):
        self.segments[segment_id] = (name, array)
        self.invoke(SEGMENT_ADDED)

    def rename(self, segment_id, name):
        self.segments[segment_id] = (name, self.segments[segment_id][1])
        self.invoke(SEGMENT_MODIFIED)

    def remove(self, segment_id):
        del self.segments[segment_id]
        self.invoke(SEGMENT_REMOVED)


class SegmentationNode:
    def __init__(self, segments):
        self.segmentation = Segmentation(segments)

    def GetSegmentation(self):
        return self.segmentation


@pytest.fixture
def stub_slicer(tmp_path, monkeypatch):
    """Modules ``slicer`` (and friends) and ``qt`` as far as CMRSynth.py uses them; returns (module, scene)."""
    from Qt import QtCore, QtGui, QtWidgets

    scene = []
    qt = types.ModuleType("qt")  # PythonQt's flat namespace, filled from PySide6
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q"):
                setattr(qt, name, getattr(source, name))
    slicer = types.ModuleType("slicer")
    util = types.ModuleType("slicer.util")
    util.arrayFromVolume = lambda node: node.array
    util.arrayFromSegmentBinaryLabelmap = lambda seg, segment_id, ref: seg.segmentation.segments[segment_id][1].copy()

    def add_volume(array, ijkToRAS=None, name=None, nodeClassName="vtkMRMLScalarVolumeNode"):
        node = VolumeNode(np.array(array), np.eye(4) if ijkToRAS is None else ijkToRAS, name, nodeClassName)
        scene.append(node)
        return node

    def import_labelmap(labelmap, segmentation_node):  # one segment per label value, named by the value
        for value in np.unique(labelmap.array[labelmap.array > 0]):
            segmentation_node.segmentation.segments[f"Segment_{value}"] = (str(value), labelmap.array == value)

    def add_node(class_name):
        assert class_name == "vtkMRMLSegmentationNode"
        scene.append(SegmentationNode({}))
        return scene[-1]

    def temp_directory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):  # Slicer's: a new folder each call
        folder = Path(tempDir or temporary) / (key + (f"{len(list(Path(temporary).iterdir()))}" if includeDateTime
                                                      else ""))
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    temporary = str(tmp_path / "slicer-temp")
    util.addVolumeFromArray = add_volume
    util.tempDirectory = temp_directory
    util.startupEnvironment = lambda: dict(os.environ)
    util.loadSegmentation = lambda path: scene.append(("segmentation", path)) or scene[-1]
    util.pip_install = lambda *a, **k: pytest.fail("pip_install must not be called here")
    (tmp_path / "slicer-temp").mkdir()
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.WithinRange = wrapper.Choice = lambda *a: None
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *a: None}))
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (unittest.TestCase,),
                                               {"delayDisplay": lambda self, message: None})
    slicer.util, slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule = util, i18n, wrapper, scripted
    slicer.mrmlScene = types.SimpleNamespace(Clear=scene.clear, AddNewNodeByClass=add_node, RemoveObserver=None)
    slicer.app = types.SimpleNamespace(temporaryPath=temporary)
    slicer.vtkSegmentation = types.SimpleNamespace(SegmentAdded=SEGMENT_ADDED, SegmentRemoved=SEGMENT_REMOVED,
                                                   SegmentModified=SEGMENT_MODIFIED)
    segmentations_logic = types.SimpleNamespace(ImportLabelmapToSegmentationNode=import_labelmap)
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations_logic))
    slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLSegmentationNode = VolumeNode, SegmentationNode
    for name, module in (("qt", qt), ("slicer", slicer), ("slicer.util", util), ("slicer.i18n", i18n),
                         ("slicer.parameterNodeWrapper", wrapper), ("slicer.ScriptedLoadableModule", scripted)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("CMRSynth", ROOT / "CMRSynth" / "CMRSynth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, scene, slicer


@pytest.fixture
def heart():
    """An oblique reference volume and a segmentation named the way people name segments."""
    shape = (3, 32, 32)
    angle = np.deg2rad(25)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                   [0, 0, 1]]) @ np.diag([1.5, 1.5, 8.0])
    ijk_to_ras[:3, 3] = [-30.0, 12.0, 40.0]
    reference = VolumeNode(np.zeros(shape, np.float32), ijk_to_ras, "cine")
    yy, xx = np.mgrid[:32, :32]
    r = np.broadcast_to(np.hypot(yy - 16, xx - 12), shape)
    segmentation = SegmentationNode({
        "Segment_1": ("Left ventricle", r < 5), "Segment_2": ("Myocardium", (r >= 5) & (r < 8)),
        "Segment_3": ("RV", np.broadcast_to(np.hypot(yy - 16, xx - 22) < 5, shape) & (r >= 8))})
    return reference, segmentation


def starter():
    flows = [m for m in catalogue.list_models("/nonexistent") if m.starter and m.family == "flow"]
    if not flows:
        pytest.skip("no flow starter model is bundled yet")
    return flows[0]


def test_the_in_slicer_self_test_passes_against_the_stand_in(stub_slicer, tmp_path, monkeypatch):
    """CMRSynthTest as Slicer runs it: oblique segmentation → generate with the tiny starter → names, geometry."""
    module, scene, slicer = stub_slicer
    starter()
    monkeypatch.setenv("CMRSYNTH_MODEL_FOLDER", str(tmp_path / "models"))
    monkeypatch.setattr(shutil, "which", lambda name: sys.executable if name == "PythonSlicer" else None)
    test = module.CMRSynthTest()
    test.runTest()  # raises on any failed assertion
    synthetic = [node for node in scene if isinstance(node, VolumeNode) and node.GetAttribute("CMRSynth.synthetic")]
    model = catalogue.find_model("tiny-flow")
    assert [n.GetName() for n in synthetic] == [f"cine_synth_{model.vendors[0]}_5", f"cine_synth_{model.vendors[0]}_6"]
    for node, seed in zip(synthetic, (5, 6)):
        assert node.attributes["CMRSynth.generator"] == "flow" and node.attributes["CMRSynth.seed"] == str(seed)
        assert node.attributes["CMRSynth.modelId"] == model.model_id and node.attributes["CMRSynth.epsilon"] == "none"
    assert not np.array_equal(synthetic[0].array, synthetic[1].array)  # two seeds, two images
    assert list((tmp_path / "slicer-temp").iterdir()) == []  # the job's files are gone


def test_restyle_adds_one_volume_in_the_target_style(stub_slicer, heart, tmp_path):
    module, scene, slicer = stub_slicer
    reference, segmentation = heart
    reference.array[:] = np.random.default_rng(0).normal(100, 20, reference.array.shape)
    model = starter()
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    logic.python = sys.executable
    node = logic.restyle(reference, segmentation, vendor=model.vendors[0], model=model.name, steps=2, device="cpu")
    assert scene == [node] and node.GetName() == f"cine_restyled_{model.vendors[0]}"
    assert node.array.shape == reference.array.shape and np.allclose(node.matrix, reference.matrix, atol=1e-4)
    assert node.attributes["CMRSynth.restyled"] == "true" and node.attributes["CMRSynth.source"] == "cine"
    assert not np.array_equal(node.array, reference.array)


def test_a_cancelled_job_adds_nothing_and_cleans_up(stub_slicer, heart, tmp_path):
    module, scene, slicer = stub_slicer
    reference, segmentation = heart
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    logic.python = sys.executable
    job = logic.generate(segmentation, reference, model=starter().name, count=64, steps=50, device="cpu",
                         wait=False)
    assert job.status.state.value == "running"
    job.cancel()
    with pytest.raises(RuntimeError, match="sample was cancelled"):
        job.wait()
    assert scene == [] and list((tmp_path / "slicer-temp").iterdir()) == []


def test_bad_requests_fail_before_any_job(stub_slicer, heart, tmp_path):
    module, scene, slicer = stub_slicer
    reference, segmentation = heart
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    with pytest.raises(ValueError, match="no model named 'nope'"):
        logic.generate(segmentation, reference, model="nope")
    unnamed = SegmentationNode({"Segment_1": ("Segment_1", np.ones((3, 32, 32), bool))})
    with pytest.raises(ValueError, match="no segment is mapped"):
        logic.generate(unnamed, reference, model=starter().name)
    with pytest.raises(ValueError, match="count must be a whole number >= 1"):
        logic.generate(segmentation, reference, model=starter().name, count=0)
    assert list((tmp_path / "slicer-temp").iterdir()) == []


def test_dependencies_are_checked_and_installed_only_as_allowed(stub_slicer, monkeypatch, tmp_path):
    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    logic.ensureDependencies(interactive=False)  # everything is installed here: nothing to do
    monkeypatch.setattr(dependencies, "unmet", lambda requirements: [] if requirements == ["torch"] else ["foo>=1"])
    with pytest.raises(RuntimeError, match="needs these Python packages: foo>=1"):
        logic.ensureDependencies(interactive=False)  # console use: no dialog, no install; say what is missing
    asked = []
    slicer.util.confirmOkCancelDisplay = lambda text, **options: asked.append(text) or False
    with pytest.raises(RuntimeError, match="installation declined"):
        logic.ensureDependencies(interactive=True)  # Slicer < 5.11: our own question, answered No
    assert "foo>=1" in asked[0]
    calls = []

    def pip_ensure(requirements, **options):  # Slicer's reads .name, .specifier and .marker of Requirement objects
        calls.append(([(r.name, str(r.specifier), r.marker) for r in requirements], options,
                      Path(options["constraints"]).read_text(encoding="utf-8")))

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    slicer.packaging = packaging
    with pytest.raises(RuntimeError, match="needs these Python packages"):
        logic.ensureDependencies(interactive=False)  # 5.11+ too: never installs without asking
    assert calls == []
    logic.ensureDependencies(interactive=True)
    (requirements, options, pins), = calls
    assert requirements == [("foo", ">=1", None)]
    assert options["prompt_install"] is True and options["requester"] == "CMRSynth"
    assert "numpy==" in pins and "SimpleITK==" in pins and "torch==" in pins
    assert list((tmp_path / "slicer-temp").iterdir()) == []  # the constraints file is gone, no folder was left


def test_jobs_find_the_bundled_library(stub_slicer, tmp_path):
    module, scene, slicer = stub_slicer
    env = module.CMRSynthLogic(modelFolder=tmp_path).environment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT / "CMRSynth")


class FinishedJob:
    """What ``runJob`` returns, for a job that already ended well with ``artefacts`` (no process started)."""

    def __init__(self, settings, complete, artefacts):
        from CMRSynthLib.gui.controller import JobStatus

        self.settings, self.complete = settings, complete
        self.status = JobStatus()
        self.status.start(settings.command)
        for path, kind in artefacts:
            self.status.apply({"event": "artefact", "path": str(path), "kind": kind})
        self.status.finish(0)

    def wait(self, timeout=None):
        return self.complete(self.status)


def fake_jobs(logic, make_outputs):
    """Replace ``logic.runJob``: each call records its settings, makes the outputs, and finishes at once."""
    started = []

    def run_job(settings, complete, workDir=None):
        settings.arguments()  # the real runJob builds the command line first, which checks the settings
        started.append(settings)
        return FinishedJob(settings, complete, make_outputs(settings))

    logic.runJob = run_job
    return started


def test_console_train_and_audit_return_the_model_and_the_report(stub_slicer, tmp_path):
    import json

    from CMRSynthLib.gui.controller import job_command

    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")

    def outputs(settings):
        out = Path(settings.out)
        out.mkdir(parents=True)
        if settings.command == "train":
            (out / "card.json").write_text(json.dumps({"family": settings.generator, "members": ["a", "b"],
                                                       "privacy": {"epsilon": 3.0, "delta": 1e-5}}))
            return [(out, "checkpoint")]
        (out / "report.json").write_text(json.dumps({"models": [{"name": "m", "verdict": []}]}))
        return [(out / "report.html", "report")]

    started = fake_jobs(logic, outputs)
    info = logic.train(tmp_path / "cohort", generator="ddpm", dp=True, epsilon=3.0, delta=1e-5, maxGradNorm=1.0,
                       maxSteps=7)
    assert info.family == "ddpm" and info.epsilon == 3.0 and info.path.parent == tmp_path / "models"
    assert info.argument in [m.argument for m in logic.models()]  # the new model is in the model list at once
    argv = job_command(started[0], python="PythonSlicer")
    assert argv[:6] == ["PythonSlicer", "-m", "CMRSynthLib.gui.child", "train", "--progress", "jsonl"]
    assert argv[argv.index("--epsilon") + 1] == "3.0" and argv[argv.index("--max-steps") + 1] == "7"
    report = logic.audit(info.argument, tmp_path / "cohort", quick=True, compare=[starter().name])
    assert report["models"][0]["name"] == "m" and started[1].quick and started[1].model == info.argument
    assert started[1].compare == (starter().name,)
    with pytest.raises(ValueError, match="apply to DP training only"):
        logic.train(tmp_path / "cohort", epsilon=3.0)  # refused before any job
    assert len(started) == 2


def test_new_anatomy_adds_a_segmentation_and_its_images(stub_slicer, tmp_path):
    from CMRSynthLib.data.volume import Volume, write_volume

    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    model = starter()

    def outputs(settings):
        assert settings.new_anatomy == 1 and settings.mask == "" and settings.group == "HCM"
        mask = write_volume(Volume(np.ones((2, 8, 8), np.uint8), np.eye(4)),
                            Path(settings.out) / "anatomy000_HCM_any_4_mask.nii.gz")
        image = write_volume(Volume(np.zeros((2, 8, 8), np.float32), np.eye(4)),
                             Path(settings.out) / f"anatomy000_HCM_any_4_mask_synth_{model.vendors[0]}_4.nii.gz")
        return [(mask, "mask"), (image, "synthetic")]

    started = fake_jobs(logic, outputs)
    job = logic.generate(None, None, model=model.name, vendor=model.vendors[0], seed=4, newAnatomy=1, group="HCM",
                         wait=False)
    segmentation, volume = job.wait()
    assert segmentation == ("segmentation", str(Path(started[0].out) / "anatomy000_HCM_any_4_mask.nii.gz"))
    assert volume.GetName() == f"anatomy000_HCM_any_4_mask_synth_{model.vendors[0]}_4"
    assert volume.attributes["CMRSynth.seed"] == "4" and volume.attributes["CMRSynth.vendor"] == model.vendors[0]
    assert scene == [segmentation, volume]


def test_a_failed_job_raises_and_logs_its_last_words(stub_slicer, tmp_path, caplog):
    from CMRSynthLib.gui.jobs import JobRunner

    module, scene, slicer = stub_slicer
    work = tmp_path / "work"
    work.mkdir()
    runner = JobRunner()
    job = module.CMRSynthJob(runner, str(work), complete=lambda status: pytest.fail("no result for a failed job"))
    runner.start([sys.executable, "-c", "import sys; sys.exit('mask.nii.gz: label values [7] are not allowed')"],
                 name="sample")
    with pytest.raises(RuntimeError, match=r"label values \[7\]"):
        job.wait()
    assert "sample failed: mask.nii.gz: label values [7]" in caplog.text and not work.exists()
