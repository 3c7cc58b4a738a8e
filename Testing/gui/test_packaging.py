"""Extension Manager packaging: what the CMake files bundle, the Extensions Index entry, the requirements."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from CMRSynthLib.gui import dependencies

ROOT = Path(__file__).resolve().parents[2]
MODULE_CMAKE = ROOT / "CMRSynth" / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"


def cmake_list(path: Path, variable: str) -> list[str]:
    """The items of ``set(VARIABLE item item ...)`` in a CMake file."""
    match = re.search(rf"set\({variable}\s(.*?)\)", path.read_text(encoding="utf-8"), re.S)
    assert match, f"{path.name} has no set({variable} ...)"
    return match.group(1).split()


def tree_files(folder: Path, *, python: bool) -> list[str]:
    files = []
    for path in folder.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if not path.is_file() or "__pycache__" in parts or any(p.startswith(".") for p in parts):
            continue
        if (path.suffix == ".py") == python and path.suffix != ".pyc":
            files.append(path.relative_to(ROOT).as_posix())
    return sorted(files)


def compare(listed: list[str], expected: list[str], variable: str) -> None:
    missing = sorted(set(expected) - set(listed))
    absent = sorted(p for p in listed if not (ROOT / p).is_file())
    assert not missing, f"add to {variable} in CMRSynth/CMakeLists.txt (not packaged otherwise):\n  " + "\n  ".join(missing)
    assert not absent, f"listed in {variable} but not in the tree:\n  " + "\n  ".join(absent)
    assert len(listed) == len(set(listed)), f"{variable} lists a file twice"


def test_every_library_python_file_is_bundled_and_every_listed_file_exists():
    listed = cmake_list(MODULE_CMAKE, "CMRSYNTHLIB_PYTHON_SCRIPTS")
    compare(listed, tree_files(ROOT / "CMRSynthLib", python=True), "CMRSYNTHLIB_PYTHON_SCRIPTS")
    assert "CMRSynthLib/gui/jobs.py" in listed and "CMRSynthLib/cli.py" in listed


def test_every_shared_resource_and_package_data_file_is_bundled():
    listed = cmake_list(MODULE_CMAKE, "CMRSYNTHLIB_RESOURCES")
    expected = tree_files(ROOT / "CMRSynthLib", python=False) + tree_files(ROOT / "Resources", python=False)
    compare(listed, expected, "CMRSYNTHLIB_RESOURCES")


def test_the_module_lists_its_script_and_all_its_resources():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert cmake_list(MODULE_CMAKE, "MODULE_PYTHON_SCRIPTS") == ["${MODULE_NAME}.py"]
    resources = [p.replace("${MODULE_NAME}", "CMRSynth")
                 for p in cmake_list(MODULE_CMAKE, "MODULE_PYTHON_RESOURCES")]
    on_disk = sorted(p.relative_to(ROOT / "CMRSynth").as_posix() for p in (ROOT / "CMRSynth" / "Resources").rglob("*")
                     if p.is_file())
    assert sorted(resources) == on_disk
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # the library keeps its repository layout next to CMRSynth.py (SOURCE_DIR is the repository root)
    assert re.search(r"SOURCE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\.\s", text)
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in text


def extension_metadata() -> dict[str, str]:
    text = TOP_CMAKE.read_text(encoding="utf-8")
    return dict(re.findall(r'set\((EXTENSION_[A-Z_]+) "([^"]*)"\)', text))


def test_top_level_cmake_has_the_extension_metadata():
    meta = extension_metadata()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), f"{key} is missing or empty"
    assert "PyTorch" in meta["EXTENSION_DEPENDS"].split()
    text = TOP_CMAKE.read_text(encoding="utf-8")
    for line in ("project(CMRSynth)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "add_subdirectory(CMRSynth)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                 "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    # screenshots and icon point at files of this repository
    for url in [meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()]:
        relative = url.split("/main/", 1)[1]
        assert (ROOT / relative).is_file(), f"{url} names a file that is not in the repository"


def test_extensions_index_entry_follows_the_catalog_schema():
    entry = json.loads((ROOT / "CMRSynth.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}  # schema v1.0.1: additionalProperties false
    assert set(entry) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    meta = extension_metadata()
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split()
    assert entry["scm_url"].startswith("https://") and entry["tier"] in (1, 3, 5)


def test_requirements_are_the_package_dependencies_minus_what_slicer_owns():
    required = dependencies.read_requirements(ROOT / "CMRSynth" / "Resources" / "requirements.txt")
    assert dependencies.protected_in(required) == []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    expected = [r for r in project if not dependencies.protected_in([r])]
    assert sorted(map(str, map(Requirement, required))) == sorted(map(str, map(Requirement, expected)))


def test_unmet_and_constraints_use_installed_versions():
    versions = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "monai": "1.3.0", "einops": "0.8.0"}
    assert dependencies.unmet(["monai>=1.4", "einops>=0.7", "opacus>=1.5"], version_of=versions.get) == [
        "monai>=1.4", "opacus>=1.5"]
    assert dependencies.constraints(version_of=versions.get) == "numpy==1.26.4\nSimpleITK==2.4.0\n"
    assert dependencies.protected_in(["simpleitk>=2", "Torch", "monai"]) == ["simpleitk>=2", "Torch"]


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(ROOT / "CMRSynth" / "Resources" / "Icons" / "CMRSynth.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


@pytest.mark.parametrize("name", ["CMRSynth.py"])
def test_module_script_compiles_for_slicer_python(name):
    source = (ROOT / "CMRSynth" / name).read_text(encoding="utf-8")
    compile(source, name, "exec")
    assert not re.search(r"^\s*import imp\b", source, re.M)  # gone in Slicer 5.10's Python 3.12


def test_the_license_file_is_the_apache_2_text_pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    head = [line.strip() for line in text.splitlines() if line.strip()][:3]
    assert head == ["Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/"]
    titles = ["Definitions", "Grant of Copyright License", "Grant of Patent License", "Redistribution",
              "Submission of Contributions", "Trademarks", "Disclaimer of Warranty", "Limitation of Liability",
              "Accepting Warranty or Additional Liability"]
    found = re.findall(r"^   (\d)\. ([A-Z][A-Za-z ]+)\.", text, re.M)
    assert found == [(str(n), title) for n, title in enumerate(titles, 1)]  # the nine sections, in order
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_the_minimum_slicer_is_stated_everywhere():
    """Slicer 5.10+ (Python 3.10+): pyproject, the CMake metadata and a configure-time check, README, the module."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.10"
    text = TOP_CMAKE.read_text(encoding="utf-8")
    check = re.search(r'if\(Slicer_VERSION VERSION_LESS "5\.10"\)\s+message\(FATAL_ERROR "([^"]+)"\)', text)
    assert check and "5.10 or later" in check.group(1)
    assert text.index("find_package(Slicer REQUIRED)") < check.start() < text.index("add_subdirectory(CMRSynth)")
    assert "Needs 3D Slicer 5.10 or later" in extension_metadata()["EXTENSION_DESCRIPTION"]
    assert "Slicer 5.10 or later" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "MINIMUM_PYTHON = (3, 10)" in (ROOT / "CMRSynth" / "CMRSynth.py").read_text(encoding="utf-8")


