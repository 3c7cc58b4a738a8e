"""The built-in phantom cohort (DESIGN §7): simulated short-axis cine bSSFP stacks, made on demand.

``make_phantom_cohort(n, seed=s)`` gives ``2 n`` cases (ED and ES of each patient). Patient ``i`` is drawn
from its own random stream seeded by ``(seed, i)``, so it is the same whether 5 or 50 patients are made, and
the same seed gives byte-identical arrays. Groups (NOR, DCM, HCM, MINF, ARV) and vendors (Siemens, Philips,
GE, Canon) go round-robin, so every 20 consecutive patients hold each (group, vendor) pair once.

The anatomy is in :mod:`CMRSynthLib.data.phantom_anatomy`, the scanner styles in
:mod:`CMRSynthLib.data.phantom_vendors`. Every case is marked simulated: ``CaseRecord.simulated`` is True and
written files carry ``descrip = "SIMULATED phantom (CMRSynth)"``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.conventions import GROUPS, LV, MNMS_VENDORS
from CMRSynthLib.data.phantom_anatomy import Renderer, sample_anatomy, slice_positions, smooth_field
from CMRSynthLib.data.phantom_vendors import VENDOR_STYLES, acquire, bias_field, patient_style
from CMRSynthLib.data.volume import Volume, write_volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_dir, atomic_write_text

VENDORS = tuple(MNMS_VENDORS.values())  # ("Siemens", "Philips", "GE", "Canon")
DESCRIP = "SIMULATED phantom (CMRSynth)"
DEFAULT_SHAPE = (12, 128, 128)
PARAMETERS_FILE = "phantom.json"
CSV_COLUMNS = ("patient", "vendor", "phase", "group", "image", "label", "height", "weight", "simulated", "ef")
# base → apex direction of the short-axis stack in RAS: towards the patient's left, anterior and inferior
_LONG_AXIS = np.array([-0.58, 0.52, -0.63])
_POSTERIOR = np.array([0.0, -1.0, -0.25])  # roughly where the image rows point (towards the spine)
_HEART_RAS = np.array([10.0, 5.0, 20.0])  # RAS of the ED base-plane centre, mm


def patient_id(index: int, seed: int = 0) -> str:
    """``phantom007`` for seed 0, ``phantom007-seed5`` otherwise: another seed makes other people, and patient
    ids are how privacy decisions tell people apart (a DP fine-tune's "same patients" check)."""
    return f"phantom{index:03d}" if seed == 0 else f"phantom{index:03d}-seed{seed}"


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(K, H, W)`` as ints; ValueError unless three positive sizes with at least 16 rows and columns."""
    try:
        k, h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be three sizes (K, H, W), got {shape!r}") from None
    if k < 1 or h < 16 or w < 16 or tuple(shape) != (k, h, w):
        raise ValueError(f"shape must be integers K >= 1 and H, W >= 16, got {tuple(shape)!r}")
    return k, h, w


def _orientation(rng: np.random.Generator) -> np.ndarray:
    """3×3 direction matrix (columns i, j, k in RAS) of an oblique short-axis stack, jittered per patient."""
    k_axis = _LONG_AXIS + rng.normal(0.0, 0.08, 3)
    k_axis /= np.linalg.norm(k_axis)
    j_axis = _POSTERIOR - (_POSTERIOR @ k_axis) * k_axis
    j_axis /= np.linalg.norm(j_axis)
    i_axis = np.cross(k_axis, j_axis)  # RV → LV: to the patient's left (a left-handed frame, like many scans)
    spin = rng.normal(0.0, 0.1)
    i_axis, j_axis = np.cos(spin) * i_axis + np.sin(spin) * j_axis, -np.sin(spin) * i_axis + np.cos(spin) * j_axis
    return np.stack([i_axis, j_axis, k_axis], axis=1)


def _ijk_to_ras(direction: np.ndarray, pixel: float, z: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """IJK-to-RAS of a stack whose slice ``k`` lies ``z[k]`` mm down the long axis (a lone slice: 8 mm thick)."""
    spacing_k = float(z[1] - z[0]) if z.size > 1 else 8.0
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array([pixel, pixel, spacing_k])
    centre_0 = _HEART_RAS + direction[:, 2] * z[0]
    matrix[:3, 3] = centre_0 - direction[:, 0] * pixel * (cols - 1) / 2 - direction[:, 1] * pixel * (rows - 1) / 2
    return matrix


def make_phantom_patient(index: int, *, seed: int = 0, shape=DEFAULT_SHAPE, vendor: str | None = None,
                         group: str | None = None) -> list[Case]:
    """The ED and ES cases of patient ``index`` (vendor and group default to the round-robin choice).

    Images are ``(K, H, W)`` float32 magnitudes in the vendor's scanner units; labels ``(K, H, W)`` uint8
    canonical (0 background, 1 LV blood pool incl. papillary muscles, 2 LV myocardium, 3 RV blood pool).
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    k, h, w = check_shape(shape)
    vendor = VENDORS[index % len(VENDORS)] if vendor is None else vendor
    group = GROUPS[index % len(GROUPS)] if group is None else group
    if vendor not in VENDOR_STYLES:
        raise ValueError(f"vendor must be one of {sorted(VENDOR_STYLES)}, got {vendor!r}")
    rng = np.random.default_rng([seed, index])
    anatomy = sample_anatomy(rng, group)
    style = patient_style(VENDOR_STYLES[vendor], rng)
    direction = _orientation(rng)
    pixel = style.fov_mm / w
    z = slice_positions(anatomy, k)
    renderer = Renderer(anatomy, z, rows=h, cols=w, pixel=pixel)
    values = dict(style.contrast)
    thorax = renderer.thorax(values, rng)
    texture = 1.0 + 0.05 * smooth_field(rng, (k, h, w), 8)  # gentle tissue and flow inhomogeneity
    bias = bias_field((k, h, w), style, rng)
    matrix = _ijk_to_ras(direction, pixel, z, h, w)
    pid = patient_id(index, seed)
    rendered = {phase: renderer.heart(phase, thorax, values) for phase in ("ED", "ES")}
    lv_voxels = {phase: np.count_nonzero(label == LV) for phase, (_, label) in rendered.items()}
    ef = round(100.0 * (1.0 - lv_voxels["ES"] / max(lv_voxels["ED"], 1)), 1)
    attributes = {"height": anatomy.height, "weight": anatomy.weight, "ef": ef}
    cases = []
    for phase, (signal, label) in rendered.items():
        image = acquire(signal * texture, style, rng, bias=bias)
        meta = {"descrip": DESCRIP}
        record = CaseRecord(
            patient=pid, phase=phase, image_path=f"{pid}/{pid}_{phase}.nii.gz",
            label_path=f"{pid}/{pid}_{phase}_gt.nii.gz", vendor=vendor, group=group,
            attributes=attributes, simulated=True)
        cases.append(Case(record, Volume(image, matrix, meta), Volume(label, matrix, meta)))
    return cases


def make_phantom_cohort(patients: int, *, seed: int = 0, shape=DEFAULT_SHAPE,
                        vendors: Sequence[str] = VENDORS) -> list[Case]:
    """``2 * patients`` cases (ED then ES per patient), patients ``phantom000 ...`` in order
    (``phantom000-seed<s> ...`` for a seed other than 0: :func:`patient_id`).

    ``vendors`` go round-robin over the patients (any subset of Siemens, Philips, GE, Canon); the groups
    NOR, DCM, HCM, MINF, ARV too. Record image/label paths are where :func:`write_phantom_cohort` puts the
    files, relative to its folder.
    """
    _check_count(patients, seed)
    vendors = tuple(vendors)
    if not vendors:
        raise ValueError("vendors must name at least one vendor")
    return [case for i in range(int(patients))
            for case in make_phantom_patient(i, seed=seed, shape=shape, vendor=vendors[i % len(vendors)])]


def _check_count(patients, seed) -> None:
    for name, value, low in (("patients", patients, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def phantom_parameters(patients: int, *, seed: int, shape) -> dict:
    """What ``phantom.json`` records: enough to tell whether a folder already holds this cohort."""
    _check_count(patients, seed)
    return {"format": "cmrsynth-phantom", "version": 1, "patients": int(patients), "seed": int(seed),
            "shape": list(check_shape(shape)), "vendors": list(VENDORS), "groups": list(GROUPS),
            "simulated": True}


def existing_phantom(out_dir: str | os.PathLike, parameters: dict) -> bool:
    """True if ``out_dir`` is a complete phantom cohort written with exactly ``parameters``."""
    out = Path(out_dir)
    try:
        stored = json.loads((out / PARAMETERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stored == parameters and (out / "cohort.csv").is_file()


def write_phantom_cohort(out_dir: str | os.PathLike, patients: int, *, seed: int = 0, shape=DEFAULT_SHAPE,
                         callback: Callable[[int], None] | None = None) -> Path:
    """Write the cohort to ``out_dir`` atomically and return it.

    Layout: ``<patient>/<patient>_<phase>.nii.gz`` (float32 image), ``<patient>/<patient>_<phase>_gt.nii.gz``
    (uint8 canonical label), ``cohort.csv`` (one row per case: patient, vendor, phase, group, image, label,
    height, weight, simulated, ef) and ``phantom.json`` (the parameters). An ``out_dir`` that already holds
    this very cohort is returned untouched; any other non-empty ``out_dir`` raises :class:`InputError`.
    ``callback(i)`` is called after patient ``i`` (0-based) is written.
    """
    parameters = phantom_parameters(patients, seed=seed, shape=shape)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()):
        if existing_phantom(out, parameters):
            return out
        raise InputError("exists and is not empty (and is not a phantom cohort with these parameters); "
                         "choose a new folder", path=out)
    with atomic_dir(out) as tmp:
        rows = []
        for i in range(parameters["patients"]):
            for case in make_phantom_patient(i, seed=seed, shape=shape):
                r = case.record
                write_volume(case.image, tmp / r.image_path)
                write_volume(case.label, tmp / r.label_path)
                rows.append({"patient": r.patient, "vendor": r.vendor, "phase": r.phase, "group": r.group,
                             "image": r.image_path, "label": r.label_path, "height": r.attributes["height"],
                             "weight": r.attributes["weight"], "simulated": "true", "ef": r.attributes["ef"]})
            if callback is not None:
                callback(i)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(tmp / "cohort.csv", text.getvalue())
        atomic_write_text(tmp / PARAMETERS_FILE, json.dumps(parameters, indent=2) + "\n")
    return out
