"""Starter models: a finished run is shipped as its EMA weights in compact int8 storage, with a card that says
how to rebuild it; STARTERS.md lists what is shipped."""

import json

import torch

from CMRSynthLib.generators import build_generator, preset_config
from CMRSynthLib.generators.base import Vocabulary
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training import starters

VOCABULARY = Vocabulary(vendors=("A",))


def finished_run(path):
    torch.manual_seed(0)
    model = build_generator("flow", preset_config("flow", "tiny", spatial_dims=2, image_size=16, vocabulary=VOCABULARY))
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    card = {"vocabulary": VOCABULARY.to_dict(), "members": ["p1"], "holdout": ["p2"],
            "preprocessing": {"size": [16, 16]},
            "training": {"steps": 3, "wall_seconds": 60.0, "final_loss": 0.5, "arguments": {"preset": "tiny"}}}
    ckpt.save_checkpoint(path, model, card, ema=ema)
    return ema


def test_export_ships_int8_ema_weights_and_a_reproducible_card(tmp_path):
    ema = finished_run(tmp_path / "run")
    card = starters.export_starter(tmp_path / "run", tmp_path / "out" / "phantom-tiny-flow", name="phantom-tiny-flow")
    assert card["starter"]["reproduce"] == f"{starters.COMMAND} --only phantom-tiny-flow"
    assert card["starter"]["storage"] == starters.STORAGE_NOTE and card["members"] == ["p1"]
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "out" / "phantom-tiny-flow" / ckpt.WEIGHTS))
    assert not any(k.startswith(ckpt.EMA_PREFIX) for k in raw)  # only the EMA weights, under the plain names
    assert any(v.dtype == torch.int8 for v in raw.values())
    loaded, _ = ckpt.load_checkpoint(tmp_path / "out" / "phantom-tiny-flow")
    for name, value in loaded.state_dict().items():
        assert value.dtype == ema[name].dtype
        assert torch.allclose(value, ema[name], atol=ema[name].abs().max().item() / 254 + 1e-3)
    summary = starters.summary(tmp_path / "out")
    assert "| phantom-tiny-flow | flow | tiny | 16×16 | 3 | 1.0 | – | 0.5000 |" in summary and "int8" in summary


def test_every_shipped_starter_is_int8_and_listed():
    shipped = sorted(p.parent.name for p in ckpt.models_dir().glob(f"*/{ckpt.CARD}"))
    real = {*starters.REAL_STARTERS, *starters.HYBRID_PARTS}
    assert set(starters.STARTERS) <= set(shipped) <= set(starters.STARTERS) | real
    listed = (ckpt.models_dir() / "STARTERS.md").read_text(encoding="utf-8")
    for name in shipped:
        card = json.loads((ckpt.models_dir() / name / ckpt.CARD).read_text(encoding="utf-8"))
        assert card["starter"]["storage"] == starters.STORAGE_NOTE and f"| {name} |" in listed
        assert card["starter"]["name"] == name and card["starter"]["reproduce"].endswith(f"--only {name}")
        # a phantom starter's name says so: nobody takes it for a model of real hearts
        assert name.startswith("acdc-" if name in real else "phantom-")
        assert card["data"]["simulated"] is (name not in real)


def test_hybrid_parts_ship_as_flow_and_ddpm_starters_with_the_same_weights(tmp_path):
    torch.manual_seed(0)
    hybrid = build_generator("hybrid", preset_config("hybrid", "tiny", spatial_dims=2, image_size=16,
                                                     vocabulary=VOCABULARY))
    card = {"family": "hybrid", "config": hybrid.config.to_dict(), "vocabulary": VOCABULARY.to_dict(),
            "members": ["p1"], "holdout": ["p2"], "preprocessing": {"size": [16, 16]},
            "dataset": {"name": "ACDC", "license": "CC BY-NC-SA 4.0"},
            "training": {"steps": 3, "wall_seconds": 60.0, "final_loss": 0.5, "command": ["cmrsynth", "/secret/path"],
                         "arguments": {"preset": "tiny", "data": "/secret/path"}}}
    ckpt.save_checkpoint(tmp_path / "run", hybrid, card)
    for name, part in (("acdc-flow", hybrid.flow_model), ("acdc-ddpm", hybrid.ddpm_model)):
        shipped = starters.export_hybrid_part(tmp_path / "run", tmp_path / name, name=name, data=tmp_path)
        loaded, loaded_card = ckpt.load_checkpoint(tmp_path / name)
        assert loaded_card["family"] == starters.HYBRID_PARTS[name] == loaded.family
        assert shipped["starter"]["part_of"] == "acdc-hybrid" and shipped["dataset"]["name"] == "ACDC"
        assert "/secret/path" not in json.dumps(loaded_card)  # the trainer's data path is not shipped
        for key, value in part.state_dict().items():
            assert torch.allclose(loaded.state_dict()[key], value, atol=value.abs().max().item() / 100 + 1e-3)
