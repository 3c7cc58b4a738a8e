"""CMRSynth for 3D Slicer: synthetic cardiac MRI from a segmentation, in a chosen scanner vendor's style.

Slicer glue only (DESIGN §1). The engine (CMRSynthLib) runs in its own ``cmrsynth`` process, started and
followed by CMRSynthLib.gui (the same runner, controller and tabs as the standalone ``cmrsynth gui``).
This file converts scene nodes to files and back (section "Scene <-> files"), and holds Slicer's four
classes: Module, Widget, Logic (works from the Python console; never touches a widget) and Test.
"""

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from packaging.requirements import Requirement
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

MINIMUM_PYTHON = (3, 10)  # CMRSynthLib's annotations (X | None) need it; Slicer 5.10 ships 3.12, Slicer 5.8 ships 3.9


def unsupportedPythonMessage(versionInfo=sys.version_info) -> str:
    """Why this Slicer cannot run CMRSynth (its Python is too old), or "" when it can."""
    if tuple(versionInfo[:2]) >= MINIMUM_PYTHON:
        return ""
    return (f"CMRSynth needs 3D Slicer 5.10 or later (Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or later); "
            f"this Slicer runs Python {versionInfo[0]}.{versionInfo[1]}. Install a current 3D Slicer from "
            "https://download.slicer.org and CMRSynth from its Extensions Manager.")


if unsupportedPythonMessage():  # refuse here, in words, before the library fails to import in its own way
    raise ImportError(unsupportedPythonMessage())

from CMRSynthLib import DEFAULT_MODEL  # noqa: E402 (after the version check)
from CMRSynthLib.data.conventions import LV, MYO, RV  # noqa: E402
from CMRSynthLib.data.volume import Volume, read_volume, write_volume  # noqa: E402
from CMRSynthLib.gui import catalogue, controller, dependencies, reader_study, scene  # noqa: E402
from CMRSynthLib.gui.controller import JobState  # noqa: E402
from CMRSynthLib.gui.jobs import JobRunner  # noqa: E402

STRUCTURES = (LV, MYO, RV)
SEGMENT_FIELDS = {LV: "lvSegment", MYO: "myoSegment", RV: "rvSegment"}
ATTRIBUTE_PREFIX = "CMRSynth."
CONTRIBUTORS = ["CMRSynth maintainers (CMRSynth project)"]
REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "requirements.txt")


#
# Module
#
class CMRSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CMRSynth")
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Synthetic cardiac MRI from a heart segmentation, in the style of a chosen scanner vendor "
            "(DDPM, latent diffusion, flow matching), trained with differential privacy and audited for "
            "fidelity, utility and privacy. Every long task runs as a separate <code>cmrsynth</code> process.")
        self.parent.acknowledgementText = _(
            "Synthetic images are labelled as synthetic in their node attributes and file headers. "
            "Each model's card names the data it learned from and that data's license; the panel shows them.")


#
# Parameter node: the single source of truth of the Generate tab
#
@parameterNodeWrapper
class CMRSynthParameterNode:
    segmentation: vtkMRMLSegmentationNode
    referenceVolume: vtkMRMLScalarVolumeNode
    lvSegment: str = ""
    myoSegment: str = ""
    rvSegment: str = ""
    model: str = ""
    vendor: str = ""
    count: Annotated[int, WithinRange(1, 64)] = 1
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    steps: Annotated[int, WithinRange(0, 1000)] = 0  # 0: the model's default
    sampler: str = ""
    guidance: Annotated[float, WithinRange(controller.GUIDANCE_MODEL_DEFAULT, 20.0)] = controller.GUIDANCE_MODEL_DEFAULT
    device: Annotated[str, Choice(list(controller.DEVICES))] = "auto"
    newAnatomy: Annotated[int, WithinRange(0, 64)] = 0
    group: str = ""  # the pathology group of new anatomy, among those the model knows
    modelFolder: Path = catalogue.default_model_folder()


