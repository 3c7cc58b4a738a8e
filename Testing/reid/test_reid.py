"""The re-identification model and the privacy filter's mechanism, on a small phantom cohort.

The embedding is fitted on 10 patients and calibrated on 3 others; 3 more patients play the part of images
the generator never saw. A near-copy of a training slice (intensity changed by 3%, noise added) must be
caught, real slices of unseen patients must mostly pass, and the filter must redraw exactly the flagged
slices, deterministically, and refuse what never stops re-identifying.
"""

import json

import numpy as np
import pytest

from CMRSynthLib.errors import InputError

PREPARED = dict(spacing=(5.0, 5.0), size=(32, 32))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from CMRSynthLib.audit.run import load_slices
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.data.phantom import write_phantom_cohort
    from CMRSynthLib.data.preprocess import PreprocessConfig

    cohort = open_cohort(write_phantom_cohort(tmp_path_factory.mktemp("reid") / "cohort", 16, seed=1,
                                              shape=(4, 48, 48)))
    ids, preprocessing = cohort.patients(), PreprocessConfig(**PREPARED)
    return {name: load_slices(cohort, part, preprocessing, what=name)
            for name, part in (("members", ids[:10]), ("calibration", ids[10:13]), ("unseen", ids[13:]))}


@pytest.fixture(scope="module")
def reid(split):
    from CMRSynthLib.reid.embedding import ReidConfig
    from CMRSynthLib.reid.model import build_reid

    return build_reid({"model_id": "generator-a", "family": "flow", "privacy": None}, split["members"],
                      split["calibration"], config=ReidConfig(size=(32, 32), steps=60), n_boot=100, simulated=True)


