"""Patient-level DP-SGD with Opacus on a tiny MONAI DiffusionModelUNet: per-patient clipping, secret noise on the
parameters' device, accounting, resume exact for ε, the budget stop, and refusals."""

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from CMRSynthLib.errors import InputError
from CMRSynthLib.training.dp_optimizer import PatientDPOptimizer
from CMRSynthLib.training.ledger import Ledger, recompute_epsilon
from CMRSynthLib.training.privacy import DPConfig, DPTraining, check_module
from CMRSynthLib.training.privacy_planner import epsilon_of

SIZE = 16
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


class TinyLoss(nn.Module):
    """Per-sample denoising loss ``(B,)`` of a tiny MONAI DiffusionModelUNet (mask channels concatenated)."""

    def __init__(self):
        super().__init__()
        self.unet = DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=1, num_res_blocks=1,
                                       channels=(8, 16), attention_levels=(False, True), norm_num_groups=8,
                                       num_head_channels=8)

    def forward(self, images, masks, noise=None):
        eps = torch.randn(images.shape, generator=noise)
        t = torch.randint(0, 1000, (len(images),), generator=noise)
        out = self.unet(torch.cat([images + eps, masks], 1), t)
        return ((out - eps) ** 2).flatten(1).mean(1)


class PatientSlices(torch.utils.data.Dataset):
    """``patients`` patients with ``slices`` random slices each; items as the project's datasets give them."""

    def __init__(self, patients=6, slices=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(patients * slices, 1, SIZE, SIZE, generator=g)
        self.masks = (torch.rand(patients * slices, 1, SIZE, SIZE, generator=g) > 0.5).float()
        self.patients = [f"p{i // slices}" for i in range(patients * slices)]

    def __len__(self):
        return len(self.patients)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "patient": self.patients[i]}

    def patient_index(self):
        index = {}
        for i, patient in enumerate(self.patients):
            index.setdefault(patient, []).append(i)
        return index


def collate(items):
    return (torch.stack([i["image"] for i in items]), torch.stack([i["mask"] for i in items]),
            [i["patient"] for i in items])


def flat(tensors):
    return torch.cat([t.reshape(len(t), -1) if t.dim() > 1 else t.reshape(1, -1) for t in tensors], 1)


def make_model(seed=0):
    torch.manual_seed(seed)
    return TinyLoss()


