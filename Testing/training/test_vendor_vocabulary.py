"""A fine-tune on patients of a vendor its model does not know (a hospital's Philips cohort on a one-vendor
model): the vendor trains the null token with a warning, the vocabulary and the card stay as they were, and
sampling still refuses the vendor the model never learnt."""

import json

import pytest

from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.training.loop import Trainer
from training_fixtures import PATIENTS, SHAPE, phantom, train_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(scope="module")
def siemens_model(tmp_path_factory):
    """A tiny flow that knows one vendor, pre-trained on other patients than :func:`phantom`'s."""
    from CMRSynthLib.data.phantom import write_phantom_cohort

    root = tmp_path_factory.mktemp("public")
    data = write_phantom_cohort(root / "cohort", PATIENTS, seed=102, shape=SHAPE)
    Trainer(train_config(data, root / "model", max_steps=2, vendors=("Siemens",))).run()
    return root / "model"


def test_a_dp_fine_tune_on_unknown_vendors_trains_the_null_token_with_a_warning(siemens_model, phantom, tmp_path,
                                                                                run_cli):  # noqa: F811
    out = tmp_path / "dp"
    code, stdout, err = run_cli("train", "--data", phantom, "--out", out, "--init", siemens_model,
                                "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--dp", "--delta", "1e-2",
                                "--max-grad-norm", "1.0", "--noise-multiplier", "1.0", "--progress", "jsonl")
    assert code == 0, err
    warnings = [e["message"] for e in map(json.loads, stdout.splitlines()) if e["event"] == "warning"]
    others = sorted({r.vendor for r in open_cohort(phantom).records} - {"Siemens"})
    assert any(all(v in w for v in others) and "null" in w for w in warnings), warnings
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    init = json.loads((siemens_model / "card.json").read_text(encoding="utf-8"))
    # the card names no vendor of the private cohort: the init's vocabulary and intensity record, unchanged
    assert card["vocabulary"] == init["vocabulary"] and card["intensity"] == init["intensity"]
    code, _, err = run_cli("sample", "--model", out, "--mask", open_cohort(phantom).records[0].label_path,
                           "--out", tmp_path / "images", "--vendor", "Philips", "--device", "cpu")
    assert code == 2 and "Philips" in err and "Siemens" in err
