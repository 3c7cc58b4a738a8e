"""The visual Turing test's logic: blinded balanced sets, metrics, Cohen's κ, results CSV."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from CMRSynthLib.data.volume import Volume, write_volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.gui import reader_study as rs


def volumes(folder, names, depth=6, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        write_volume(Volume(rng.random((depth, 8, 8)).astype(np.float32), np.diag([1.0, 1.0, 5.0, 1.0])),
                     folder / name)
    return sorted(folder.glob("*.nii.gz"))


@pytest.fixture
def study_files(tmp_path):
    real = volumes(tmp_path / "real", ["a.nii.gz", "b.nii.gz", "a_gt.nii.gz"], seed=1)
    synthetic = volumes(tmp_path / "synthetic", ["s1.nii.gz", "s2.nii.gz"], seed=2)
    return tmp_path / "real", tmp_path / "synthetic", real, synthetic


def test_kappa_matches_its_closed_form():
    # 2×2 table: both "real" 20, both "synthetic" 15, disagreements 5 + 10 → p_o = 0.7, p_e = 0.5, κ = 0.4
    first = ["real"] * 20 + ["synthetic"] * 15 + ["real"] * 5 + ["synthetic"] * 10
    second = ["real"] * 20 + ["synthetic"] * 15 + ["synthetic"] * 5 + ["real"] * 10
    assert rs.cohens_kappa(first, second) == pytest.approx(0.4)
    assert rs.cohens_kappa(["real", "synthetic"] * 3, ["real", "synthetic"] * 3) == 1.0
    assert rs.cohens_kappa(["real", "synthetic"] * 3, ["synthetic", "real"] * 3) == -1.0
    assert np.isnan(rs.cohens_kappa(["real"] * 4, ["real"] * 4))  # p_e = 1: κ undefined
    with pytest.raises(ValueError, match="equally long"):
        rs.cohens_kappa(["real"], [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(rs.ANSWERS), st.sampled_from(rs.ANSWERS)), min_size=1, max_size=40))
def test_kappa_is_symmetric_and_at_most_one(pairs):
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    k = rs.cohens_kappa(first, second)
    assert np.isnan(k) or (-1.0 <= k <= 1.0 and k == pytest.approx(rs.cohens_kappa(second, first)))


def test_metrics_treat_synthetic_as_the_positive_class():
    items = [rs.StudyItem(f"item{i}", "x", 0, truth) for i, truth in enumerate(["synthetic"] * 4 + ["real"] * 6)]
    said = ["synthetic", "synthetic", "synthetic", "real", "real", "real", "real", "real", "synthetic", "synthetic"]
    answers = [rs.Answer("A", item.item, answer, 4) for item, answer in zip(items, said)]
    metrics = rs.reader_metrics(items, answers)
    assert metrics == {"answered": 10, "accuracy": 0.7, "sensitivity": 0.75, "specificity": 4 / 6,
                       "mean_confidence": 4.0}


def test_study_is_balanced_shuffled_blinded_and_reproducible(study_files):
    real_dir, synthetic_dir, _, _ = study_files
    real, synthetic = rs.image_files(real_dir), rs.image_files(synthetic_dir)
    assert [p.name for p in real] == ["a.nii.gz", "b.nii.gz"]  # label files are skipped
    items = rs.build_study(real, synthetic, per_class=3, seed=4)
    assert [i.item for i in items] == [f"item{n:03d}" for n in range(1, 7)]
    assert sorted(i.truth for i in items) == ["real"] * 3 + ["synthetic"] * 3
    assert items == rs.build_study(real, synthetic, per_class=3, seed=4)
    assert items != rs.build_study(real, synthetic, per_class=3, seed=5)
    assert all(1 <= i.slice_index <= 4 for i in items)  # central slices of a 6-slice stack
    order_a, order_b = rs.reader_order(items, "alice"), rs.reader_order(items, "bob")
    assert sorted(order_a, key=lambda i: i.item) == items and order_a == rs.reader_order(items, "alice")
    assert order_a != order_b  # each reader sees the same items in their own order
    with pytest.raises(InputError, match="only 4 real slices"):
        rs.build_study(real, synthetic, per_class=5)


def test_results_round_trip_and_summary(study_files, tmp_path):
    _, _, real, synthetic = study_files
    items = rs.build_study(real[:2], synthetic, per_class=2, seed=0)
    answers = [rs.Answer("A", i.item, "real", 2) for i in items] + \
              [rs.Answer("B", i.item, i.truth, 5) for i in items]
    path = rs.save_results(tmp_path / "out" / "results.csv", items, answers)
    loaded_items, loaded_answers = rs.load_results(path)
    assert sorted(loaded_items, key=lambda i: i.item) == sorted(items, key=lambda i: i.item)
    assert loaded_answers == answers
    result = rs.summary(loaded_items, loaded_answers)
    assert result["readers"]["A"]["accuracy"] == 0.5 and result["readers"]["B"]["accuracy"] == 1.0
    assert result["kappa"] == {"A vs B": 0.0}
    saved = rs.save_summary(rs.summary_path(path), result)
    assert saved == tmp_path / "out" / "results_summary.csv"
    import csv

    with open(saved, newline="", encoding="utf-8") as f:
        rows = {(r["who"], r["measure"]): r["value"] for r in csv.DictReader(f)}
    assert rows[("A", "accuracy")] == "0.5" and rows[("A", "sensitivity")] == "0.0"
    assert rows[("A", "specificity")] == "1.0" and rows[("B", "mean_confidence")] == "5.0"
    assert rows[("A vs B", "cohens_kappa")] == "0.0" and rows[("B", "answered")] == "4"
    real_answer = next(a for a in answers if a.reader == "A" and a.item in {i.item for i in items if i.truth == "real"})
    one = rs.save_summary(tmp_path / "one.csv", rs.summary(items, [real_answer])).read_text(encoding="utf-8").splitlines()
    assert one[3] == "A,sensitivity,"  # only a real item answered: sensitivity undefined, left empty
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a reader-study results file"):
        rs.load_results(tmp_path / "other.csv")


def test_display_window_ignores_intensity_scale_and_offset():
    image = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    shown = rs.display_image(image)
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255
    assert np.array_equal(shown, rs.display_image(image * 40.0 + 300.0))  # real and synthetic shown alike
    assert np.array_equal(rs.display_image(np.ones((4, 4))), np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("depth, count, expected", [(1, 2, [0]), (2, 2, [0, 1]), (10, 3, [3, 5, 6]), (12, 1, [6]), (6, 2, [2, 3])])
def test_central_slices(depth, count, expected):
    assert rs.central_slices(depth, count) == expected


def test_answers_are_checked():
    rs.check_answer("real", 5)
    with pytest.raises(InputError, match="answer must be one of real, synthetic"):
        rs.check_answer("fake", 3)
    with pytest.raises(InputError, match="confidence must be a whole number from 1 to 5"):
        rs.check_answer("real", 0)
