"""A case: one patient at one cardiac phase, with its image, label and attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from CMRSynthLib.data.conventions import UNKNOWN
from CMRSynthLib.data.volume import Volume


@dataclass(frozen=True)
class CaseRecord:
    """What a cohort lists about a case, without reading any voxels.

    ``frame`` is the time index inside a 4D cine file (M&Ms-1), else None. ``label_convention`` names the
    label numbering of ``label_path`` (see :mod:`CMRSynthLib.data.conventions`). ``attributes`` holds what
    the source knows (height, weight, ...). ``simulated`` marks phantom cases.
    """

    patient: str
    phase: str
    image_path: str
    label_path: str | None = None
    vendor: str = UNKNOWN
    group: str = UNKNOWN
    frame: int | None = None
    label_convention: str = "canonical"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    simulated: bool = False

    @property
    def case_id(self) -> str:
        return f"{self.patient}_{self.phase}" if self.phase else self.patient


@dataclass(frozen=True, eq=False)
class Case:
    """A loaded case. ``label`` is in the canonical convention (uint8) on ``image``'s exact geometry."""

    record: CaseRecord
    image: Volume
    label: Volume | None

    def __getattr__(self, name):  # patient, phase, vendor, group, attributes ... come from the record
        if name == "record":
            raise AttributeError(name)
        return getattr(self.record, name)