#
# Widget
#
class CMRSynthWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._parameterObserverTag = None
        self._sceneObserverTags = []
        self._job = None
        self._updatingGUI = False
        self._observedSegmentation = None
        self._segmentationObserverTags = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CMRSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CMRSynthLogic()

        self._sceneObserverTags = [
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose),
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose),
        ]
        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.restyleButton.connect("clicked(bool)", self.onRestyleButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.modelBrowseButton.connect("clicked(bool)", self.onModelBrowse)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.vendorComboBox.connect("currentIndexChanged(int)", self.onVendorChosen)
        self.ui.groupComboBox.connect("currentIndexChanged(int)", self.onGroupChosen)
        for label, combo in self._segmentCombos().items():
            combo.connect("currentIndexChanged(int)", lambda index, label=label: self.onSegmentChosen(label))

        # The tabs that work on files are the standalone panel's own, shared as they are.
        from CMRSynthLib.gui.panel import AuditTab, ReaderStudyTab, TrainTab

        context = self.logic.jobContext(interactive=True)  # every tab installs what jobs need on first use
        self.trainTab = TrainTab(context, on_model=lambda info: self.onModelsChanged())
        self.auditTab = AuditTab(context)
        self.readerTab = ReaderStudyTab(show_slice=self.logic.showReaderSlice)
        self.ui.tabs.addTab(self.trainTab, _("Train && DP"))
        self.ui.tabs.addTab(self.auditTab, _("Audit"))
        self.ui.tabs.addTab(self.readerTab, _("Reader study"))
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer quits or the module reloads: end every job (its whole process tree) and every observation."""
        for tag in self._sceneObserverTags:
            slicer.mrmlScene.RemoveObserver(tag)
        self.setParameterNode(None)
        self._observeSegmentation(None)
        if self._job is not None:
            self._job.runner.stop()
        for tab in (self.trainTab, self.auditTab):
            tab.stop_jobs()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ---------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        node = self._parameterNode
        if not node.segmentation:
            node.segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        if not node.referenceVolume and node.segmentation:  # its own grid, never the scene's first volume
            node.referenceVolume = self.logic.referenceVolumeFor(node.segmentation)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNode.RemoveObserver(self._parameterObserverTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._parameterObserverTag = self._parameterNode.AddObserver(
                vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.refreshModels()
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Fill the widgets the wrapper cannot bind (lists that depend on the scene or the model)."""
        node = self._parameterNode
        if node is None or self._updatingGUI:
            return
        self._updatingGUI = True  # filling the lists may set parameters, which calls this again
        try:
            self._updateGUIFromParameterNode(node)
        finally:
            self._updatingGUI = False

    def _updateGUIFromParameterNode(self, node) -> None:
        if Path(node.modelFolder) != self.logic.modelFolder:
            self.logic.modelFolder = Path(node.modelFolder)
            self.onModelsChanged()
        self._observeSegmentation(node.segmentation)
        self._fillSegmentCombos(node)
        info = self._chosenModel()
        self.ui.modelCardLabel.text = info.describe() if info else _("No model found: train one or add a folder.")
        self.ui.modelCardLabel.toolTip = info.details() if info else ""
        # only the conditions the model knows ("": no vendor style / any group)
        for field, combo, known in (("vendor", self.ui.vendorComboBox, info.vendors if info else ()),
                                    ("group", self.ui.groupComboBox, info.groups if info else ())):
            chosen = _setItems(combo, ["", *known], getattr(node, field))
            if chosen != getattr(node, field):  # a vendor or group this model does not know is not kept
                setattr(node, field, chosen)
        idle = bool(info and self._job is None)
        if self._job is None and node.newAnatomy == 0:
            self.ui.statusLabel.text = self.logic.referenceNote(node.segmentation, node.referenceVolume)
        self.ui.generateButton.enabled = idle and bool(node.segmentation or node.newAnatomy > 0)
        self.ui.restyleButton.enabled = (idle and bool(node.segmentation and node.referenceVolume)
                                         and info.family in controller.RESTYLE_FAMILIES)
        self.ui.cancelButton.enabled = self._job is not None

    def _segmentCombos(self):
        return {LV: self.ui.lvSegmentComboBox, MYO: self.ui.myoSegmentComboBox, RV: self.ui.rvSegmentComboBox}

    def _observeSegmentation(self, segmentationNode) -> None:
        """Follow the chosen segmentation: segments added, removed or renamed refill the segment lists."""
        segmentation = segmentationNode.GetSegmentation() if segmentationNode else None
        if segmentation is self._observedSegmentation:
            return
        for tag in self._segmentationObserverTags:
            self._observedSegmentation.RemoveObserver(tag)
        self._observedSegmentation, self._segmentationObserverTags = segmentation, []
        if segmentation is not None:
            self._segmentationObserverTags = [
                segmentation.AddObserver(event, self.onParameterNodeModified)
                for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                              slicer.vtkSegmentation.SegmentModified)]

    def _fillSegmentCombos(self, node) -> None:
        segments = self.logic.segments(node.segmentation) if node.segmentation else {}
        for field in SEGMENT_FIELDS.values():  # a mapped segment that was removed is no longer mapped
            if getattr(node, field) and getattr(node, field) not in segments:
                setattr(node, field, "")
        if segments and not any(getattr(node, field) in segments for field in SEGMENT_FIELDS.values()):
            for label, segmentId in scene.guess_mapping(segments).items():
                setattr(node, SEGMENT_FIELDS[label], segmentId)
        for label, combo in self._segmentCombos().items():
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(_("(none)"), "")
            for segmentId, (name, _terminology) in segments.items():
                combo.addItem(name, segmentId)
            combo.currentIndex = max(combo.findData(getattr(node, SEGMENT_FIELDS[label])), 0)
            combo.blockSignals(False)

    def onSegmentChosen(self, label) -> None:
        if self._parameterNode:
            setattr(self._parameterNode, SEGMENT_FIELDS[label], self._segmentCombos()[label].currentData or "")

    def onModelsChanged(self) -> None:
        """The model folder changed or a model was trained: every model list reads it again."""
        self.refreshModels()
        self.auditTab.refresh_models()

    def refreshModels(self) -> None:
        node = self._parameterNode
        models = [info for info in self.logic.models() if info.family in controller.GENERATORS]  # no stage-1 model
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for info in models:
            combo.addItem(f"{info.name} ({info.family})", info.argument)
        if node is not None and node.model and combo.findData(node.model) < 0 and Path(node.model).is_dir():
            combo.addItem(Path(node.model).name, node.model)
        combo.currentIndex = max(combo.findData(node.model), 0) if node is not None else 0
        combo.blockSignals(False)
        if node is not None and combo.count and not node.model:
            node.model = combo.currentData

    def _chosenModel(self):
        argument = self._parameterNode.model if self._parameterNode else ""
        if not argument:
            return None
        try:
            return catalogue.find_model(argument, self.logic.modelFolder)
        except ValueError:
            return None

    def onModelChosen(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onVendorChosen(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.vendor = self.ui.vendorComboBox.itemText(index)

    def onGroupChosen(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.group = self.ui.groupComboBox.itemText(index)

    def onModelBrowse(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Choose a CMRSynth checkpoint folder"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("This folder is not a CMRSynth model."), waitCursor=True):
                catalogue.read_model(folder)
                self._parameterNode.model = folder
                self.refreshModels()

    # -- actions ------------------------------------------------------------------------------------
    def onGenerateButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to generate synthetic images."), waitCursor=True):
            self.logic.ensureDependencies(interactive=True)
            node = self._parameterNode
            job = self.logic.generate(
                node.segmentation, node.referenceVolume, model=node.model, vendor=node.vendor, count=node.count,
                seed=node.seed, steps=node.steps or None, sampler=node.sampler,
                guidance=controller.chosen_guidance(node.guidance),
                device=node.device, structures=self.logic.structuresFromParameterNode(node),
                newAnatomy=node.newAnatomy, group=node.group, wait=False)
            self._follow(job, onDone=self._showFirstVolume)

    def _showFirstVolume(self, nodes) -> None:
        """Show the first synthetic volume (new anatomy also returns segmentation nodes, shown by themselves)."""
        volumes = [node for node in nodes if node.IsA("vtkMRMLScalarVolumeNode")]
        if volumes:
            slicer.util.setSliceViewerLayers(background=volumes[0])

    def onRestyleButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to restyle the volume."), waitCursor=True):
            self.logic.ensureDependencies(interactive=True)
            node = self._parameterNode
            job = self.logic.restyle(node.referenceVolume, node.segmentation, vendor=node.vendor, model=node.model,
                                     structures=self.logic.structuresFromParameterNode(node),
                                     steps=node.steps or None, device=node.device, wait=False)
            self._follow(job, onDone=lambda volume: slicer.util.setSliceViewerLayers(background=volume))

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _follow(self, job, onDone) -> None:
        """Show a running job in the progress bar and status line; on success hand its result to ``onDone``."""
        self._job = job
        self.onParameterNodeModified()

        def onEvent(status, payload):
            fraction = status.fraction
            self.ui.progressBar.setRange(0, 0 if fraction is None else 1000)
            self.ui.progressBar.value = int(1000 * (fraction or 0))
            self.ui.statusLabel.text = status.summary()

        def onFinished(job):
            self._job = None
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = 1000 if job.status.state is JobState.DONE else 0
            self.ui.statusLabel.text = job.status.summary()
            self.onParameterNodeModified()
            if job.status.state is JobState.FAILED:
                slicer.util.errorDisplay(job.status.error, windowTitle=_("CMRSynth"))
            elif job.status.state is JobState.DONE:
                with slicer.util.tryWithErrorDisplay(_("Failed to show the results.")):
                    onDone(job.result())

        job.onEvent(onEvent)
        job.onFinished(onFinished)


#
# Scene <-> files: the one place that converts MRML nodes to CMRSynth files and back
#
def volumeFromNode(volumeNode) -> Volume:
    """A scalar volume node as a Volume (a copy of its voxels, its IJK-to-RAS matrix)."""
    if volumeNode.GetParentTransformNode() is not None:
        raise ValueError(f"{volumeNode.GetName()} is under a transform: harden the transform first")
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return Volume(slicer.util.arrayFromVolume(volumeNode).copy(), scene.matrix_to_array(matrix))


def writeMask(segmentationNode, referenceVolumeNode, structures, path) -> int:
    """Write the mapped segments as a canonical label map on the reference volume's geometry (None: on the
    segmentation's own reference image geometry, :func:`segmentationGeometry`); returns overlap voxels."""
    if referenceVolumeNode is None:
        with segmentationGeometry(segmentationNode, structures.values()) as labelmap:
            return writeMask(segmentationNode, labelmap, structures, path)
    reference = volumeFromNode(referenceVolumeNode)
    binaries = {label: slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
                for label, segmentId in structures.items()}
    mask, overlap = scene.mask_volume(binaries, reference.ijk_to_ras)
    write_volume(mask, path)
    return overlap


@contextlib.contextmanager
def segmentationGeometry(segmentationNode, segmentIds):
    """A temporary labelmap node of ``segmentIds`` on the segmentation's own reference image geometry, its whole
    extent: the grid of a segmentation that names no volume (a .seg.nrrd loaded alone, its volume deleted).

    Without a reference volume, ExportSegmentsToLabelmapNode takes the segmentation's reference image geometry
    (its conversion parameter) and, with EXTENT_REFERENCE_GEOMETRY, that geometry's whole extent, oversampled as
    the segments are (vtkSegmentation::DetermineCommonLabelmapGeometry, Libs/vtkSegmentationCore/vtkSegmentation.cxx).
    The node and the color table the export adds to the scene for it are removed afterwards, as
    slicer.util.arrayFromSegmentBinaryLabelmap removes its own temporary labelmap (Base/Python/slicer/util.py).
    """
    ids = vtk.vtkStringArray()
    for segmentId in segmentIds:
        ids.InsertNextValue(segmentId)
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__CMRSynth_geometry__")
    try:
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, None, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise RuntimeError(f"{segmentationNode.GetName()}'s segments could not be exported to a labelmap on its "
                               "reference geometry: choose a reference volume")
        yield labelmap
    finally:
        if labelmap.GetDisplayNode():
            slicer.mrmlScene.RemoveNode(labelmap.GetDisplayNode().GetColorNode())
        slicer.mrmlScene.RemoveNode(labelmap)


def addVolumeNode(path, name, attributes):
    """Load a CMRSynth output file as a new scalar volume node, marked synthetic (:func:`markSynthetic`)."""
    volume = read_volume(path)
    node = slicer.util.addVolumeFromArray(volume.array, ijkToRAS=volume.ijk_to_ras, name=name)
    markSynthetic(node, attributes, volume.metadata)
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLNRRDStorageNode")
    storage.SetDefaultWriteFileExtension("nrrd")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def markSynthetic(node, attributes, header):
    """Mark a node CMRSynth made as synthetic wherever a Save or a DICOM export looks.

    * node attributes ``CMRSynth.*`` (``CMRSynth.synthetic`` = true) and the output file's own header fields as the
      command line writes them (``descrip`` "SYNTHETIC CMRSynth ...", ``cmrsynth_*``);
    * a volume is saved through a vtkMRMLNRRDStorageNode, which writes every node attribute into the NRRD header
      ("pass down all MRML attributes to NRRD", Libs/MRML/Core/vtkMRMLNRRDStorageNode.cxx, WriteDataInternal);
    * the subject-hierarchy attribute ``DICOM.SeriesDescription``, which Slicer's DICOM export uses for the series
      description ("If series item contains tag then use that value",
      Modules/Scripted/DICOMLib/Widgets/qSlicerDICOMTagEditorWidget.cxx).
    """
    for key, value in {**attributes, "synthetic": "true"}.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    for key, value in header.items():
        node.SetAttribute(key, str(value))
    description = header.get("descrip") or f"SYNTHETIC CMRSynth {attributes.get('generator', '')} {node.GetName()}"
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    shNode.SetItemAttribute(shNode.GetItemByDataNode(node), "DICOM.SeriesDescription", description[:64])


@contextlib.contextmanager
def installation(what):
    """Turn an installer's failure into words. pip and the PyTorch installer raise subprocess.CalledProcessError
    (slicer.util.pip_install and PyTorchUtils' installTorch run _executePythonModule, whose logProcessOutput raises
    ``CalledProcessError(retcode, proc.args, ...)``: Base/Python/slicer/util.py), which the tabs would not show.
    Behind a hospital proxy this is the first thing a user meets."""
    try:
        yield
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"Installing {what} failed: the installer stopped with exit code {exc.returncode}. "
                           "Check the network connection (behind a hospital proxy, set HTTPS_PROXY before starting "
                           "Slicer); the installer's own messages are in the Python console.") from exc


#
# Logic
#
class CMRSynthJob:
    """A running ``cmrsynth`` job: ``status``, ``progress`` (0–1 or None), ``cancel()``, ``wait()`` → result.

    The result (nodes, a model, a report) is made once, on the main thread, when the job finishes;
    a cancelled or failed job adds nothing to the scene and leaves no files behind.
    """

    def __init__(self, runner, workDir, complete):
        self.runner = runner
        self._workDir = workDir
        self._complete = complete
        self._result = None
        self._eventCallbacks = []
        self._finishedCallbacks = []
        for kind in ("start", "progress", "artefact", "warning", "error"):
            runner.on(kind, self._onEvent)
        runner.on("log", lambda status, line: logging.debug(f"cmrsynth: {line}"))
        runner.on("finished", self._onFinished)

    @property
    def status(self):
        return self.runner.status

    @property
    def progress(self):
        return self.status.fraction

    def onEvent(self, callback) -> None:
        self._eventCallbacks.append(callback)

    def onFinished(self, callback) -> None:
        self._finishedCallbacks.append(callback)

    def cancel(self) -> None:
        self.runner.cancel()

    def wait(self, timeout=None):
        self.runner.wait(timeout)
        return self.result()

    def result(self):
        state = self.status.state
        if state is JobState.FAILED:
            raise RuntimeError(self.status.error)
        if state is JobState.CANCELLED:
            raise RuntimeError(f"{self.status.command} was cancelled")
        if state is not JobState.DONE:
            raise RuntimeError(f"{self.status.command} is still running")
        return self._result

    def _onEvent(self, status, event) -> None:
        if event.get("event") == "warning":
            logging.warning(f"CMRSynth: {event.get('message')}")
        for callback in self._eventCallbacks:
            callback(status, event)

    def _onFinished(self, status, _payload) -> None:
        try:
            if status.state is JobState.DONE:
                self._result = self._complete(status)
        except Exception as exc:  # a result that cannot be loaded fails the job, in words
            status.state, status.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            if self._workDir:
                shutil.rmtree(self._workDir, ignore_errors=True)
        if status.state is JobState.FAILED:
            logging.error(f"CMRSynth: {status.command} failed: {status.error}")
        for callback in self._finishedCallbacks:
            callback(self)


class CMRSynthLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from the Python console; never touches a widget.

    ``interactive=False`` (the default for console use) never opens a dialog: missing dependencies raise
    with a sentence saying how to install them (``ensureDependencies(interactive=True)``).
    """

    def __init__(self, modelFolder=None, interactive=False) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.modelFolder = Path(modelFolder) if modelFolder else catalogue.default_model_folder()
        self.interactive = interactive
        self.python = shutil.which("PythonSlicer") or "PythonSlicer"  # Slicer's own Python, on PATH in Slicer

    def getParameterNode(self):
        return CMRSynthParameterNode(super().getParameterNode())

    # -- environment ----------------------------------------------------------------------------------
    def environment(self):
        """The job's environment: Slicer's startup environment plus this module's folder on PYTHONPATH."""
        env = dict(slicer.util.startupEnvironment())
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDir, env.get("PYTHONPATH", "")) if p)
        return env

    def jobContext(self, interactive=None):
        """How the panel's tabs start jobs: Slicer's Python and environment, the model folder, and first the
        dependency check (:meth:`ensureDependencies`, asking when ``interactive`` and the tab's job was clicked for)."""
        from CMRSynthLib.gui.widgets import JobContext

        return JobContext(python=self.python, environment=self.environment(),
                          model_folder=lambda: str(self.modelFolder),
                          prepare=lambda ask: self.ensureDependencies(interactive=bool(interactive and ask)))

    def missingDependencies(self):
        """The Python packages CMRSynth jobs need and this Slicer lacks, as requirements (torch first)."""
        return dependencies.unmet([dependencies.TORCH, *dependencies.read_requirements(REQUIREMENTS)])

    def ensureDependencies(self, interactive=None) -> None:
        """Install what CMRSynth jobs need on first use, after the user agrees (when interactive).

        torch comes from the PyTorch extension (PyTorchUtils picks the build for the GPU); the rest from
        Resources/requirements.txt, with Slicer's numpy, SimpleITK, vtk and torch pinned so pip never
        replaces them. Packages are found by their metadata, never imported here. A failed installation
        (pip and the PyTorch installer raise subprocess.CalledProcessError) is raised as a RuntimeError in words.
        """
        interactive = self.interactive if interactive is None else interactive
        self._ensureTorch(interactive)
        missing = dependencies.unmet(dependencies.read_requirements(REQUIREMENTS))
        if not missing:
            return
        if not interactive:  # never install without asking: say what is missing and how to install it
            raise RuntimeError("CMRSynth needs these Python packages, not installed yet: " + ", ".join(missing)
                               + ". They are offered for installation at the first Generate, Train or Audit "
                               "(from the Python console: logic.ensureDependencies(interactive=True)).")
        try:
            import slicer.packaging as packaging  # Slicer 5.11 and later: asks, installs, offers a restart
        except ImportError:
            packaging = None
        if packaging is None and not slicer.util.confirmOkCancelDisplay(
                _("CMRSynth needs these Python packages, which will be downloaded and installed now:\n")
                + "\n".join(missing), windowTitle=_("CMRSynth")):
            raise RuntimeError("CMRSynth cannot run without its Python packages (installation declined).")
        fd, constraintsPath = tempfile.mkstemp(prefix="constraints-", suffix=".txt", dir=self.temporaryFolder())
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dependencies.constraints())
            with installation(", ".join(missing)):
                if packaging is not None:  # pip_ensure takes Requirement objects (it reads .name, .marker, .specifier)
                    packaging.pip_ensure([Requirement(text) for text in missing], constraints=constraintsPath,
                                         prompt_install=True, requester="CMRSynth")
                else:
                    slicer.util.pip_install(missing + ["-c", constraintsPath])
        finally:
            os.remove(constraintsPath)

    def _ensureTorch(self, interactive) -> None:
        if not dependencies.unmet([dependencies.TORCH]):  # its metadata: importing torch here would freeze Slicer
            return
        installed = dependencies.installed_version("torch")
        found = f"this Slicer has PyTorch {installed}" if installed else "PyTorch is not installed"
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(f"CMRSynth needs PyTorch ({dependencies.TORCH}) and {found}: install the PyTorch "
                               "extension from the Extensions Manager, restart Slicer, and try again.") from None
        if not interactive:
            raise RuntimeError(f"CMRSynth needs PyTorch ({dependencies.TORCH}) and {found}: it is offered for "
                               "installation at the first Generate, Train or Audit (or use the PyTorch Utils module).")
        with installation("PyTorch"):
            PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=True, torchVersionRequirement=dependencies.torch_version_requirement())
        if dependencies.unmet([dependencies.TORCH]):
            raise RuntimeError(f"CMRSynth cannot run without PyTorch {dependencies.torch_version_requirement()} "
                               "(installation declined or failed).")

    # -- models ---------------------------------------------------------------------------------------
    def models(self):
        """Starter models and the checkpoint folders in the model folder (list of ModelInfo)."""
        return catalogue.list_models(self.modelFolder)

    def segments(self, segmentationNode):
        """Segment id → (name, terminology) of a segmentation node."""
        segmentation = segmentationNode.GetSegmentation()
        found = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            terminology = segment.GetTerminology() if hasattr(segment, "GetTerminology") else ""
            found[segmentation.GetNthSegmentID(index)] = (segment.GetName(), terminology or "")
        return found

    def referenceVolumeFor(self, segmentationNode):
        """The volume whose grid ``segmentationNode`` was drawn on (its reference image geometry node), or None."""
        role = segmentationNode.GetReferenceImageGeometryReferenceRole()
        node = segmentationNode.GetNodeReference(role)
        return node if node is not None and node.IsA("vtkMRMLScalarVolumeNode") else None

    def referenceNote(self, segmentationNode, referenceVolumeNode) -> str:
        """What a person must know about the grid the images will get: "" when it is the segmentation's own."""
        if segmentationNode is None:
            return _("Choose a segmentation of the heart (or set New anatomy in Advanced).")
        own = self.referenceVolumeFor(segmentationNode)
        if referenceVolumeNode is None:
            return _("The images will be on the geometry {segmentation} was drawn on (no reference volume is "
                     "chosen; Restyle needs one).").format(segmentation=segmentationNode.GetName())
        if own is None:
            return _("The images will be on {volume}'s grid ({segmentation} names no volume it was drawn on).").format(
                volume=referenceVolumeNode.GetName(), segmentation=segmentationNode.GetName())
        if own is not referenceVolumeNode:
            return _("The images will be on {volume}'s grid, not on {own}, the volume {segmentation} was drawn "
                     "on.").format(volume=referenceVolumeNode.GetName(), own=own.GetName(),
                                   segmentation=segmentationNode.GetName())
        return ""

    def structuresFromParameterNode(self, node):
        return {label: getattr(node, field) for label, field in SEGMENT_FIELDS.items() if getattr(node, field)}

    # -- jobs -----------------------------------------------------------------------------------------
    def runJob(self, settings, complete, workDir=None):
        """Start ``settings`` as a ``cmrsynth`` process; ``complete(status)`` makes the result when it succeeds."""
        runner = JobRunner()
        job = CMRSynthJob(runner, workDir, complete)
        runner.start(controller.job_command(settings, python=self.python), environment=self.environment(),
                     name=settings.command)
        return job

    def temporaryFolder(self):
        """Where jobs keep their files while they run: Slicer's temporary folder (each job removes its own).

        Not ``slicer.util.tempDirectory()``: that makes a new, never removed folder at every call.
        """
        return slicer.app.temporaryPath

    def _workDir(self):
        return tempfile.mkdtemp(prefix="CMRSynth-", dir=self.temporaryFolder())

    def generate(self, segmentationNode, referenceVolumeNode, model=DEFAULT_MODEL, vendor="", count=1, seed=0,
                 steps=None, sampler="", guidance=None, device="auto", structures=None, newAnatomy=0, group="",
                 wait=True):
        """Synthetic volumes for a segmentation, on the reference volume's geometry (``referenceVolumeNode`` None:
        on the geometry the segmentation was drawn on, its reference image geometry).

        Returns the new volume nodes, named ``<volume>_synth_<vendor>_<seed>`` for seeds ``seed`` to
        ``seed + count - 1`` (or, with ``wait=False``, a :class:`CMRSynthJob` whose ``wait()`` returns them).
        ``vendor`` "" is unconditional ("any"); ``steps``/``sampler``/``guidance`` None or "" are the model's own.
        ``structures`` maps canonical labels (1 LV blood pool, 2 myocardium, 3 RV) to segment ids; by default
        it is guessed from the segment names.
        ``newAnatomy`` > 0 ignores the segmentation: the model draws that many new masks (added as
        segmentation nodes) and images for them.
        """
        self.ensureDependencies()
        info = catalogue.find_model(model, self.modelFolder)
        workDir = self._workDir()
        mask = ""
        try:
            if not newAnatomy:
                if segmentationNode is None:
                    raise ValueError("generate needs a segmentation node (or newAnatomy > 0)")
                note = self.referenceNote(segmentationNode, referenceVolumeNode)
                if note:
                    logging.warning(f"CMRSynth: {note}")
                structures = structures or scene.guess_mapping(self.segments(segmentationNode))
                mask = os.path.join(workDir, "mask.nii.gz")
                overlap = writeMask(segmentationNode, referenceVolumeNode, structures, mask)
                if overlap:
                    logging.warning(f"CMRSynth: {overlap} voxels belong to more than one mapped segment; "
                                    "the structure with the higher label wins")
            settings = controller.SampleSettings(
                model=info.argument, mask=mask, out=os.path.join(workDir, "out"), vendor=vendor, count=count,
                seed=seed, steps=steps, sampler=sampler, guidance=guidance, device=device, new_anatomy=newAnatomy,
                group=group)
            settings.arguments()  # refuse bad settings before starting anything
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        attributes = {"generator": info.family, "modelId": info.model_id, "model": info.argument,
                      "epsilon": "none" if info.epsilon is None else info.epsilon}
        grid = segmentationNode if referenceVolumeNode is None else referenceVolumeNode
        baseName = "" if newAnatomy else grid.GetName()

        def complete(status):
            nodes = []
            for path, kind in status.artefacts:
                if kind == "mask":  # new anatomy drawn by the stage-1 model
                    segmentation = slicer.util.loadSegmentation(path)
                    markSynthetic(segmentation, {**attributes, "anatomy": "true"}, read_volume(path).metadata)
                    nodes.append(segmentation)
                    continue
                outVendor, outSeed = scene.parse_synthetic_name(path)
                name = scene.synthetic_node_name(baseName, path) if baseName else Path(path).name.split(".")[0]
                nodes.append(addVolumeNode(path, name, {**attributes, "vendor": outVendor, "seed": outSeed}))
            return nodes

        job = self.runJob(settings, complete, workDir)
        return job.wait() if wait else job

    def restyle(self, volumeNode, segmentationNode, vendor, model=DEFAULT_MODEL, structures=None, steps=None,
                device="auto", wait=True):
        """``volumeNode`` re-rendered in ``vendor``'s style (flow-matching inversion) → a new volume node
        named ``<volume>_restyled_<vendor>``."""
        self.ensureDependencies()
        info = catalogue.find_model(model, self.modelFolder)
        structures = structures or scene.guess_mapping(self.segments(segmentationNode))
        workDir = self._workDir()
        image, mask = os.path.join(workDir, "image.nii.gz"), os.path.join(workDir, "mask.nii.gz")
        try:
            write_volume(volumeFromNode(volumeNode), image)
            writeMask(segmentationNode, volumeNode, structures, mask)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        out = os.path.join(workDir, "restyled.nii.gz")
        settings = controller.RestyleSettings(model=info.argument, image=image, mask=mask, vendor=vendor, out=out,
                                              steps=steps, device=device)
        attributes = {"generator": info.family, "modelId": info.model_id, "model": info.argument, "vendor": vendor,
                      "restyled": "true", "source": volumeNode.GetName()}
        job = self.runJob(settings, lambda status: addVolumeNode(
            out, f"{volumeNode.GetName()}_restyled_{vendor}", attributes), workDir)
        return job.wait() if wait else job

    def train(self, data, out=None, generator="flow", preset="tiny", init="", dp=False, epsilon=None, delta=None,
              maxGradNorm=None, maxSteps=None, wait=True):
        """Train a generator on a cohort folder; the model lands in the model folder → its ModelInfo."""
        self.ensureDependencies()
        out = out or str(self.modelFolder / f"{generator}-{time.strftime('%Y%m%d-%H%M%S')}")
        settings = controller.TrainSettings(data=str(data), out=str(out), generator=generator, preset=preset,
                                            init=init, dp=dp, epsilon=epsilon, delta=delta,
                                            max_grad_norm=maxGradNorm, max_steps=maxSteps)
        job = self.runJob(settings, lambda status: catalogue.read_model(out))
        return job.wait() if wait else job

    def audit(self, model, data, out=None, quick=False, compare=(), wait=True):
        """Audit a model against real data → the report's JSON as a dict (``report.html`` beside it).

        ``compare``: more models (names or folders) audited in the same report, side by side.
        """
        import json

        self.ensureDependencies()
        info = catalogue.find_model(model, self.modelFolder)
        others = [catalogue.find_model(name, self.modelFolder).argument for name in compare]
        out = out or str(self.modelFolder / f"audit-{info.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        settings = controller.AuditSettings(model=info.argument, data=str(data), out=str(out), quick=quick,
                                            compare=tuple(others))
        job = self.runJob(settings, lambda status: json.loads(Path(out, "report.json").read_text(encoding="utf-8")))
        return job.wait() if wait else job

    # -- reader study display ------------------------------------------------------------------------
    def showReaderSlice(self, image, label):
        """Show one blinded 2D slice (H, W) of the reader study in the Red slice view, the way up the standalone
        tab draws it: row 0 at the top, column 0 at the left (``reader_study.DISPLAY_IJK_TO_RAS``)."""
        name = "CMRSynth reader study"
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        array = image.reshape(1, *image.shape)
        if node is None:
            node = slicer.util.addVolumeFromArray(array, ijkToRAS=reader_study.DISPLAY_IJK_TO_RAS, name=name)
        else:  # a node kept from an earlier scene may hold another matrix
            node.SetIJKToRASMatrix(scene.array_to_matrix(reader_study.DISPLAY_IJK_TO_RAS))
            slicer.util.updateVolumeFromArray(node, array)
        node.SetAttribute(ATTRIBUTE_PREFIX + "readerItem", str(label))
        slicer.util.setSliceViewerLayers(background=node, fit=True)


