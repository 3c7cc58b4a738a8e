"""Preprocessing: config round trip, forward onto the prepared grid, and back onto the original geometry."""

import json

import numpy as np
import pytest

from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.preprocess import (PreprocessConfig, n4_correct, normalise_intensity, prepare_case,
                                         prepare_mask)
from CMRSynthLib.data.volume import Volume
from CMRSynthLib.errors import InputError

LEVELS = {0: 40.0, 1: 300.0, 2: 90.0, 3: 280.0}  # background, LV blood, myocardium, RV blood


def heart_labels(shape=(4, 96, 96), spacing=(1.0, 1.0), centre=(50, 44)) -> np.ndarray:
    """Canonical labels (K, J, I): LV disc in a myocardial ring, RV crescent beside it, tapering along K.
    ``spacing`` is (I, J) in mm, ``centre`` is (j, i); radii are in mm so structures keep their size."""
    k, h, w = shape
    jj, ii = np.mgrid[0:h, 0:w]
    y, x = (jj - centre[0]) * spacing[1], (ii - centre[1]) * spacing[0]
    d = np.hypot(x, y)
    labels = np.zeros(shape, np.uint8)
    for z in range(k):
        r = 1.0 - 0.1 * z
        labels[z][np.hypot(x + 26 * r, y / 1.5) < 16 * r] = 3
        labels[z][d < 22 * r] = 2
        labels[z][d < 14 * r] = 1
    return labels


