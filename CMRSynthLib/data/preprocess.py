"""Preprocessing of short-axis stacks, and its exact inverse back onto the user's grid.

Every case goes through the same recorded steps (DESIGN §2.3), in this order:

1. optional N4 bias-field correction (SimpleITK, estimated on a shrunk copy, applied at full resolution);
2. robust intensity normalisation: clip at two percentiles of the whole volume, scale linearly to [-1, 1];
3. in-plane resampling to a target spacing (image linear or B-spline, labels nearest), slice by slice;
4. crop/pad to a fixed in-plane size around the heart: the centroid of ``label > 0`` over the whole stack,
   so every slice shares one crop (an empty label centres on the image, and the transform records it).

Field of view (``PreprocessConfig.field_of_view``): ``"heart"`` models see and make only that heart-centred
crop, and a generated volume is the background outside it. ``"whole"`` models learn from the same fixed-size
crop (the *tile*, the training and audit view), but pushed inside the image wherever the image is larger, so
they never learn a frame that real images do not have; they generate on the *whole* field of view of the
reference: :func:`prepare_mask` then covers the entire image at the target spacing, its size rounded up to
a multiple of :data:`FOV_MULTIPLE` (the networks are fully convolutional), centred on the image.

Orientation: the in-plane axes are I (columns) and J (rows) of the volume *as stored*; K (the slice axis)
is kept as it is, slice for slice. Short-axis stacks are acquired that way, and their plane is oblique to
every patient axis, so reorienting to a patient axis would resample across slices and break the
voxel-for-voxel return to the user's mask. The prepared grid's axes point along the original I, J, K.

Steps 3–4 are one in-plane affine map from the prepared pixel ``(c, r)`` to the original continuous index
``(i, j) = (x0 + c·ax, y0 + r·ay)``. It is snapped so that with unchanged spacing the prepared grid is an
integer shift of the original one (crop/pad then loses nothing); :class:`SliceTransform` holds it and
:meth:`SliceTransform.restore` applies its inverse. Resampling runs in SimpleITK in that index frame (K
spacing 1), so it never blends neighbouring slices and never depends on the direction matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.conventions import to_canonical
from CMRSynthLib.data.volume import Volume, check_finite, check_same_geometry, to_sitk
from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import strict_from_dict

INTERPOLATIONS = {"linear": 1, "bspline": 3}  # image interpolation name → spline order
FIELDS_OF_VIEW = ("heart", "whole")
FOV_MULTIPLE = 32  # a whole-field grid's sides: what a 4× autoencoder under a 3-level UNet (8×) can halve
_SITK_INTERPOLATORS = {0: "sitkNearestNeighbor", 1: "sitkLinear", 3: "sitkBSpline"}


def _pair(name: str, value, kind) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"preprocessing {name} must be a pair of numbers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        raise InputError(f"preprocessing {name} must be a pair of numbers, got {value!r}")
    if kind is int and any(int(v) != v for v in value):
        raise InputError(f"preprocessing {name} must be whole numbers of pixels, got {value!r}")
    return tuple(kind(v) for v in value)


@dataclass(frozen=True)
class PreprocessConfig:
    """The recorded preprocessing; it travels inside every checkpoint (JSON through :meth:`to_dict`).

    Attributes:
        spacing: target in-plane pixel size in mm, ``(rows, columns)`` = along (J, I).
        size: prepared in-plane size ``(H, W)`` in pixels.
        clip_percentiles: ``(lo, hi)`` percentiles of the whole volume mapped to -1 and 1.
        n4: run N4 bias-field correction first.
        interpolation: image interpolation, ``"linear"`` or ``"bspline"`` (labels are always nearest).
        field_of_view: ``"heart"`` or ``"whole"`` (see the module notes).
    """

    spacing: tuple[float, float] = (1.5, 1.5)
    size: tuple[int, int] = (128, 128)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    n4: bool = False
    interpolation: str = "linear"
    field_of_view: str = "heart"

    def __post_init__(self):
        spacing = _pair("spacing", self.spacing, float)
        size = _pair("size", self.size, int)
        percentiles = _pair("clip_percentiles", self.clip_percentiles, float)
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"preprocessing spacing must be positive millimetres, got {self.spacing!r}")
        if not all(s >= 8 for s in size):
            raise InputError(f"preprocessing size must be at least 8 pixels per side, got {self.size!r}")
        if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise InputError("preprocessing clip_percentiles must satisfy 0 ≤ lo < hi ≤ 100, "
                             f"got {self.clip_percentiles!r}")
        if not isinstance(self.n4, bool):
            raise InputError(f"preprocessing n4 must be true or false, got {self.n4!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"preprocessing interpolation {self.interpolation!r} is not one of "
                             f"{', '.join(INTERPOLATIONS)}")
        if self.field_of_view not in FIELDS_OF_VIEW:
            raise InputError(f"preprocessing field_of_view {self.field_of_view!r} is not one of "
                             f"{', '.join(FIELDS_OF_VIEW)}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "clip_percentiles", percentiles)

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        return strict_from_dict(cls, data, where="preprocessing")


@dataclass(frozen=True, eq=False)
class SliceTransform:
    """Maps arrays on the prepared grid ``(K, H, W)`` back onto the original volume, voxel for voxel.

    Attributes:
        shape: original ``(K, J, I)`` shape.
        ijk_to_ras: original 4×4 IJK-to-RAS matrix.
        step: ``(ay, ax)`` original-index units per prepared pixel along rows and columns.
        offset: ``(y0, x0)`` original continuous index of prepared pixel (0, 0).
        size: prepared ``(H, W)``.
        intensity: original intensities ``(lo, hi)`` that were mapped to -1 and 1 (None for a mask alone).
        centred_on: ``"heart"`` (label centroid) or ``"image"`` (the label was empty).
    """

    shape: tuple[int, int, int]
    ijk_to_ras: np.ndarray
    step: tuple[float, float]
    offset: tuple[float, float]
    size: tuple[int, int]
    intensity: tuple[float, float] | None
    centred_on: str

    @property
    def prepared_ijk_to_ras(self) -> np.ndarray:
        """4×4 IJK-to-RAS of the prepared grid (column, row, slice of a ``(K, H, W)`` array)."""
        to_original = np.diag([self.step[1], self.step[0], 1.0, 1.0])
        to_original[:2, 3] = self.offset[1], self.offset[0]
        return self.ijk_to_ras @ to_original

    def forward(self, array: np.ndarray, *, order: int, fill: float) -> np.ndarray:
        """Resample an original ``(K, J, I)`` array onto the prepared ``(K, H, W)`` grid."""
        k = self.shape[0]
        return _resample(array, spacing=(1.0, 1.0), origin=(0.0, 0.0),
                         out_shape=(k, *self.size), out_spacing=self.step, out_origin=self.offset,
                         order=order, fill=fill)

    def restore(self, array: np.ndarray, *, order: int = 1, fill: float = -1.0) -> Volume:
        """A prepared ``(K, H, W)`` array on the original geometry (same shape and IJK-to-RAS).

        ``order`` is 1 (linear) or 3 (B-spline) for images, 0 (nearest) for labels (pass ``fill=0``);
        ``fill`` is the value where the original grid lies outside the prepared crop. The dtype is kept.
        """
        array = np.asarray(array)
        expected = (self.shape[0], *self.size)
        if array.shape != expected:
            raise ValueError(f"restore expects a prepared (K, H, W) array of shape {expected}, got {array.shape}")
        restored = _resample(array, spacing=self.step, origin=self.offset, out_shape=self.shape,
                             out_spacing=(1.0, 1.0), out_origin=(0.0, 0.0), order=order, fill=fill)
        return Volume(restored, self.ijk_to_ras)

    def restore_labels(self, mask: np.ndarray) -> Volume:
        """A prepared canonical label map ``(K, H, W)`` on the original geometry (uint8), smoother than
        ``restore(mask, order=0, fill=0)``: each label's indicator is resampled linearly and the most
        likely label wins (background outside the crop). Identical to nearest when spacing is unchanged.
        """
        mask = np.asarray(mask)
        labels = range(int(mask.max(initial=0)) + 1)
        scores = [self.restore((mask == label).astype(np.float32), order=1, fill=float(label == 0)).array
                  for label in labels]
        return Volume(np.argmax(np.stack(scores), axis=0).astype(np.uint8), self.ijk_to_ras)

    def denormalise(self, array: np.ndarray) -> np.ndarray:
        """Intensities in [-1, 1] back on the original scale: -1 → ``lo``, 1 → ``hi`` (float32)."""
        if self.intensity is None:
            raise ValueError("this transform was made from a mask alone and has no intensity mapping")
        lo, hi = self.intensity
        return (lo + (np.asarray(array, dtype=np.float64) + 1.0) * 0.5 * (hi - lo)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """A case on the prepared grid. ``image`` ``(K, H, W)`` float32 in [-1, 1]; ``mask`` ``(K, H, W)`` uint8."""

    record: CaseRecord
    image: np.ndarray
    mask: np.ndarray
    transform: SliceTransform


def _resample(array, *, spacing, origin, out_shape, out_spacing, out_origin, order, fill) -> np.ndarray:
    """SimpleITK resampling in the original index frame; pairs are (row, column), K spacing is 1.

    ``array`` is ``(K, rows, columns)``; the output is ``out_shape`` with the dtype of ``array``.
    """
    import SimpleITK as sitk

    if order not in _SITK_INTERPOLATORS:
        raise ValueError(f"order must be one of {sorted(_SITK_INTERPOLATORS)}, got {order!r}")
    source = np.ascontiguousarray(array)
    if source.dtype == bool:
        source = source.astype(np.uint8)
    image = sitk.GetImageFromArray(source)
    image.SetSpacing((spacing[1], spacing[0], 1.0))
    image.SetOrigin((origin[1], origin[0], 0.0))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize((int(out_shape[2]), int(out_shape[1]), int(out_shape[0])))
    resampler.SetOutputSpacing((out_spacing[1], out_spacing[0], 1.0))
    resampler.SetOutputOrigin((out_origin[1], out_origin[0], 0.0))
    resampler.SetInterpolator(getattr(sitk, _SITK_INTERPOLATORS[order]))
    resampler.SetDefaultPixelValue(float(fill))
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _crop_transform(volume: Volume, mask: np.ndarray, config: PreprocessConfig, intensity, *,
                    whole: bool = False) -> SliceTransform:
    """The in-plane map onto a ``config.size`` grid of ``config.spacing`` centred on the heart or, with
    ``whole``, onto a grid covering the whole field of view (module notes)."""
    in_plane = volume.spacing[[1, 0]]  # original (row, column) spacing: along J, I
    step = np.asarray(config.spacing) / in_plane
    extent = np.asarray(mask.shape[1:], dtype=np.float64)  # original (rows, columns)
    covering = extent / step  # prepared pixels that span the field of view
    if whole:
        size = (np.ceil(covering / FOV_MULTIPLE) * FOV_MULTIPLE).astype(int)
        centre, centred_on = (extent - 1) / 2.0, "field of view"
    else:
        size = np.asarray(config.size)
        if mask.any():
            centre, centred_on = np.argwhere(mask > 0)[:, 1:].mean(axis=0), "heart"  # (j, i) over the stack
        else:
            centre, centred_on = (extent - 1) / 2.0, "image"
    # the resampled field of view starts at index -0.5 + step/2; shift it by whole prepared pixels
    first = -0.5 + step / 2.0
    shift = np.rint((centre - first) / step - (size - 1) / 2.0)
    if config.field_of_view == "whole" and not whole:  # the tile stays inside the image where it fits
        room = np.floor(covering) - size
        shift = np.where(room >= 0, np.clip(shift, 0, np.maximum(room, 0)), np.rint(room / 2.0))
    offset = first + shift * step
    return SliceTransform(shape=volume.shape, ijk_to_ras=volume.ijk_to_ras, step=tuple(step.tolist()),
                          offset=tuple(offset.tolist()), size=tuple(int(v) for v in size), intensity=intensity,
                          centred_on=centred_on)


def normalise_intensity(array: np.ndarray, percentiles: tuple[float, float], *, path=None):
    """Clip at two percentiles of the whole array and scale to [-1, 1].

    Returns ``(normalised float32, (lo, hi))``. Raises :class:`InputError` naming ``path`` on NaN/inf or
    when the clipped range is empty (a constant image).
    """
    values = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError("image holds NaN or infinite intensities", path=path)
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if not hi > lo:
        raise InputError(f"image intensities between the {percentiles[0]} and {percentiles[1]} percentiles "
                         f"are constant ({lo:g}); nothing to normalise", path=path)
    scaled = (np.clip(values, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
    return scaled.astype(np.float32), (lo, hi)


def n4_correct(volume: Volume, *, shrink: int = 4, iterations: int = 20) -> Volume:
    """N4 bias-field correction (SimpleITK), estimated on an in-plane shrunk copy for speed.

    The field is fitted inside an Otsu foreground mask, then evaluated on the full grid and divided out.
    """
    import SimpleITK as sitk

    image = sitk.Cast(to_sitk(volume), sitk.sitkFloat32)
    factors = [max(1, min(shrink, n // 16)) for n in image.GetSize()[:2]] + [1]
    small = sitk.Shrink(image, factors)
    foreground = sitk.OtsuThreshold(small, 0, 1, 200)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([iterations] * 3)
    corrector.Execute(small, foreground)
    bias = sitk.Exp(corrector.GetLogBiasFieldAsImage(image))
    corrected = sitk.GetArrayFromImage(image / bias)
    return volume.with_array(corrected.astype(np.float32))


def _canonical_mask(mask: Volume, *, path) -> np.ndarray:
    return to_canonical(np.asarray(mask.array), "canonical", path=path)


def prepare_mask(mask: Volume, config: PreprocessConfig, *, path=None) -> tuple[np.ndarray, SliceTransform]:
    """A user's canonical mask on the prepared grid: ``((K, H, W) uint8, SliceTransform)``; the whole field
    of view for a ``"whole"`` configuration (module notes).

    Raises :class:`InputError` naming ``path`` for non-integer or non-canonical values or an empty mask.
    """
    name = path if path is not None else "mask"
    labels = _canonical_mask(mask, path=name)
    if not labels.any():
        raise InputError("mask is empty (no LV, MYO or RV voxel); nothing to generate from", path=name)
    transform = _crop_transform(mask, labels, config, intensity=None, whole=config.field_of_view == "whole")
    return transform.forward(labels, order=0, fill=0), transform


def prepare_case(case: Case, config: PreprocessConfig, *, whole: bool = False) -> PreparedCase:
    """A case's image and label on the prepared grid (see the module docstring for the steps): the tile, or
    with ``whole`` (a ``"whole"`` configuration only) the grid :func:`prepare_mask` gives."""
    record = case.record
    if case.label is None:
        raise InputError("case has no label; preprocessing needs the mask", path=record.image_path)
    check_same_geometry(case.image, case.label, image_path=record.image_path, label_path=record.label_path)
    check_finite(case.image, path=record.image_path)
    labels = _canonical_mask(case.label, path=record.label_path)
    image = n4_correct(case.image) if config.n4 else case.image
    normalised, intensity = normalise_intensity(image.array, config.clip_percentiles, path=record.image_path)
    transform = _crop_transform(case.image, labels, config, intensity, whole=whole and config.field_of_view == "whole")
    prepared = transform.forward(normalised, order=INTERPOLATIONS[config.interpolation], fill=-1.0)
    return PreparedCase(record=record, image=np.clip(prepared, -1.0, 1.0, out=prepared),
                        mask=transform.forward(labels, order=0, fill=0), transform=transform)
