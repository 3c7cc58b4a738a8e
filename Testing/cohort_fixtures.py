"""Tiny cohorts built by hand in every supported layout, with label volumes known in closed form.

Shared by ``Testing/data/test_cohorts.py`` and ``Testing/jobs/test_inspect.py`` (importable because pytest
puts the folder of the root ``conftest.py`` on ``sys.path``).

Every volume is 3 slices of 16×16 voxels at 1.5 × 1.5 × 8 mm on an oblique grid, so one voxel is
0.018 ml. The canonical ED label holds LV = 10×10×2 voxels (3.6 ml), MYO = 10×10×1 (1.8 ml) and
RV = 3×4×5 (1.08 ml); the ES label has half the LV (1.8 ml).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CMRSynthLib.data.volume import Volume, to_sitk, write_volume

SHAPE = (3, 16, 16)  # K, J, I
SPACING = (1.5, 1.5, 8.0)  # mm along I, J, K
EXPECTED_ML = {"ED": {"LV": 3.6, "MYO": 1.8, "RV": 1.08}, "ES": {"LV": 1.8, "MYO": 1.8, "RV": 1.08}}


def matrix() -> np.ndarray:
    """An oblique IJK-to-RAS matrix (rotation of 30° about the S axis, then 10° about R)."""
    a, b = np.radians(30), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rx @ rz * np.asarray(SPACING)
    m[:3, 3] = [-12.5, 30.0, 55.0]
    return m


def canonical_label(phase: str = "ED") -> np.ndarray:
    """(K, J, I) uint8 label in the canonical convention (1 LV, 2 MYO, 3 RV) with EXPECTED_ML volumes."""
    label = np.zeros(SHAPE, np.uint8)
    label[0:2 if phase == "ED" else 1, 2:12, 2:12] = 1
    label[2, 2:12, 2:12] = 2
    label[:, 12:16, 0:5] = 3
    return label


def in_convention(label: np.ndarray, convention: str) -> np.ndarray:
    """A canonical label written in ``convention`` (ACDC swaps LV and RV: 1 RV, 3 LV)."""
    if convention == "acdc":
        swapped = label.copy()
        swapped[label == 1], swapped[label == 3] = 3, 1
        return swapped
    return label


def image_for(label: np.ndarray) -> np.ndarray:
    """A float32 image whose intensity follows the structures (bright blood, darker muscle)."""
    return (100.0 + 40.0 * (label > 0) + np.arange(label.shape[-1], dtype=np.float32)).astype(np.float32)


def write_pair(image_path: Path, label_path: Path, *, phase: str = "ED", convention: str = "canonical") -> None:
    label = canonical_label(phase)
    write_volume(Volume(image_for(label), matrix()), image_path)
    write_volume(Volume(in_convention(label, convention), matrix()), label_path)


def write_4d(path: Path, frames: list[np.ndarray]) -> None:
    """(T, K, J, I) frames on :func:`matrix` as a 4D NIfTI file (x, y, z, t)."""
    image = sitk.JoinSeries([to_sitk(Volume(f, matrix())) for f in frames])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_acdc(root: Path, patients=(("patient001", "DCM", 1, 3), ("patient002", "RV", 1, 2))) -> Path:
    """ACDC layout: frames ED/ES (1-based numbers from Info.cfg) in ACDC label numbering + an ignored 4D file."""
    for patient, group, ed, es in patients:
        folder = root / patient
        folder.mkdir(parents=True)
        for number, phase in ((ed, "ED"), (es, "ES")):
            stem = f"{patient}_frame{number:02d}"
            write_pair(folder / f"{stem}.nii.gz", folder / f"{stem}_gt.nii.gz", phase=phase, convention="acdc")
        write_4d(folder / f"{patient}_4d.nii.gz", [image_for(canonical_label())] * 3)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 184.0\nNbFrame: 30\n"
                                         "Weight: 95.0\n")
    return root


def make_mnms1(root: Path, *, vendor_column: str = "VendorName") -> Path:
    """M&Ms-1: 4D cine + 4D labels (ED frame 0, ES frame 2 labelled) and the information CSV one level up."""
    codes = {"A0S9V9": ("Siemens", "A", "NOR"), "B1C2D3": ("Philips", "B", "HCM")}
    rows = []
    for code, (name, letter, group) in codes.items():
        folder = root / "Training" / "Labeled" / code
        empty = np.zeros(SHAPE, np.uint8)
        labels = [canonical_label("ED"), empty, canonical_label("ES"), empty]
        write_4d(folder / f"{code}_sa.nii.gz", [image_for(lab) for lab in labels])
        write_4d(folder / f"{code}_sa_gt.nii.gz", labels)
        row = {"External code": code, "Vendor": letter, "Centre": 1, "ED": 0, "ES": 2, "Pathology": group,
               "Height": 170, "Weight": 70}
        if vendor_column == "VendorName":
            row["VendorName"] = name
        rows.append(row)
    write_csv(root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv", rows)
    return root


def make_mnms2(root: Path) -> Path:
    """M&Ms-2: NNN/NNN_SA_{ED,ES}[_gt].nii.gz (+ ignored LA files) and dataset_information.csv."""
    for code, vendor, disease in (("001", "Philips Medical Systems", "DLV"), ("002", "SIEMENS", "NOR")):
        folder = root / code
        folder.mkdir(parents=True)
        for phase in ("ED", "ES"):
            write_pair(folder / f"{code}_SA_{phase}.nii.gz", folder / f"{code}_SA_{phase}_gt.nii.gz", phase=phase)
            write_pair(folder / f"{code}_LA_{phase}.nii.gz", folder / f"{code}_LA_{phase}_gt.nii.gz", phase=phase)
    write_csv(root / "dataset_information.csv", [
        {"SUBJECT_CODE": 1, "DISEASE": "DLV", "SEX": "M", "AGE": 60, "VENDOR": "Philips Medical Systems"},
        {"SUBJECT_CODE": 2, "DISEASE": "NOR", "SEX": "F", "AGE": 40, "VENDOR": "SIEMENS"},
    ])
    return root


def make_generic(root: Path, *, convention: str = "canonical") -> Path:
    """Pairs with the four label suffixes and three formats, one nested folder deep."""
    write_pair(root / "caseA_ED.nii.gz", root / "caseA_ED_gt.nii.gz", phase="ED", convention=convention)
    write_pair(root / "caseA_ES.nrrd", root / "caseA_ES_label.nrrd", phase="ES", convention=convention)
    write_pair(root / "site2" / "caseB.mha", root / "site2" / "caseB_seg.mha", convention=convention)
    write_pair(root / "site2" / "caseC.nii", root / "site2" / "caseC_mask.nii.gz", convention=convention)
    return root


def make_phantom_layout(root: Path) -> Path:
    """The phantom's own layout: cohort.csv with relative image/label paths."""
    rows = []
    for patient, vendor in (("phantom000", "Siemens"), ("phantom001", "GE")):
        for phase in ("ED", "ES"):
            image, label = f"{patient}/{patient}_{phase}.nii.gz", f"{patient}/{patient}_{phase}_gt.nii.gz"
            (root / patient).mkdir(parents=True, exist_ok=True)
            write_pair(root / image, root / label, phase=phase)
            rows.append({"patient": patient, "vendor": vendor, "phase": phase, "group": "NOR", "image": image,
                         "label": label, "height": 175.0, "weight": 72.5, "simulated": True})
    write_csv(root / "cohort.csv", rows)
    return root