def reference_unit_gradients(model, images, masks, groups, seed):
    """Per-patient gradient of the patient's mean loss, by plain autograd one row at a time (no Opacus)."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_row = []
    noise = torch.Generator().manual_seed(seed)
    draws = [(torch.randn(images[i:i + 1].shape, generator=noise)) for i in range(len(images))]
    t = torch.randint(0, 1000, (len(images),), generator=noise)
    for i in range(len(images)):
        out = model.unet(torch.cat([images[i:i + 1] + draws[i], masks[i:i + 1]], 1), t[i:i + 1])
        loss = ((out - draws[i]) ** 2).mean()
        per_row.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    per_row = torch.stack(per_row)
    groups = torch.tensor(groups)
    return torch.stack([per_row[groups == g].mean(0) for g in range(int(groups.max()) + 1)])


def attach_hooks(model):
    from opacus.grad_sample import GradSampleHooks

    hooks = GradSampleHooks(model, loss_reduction="mean", strict=False)
    hooks.forbid_grad_accumulation()
    return hooks


def test_per_patient_gradients_are_aggregated_then_clipped_to_C():
    model = make_model()
    data = PatientSlices(patients=3, slices=3)
    rows = [0, 1, 2, 3, 4, 6]  # patient 0 gives 3 slices, patient 1 gives 2, patient 2 one
    groups = [0, 0, 0, 1, 1, 2]
    images, masks, _ = collate([data[i] for i in rows])
    C = 0.05
    reference = reference_unit_gradients(model, images, masks, groups, seed=7)
    assert (reference.norm(dim=1) > 5 * C).all()  # without clipping every patient exceeds C: the check can fail
    attach_hooks(model)

    optimizer = PatientDPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                                   max_grad_norm=C, expected_batch_size=1)
    optimizer.set_groups(torch.tensor(groups))
    losses = model(images, masks, torch.Generator().manual_seed(7))
    losses.mean().backward()
    optimizer.pre_step()
    params = optimizer.params
    unit_grads = flat([p.grad_sample for p in params])  # Opacus's per-sample gradients after our aggregation
    assert unit_grads.shape[0] == 3
    assert torch.allclose(unit_grads, reference, rtol=1e-4, atol=1e-6)
    factors = (C / (unit_grads.norm(dim=1) + 1e-6)).clamp(max=1.0)
    clipped = factors[:, None] * unit_grads
    assert (clipped.norm(dim=1) <= C * (1 + 1e-5)).all()
    summed = torch.cat([p.summed_grad.flatten() for p in params])
    assert torch.allclose(summed, clipped.sum(0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rows", [[0, 1, 2], [5], [3, 3, 4, 4]])
def test_one_patient_moves_the_update_by_at_most_C(rows):
    """Sensitivity, observed on the update itself: a step with one patient and no noise has |grad| ≤ C."""
    model = make_model()
    attach_hooks(model)
    data = PatientSlices(patients=2, slices=3)
    images, masks, _ = collate([data[i] for i in rows])
    C = 0.01
    optimizer = PatientDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                                   max_grad_norm=C, expected_batch_size=1)
    optimizer.set_groups(torch.zeros(len(rows), dtype=torch.long))
    model(images, masks, torch.Generator().manual_seed(1)).mean().backward()
    raw = torch.cat([p.grad.flatten() for p in optimizer.params])  # ordinary gradient of the mean loss
    assert raw.norm() > C
    optimizer.step()
    update = torch.cat([p.grad.flatten() for p in optimizer.params])
    assert update.norm() <= C * (1 + 1e-5)
    assert torch.allclose(update / update.norm(), raw / raw.norm(), atol=1e-4)  # clipped, not changed


def test_clipping_is_exact_under_bf16_autocast():
    """Privacy integrity II item 2: under bf16 autocast Opacus's per-sample gradients are bf16, and a patient's
    rows were summed and their norm taken in bf16: clipped norms reached 1.0085 × C (ε understated). Summed and
    clipped in fp32 whatever the autocast dtype, one patient moves the update by at most C to fp32 precision."""
    C, worst = 0.01, 0.0
    for seed in range(6):
        model = make_model(seed)
        attach_hooks(model)
        data = PatientSlices(patients=1, slices=3, seed=seed)
        images, masks, _ = collate([data[i] for i in range(3)])
        optimizer = PatientDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                                       max_grad_norm=C, expected_batch_size=1)
        optimizer.set_groups(torch.zeros(3, dtype=torch.long))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(images, masks, torch.Generator().manual_seed(seed))
        losses.float().mean().backward()
        assert any(p.grad_sample.dtype == torch.bfloat16 for p in optimizer.params)  # the case under test
        optimizer.pre_step()
        clipped = torch.cat([p.summed_grad.flatten() for p in optimizer.params])
        assert clipped.dtype == torch.float32
        worst = max(worst, float(clipped.norm()) / C)
    assert 0.99 < worst <= 1 + 1e-5


def test_noise_only_step_has_the_calibrated_scale():
    """A draw with no patient still moves the weights by pure noise N(0, (σC/B)²) (lr 1 makes it visible)."""
    model = make_model()
    attach_hooks(model)
    C, sigma, batch = 0.5, 2.0, 4
    optimizer = PatientDPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=sigma,
                                   max_grad_norm=C, expected_batch_size=batch, generator=torch.Generator().manual_seed(0))
    before = torch.cat([p.detach().flatten() for p in optimizer.params])
    optimizer.noise_only_step()
    noise = before - torch.cat([p.detach().flatten() for p in optimizer.params])
    assert noise.numel() > 10_000
    assert noise.std().item() == pytest.approx(sigma * C / batch, rel=0.03)
    assert abs(noise.mean().item()) < 4 * sigma * C / batch / noise.numel() ** 0.5
    assert all(p.grad_sample is None for p in optimizer.params)


def test_a_noise_only_step_after_a_patient_step_is_only_noise():
    """The trainer clears gradients before each backward pass, not after the step; a noise-only step must not
    re-apply (or choke on) the previous step's summed gradients: its update is exactly a fresh noise draw."""
    updates = []
    for earlier_step in (True, False):
        model = make_model()
        attach_hooks(model)
        optimizer = PatientDPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0,
                                       max_grad_norm=0.5, expected_batch_size=2, generator=torch.Generator())
        if earlier_step:
            data = PatientSlices(patients=2, slices=1)
            images, masks, _ = collate([data[0], data[1]])
            model(images, masks, torch.Generator().manual_seed(0)).mean().backward()
            optimizer.set_groups(torch.tensor([0, 1]))
            optimizer.step()
        optimizer.generator.manual_seed(5)
        before = torch.cat([p.detach().flatten() for p in optimizer.params])
        optimizer.noise_only_step()
        updates.append(before - torch.cat([p.detach().flatten() for p in optimizer.params]))
    assert torch.allclose(updates[0], updates[1], atol=1e-6)


