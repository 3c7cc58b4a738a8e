"""The coarse stage of the latent model (a cascade): its config round trip, that the coarse image is where the
latent flow starts, determinism, frozen coarse weights, and ``cmrsynth cascade``'s refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from CMRSynthLib.data.preprocess import PreprocessConfig
from CMRSynthLib.data.volume import Volume
from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.generators.flow import FlowConfig, FlowGenerator
from CMRSynthLib.generators.ldm import LDMConfig, LDMGenerator
from CMRSynthLib.training.checkpoint import load_checkpoint, save_checkpoint

VOCABULARY = Vocabulary(vendors=("Siemens", "Philips", "GE", "Canon"))  # the phantom cohort's
MEMBERS, HOLDOUT = ["p1", "p2", "p3"], ["p4"]


def refiner(**overrides) -> LDMGenerator:
    torch.manual_seed(0)
    model = LDMGenerator(LDMConfig.preset("tiny", spatial_dims=2, image_size=32, vocabulary=VOCABULARY, **overrides))
    model.freeze_autoencoder(torch.rand(4, 1, 32, 32) * 2 - 1)
    return model.eval()


def coarse_model(**overrides) -> FlowGenerator:
    torch.manual_seed(1)
    config = FlowConfig.preset("tiny", spatial_dims=2, image_size=8, vocabulary=overrides.pop("vocabulary", VOCABULARY),
                               **overrides)
    return FlowGenerator(config).eval()


def conditions(batch: int = 2, size: int = 32) -> Conditions:
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, 10:22, 10:22] = 2
    labels[:, 13:19, 13:19] = 1
    labels[:, 12:20, 22:27] = 3
    mask = F.one_hot(labels, 4).movedim(-1, 1).float()
    token = torch.ones(batch, dtype=torch.long)
    return Conditions(mask, token, token, token)


def test_the_coarse_stage_travels_in_the_config_and_an_old_config_has_none():
    cascade = refiner().with_coarse(coarse_model(), 0.7)
    data = json.loads(json.dumps(cascade.config.to_dict()))
    assert LDMConfig.from_dict(data) == cascade.config
    assert LDMConfig.from_dict(data).coarse == coarse_model().config
    old = {k: v for k, v in data.items() if k not in ("coarse", "coarse_start")}
    assert LDMConfig.from_dict(old).coarse is None


def test_the_cascade_keeps_both_models_weights_and_trains_only_the_latent_network():
    plain, coarse = refiner(), coarse_model()
    cascade = plain.with_coarse(coarse, 0.85)
    for name, value in plain.state_dict().items():
        assert torch.equal(cascade.state_dict()[name], value), name
    for name, value in coarse.state_dict().items():
        assert torch.equal(cascade.state_dict()[f"coarse.{name}"], value), name
    assert cascade.stage == "diffusion"
    assert not any(p.requires_grad for p in cascade.coarse.parameters())
    assert all(p.requires_grad for p in cascade.net.parameters())
    cascade.stage = "autoencoder"
    assert not any(p.requires_grad for p in cascade.coarse.parameters())


def test_coarse_conditions_are_the_majority_label_of_each_latent_cell():
    labels = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(0))
    labels[:, 8:24, 8:24] = 1
    token = torch.tensor([1, 0])
    cond = Conditions(F.one_hot(labels, 4).movedim(-1, 1).float(), token, token, token)
    coarse = refiner().with_coarse(coarse_model(), 0.85).coarse_conditions(cond)
    assert coarse.mask.shape == (2, 4, 8, 8)
    assert torch.equal(coarse.mask.sum(1), torch.ones(2, 8, 8))  # one-hot
    cells = labels.reshape(2, 8, 4, 8, 4).permute(0, 1, 3, 2, 4).reshape(2, 8, 8, 16)
    majority = torch.tensor([[[np.bincount(c.numpy(), minlength=4).argmax() for c in row] for row in b] for b in cells])
    assert torch.equal(coarse.mask.argmax(1), majority)  # ties go to the lower label, as np.argmax does
    assert (majority[:, 2:6, 2:6] == 1).all()
    assert torch.equal(coarse.vendor, cond.vendor) and torch.equal(coarse.group, cond.group)


def test_the_latent_flow_starts_from_the_coarse_image():
    """Started just before t = 0, the cascade's image is the coarse image, upsampled and passed through the
    autoencoder: what the coarse stage drew is what the refiner refines."""
    cascade = refiner().with_coarse(coarse_model(), 0.002)
    cond = conditions()
    image = cascade.sample(cond, steps=1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        drawn = cascade.coarse.sample(cascade.coarse_conditions(cond), generator=torch.Generator().manual_seed(5))
        up = F.interpolate(drawn, scale_factor=4, mode="bilinear", align_corners=False)
        through = cascade.autoencoder.decode(cascade.autoencoder.encode(up)).clamp(-1, 1)
    assert image.shape == (2, 1, 32, 32)
    assert (image - through).abs().max() < 0.05
    plain = refiner().sample(cond, steps=1, generator=torch.Generator().manual_seed(5))
    assert (plain - through).abs().mean() > 5 * (image - through).abs().mean()


def test_a_cascade_is_deterministic_with_a_seed_and_varies_with_it():
    cascade = refiner().with_coarse(coarse_model(), 0.85)
    cond = conditions()
    one = cascade.sample(cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, cascade.sample(cond, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(one, cascade.sample(cond, generator=torch.Generator().manual_seed(1)))


def test_the_config_refuses_a_coarse_stage_that_cannot_join():
    with pytest.raises(ValueError, match="vendors"):
        refiner().with_coarse(coarse_model(vocabulary=Vocabulary(vendors=("GE",))), 0.85)
    with pytest.raises(ValueError, match="coarse_start"):
        refiner().with_coarse(coarse_model(), 0.0)
    with pytest.raises(ValueError, match="flow model"):
        refiner().with_coarse(refiner(), 0.85)


# ------------------------------------------------------------------------------------------- the command
def save(path, model, *, spacing, size, **card):
    preprocessing = PreprocessConfig(spacing=(spacing, spacing), size=(size, size), field_of_view="whole")
    base = {"vocabulary": model.config.vocabulary.to_dict(), "preprocessing": preprocessing.to_dict(),
            "members": MEMBERS, "holdout": HOLDOUT, "training": {"steps": 3, "final_loss": 0.5}}
    save_checkpoint(path, model, {**base, **card})
    return path


@pytest.fixture
def pair(tmp_path):
    return (save(tmp_path / "coarse", coarse_model(), spacing=8.0, size=8),
            save(tmp_path / "refiner", refiner(), spacing=2.0, size=32))


def test_cascade_command_writes_one_model_that_samples_on_the_mask_grid(pair, run_cli, tmp_path):
    coarse, refiner_path = pair
    code, _, err = run_cli("cascade", "--coarse", coarse, "--refiner", refiner_path, "--out", tmp_path / "cascade",
                           "--start", 0.8, "--progress", "none")
    assert code == 0, err
    model, card = load_checkpoint(tmp_path / "cascade")
    assert model.family == "ldm" and model.config.coarse_start == 0.8 and model.coarse is not None
    assert card["members"] == MEMBERS and card["cascade"]["start"] == 0.8
    assert card["cascade"]["coarse_model_id"] == load_checkpoint(coarse)[1]["model_id"]
    mask = np.zeros((2, 40, 36), np.uint8)
    mask[:, 14:26, 12:24] = 2
    mask[:, 17:23, 15:21] = 1
    affine = np.diag([2.0, 2.0, 8.0, 1.0])
    from CMRSynthLib.synthesis import synthesize

    volume = synthesize(model, card, Volume(mask, affine), vendor="Siemens", seed=3)[0]
    assert volume.shape == mask.shape and np.isfinite(volume.array).all()
    assert np.array_equal(volume.array, synthesize(model, card, Volume(mask, affine), vendor="Siemens", seed=3)[0].array)


@pytest.mark.parametrize("problem, match", [
    ("spacing", "train the coarse model with --spacing 8"),
    ("patients", "other patients"),
    ("dp", "DP"),
    ("family", "must be a flow model"),
    ("start", "--start"),
])
def test_cascade_command_refuses_a_pair_that_cannot_make_one_honest_model(pair, run_cli, tmp_path, problem, match):
    coarse, refiner_path = pair
    start = 0.85
    if problem == "spacing":
        coarse = save(tmp_path / "c2", coarse_model(), spacing=4.0, size=8)
    elif problem == "patients":
        coarse = save(tmp_path / "c2", coarse_model(), spacing=8.0, size=8, members=["p1", "p4"])
    elif problem == "dp":
        coarse = save(tmp_path / "c2", coarse_model(), spacing=8.0, size=8, privacy={"epsilon": 8.0})
    elif problem == "family":
        coarse = refiner_path
    else:
        start = 1.5
    code, _, err = run_cli("cascade", "--coarse", coarse, "--refiner", refiner_path, "--out", tmp_path / "out",
                           "--start", start, "--progress", "none")
    assert code == 2 and match in err, err
    assert not (tmp_path / "out").exists()


def test_a_cascade_fine_tunes_with_dp_on_other_patients_and_keeps_its_coarse_stage(pair, run_cli, tmp_path):
    """DP fine-tuning trains the latent network only: the coarse stage (trained on the init's patients, none of
    them in the new cohort) stays as it was, and the model still starts from it."""
    from CMRSynthLib.data.phantom import write_phantom_cohort

    coarse, refiner_path = pair
    assert run_cli("cascade", "--coarse", coarse, "--refiner", refiner_path, "--out", tmp_path / "cascade",
                   "--progress", "none")[0] == 0
    cohort = write_phantom_cohort(tmp_path / "cohort", 4, seed=0, shape=(3, 48, 48))
    code, _, err = run_cli("train", "--data", cohort, "--generator", "ldm", "--init", tmp_path / "cascade", "--out",
                           tmp_path / "dp", "--dp", "--noise-multiplier", 1.0, "--delta", 1e-3, "--max-grad-norm", 1.0,
                           "--max-steps", 2, "--batch-size", 2, "--progress", "none")
    assert code == 0, err
    before, _ = load_checkpoint(tmp_path / "cascade")
    after, card = load_checkpoint(tmp_path / "dp")
    assert card["privacy"]["epsilon"] > 0 and after.config.coarse == before.config.coarse
    for key, value in before.coarse.state_dict().items():
        assert torch.equal(after.coarse.state_dict()[key], value), key
    assert any(not torch.equal(after.net.state_dict()[k], v) for k, v in before.net.state_dict().items())
