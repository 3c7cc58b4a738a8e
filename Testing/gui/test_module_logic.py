"""CMRSynth.py's Logic executed here, over a small stand-in for Slicer's scene API.

The stand-in implements only the handful of ``slicer.util`` functions the Logic calls, with the documented
semantics (KJI arrays, IJK-to-RAS matrices, segment arrays resampled to the reference geometry — here the
segments already lie on it). It proves that the Logic's own code runs: mask export, the real ``cmrsynth
sample`` job with the starter model, node names and attributes, cleanup, cancel, dependency checks. It proves
nothing about Slicer itself; that is what the module's self-test is for (run inside Slicer).
"""

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import vtk

from CMRSynthLib.data.conventions import LV, MYO, RV
from CMRSynthLib.gui import catalogue, dependencies

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses POSIX process groups")


class VolumeNode:
    def __init__(self, array, ijk_to_ras, name):
        self.array, self.matrix, self.name, self.attributes = array, np.asarray(ijk_to_ras, float), name, {}

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


class Segmentation:
    def __init__(self, segments):
        self.segments = segments  # id → (name, binary KJI array on the reference grid)

    def GetNumberOfSegments(self):
        return len(self.segments)

    def GetNthSegmentID(self, index):
        return list(self.segments)[index]

    def GetNthSegment(self, index):
        return Segment(self.segments[self.GetNthSegmentID(index)][0])


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

    def add_volume(array, ijkToRAS=None, name=None, nodeClassName=None):
        node = VolumeNode(np.array(array), np.eye(4) if ijkToRAS is None else ijkToRAS, name)
        scene.append(node)
        return node

    util.addVolumeFromArray = add_volume
    util.tempDirectory = lambda: str(tmp_path / "slicer-temp")
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
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *a: None}))
    slicer.util, slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule = util, i18n, wrapper, scripted
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


def test_generate_adds_named_volumes_on_the_reference_geometry(stub_slicer, heart, tmp_path):
    module, scene, slicer = stub_slicer
    reference, segmentation = heart
    model = starter()
    logic = module.CMRSynthLogic(modelFolder=tmp_path / "models")
    logic.python = sys.executable
    vendor = model.vendors[-1]
    nodes = logic.generate(segmentation, reference, model=model.name, vendor=vendor, count=2, seed=5, steps=2,
                           device="cpu")
    assert [n.GetName() for n in nodes] == [f"cine_synth_{vendor}_5", f"cine_synth_{vendor}_6"] and scene == nodes
    for node, seed in zip(nodes, (5, 6)):
        assert node.array.shape == reference.array.shape and np.allclose(node.matrix, reference.matrix, atol=1e-4)
        assert node.attributes["CMRSynth.generator"] == "flow" and node.attributes["CMRSynth.seed"] == str(seed)
        assert node.attributes["CMRSynth.modelId"] == model.model_id
        assert node.attributes["CMRSynth.synthetic"] == "true" and node.attributes["CMRSynth.epsilon"] == "none"
    assert not np.array_equal(nodes[0].array, nodes[1].array)  # two seeds, two images
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
        logic.ensureDependencies(interactive=False)  # Slicer < 5.11, no dialog allowed: say what is missing
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda requirements, **options: calls.append((requirements, options))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    slicer.packaging = packaging
    logic.ensureDependencies(interactive=False)
    (requirements, options), = calls
    assert requirements == ["foo>=1"] and options["prompt_install"] is False and options["requester"] == "CMRSynth"
    pins = Path(options["constraints"]).read_text()
    assert "numpy==" in pins and "SimpleITK==" in pins and "torch==" in pins


def test_jobs_find_the_bundled_library(stub_slicer, tmp_path):
    module, scene, slicer = stub_slicer
    env = module.CMRSynthLogic(modelFolder=tmp_path).environment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT / "CMRSynth")
