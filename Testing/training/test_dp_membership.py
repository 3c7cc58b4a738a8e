"""A DP checkpoint folder is shareable as it is: no patient id, fingerprint, loss curve or private intensity
statistic in it; they live in ``<folder>.PRIVATE-membership.json`` beside it, where the audit finds them."""

import json
import shutil
import stat

import pytest

from CMRSynthLib.audit.run import resolve_patients
from CMRSynthLib.data.cohorts import open_cohort
from CMRSynthLib.errors import InputError
from CMRSynthLib.training.loop import Trainer
from CMRSynthLib.training.membership import (SPLITS, known_splits, membership_path, patient_splits,
                                             read_membership)
from CMRSynthLib.training.privacy import DPConfig, DPTraining, init_privacy
from training_fixtures import PATIENTS, SHAPE, phantom, train_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def dp_run(data, out, **overrides):
    privacy = DPTraining(DPConfig(delta=1e-2, max_grad_norm=1.0, noise_multiplier=1.0))
    Trainer(train_config(data, out, max_steps=3, batch_size=2, **overrides), privacy=privacy).run()
    return json.loads((out / "card.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dp_model(phantom, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("dp") / "model"
    return out, dp_run(phantom, out)


def test_no_file_in_a_dp_checkpoint_folder_names_a_patient(dp_model, phantom):  # noqa: F811
    out, card = dp_model
    patients = open_cohort(phantom).patients()
    assert len(patients) == PATIENTS
    for path in out.iterdir():
        text = path.read_bytes().decode("latin-1")
        assert not [p for p in patients if p in text], path.name
    assert not set(SPLITS) & set(card) and "sha256" not in card["data"] and card["data"]["simulated"] is True
    assert card["intensity"] is None  # statistics of the private images are not released without DP
    assert card["training"]["loss_curve"] is None and card["training"]["final_loss"] is None
    assert membership_path(out).name in card["membership"]


def test_the_membership_file_beside_the_folder_gives_the_audit_its_patients(dp_model, phantom):  # noqa: F811
    out, card = dp_model
    path = membership_path(out)
    assert path.parent == out.parent and stat.S_IMODE(path.stat().st_mode) == 0o600
    record = read_membership(out)
    assert len(record["members"]) == card["privacy"]["patients"] and record["data"]["patients"] == PATIENTS
    assert record["step"] == 3 and len(record["loss_curve"]) >= 1
    splits = patient_splits(card, out)
    assert splits["members"] == record["members"] and splits["holdout"] == record["holdout"]
    warnings = []
    members, holdout = resolve_patients(splits, open_cohort(phantom), warnings=warnings)
    assert members == sorted(record["members"]) and holdout == sorted(record["holdout"]) and not warnings


def test_a_copy_without_its_membership_file_still_loads_and_composes_on_the_safe_side(dp_model, phantom,  # noqa: F811
                                                                                    tmp_path):
    from CMRSynthLib.training.checkpoint import load_checkpoint

    out, card = dp_model
    copy = tmp_path / "shared"
    shutil.copytree(out, copy)
    generator, loaded = load_checkpoint(copy)
    assert loaded["model_id"] == card["model_id"] and patient_splits(loaded, copy)["members"] == []
    composed = init_privacy(str(copy), str(phantom), unit="patient")
    assert composed.spent == tuple(map(tuple, card["privacy"]["history"])) and composed.composed == (card["model_id"],)
    assert init_privacy(str(out), str(phantom), unit="patient").spent  # the original: same data, composed
    # what needs the members (reid, the privacy benchmarks) names the missing file instead of failing later
    with pytest.raises(InputError, match=r"shared\.PRIVATE-membership\.json beside the folder") as refused:
        known_splits(loaded, copy)
    assert str(copy) in str(refused.value)
    assert known_splits(card, out)["members"] == read_membership(out)["members"]


def test_a_dp_fine_tune_keeps_its_public_models_intensity_record(phantom, tmp_path):  # noqa: F811
    from CMRSynthLib.data.phantom import write_phantom_cohort

    public = write_phantom_cohort(tmp_path / "public", PATIENTS, seed=101, shape=SHAPE)
    Trainer(train_config(public, tmp_path / "public-model", max_steps=2)).run()
    public_card = json.loads((tmp_path / "public-model" / "card.json").read_text(encoding="utf-8"))
    card = dp_run(phantom, tmp_path / "dp", init=str(tmp_path / "public-model"), preset=None, image_size=None)
    assert public_card["intensity"] and card["intensity"] == public_card["intensity"]


def test_old_and_non_dp_cards_keep_their_inline_lists(tmp_path):
    card = {"members": ["a", "b"], "holdout": ["c"], "data": {"sha256": "x", "patients": 3}}
    assert patient_splits(card, tmp_path / "m") == {"members": ["a", "b"], "validation": [], "holdout": ["c"],
                                                   "unused": []}
    assert patient_splits({}, tmp_path / "m") == {name: [] for name in SPLITS}


def test_a_dp_folder_holds_no_value_derived_from_the_private_data(dp_model, phantom):  # noqa: F811
    """Issue 12 item 5: every value computed from the private patients outside DP-SGD is looked for in every file
    of the folder: ids, fingerprint, loss curve, and the vendor vocabulary (before: the members' own vendors,
    so a rare vendor outed its patient). The patient count (in the ledger's sampling rate) is declared public."""
    from CMRSynthLib.training.loop import PUBLIC_VENDORS

    out, card = dp_model
    record = read_membership(out)
    member_vendors = sorted({r.vendor for r in open_cohort(phantom).records if r.patient in record["members"]})
    assert card["vocabulary"]["vendors"] == list(PUBLIC_VENDORS) != member_vendors
    secrets = [*open_cohort(phantom).patients(), record["data"]["sha256"],
               *(repr(loss) for _, loss in record["loss_curve"])]
    for path in out.iterdir():
        text = path.read_bytes().decode("latin-1")
        assert not [value for value in secrets if value in text], path.name


def test_a_dp_run_takes_its_vocabulary_and_depth_from_arguments(phantom, tmp_path):  # noqa: F811
    """Issue 12 item 5: --vendors decides a DP model's vendors; a 3D DP run from scratch must give --depth (the
    deepest stack of the private patients would otherwise be published)."""
    card = dp_run(phantom, tmp_path / "named", vendors=("GE", "Siemens", "Philips", "Canon", "Hitachi"))
    assert card["vocabulary"]["vendors"] == ["GE", "Siemens", "Philips", "Canon", "Hitachi"]
    with pytest.raises(InputError, match="--depth"):
        dp_run(phantom, tmp_path / "3d", spatial_dims=3)


def test_the_patients_of_a_lineage_are_known_only_when_every_model_names_its_own(tmp_path):
    """What the real demo asks before a DP fine-tune of the starter: whom did the starter's lineage train on?"""
    from CMRSynthLib.training.membership import lineage_patients, write_membership

    folder = tmp_path / "model"
    card = {"model_id": "m2", "privacy": None, "members": ["a", "b"],
            "lineage": [{"model_id": "m1", "privacy": None, "members": ["c"]},
                        {"model_id": "m0", "privacy": {"epsilon": 1.0}}]}
    assert lineage_patients(card, folder) is None  # m0 (DP) names its patients only in a private record
    write_membership(folder, {"lineage": [{"model_id": "m1", "members": ["c"]}, {"model_id": "m0", "members": ["d"]}]})
    assert lineage_patients(card, folder) == {"a", "b", "c", "d"}
    old = {"model_id": "x", "privacy": None, "members": ["a"], "training": {"init": "y"}}  # before lineage records
    assert lineage_patients(old, tmp_path / "old") is None
