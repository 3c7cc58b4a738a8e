"""The Slicer module calls only what Slicer has: checked against name lists read from Slicer's source.

3D Slicer cannot be installed on the build machines, so ``CMRSynth/*.py`` is parsed (never imported) and
every ``slicer.util.X``, ``slicer.packaging.X``, segmentations-logic method, PyTorchUtilsLogic method and
ScriptedLoadable* base-class method it uses must appear in ``Testing/gui/slicer_api/*.txt`` (copies of the
project's shared lists, facts about Slicer 5.12's API). The .ui file is checked against the parameter node.
"""

import ast
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "CMRSynth"
LISTS = Path(__file__).resolve().parent / "slicer_api"
SEGMENTATIONS_LOGIC = "slicer.modules.segmentations.logic"
PYTORCH_LOGIC = "PyTorchUtils.PyTorchUtilsLogic"


def names(filename: str) -> set[str]:
    return {line.strip() for line in (LISTS / filename).read_text(encoding="utf-8").splitlines() if line.strip()}


KNOWN = {
    "slicer.util": names("slicer_util_functions.txt"),
    "slicer.packaging": names("slicer_packaging_functions.txt"),
    SEGMENTATIONS_LOGIC: names("segmentations_logic_methods.txt"),
    PYTORCH_LOGIC: names("pytorchutils_logic_methods.txt"),
}
# ScriptedLoadableModuleTest is a unittest.TestCase: its assert* methods come from Python itself
SCRIPTED = names("scripted_loadable_module_methods.txt") | {
    f"ScriptedLoadableModuleTest.{name}" for name in dir(unittest.TestCase) if not name.startswith("_")}
BASES = {entry.split(".")[0] for entry in SCRIPTED}


