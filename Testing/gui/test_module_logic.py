"""CMRSynth.py's Logic executed here, over a small stand-in for Slicer's scene API.

The stand-in implements only the handful of ``slicer.util`` functions the Logic calls, with the documented
semantics (KJI arrays, IJK-to-RAS matrices, segment arrays resampled to the reference geometry — here the
segments already lie on it). It proves that the Logic's own code runs: mask export, the real ``cmrsynth
sample`` job with the starter model, node names and attributes, cleanup, cancel, dependency checks. It proves
nothing about Slicer itself; that is what the module's self-test is for (run inside Slicer).
"""

import ast
import importlib.util
import json
import os
import shutil
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import vtk

from CMRSynthLib import DEFAULT_MODEL
from CMRSynthLib.data.conventions import LV, MYO, RV
from CMRSynthLib.data.volume import read_volume
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

    def SetIJKToRASMatrix(self, matrix):
        self.matrix = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def GetParentTransformNode(self):
        return None

    def GetDisplayNode(self):  # set by the export, the only display node the module reads
        return getattr(self, "display", None)

    def SetAndObserveStorageNodeID(self, storage_id):
        self.storage_id = storage_id

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
EXTENT_REFERENCE_GEOMETRY, EXTENT_UNION_OF_EFFECTIVE_SEGMENTS = 0, 3  # vtkSegmentation's extent computation modes


def on_grid(array, geometry, reference):
    """A segment's KJI array on ``reference``'s grid: the same as the segmentation's geometry, or a box of it (the
    only resampling the stand-in does); a segmentation without a geometry has its segments on the reference's."""
    if geometry is None:
        return array.copy()
    corner = np.linalg.solve(geometry[0], reference.matrix[:, 3])[:3]  # the reference's voxel 0 in the segmentation
    assert np.allclose(geometry[0][:3, :3], reference.matrix[:3, :3]) and np.allclose(corner, corner.round())
    (i, j, k), (depth, rows, columns) = corner.round().astype(int), reference.array.shape
    return array[k:k + depth, j:j + rows, i:i + columns].copy()


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
    """``geometry`` (IJK-to-RAS, KJI shape) is its reference image geometry, which Slicer keeps as a conversion
    parameter of the segmentation, also when no volume node is referenced (a .seg.nrrd loaded alone). The
    segments' arrays lie on it."""

    def __init__(self, segments, name="Segmentation", reference=None, geometry=None):
        self.segmentation, self.name, self.attributes = Segmentation(segments), name, {}
        self.references = {"referenceImageGeometryRef": reference}
        self.geometry = geometry

    @staticmethod
    def GetReferenceImageGeometryReferenceRole():  # vtkMRMLSegmentationNode's role name
        return "referenceImageGeometryRef"

    def GetNodeReference(self, role):
        return self.references.get(role)

    def GetName(self):
        return self.name

    def SetAttribute(self, key, value):
        self.attributes[key] = value

    def GetAttribute(self, key):
        return self.attributes.get(key)

    def GetSegmentation(self):
        return self.segmentation


