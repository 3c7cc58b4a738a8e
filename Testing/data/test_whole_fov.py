"""Whole-field-of-view models: tiles inside the image for training, the entire field of view for generation."""

import numpy as np
import pytest
import torch

from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.datasets import SliceDataset, random_tile
from CMRSynthLib.data.preprocess import FOV_MULTIPLE, PreprocessConfig, PreparedCase, prepare_case, prepare_mask
from CMRSynthLib.data.volume import Volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.base import Vocabulary
from CMRSynthLib.models.autoencoder import AutoencoderConfig, SliceAutoencoder

WHOLE = PreprocessConfig(spacing=(1.5, 1.5), size=(32, 32), field_of_view="whole")


def off_centre_mask(shape=(3, 70, 90), spacing=(1.5, 1.5, 10.0)) -> Volume:
    """A small heart near the top-left corner of a 70×90 (rows × columns) field of view."""
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    labels[:, np.hypot(yy - 8, xx - 20) < 6] = 2
    labels[:, np.hypot(yy - 8, xx - 20) < 3] = 1
    labels[:, 4:12, 27:31] = 3
    return Volume(labels, np.diag([*spacing[:2][::-1], spacing[2], 1.0]))


def test_generation_grid_covers_the_whole_field_of_view_and_restores_exactly():
    mask = off_centre_mask()
    prepared, transform = prepare_mask(mask, WHOLE)
    assert prepared.shape == (3, 96, 96)  # 70 and 90 rows/columns rounded up to multiples of 32
    assert all(s % FOV_MULTIPLE == 0 for s in prepared.shape[1:])
    assert transform.centred_on == "field of view"
    restored = transform.restore(prepared, order=0, fill=255)
    assert restored.same_geometry(mask)
    assert np.array_equal(restored.array, mask.array)  # every voxel comes from the grid: no fill anywhere


def test_training_tile_stays_inside_the_image():
    mask = off_centre_mask()
    image = Volume(np.random.default_rng(0).random(mask.shape, dtype=np.float32), mask.ijk_to_ras)
    record = CaseRecord(patient="p", phase="ED", image_path="p.nii.gz", label_path="p_gt.nii.gz")
    tile = prepare_case(Case(record, image, mask), WHOLE)
    assert tile.image.shape == (3, 32, 32)
    first = np.asarray(tile.transform.offset) - 0.5  # original index of the tile's outer edges
    last = first + np.asarray(tile.transform.size)
    assert np.all(first >= -0.5 - 1e-9) and np.all(last <= np.asarray(mask.shape[1:]) - 0.5 + 1e-9)
    assert tile.mask.any()  # the heart is in it
    heart = prepare_case(Case(record, image, mask), PreprocessConfig(spacing=(1.5, 1.5), size=(32, 32)))
    assert heart.transform.offset[0] < 0  # a heart-centred crop reaches past the image's edge


def test_random_tiles_are_seeded_by_epoch_and_padded_when_the_slice_is_smaller():
    image, mask = np.arange(40 * 50, dtype=np.float32).reshape(40, 50), np.zeros((40, 50), np.uint8)
    a = random_tile(image, mask, (16, 16), np.random.default_rng([0, 0, 3]))[0]
    b = random_tile(image, mask, (16, 16), np.random.default_rng([0, 0, 3]))[0]
    c = random_tile(image, mask, (16, 16), np.random.default_rng([0, 1, 3]))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    small, _ = random_tile(image[:10, :12], mask[:10, :12], (16, 16), np.random.default_rng(0))
    assert small.shape == (16, 16) and (small == -1).sum() == 16 * 16 - 10 * 12


def test_slice_dataset_takes_tiles_of_cases_of_any_size():
    cases = [PreparedCase(CaseRecord(patient=f"p{i}", phase="ED", image_path="x", label_path="y"),
                          np.zeros((2, h, w), np.float32), np.ones((2, h, w), np.uint8), transform=None)
             for i, (h, w) in enumerate([(64, 96), (96, 64)])]
    dataset = SliceDataset(cases, Vocabulary(vendors=("Siemens",)), tile=(32, 32), seed=0)
    assert {tuple(dataset[i]["image"].shape) for i in range(len(dataset))} == {(1, 32, 32)}
    with pytest.raises(ValueError, match="share one in-plane size"):
        SliceDataset(cases, Vocabulary(vendors=("Siemens",)))


def test_autoencoder_trains_on_patches_and_rejects_bad_patch_sizes():
    autoencoder = SliceAutoencoder(AutoencoderConfig(channels=(8, 8), norm_num_groups=4, train_patch=8))
    images = torch.randn(3, 1, 32, 24)
    assert autoencoder._patch(images, torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)
    assert autoencoder.loss(images, generator=torch.Generator().manual_seed(0)).shape == (3,)
    with pytest.raises(ValueError, match="multiple of the factor"):
        AutoencoderConfig(channels=(8, 8), norm_num_groups=4, train_patch=7)


def test_field_of_view_is_checked():
    with pytest.raises(InputError, match="field_of_view"):
        PreprocessConfig(field_of_view="chest")
