"""The training loop with the real tiny flow generator on a tiny phantom cohort."""

import json

import numpy as np
import pytest
import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training.loop import Trainer, lr_at
from training_fixtures import phantom, run_stopped_at_step, train_config  # noqa: F401 - fixture


def card_of(path):
    return json.loads((path / "card.json").read_text(encoding="utf-8"))


def test_loss_goes_down_and_card_records_the_run(phantom, tmp_path):  # noqa: F811
    result = Trainer(train_config(phantom, tmp_path / "run", max_steps=40, lr_schedule="constant")).run()
    card = card_of(tmp_path / "run")
    curve = [loss for _, loss in card["training"]["loss_curve"]]
    assert result.steps == 40 and card["training"]["steps"] == 40 and len(curve) == 40
    assert np.mean(curve[-10:]) < 0.6 * np.mean(curve[:10])
    everyone = set(card["members"]) | set(card["validation"]) | set(card["holdout"]) | set(card["unused"])
    assert everyone == {f"phantom{i:03d}" for i in range(6)} and not set(card["members"]) & set(card["holdout"])
    assert card["data"]["patients"] == 6 and card["data"]["simulated"] is True
    assert "phantom0" not in json.dumps(card["data"])  # the fingerprint holds no patient id
    assert card["preprocessing"]["size"] == [32, 32] and card["privacy"] is None
    assert card["training"]["versions"]["torch"] == torch.__version__
    assert set(card["intensity"]) >= {"*"} and all(lo < hi for lo, hi in card["intensity"].values())


