"""Which Python packages a Slicer installation still lacks for CMRSynth jobs, and which pip must not touch.

Slicer ships its own numpy, SimpleITK and vtk, and torch comes from the PyTorch extension (PyTorchUtils picks
the build that fits the GPU). pip must never replace them: they are absent from ``requirements.txt`` and
pinned to their installed versions in a constraints file for every install CMRSynth asks for.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Callable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROTECTED = ("numpy", "SimpleITK", "vtk", "torch")
TORCH = "torch>=2.2"  # pyproject.toml's torch requirement; handed to PyTorchUtils' installTorch(torchVersionRequirement=)


def installed_version(name: str) -> str | None:
    """The installed version of package ``name``, read from its metadata (never imported), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options dropped)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line and not line.startswith("-")]


def unmet(requirements: list[str], *, version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """The requirements not satisfied by what is installed (missing, or a version outside the specifier).

    Read from the packages' metadata: nothing is imported (importing torch in Slicer's process freezes its GUI).
    """
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def protected_in(requirements: list[str]) -> list[str]:
    """Requirements that name a package pip must leave to Slicer or to the PyTorch extension."""
    protected = {canonicalize_name(name) for name in PROTECTED}
    return [text for text in requirements if canonicalize_name(Requirement(text).name) in protected]


def constraints(*, version_of: Callable[[str], str | None] = installed_version) -> str:
    """A pip constraints file pinning every installed protected package to its current version."""
    pins = [f"{name}=={version}" for name in PROTECTED if (version := version_of(name)) is not None]
    return "".join(pin + "\n" for pin in pins)


def torch_version_requirement() -> str:
    """The version part of :data:`TORCH` (``">=2.2"``), as PyTorchUtils' ``torchVersionRequirement`` takes it."""
    return str(Requirement(TORCH).specifier)
