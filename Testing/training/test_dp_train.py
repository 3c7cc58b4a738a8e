"""``cmrsynth train --dp`` end to end on the tiny phantom cohort: a public pre-train, a DP fine-tune whose card
carries a complete ledger, a composed second fine-tune, the budget stop, exact resume, and the refusals."""

import json
from dataclasses import fields

import pytest
import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training.ledger import Ledger, recompute_epsilon
from CMRSynthLib.training.loop import Trainer
from CMRSynthLib.training.membership import read_membership
from CMRSynthLib.training.privacy import DPConfig, DPTraining
from CMRSynthLib.training.privacy_planner import epsilon_of
from training_fixtures import PATIENTS, SHAPE, phantom, run_stopped_at_step, tiny_flow, train_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
COMMON = ["--generator", "flow", "--batch-size", "2", "--lr", "2e-3", "--device", "cpu", "--seed", "3"]
DP = ["--dp", "--delta", "1e-2", "--max-grad-norm", "1.0"]


def card_of(path):
    return json.loads((path / "card.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def public_model(tmp_path_factory):
    """A tiny flow pre-trained (without DP) on a different, public phantom cohort."""
    from CMRSynthLib.data.phantom import write_phantom_cohort

    root = tmp_path_factory.mktemp("public")
    data = write_phantom_cohort(root / "cohort", PATIENTS, seed=101, shape=SHAPE)
    Trainer(train_config(data, root / "model", max_steps=4, vendors=("Siemens", "Philips", "GE", "Canon"))).run()
    return root / "model"


@pytest.fixture(scope="module")
def dp_model(public_model, phantom, tmp_path_factory):  # noqa: F811
    """A DP fine-tune of :func:`public_model` on the private phantom cohort, through the command line."""
    from CMRSynthLib.cli import main

    out = tmp_path_factory.mktemp("dp") / "model"
    code = main(["train", "--data", str(phantom), "--out", str(out), "--init", str(public_model), "--max-steps", "5",
                 *COMMON, *DP, "--noise-multiplier", "0.8", "--epsilon", "30", "--noise-multiplicity", "2",
                 "--progress", "none"])
    assert code == 0
    return out


def test_dp_fine_tune_card_has_a_complete_ledger(dp_model, public_model):
    card = card_of(dp_model)
    ledger = Ledger.from_dict(card["privacy"])
    assert set(card["privacy"]) == {f.name for f in fields(Ledger)}
    assert ledger.mechanism == "DP-SGD (Opacus)" and ledger.accountant == "rdp" and ledger.unit == "patient"
    assert ledger.patients == len(read_membership(dp_model)["members"]) and ledger.sample_rate == 2 / ledger.patients
    assert ledger.delta == 1e-2 and ledger.max_grad_norm == 1.0 and ledger.target_epsilon == 30
    assert ledger.noise_multiplier == 0.8
    assert ledger.noise_multiplicity == 2 and ledger.slices_per_patient == 1
    assert ledger.init_model == card_of(public_model)["model_id"] and ledger.composed_from == ()
    assert ledger.run_steps == ledger.steps and ledger.own_history() == ledger.history
    # a draw with no patient is a noise-only step, counted alike by the trainer and the accountant
    assert ledger.steps == 5 == card["training"]["steps"]
    assert ledger.history == ((ledger.noise_multiplier, ledger.sample_rate, ledger.steps),)
    assert 0 < ledger.epsilon == recompute_epsilon(ledger) <= 30


def test_progress_reports_epsilon(public_model, phantom, tmp_path, run_cli):  # noqa: F811
    code, out, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", "--init", public_model,
                             "--max-steps", "2", *COMMON, *DP, "--noise-multiplier", "1.0", "--progress", "jsonl")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    epsilons = [e["epsilon"] for e in events if e["event"] == "progress"]
    assert epsilons and epsilons == sorted(epsilons) and epsilons[-1] == card_of(tmp_path / "m")["privacy"]["epsilon"]


def test_slice_level_dp_reports_the_group_privacy_of_a_patient(public_model, phantom, tmp_path, run_cli):  # noqa: F811
    code, out, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", "--init", public_model,
                             "--max-steps", "2", *COMMON, *DP, "--delta", "1e-3", "--noise-multiplier", "2.0",
                             "--slice-level", "--progress", "none")
    assert code == 0, err
    ledger = Ledger.from_dict(card_of(tmp_path / "m")["privacy"])
    assert ledger.unit == "slice" and ledger.max_slices_per_patient >= 2
    assert ledger.sample_rate < 2 / ledger.patients  # q is over slices, not patients
    assert ledger.group_epsilon == ledger.max_slices_per_patient * ledger.epsilon