# DICOM: an oblique short-axis orientation (LPS): rows along (cos, sin, 0), columns along (0, 0, -1),
# slice normal = row × col.
ROW = np.array([np.cos(0.4), np.sin(0.4), 0.0])
COL = np.array([0.0, 0.0, -1.0])
NORMAL = np.cross(ROW, COL)
ORIGIN = np.array([-80.0, 40.5, 120.0])
PIXEL = (1.25, 1.5)  # (column spacing along ROW, row spacing along COL) in mm
GAP = 8.0


def write_dicom_series(folder: Path, frames: np.ndarray, *, series_uid="1.2.826.0.1.3680043.2.1125.1.1",
                       trigger_times=None, start_instance=1, positions=None) -> Path:
    """Write ``frames`` (T, K, J, I) int16 as one DICOM file per (t, k) with the position, orientation,
    instance number and (when given) trigger time tags set by hand; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n_frames, n_slices = frames.shape[:2]
    instance = start_instance
    for k in range(n_slices):
        offset = positions[k] if positions is not None else k * GAP
        for t in range(n_frames):
            image = sitk.GetImageFromArray(frames[t, k])
            image.SetSpacing(PIXEL)
            tags = {
                "0008|0060": "MR",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                "0008|0018": f"{series_uid}.{instance}",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": series_uid,
                "0008|103e": "SAX cine",
                "0020|0032": "\\".join(f"{v:.4f}" for v in ORIGIN + offset * NORMAL),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (*ROW, *COL)),
                "0020|0013": str(instance),
                "0018|0050": str(GAP),
            }
            if trigger_times is not None:
                tags["0018|1060"] = f"{trigger_times[t]:.1f}"
            for key, value in tags.items():
                image.SetMetaData(key, value)
            writer.SetFileName(str(folder / f"IM{instance:04d}.dcm"))
            writer.Execute(image)
            instance += 1
    return folder
