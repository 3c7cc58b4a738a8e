"""`cmrsynth demo --data`: the walk on a real cohort checks the cohort before any work."""

import h5py
import numpy as np

from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.data.volume import read_volume
from CMRSynthLib.jobs.demo import _real_heldout_masks, real_dp_stage


def test_missing_cohort_stops_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--data", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code == 2 and "nowhere: not found" in err
    assert not (tmp_path / "out" / "models").exists()


def test_heldout_masks_are_written_canonical_for_the_models_holdout(tmp_path):
    label = np.zeros((3, 20, 24), np.uint8)
    label[:, 5:9, 5:9], label[:, 10:14, 10:14] = 3, 1  # ACDC: 3 LV, 1 RV
    for patient in ("patient001", "patient061"):
        for frame in (1, 12):
            with h5py.File(tmp_path / f"{patient}_frame{frame:02d}.h5", "w") as handle:
                handle["image"], handle["label"] = np.random.default_rng(0).random((3, 20, 24)), label
    cohort = open_cohort(tmp_path)
    folder = _real_heldout_masks(cohort, {"holdout": ["patient061"]}, tmp_path / "masks", count=4)
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["patient061_ED_gt.nii.gz"]  # held-out patients only, ED only
    mask = read_volume(folder / written[0]).array
    assert (mask[:, 5:9, 5:9] == 1).all() and (mask[:, 10:14, 10:14] == 3).all()  # canonical: 1 LV, 3 RV


def test_dp_stage_never_fine_tunes_a_starter_that_saw_the_cohorts_patients(tmp_path, capsys):
    from CMRSynthLib import DEFAULT_MODEL
    from CMRSynthLib.cli import build_parser

    starter = {"preprocessing": {"spacing": [1.5625, 1.5625, 10.0]}}
    dp = ["--dp", "--epsilon", 10.0, "--delta", 1e-3, "--max-grad-norm", 1.0, "--epochs", 1, "--seed", 0]
    name, argv, out = real_dp_stage(starter, {"patient001"}, data=tmp_path, models=tmp_path / "m", dp=dp)
    assert name == "train-flow-dp" and out == tmp_path / "m" / "flow-dp" and "--init" not in argv
    assert "1 of these patients" in capsys.readouterr().err
    fresh = build_parser().parse_args([str(a) for a in argv])
    assert (fresh.generator, fresh.field_of_view, fresh.image_size, fresh.spacing) == ("flow", "whole", 96, 1.5625)
    assert fresh.dp and fresh.epsilon == 10.0

    name, argv, out = real_dp_stage(starter, set(), data=tmp_path, models=tmp_path / "m", dp=dp)
    tuned = build_parser().parse_args([str(a) for a in argv])
    assert name == "train-ldm-dp" and out == tmp_path / "m" / "ldm-dp"
    assert (tuned.generator, tuned.init, tuned.dp) == ("ldm", DEFAULT_MODEL, True)