def test_a_dp_fine_tune_of_a_dp_model_on_the_same_data_composes(dp_model, phantom, tmp_path, run_cli):  # noqa: F811
    first = Ledger.from_dict(card_of(dp_model)["privacy"])
    code, out, err = run_cli("train", "--data", phantom, "--out", tmp_path / "again", "--init", dp_model,
                             "--max-steps", "3", *COMMON, *DP, "--epsilon", str(first.epsilon + 10),
                             "--progress", "none")
    assert code == 0, err
    second = Ledger.from_dict(card_of(tmp_path / "again")["privacy"])
    assert second.composed_from == (card_of(dp_model)["model_id"],)
    assert second.history[0] == first.history[0] and second.steps > first.steps
    assert first.epsilon < second.epsilon == recompute_epsilon(second) <= first.epsilon + 10


def test_a_run_by_epochs_spends_what_the_planner_predicted(public_model, phantom, tmp_path, run_cli):  # noqa: F811
    """Privacy integrity II item 4: a draw with no patient is a step for the accountant, and was not one for the
    trainer, so a run of E epochs took extra noise-only steps and its card's ε exceeded `privacy-budget`'s for the
    same arguments (6.39 against 4.90 in one reproduction). At q = 1/m about a third of the draws are empty."""
    from CMRSynthLib.training.privacy_planner import plan_epsilon

    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", "--init", public_model,
                           "--epochs", "3", *COMMON, "--batch-size", "1", *DP, "--noise-multiplier", "1.3",
                           "--progress", "none")
    assert code == 0, err
    card = card_of(tmp_path / "m")
    ledger = Ledger.from_dict(card["privacy"])
    plan = plan_epsilon(ledger.patients, 1, 3, 1.3, 1e-2)
    assert ledger.steps == plan.steps == card["training"]["steps"] == 3 * ledger.patients
    assert card["training"]["epochs"] == pytest.approx(3)  # steps · q, not steps / round(1/q)
    assert ledger.epsilon == pytest.approx(plan.epsilon, rel=1e-12)


def _cohort(tmp_path, patients, seed):
    from CMRSynthLib.data.phantom import write_phantom_cohort

    return write_phantom_cohort(tmp_path / f"cohort-{patients}-{seed}", patients, seed=seed, shape=SHAPE)


def test_a_non_dp_init_that_saw_some_of_the_patients_is_refused(tiny_flow, tmp_path, run_cli):  # noqa: F811
    """Issue 12 item 3: one added patient made the cohort's hash differ, and a model trained WITHOUT DP on the
    other patients passed as public (before: exit 0)."""
    superset = _cohort(tmp_path, PATIENTS + 1, 0)
    members = len(card_of(tiny_flow)["members"])
    code, _, err = run_cli("train", "--data", superset, "--out", tmp_path / "m", "--init", tiny_flow, *COMMON,
                           "--max-steps", "1", *DP, "--noise-multiplier", "1.0")
    assert code == 2 and f"on {members} of the patients in --data" in err
    assert not (tmp_path / "m").exists()


def test_a_dp_init_composes_on_overlapping_patients_and_states_its_guarantee_on_disjoint_ones(
        dp_model, tmp_path, run_cli):
    """Issue 12 item 3: overlap decides, not a hash of the cohort (before: a superset dropped the spent budget,
    and a disjoint fine-tune did not state the init's own guarantee)."""
    first = Ledger.from_dict(card_of(dp_model)["privacy"])
    for name, data in (("superset", _cohort(tmp_path, PATIENTS + 1, 0)), ("disjoint", _cohort(tmp_path, 4, 5))):
        code, _, err = run_cli("train", "--data", data, "--out", tmp_path / name, "--init", dp_model, *COMMON,
                               "--max-steps", "1", *DP, "--noise-multiplier", "1.0", "--progress", "none")
        assert code == 0, err
    superset = Ledger.from_dict(card_of(tmp_path / "superset")["privacy"])
    assert superset.composed_from == (card_of(dp_model)["model_id"],) and superset.history[0] == first.history[0]
    assert superset.epsilon > first.epsilon
    disjoint = card_of(tmp_path / "disjoint")
    ledger = Ledger.from_dict(disjoint["privacy"])
    assert ledger.composed_from == () and ledger.history[0][0] == 1.0 and len(ledger.history) == 1
    # the init's own guarantee, for its own patients, is stated in the lineage
    assert disjoint["lineage"][0]["model_id"] == card_of(dp_model)["model_id"]
    assert disjoint["lineage"][0]["privacy"]["epsilon"] == first.epsilon


