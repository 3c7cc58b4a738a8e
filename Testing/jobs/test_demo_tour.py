"""``cmrsynth demo --tour`` (what ``make demo`` runs): the default real model's hearts around held-out phantom
masks with their picture, a planned DP fine-tune with its ε, and the receipt of that DP model, in minutes."""

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    from CMRSynthLib.cli import main

    out = tmp_path_factory.mktemp("tour")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CMRSYNTH_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["demo", "--tour", "--device", "cpu", "--progress", "none", "--out", str(out)]) == 0
    return out


def test_the_default_real_model_draws_around_held_out_masks_with_a_picture(tour):
    import SimpleITK as sitk

    from CMRSynthLib.data.volume import read_volume
    from CMRSynthLib.training.checkpoint import read_card, resolve_model

    default = read_card(resolve_model("acdc-ldm"))["model_id"]
    masks = sorted((tour / "heldout-masks").iterdir())
    images = sorted((tour / "default-model").glob("*.nii.gz"))
    assert len(masks) == len(images) == 2
    for mask, image in zip(masks, images):
        assert f"model={default}" in sitk.ReadImage(str(image)).GetMetaData("descrip")
        synthetic = read_volume(image).array
        assert synthetic.shape == read_volume(mask).array.shape and synthetic.std() > 0
    picture = tour / "default-model.png"
    assert picture.stat().st_size > 20_000 and picture.read_bytes()[:4] == b"\x89PNG"


def test_the_dp_model_was_planned_and_spent_at_most_its_budget(tour):
    from CMRSynthLib.training.checkpoint import read_card, resolve_model

    card = json.loads((tour / "models" / "flow-dp" / "card.json").read_text(encoding="utf-8"))
    ledger = card["privacy"]
    assert ledger["unit"] == "patient" and 0 < ledger["epsilon"] <= 10 and ledger["delta"] == 1e-3
    public = read_card(resolve_model("phantom-tiny-flow"))["model_id"]
    assert card["lineage"][0]["model_id"] == ledger["init_model"] == public and ledger["composed_from"] == []


def test_the_receipt_audits_the_dp_model_on_every_axis(tour):
    report = json.loads((tour / "report" / "report.json").read_text(encoding="utf-8"))
    [model] = report["models"]
    assert model["name"] == "flow-dp" and model["privacy_ledger"]["epsilon"] <= 10
    for axis in ("fidelity", "adherence", "utility", "membership", "memorisation"):
        assert model[axis], axis
    assert "control" in model["membership"]  # read against the non-member control, even when too few to call


def test_the_tour_and_the_quick_walk_are_not_mixed(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--tour", "--quick", "--out", tmp_path / "x")
    assert code == 2 and "--tour and --quick" in err and not (tmp_path / "x").exists()