def run_dp(steps, *, state=None, target=None, noise=1.0, slice_level=False, model_seed=0):
    """``steps`` trainer-like steps of DPTraining over PatientSlices; returns (privacy, model, taken)."""
    model = make_model(model_seed)
    privacy = DPTraining(DPConfig(delta=1e-3, max_grad_norm=1.0, target_epsilon=target,
                                  noise_multiplier=noise, slice_level=slice_level, noise_multiplicity=2))
    data = PatientSlices(patients=6, slices=3)
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate)
    model, optimizer, loader = privacy.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                              steps=steps)
    if state is not None:
        weights, saved = state
        model.load_state_dict(weights)
        privacy.load_state_dict(saved)
    taken = 0
    while taken < steps and not privacy.exhausted():
        for batch in loader:
            if batch is None:  # a draw with no patient: the trainer's noise-only step
                optimizer.noise_only_step()
            else:
                images, masks, _ = batch
                losses = model(images, masks, torch.Generator().manual_seed(1000 + privacy.run_steps))
                optimizer.zero_grad()
                losses.mean().backward()
                optimizer.step()
            taken += 1
            if taken == steps:
                break
    return privacy, model, taken


def test_accounting_follows_the_steps_and_the_ledger_reproduces_epsilon():
    privacy, _, taken = run_dp(5)
    history = privacy.accountant.history
    assert history == [(1.0, 2 / 6, privacy.run_steps)] and privacy.run_steps == taken == 5
    assert privacy.epsilon() == epsilon_of(history, delta=1e-3, accountant="rdp") > 0
    ledger = Ledger.from_dict(privacy.ledger())
    assert ledger.unit == "patient" and ledger.patients == 6 and ledger.steps == privacy.run_steps
    assert ledger.noise_multiplicity == 2 and ledger.sample_rate == 2 / 6 and ledger.max_grad_norm == 1.0
    assert recompute_epsilon(ledger) == ledger.epsilon == privacy.epsilon()


def test_resume_continues_the_ledger_exactly_but_draws_fresh_secret_noise():
    """Issue 12 item 1: the same run twice (same seeds, same weights, same data) must not draw the same noise or
    the same patients (before: both were reseeded from (seed, step), so the runs were identical); a resumed run
    continues the accountant history (ε is never reset)."""
    whole, whole_model, _ = run_dp(6)
    again, again_model, _ = run_dp(6)
    assert any(not torch.equal(a, b) for a, b in zip(whole_model.state_dict().values(),
                                                      again_model.state_dict().values()))
    first, first_model, _ = run_dp(3)
    state = ({k: v.clone() for k, v in first_model.state_dict().items()}, first.state_dict())
    resumed, resumed_model, _ = run_dp(3, state=state, model_seed=1)
    assert resumed.run_steps >= first.run_steps + 3
    assert resumed.accountant.history == [(1.0, 2 / 6, resumed.run_steps)]
    assert resumed.epsilon() == epsilon_of(resumed.accountant.history, delta=1e-3, accountant="rdp") > first.epsilon()


def test_secret_generators_are_unpredictable_and_full_state():
    """A secret generator's draws are not those of any 32-bit seed's (torch's CPU manual_seed keeps 32 bits) and
    differ between generators; every mt19937 word of its state is set."""
    from CMRSynthLib.training.privacy import secret_generator

    a, b = secret_generator("cpu"), secret_generator("cpu")
    state = a.get_state()
    words = state[24:24 + 8 * 624].view(torch.int64)
    assert len(set(words.tolist())) > 600 and (words < 2**32).all() and (words >= 0).all()
    draw = torch.randn(64, generator=a)
    assert not torch.equal(draw, torch.randn(64, generator=b))
    a.set_state(state)
    assert torch.equal(torch.randn(64, generator=a), draw)  # the state is what draws (kept nowhere else)