def test_a_slice_level_history_is_not_composed_into_a_patient_level_ledger(dp_model, phantom, tmp_path,  # noqa: F811
                                                                          run_cli):
    """Issue 12 item 4 (before: the slice-level history was composed as if it were patient-level: exit 0)."""
    import shutil

    from CMRSynthLib.training.membership import membership_path

    slice_level = tmp_path / "slice-model"
    shutil.copytree(dp_model, slice_level)
    shutil.copy(membership_path(dp_model), membership_path(slice_level))
    card = card_of(slice_level)
    card["privacy"].update(unit="slice", max_slices_per_patient=4, group_epsilon=1.0, group_delta=0.5)
    (slice_level / "card.json").write_text(json.dumps(card), encoding="utf-8")
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", "--init", slice_level, *COMMON,
                           "--max-steps", "1", *DP, "--noise-multiplier", "1.0")
    assert code == 2 and "slice-level ledger" in err and "cannot be composed" in err


def test_training_stops_cleanly_at_the_budget(public_model, phantom, tmp_path, run_cli):  # noqa: F811
    members = len(card_of(public_model)["members"])  # same split sizes: same number of member patients
    target = epsilon_of([(1.0, 2 / members, 3)], delta=1e-2, accountant="rdp") + 1e-9
    code, out, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", "--init", public_model,
                             "--max-steps", "40", *COMMON, *DP, "--noise-multiplier", "1.0", "--epsilon", str(target))
    assert code == 0, err
    assert "privacy budget is spent" in err
    card = card_of(tmp_path / "m")
    assert card["privacy"]["steps"] == 3 and card["training"]["steps"] <= 3
    assert card["privacy"]["epsilon"] <= target


def test_a_resumed_dp_run_continues_its_ledger(phantom, tmp_path):  # noqa: F811
    """ε is exact across a resume: the resumed run's history continues the saved one (its noise is fresh)."""
    def run(out, **overrides):
        privacy = DPTraining(DPConfig(delta=1e-2, max_grad_norm=1.0, noise_multiplier=1.2))
        return Trainer(train_config(phantom, out, max_steps=4, batch_size=2, **overrides), privacy=privacy)

    run_stopped_at_step(run(tmp_path / "parts", save_every=2), 3)
    saved = Ledger.from_dict(card_of(tmp_path / "parts")["privacy"])
    assert card_of(tmp_path / "parts")["training"]["steps"] == 2 and saved.steps >= 2
    assert run(tmp_path / "parts", save_every=2).run().resumed_from == 2
    final = Ledger.from_dict(card_of(tmp_path / "parts")["privacy"])
    assert final.history == ((1.2, saved.sample_rate, final.steps),) and final.steps >= saved.steps + 2
    assert final.epsilon == recompute_epsilon(final) > saved.epsilon
    assert len(read_membership(tmp_path / "parts")["loss_curve"]) >= 2  # the private loss curve is continued too