def _setItems(combo, items, current) -> str:
    """Fill ``combo`` with ``items`` and choose ``current`` if it is one of them → the text chosen."""
    combo.blockSignals(True)
    combo.clear()
    for item in items:
        combo.addItem(item)
    combo.currentIndex = max(combo.findText(current), 0)
    combo.blockSignals(False)
    return combo.currentText


#
# Test (runs inside Slicer: Reload and Test, or ctest via slicer_add_python_unittest)
#
class CMRSynthTest(ScriptedLoadableModuleTest):
    """Each test skips itself, naming what is missing, where CMRSynth's packages are not installed (an extension
    build's ctest). The skip is raised in the test method, never in ``setUp``: Reload and Test calls ``runTest``
    directly (ScriptedLoadableModule.runTest → ``testCase.runTest()`` inside ``tryWithErrorDisplay("Reload and Test
    failed.")``, Base/Python/slicer/ScriptedLoadableModule.py), where a SkipTest would show as a failure; ``runTest``
    reports it as a skip instead."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_generate_keeps_reference_geometry,):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:
                self.delayDisplay(f"Skipped {test.__name__}: {skipped}")

    def skipUnlessInstalled(self):
        missing = CMRSynthLogic().missingDependencies()
        if missing:
            self.skipTest("CMRSynth's Python packages are not installed in this Slicer: " + ", ".join(missing)
                          + ". Install them with CMRSynthLogic().ensureDependencies(interactive=True) "
                          "(or by generating once from the module), then run the test again.")

    def test_generate_keeps_reference_geometry(self):
        import numpy as np

        self.skipUnlessInstalled()
        self.delayDisplay("Building an oblique reference volume and a three-structure segmentation")
        shape = (4, 32, 32)
        angle = np.deg2rad(20)
        ijkToRAS = np.eye(4)
        ijkToRAS[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                     [0, 0, 1]]) @ np.diag([1.4, 1.4, 8.0])
        ijkToRAS[:3, 3] = [-20.0, 15.0, 30.0]
        reference = slicer.util.addVolumeFromArray(np.zeros(shape, dtype=np.float32), ijkToRAS=ijkToRAS, name="cine")
        labels = np.zeros(shape, dtype=np.uint8)
        yy, xx = np.mgrid[:32, :32]
        radius = np.hypot(yy - 16, xx - 13)
        labels[:, radius < 5] = LV
        labels[:, (radius >= 5) & (radius < 8)] = MYO
        labels[:, (np.hypot(yy - 16, xx - 23) < 5) & (radius >= 8)] = RV
        labelmap = slicer.util.addVolumeFromArray(labels, ijkToRAS=ijkToRAS, name="labels",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentIds = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(3)]

        logic = CMRSynthLogic()
        # the smallest image model first (phantom-tiny-flow); never the stage-1 anatomy model, which draws masks
        starters = sorted((info for info in logic.models() if info.starter and info.family in controller.GENERATORS),
                          key=lambda info: (info.name != "phantom-tiny-flow", info.name))
        self.assertTrue(starters, "no starter image model is bundled")
        model, vendor = starters[0], starters[0].vendors[0]
        self.delayDisplay(f"Generating with {model.name} on CPU")
        nodes = logic.generate(segmentation, reference, model=model.name, vendor=vendor, count=2, seed=5, steps=2,
                               device="cpu", structures=dict(zip((LV, MYO, RV), segmentIds)))
        nodes = [node for node in nodes if node.IsA("vtkMRMLScalarVolumeNode")]
        self.assertEqual([n.GetName() for n in nodes], [f"cine_synth_{vendor}_5", f"cine_synth_{vendor}_6"])
        for node in nodes:
            self.assertEqual(slicer.util.arrayFromVolume(node).shape, shape)
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            self.assertTrue(np.allclose(scene.matrix_to_array(matrix), ijkToRAS, atol=1e-4))
            self.assertEqual(node.GetAttribute("CMRSynth.synthetic"), "true")
        self.delayDisplay("Test passed")