class Checker(ast.NodeVisitor):
    """Collects (kind, name, line) of every checked use, and the unknown ones."""

    def __init__(self):
        self.aliases: dict[str, str] = {}
        self.instances: dict[str, str] = {}  # variable → the logic class it holds
        self.checked: list[tuple[str, str, int]] = []
        self.unknown: list[tuple[str, str, int]] = []
        self.class_stack: list[tuple[set[str], set[str]]] = []  # (ScriptedLoadable bases, own methods)

    def dotted(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        if isinstance(node, ast.Call):  # slicer.modules.segmentations.logic() / PyTorchUtilsLogic()
            func = self.dotted(node.func)
            return f"{func}()" if func in KNOWN else None
        return None

    def check(self, kind: str, name: str, known: set[str], line: int) -> None:
        self.checked.append((kind, name, line))
        if name not in known:
            self.unknown.append((kind, name, line))

    def visit_Import(self, node):
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        if node.module in ("slicer.util", "slicer.packaging"):
            for alias in node.names:
                self.check(node.module, alias.name, KNOWN[node.module], node.lineno)
        self.generic_visit(node)

    def visit_Assign(self, node):
        value = self.dotted(node.value)
        if value and value.endswith("()"):
            for target in node.targets:
                target_name = self.dotted(target)
                if target_name:
                    self.instances[target_name] = value[:-2]
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        bases = {b.id for b in node.bases if isinstance(b, ast.Name) and b.id in BASES}
        own = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.class_stack.append((bases, own))
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_Attribute(self, node):
        base = self.dotted(node.value)
        if base in ("slicer.util", "slicer.packaging"):
            self.check(base, node.attr, KNOWN[base], node.lineno)
        elif base is not None and base.endswith("()") and base[:-2] in KNOWN:
            self.check(base[:-2], node.attr, KNOWN[base[:-2]], node.lineno)
        elif base in self.instances:
            self.check(self.instances[base], node.attr, KNOWN[self.instances[base]], node.lineno)
        elif base in BASES and node.attr != "__init__":
            self.check("ScriptedLoadable", f"{base}.{node.attr}", SCRIPTED, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if self.class_stack and isinstance(func, ast.Attribute) and self.class_stack[-1][0]:
            bases, own = self.class_stack[-1]
            receiver = func.value
            is_self = isinstance(receiver, ast.Name) and receiver.id == "self"
            is_super = isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) \
                and receiver.func.id == "super"
            if (is_super or is_self and func.attr not in own) and func.attr != "__init__":
                known = {f"{b}.{func.attr}" for b in bases} & SCRIPTED
                self.checked.append(("ScriptedLoadable", f"{'/'.join(sorted(bases))}.{func.attr}", node.lineno))
                if not known:
                    self.unknown.append(("ScriptedLoadable", f"{'/'.join(sorted(bases))}.{func.attr}", node.lineno))
        self.generic_visit(node)


def check_source(source: str) -> Checker:
    checker = Checker()
    checker.visit(ast.parse(source))
    return checker


MODULE_FILES = sorted(MODULE_DIR.glob("*.py"))


def test_the_module_file_exists():
    assert [p.name for p in MODULE_FILES] == ["CMRSynth.py"]


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_every_slicer_name_the_module_uses_exists(path):
    checker = check_source(path.read_text(encoding="utf-8"))
    assert checker.unknown == [], "names not in Slicer's API lists: " + ", ".join(
        f"{kind}: {name} (line {line})" for kind, name, line in checker.unknown)
    kinds = {kind for kind, _, _ in checker.checked}
    assert {"slicer.util", "slicer.packaging", SEGMENTATIONS_LOGIC, PYTORCH_LOGIC, "ScriptedLoadable"} <= kinds
    assert len(checker.checked) >= 25  # the checker saw the module's calls, not nothing


def test_made_up_names_are_caught():
    source = '''
import slicer.packaging as packaging
from slicer.util import arrayFromVolume, arrayFromVolumeMagic
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic
import PyTorchUtils

class W(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ScriptedLoadableModuleWidget.setupMagic(self)
        self.resourcePath("x")
        self.mine()
        self.notAMethodOfTheBase()

    def mine(self):
        slicer.util.loadUI("a.ui")
        slicer.util.loadUIMagic("a.ui")
        packaging.pip_ensure([])
        packaging.pip_ensure_magic([])
        slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode()
        segLogic = slicer.modules.segmentations.logic()
        segLogic.ExportSegmentsToLabelmapNodeMagic()
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        torchLogic.installTorch()
        torchLogic.installTorchMagic()

class L(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return super().getParameterNodeMagic()
'''
    checker = check_source(source)
    unknown = {name for _, name, _ in checker.unknown}
    assert unknown == {"arrayFromVolumeMagic", "ScriptedLoadableModuleWidget.setupMagic",
                       "ScriptedLoadableModuleWidget.notAMethodOfTheBase", "loadUIMagic", "pip_ensure_magic",
                       "ExportSegmentsToLabelmapNodeMagic", "installTorchMagic",
                       "ScriptedLoadableModuleLogic.getParameterNodeMagic"}
    assert len(checker.checked) == len(checker.unknown) + 7  # the 7 real names were checked and passed


# -- the .ui file and the parameter node -------------------------------------------------------------------
UI = MODULE_DIR / "Resources" / "UI" / "CMRSynth.ui"
# Which widget class can show which parameter type (Slicer's parameterNodeWrapper GUI connectors)
CONNECTORS = {"int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
              "bool": {"QCheckBox", "QPushButton"}, "str": {"QLineEdit", "QTextEdit"},
              "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
              "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"}, "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}}
FILLED_BY_HAND = {"lvSegment", "myoSegment", "rvSegment", "model", "vendor", "group"}  # lists depend on scene or model


def parameter_fields() -> dict[str, tuple[str, bool]]:
    """Field → (base type name, has a Choice annotation) of CMRSynthParameterNode."""
    tree = ast.parse((MODULE_DIR / "CMRSynth.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CMRSynthParameterNode")
    fields = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign):
            annotation = item.annotation
            choice = "Choice(" in ast.unparse(annotation)
            if isinstance(annotation, ast.Subscript):  # Annotated[T, ...]
                annotation = annotation.slice.elts[0]
            fields[item.target.id] = (ast.unparse(annotation), choice)
    return fields


def ui_widgets() -> dict[str, tuple[str, str | None]]:
    """Widget name → (class, SlicerParameterName or None)."""
    found = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        parameter = next((p.findtext("string") for p in widget.findall("property")
                          if p.get("name") == "SlicerParameterName"), None)
        found[widget.get("name")] = (widget.get("class"), parameter)
    return found


def test_ui_bindings_match_the_parameter_node_types():
    fields = parameter_fields()
    bound = {parameter: cls for cls, parameter in ui_widgets().values() if parameter}
    assert set(bound) <= set(fields), f"unknown parameters in the .ui: {set(bound) - set(fields)}"
    assert set(fields) - set(bound) == FILLED_BY_HAND
    for name, cls in bound.items():
        type_name, choice = fields[name]
        allowed = set(CONNECTORS.get(type_name, set()))
        if choice:
            allowed.add("QComboBox")  # a combo box shows str/int/float only with a Choice annotation
        assert cls in allowed, f"{name}: {type_name} cannot be shown by a {cls} (allowed: {sorted(allowed)})"


def test_every_ui_widget_the_module_uses_exists():
    source = (MODULE_DIR / "CMRSynth.py").read_text(encoding="utf-8")
    used = {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert len(used) >= 10
    assert used <= set(ui_widgets()), f"missing from CMRSynth.ui: {used - set(ui_widgets())}"


def test_the_ui_file_loads_in_qt(qapp):
    from Qt import QtCore
    from PySide6.QtUiTools import QUiLoader

    ui_file = QtCore.QFile(str(UI))
    assert ui_file.open(QtCore.QFile.ReadOnly)
    widget = QUiLoader().load(ui_file)  # Slicer's custom classes become their QWidget base here
    ui_file.close()
    assert widget is not None
    assert widget.findChild(QtCore.QObject, "generateButton").text() == "Generate"
