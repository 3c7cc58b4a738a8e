"""How each known cohort lays out its files: detection and listing, without reading any voxels.

Every ``list_*`` function takes the cohort's root folder and returns ``(records, problems)``: the cases
found (:class:`~CMRSynthLib.data.case.CaseRecord`) and sentences about what was found wrong or skipped.

=========  ==========================================================================  ===========
layout     files                                                                       labels
=========  ==========================================================================  ===========
cmrsynth   ``cohort.csv`` with columns patient, image, label (the phantom cohort)      canonical
acdc       ``patientXXX/patientXXX_frameYY[_gt].nii.gz`` + ``Info.cfg``                acdc
acdc-h5    ``patientXXX_frameYY[_slice_K].h5`` (SSL4MIS HDF5, :mod:`.ssl4mis`)            acdc
mnms2      ``NNN/NNN_SA_{ED,ES}[_gt].nii.gz`` + ``dataset_information.csv``            mnms
mnms1      ``<code>/<code>_sa[_gt].nii.gz`` (4D) + a CSV with "External code", ED, ES  mnms
generic    ``name.ext`` + ``name_gt.ext`` (or _label, _seg, _mask), nested or not      chosen
=========  ==========================================================================  ===========
"""

from __future__ import annotations

import csv
import fnmatch
import os
import re
from pathlib import Path

from CMRSynthLib.data.case import CaseRecord
from CMRSynthLib.data.conventions import MNMS_VENDORS, PHASES, UNKNOWN, canonical_group
from CMRSynthLib.data.ssl4mis import is_ssl4mis_name
from CMRSynthLib.data.volume import IMAGE_SUFFIXES, is_image_file

LABEL_SUFFIXES = ("_gt", "_label", "_seg", "_mask")
COHORT_CSV = "cohort.csv"
ACDC_FRAME = re.compile(r"^(patient\d+)_frame(\d+)\.nii(\.gz)?$")
MNMS2_IMAGE = re.compile(r"^(\d+)_SA_(ED|ES)\.nii(\.gz)?$")
MNMS1_IMAGE = re.compile(r"^(.+)_sa\.nii(\.gz)?$")
# Manufacturer strings as scanners write them → the vendor names used across CMRSynth (M&Ms-2 CSVs hold
# e.g. "SIEMENS", "Philips Medical Systems", "GE MEDICAL SYSTEMS"). Unknown strings are kept as given.
MANUFACTURERS = {"siemens": "Siemens", "philips": "Philips", "ge": "GE", "general electric": "GE",
                 "canon": "Canon", "toshiba": "Canon"}


# -- small helpers ---------------------------------------------------------------------------------
def split_suffix(path: str | Path) -> tuple[str, str]:
    """``"a/b_gt.nii.gz"`` → ``("b_gt", ".nii.gz")``."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return Path(name).stem, Path(name).suffix


def is_label_name(path: str | Path) -> bool:
    return split_suffix(path)[0].lower().endswith(LABEL_SUFFIXES)


def label_beside(image: Path) -> Path | None:
    """The label file next to ``image`` (``name_gt.ext`` etc., any image suffix), or None."""
    stem, _ = split_suffix(image)
    for tag in LABEL_SUFFIXES:
        for suffix in IMAGE_SUFFIXES:
            candidate = image.with_name(f"{stem}{tag}{suffix}")
            if candidate.is_file():
                return candidate
    return None


def vendor_name(value: str | None) -> str:
    """A vendor as CMRSynth names it: M&Ms letters A–D and manufacturer strings mapped, else as given."""
    text = (value or "").strip()
    if not text:
        return UNKNOWN
    if text.upper() in MNMS_VENDORS:
        return MNMS_VENDORS[text.upper()]
    words = text.lower().replace(",", " ").split()
    for key, name in MANUFACTURERS.items():
        if " ".join(words[: len(key.split())]) == key:
            return name
    return text


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def _csv_columns(path: Path) -> set[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return {c.strip() for c in next(csv.reader(handle), [])}


def find_files(root: Path, pattern: str) -> list[Path]:
    """Paths under ``root`` whose name matches ``pattern`` (any depth), sorted, without hidden files or folders
    below ``root`` (e.g. half-written ``.name.partial`` files). Symlinked folders are followed (once each: a
    link back up the tree is not walked again)."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / name for name in (*dirs, *files)
                  if not name.startswith(".") and fnmatch.fnmatchcase(name, pattern)]
    return sorted(found)