def test_the_noise_generator_lives_on_the_parameters_device(monkeypatch):
    """Issue 12 item 2: Opacus draws noise with ``device=param.device`` and the given generator, which must be on
    that device (before: always a CPU generator, so CUDA/MPS DP training crashed). CPU-only machines check the
    construction with parameters on the 'meta' device."""
    from CMRSynthLib.training import privacy as privacy_module

    asked = []
    real = privacy_module.secret_generator

    def recording(device):
        asked.append(torch.device(device))
        return real("cpu")

    monkeypatch.setattr(privacy_module, "secret_generator", recording)
    model = make_model().to("meta")
    privacy = DPTraining(DPConfig(delta=1e-3, max_grad_norm=1.0, noise_multiplier=1.0))
    loader = torch.utils.data.DataLoader(PatientSlices(patients=6), batch_size=2, collate_fn=collate)
    privacy.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, steps=3)
    assert torch.device("meta") in asked  # the noise generator
    assert privacy.optimizer.secure_mode


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dp_steps_on_cuda():
    from CMRSynthLib.training.privacy import secret_generator

    generator = secret_generator("cuda")
    assert generator.device.type == "cuda"
    model = make_model().cuda()
    attach_hooks(model)
    optimizer = PatientDPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0,
                                   max_grad_norm=1.0, expected_batch_size=2, generator=generator, secure_mode=True)
    before = torch.cat([p.detach().flatten() for p in optimizer.params])
    optimizer.noise_only_step()  # Opacus draws on the parameters' device with this generator
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in optimizer.params]))


def test_stops_before_exceeding_the_target():
    target = epsilon_of([(1.0, 2 / 6, 4)], delta=1e-3, accountant="rdp") + 1e-9
    privacy, _, _ = run_dp(50, target=target)
    assert privacy.exhausted() and privacy.run_steps == 4
    assert privacy.epsilon() <= target
    assert epsilon_of([(1.0, 2 / 6, 5)], delta=1e-3, accountant="rdp") > target


def test_slice_level_is_explicit_and_reports_group_privacy():
    privacy, _, _ = run_dp(2, slice_level=True)
    ledger = Ledger.from_dict(privacy.ledger())
    assert ledger.unit == "slice" and ledger.sample_rate == 2 / 18 and ledger.max_slices_per_patient == 3
    assert ledger.group_epsilon == 3 * ledger.epsilon


def test_a_model_with_batchnorm_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(InputError, match=r"'?1'? \(BatchNorm2d\)"):
        check_module(model)
    check_module(make_model())  # the MONAI UNet passes


@pytest.mark.parametrize("kwargs, flag", [
    (dict(max_grad_norm=0.0), "--max-grad-norm"), (dict(max_grad_norm=-1.0), "--max-grad-norm"),
    (dict(target_epsilon=None, noise_multiplier=None), "--epsilon"), (dict(target_epsilon=0.0), "--epsilon"),
    (dict(noise_multiplier=-1.0), "--noise-multiplier"), (dict(delta=0.0), "--delta"),
    (dict(accountant="gdp"), "--accountant"), (dict(noise_multiplicity=0), "--noise-multiplicity"),
    (dict(slices_per_patient=2, slice_level=True), "--slices-per-patient"),
])
def test_bad_dp_config(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        DPConfig(**{"delta": 1e-3, "max_grad_norm": 1.0, "target_epsilon": 4.0} | kwargs)


@pytest.mark.parametrize("config, batch, flag", [
    (dict(delta=0.2), 2, "--delta"),  # δ ≥ 1/6 patients
    (dict(delta=1e-3), 7, "--batch-size"),  # more patients per step than there are patients
])
def test_bad_dp_input_against_the_data(config, batch, flag):
    privacy = DPTraining(DPConfig(max_grad_norm=1.0, noise_multiplier=1.0, **config))
    loader = torch.utils.data.DataLoader(PatientSlices(patients=6), batch_size=batch, collate_fn=collate)
    model = make_model()
    with pytest.raises(InputError, match=flag):
        privacy.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, steps=10)