@pytest.fixture
def stub_slicer(tmp_path, monkeypatch):
    """Modules ``slicer`` (and friends) and ``qt`` as far as CMRSynth.py uses them; returns (module, scene)."""
    from Qt import QtCore, QtGui, QtWidgets

    scene, storages, hierarchy = [], {}, {}  # data nodes; storage nodes by id; subject-hierarchy item attributes
    qt = types.ModuleType("qt")  # PythonQt's flat namespace, filled from PySide6
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q"):
                setattr(qt, name, getattr(source, name))
    slicer = types.ModuleType("slicer")
    util = types.ModuleType("slicer.util")
    util.arrayFromVolume = lambda node: node.array

    def segment_array(seg, segment_id, reference=None):  # Base/Python/slicer/util.py, resampled to the reference
        reference = reference or seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
        if reference is None:
            raise RuntimeError("No reference volume is found in the input segmentationNode, therefore a valid "
                               "referenceVolumeNode input is required.")
        return on_grid(seg.segmentation.segments[segment_id][1], seg.geometry, reference)

    util.arrayFromSegmentBinaryLabelmap = segment_array

    def add_volume(array, ijkToRAS=None, name=None, nodeClassName="vtkMRMLScalarVolumeNode"):
        node = VolumeNode(np.array(array), np.eye(4) if ijkToRAS is None else ijkToRAS, name, nodeClassName)
        scene.append(node)
        return node

    def import_labelmap(labelmap, segmentation_node):  # one segment per label value, named by the value
        for value in np.unique(labelmap.array[labelmap.array > 0]):
            segmentation_node.segmentation.segments[f"Segment_{value}"] = (str(value), labelmap.array == value)

    def add_node(class_name, name=""):
        if class_name == "vtkMRMLLabelMapVolumeNode":
            scene.append(VolumeNode(np.zeros((0, 0, 0), np.int16), np.eye(4), name, class_name))
            return scene[-1]
        if class_name == "vtkMRMLNRRDStorageNode":  # kept apart: the tests' scene lists data nodes
            storage_id = f"vtkMRMLNRRDStorageNode{len(storages) + 1}"
            storage = types.SimpleNamespace(GetID=lambda: storage_id)
            storage.SetDefaultWriteFileExtension = lambda extension: setattr(storage, "extension", extension)
            storages[storage.GetID()] = storage
            return storage
        assert class_name == "vtkMRMLSegmentationNode"
        scene.append(SegmentationNode({}))
        return scene[-1]

    def load_segmentation(path):
        scene.append(SegmentationNode({}, name=Path(path).name.split(".")[0]))
        scene[-1].path = path
        return scene[-1]

    def temp_directory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):  # Slicer's: a new folder each call
        folder = Path(tempDir or temporary) / (key + (f"{len(list(Path(temporary).iterdir()))}" if includeDateTime
                                                      else ""))
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def update_volume(node, array):
        node.array = np.array(array)

    temporary = str(tmp_path / "slicer-temp")
    util.addVolumeFromArray = add_volume
    util.updateVolumeFromArray = update_volume
    util.setSliceViewerLayers = lambda **layers: slicer.layers.append(layers)
    util.tempDirectory = temp_directory
    util.startupEnvironment = lambda: dict(os.environ)
    util.loadSegmentation = load_segmentation
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
    slicer.mrmlScene = types.SimpleNamespace(
        Clear=scene.clear, AddNewNodeByClass=add_node, RemoveObserver=None, RemoveNode=scene.remove,
        GetFirstNodeByName=lambda name: next((node for node in scene if node.GetName() == name), None))
    slicer.layers = []  # every setSliceViewerLayers call
    slicer.app = types.SimpleNamespace(temporaryPath=temporary)
    slicer.vtkSegmentation = types.SimpleNamespace(SegmentAdded=SEGMENT_ADDED, SegmentRemoved=SEGMENT_REMOVED,
                                                   SegmentModified=SEGMENT_MODIFIED,
                                                   EXTENT_REFERENCE_GEOMETRY=EXTENT_REFERENCE_GEOMETRY)
    def export_labelmap(seg, segment_ids, labelmap, reference=None, extent=EXTENT_UNION_OF_EFFECTIVE_SEGMENTS):
        """vtkSlicerSegmentationsModuleLogic::ExportSegmentsToLabelmapNode without a reference volume: the segments
        painted 1, 2, ... (VTK_SHORT) on the segmentation's reference image geometry, its whole extent with
        EXTENT_REFERENCE_GEOMETRY, else cropped to the segments (vtkSegmentation::DetermineCommonLabelmapGeometry);
        a color table made for the labelmap is added to the scene."""
        assert reference is None, "the stand-in exports only onto the segmentation's own geometry"
        matrix, shape = seg.geometry
        labels = np.zeros(shape, np.int16)
        for value, n in enumerate(range(segment_ids.GetNumberOfValues()), 1):
            labels[seg.segmentation.segments[segment_ids.GetValue(n)][1]] = value
        if extent != EXTENT_REFERENCE_GEOMETRY:
            (k0, j0, i0), (k1, j1, i1) = np.argwhere(labels).min(axis=0), np.argwhere(labels).max(axis=0) + 1
            labels, matrix = labels[k0:k1, j0:j1, i0:i1], matrix.copy()
            matrix[:3, 3] = (seg.geometry[0] @ [i0, j0, k0, 1])[:3]
        labelmap.array, labelmap.matrix = labels, matrix
        color = VolumeNode(np.zeros((0, 0, 0)), np.eye(4), f"{seg.GetName()}_ColorTable", "vtkMRMLColorTableNode")
        scene.append(color)
        labelmap.display = types.SimpleNamespace(GetColorNode=lambda: color)
        return True

    segmentations_logic = types.SimpleNamespace(ImportLabelmapToSegmentationNode=import_labelmap,
                                                ExportSegmentsToLabelmapNode=export_labelmap)
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations_logic))
    slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLSegmentationNode = VolumeNode, SegmentationNode
    sh_node = types.SimpleNamespace(GetItemByDataNode=lambda node: id(node),
                                    SetItemAttribute=lambda item, key, value: hierarchy.setdefault(item, {}).update(
                                        {key: value}))
    slicer.vtkMRMLSubjectHierarchyNode = types.SimpleNamespace(GetSubjectHierarchyNode=lambda scene: sh_node)
    slicer.storages, slicer.hierarchy = storages, hierarchy  # (what the tests read back)
    for name, module in (("qt", qt), ("slicer", slicer), ("slicer.util", util), ("slicer.i18n", i18n),
                         ("slicer.parameterNodeWrapper", wrapper), ("slicer.ScriptedLoadableModule", scripted)):
        monkeypatch.setitem(sys.modules, name, module)
    return load_module(), scene, slicer