def test_resume_ends_identical_to_an_uninterrupted_run(phantom, tmp_path):  # noqa: F811
    Trainer(train_config(phantom, tmp_path / "whole", max_steps=9)).run()
    run_stopped_at_step(Trainer(train_config(phantom, tmp_path / "parts", max_steps=9, save_every=4)), 7)
    state = json.loads((tmp_path / "parts" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["step"] == 4 and not state["finished"]
    resumed = Trainer(train_config(phantom, tmp_path / "parts", max_steps=9, save_every=4)).run()
    assert resumed.resumed_from == 4 and resumed.steps == 9
    whole, parts = ckpt.read_checkpoint(tmp_path / "whole"), ckpt.read_checkpoint(tmp_path / "parts")
    for name in whole.weights:
        assert torch.equal(whole.weights[name], parts.weights[name]), name
        assert torch.equal(whole.ema[name], parts.ema[name]), name
    assert whole.card["model_id"] == parts.card["model_id"]
    assert whole.card["training"]["loss_curve"] == parts.card["training"]["loss_curve"]


def test_finished_runs_are_reported_other_arguments_refused(phantom, tmp_path):  # noqa: F811
    Trainer(train_config(phantom, tmp_path / "run", max_steps=2)).run()
    assert Trainer(train_config(phantom, tmp_path / "run", max_steps=2)).run().already_finished
    state_path = tmp_path / "run" / "trainer_state.json"
    state_path.write_text(json.dumps({**json.loads(state_path.read_text(encoding="utf-8")), "finished": False}))
    with pytest.raises(InputError, match="other arguments.*lr"):
        Trainer(train_config(phantom, tmp_path / "run", max_steps=2, lr=1e-2)).run()
    forced = Trainer(train_config(phantom, tmp_path / "run", max_steps=2, lr=1e-2, force=True)).run()
    assert forced.resumed_from == 0 and not forced.already_finished


def test_a_run_recorded_before_an_argument_existed_resumes_when_it_is_left_at_its_default(phantom, tmp_path):  # noqa: F811
    """An interrupted run of an older version has no record of a newer argument (here --mask-dropout and
    --guidance): left out, it is the same run; given, it is another."""
    Trainer(train_config(phantom, tmp_path / "run", max_steps=3, save_every=1)).run()
    state_path = tmp_path / "run" / "trainer_state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    for key in ("mask_dropout", "guidance"):
        del state["arguments"][key]
    state_path.write_text(json.dumps({**state, "finished": False, "step": 2}))
    assert Trainer(train_config(phantom, tmp_path / "run", max_steps=3)).run().resumed_from == 2
    state_path.write_text(json.dumps({**state, "finished": False, "step": 2}))
    with pytest.raises(InputError, match="other arguments.*mask_dropout: None → 0.1"):
        Trainer(train_config(phantom, tmp_path / "run", max_steps=3, mask_dropout=0.1)).run()


def test_fine_tuning_with_mask_dropout_keeps_the_weights_and_records_the_new_sampling_default(phantom, tmp_path):  # noqa: F811
    Trainer(train_config(phantom, tmp_path / "base", max_steps=2)).run()
    Trainer(train_config(phantom, tmp_path / "tuned", max_steps=1, init=str(tmp_path / "base"),
                         mask_dropout=0.25, guidance=1.5, lr=1e-12, ema_decay=0.0)).run()
    base, tuned = card_of(tmp_path / "base"), card_of(tmp_path / "tuned")
    assert base["config"]["p_mask_uncond"] == 0.0 and base["config"]["guidance"] == 1.0
    assert tuned["config"] == {**base["config"], "p_mask_uncond": 0.25, "guidance": 1.5}
    generator, _ = ckpt.load_checkpoint(tmp_path / "tuned")
    assert generator.default_guidance == 1.5


def test_a_folder_that_is_not_a_run_is_never_touched(phantom, tmp_path):  # noqa: F811
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        Trainer(train_config(phantom, tmp_path / "busy", force=True)).run()
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_train_patients_and_fine_tuning(phantom, tmp_path):  # noqa: F811
    Trainer(train_config(phantom, tmp_path / "base", max_steps=2)).run()
    base = card_of(tmp_path / "base")
    Trainer(train_config(phantom, tmp_path / "few", max_steps=2, train_patients=2)).run()
    few = card_of(tmp_path / "few")
    assert len(few["members"]) == 2 and set(few["members"]) < set(base["members"])
    assert set(few["unused"]) == set(base["members"]) - set(few["members"])
    assert few["holdout"] == base["holdout"]
    with pytest.raises(InputError, match="--train-patients must be between 1 and"):
        Trainer(train_config(phantom, tmp_path / "many", train_patients=99)).run()
    tuned = Trainer(train_config(phantom, tmp_path / "tuned", max_steps=2, init=str(tmp_path / "base"),
                                 preset=None, image_size=None)).run()
    assert card_of(tmp_path / "tuned")["training"]["init"] == base["model_id"] and tuned.steps == 2
    with pytest.raises(InputError, match="different model than --init"):
        Trainer(train_config(phantom, tmp_path / "other", init=str(tmp_path / "base"), preset="small")).run()
    with pytest.raises(InputError, match="--init is a flow model; --generator ddpm"):
        Trainer(train_config(phantom, tmp_path / "other", init=str(tmp_path / "base"), family="ddpm")).run()


def test_learning_rate_schedule():
    assert [lr_at(s, base=1.0, total=10, warmup=2, schedule="constant") for s in (0, 1, 2, 9)] == [0.5, 1, 1, 1]
    cosine = [lr_at(s, base=1.0, total=10, warmup=0, schedule="cosine") for s in range(11)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))


def test_ldm_trains_its_autoencoder_first_and_resumes_across_the_switch(phantom, tmp_path):  # noqa: F811
    kwargs = dict(family="ldm", max_steps=6, autoencoder_fraction=0.5)
    Trainer(train_config(phantom, tmp_path / "whole", **kwargs)).run()
    run_stopped_at_step(Trainer(train_config(phantom, tmp_path / "parts", save_every=2, **kwargs)), 5)  # after the switch
    assert Trainer(train_config(phantom, tmp_path / "parts", save_every=2, **kwargs)).run().resumed_from == 4
    whole, parts = ckpt.read_checkpoint(tmp_path / "whole"), ckpt.read_checkpoint(tmp_path / "parts")
    assert whole.card["training"]["autoencoder_steps"] == 3
    for name in whole.weights:
        assert torch.equal(whole.weights[name], parts.weights[name]), name
        assert torch.equal(whole.ema[name], parts.ema[name]), name
    generator, _ = ckpt.load_checkpoint(tmp_path / "whole")
    assert generator.stage == "diffusion" and float(generator.latent_scale) != 1.0
    assert torch.equal(whole.ema["latent_scale"], whole.weights["latent_scale"])


def test_3d_training_pads_stacks_and_samples_a_whole_stack(phantom, tmp_path):  # noqa: F811
    from CMRSynthLib.data.cohorts import load_case, open_cohort
    from CMRSynthLib.synthesis import synthesize

    Trainer(train_config(phantom, tmp_path / "3d", spatial_dims=3, image_size=16, max_steps=2, batch_size=2)).run()
    generator, card = ckpt.load_checkpoint(tmp_path / "3d")
    assert card["config"]["image_size"] == [8, 16, 16] and card["config"]["spatial_dims"] == 3
    case = load_case(open_cohort(phantom).records[0])
    (image,) = synthesize(generator, card, case.label, vendor=None, steps=2)
    assert image.same_geometry(case.label) and np.isfinite(image.array).all()
    with pytest.raises(InputError, match="--depth applies to 3D"):
        train_config(phantom, tmp_path / "x", depth=8)