@pytest.mark.parametrize("family", ["ddpm", "flow", "hybrid", "ldm"])
def test_every_generator_family_gets_exact_per_sample_gradients(family):
    """Opacus's hooks give each family's per-sample gradients exactly (no layer mixes samples)."""
    from CMRSynthLib.generators import build_generator, preset_config
    from CMRSynthLib.generators.base import Conditions, Vocabulary

    torch.manual_seed(0)
    vocabulary = Vocabulary(vendors=("Siemens", "GE"))
    generator = build_generator(family, preset_config(family, "tiny", spatial_dims=2, image_size=16,
                                                      vocabulary=vocabulary))
    if family == "ldm":
        generator.freeze_autoencoder()
    check_module(generator)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 1, SIZE, SIZE, generator=g) * 2 - 1
    mask = torch.nn.functional.one_hot(torch.randint(0, 4, (3, SIZE, SIZE), generator=g), 4).permute(0, 3, 1, 2)
    cond = Conditions(mask.float(), torch.tensor([1, 2, 0]), torch.tensor([1, 0, 2]), torch.tensor([3, 1, 0]))
    shape = generator.model_shape(3, images.shape[2:]) if family == "ldm" else images.shape  # LDM: latent noise
    t, noise = torch.tensor([0.2, 0.5, 0.9]), torch.randn(shape, generator=g)
    params = [p for p in generator.parameters() if p.requires_grad]
    reference = torch.stack([torch.cat([x.flatten() for x in torch.autograd.grad(
        generator.loss_at(images[i:i + 1], cond[i:i + 1], t[i:i + 1], noise[i:i + 1]).sum(), params,
        allow_unused=True, materialize_grads=True)]) for i in range(3)])
    attach_hooks(generator)
    generator.loss_at(images, cond, t, noise).mean().backward()
    per_sample = flat([p.grad_sample if p.grad_sample is not None else torch.zeros(3, *p.shape) for p in params])
    assert torch.allclose(per_sample, reference, rtol=1e-3, atol=1e-6)


def test_an_ldm_is_dp_trained_only_in_its_diffusion_stage():
    from CMRSynthLib.generators import build_generator, preset_config
    from CMRSynthLib.generators.base import Vocabulary

    ldm = build_generator("ldm", preset_config("ldm", "tiny", spatial_dims=2, image_size=16,
                                               vocabulary=Vocabulary(vendors=("GE",))))
    privacy = DPTraining(DPConfig(delta=1e-3, max_grad_norm=1.0, noise_multiplier=1.0))
    loader = torch.utils.data.DataLoader(PatientSlices(patients=6), batch_size=2, collate_fn=collate)
    holder = nn.Module()
    holder.generator = ldm  # what the trainer's LossModel looks like
    with pytest.raises(InputError, match="autoencoder was trained on public data"):
        privacy.attach(holder, torch.optim.SGD(ldm.parameters(), lr=0.1), loader, steps=10)
    ldm.freeze_autoencoder()
    privacy.attach(holder, torch.optim.SGD([p for p in ldm.parameters() if p.requires_grad], lr=0.1), loader,
                   steps=10)


@pytest.mark.parametrize("patients,batch,epochs", [(7, 5, 45), (6, 2, 3), (10, 3, 0.7), (35, 4, 12.5), (3, 1, 1),
                                                   (70, 8, 9), (11, 7, 2.2), (100, 3, 0.3)])
def test_the_trainer_counts_the_steps_the_planner_counts(patients, batch, epochs):
    """Privacy integrity II item 4: one count for both (before, in floating point: 45 epochs of 7 patients in
    batches of 5 were 63 steps for `privacy-budget`, int(45 / (5/7)), and 62 for the trainer, int(45 · 1.4))."""
    from CMRSynthLib.training.privacy_planner import plan_epsilon

    loader = torch.utils.data.DataLoader(PatientSlices(patients=patients, slices=1), batch_size=batch,
                                         collate_fn=collate)
    privacy = DPTraining(DPConfig(delta=1e-3 / patients, max_grad_norm=1.0, noise_multiplier=1.0))
    planned = plan_epsilon(patients, batch, epochs, 1.0, 1e-3 / patients)
    assert privacy.steps_for(loader, epochs) == planned.steps == int(round(epochs * patients / batch, 9))