def load_module():
    """Execute CMRSynth.py as Slicer does when it loads the module (over the stand-in)."""
    spec = importlib.util.spec_from_file_location("CMRSynth", ROOT / "CMRSynth" / "CMRSynth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        "Segment_3": ("RV", np.broadcast_to(np.hypot(yy - 16, xx - 22) < 5, shape) & (r >= 8))},
        geometry=(ijk_to_ras, shape))
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
    model = catalogue.find_model("phantom-tiny-flow")
    assert [n.GetName() for n in synthetic] == [f"cine_synth_{model.vendors[0]}_5", f"cine_synth_{model.vendors[0]}_6"]
    for node, seed in zip(synthetic, (5, 6)):
        assert node.attributes["CMRSynth.generator"] == "flow" and node.attributes["CMRSynth.seed"] == str(seed)
        # what the CLI writes in its headers, carried into the NRRD a Save writes and the DICOM export's description
        assert node.attributes["CMRSynth.synthetic"] == "true" and node.attributes["descrip"].startswith("SYNTHETIC")
        assert slicer.storages[node.storage_id].extension == "nrrd"
        assert slicer.hierarchy[id(node)]["DICOM.SeriesDescription"] == node.attributes["descrip"][:64]
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
    assert node.attributes["CMRSynth.synthetic"] == "true" and node.attributes["descrip"].startswith("SYNTHETIC")
    assert slicer.storages[node.storage_id].extension == "nrrd"  # NRRD: every attribute goes into the header
    assert slicer.hierarchy[id(node)]["DICOM.SeriesDescription"].startswith("SYNTHETIC CMRSynth")
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
    monkeypatch.setattr(dependencies, "unmet", lambda requirements: [] if requirements == [dependencies.TORCH] else ["foo>=1"])
    with pytest.raises(RuntimeError, match="not installed yet: foo>=1"):
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
    with pytest.raises(RuntimeError, match="not installed yet"):
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
    assert segmentation.path == str(Path(started[0].out) / "anatomy000_HCM_any_4_mask.nii.gz")
    assert segmentation.attributes["CMRSynth.synthetic"] == "true" and segmentation.attributes["CMRSynth.anatomy"] == "true"
    assert slicer.hierarchy[id(segmentation)]["DICOM.SeriesDescription"].startswith("SYNTHETIC")
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


# -- Slicer version, self-test, first-use installs --------------------------------------------------------------
def test_an_older_slicer_is_refused_in_words_at_module_load(stub_slicer, monkeypatch):
    module, scene, slicer = stub_slicer
    assert module.unsupportedPythonMessage((3, 10, 0)) == "" and module.unsupportedPythonMessage((3, 12, 10)) == ""
    message = module.unsupportedPythonMessage((3, 9, 18))
    assert "needs 3D Slicer 5.10 or later" in message and "runs Python 3.9" in message
    monkeypatch.setattr(sys, "version_info", (3, 9, 18, "final", 0))  # Slicer 5.8's Python
    with pytest.raises(ImportError, match=r"needs 3D Slicer 5\.10 or later .* runs Python 3\.9"):
        load_module()


def test_python_3_9_can_parse_the_module_and_meets_the_check_before_the_library():
    tree = ast.parse((ROOT / "CMRSynth" / "CMRSynth.py").read_text(encoding="utf-8"), feature_version=(3, 9))
    check = next(i for i, node in enumerate(tree.body)
                 if isinstance(node, ast.If) and "unsupportedPythonMessage" in ast.unparse(node.test))
    library = [i for i, node in enumerate(tree.body)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("CMRSynthLib")]
    assert library and check < min(library)  # nothing of CMRSynthLib (3.10+) runs before the refusal