# -- detection ---------------------------------------------------------------------------------------
def detect_layout(root: Path) -> str | None:
    """The layout of the folder ``root`` (see the module table), or None when nothing is recognised."""
    if (root / COHORT_CSV).is_file() and {"patient", "image", "label"} <= _csv_columns(root / COHORT_CSV):
        return "cmrsynth"
    if any(is_ssl4mis_name(p.name) for p in root.iterdir()):
        return "acdc-h5"
    names = [p.name for p in find_files(root, "*") if p.is_file()]
    if any(ACDC_FRAME.match(n) for n in names):
        return "acdc"
    if any(MNMS2_IMAGE.match(n) for n in names) and "dataset_information.csv" in names:
        return "mnms2"
    if any(MNMS1_IMAGE.match(n) for n in names) and _mnms1_csv(root) is not None:
        return "mnms1"
    if any(is_image_file(n) for n in names):
        return "generic"
    return None


# -- cmrsynth (the phantom's cohort.csv) ------------------------------------------------------------
def list_cmrsynth(root: Path, label_convention: str) -> tuple[list[CaseRecord], list[str]]:
    known = {"patient", "vendor", "phase", "group", "image", "label", "simulated", "label_convention"}
    records = []
    for row in _read_csv(root / COHORT_CSV):
        attributes = {k: (_number(v) if _number(v) is not None else v) for k, v in row.items()
                      if k not in known and v != ""}
        records.append(CaseRecord(
            patient=row["patient"], phase=row.get("phase") or UNKNOWN,
            image_path=str(root / row["image"]), label_path=str(root / row["label"]) if row["label"] else None,
            vendor=row.get("vendor") or UNKNOWN, group=canonical_group(row.get("group")),
            label_convention=row.get("label_convention") or label_convention, attributes=attributes,
            simulated=row.get("simulated", "").lower() in ("1", "true", "yes"),
        ))
    return records, []


# -- ACDC ---------------------------------------------------------------------------------------------
def _read_info_cfg(path: Path) -> dict[str, str]:
    info = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def list_acdc(root: Path) -> tuple[list[CaseRecord], list[str]]:
    records, problems = [], []
    frames_by_patient: dict[Path, dict[int, Path]] = {}
    for path in find_files(root, "patient*_frame*.nii*"):
        match = ACDC_FRAME.match(path.name)
        if match:  # the 4D file patientXXX_4d.nii.gz and the _gt labels do not match
            frames_by_patient.setdefault(path.parent, {})[int(match.group(2))] = path
    for folder, frames in sorted(frames_by_patient.items()):
        patient = folder.name
        cfg = folder / "Info.cfg"
        info = _read_info_cfg(cfg) if cfg.is_file() else {}
        phases = {}
        for phase in PHASES:
            number = _number(info.get(phase))
            if number is not None and int(number) in frames:
                phases[int(number)] = phase
        if not cfg.is_file():
            problems.append(f"{folder}: no Info.cfg; phases, group, height and weight unknown")
        elif len(phases) < len(PHASES):
            problems.append(f"{cfg}: ED/ES frames ({info.get('ED')}, {info.get('ES')}) do not match the frame "
                            f"files {sorted(frames)}; phases of unmatched frames unknown")
        attributes = {k.lower(): _number(v) for k, v in info.items() if k in ("Height", "Weight") and _number(v)}
        if _number(info.get("NbFrame")):
            attributes["frames"] = int(_number(info["NbFrame"]))
        for number, image in sorted(frames.items()):
            label = label_beside(image)
            if label is None:
                problems.append(f"{image}: no label ({image.name.split('.')[0]}_gt.nii.gz) beside it; skipped")
                continue
            records.append(CaseRecord(
                patient=patient, phase=phases.get(number, UNKNOWN), image_path=str(image),
                label_path=str(label), group=canonical_group(info.get("Group")), label_convention="acdc",
                attributes={**attributes, "frame_number": number},
            ))
    return records, problems


