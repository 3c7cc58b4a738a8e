"""Write a synthetic volume as a DICOM MR series that can never pass for a real patient.

Every file says so: ImageType ``DERIVED\\SECONDARY``, SeriesDescription and ImageComments starting
"SYNTHETIC", PatientName ``SYNTHETIC^CMRSYNTH``, a PatientID made from the model id, Manufacturer
"CMRSynth (synthetic)". Nothing is copied from any real file: the mask the image was generated from is a
NIfTI/NRRD array without identifiers, and every UID is new, made under pydicom's UID root from the content
(model id, seed, vendor, voxels), so the same synthetic image always gets the same UIDs and a different one
never does. Dates and times are left empty (type 2): a synthetic image has no acquisition.

Geometry (LPS, DICOM's frame): ImageOrientationPatient holds the directions of increasing column (I) and
row (J) index, ImagePositionPatient the centre of each slice's first voxel, PixelSpacing (row, column) =
(spacing along J, spacing along I).

Intensities: stored as uint16 with RescaleSlope and RescaleIntercept mapping back to the image's values
(:func:`stored_values`). Whole numbers that fit are stored as themselves (slope 1); any other image, e.g. a
float image in [0, 1], is spread over all 65536 levels, so it keeps its grey range (one quantisation step =
the slope). WindowCenter/WindowWidth span the 1st to 99th percentile of the volume, so a viewer opens it with
a sensible contrast. Works with pydicom 2.4 and 3.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from CMRSynthLib.data.conventions import LPS_TO_RAS
from CMRSynthLib.data.volume import Volume
from CMRSynthLib.files import atomic_dir

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LEVELS = 65535  # the largest uint16 value
WINDOW_PERCENTILES = (1.0, 99.0)


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def stored_values(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``values`` as ``(stored uint16, slope, intercept)`` with ``values ≈ stored * slope + intercept``.

    Whole numbers within 65535 of ``min(0, values.min())`` are stored exactly (slope 1); otherwise the range
    ``[min, max]`` is spread over 0..65535 and every value is within half a step (``slope / 2``) of its stored
    one. Slope and intercept are the values their decimal strings (:func:`_ds`) read back as.
    """
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    intercept = min(0.0, lo)
    if np.array_equal(values, np.rint(values)) and hi - intercept <= LEVELS:
        slope = 1.0
    else:
        intercept = float(_ds(lo))
        slope = float(_ds((hi - intercept) / LEVELS)) if hi > intercept else 1.0
    stored = np.clip(np.rint((values - intercept) / slope), 0, LEVELS).astype(np.uint16)
    return stored, slope, intercept


def window(values: np.ndarray, slope: float) -> tuple[float, float]:
    """``(WindowCenter, WindowWidth)``: the 1st to 99th percentile of ``values`` (at least one step wide)."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), WINDOW_PERCENTILES)
    return float((lo + hi) / 2), float(max(hi - lo, slope))


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, description: str) -> Path:
    """Write ``volume`` as one DICOM file per slice (``IM0001.dcm`` ...) into ``folder``, atomically.

    ``description`` goes into SeriesDescription after "SYNTHETIC " (64 characters in all).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored, slope, intercept = stored_values(volume.array)
    centre, width = window(volume.array, slope)
    lps = LPS_TO_RAS @ volume.ijk_to_ras
    spacing = volume.spacing
    orientation = np.concatenate([lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]])
    content = hashlib.sha256(stored.tobytes() + description.encode() + lps.tobytes()).hexdigest()
    uid = lambda *parts: generate_uid(entropy_srcs=[content, *map(str, parts)])  # noqa: E731
    study, series, frame = uid("study"), uid("series"), uid("frame")
    model = volume.metadata.get("cmrsynth_model", "unknown")
    text = ("SYNTHETIC " + description)[:64]
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for k, plane in enumerate(stored):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = uid("instance", k)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.Modality, ds.ImageType = "MR", ["DERIVED", "SECONDARY"]
            ds.SeriesDescription, ds.StudyDescription = text, "SYNTHETIC CMRSynth"
            ds.ImageComments = f"SYNTHETIC image made by CMRSynth ({description[:80]}); not a real patient"
            ds.DerivationDescription = "Generated by a CMRSynth model from an anatomical mask"
            ds.PatientName, ds.PatientID = "SYNTHETIC^CMRSYNTH", f"CMRSYNTH-{model}"[:64]
            ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "", "", ""
            ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", ""
            ds.Manufacturer, ds.BurnedInAnnotation = "CMRSynth (synthetic)", "NO"
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.ImageOrientationPatient = [_ds(v) for v in orientation]
            ds.ImagePositionPatient = [_ds(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
            ds.SliceThickness = ds.SpacingBetweenSlices = _ds(spacing[2])
            ds.Rows, ds.Columns = plane.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
            ds.WindowCenter, ds.WindowWidth = _ds(centre), _ds(width)
            ds.PixelData = np.ascontiguousarray(plane).tobytes()
            _save(ds, tmp / f"IM{k + 1:04d}.dcm")
    return folder


def _save(ds, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file (explicit VR little endian) with pydicom 3 or 2.4."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # pydicom 2: the encoding is set on the dataset; write_like_original=False writes the preamble and meta
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(path, ds, write_like_original=False)