def test_two_dp_runs_with_the_same_seed_draw_different_noise(public_model, phantom, tmp_path, run_cli):  # noqa: F811
    """Issue 12 item 1: --seed, written in the card, must not reproduce the DP noise or the patient sampling
    (before: two runs with the same arguments gave the same weights, bit for bit)."""
    for name in ("a", "b"):
        code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / name, "--init", public_model,
                               "--max-steps", "2", *COMMON, *DP, "--noise-multiplier", "1.0", "--progress", "none")
        assert code == 0, err
    a, b = ckpt.read_checkpoint(tmp_path / "a"), ckpt.read_checkpoint(tmp_path / "b")
    assert a.card["training"]["seed"] == b.card["training"]["seed"] == 3
    assert any(not torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    state = json.loads((tmp_path / "a" / "trainer_state.json").read_text(encoding="utf-8"))
    assert set(state["privacy"]) == {"history", "run_steps", "noise_multiplier"}  # no generator state is kept


def test_fp16_is_refused_with_dp(phantom, tmp_path):  # noqa: F811
    """Issue 12 item 6: GradScaler's data-dependent skips are not accounted (before: the CUDA check came first)."""
    privacy = DPTraining(DPConfig(delta=1e-2, max_grad_norm=1.0, noise_multiplier=1.0))
    with pytest.raises(InputError, match="fp16 cannot be used with --dp"):
        Trainer(train_config(phantom, tmp_path / "m", precision="fp16"), privacy=privacy).run()


@pytest.mark.parametrize("arguments, message", [
    (["--epsilon", "4"], "only apply with --dp"),
    (["--dp", "--epsilon", "4", "--max-grad-norm", "1"], "--delta"),
    ([*DP], "--epsilon"),
    ([*DP, "--epsilon", "4", "--max-grad-norm", "0"], "--max-grad-norm"),
    ([*DP, "--epsilon", "1e-3", "--delta", "1e-5"], "cannot be reached"),
    (["--dp", "--delta", "0.5", "--max-grad-norm", "1", "--epsilon", "4"], "--delta"),
    ([*DP, "--epsilon", "4", "--batch-size", "50"], "--batch-size"),
])
def test_bad_dp_arguments_exit_2(phantom, tmp_path, run_cli, arguments, message):  # noqa: F811
    code, out, err = run_cli("train", "--data", phantom, "--out", tmp_path / "m", *COMMON, "--preset", "tiny",
                             "--image-size", "32", "--max-steps", "2", *arguments)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_refusals_that_protect_the_guarantee(phantom, tiny_flow, tmp_path, run_cli):  # noqa: F811
    members = len(card_of(tiny_flow)["members"])
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "a", "--init", tiny_flow, *COMMON,
                           "--max-steps", "2", *DP, "--epsilon", "8")
    assert code == 2 and f"WITHOUT differential privacy on {members} of the patients" in err
    code, _, err = run_cli("train", "--data", phantom, "--out", tmp_path / "b", "--generator", "ldm", "--max-steps",
                           "2", *DP, "--epsilon", "8")
    assert code == 2 and "--init" in err and "autoencoder" in err


def test_whole_field_dp_training_moves_its_tiles_from_epoch_to_epoch(phantom, tmp_path, monkeypatch):  # noqa: F811
    """Privacy integrity II (minor): the DP loader has no sampler of ours, so the dataset's epoch stayed 0 and a
    slice always gave the same tile (before: one epoch value seen over three epochs)."""
    from CMRSynthLib.data.datasets import SliceDataset

    seen, original = set(), SliceDataset.__getitem__

    def recorded(self, index):
        seen.add(self.epoch)
        return original(self, index)

    monkeypatch.setattr(SliceDataset, "__getitem__", recorded)
    privacy = DPTraining(DPConfig(delta=1e-2, max_grad_norm=1.0, noise_multiplier=1.0))
    trainer = Trainer(train_config(phantom, tmp_path / "m", field_of_view="whole", batch_size=2, epochs=3,
                                   max_steps=None), privacy=privacy)
    trainer.run()
    assert len(seen) >= 2


def _dp_fine_tune(run_cli, init, data, out, *extra):
    return run_cli("train", "--data", data, "--out", out, "--init", init, *COMMON, "--max-steps", "2", *DP,
                   "--noise-multiplier", "1.0", "--progress", "none", *extra)