# -- M&Ms-2 --------------------------------------------------------------------------------------------
def list_mnms2(root: Path) -> tuple[list[CaseRecord], list[str]]:
    csv_path = find_files(root, "dataset_information.csv")[0]
    rows = {}
    for row in _read_csv(csv_path):
        code = row.get("SUBJECT_CODE", "")
        if code.isdigit():
            rows[int(code)] = row
    records, problems = [], []
    for image in find_files(root, "*_SA_E[DS].nii*"):
        match = MNMS2_IMAGE.match(image.name)
        if not match:
            continue
        code, phase = match.group(1), match.group(2)
        row = rows.get(int(code))
        if row is None:
            problems.append(f"{image}: subject {code} has no row in {csv_path}; vendor and group unknown")
            row = {}
        label = label_beside(image)
        if label is None:
            problems.append(f"{image}: no label ({code}_SA_{phase}_gt.nii.gz) beside it; skipped")
            continue
        records.append(CaseRecord(
            patient=code, phase=phase, image_path=str(image), label_path=str(label),
            vendor=vendor_name(row.get("VENDOR")), group=canonical_group(row.get("DISEASE")),
            label_convention="mnms", attributes=_attributes(row, ("SEX", "AGE", "FIELD", "SCANNER")),
        ))
    return records, problems


def _attributes(row: dict[str, str], keys) -> dict:
    out = {}
    for key in keys:
        if row.get(key):
            out[key.lower()] = _number(row[key]) if _number(row[key]) is not None else row[key]
    return out


# -- M&Ms-1 --------------------------------------------------------------------------------------------
def _mnms1_csv(root: Path) -> Path | None:
    """The M&Ms-1 information CSV: in ``root`` (any depth) or up to two folders above it."""
    candidates = find_files(root, "*.csv") + [p for parent in list(root.parents)[:2]
                                                        for p in parent.glob("*.csv")]
    for path in sorted(candidates):
        columns = _csv_columns(path)
        if {"External code", "ED", "ES"} <= columns and columns & {"VendorName", "Vendor"}:
            return path
    return None


def list_mnms1(root: Path) -> tuple[list[CaseRecord], list[str]]:
    csv_path = _mnms1_csv(root)
    rows = {row["External code"]: row for row in _read_csv(csv_path)}
    records, problems = [], []
    for image in find_files(root, "*_sa.nii*"):
        match = MNMS1_IMAGE.match(image.name)
        if not match:
            continue
        code = match.group(1)
        row = rows.get(code)
        label = label_beside(image)
        if row is None:
            problems.append(f"{image}: code {code} has no row in {csv_path} (ED/ES frames unknown); skipped")
            continue
        if label is None:
            problems.append(f"{image}: no label ({code}_sa_gt.nii.gz) beside it; skipped")
            continue
        vendor = vendor_name(row.get("VendorName") or row.get("Vendor"))
        attributes = _attributes(row, ("Centre", "Age", "Sex", "Height", "Weight"))
        for phase in PHASES:
            frame = _number(row.get(phase))
            if frame is None or frame != int(frame) or frame < 0:
                problems.append(f"{csv_path}: {code} has no valid {phase} frame index ({row.get(phase)!r}); "
                                f"{phase} skipped")
                continue
            records.append(CaseRecord(
                patient=code, phase=phase, image_path=str(image), label_path=str(label), vendor=vendor,
                group=canonical_group(row.get("Pathology")), frame=int(frame), label_convention="mnms",
                attributes=attributes,
            ))
    return records, problems


# -- generic folder of pairs ------------------------------------------------------------------------
def _patient_and_phase(stem: str) -> tuple[str, str]:
    """``"case7_ED"`` → ``("case7", "ED")``; a name without a phase suffix keeps phase unknown."""
    for phase in PHASES:
        for sep in ("_", "-"):
            if stem.upper().endswith(sep + phase) and len(stem) > len(phase) + 1:
                return stem[: -len(phase) - 1], phase
    return stem, UNKNOWN


def list_generic(root: Path, label_convention: str) -> tuple[list[CaseRecord], list[str]]:
    records, problems = [], []
    images = [p for p in find_files(root, "*") if p.is_file() and is_image_file(p)
              and not is_label_name(p)]
    ids = [_patient_and_phase(split_suffix(p)[0]) for p in images]
    for image, (patient, phase) in zip(images, ids):
        label = label_beside(image)
        if label is None:
            problems.append(f"{image}: no label ({split_suffix(image)[0]}_gt{split_suffix(image)[1]}, _label, "
                            "_seg or _mask) beside it; skipped")
            continue
        if ids.count((patient, phase)) > 1:  # same name in several sub-folders: the folder tells them apart
            patient = "/".join((*image.parent.relative_to(root).parts, patient))
        records.append(CaseRecord(patient=patient, phase=phase, image_path=str(image), label_path=str(label),
                                  label_convention=label_convention))
    return records, problems
