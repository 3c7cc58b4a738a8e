"""The real starters are the defaults: `cmrsynth sample` without --model, the anatomy that matches the data, and
new anatomies placed in a whole-field-of-view model's field."""

import numpy as np
import pytest

from CMRSynthLib.jobs.sample import default_anatomy, default_model, whole_field_mm
from CMRSynthLib.synthesis import sample_anatomy
from CMRSynthLib.training.checkpoint import load_checkpoint
from CMRSynthLib import DEFAULT_MODEL
from training_fixtures import oblique_mask
from CMRSynthLib.data.volume import write_volume


def test_without_model_the_default_real_starter_is_used_or_named_when_missing(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CMRSYNTH_MODELS", str(tmp_path / "empty"))
    write_volume(oblique_mask(), tmp_path / "m.nii.gz")
    code, _, err = run_cli("sample", "--mask", tmp_path / "m.nii.gz", "--out", tmp_path / "out")
    assert code == 2 and f"the default starter {DEFAULT_MODEL} is not in" in err
    assert not (tmp_path / "out").exists()


def test_the_default_is_a_shipped_real_model():
    assert default_model() == DEFAULT_MODEL
    _, card = load_checkpoint(DEFAULT_MODEL)
    assert card["dataset"]["name"] == "ACDC" and "CC BY-NC-SA 4.0" in card["dataset"]["license"]
    assert card["preprocessing"]["field_of_view"] == "whole"
    assert card["vocabulary"]["vendors"] == ["Siemens"]  # ACDC is one vendor: nothing else is offered
    assert default_anatomy(card) == "acdc-anatomy"
    assert default_anatomy({"dataset": None}) == "phantom-anatomy"


def test_new_anatomy_is_padded_to_the_image_models_field():
    anatomy, card = load_checkpoint("phantom-anatomy")
    spacing = card["preprocessing"]["spacing"]
    plain = sample_anatomy(anatomy, card, count=1, seed=0, steps=2)[0]
    field = (plain.shape[1] * spacing[0] * 2, plain.shape[2] * spacing[1] * 1.5)
    padded = sample_anatomy(anatomy, card, count=1, seed=0, steps=2, field_mm=field)[0]
    assert padded.shape[1] * spacing[0] >= field[0] and padded.shape[2] * spacing[1] >= field[1]
    assert np.bincount(padded.array.ravel(), minlength=4)[1:].tolist() == \
        np.bincount(plain.array.ravel(), minlength=4)[1:].tolist()  # the same heart, more background
    centre = lambda v: v.ijk_to_ras[:3, :3] @ np.argwhere(v.array > 0).mean(0)[::-1] + v.ijk_to_ras[:3, 3]  # noqa
    assert np.allclose(centre(plain), centre(padded), atol=1e-6)  # it stays where it was in RAS


@pytest.mark.parametrize("pre, field", [({"field_of_view": "whole", "size": [192, 160], "spacing": [1.5, 2.0]},
                                         (288.0, 320.0)),
                                        ({"field_of_view": "heart", "size": [64, 64], "spacing": [2.5, 2.5]}, None),
                                        ({"size": [64, 64], "spacing": [2.5, 2.5]}, None)])
def test_whole_field_is_the_training_tile_in_mm(pre, field):
    assert whole_field_mm({"preprocessing": pre}) == field
