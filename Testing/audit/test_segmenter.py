"""The audit's segmenter: any image size, and the padding it needs never reaches its answers."""

import numpy as np
from audit_helpers import make_slices

from CMRSynthLib.audit.adherence import segmentation_scores
from CMRSynthLib.audit.segmenter import SegmenterConfig, padded, train_segmenter


def test_padding_reaches_the_next_multiple_and_keeps_the_image_in_place():
    images = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    out = padded(images, 4, value=-1.0)
    assert out.shape == (2, 8, 8)
    np.testing.assert_array_equal(out[:, :5, :7], images)
    assert (out[:, 5:] == -1).all() and (out[:, :, 7:] == -1).all()
    already = np.zeros((1, 8, 8))
    assert padded(already, 4, value=-1.0) is already


def test_segmenter_learns_images_whose_sides_are_no_multiple_of_its_down_sampling(tmp_path):
    config = SegmenterConfig.quick(steps=60)
    assert config.multiple == 16
    train, test = make_slices(4, size=36), make_slices(2, size=36, seed=1)
    segmenter = train_segmenter(train, config, cache=tmp_path)
    labels = segmenter.predict(test.images)
    assert labels.shape == test.masks.shape
    scores = segmentation_scores(labels, test.masks, test.patients)
    assert np.nanmean([scores[name]["dice"] for name in ("LV", "MYO", "RV")]) > 0.8
    assert segmenter.encode(test.images).shape == (len(test), sum(config.channels[-2:]))
