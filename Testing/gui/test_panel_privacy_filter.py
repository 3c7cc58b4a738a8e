"""The Generate tab's privacy filter checkbox: offered when the model has a re-identification model beside it, on
by default for a model without DP, off (but offered, saying why) for any DP model, and passed to ``cmrsynth sample``."""

import json
import shutil

from CMRSynthLib.gui.panel import GenerateTab
from CMRSynthLib.gui.qt import read
from CMRSynthLib.gui.widgets import JobContext
from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures


def test_privacy_filter_checkbox_follows_the_model(tiny_flow, tmp_path):  # noqa: F811
    folder = tmp_path / "models"
    plain, dp = folder / "plain", folder / "private"
    shutil.copytree(tiny_flow, plain)
    shutil.copytree(tiny_flow, dp)
    card = json.loads((dp / "card.json").read_text(encoding="utf-8"))
    card["privacy"] = {"epsilon": 8.0, "delta": 1e-3}
    (dp / "card.json").write_text(json.dumps(card), encoding="utf-8")
    tab = GenerateTab(JobContext(model_folder=lambda: str(folder)))

    def choose(path):
        tab.model.combo.setCurrentIndex(tab.model.combo.findData(str(path)))
        return read(tab.privacy_filter, "enabled"), read(tab.privacy_filter, "checked")

    assert choose(plain) == (False, False)  # no re-identification model: nothing to filter with
    assert "cmrsynth reid" in tab.privacy_filter.toolTip()
    for model in (plain, dp):
        model.with_name(model.name + ".PRIVATE-reid").mkdir()
    tab.model.refresh(select=str(dp))
    assert choose(plain) == (True, True)  # without DP: on by default
    tab.mask.set_path(str(tmp_path / "mask.nii.gz"))
    assert "--privacy-filter" in tab.settings().arguments()
    assert choose(dp) == (True, False)  # a DP model: offered, off by default
    assert "--privacy-filter" not in tab.settings().arguments()


def test_the_filter_is_off_for_every_dp_model_and_says_what_it_does_to_its_guarantee(tiny_flow, tmp_path):  # noqa: F811
    """A card with a privacy ledger is a DP model even when the panel has no patient-level ε to show (a slice-level
    run without its group-privacy ε): the filter stays off, and its text and tooltip say why."""
    from CMRSynthLib.reid import DP_NOTE

    folder = tmp_path / "models"
    dp = folder / "slice-level"
    shutil.copytree(tiny_flow, dp)
    card = json.loads((dp / "card.json").read_text(encoding="utf-8"))
    card["privacy"] = {"epsilon": 2.0, "delta": 1e-5, "unit": "slice"}
    (dp / "card.json").write_text(json.dumps(card), encoding="utf-8")
    dp.with_name(dp.name + ".PRIVATE-reid").mkdir()
    tab = GenerateTab(JobContext(model_folder=lambda: str(folder)))
    tab.model.combo.setCurrentIndex(tab.model.combo.findData(str(dp)))
    assert tab.model.info().epsilon is None  # nothing to show as ε, yet trained with DP
    assert read(tab.privacy_filter, "enabled") and not read(tab.privacy_filter, "checked")
    assert "no longer be covered by this DP model's ε alone" in tab.privacy_filter.text()
    assert DP_NOTE in tab.privacy_filter.toolTip() and "private log" in tab.privacy_filter.toolTip()
