"""strict_from_dict: the one strict JSON → frozen dataclass reader (configs, cards)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from CMRSynthLib.data.preprocess import PreprocessConfig
from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import strict_from_dict
from CMRSynthLib.training.config import TrainConfig


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int]


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    scale: float = 1.0

    def __post_init__(self):
        if self.scale <= 0:
            raise InputError(f"scale must be > 0, got {self.scale}")


def test_nested_round_trip_turns_lists_into_tuples():
    value = strict_from_dict(Outer, {"name": "a", "inner": {"size": [3, 4]}})
    assert value == Outer("a", Inner((3, 4)))
    assert isinstance(value.inner.size, tuple)


@pytest.mark.parametrize("data, message", [
    ({"name": "a", "inner": {"size": [1, 2]}, "gamma": 1}, r"unknown thing keys \['gamma'\]"),
    ({"inner": {"size": [1, 2]}}, r"thing is missing the keys \['name'\]"),
    ({"name": "a", "inner": {"size": [1, 2], "z": 0}}, r"unknown thing.inner keys \['z'\]"),
    ([1, 2], "thing must be a JSON object"),
])
def test_bad_data_names_the_place(data, message):
    with pytest.raises(InputError, match=message):
        strict_from_dict(Outer, data, where="thing")


def test_the_class_own_input_error_passes_unchanged():
    with pytest.raises(InputError, match=r"^scale must be > 0, got -1"):
        strict_from_dict(Outer, {"name": "a", "inner": {"size": [1, 2]}, "scale": -1})


def test_train_and_preprocess_configs_use_it():
    train = TrainConfig(data="d", family="ddpm", out="o", max_steps=3, batch_size=2)
    assert TrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))) == train
    with pytest.raises(InputError, match=r"unknown training arguments keys \['typo'\]"):
        TrainConfig.from_dict({**train.to_dict(), "typo": 1})
    with pytest.raises(InputError, match="training arguments is missing the keys"):
        TrainConfig.from_dict({"data": "d"})
    with pytest.raises(InputError, match=r"unknown preprocessing keys \['gamma'\]"):
        PreprocessConfig.from_dict({"gamma": 2})
