"""Heart coordinates: a flow/LDM model may also be given, as two more mask channels, each pixel's offset from
the heart's centroid in its slice, so that a whole-field model (trained on tiles placed anywhere) knows where
the chest wall, lungs and the air around the body lie. Old models (no such field) load as before, and a
fine-tune that switches the coordinates on starts from exactly its --init model's outputs."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch.nn import functional as F

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators import build_generator, config_from_dict, config_to_dict, preset_config
from CMRSynthLib.generators.common import HEART_COORDINATE_UNIT, heart_coordinates
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training.config import TrainConfig
from CMRSynthLib.training.loop import Trainer
from Testing.generators.test_contract import VOCABULARY, batch, seeded
from training_fixtures import phantom, train_config  # noqa: F401 - fixture


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, 4).movedim(-1, 1).float()


def square_heart(top: int, left: int, size: int = 32, side: int = 4) -> torch.Tensor:
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, top:top + side, left:left + side] = 3
    return one_hot(labels)


def test_the_coordinates_are_zero_at_the_heart_centroid_and_count_pixels_in_units():
    coordinates = heart_coordinates(square_heart(10, 4), unit=8)  # centroid (row 11.5, col 5.5)
    assert coordinates.shape == (1, 2, 32, 32)
    cols, rows = coordinates[0]
    assert torch.allclose(cols[0], (torch.arange(32) - 5.5) / 8)
    assert torch.allclose(rows[:, 0], (torch.arange(32) - 11.5) / 8)
    assert torch.allclose(cols[7], cols[20]) and torch.allclose(rows[:, 3], rows[:, 30])


def test_every_label_of_the_heart_counts_by_its_area_and_background_does_not():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 10, 10], labels[0, 10, 20:23] = 1, 2  # one LV pixel at col 10, three MYO pixels at cols 20-22
    cols = heart_coordinates(one_hot(labels), unit=1)[0, 0, 0]
    assert cols[0].item() == pytest.approx(-18.25)  # the centroid: (10 + 20 + 21 + 22) / 4


def test_moving_the_heart_moves_the_coordinates_with_it():
    here, there = heart_coordinates(square_heart(8, 6), 4), heart_coordinates(square_heart(13, 9), 4)
    assert torch.allclose(here[..., :-5, :-3], there[..., 5:, 3:])


def test_a_slice_without_heart_and_the_unconditional_all_zero_mask_get_zeros():
    empty = one_hot(torch.zeros(1, 32, 32, dtype=torch.long))
    assert torch.equal(heart_coordinates(empty, 4), torch.zeros(1, 2, 32, 32))
    assert torch.equal(heart_coordinates(torch.zeros(1, 4, 32, 32), 4), torch.zeros(1, 2, 32, 32))
    stack = torch.stack([square_heart(8, 8)[0], empty[0]], dim=1)[None]  # (1, 4, 2 slices, H, W): per slice
    coordinates = heart_coordinates(stack, 4)
    assert coordinates.shape == (1, 2, 2, 32, 32)
    assert coordinates[:, :, 0].abs().sum() > 0 and torch.equal(coordinates[:, :, 1], torch.zeros(1, 2, 32, 32))


def model(family: str, **overrides):
    torch.manual_seed(0)
    config = preset_config(family, "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY, **overrides)
    return build_generator(family, config).eval()


@pytest.mark.parametrize("family", ["flow", "ldm"])
def test_the_network_is_given_the_mask_and_the_coordinates_in_the_same_physical_unit(family):
    _, cond = batch(2)
    plain, located = model(family), model(family, heart_coordinates=True)
    assert plain.model_mask(cond).shape[1] == 4 and located.net.mask_channels == 6
    given = located.model_mask(cond)
    assert torch.equal(given[:, :4], plain.model_mask(cond))
    factor = located.config.autoencoder.factor if family == "ldm" else 1
    # one latent cell is `factor` pixels: the offset between two cells a unit apart reads the same as in pixels
    step = given[0, 4, 0, 1] - given[0, 4, 0, 0]
    assert step.item() == pytest.approx(factor / HEART_COORDINATE_UNIT)
    assert torch.isfinite(located.sample(cond, steps=2, generator=seeded(3))).all()


def test_a_card_written_before_heart_coordinates_loads_without_them():
    config = config_to_dict(preset_config("flow", "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY))
    old = {k: v for k, v in config.items() if k != "heart_coordinates"}
    loaded = config_from_dict("flow", old)
    assert loaded.heart_coordinates is False and build_generator("flow", loaded).net.mask_channels == 4


@pytest.mark.parametrize("family", ["anatomy", "hybrid"])
def test_models_that_cannot_use_them_refuse_them(family):
    with pytest.raises(ValueError, match="heart_coordinates must be off"):
        preset_config(family, "tiny", spatial_dims=2, image_size=(32, 32), vocabulary=VOCABULARY,
                      heart_coordinates=True)


@pytest.mark.parametrize("family", ["ddpm", "hybrid", "anatomy"])
def test_train_refuses_the_flag_for_other_families(family):
    with pytest.raises(InputError, match="--heart-coordinates applies to --generator flow or ldm only"):
        TrainConfig(data="d", out="o", family=family, heart_coordinates=True)


def test_the_cli_flag_reaches_the_run_and_its_absence_means_the_models_own(monkeypatch, tmp_path):
    from CMRSynthLib.jobs import train

    seen = []

    def stop(self, config, **kwargs):
        seen.append(config)
        raise SystemExit

    monkeypatch.setattr("CMRSynthLib.training.loop.Trainer.__init__", stop)
    for argv, expected in ((["--heart-coordinates"], True), ([], None)):
        parser = argparse.ArgumentParser()
        train.add_arguments(parser)
        args = parser.parse_args(["--data", "d", "--out", str(tmp_path), "--generator", "ldm", *argv])
        with pytest.raises(SystemExit):
            train.run(args, progress=None)
        assert seen[-1].heart_coordinates is expected


def test_fine_tuning_a_plain_model_with_coordinates_starts_from_its_outputs(phantom, tmp_path):  # noqa: F811
    Trainer(train_config(phantom, tmp_path / "base", max_steps=2)).run()
    Trainer(train_config(phantom, tmp_path / "tuned", max_steps=1, init=str(tmp_path / "base"), preset=None,
                         image_size=None, heart_coordinates=True, lr=1e-12, ema_decay=0.0)).run()
    base, base_card = ckpt.load_checkpoint(tmp_path / "base")
    tuned, tuned_card = ckpt.load_checkpoint(tmp_path / "tuned")
    assert tuned_card["config"] == {**base_card["config"], "heart_coordinates": True}
    assert tuned.net.mask_channels == 6
    _, cond = batch(2)
    cond = type(cond)(F.interpolate(cond.mask, size=(32, 32)), cond.vendor * 0 + 1, cond.phase, cond.group)
    a = base.sample(cond, steps=2, generator=seeded(4))
    b = tuned.sample(cond, steps=2, generator=seeded(4))
    assert torch.allclose(a, b, atol=1e-5)
    arguments = json.loads((tmp_path / "tuned" / "trainer_state.json").read_text())["arguments"]
    assert arguments["heart_coordinates"] is True
