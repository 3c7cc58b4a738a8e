"""Checkpoint folders: round trip, refusal of pickles / corrupt / foreign folders, atomic writes."""

import json

import pytest
import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.generators import build_generator, preset_config
from CMRSynthLib.generators.base import Vocabulary

VOCABULARY = Vocabulary(vendors=("A",))


@pytest.fixture
def model():
    """A real tiny flow generator at 16×16 (the checkpoint code never looks inside the family)."""
    torch.manual_seed(0)
    return build_generator("flow", preset_config("flow", "tiny", spatial_dims=2, image_size=16, vocabulary=VOCABULARY))


def card():
    return {"vocabulary": {"vendors": ["A"], "phases": ["ED", "ES"], "groups": ["NOR"]}, "members": ["p1"],
            "holdout": ["p2"], "training": {"steps": 3}}


def test_round_trip_keeps_weights_ema_and_card(model, tmp_path):
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    written = ckpt.save_checkpoint(tmp_path / "m", model, card(), ema=ema)
    assert written["format"] == ckpt.FORMAT and written["version"] == ckpt.VERSION and written["privacy"] is None
    assert written["config"] == model.config.to_dict() and written["family"] == "flow"
    assert written["model_id"] == ckpt.model_id(ema) != ckpt.model_id(model.state_dict())
    loaded, loaded_card = ckpt.load_checkpoint(tmp_path / "m")
    assert loaded_card == json.loads(json.dumps(written))
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ema[name])
    raw, _ = ckpt.load_checkpoint(tmp_path / "m", ema=False)
    for name, value in raw.state_dict().items():
        assert torch.equal(value, model.state_dict()[name])
    assert not raw.training


