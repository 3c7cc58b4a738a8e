"""Starter models: a finished run is shipped as its EMA weights in compact int8 storage, with a card that says
how to rebuild it; STARTERS.md lists what is shipped."""

import json

import torch

from CMRSynthLib.generators import build_generator, preset_config
from CMRSynthLib.generators.base import Vocabulary
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training import starters
from CMRSynthLib.training.card import runs_of
from training_fixtures import phantom  # noqa: F401 - fixture

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


def test_a_continued_starter_is_trained_in_runs_and_listed_with_each(phantom, tmp_path, monkeypatch):  # noqa: F811
    """A :data:`~starters.CONTINUED` starter: each run is exported and the next fine-tunes that export on the
    same patients (the last one learning to go without its mask and to sample with guidance 2); the card keeps
    the earlier runs' records and STARTERS.md shows every run's steps and minutes."""
    from CMRSynthLib.jobs.progress import Progress

    first = dict(family="flow", preset="tiny", image_size=32, spacing=5.0, max_steps=2, batch_size=2, seed=0)
    monkeypatch.setitem(starters.REAL_STARTERS, "acdc-test", first)
    monkeypatch.setitem(starters.CONTINUED, "acdc-test", [
        dict(family="flow", max_steps=3, batch_size=2, lr=1e-4, seed=1),
        dict(family="flow", max_steps=4, batch_size=2, lr=1e-4, seed=2, mask_dropout=0.2, guidance=2.0)])
    card = starters.train_starter("acdc-test", data=phantom, work=tmp_path / "work", out=tmp_path / "out",
                                  progress=Progress("none"))
    assert [r["steps"] for r in card["starter"]["earlier_runs"]] == [2, 3] and card["training"]["steps"] == 4
    assert [r["steps"] for r in runs_of(card)] == [2, 3, 4]
    assert card["training"]["arguments"]["init"] == "acdc-test (its run 2)"
    assert card["config"]["p_mask_uncond"] == 0.2 and card["config"]["guidance"] == 2.0
    assert "pretrained_on" not in card["dataset"]
    assert str(tmp_path) not in json.dumps(card)  # no path of the machine that trained it
    second, second_card = ckpt.load_checkpoint(tmp_path / "work" / "acdc-test-run2")
    assert second_card["config"]["p_mask_uncond"] == 0.0 and second_card["config"]["guidance"] == 1.0
    last, _ = ckpt.load_checkpoint(tmp_path / "out" / "acdc-test")
    assert any(not torch.equal(a, b) for a, b in zip(second.state_dict().values(), last.state_dict().values()))
    assert last.default_guidance == 2.0
    row = next(line for line in starters.summary(tmp_path / "out").splitlines() if line.startswith("| acdc-test |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "2 + 3 + 4" and cells[5].count(" + ") == 2 and cells[6].count(" + ") == 2
    assert cells[8].endswith(", guidance 2")  # the default sampler with the guidance the model samples with


def train_cascade_starter(phantom, tmp_path, monkeypatch, **decoder) -> dict:  # noqa: F811
    """A tiny real starter with a coarse stage (and, given ``decoder`` arguments, a decoder stage after it)."""
    from CMRSynthLib.jobs.progress import Progress

    whole = dict(preset="tiny", field_of_view="whole", batch_size=2, seed=0)
    monkeypatch.setitem(starters.REAL_STARTERS, "acdc-test",
                        dict(family="ldm", image_size=32, spacing=5.0, max_steps=4, autoencoder_fraction=0.5, **whole))
    monkeypatch.setitem(starters.COARSE, "acdc-test", dict(family="flow", image_size=8, spacing=20.0, max_steps=3,
                                                           **whole))
    monkeypatch.setitem(starters.COARSE_START, "acdc-test", 0.7)
    if decoder:
        monkeypatch.setitem(starters.DECODER, "acdc-test", dict(family="ldm", stage="decoder", **decoder))
    return starters.train_starter("acdc-test", data=phantom, work=tmp_path / "work", out=tmp_path / "out",
                                  progress=Progress("none"))


def test_a_starter_with_a_coarse_stage_ships_both_networks_and_lists_the_coarse_run(phantom, tmp_path,  # noqa: F811
                                                                                     monkeypatch):
    """A :data:`~starters.COARSE` starter: its coarse flow model is trained on the same patients at the latent
    grid's pixel size and joined to the last run; the shipped card records it and STARTERS.md lists its run."""
    card = train_cascade_starter(phantom, tmp_path, monkeypatch)
    model, shipped = ckpt.load_checkpoint(tmp_path / "out" / "acdc-test")
    coarse, coarse_card = ckpt.load_checkpoint(tmp_path / "work" / "acdc-test-coarse")
    assert model.coarse is not None and model.config.coarse_start == 0.7 == card["cascade"]["start"]
    for key, value in coarse.state_dict().items():
        assert torch.allclose(model.coarse.state_dict()[key], value, atol=value.abs().max().item() / 100 + 1e-3)
    assert shipped["cascade"]["coarse_model_id"] == coarse_card["model_id"]
    assert shipped["cascade"]["coarse_training"]["steps"] == 3
    assert str(tmp_path) not in json.dumps(shipped)  # no path of the machine that trained it
    row = next(line for line in starters.summary(tmp_path / "out").splitlines() if line.startswith("| acdc-test |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "coarse flow stage at 20 mm" in cells[1] and cells[4] == "4 + 3"


def test_a_starter_with_a_decoder_stage_ships_the_sharpened_decoder_on_the_same_latents(phantom, tmp_path,  # noqa: F811
                                                                                       monkeypatch):
    """A :data:`~starters.DECODER` starter: the exported cascade's decoder is fine-tuned adversarially; the shipped
    model keeps its encoder, latent network and coarse stage, its card the cascade record, and STARTERS.md says so."""
    card = train_cascade_starter(phantom, tmp_path, monkeypatch, max_steps=2, batch_size=2, seed=0)
    cascade, _ = ckpt.load_checkpoint(tmp_path / "work" / "acdc-test-cascade")
    shipped, _ = ckpt.load_checkpoint(tmp_path / "out" / "acdc-test")
    before, after = cascade.state_dict(), shipped.state_dict()
    decoder = [k for k in after if k.startswith("autoencoder.kl.decoder.")]
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    for key in after:  # both stored as int8: what the decoder stage did not train comes back to the same bits
        if not key.startswith(("autoencoder.kl.decoder.", "autoencoder.kl.post_quant_conv.", "stage_index")):
            assert torch.equal(before[key], after[key]), key
    assert card["cascade"]["start"] == 0.7 and card["training"]["arguments"]["stage"] == "decoder"
    row = next(line for line in starters.summary(tmp_path / "out").splitlines() if line.startswith("| acdc-test |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "decoder sharpened adversarially (run 2)" in cells[1] and cells[4] == "4 + 2 + 3"
    assert cells[8].endswith(", guidance 1 / coarse 1")