def test_the_self_test_skips_naming_what_is_missing(stub_slicer, monkeypatch):
    """ctest in an extension build, where CMRSynth's packages are not installed: skipped in words, not failed."""
    module, scene, slicer = stub_slicer
    monkeypatch.setattr(dependencies, "unmet",
                        lambda requirements: [r for r in requirements if r.split(">")[0] in ("torch", "opacus")])
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(module.CMRSynthTest)  # as slicer.testing.runUnitTest
    result = unittest.TestResult()
    suite.run(result)
    assert result.wasSuccessful() and result.testsRun == 1 and len(result.skipped) == 1
    reason = result.skipped[0][1]
    assert "not installed" in reason and "torch" in reason and "opacus>=1.5" in reason and "monai" not in reason
    assert scene == []  # nothing was attempted


def test_reload_and_test_reports_a_skip_not_a_failure(stub_slicer, monkeypatch):
    """Reload and Test: ScriptedLoadableModule.runTest → testCase.runTest() inside tryWithErrorDisplay("Reload and
    Test failed.") (Base/Python/slicer/ScriptedLoadableModule.py): any exception out of runTest is a failure."""
    module, scene, slicer = stub_slicer
    monkeypatch.setattr(dependencies, "unmet", lambda requirements: [r for r in requirements if "opacus" in r])
    shown = []
    test = module.CMRSynthTest()
    test.delayDisplay = shown.append
    test.runTest()  # raises nothing
    assert len(shown) == 1 and shown[0].startswith("Skipped test_generate_keeps_reference_geometry: ")
    assert "opacus>=1.5" in shown[0]


def test_train_and_audit_tabs_ask_for_the_packages_before_their_first_job(stub_slicer, monkeypatch, tmp_path):
    from CMRSynthLib.gui.panel import AuditTab, TrainTab

    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    monkeypatch.setattr(dependencies, "unmet", lambda requirements: [] if requirements == [dependencies.TORCH] else ["opacus>=1.5"])
    asked = []
    slicer.util.confirmOkCancelDisplay = lambda text, **options: asked.append(text) or False
    context = logic.jobContext(interactive=True)  # what the widget gives the Train & DP and Audit tabs
    train, audit = TrainTab(context), AuditTab(context)
    train.data.set_path(str(tmp_path))
    train.train()
    assert "opacus>=1.5" in asked[0] and "installation declined" in train.job.status.text()
    audit.data.set_path(str(tmp_path))
    audit.run()
    assert len(asked) == 2 and "installation declined" in audit.job.status.text()
    assert not train.runner.running and not audit.runner.running
    assert context.python == logic.python and context.model_folder() == str(tmp_path / "models")


def test_an_installation_that_fails_is_shown_in_words_on_every_tab(stub_slicer, monkeypatch, tmp_path):
    """pip (and the PyTorch installer) raise CalledProcessError: slicer.util's logProcessOutput,
    ``raise CalledProcessError(retcode, proc.args, ...)`` in Base/Python/slicer/util.py. Behind a proxy."""
    import subprocess

    from CMRSynthLib.gui.panel import AuditTab, TrainTab

    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    monkeypatch.setattr(dependencies, "unmet", lambda requirements: [] if requirements == [dependencies.TORCH]
                        else ["opacus>=1.5"])
    slicer.util.confirmOkCancelDisplay = lambda text, **options: True

    def pip_install(arguments):
        raise subprocess.CalledProcessError(1, ["pip", "install", *arguments])

    slicer.util.pip_install = pip_install
    context = logic.jobContext(interactive=True)
    train, audit = TrainTab(context), AuditTab(context)
    train.data.set_path(str(tmp_path))
    audit.data.set_path(str(tmp_path))
    train.train()
    audit.run()
    for tab in (train, audit):
        text = tab.job.status.text()
        assert "Installing opacus>=1.5 failed" in text and "exit code 1" in text and "proxy" in text
        assert not tab.runner.running


class PyTorchUtilsStub(types.ModuleType):
    """PyTorchUtils as SlicerPyTorch has it: torchInstalled() imports torch (PyTorchUtils.py, torchInstalled)."""

    def __init__(self, install):
        super().__init__("PyTorchUtils")
        calls = self.calls = []

        class PyTorchUtilsLogic:
            def torchInstalled(self):
                import torch  # noqa: F401

                return True

            def installTorch(self, **options):
                calls.append(options)
                install()

        self.PyTorchUtilsLogic = PyTorchUtilsLogic


