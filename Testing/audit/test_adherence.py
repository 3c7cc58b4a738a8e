"""Dice/HD95 of a mask with itself, with a shifted copy and with the wrong masks."""

import numpy as np
import pytest
from audit_helpers import LEVELS, disc_masks, make_slices

from CMRSynthLib.audit.adherence import mask_adherence, segmentation_scores, summarise
from CMRSynthLib.audit.slices import Slices


def test_mask_with_itself_has_dice_one_and_hd_zero():
    masks = disc_masks(6)
    scores = segmentation_scores(masks, masks, np.repeat(["a", "b"], 3))
    for name in ("LV", "MYO", "RV"):
        np.testing.assert_array_equal(scores[name]["dice"], 1.0)
        np.testing.assert_array_equal(scores[name]["hd95"], 0.0)
    summary = summarise(scores, method="self", n_boot=50)
    assert summary["mean"]["dice"].value == 1.0 and summary["LV"]["dice"].n == 2


def test_shift_gives_known_hausdorff_distance_in_mm():
    scores = segmentation_scores(disc_masks(2, shift=3), disc_masks(2), ["a", "a"], spacing=(2.0, 2.0))
    assert scores["LV"]["hd95"][0] == pytest.approx(6.0)  # 3 pixels × 2 mm
    assert 0.4 < scores["LV"]["dice"][0] < 1.0


def test_absent_structure_is_undefined_not_perfect():
    target = disc_masks(2)
    target[target == 3] = 0
    scores = segmentation_scores(target, target, ["a", "a"])
    assert np.isnan(scores["RV"]["dice"][0]) and np.isnan(scores["RV"]["hd95"][0])


class Oracle:
    """A 'segmenter' that reads the tissue intensities of :func:`make_slices` exactly."""

    def predict(self, images):
        levels = np.array(LEVELS)
        return np.abs(images[..., None] - levels).argmin(-1).astype(np.uint8)


def test_wrong_masks_have_low_adherence():
    synthetic = make_slices(8, seed=0)
    right = mask_adherence(Oracle(), synthetic, n_boot=50)
    wrong_masks = Slices(synthetic.images, disc_masks(len(synthetic), shift=8), synthetic.patients,
                         synthetic.vendors, synthetic.phases, synthetic.groups, spacing=synthetic.spacing)
    wrong = mask_adherence(Oracle(), wrong_masks, n_boot=50)
    assert right["mean"]["dice"].value > 0.95
    assert wrong["mean"]["dice"].value < 0.5
    assert wrong["mean"]["dice"].high < right["mean"]["dice"].low
