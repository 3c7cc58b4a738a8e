"""The model list the panel offers: starter models and the user's model folder, read without torch."""

import json
from pathlib import Path

import pytest

from CMRSynthLib import DEFAULT_MODEL
from CMRSynthLib.errors import InputError
from CMRSynthLib.gui import catalogue


def checkpoint(folder, family="flow", *, epsilon=None, members=3, vendors=("Siemens", "GE"), simulated=True):
    folder.mkdir(parents=True)
    card = {"format": "cmrsynth-checkpoint", "version": 1, "family": family, "model_id": "abc123",
            "members": [f"p{i}" for i in range(members)], "vocabulary": {"vendors": list(vendors)},
            "data": {"simulated": simulated},
            "privacy": None if epsilon is None else {"epsilon": epsilon, "delta": 1e-5, "patients": members}}
    if epsilon is not None:  # a DP card keeps its patient lists beside the folder, not in it
        del card["members"]
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_starters_come_first_then_the_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRSYNTH_MODELS", str(tmp_path / "starters"))
    checkpoint(tmp_path / "starters" / "phantom-tiny-flow")
    checkpoint(tmp_path / "mine" / "dp-run", family="ddpm", epsilon=3.2)
    (tmp_path / "mine" / "unfinished").mkdir()  # a run still writing: no card yet, skipped
    checkpoint(tmp_path / "mine" / ".hidden")
    models = catalogue.list_models(tmp_path / "mine")
    assert [(m.name, m.starter, m.argument) for m in models] == [
        ("phantom-tiny-flow", True, "phantom-tiny-flow"), ("dp-run", False, str(tmp_path / "mine" / "dp-run"))]
    flow, ddpm = models
    assert flow.describe() == "flow · trained on a simulated phantom, 3 patients · no differential privacy · starter model"
    assert ddpm.describe().startswith("ddpm · trained on a simulated phantom, 3 patients · DP ε = 3.2, δ = 1.0e-05 · /")
    assert flow.vendors == ("Siemens", "GE") and ddpm.epsilon == 3.2
    assert catalogue.find_model("phantom-tiny-flow", tmp_path / "mine") == flow
    assert catalogue.find_model(str(tmp_path / "mine" / "dp-run"), tmp_path / "mine") == ddpm
    with pytest.raises(InputError, match="no model named 'nope' \\(known: phantom-tiny-flow, dp-run\\)"):
        catalogue.find_model("nope", tmp_path / "mine")


ROOT = Path(__file__).resolve().parents[2]
ACDC = {**json.loads((ROOT / "Resources" / "models" / DEFAULT_MODEL / "card.json").read_text(encoding="utf-8"))["dataset"], "patients": 100}  # the shipped card's record