def test_torch_is_found_without_importing_it_and_its_version_is_checked(stub_slicer, monkeypatch, tmp_path):
    import importlib.metadata
    import subprocess

    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    utils = PyTorchUtilsStub(install=lambda: None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", utils)
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` in this process now fails
    logic.ensureDependencies(interactive=False)  # found by its metadata, never imported
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.0.1" if name == "torch" else real_version(name))
    with pytest.raises(RuntimeError, match=r"needs PyTorch \(torch>=2\.2\) and this Slicer has PyTorch 2\.0\.1"):
        logic.ensureDependencies(interactive=False)
    with pytest.raises(RuntimeError, match=r"without PyTorch >=2\.2 \(installation declined or failed\)"):
        logic.ensureDependencies(interactive=True)  # the installer ran, torch is still 2.0.1
    assert utils.calls == [{"askConfirmation": True, "torchVersionRequirement": ">=2.2"}]

    def fail():
        raise subprocess.CalledProcessError(2, ["light_the_torch", "install"])

    monkeypatch.setitem(sys.modules, "PyTorchUtils", PyTorchUtilsStub(install=fail))
    with pytest.raises(RuntimeError, match="Installing PyTorch failed: the installer stopped with exit code 2"):
        logic.ensureDependencies(interactive=True)


def test_the_privacy_planner_never_opens_an_install_prompt(stub_slicer, monkeypatch, tmp_path):
    """Ticking DP or editing ε, δ or the batch runs the planner: it says what is missing, the Train button asks."""
    from CMRSynthLib.gui.panel import TrainTab

    module, scene, slicer = stub_slicer
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    monkeypatch.setattr(dependencies, "unmet", lambda requirements: [] if requirements == [dependencies.TORCH]
                        else ["opacus>=1.5"])
    asked = []
    slicer.util.confirmOkCancelDisplay = lambda text, **options: asked.append(text) or False
    train = TrainTab(logic.jobContext(interactive=True))
    train.dp.setChecked(True)
    train.epsilon.setValue(3.0)
    train.update_plan()
    assert asked == [] and "not installed yet: opacus>=1.5" in train.plan.text() and not train.planner.running
    train.data.set_path(str(tmp_path))
    train.train()
    assert len(asked) == 1 and "installation declined" in train.job.status.text()


# -- the widget (its Generate tab) over PythonQt-like stand-ins ---------------------------------------------------
class Combo:
    """A QComboBox as PythonQt shows it: Qt properties are attributes (currentIndex, currentText, count)."""

    def __init__(self):
        self.items, self.currentIndex, self.enabled = [], -1, True

    def blockSignals(self, blocked):
        return False

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        self.currentIndex = max(self.currentIndex, 0)

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def findText(self, text):
        return next((i for i, (t, _) in enumerate(self.items) if t == text), -1)

    def itemData(self, index):
        return self.items[index][1]

    def itemText(self, index):
        return self.items[index][0]

    @property
    def texts(self):
        return [text for text, _ in self.items]

    @property
    def count(self):
        return len(self.items)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if self.items else None

    @property
    def currentText(self):
        return self.items[self.currentIndex][0] if self.items else ""


def card(folder, *, vendors, groups=(), dataset=None):
    folder.mkdir(parents=True)
    content = {"family": "flow", "vocabulary": {"vendors": list(vendors), "groups": list(groups)},
               "data": {"simulated": dataset is None}, "members": ["p1", "p2"]}
    if dataset:
        content["dataset"] = dataset
    (folder / "card.json").write_text(json.dumps(content))
    return folder


@pytest.fixture
def widget(stub_slicer, tmp_path):
    """CMRSynthWidget with stand-in ui widgets, a real Logic, the real Train & DP and Audit tabs, a parameter node."""
    from CMRSynthLib.gui.panel import AuditTab, TrainTab

    module, scene, slicer = stub_slicer
    w = module.CMRSynthWidget()
    w.ui = types.SimpleNamespace(
        modelCardLabel=types.SimpleNamespace(text="", toolTip=""), modelComboBox=Combo(), vendorComboBox=Combo(),
        groupComboBox=Combo(), lvSegmentComboBox=Combo(), myoSegmentComboBox=Combo(), rvSegmentComboBox=Combo(),
        generateButton=types.SimpleNamespace(enabled=False), restyleButton=types.SimpleNamespace(enabled=False),
        statusLabel=types.SimpleNamespace(text=""),
        cancelButton=types.SimpleNamespace(enabled=False))
    w.logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    w.logic.python = sys.executable
    context = w.logic.jobContext()
    w.trainTab, w.auditTab = TrainTab(context), AuditTab(context)
    node = module.CMRSynthParameterNode()
    node.segmentation = node.referenceVolume = None
    node.modelFolder = tmp_path / "models"
    w._parameterNode = node
    yield w
    for tab in (w.trainTab, w.auditTab):
        tab.stop_jobs()


ACDC = json.loads((ROOT / "Resources" / "models" / DEFAULT_MODEL / "card.json").read_text(encoding="utf-8"))["dataset"]  # the shipped card's record


def test_generate_shows_the_models_data_and_offers_only_its_vendors_and_groups(widget, tmp_path):
    acdc = card(tmp_path / "models" / "acdc-flow", vendors=["Siemens"], groups=["NOR", "DCM"], dataset=ACDC)
    node = widget._parameterNode
    node.model, node.vendor, node.group = str(acdc), "GE", "HCM"  # chosen for another model
    widget.onParameterNodeModified()
    assert widget.ui.modelCardLabel.text.startswith(f"flow · trained on ACDC ({ACDC['license']}), 2 patients")
    assert f"Cite: {ACDC['citation']}" in widget.ui.modelCardLabel.toolTip
    assert f"Spacing: {ACDC['spacing']}" in widget.ui.modelCardLabel.toolTip
    assert widget.ui.vendorComboBox.texts == ["", "Siemens"] and widget.ui.groupComboBox.texts == ["", "NOR", "DCM"]
    assert node.vendor == "" and node.group == ""  # what this model does not know is not kept
    phantom = next(m for m in widget.logic.models() if m.starter and m.simulated and m.family == "flow")
    node.model = phantom.argument
    widget.onParameterNodeModified()
    assert "trained on a simulated phantom" in widget.ui.modelCardLabel.text
    assert widget.ui.vendorComboBox.texts == ["", *phantom.vendors]


def test_changing_the_model_folder_refreshes_every_model_list(widget, tmp_path):
    widget.onParameterNodeModified()
    assert str(tmp_path / "elsewhere" / "mine") not in widget.ui.modelComboBox.texts
    card(tmp_path / "elsewhere" / "mine", vendors=["GE"])
    widget._parameterNode.modelFolder = tmp_path / "elsewhere"
    widget.onParameterNodeModified()
    assert "mine (flow)" in widget.ui.modelComboBox.texts
    assert str(tmp_path / "elsewhere" / "mine") in [m.argument for m in widget.auditTab.model.models]
    assert widget.trainTab.settings().out.startswith(str(tmp_path / "elsewhere"))


def test_segment_lists_follow_segments_added_renamed_and_removed(widget, heart):
    reference, segmentation_node = heart
    node = widget._parameterNode
    node.segmentation, node.referenceVolume = segmentation_node, reference
    widget.onParameterNodeModified()
    segmentation = segmentation_node.GetSegmentation()
    lists = widget.ui.lvSegmentComboBox
    assert lists.texts == ["(none)", "Left ventricle", "Myocardium", "RV"] and node.lvSegment == "Segment_1"
    segmentation.add("Segment_4", "Scar", segmentation.segments["Segment_2"][1])
    assert lists.texts[-1] == "Scar"
    segmentation.rename("Segment_3", "Right ventricle")
    assert widget.ui.rvSegmentComboBox.texts == ["(none)", "Left ventricle", "Myocardium", "Right ventricle", "Scar"]
    segmentation.remove("Segment_1")
    assert node.lvSegment == "" and "Left ventricle" not in lists.texts  # no longer mapped to a missing segment
    other = SegmentationNode({})
    node.segmentation = other
    widget.onParameterNodeModified()
    assert segmentation.observers == {} and len(other.GetSegmentation().observers) == 3  # follows the new one only


def test_cleanup_ends_every_tabs_job_and_the_generate_jobs_files(stub_slicer, widget, tmp_path):
    from CMRSynthLib.gui.jobs import JobRunner
    from CMRSynthLib.gui.qt import QtCore

    module, scene, slicer = stub_slicer
    sleeper = [sys.executable, "-c", "import os, time; os.setpgid(0, 0); print(os.getpid(), flush=True); time.sleep(60)"]
    pids = []
    work = tmp_path / "slicer-temp" / "CMRSynth-job"
    work.mkdir()
    generate = JobRunner()
    widget._job = module.CMRSynthJob(generate, str(work), complete=lambda status: None)
    widget._parameterNode = None  # (the stand-in node has no GUI connection to drop)
    runners = [generate, widget.trainTab.runner, widget.trainTab.planner, widget.auditTab.runner]
    for runner in runners:
        runner.on("log", lambda status, line: pids.append(int(line)))
        runner.start(sleeper)
    while len(pids) < len(runners):
        QtCore.QCoreApplication.processEvents()
    widget.cleanup()  # Slicer quits
    assert all(not runner.running for runner in runners)
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _running(pid)] == []
    assert not work.exists()  # the Generate job's temporary folder went with it


def _running(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0] != "Z"


def test_the_default_model_is_the_librarys_and_restyle_is_offered_for_it(widget, heart):
    """One default: Logic.generate/restyle default to CMRSynthLib.DEFAULT_MODEL, and Restyle is enabled for every
    family whose generator can invert (the LDM is flow matching in a latent); shipped cards only."""
    import inspect

    from CMRSynthLib.generators import generator_class
    from CMRSynthLib.gui.controller import GENERATORS, RESTYLE_FAMILIES

    logic = type(widget.logic)
    for method in (logic.generate, logic.restyle):
        assert inspect.signature(method).parameters["model"].default == DEFAULT_MODEL
    assert set(RESTYLE_FAMILIES) == {f for f in GENERATORS if hasattr(generator_class(f), "restyle")}
    reference, segmentation = heart
    node = widget._parameterNode
    node.segmentation, node.referenceVolume = segmentation, reference
    starters = {m.name: m for m in widget.logic.models() if m.starter and m.family in GENERATORS}
    assert starters[DEFAULT_MODEL].family == "ldm"
    for name, info in starters.items():
        node.model = info.argument
        widget.onParameterNodeModified()
        assert widget.ui.restyleButton.enabled == (info.family in ("flow", "ldm")), name


def test_the_reference_is_the_segmentations_own_grid_and_any_other_is_said(stub_slicer, widget, heart, monkeypatch):
    """Item 4: the default reference is the volume the segmentation names (its reference image geometry node),
    never the scene's first volume; without one Generate uses the segmentation's own geometry and says so (Restyle,
    which restyles a volume, stays off); another volume's grid is named."""
    module, scene, slicer = stub_slicer
    reference, segmentation = heart
    labelmap = VolumeNode(np.zeros((3, 32, 32)), np.eye(4), "labels", "vtkMRMLLabelMapVolumeNode")
    monkeypatch.setattr(slicer.mrmlScene, "GetFirstNodeByClass",
                        lambda class_name: labelmap if "Volume" in class_name else segmentation, raising=False)
    widget.logic.getParameterNode = lambda: widget._parameterNode
    widget.setParameterNode = lambda node: None
    widget.initializeParameterNode()
    widget.refreshModels()
    node = widget._parameterNode
    assert node.segmentation is segmentation and node.referenceVolume is None  # not the hidden labelmap
    widget.onParameterNodeModified()
    assert widget.ui.generateButton.enabled and not widget.ui.restyleButton.enabled
    assert widget.ui.statusLabel.text == ("The images will be on the geometry Segmentation was drawn on (no reference "
                                          "volume is chosen; Restyle needs one).")
    segmentation.references["referenceImageGeometryRef"] = reference
    node.referenceVolume = None
    widget.initializeParameterNode()
    widget.onParameterNodeModified()
    assert node.referenceVolume is reference and widget.ui.generateButton.enabled and widget.ui.statusLabel.text == ""
    node.referenceVolume = labelmap
    widget.onParameterNodeModified()
    assert widget.ui.statusLabel.text == ("The images will be on labels's grid, not on cine, the volume Segmentation "
                                          "was drawn on.")


def test_a_segmentation_without_a_volume_generates_on_its_own_geometry(stub_slicer, heart, tmp_path):
    """Issue 29: a segmentation that names no volume (a .seg.nrrd loaded alone) generates: its segments are exported
    to a labelmap on its reference image geometry, whole extent, whose grid the images get (not the segments' box);
    the labelmap and the color table the export made leave the scene."""
    module, scene, slicer = stub_slicer
    reference, segmentation = heart
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is None
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    logic.python = sys.executable
    nodes = logic.generate(segmentation, None, model=starter().name, seed=4, steps=2, device="cpu")
    assert scene == nodes and [n.GetName()[:len("Segmentation_synth_")] for n in nodes] == ["Segmentation_synth_"]
    assert nodes[0].array.shape == reference.array.shape and np.allclose(nodes[0].matrix, reference.matrix, atol=1e-4)
    mask = tmp_path / "mask.nii.gz"
    structures = {LV: "Segment_1", MYO: "Segment_2", RV: "Segment_3"}
    assert module.writeMask(segmentation, None, structures, str(mask)) == 0 and scene == nodes
    labels = read_volume(mask)
    expected = sum(label * segmentation.segmentation.segments[segment][1] for label, segment in structures.items())
    assert np.array_equal(labels.array, expected) and np.allclose(labels.ijk_to_ras, reference.matrix, atol=1e-4)


# -- the reader study in the Red slice view -------------------------------------------------------------------
# Slicer's Red view is axial: its slice-to-RAS orientation (vtkMRMLSliceNode::GetAxialSliceToRASMatrix with
# patientRightIsScreenLeft) sends the screen's x (rightward) to the patient's left (-R) and its y (upward) to
# anterior (+A). Screen x = its first row · RAS, screen y = its second row · RAS (the matrix is orthonormal).
AXIAL_SLICE_TO_RAS = np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])


def red_view_corners(ijk_to_ras, rows, columns):
    """Which voxel (row, column) of a one-slice volume the Red view shows at its top-left, top-right, bottom-left
    and bottom-right corners, from the volume's IJK-to-RAS matrix alone."""
    corners = [(j, i) for j in (0, rows - 1) for i in (0, columns - 1)]
    screen = {corner: AXIAL_SLICE_TO_RAS.T @ (ijk_to_ras @ [corner[1], corner[0], 0, 1])[:3] for corner in corners}
    left, right = min(x for x, _, _ in screen.values()), max(x for x, _, _ in screen.values())
    bottom, top = min(y for _, y, _ in screen.values()), max(y for _, y, _ in screen.values())
    at = {(x, y): corner for corner, (x, y, _) in screen.items()}
    return at[left, top], at[right, top], at[left, bottom], at[right, bottom]


def test_the_red_view_corners_of_the_matrices_that_matter():
    """The geometry check itself: identity (the module before issue 29) turns the slice 180°; ITK's identity
    direction as RAS (a NIfTI slice as ssl4mis reads ACDC) puts the array's [0, 0] top-left."""
    from CMRSynthLib.data.conventions import LPS_TO_RAS

    rows, columns = 3, 5
    assert red_view_corners(np.eye(4), rows, columns) == ((2, 4), (2, 0), (0, 4), (0, 0))
    assert red_view_corners(LPS_TO_RAS, rows, columns) == ((0, 0), (0, 4), (2, 0), (2, 4))
    # [0, 0] lands on RAS (0, 0, 0), the slice's most right and most anterior corner: patient right is screen left,
    # anterior is up
    ras = {(j, i): (LPS_TO_RAS @ [i, j, 0, 1])[:3] for j in (0, rows - 1) for i in (0, columns - 1)}
    assert max(ras, key=lambda corner: (ras[corner][0], ras[corner][1])) == (0, 0)


def test_a_reader_study_slice_shows_the_same_way_up_in_slicer_as_in_the_standalone_tab(stub_slicer, tmp_path):
    """Issue 29: reader-study slices were turned 180° in Slicer. The same study, one tab drawing the slice itself
    (standalone) and one handing it to the module's Logic: the four corners show the same pixels."""
    from CMRSynthLib.data.volume import Volume, write_volume
    from CMRSynthLib.gui import reader_study as rs
    from CMRSynthLib.gui.reader_tab import ReaderStudyTab

    module, scene, slicer = stub_slicer
    quadrants = np.zeros((40, 60), np.float32)  # rows × columns, four distinct corners (and no transpose)
    quadrants[:20, 30:], quadrants[20:, :30], quadrants[20:, 30:] = 1.0, 2.0, 3.0
    for truth in ("real", "synthetic"):
        (tmp_path / truth).mkdir()
        write_volume(Volume(np.stack([quadrants] * 3), np.diag([-1.5, -1.5, 8.0, 1.0])), tmp_path / truth / "v.nii.gz")
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    standalone, inSlicer = ReaderStudyTab(), ReaderStudyTab(show_slice=logic.showReaderSlice)
    for tab in (standalone, inSlicer):
        tab.real.set_path(str(tmp_path / "real"))
        tab.synthetic.set_path(str(tmp_path / "synthetic"))
        tab.per_class.setValue(1)
        tab.reader.setText("A")
        tab.results.set_path(str(tmp_path / f"{id(tab)}.csv"))
        tab.start()
    expected = rs.display_image(quadrants)
    drawn = standalone.image.pixmap().toImage()
    w, h = drawn.width() - 1, drawn.height() - 1
    on_screen = [drawn.pixelColor(x, y).red() for x, y in ((0, 0), (w, 0), (0, h), (w, h))]
    assert on_screen == [expected[0, 0], expected[0, -1], expected[-1, 0], expected[-1, -1]]  # row 0 on top
    node = scene[-1]
    assert slicer.layers[-1]["background"] is node and node.array.shape == (1, 40, 60)
    corners = red_view_corners(node.matrix, 40, 60)
    assert [node.array[0, j, i] for j, i in corners] == on_screen
    inSlicer.answer("real")  # the next slice reuses the node and keeps it the same way up
    assert scene == [node] and red_view_corners(node.matrix, 40, 60) == ((0, 0), (0, 59), (39, 0), (39, 59))