def near_copies(slices, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(slices.images * 1.03 + rng.normal(0, 0.03, slices.images.shape), -1, 1).astype(np.float32)


def test_near_copies_of_training_slices_are_caught_and_unseen_patients_pass(reid, split):
    members, unseen = split["members"], split["unseen"]
    copies = reid.distances(near_copies(members), members.masks)
    others = reid.distances(unseen.images, unseen.masks)
    assert np.mean(copies < reid.threshold) == 1.0
    assert np.mean(others < reid.threshold) <= 0.25  # threshold calibrated at 1% on 3 other patients
    assert np.median(copies) < 0.25 * np.median(others)


def test_the_heart_is_not_what_identifies(reid, split):
    """Whatever is drawn inside a slice's (dilated) heart leaves its embedding unchanged: the filter judges what
    the generator adds around the user's mask, not the mask's own anatomy."""
    from CMRSynthLib.reid.embedding import heart_region

    members, unseen = split["members"], split["unseen"]
    n = min(len(members), len(unseen))
    heart = heart_region(members.masks[:n], reid.config.heart_margin)
    swapped = np.where(heart, unseen.images[:n], members.images[:n])
    assert (swapped != members.images[:n]).any()
    assert np.allclose(reid.distances(swapped, members.masks[:n]), 0.0, atol=1e-3)


def test_calibration_record_threshold_and_false_match_rate(reid, split):
    record = reid.record["calibration"]
    assert record["patients"] == 3 and record["slices"] == len(split["calibration"])
    assert record["false_match_rate"]["value"] <= 0.01 and record["target_false_match_rate"] == 0.01
    assert reid.false_match_rate_at(reid.threshold) == record["false_match_rate"]["value"]
    assert reid.false_match_rate_at(np.inf) == 1.0
    assert reid.record["shareable"] and reid.record["generator"]["model_id"] == "generator-a"


def test_threshold_rule_on_known_distances():
    from CMRSynthLib.reid.model import calibrate_threshold

    distances = np.arange(1.0, 201.0)  # 200 held-out slices at distances 1..200
    assert calibrate_threshold(distances, 0.01) == 3.0  # 2 of 200 (1%) lie strictly below it
    assert calibrate_threshold(distances[:50], 0.01) == 1.0  # 0.5 slices: none may match
    with pytest.raises(InputError, match="false-match-rate"):
        calibrate_threshold(distances, 0.0)


def test_a_false_match_rate_below_one_calibration_slice_is_not_measurable(reid):
    """With M calibration slices a rate below 1/M cannot be seen: no false match is "not measurable", never 0%
    (for the calibrated threshold exactly when M < 1/rate); a filter on such a threshold says so, without
    counting the held-out slices or patients."""
    from CMRSynthLib.reid.filter import PrivacyFilter
    from CMRSynthLib.reid.model import calibrate_threshold, measured_false_match_rate, not_measurable

    distances = np.arange(1.0, 201.0)
    assert measured_false_match_rate(distances, calibrate_threshold(distances, 0.01), 0.01) == 0.01  # 2 of 200
    assert measured_false_match_rate(distances[:99], calibrate_threshold(distances[:99], 0.01), 0.01) is None
    assert measured_false_match_rate(distances[:100], calibrate_threshold(distances[:100], 0.01), 0.01) == 0.01
    # a threshold below every distance, on enough slices, measures a rate of 0 (review: it said "not measurable")
    assert measured_false_match_rate(distances, 0.5, 0.01) == 0.0
    assert not_measurable(99, 0.01) == "not measurable with 99 calibration slices (a 1.0% rate needs at least 100)"
    described = PrivacyFilter.of(reid).describe()  # 3 held-out patients: far fewer than 100 slices
    assert described == {"threshold": reid.threshold, "false_match_rate": None,
                         "false_match_rate_note": "not measurable: too few held-out calibration slices"}
    higher = PrivacyFilter.of(reid, threshold=float(reid.calibration_distances[-1]))
    assert higher.describe() == {"threshold": higher.threshold, "false_match_rate": pytest.approx(
        (len(reid.calibration_distances) - 1) / len(reid.calibration_distances))}


def test_save_and_load_round_trip_private_beside_the_model(reid, split, tmp_path):
    from CMRSynthLib.reid.model import find_reid, load_reid, reid_path, save_reid

    model = tmp_path / "models" / "flow"
    model.mkdir(parents=True)
    folder = save_reid(reid, reid_path(model))
    assert folder == tmp_path / "models" / "flow.PRIVATE-reid" and (folder.stat().st_mode & 0o077) == 0
    loaded = find_reid(model, {"model_id": "generator-a"})
    members = split["members"]
    assert np.allclose(loaded.distances(members.images, members.masks), reid.distances(members.images, members.masks),
                       atol=1e-5)
    assert loaded.threshold == reid.threshold and json.loads((folder / "reid.json").read_text(encoding="utf-8"))["format"] == \
        "cmrsynth-reid"
    with pytest.raises(InputError, match="built for the model generator-a, not generator-b"):
        load_reid(folder, card={"model_id": "generator-b"})
    (tmp_path / "models" / "other").mkdir()
    with pytest.raises(InputError, match="no re-identification model.*cmrsynth reid --model"):
        find_reid(tmp_path / "models" / "other", {"model_id": "x"})


def test_screen_redraws_only_flagged_slices_with_derived_seeds(reid, split):
    from CMRSynthLib.reid.filter import PrivacyFilter, redraw_seed

    members, unseen = split["members"], split["unseen"]
    stack = unseen.images[:4].copy()
    labels = unseen.masks[:4].copy()
    stack[2], labels[2] = members.images[0], members.masks[0]  # one slice is a training slice
    calls = []

    def redraw(which, seed):
        calls.append((which.tolist(), seed))
        return unseen.images[4:4 + len(which)]

    labels[2] = unseen.masks[4]  # the mask the slice is drawn for (and redrawn from unseen slice 4)
    screening_filter = PrivacyFilter.of(reid)
    kept, screening = screening_filter.screen(stack, labels, 7, redraw, whole=False)
    assert calls == [([2], redraw_seed(7, 1))]
    assert np.array_equal(kept[[0, 1, 3]], stack[[0, 1, 3]]) and np.array_equal(kept[2], unseen.images[4])
    assert screening.rejected == 1 and screening.rounds == 1 and not screening.refused
    assert screening.seeds == (7, 7, redraw_seed(7, 1), 7)
    again, _ = screening_filter.screen(stack, labels, 7, redraw, whole=False)
    assert np.array_equal(again, kept)


def test_a_slice_that_keeps_reidentifying_is_refused_and_a_volume_is_redrawn_whole(reid, split):
    from CMRSynthLib.reid.filter import PrivacyFilter

    members = split["members"]
    stack, labels = members.images[:3], members.masks[:3]
    rounds = []

    def copies(which, seed):
        rounds.append(which.tolist())
        return members.images[which]

    _, screening = PrivacyFilter.of(reid, retries=2).screen(stack, labels, 0, copies, whole=True)
    assert rounds == [[0, 1, 2], [0, 1, 2]] and screening.refused == (0, 1, 2)
    assert screening.rejected == 3  # two redrawn volumes and the last one
    with pytest.raises(InputError, match="threshold must be a distance > 0"):
        PrivacyFilter.of(reid, threshold=0.0)


def test_a_whole_field_of_view_stack_is_judged_on_its_heart_centred_window(reid, split):
    """A whole-field-of-view model's stack is larger than the embedding's window: the filter looks at the
    window its preprocessing would crop around the heart, wherever the heart lies in the field."""
    from CMRSynthLib.reid.embedding import crop, heart_corner

    members = split["members"]
    case = members.take((members.patients == members.patients[0]) & (members.phases == "ED"))
    field = np.full((len(case), 60, 52), -1.0, np.float32)
    labels = np.zeros(field.shape, np.uint8)
    field[:, 21:53, 3:35], labels[:, 21:53, 3:35] = case.images, case.masks  # off-centre in a larger field
    corner = heart_corner(labels, (32, 32))
    assert abs(corner[0] - 21) <= 2 and abs(corner[1] - 3) <= 2  # the prepared crop was centred on this heart
    assert np.array_equal(crop(field, (21, 3), (32, 32), fill=-1.0), case.images)
    assert (reid.distances(field, labels) < reid.threshold).all()
    assert crop(field, (-2, 50), (4, 4), fill=-1.0).shape == (len(case), 4, 4)  # padded where it leaves the field


def test_unused_training_patients_teach_the_embedding_but_stay_out_of_the_gallery(split):
    """A run on part of its training split (``--train-patients``) leaves patients the embedding may learn from:
    they sharpen its "same patient?" metric, but only members are looked for, and a calibration patient may
    never be among the learners."""
    from CMRSynthLib.audit.slices import Slices
    from CMRSynthLib.reid.embedding import ReidConfig
    from CMRSynthLib.reid.model import build_reid

    members, calibration = split["members"], split["calibration"]
    few = members.take(np.isin(members.patients, members.patient_ids()[:3]))
    rest = members.take(~np.isin(members.patients, members.patient_ids()[:3]))
    card = {"model_id": "overfit", "family": "flow", "privacy": None}
    config = ReidConfig(size=(32, 32), steps=20)
    reid = build_reid(card, few, calibration, others=rest, config=config, n_boot=20, simulated=True)
    assert reid.gallery.shape == (len(few), config.dim)
    assert reid.record["training"]["patients"] == 3 and reid.record["training"]["unused_patients"] == 7
    assert (reid.distances(few.images, few.masks) < 1e-3).all()  # its own members are in the gallery
    alone = build_reid(card, few, calibration, config=config, n_boot=20, simulated=True)
    assert not np.allclose(alone.gallery, reid.gallery)  # the others changed what was learned
    with pytest.raises(InputError, match="calibration patients include training patients"):
        build_reid(card, few, calibration, others=Slices.cat([rest, calibration]), config=config)


def test_the_record_of_a_threshold_calibrated_on_too_few_slices_says_not_measurable(reid, split):
    """reid.json stored 0.0 (and the audit report showed "0.0%") where no rate could be measured."""
    from CMRSynthLib.reid.model import format_rate

    record = reid.record["calibration"]
    assert record["slices"] < 1 / record["target_false_match_rate"]
    rate = record["false_match_rate"]
    assert rate["low"] is None and rate["warning"].startswith("not measurable with")
    assert format_rate(rate) == "not measurable"