def test_contributors_are_named_with_their_affiliation():
    import ast

    contributors = [c.strip() for c in extension_metadata()["EXTENSION_CONTRIBUTORS"].split(",")]
    assert contributors and all(re.fullmatch(r"[^()]+ \([^()]+\)", c) for c in contributors), contributors
    tree = ast.parse((ROOT / "CMRSynth" / "CMRSynth.py").read_text(encoding="utf-8"))
    module = next(ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "CONTRIBUTORS")
    assert module == contributors  # the module's About box says the same


def test_the_license_names_every_starter_model_it_does_not_cover():
    """Weights learned from data under another license (ACDC: CC BY-NC-SA 4.0) are listed as not covered."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    note = text[text.index("FILES THIS LICENSE DOES NOT COVER"):]
    models = ROOT / "Resources" / "models"
    other = {path.parent.name: json.loads(path.read_text(encoding="utf-8")).get("dataset", {}).get("license", "")
             for path in models.glob("*/card.json")}
    other = {name: license_ for name, license_ in other.items() if license_}
    assert other, "no starter model names a dataset license: is Resources/models there?"
    listed = set(re.findall(r"Resources/models/([\w-]+)/", note))
    assert listed == set(other)
    assert all(license_.startswith("CC BY-NC-SA 4.0") for license_ in other.values())
    assert "CC BY-NC-SA 4.0" in note


def test_the_torch_requirement_the_module_checks_is_pyprojects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch = [r for r in project if Requirement(r).name == "torch"]
    assert [str(Requirement(dependencies.TORCH))] == [str(Requirement(r)) for r in torch]
    assert dependencies.torch_version_requirement() == ">=2.2"