def test_packed_state_survives_json(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model.loss(torch.zeros(2, 1, 16, 16), _cond(2)).mean().backward()
    optimizer.step()
    tensors = {}
    packed = json.loads(json.dumps(ckpt.pack_state(optimizer.state_dict(), tensors, "opt")))
    restored = ckpt.unpack_state(packed, tensors)
    assert restored["param_groups"][0]["betas"] == (0.8, 0.9)
    assert set(restored["state"]) == set(optimizer.state_dict()["state"])
    assert torch.equal(restored["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def _cond(n):
    from CMRSynthLib.generators.base import Conditions

    mask = torch.zeros(n, 4, 16, 16)
    mask[:, 0] = 1
    return Conditions(mask, torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                      torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "last.ckpt"])
def test_pickles_are_refused_unopened(model, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InputError, match="never unpickles") as error:
        ckpt.load_checkpoint(path)
    assert name in str(error.value)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / name).write_bytes(b"x")
    with pytest.raises(InputError, match="never unpickles"):
        ckpt.load_checkpoint(folder)


def test_foreign_corrupt_and_mismatched_folders_are_refused(model, tmp_path):
    ckpt.save_checkpoint(tmp_path / "m", model, card())
    card_path = tmp_path / "m" / "card.json"
    good = json.loads(card_path.read_text(encoding="utf-8"))
    cases = [({**good, "format": "other"}, "format"), ({**good, "version": 99}, "version 99"),
             ({**good, "family": "gan"}, "unknown generator family 'gan'"),
             ({**good, "config": {**good["config"], "vocabulary": {**good["config"]["vocabulary"],
                                                                    "vendors": ["A", "B"]}}}, "shape mismatch")]
    for bad, message in cases:
        card_path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            ckpt.load_checkpoint(tmp_path / "m")
    card_path.write_text("{not json")
    with pytest.raises(InputError, match="card.json: is not valid JSON"):
        ckpt.load_checkpoint(tmp_path / "m")
    card_path.write_text(json.dumps(good))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(InputError, match="model.safetensors: is not a readable safetensors"):
        ckpt.load_checkpoint(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no card.json"):
        ckpt.load_checkpoint(tmp_path / "empty")


def test_a_failed_save_leaves_the_previous_checkpoint(model, tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path / "m", model, {**card(), "training": {"steps": 1}})
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def killed(*args, **kwargs):
        raise SystemExit(143)  # SIGTERM while the weights are being written

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    monkeypatch.setattr(ckpt, "_write_folder", lambda folder, *a: ((folder / "card.json").write_text("{}"), killed()))
    with pytest.raises(SystemExit):
        ckpt.save_checkpoint(tmp_path / "m", model, {**card(), "training": {"steps": 2}})
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no partial folder left beside it


def test_starter_names_resolve_through_the_models_folder(model, tmp_path, monkeypatch):
    monkeypatch.setenv(ckpt.MODELS_ENV, str(tmp_path / "models"))
    ckpt.save_checkpoint(tmp_path / "models" / "flow", model, card())
    generator, loaded = ckpt.load_checkpoint("flow")
    assert loaded["family"] == "flow"
    with pytest.raises(InputError, match="starter models: flow"):
        ckpt.load_checkpoint("ldm")


def test_default_models_folder_is_beside_the_package(monkeypatch):
    monkeypatch.delenv(ckpt.MODELS_ENV, raising=False)
    assert ckpt.models_dir().parts[-2:] == ("Resources", "models")
    assert (ckpt.models_dir().parent.parent / "CMRSynthLib").is_dir()


def test_float16_parameters_load_back_as_float32(model, tmp_path):
    ckpt.save_checkpoint(tmp_path / "m", model, card(), parameters_dtype=torch.float16)
    stored = ckpt.read_checkpoint(tmp_path / "m").weights
    names = set(dict(model.named_parameters()))
    assert all(v.dtype == torch.float16 for k, v in stored.items() if k in names)
    loaded, _ = ckpt.load_checkpoint(tmp_path / "m")
    rounded = 0
    for name, value in loaded.state_dict().items():
        original = model.state_dict()[name]
        assert value.dtype == original.dtype
        expected = original.to(torch.float16).float() if name in names else original  # buffers stay exact
        assert torch.equal(value, expected), name
        rounded += name in names and not torch.equal(value, original)
    assert rounded > 0  # float16 storage really rounded some weights (the comparison above is not vacuous)


def test_int8_parameters_round_trip_per_output_channel(model, tmp_path):
    """int8 storage: kernels/matrices as int8 codes with a float32 scale per output channel, the other
    parameters float16, buffers untouched; loading gives float32 weights q·s within s/2 of the originals."""
    written = ckpt.save_checkpoint(tmp_path / "m", model, card(), parameters_dtype=torch.int8)
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "m" / ckpt.WEIGHTS))
    params = dict(model.named_parameters())
    matrices = [k for k, v in params.items() if v.ndim >= 2]
    assert matrices and all(raw[k].dtype == torch.int8 and raw[k].shape == params[k].shape for k in matrices)
    assert all(raw[k].dtype == torch.float16 for k, v in params.items() if v.ndim < 2)
    loaded, loaded_card = ckpt.load_checkpoint(tmp_path / "m")
    assert loaded_card["model_id"] == written["model_id"]
    for name, value in loaded.state_dict().items():
        original = model.state_dict()[name]
        assert value.dtype == torch.float32
        if name in matrices:
            scale = raw[name + ckpt.INT8_SCALE]
            assert scale.shape == (len(original),) + (1,) * (original.ndim - 1)
            assert torch.equal(value, raw[name].float() * scale)
            assert torch.all((value - original).abs() <= scale / 2 + 1e-7)
            peak = raw[name].abs().flatten(1).amax(1)  # each channel's largest weight gets code ±127
            assert torch.equal(peak, torch.where(original.flatten(1).abs().amax(1) > 0, 127, 0).to(torch.int8))
        elif name in params:
            assert torch.equal(value, original.half().float())
        else:
            assert torch.equal(value, original)
    size = (tmp_path / "m" / ckpt.WEIGHTS).stat().st_size
    ckpt.save_checkpoint(tmp_path / "h", model, card(), parameters_dtype=torch.float16)
    assert size < 0.6 * (tmp_path / "h" / ckpt.WEIGHTS).stat().st_size


def test_unsupported_storage_dtype_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="parameters_dtype"):
        ckpt.save_checkpoint(tmp_path / "m", model, card(), parameters_dtype=torch.float64)
    assert not (tmp_path / "m").exists()
