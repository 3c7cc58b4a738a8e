"""The main job end to end: ``cmrsynth demo --quick`` from the starter models to the receipt.

One run (a few minutes on one core) serves every assertion; a second call must reuse every stage.
"""

import json

import pytest

pytestmark = pytest.mark.slow

MODELS = ("flow", "ddpm", "flow-dp")
AXES = ("fidelity", "adherence", "utility", "membership", "memorisation")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from CMRSynthLib.cli import main

    out = tmp_path_factory.mktemp("demo")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CMRSYNTH_CACHE", str(cache))
        assert main(["demo", "--quick", "--device", "cpu", "--progress", "none", "--out", str(out)]) == 0
    return out


def test_report_carries_every_axis_for_every_model(demo):
    report = json.loads((demo / "report" / "report.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in report["models"]] == list(MODELS)
    for model in report["models"]:
        for axis in AXES:
            assert model[axis], f"{model['name']}: {axis} is empty"
        assert "attacks" in model["membership"], model["membership"]
        assert model["verdict"], model["name"]
    assert "privacy_utility" in report["figures"]


def test_dp_model_carries_an_exact_patient_level_ledger(demo):
    report = json.loads((demo / "report" / "report.json").read_text(encoding="utf-8"))
    ledgers = {m["name"]: m["privacy_ledger"] for m in report["models"]}
    assert ledgers["flow"] is None and ledgers["ddpm"] is None
    dp = ledgers["flow-dp"]
    assert dp["unit"] == "patient"
    assert 0 < dp["epsilon"] <= 10.0
    assert dp["delta"] == pytest.approx(1e-3)


def test_report_html_is_self_contained_with_figures(demo):
    html = (demo / "report" / "report.html").read_text(encoding="utf-8")
    assert html.count("<img") >= 4
    assert 'src="figures/' not in html and "http://" not in html.replace("http://www.w3.org", "")


def test_synthetic_cohort_restyles_and_new_anatomy(demo):
    synthetic = sorted((demo / "synthetic").rglob("*.nii.gz"))
    per_vendor = {v: [p for p in synthetic if p.parent.name == v] for v in ("Siemens", "Philips", "GE", "Canon")}
    assert all(len(files) >= 2 for files in per_vendor.values()), per_vendor
    assert any(p.parent.name == "new-anatomy" for p in synthetic)
    assert len(list((demo / "restyled").glob("*.nii.gz"))) == 3


def test_rerun_reuses_every_stage(demo, capsys):
    from CMRSynthLib.cli import main

    assert main(["demo", "--quick", "--device", "cpu", "--progress", "none", "--out", str(demo)]) == 0
    err = capsys.readouterr().err
    assert "[audit] done before" in err and "[train-flow-dp] done before" in err