def test_a_dp_fine_tune_refuses_patients_a_non_dp_ancestor_saw(tmp_path, run_cli):
    """Privacy integrity II item 1: A trained without DP on P0; B = DP fine-tune of A on P1 (accepted); C = DP
    fine-tune of B on P0 was accepted and stated an ε for P0, though A saw P0 without DP (before: exit 0)."""
    p0, p1 = _cohort(tmp_path, 4, 11), _cohort(tmp_path, 4, 12)
    code, _, err = run_cli("train", "--data", p0, "--out", tmp_path / "A", *COMMON, "--preset", "tiny",
                           "--image-size", "32", "--spacing", "5", "--max-steps", "2", "--progress", "none")
    assert code == 0, err
    code, _, err = _dp_fine_tune(run_cli, tmp_path / "A", p1, tmp_path / "B")
    assert code == 0, err
    a, b = card_of(tmp_path / "A"), card_of(tmp_path / "B")
    assert read_membership(tmp_path / "A")["paths"]["data"] == str(p0) and str(p0) not in json.dumps(a)
    assert [entry["model_id"] for entry in b["lineage"]] == [a["model_id"]] and b["lineage"][0]["privacy"] is None
    assert "members" not in b["lineage"][0]  # a DP card names no patient, not even its public ancestors'
    code, _, err = _dp_fine_tune(run_cli, tmp_path / "B", p0, tmp_path / "C")
    assert code == 2 and f"ancestor {a['model_id']} was trained WITHOUT differential privacy" in err
    assert not (tmp_path / "C").exists()


def test_a_dp_fine_tune_composes_the_spend_of_every_ancestor_on_its_patients(public_model, tmp_path, run_cli):
    """Privacy integrity II item 1: B (DP on P1) → D (DP on P0) → E (DP on P1): E's ledger held only its own run,
    dropping B's spend on P1 (before: composed_from None and one history entry)."""
    p0, p1 = _cohort(tmp_path, 4, 21), _cohort(tmp_path, 4, 22)
    for init, data, name in ((public_model, p1, "B"), (tmp_path / "B", p0, "D"), (tmp_path / "D", p1, "E")):
        code, _, err = _dp_fine_tune(run_cli, init, data, tmp_path / name)
        assert code == 0, err
    b, d, e = (card_of(tmp_path / name) for name in "BDE")
    ledger_b, ledger_e = Ledger.from_dict(b["privacy"]), Ledger.from_dict(e["privacy"])
    assert ledger_e.composed_from == (b["model_id"],)  # D saw only P0: its guarantee is its own
    assert ledger_e.steps == ledger_b.run_steps + ledger_e.run_steps and ledger_e.run_steps == 2
    own = [*ledger_b.own_history(), (1.0, ledger_e.sample_rate, 2)]
    assert ledger_e.epsilon == recompute_epsilon(ledger_e) == epsilon_of(own, delta=1e-2, accountant="rdp")
    assert ledger_e.epsilon > epsilon_of([own[-1]], delta=1e-2, accountant="rdp")
    assert [entry["model_id"] for entry in e["lineage"]] == [d["model_id"], b["model_id"],
                                                              card_of(public_model)["model_id"]]
    assert e["lineage"][0]["privacy"] == d["privacy"] and e["lineage"][1]["privacy"] == b["privacy"]
    assert e["lineage"][2]["privacy"] is None and not {"members"} & set(e["lineage"][2])


def test_a_shareable_card_names_folders_and_does_not_locate_them(dp_model, public_model):
    """Privacy integrity II (minor): the card held the training machine's paths (--init, --data, the command)."""
    card = card_of(dp_model)
    text = json.dumps(card)
    assert str(dp_model.parent) not in text and str(public_model.parent) not in text
    assert card["training"]["arguments"]["init"] == public_model.name
    assert card["training"]["command"][0] == "cmrsynth" or "/" not in card["training"]["command"][0]
    private = read_membership(dp_model)
    assert private["paths"]["init"] == str(public_model)


def test_a_run_resumes_only_with_the_same_data_and_init_not_merely_their_names(phantom, tmp_path):  # noqa: F811
    """Review of this issue's change: the identity names folders, so an --init (or a cohort) of the same folder name
    resumed another's run, and the card named the wrong lineage (before: resumed)."""
    from CMRSynthLib.errors import InputError

    inits = []
    for place, seed in (("a", 1), ("b", 2)):
        Trainer(train_config(phantom, tmp_path / place / "model", max_steps=1, seed=seed)).run()
        inits.append(tmp_path / place / "model")
    run = tmp_path / "run"
    run_stopped_at_step(Trainer(train_config(phantom, run, max_steps=4, save_every=1, init=str(inits[0]))), 3)
    with pytest.raises(InputError, match="other arguments.*sources"):
        Trainer(train_config(phantom, run, max_steps=4, save_every=1, init=str(inits[1]))).run()
    assert Trainer(train_config(phantom, run, max_steps=4, save_every=1, init=str(inits[0]))).run().steps == 4