def affine(spacing=(1.0, 1.0, 8.0), rotation=np.eye(3), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def oblique_rotation() -> np.ndarray:
    a, b = np.deg2rad(35.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def make_case(labels, matrix, *, seed=0, image=None) -> Case:
    if image is None:
        rng = np.random.default_rng(seed)
        image = np.vectorize(LEVELS.get)(labels).astype(np.float32) + rng.normal(0, 5, labels.shape)
    record = CaseRecord(patient="p001", phase="ED", image_path="p001.nii.gz", label_path="p001_gt.nii.gz")
    return Case(record, Volume(image.astype(np.float32), matrix), Volume(labels, matrix))


def dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# -- config ----------------------------------------------------------------------------------------
def test_config_round_trips_through_json():
    config = PreprocessConfig(spacing=(1.25, 1.5), size=(64, 96), clip_percentiles=(1.0, 99.0), n4=True,
                              interpolation="bspline")
    again = PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.spacing == (1.25, 1.5) and again.size == (64, 96)


@pytest.mark.parametrize("changes, word", [
    ({"spacing": (0.0, 1.5)}, "spacing"), ({"spacing": (1.5,)}, "spacing"), ({"size": (4, 128)}, "size"),
    ({"size": (64.5, 64)}, "size"), ({"clip_percentiles": (99.0, 1.0)}, "clip_percentiles"),
    ({"n4": "yes"}, "n4"), ({"interpolation": "cubic"}, "interpolation")])
def test_config_rejects_bad_values(changes, word):
    with pytest.raises(InputError, match=word):
        PreprocessConfig(**changes)


def test_config_rejects_unknown_keys():
    with pytest.raises(InputError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({**PreprocessConfig().to_dict(), "gamma": 2})


# -- forward and back ------------------------------------------------------------------------------
def test_mask_restores_exactly_when_spacing_is_unchanged():
    labels = heart_labels()
    mask_volume = Volume(labels, affine(rotation=oblique_rotation(), origin=(10.0, -30.0, 5.0)))
    mask, transform = prepare_mask(mask_volume, PreprocessConfig(spacing=(1.0, 1.0), size=(64, 64)))
    assert mask.shape == (4, 64, 64) and mask.dtype == np.uint8
    assert np.array_equal(np.bincount(mask.ravel(), minlength=4)[1:], np.bincount(labels.ravel())[1:])
    restored = transform.restore(mask, order=0, fill=0)
    assert restored.same_geometry(mask_volume)
    assert np.array_equal(restored.array, labels)
    assert np.array_equal(transform.restore_labels(mask).array, labels)


def test_heart_centroid_lands_in_the_middle_of_the_crop():
    mask, transform = prepare_mask(Volume(heart_labels(centre=(30, 62)), affine()),
                                   PreprocessConfig(spacing=(1.0, 1.0), size=(48, 48)))
    centroid = np.argwhere(mask > 0)[:, 1:].mean(axis=0)
    assert np.all(np.abs(centroid - 23.5) <= 1.0)
    assert transform.centred_on == "heart"


def test_resampled_mask_restores_with_high_dice():
    labels = heart_labels()
    mask_volume = Volume(labels, affine(spacing=(1.0, 1.0, 10.0)))
    mask, transform = prepare_mask(mask_volume, PreprocessConfig(spacing=(1.5, 1.5), size=(64, 64)))
    smooth, nearest = transform.restore_labels(mask).array, transform.restore(mask, order=0, fill=0).array
    for label in (1, 2, 3):
        assert dice(smooth == label, labels == label) >= 0.95
        assert dice(nearest == label, labels == label) >= 0.93
    # the myocardial ring is 8 mm thick: 1.5 mm pixels keep it about 8 / 1.5 pixels wide
    assert abs((mask == 2).sum() / (labels == 2).sum() - 1 / 1.5 ** 2) < 0.05


def test_oblique_anisotropic_geometry_is_exact_both_ways():
    """A linear ramp in RAS survives linear resampling exactly, so the prepared grid's RAS positions can be
    checked voxel by voxel; the restored volume has the original geometry exactly."""
    spacing = (0.8, 1.1, 9.0)
    matrix = affine(spacing, oblique_rotation(), origin=(-40.0, 12.0, 33.0))
    shape = (3, 70, 60)
    labels = heart_labels(shape, spacing[:2], centre=(36, 28))
    kk, jj, ii = np.indices(shape)
    ras = np.einsum("ab,bkji->akji", matrix, np.stack([ii, jj, kk, np.ones_like(ii)]))[:3]
    gradient = np.array([2.0, -1.0, 0.5])
    ramp = np.einsum("a,akji->kji", gradient, ras)
    config = PreprocessConfig(spacing=(1.5, 1.2), size=(40, 48), clip_percentiles=(0.0, 100.0))
    prepared = prepare_case(make_case(labels, matrix, image=ramp), config)

    transform = prepared.transform
    prepared_grid = Volume(prepared.image, transform.prepared_ijk_to_ras)
    np.testing.assert_allclose(prepared_grid.spacing, [1.2, 1.5, 9.0])  # (columns, rows, slices) in mm
    np.testing.assert_allclose(prepared_grid.direction, oblique_rotation(), atol=1e-12)
    kk, rr, cc = np.indices(prepared.image.shape)
    grid = np.stack([cc, rr, kk, np.ones_like(cc)])
    expected = np.einsum("a,akji->kji", gradient, np.einsum("ab,bkji->akji", transform.prepared_ijk_to_ras,
                                                            grid)[:3])
    original_index = np.einsum("ab,bkji->akji", np.linalg.inv(matrix) @ transform.prepared_ijk_to_ras, grid)
    inside = np.all((original_index[:2] >= 0) & (original_index[:2] <= np.array([59, 69])[:, None, None, None]),
                    axis=0)
    assert inside.mean() > 0.5
    values = transform.denormalise(prepared.image)
    np.testing.assert_allclose(values[inside], expected[inside], atol=1e-2 * np.ptp(ramp))

    restored = transform.restore(prepared.image)
    assert restored.same_geometry(prepared.transform.restore(prepared.mask, order=0, fill=0))
    assert restored.shape == shape and np.array_equal(restored.ijk_to_ras, matrix)


def test_image_round_trip_recovers_original_intensities():
    labels = heart_labels(shape=(3, 64, 64), centre=(32, 32))
    case = make_case(labels, affine())
    prepared = prepare_case(case, PreprocessConfig(spacing=(1.0, 1.0), size=(80, 80),
                                                   clip_percentiles=(0.0, 100.0)))
    back = prepared.transform.denormalise(prepared.transform.restore(prepared.image).array)
    np.testing.assert_allclose(back, case.image.array, atol=1e-2)


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_prepared_image_is_in_minus_one_to_one(interpolation):
    labels = heart_labels()
    prepared = prepare_case(make_case(labels, affine()), PreprocessConfig(spacing=(1.3, 1.3), size=(64, 64),
                                                                         interpolation=interpolation))
    assert prepared.image.dtype == np.float32 and prepared.image.shape == (4, 64, 64)
    assert prepared.image.min() >= -1.0 and prepared.image.max() <= 1.0
    blood = prepared.image[prepared.mask == 1].mean()
    assert blood > prepared.image[prepared.mask == 2].mean() + 0.5


def test_percentile_clip_keeps_contrast_despite_outliers():
    labels = heart_labels(shape=(2, 64, 64), centre=(32, 32))
    image = np.vectorize(LEVELS.get)(labels).astype(np.float32)
    image.ravel()[::997] = 1e5  # 0.1 % of voxels are wild outliers
    contrast = {}
    for percentiles in [(0.5, 99.5), (0.0, 100.0)]:
        normalised, (lo, hi) = normalise_intensity(image, percentiles)
        contrast[percentiles] = normalised[labels == 1].mean() - normalised[labels == 2].mean()
        assert normalised.min() == -1.0 and normalised.max() == 1.0
    assert contrast[(0.5, 99.5)] > 1.0  # blood and myocardium stay far apart
    assert contrast[(0.0, 100.0)] < 0.01  # without clipping the outliers squash them together


def test_empty_label_centres_on_the_image_and_says_so():
    labels = np.zeros((2, 48, 40), np.uint8)
    prepared = prepare_case(make_case(labels, affine()), PreprocessConfig(spacing=(1.0, 1.0), size=(32, 32)))
    assert prepared.transform.centred_on == "image"
    assert prepared.transform.offset == (8.0, 4.0)


def test_n4_removes_most_of_a_smooth_bias_field():
    labels = heart_labels(shape=(3, 64, 64), centre=(32, 32))
    jj, ii = np.mgrid[0:64, 0:64]
    body = np.hypot(ii - 32, (jj - 32) * 1.2) < 30
    flat = np.where(labels > 0, 300.0, np.where(body, 200.0, 5.0))
    bias = np.exp(0.4 * (ii - 32) / 32 + 0.2 * (jj - 32) / 32)
    image = flat * bias + np.random.default_rng(0).normal(0, 2, flat.shape)
    case = make_case(labels, affine(spacing=(1.5, 1.5, 8.0)), image=image)
    tissue = body[None] & (labels == 0)
    corrected = n4_correct(case.image).array
    assert np.log(corrected[tissue]).std() < 0.5 * np.log(image[tissue]).std()

    config = PreprocessConfig(spacing=(1.5, 1.5), size=(48, 48))
    plain = prepare_case(case, config)
    with_n4 = prepare_case(case, PreprocessConfig.from_dict({**config.to_dict(), "n4": True}))
    expected, _ = normalise_intensity(corrected, config.clip_percentiles)
    np.testing.assert_allclose(with_n4.transform.restore(with_n4.image).array[:, 20:44, 20:44],
                               expected[:, 20:44, 20:44], atol=1e-4)
    assert not np.allclose(plain.image, with_n4.image, atol=0.05)


# -- bad input -------------------------------------------------------------------------------------
def test_nan_image_is_refused_naming_the_file():
    labels = heart_labels(shape=(2, 48, 48), centre=(24, 24))
    image = np.ones(labels.shape, np.float32)
    image[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="p001.nii.gz.*NaN"):
        prepare_case(make_case(labels, affine(), image=image), PreprocessConfig(size=(32, 32)))


def test_constant_image_is_refused():
    labels = heart_labels(shape=(2, 48, 48), centre=(24, 24))
    with pytest.raises(InputError, match="constant"):
        prepare_case(make_case(labels, affine(), image=np.ones(labels.shape)), PreprocessConfig(size=(32, 32)))


def test_bad_masks_are_refused_naming_the_mask():
    config = PreprocessConfig(size=(32, 32))
    with pytest.raises(InputError, match="mask.*empty"):
        prepare_mask(Volume(np.zeros((2, 32, 32), np.uint8), affine()), config)
    with pytest.raises(InputError, match="user_mask.nii.gz.*non-integer"):
        prepare_mask(Volume(np.full((2, 32, 32), 0.5, np.float32), affine()), config, path="user_mask.nii.gz")
    with pytest.raises(InputError, match="outside the canonical"):
        prepare_mask(Volume(np.full((2, 32, 32), 7, np.uint8), affine()), config)


def test_restore_refuses_an_array_of_the_wrong_shape():
    _, transform = prepare_mask(Volume(heart_labels(), affine()), PreprocessConfig(size=(64, 64)))
    with pytest.raises(ValueError, match="shape"):
        transform.restore(np.zeros((4, 32, 32), np.float32))
