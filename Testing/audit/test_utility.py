"""Utility arms: the baseline is trained twice (two seeds) so arm differences can be read against training noise."""

import numpy as np

from audit_helpers import make_slices
from CMRSynthLib.audit.segmenter import SegmenterConfig
from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.audit.utility import compare_training_sets, steps_for

CONFIG = SegmenterConfig.quick(channels=(4, 8), strides=(2,), steps=15)


def test_training_noise_is_the_baseline_against_itself_with_another_seed(tmp_path):
    real, test = make_slices(6, seed=0), make_slices(4, seed=1, prefix="t")
    shifted = Slices(real.images + 0.3, real.masks, real.patients, real.vendors, real.phases, real.groups,
                     spacing=real.spacing)
    study = compare_training_sets({"real": real, "shifted": shifted}, test, CONFIG, baseline="real",
                                  cache=tmp_path, n_boot=50)
    noise = study["training_noise"]
    assert noise is not None and noise.n == 4 and "training noise" in noise.method
    # the second seed is a different network: its segmenter is cached under its own key
    assert len(list((tmp_path / "segmenters").glob("*.safetensors"))) == 3
    again = compare_training_sets({"real": real, "shifted": shifted}, test, CONFIG, baseline="real",
                                  cache=tmp_path, n_boot=50)
    assert again["training_noise"].value == noise.value  # deterministic with the seeds (and served by the cache)
    assert np.isfinite(study["differences"]["shifted"].value)


def test_a_study_without_differences_trains_no_replicate(tmp_path):
    study = compare_training_sets({"real": make_slices(4)}, make_slices(3, seed=1, prefix="t"), CONFIG,
                                  baseline="real", cache=tmp_path, n_boot=20)
    assert study["training_noise"] is None and study["differences"] == {}


def test_an_arm_with_more_images_trains_longer_so_that_it_sees_each_as_often(tmp_path):
    real, test = make_slices(4, seed=0), make_slices(3, seed=1, prefix="t")
    study = compare_training_sets({"real": real, "real + more": Slices.cat([real, make_slices(4, seed=2, prefix="s")]),
                                   "fewer": make_slices(2, seed=3, prefix="f")}, test, CONFIG, baseline="real",
                                  cache=tmp_path, n_boot=20)
    assert study["n_train_slices"] == {"real": 12, "real + more": 24, "fewer": 6}
    assert study["n_train_steps"] == {"real": 15, "real + more": 30, "fewer": 15, "real (second seed)": 15}


def test_steps_scale_with_the_arm_and_never_fall_below_the_baseline():
    assert steps_for(1120, 560, 1500) == 3000
    assert steps_for(700, 560, 1500) == 1875
    assert steps_for(100, 560, 1500) == 1500
    assert steps_for(5, 0, 1500) == 1500
