"""cmrsynth reid works with its defaults on every shipped kind of card (one whose held-out patients are its
``holdout`` split only, as the ACDC starters), and the operator is told on the console what the privacy filter
did in a run, read back from this run's lines of the private log."""

import json
import shutil

import pytest

from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.reid.filter import FilterLog
from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def holdout_only(tiny_flow, tmp_path_factory):  # noqa: F811
    """The tiny model with a card like acdc-ldm's: no validation patients, the held-out ones under ``holdout``."""
    folder = tmp_path_factory.mktemp("holdout") / "flow"
    shutil.copytree(tiny_flow, folder)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    card.update(holdout=sorted(card["validation"] + card["holdout"]), validation=[])
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def default_reid(holdout_only, phantom):  # noqa: F811
    from CMRSynthLib.cli import main

    assert main(["reid", "--model", str(holdout_only), "--data", str(phantom), "--steps", "2", "--device", "cpu",
                 "--progress", "none"]) == 0  # before: exit 2, "--calibration validation: ... no such patients"
    return holdout_only.with_name(holdout_only.name + ".PRIVATE-reid")


def test_reid_calibrates_on_the_holdout_split_when_the_card_has_no_validation_split(default_reid, holdout_only):
    record = json.loads((default_reid / "reid.json").read_text(encoding="utf-8"))
    card = json.loads((holdout_only / "card.json").read_text(encoding="utf-8"))
    assert record["calibration"] == {**record["calibration"], "split": "holdout", "patients": len(card["holdout"])}


def test_the_operator_sees_what_the_filter_did_in_this_run_only(default_reid, holdout_only, phantom, tmp_path,
                                                                 run_cli):  # noqa: F811
    mask = open_cohort(phantom).records[0].label_path
    out = tmp_path / "images"
    common = ("sample", "--model", holdout_only, "--mask", mask, "--out", out, "--steps", "2", "--device", "cpu",
              "--reid", default_reid, "--progress", "none")
    # every slice re-identifies at a huge threshold: redrawn once, then the image is withheld
    code, _, err = run_cli(*common, "--privacy-filter", "1e9", "--privacy-retries", "1")
    assert code == 2 and "withheld" in err
    log = FilterLog(out)
    slices = len(json.loads(log.path.read_text(encoding="utf-8").splitlines()[-1])["redrawn_slices"])
    assert slices > 0
    assert (f"privacy filter: 0 images written, {slices} slices redrawn, 1 image withheld; what it did to each "
            f"image: {log.path} (private: keep it inside the hospital)") in err.splitlines()
    # none re-identifies at a tiny one; the summary counts this run's lines, not the earlier run's
    code, _, err = run_cli(*common, "--privacy-filter", "1e-9", "--count", "2")
    assert code == 0, err
    assert "privacy filter: 2 images written, 0 slices redrawn, 0 images withheld;" in err
    assert log.summary().startswith("privacy filter: 2 images written")
    code, _, err = run_cli(*common[:-4], "--progress", "none", "--out", tmp_path / "plain")  # no filter: nothing said
    assert code == 0 and "privacy filter" not in err