def test_the_default_real_starter_is_the_first_choice_then_real_then_phantom(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRSYNTH_MODELS", str(tmp_path / "starters"))
    for name in ("acdc-ddpm", "acdc-flow", DEFAULT_MODEL, "a-phantom"):  # names sort otherwise
        checkpoint(tmp_path / "starters" / name, simulated=name == "a-phantom")
    assert [m.name for m in catalogue.list_models(tmp_path / "mine")] == [
        DEFAULT_MODEL, "acdc-ddpm", "acdc-flow", "a-phantom"]


def test_a_real_data_model_names_its_data_license_and_what_it_knows(tmp_path):
    folder = checkpoint(tmp_path / "acdc-flow", vendors=("Siemens",), simulated=False)
    card = json.loads((folder / "card.json").read_text())
    card["dataset"] = ACDC
    card["vocabulary"].update(groups=["NOR", "DCM", "HCM", "MINF", "ARV"], phases=["ED", "ES"])
    del card["members"]  # as a card without a member list: the dataset's count is shown
    (folder / "card.json").write_text(json.dumps(card))
    info = catalogue.read_model(folder)
    assert info.describe() == (f"flow · trained on ACDC ({ACDC['license']}), 100 patients · no differential privacy · "
                               f"{folder}")
    assert info.vendors == ("Siemens",) and info.groups == ("NOR", "DCM", "HCM", "MINF", "ARV")
    assert info.details().splitlines() == [
        f"Data: ACDC ({ACDC['license']})", f"Cite: {ACDC['citation']}", f"Source: {ACDC['url']}",
        f"Spacing: {ACDC['spacing']}", "Vendors: Siemens", "Pathology groups: NOR, DCM, HCM, MINF, ARV",
        "Phases: ED, ES"]


def test_a_cascade_says_it_draws_the_whole_field_first(tmp_path):
    folder = checkpoint(tmp_path / "acdc-ldm", family="ldm", vendors=("Siemens",))
    card = json.loads((folder / "card.json").read_text())
    card["cascade"] = {"start": 0.85, "coarse_preprocessing": {"spacing": [6.25, 6.25]}}
    (folder / "card.json").write_text(json.dumps(card))
    info = catalogue.read_model(folder)
    assert info.describe().startswith("ldm with a coarse stage · ")
    assert ("Coarse stage: a flow model draws the whole field at 6.25 mm first; the latent model refines it from "
            "t = 0.85") in info.details().splitlines()
    for odd in ("odd", []):  # a hand-edited card still lists
        card["cascade"] = {"coarse_preprocessing": {"spacing": odd}}
        (folder / "card.json").write_text(json.dumps(card))
        assert "Coarse stage: a flow model draws the whole field first; the latent model refines it from t = ?" in (
            catalogue.read_model(folder).details())


def test_a_sharpened_decoder_is_named_in_the_tooltip_whichever_run_it_was(tmp_path):
    folder = checkpoint(tmp_path / "acdc-ldm", family="ldm", vendors=("Siemens",))
    card = json.loads((folder / "card.json").read_text())
    assert not any(line.startswith("Decoder") for line in catalogue.read_model(folder).details().splitlines())
    sharpened = {"steps": 3000, "arguments": {"stage": "decoder"}}
    for where in ("last", "earlier"):
        card["training"] = sharpened if where == "last" else {"steps": 5, "arguments": {}}
        card["starter"] = {"earlier_runs": [sharpened] if where == "earlier" else []}
        (folder / "card.json").write_text(json.dumps(card))
        assert "Decoder: sharpened against a discriminator (3000 steps), on the same latents" in (
            catalogue.read_model(folder).details().splitlines()), where
    del card["training"], card["starter"]  # a hand-made card without its training record still reads
    (folder / "card.json").write_text(json.dumps(card))
    assert not any(line.startswith("Decoder") for line in catalogue.read_model(folder).details().splitlines())


def test_data_without_a_license_and_unknown_data_say_so(tmp_path):
    named = checkpoint(tmp_path / "named", simulated=False)
    card = json.loads((named / "card.json").read_text())
    card["dataset"] = {"name": "Hospital cohort"}
    (named / "card.json").write_text(json.dumps(card))
    assert "trained on Hospital cohort (license not stated), 3 patients" in catalogue.read_model(named).describe()
    mine = catalogue.read_model(checkpoint(tmp_path / "mine", simulated=False))
    assert "· trained on 3 patients ·" in mine.describe() and "simulated" not in mine.describe()
    phantom = catalogue.read_model(checkpoint(tmp_path / "phantom"))
    assert phantom.details().splitlines()[0] == "Data: the built-in simulated phantom cohort (no real patient)"


def test_image_choosers_can_leave_out_the_anatomy_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRSYNTH_MODELS", str(tmp_path / "starters"))
    checkpoint(tmp_path / "starters" / "phantom-anatomy", family="anatomy")
    checkpoint(tmp_path / "starters" / "phantom-flow")
    assert [m.name for m in catalogue.list_models(tmp_path / "none")] == ["phantom-anatomy", "phantom-flow"]
    assert [m.name for m in catalogue.list_models(tmp_path / "none", families=("flow", "ddpm"))] == ["phantom-flow"]


def test_default_model_folder_is_outside_slicer_and_configurable(monkeypatch, tmp_path):
    monkeypatch.delenv("CMRSYNTH_MODEL_FOLDER", raising=False)
    assert catalogue.default_model_folder().parts[-2:] == (".cmrsynth", "models")
    monkeypatch.setenv("CMRSYNTH_MODEL_FOLDER", str(tmp_path))
    assert catalogue.default_model_folder() == tmp_path


def test_unreadable_cards_are_named(tmp_path):
    with pytest.raises(InputError, match="not a CMRSynth model folder"):
        catalogue.read_model(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(InputError, match="card.json: is not readable JSON"):
        catalogue.read_model(tmp_path)
    (tmp_path / "card.json").write_text("{}")
    with pytest.raises(InputError, match="no generator family"):
        catalogue.read_model(tmp_path)


def test_a_slice_level_model_shows_its_patient_level_epsilon(tmp_path):
    """Issue 12 item 11: the model list (and the scene's CMRSynth.epsilon attribute, which comes from it) shows the
    group-privacy ε per patient of a slice-level model (before: its per-slice ε, 0.5)."""
    folder = checkpoint(tmp_path / "slice-dp", epsilon=0.5)
    card = json.loads((folder / "card.json").read_text())
    card["privacy"].update(unit="slice", group_epsilon=12.0, group_delta=0.3)
    (folder / "card.json").write_text(json.dumps(card))
    info = catalogue.read_model(folder)
    assert (info.epsilon, info.delta) == (12.0, 0.3) and "DP ε = 12, δ = 3.0e-01" in info.describe()


def test_every_shipped_real_model_shows_its_spacing_assumption_and_pixel_size():
    """The tooltip reads the keys the shipped cards really have: dataset.spacing and preprocessing.spacing."""
    real = [m for m in catalogue.list_models("/nonexistent") if m.starter and not m.simulated]
    assert real and real[0].name == DEFAULT_MODEL
    for info in real:
        lines = info.details().splitlines()
        assert f"Spacing: {info.dataset['spacing']}" in lines and "assumed 1.5625 mm in-plane" in info.dataset["spacing"]
        pixel = info.card["preprocessing"]["spacing"]
        assert any(line.startswith(f"Pixel size: {pixel[0]:g} × {pixel[1]:g} mm in-plane") for line in lines)
