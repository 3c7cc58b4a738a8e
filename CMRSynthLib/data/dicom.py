"""A DICOM series folder as one :class:`~CMRSynthLib.data.volume.Volume`.

One folder holds one series (grouped by SeriesInstanceUID with GDCM). A cine short-axis series holds
several images per slice position (one per cardiac phase): the caller picks the phase with ``frame``
(index in trigger-time order) or ``trigger_time`` (ms). Mixed phases are never stacked silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from CMRSynthLib.data.volume import Volume, from_sitk
from CMRSynthLib.errors import InputError

# DICOM tags as SimpleITK/GDCM spell them ("group|element").
TAG_POSITION = "0020|0032"  # ImagePositionPatient (LPS, mm)
TAG_ORIENTATION = "0020|0037"  # ImageOrientationPatient (row and column direction cosines)
TAG_TRIGGER_TIME = "0018|1060"  # TriggerTime (ms after the R wave)
TAG_INSTANCE = "0020|0013"  # InstanceNumber
TAG_DESCRIPTION = "0008|103e"  # SeriesDescription

POSITION_DECIMALS = 3  # positions closer than 1 µm along the slice normal are one slice position
SPACING_TOLERANCE = 0.01  # relative deviation of slice gaps tolerated before calling the stack irregular


@dataclass(frozen=True)
class _SliceFile:
    path: str
    position: float  # distance along the slice normal (mm)
    trigger_time: float | None
    instance: int


def _has_dicom_file(folder: Path) -> bool:
    """Whether a file directly in ``folder`` carries the DICOM Part 10 preamble ("DICM" at byte 128)."""
    for path in folder.iterdir():
        if path.is_file() and path.stat().st_size > 132:
            with open(path, "rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return True
    return False


def dicom_series(folder: str | os.PathLike) -> list[str]:
    """SeriesInstanceUIDs of the DICOM files directly inside ``folder`` (empty if there are none)."""
    import SimpleITK as sitk

    # GDCM prints a warning for a folder without DICOM: look for a DICOM file first.
    if not _has_dicom_file(Path(folder)):
        return []
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def is_dicom_folder(folder: str | os.PathLike) -> bool:
    return Path(folder).is_dir() and bool(dicom_series(folder))


def read_dicom_series(folder: str | os.PathLike, *, frame: int | None = None,
                      trigger_time: float | None = None) -> Volume:
    """Read the one series in ``folder`` as a 3D volume (KJI voxels, IJK-to-RAS geometry).

    For a cine series give ``frame`` (0-based, in trigger-time order) or ``trigger_time`` (ms); for a
    single-phase series leave both unset (``frame=0`` is also accepted). Raises :class:`InputError` naming
    the folder when it holds no series or several, when a cine phase is not chosen, or when slices are
    missing or irregularly spaced.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    uid = _only_series(folder)
    files = [_slice_info(name, folder) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
    chosen = _choose_phase(_by_position(files), folder, frame=frame, trigger_time=trigger_time)
    _check_regular(chosen, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([f.path for f in chosen])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"DICOM series {uid} could not be read ({str(exc).strip().splitlines()[-1][:160]})",
                         path=folder) from None
    return from_sitk(image, path=folder)


def _only_series(folder: Path) -> str:
    if not folder.is_dir():
        raise InputError("is not a folder; a DICOM series folder is expected", path=folder)
    uids = dicom_series(folder)
    if not uids:
        raise InputError("holds no DICOM series", path=folder)
    if len(uids) > 1:
        import SimpleITK as sitk

        listing = "; ".join(f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)"
                            for uid in uids)
        raise InputError(f"holds {len(uids)} DICOM series ({listing}); put each series in its own folder",
                         path=folder)
    return uids[0]


def _slice_info(path: str, folder: Path) -> _SliceFile:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError("is not a readable DICOM file", path=path) from None
    tags = set(reader.GetMetaDataKeys())
    if TAG_POSITION not in tags or TAG_ORIENTATION not in tags:
        raise InputError("has no ImagePositionPatient/ImageOrientationPatient; cannot place the slice",
                         path=path)
    position = np.array(reader.GetMetaData(TAG_POSITION).split("\\"), dtype=float)
    cosines = np.array(reader.GetMetaData(TAG_ORIENTATION).split("\\"), dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    trigger = reader.GetMetaData(TAG_TRIGGER_TIME).strip() if TAG_TRIGGER_TIME in tags else ""
    instance = reader.GetMetaData(TAG_INSTANCE).strip() if TAG_INSTANCE in tags else ""
    return _SliceFile(path, float(position @ normal), float(trigger) if trigger else None,
                      int(float(instance)) if instance else 0)


def _by_position(files: list[_SliceFile]) -> list[list[_SliceFile]]:
    """Files grouped by slice position (sorted along the normal), each group in trigger-time order."""
    groups: dict[float, list[_SliceFile]] = {}
    for f in files:
        groups.setdefault(round(f.position, POSITION_DECIMALS), []).append(f)
    key = lambda f: (f.trigger_time if f.trigger_time is not None else float("-inf"), f.instance)  # noqa: E731
    return [sorted(groups[p], key=key) for p in sorted(groups)]


def _choose_phase(groups: list[list[_SliceFile]], folder: Path, *, frame: int | None,
                  trigger_time: float | None) -> list[_SliceFile]:
    if frame is not None and trigger_time is not None:
        raise InputError("give either frame or trigger_time, not both", path=folder)
    counts = sorted({len(g) for g in groups})
    if counts != [1] and len(counts) > 1:
        raise InputError(f"holds {len(groups)} slice positions with different numbers of images per position "
                         f"({', '.join(map(str, counts))}): a cine series with missing phases or mixed series; "
                         "not stacked", path=folder)
    per_position = counts[0]
    if trigger_time is not None:
        return [_at_trigger_time(g, trigger_time, folder) for g in groups]
    if frame is None:
        if per_position > 1:
            raise InputError(f"is a cine series: {per_position} frames at each of {len(groups)} slice positions; "
                             f"choose a phase with --frame 0..{per_position - 1} (or a trigger time)", path=folder)
        frame = 0
    if not 0 <= frame < per_position:
        raise InputError(f"frame {frame} is out of range: the series has {per_position} frame(s) per slice "
                         f"position (0..{per_position - 1})", path=folder)
    return [g[frame] for g in groups]


def _at_trigger_time(group: list[_SliceFile], trigger_time: float, folder: Path) -> _SliceFile:
    times = [f.trigger_time for f in group]
    if None in times:
        raise InputError("some images have no TriggerTime (0018,1060); choose the phase with frame instead",
                         path=folder)
    best = min(group, key=lambda f: abs(f.trigger_time - trigger_time))
    if abs(best.trigger_time - trigger_time) > 0.5:
        raise InputError(f"no image at trigger time {trigger_time:g} ms at position {best.position:.2f} mm "
                         f"(available: {', '.join(f'{t:g}' for t in times)})", path=folder)
    return best


def _check_regular(chosen: list[_SliceFile], folder: Path) -> None:
    gaps = np.diff([f.position for f in chosen])
    if len(gaps) and np.ptp(gaps) > SPACING_TOLERANCE * gaps.mean():
        raise InputError(f"slice gaps are irregular ({gaps.min():.3g} to {gaps.max():.3g} mm): slices missing "
                         "or several stacks in one series; not stacked", path=folder)
