"""Patient-level DP-SGD with Opacus: the privacy object the :class:`~CMRSynthLib.training.loop.Trainer` calls.

What one step does (DESIGN §5; the privacy unit is the patient):

1. :class:`~.patient_sampling.PoissonUnitSampler` puts every patient in the step with probability
   ``q = batch_size / patients`` and takes ``k`` (default 1) random slices of each, each repeated ``K`` times
   (noise multiplicity, as in DPDM: K independent noise levels/noises per slice).
2. The trainer's loss model gives per-row losses ``(R,)`` and back-propagates their mean. Opacus's hooks
   (:class:`opacus.grad_sample.GradSampleHooks`, ``grad_sample_mode="hooks"``) record per-row gradients.
3. :class:`~.dp_optimizer.PatientDPOptimizer` averages each patient's rows into one gradient, and Opacus clips
   it to ``max_grad_norm`` C, sums, adds N(0, σ²C²) and divides by the expected patients per step; an
   RDP/PRV accountant of Opacus is stepped with (σ, q). A draw with no patient is a step too: the loader yields
   ``None`` and the trainer takes the optimizer's noise-only step, so trainer, accountant and planner count alike.

grad_sample_mode: "hooks". Measured on this project's 2-core CPU, one DP step of a tiny MONAI
DiffusionModelUNet (channels 16/32, attention at 16², batch 8 of 32×32, 5 input channels): non-DP 83 ms,
hooks 140 ms, functorch 190 ms, ghost clipping 230-240 ms (two backward passes), "ew" (expanded weights) fails
(it needs every forward input batched, and MONAI's 1-D timesteps are not). At 64×64 with channels 32/64:
non-DP 2.3 s, hooks 3.1 s, functorch 2.9 s, ghost 5.2 s. Hooks and functorch are within noise of each
other; hooks is Opacus's default, attaches without wrapping the model, and is kept. Ghost clipping never
materialises per-sample gradients, so it cannot aggregate a patient's rows before clipping: it is not used.

The noise is calibrated (Opacus's ``get_noise_multiplier``) for the run's planned steps and the target ε; the
run stops cleanly before any step that would exceed the target.

Secret randomness. The guarantee assumes the adversary cannot reproduce the noise or the Poisson draw: with a
known seed and a public ``--init`` the mechanism would be deterministic given the data. So the noise and the
patient sampling come from generators whose whole state is drawn from the operating system's CSPRNG
(:func:`secret_generator`, via :mod:`secrets`) when a run (or a resumed run) attaches; it is never stored and
never derived from ``--seed``. ``--seed`` still decides what is not privacy-relevant: the initial weights and
the diffusion noise/timesteps of the training loss. Opacus's ``secure_mode`` is on: its noise is a sum of
Gaussians, robust to the floating-point attacks on a single sample. (Opacus's own secure generator,
torchcsprng, is unmaintained and not built for current torch, hence :func:`secret_generator`.) A resumed run
therefore continues the accountant history exactly (ε is never reset) but draws fresh noise.
Several processes (``torchrun``): rank 0's secret sampling state is broadcast once, so every process draws the
same Poisson sample and trains on its disjoint share of the patients (:func:`~.patient_sampling.shard`); Opacus's
DPDDP starts them from the same weights and :class:`~.dp_optimizer.DistributedPatientDPOptimizer` adds the noise
once (rank 0) and sums the shares, so one step is the single-process mechanism with the same (σ, q) and the
same accountant history.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass

from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import FrozenConfig
from CMRSynthLib.training.ledger import Ledger, make_ledger
from CMRSynthLib.training.privacy_planner import (ACCOUNTANTS, calibrate_noise, check_inputs, epsilon_of,
                                                  max_steps, steps_for)

GRAD_SAMPLE_MODE = "hooks"


@dataclass(frozen=True)
class DPConfig(FrozenConfig):
    """The DP arguments of ``cmrsynth train --dp`` (``to_dict``/``from_dict``: JSON, unknown keys refused).

    Attributes:
        delta: δ (must be < 1/patients). max_grad_norm: C, the per-patient clipping norm.
        target_epsilon: the budget; the noise is calibrated to it unless ``noise_multiplier`` is given, and
            the run stops before exceeding it. noise_multiplier: σ, fixed by hand.
        accountant: "rdp" or "prv" (Opacus). slice_level: make the slice the unit (reports group privacy).
        slices_per_patient: k, slices of one patient per step, averaged before clipping.
        noise_multiplicity: K noise draws per slice, averaged before clipping.
    """

    delta: float
    max_grad_norm: float
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    accountant: str = "rdp"
    slice_level: bool = False
    slices_per_patient: int = 1
    noise_multiplicity: int = 1

    def __post_init__(self):
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise InputError("--dp needs --epsilon (the budget to calibrate the noise to) or --noise-multiplier")
        if not (isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0):
            raise InputError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise InputError(f"--delta must be in (0, 1/patients), got {self.delta}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise InputError(f"--epsilon must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise InputError(f"--noise-multiplier must be > 0, got {self.noise_multiplier}")
        if self.accountant not in ACCOUNTANTS:
            raise InputError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        for flag, value in (("--slices-per-patient", self.slices_per_patient),
                            ("--noise-multiplicity", self.noise_multiplicity)):
            if int(value) != value or value < 1:
                raise InputError(f"{flag} must be a whole number ≥ 1, got {value}")
        if self.slice_level and self.slices_per_patient != 1:
            raise InputError("--slices-per-patient applies to patient-level DP; with --slice-level every slice "
                             "is its own unit")


@dataclass(frozen=True)
class InitPrivacy:
    """What an ``--init``'s lineage means for a DP run on given patients (:func:`init_privacy`).

    Attributes:
        model_id: the init's ``model_id``.
        spent: the own histories of the DP ancestors that saw some of the run's patients, concatenated: budget
            already spent on them, which the run's ε includes.
        composed: those ancestors' ``model_id``s.
    """

    model_id: str
    spent: tuple[tuple[float, float, int], ...] = ()
    composed: tuple[str, ...] = ()


class DPTraining:
    """The Trainer's privacy hook: ``attach``, ``epsilon``, ``exhausted``, ``ledger``, state for resuming.

    Args:
        config: the DP arguments.
        init: what the run's ``--init`` brings (:func:`init_privacy`): its id and the budget its lineage already
            spent on this run's patients.
    """

    def __init__(self, config: DPConfig, *, init: InitPrivacy | None = None):
        from opacus.accountants import create_accountant

        self.config = config
        self.init = init
        self.spent = init.spent if init is not None else ()
        self.accountant = create_accountant(mechanism=config.accountant)
        self.accountant.history = list(self.spent)
        self.run_steps = 0  # steps of this run (noise-only steps included)
        self.allowed_steps: int | None = None
        self.optimizer = None
        self._epsilon_cache: tuple[int, float] | None = None

    # -- the Trainer's hooks -------------------------------------------------------------------------
    def attach(self, model, optimizer, loader, *, steps: int):
        """Make ``model``/``optimizer``/``loader`` patient-level DP-SGD for a run of ``steps`` steps.

        ``model`` returns per-row losses ``(R,)`` whose MEAN the trainer back-propagates; ``loader`` is a
        DataLoader over a dataset with ``patient_index()``; its ``batch_size`` is the expected number of
        patients (slices with ``--slice-level``) per step.
        Returns the same model (Opacus hooks attached), a :class:`PatientDPOptimizer` and a patient loader
        whose ``len`` is the steps of one epoch (each patient drawn once on average).
        """
        import torch
        import torch.distributed as dist
        from opacus.grad_sample import GradSampleHooks

        from CMRSynthLib.training.dp_optimizer import DistributedPatientDPOptimizer, PatientDPOptimizer
        from CMRSynthLib.training.patient_sampling import PoissonUnitSampler, UnitLoader

        c = self.config
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise ValueError("DP-SGD reduces clipped, noised gradients itself: give attach() the bare model")
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        _check_stage(getattr(model, "generator", model))
        check_module(model)
        dataset = loader.dataset
        index = dataset.patient_index()
        self.patients = len(index)
        self.max_slices = max(len(items) for items in index.values())
        units = [[i] for i in range(len(dataset))] if c.slice_level else list(index.values())
        batch_size = loader.batch_size
        check_inputs(patients=len(units), batch_size=batch_size, epochs=None, delta=c.delta,
                     target_epsilon=c.target_epsilon, noise_multiplier=c.noise_multiplier, accountant=c.accountant)
        self.sample_rate = batch_size / len(units)
        self.planned_steps = int(steps)
        self.noise_multiplier = c.noise_multiplier or calibrate_noise(
            sample_rate=self.sample_rate, steps=self.planned_steps, target_epsilon=c.target_epsilon,
            delta=c.delta, accountant=c.accountant, spent=self.spent)
        self._update_allowed_steps()

        # Opacus's backward hooks on the first layer (whose input needs no gradient) make torch warn once per
        # run; the per-sample gradients are still right (tested), so the warning is only noise for a user.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        if world > 1:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

            model = DifferentiallyPrivateDistributedDataParallel(model)  # every process starts from rank 0's weights
        hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=False)
        hooks.forbid_grad_accumulation()
        # Opacus draws the noise with ``device=param.device``: the generator must live there too (CUDA, MPS)
        noise = secret_generator(next(p for p in model.parameters() if p.requires_grad).device)
        kind = DistributedPatientDPOptimizer if world > 1 else PatientDPOptimizer
        self.optimizer = kind(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=c.max_grad_norm,
                              expected_batch_size=batch_size / world, loss_reduction="mean", generator=noise,
                              secure_mode=True)
        self.optimizer.attach_step_hook(self._on_step)
        sampler = PoissonUnitSampler(units, sample_rate=self.sample_rate, slices_per_unit=c.slices_per_patient,
                                     multiplicity=c.noise_multiplicity)
        sampling = _shared_secret_generator(world)
        dp_loader = UnitLoader(dataset, sampler, loader.collate_fn, steps_per_epoch=max(1, round(1 / self.sample_rate)),
                               next_generator=lambda: sampling, on_draw=self._on_draw, stop=self.exhausted,
                               rank=rank, world=world)
        return model, self.optimizer, dp_loader

    def steps_for(self, loader, epochs: float) -> int:
        """Steps of ``epochs`` DP epochs over ``loader`` (before :meth:`attach`), counted as ``cmrsynth
        privacy-budget`` counts them (:func:`~.privacy_planner.steps_for`; an epoch is 1/q steps)."""
        units = len(loader.dataset) if self.config.slice_level else len(loader.dataset.patient_index())
        return steps_for(epochs, units, loader.batch_size)

    def epsilon(self) -> float:
        """ε spent so far (composed budget included), from Opacus's accountant."""
        steps = sum(n for _, _, n in self.accountant.history)
        if self._epsilon_cache is None or self._epsilon_cache[0] != steps:
            eps = epsilon_of(self.accountant.history, delta=self.config.delta, accountant=self.config.accountant)
            self._epsilon_cache = (steps, eps)
        return self._epsilon_cache[1]

    def exhausted(self) -> bool:
        """True when the next step would take ε past the target (never with only --noise-multiplier)."""
        return self.allowed_steps is not None and self.run_steps >= self.allowed_steps

    def ledger(self) -> dict:
        c = self.config
        return make_ledger(
            self.accountant.history, accountant=c.accountant, delta=c.delta,
            unit="slice" if c.slice_level else "patient",
            max_slices_per_patient=self.max_slices if c.slice_level else None,
            noise_multiplier=self.noise_multiplier, max_grad_norm=c.max_grad_norm, sample_rate=self.sample_rate,
            patients=self.patients, slices_per_patient=c.slices_per_patient,
            noise_multiplicity=c.noise_multiplicity, target_epsilon=c.target_epsilon, run_steps=self.run_steps,
            init_model=self.init.model_id if self.init is not None else None,
            composed_from=self.init.composed if self.init is not None else ()).to_dict()

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.accountant.history], "run_steps": self.run_steps,
                "noise_multiplier": self.noise_multiplier}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved run: its accountant history (ε is never reset), its step count and its σ."""
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.run_steps = int(state["run_steps"])
        self.noise_multiplier = float(state["noise_multiplier"])
        if self.optimizer is not None:
            self.optimizer.noise_multiplier = self.noise_multiplier
            self._update_allowed_steps()
        self._epsilon_cache = None

    def identity(self) -> dict:
        """The DP arguments a resumed run must share with the saved one."""
        return {**self.config.to_dict(), "composed_from": list(self.init.composed) if self.init else []}

    # -- internals -----------------------------------------------------------------------------------
    def _update_allowed_steps(self) -> None:
        c = self.config
        if c.target_epsilon is None:
            self.allowed_steps = None
            return
        self.allowed_steps = max_steps(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                       target_epsilon=c.target_epsilon, delta=c.delta, accountant=c.accountant,
                                       spent=self.spent, limit=max(self.planned_steps, self.run_steps))

    def _on_draw(self, draw) -> None:
        import torch

        self.optimizer.set_groups(torch.tensor(draw.groups, dtype=torch.long))

    def _on_step(self, optimizer) -> None:
        self.accountant.step(noise_multiplier=optimizer.noise_multiplier, sample_rate=self.sample_rate)
        self.run_steps += 1


# Byte layout of torch's CPU generator state (CPUGeneratorImplState): a uint64 seed, int left, int seeded, a
# uint64 "next", then the 624 words of the mt19937 state, each stored in a uint64; 5056 bytes in all.
_CPU_STATE_BYTES, _MT_OFFSET, _MT_WORDS = 5056, 24, 624


def secret_generator(device) -> "torch.Generator":
    """A torch generator on ``device`` whose whole state comes from the OS's CSPRNG (:mod:`secrets`).

    Nobody, the user included, can reproduce what it draws, and nothing of it is stored. On CUDA and MPS
    (Philox) the 64-bit seed is the generator's whole key. On the CPU, torch seeds its mt19937 with only 32 bits
    of ``manual_seed``, which an adversary could enumerate; so all 624 state words are filled with secret bytes.
    """
    import numpy as np
    import torch

    device = torch.device(device)
    generator = torch.Generator(device=device)
    if device.type != "cpu":
        generator.manual_seed(secrets.randbits(64))
        return generator
    generator.manual_seed(0)  # a valid state (normal caches cleared, the next draw twists the words below)
    state = generator.get_state()
    if state.numel() != _CPU_STATE_BYTES:
        raise RuntimeError(f"torch's CPU generator state has {state.numel()} bytes, not {_CPU_STATE_BYTES}: "
                           "its layout changed, so secret_generator cannot fill it")
    words = np.frombuffer(secrets.token_bytes(4 * _MT_WORDS), dtype="<u4").astype("<u8")
    state[_MT_OFFSET:_MT_OFFSET + 8 * _MT_WORDS] = torch.frombuffer(bytearray(words.tobytes()), dtype=torch.uint8)
    generator.set_state(state)
    return generator


def _shared_secret_generator(world: int) -> "torch.Generator":
    """A CPU :func:`secret_generator`; with several processes, rank 0's state is sent to all of them (never
    written anywhere), so that every process draws the same Poisson sample."""
    import torch.distributed as dist

    generator = secret_generator("cpu")
    if world > 1:
        state = [generator.get_state()]
        dist.broadcast_object_list(state, src=0)
        generator.set_state(state[0])
    return generator


def _check_stage(generator) -> None:
    """A latent diffusion model is DP-trained only in its diffusion stage, on a frozen autoencoder from --init."""
    if getattr(generator, "family", None) == "ldm" and getattr(generator, "stage", None) != "diffusion":
        raise InputError("--dp with --generator ldm fine-tunes only the latent diffusion: --init must be an LDM "
                         "whose autoencoder was trained on public data and frozen (stage 'diffusion'); training "
                         "the autoencoder here would show it the private images without DP")


def check_module(model) -> None:
    """Raise InputError naming every layer for which Opacus cannot compute correct per-sample gradients.

    Opacus's ``ModuleValidator.fix`` would swap such layers (e.g. BatchNorm → GroupNorm), but that changes the
    model a checkpoint describes, so it is left to the user: the error says which layer to replace.
    """
    from opacus.validators import ModuleValidator
    from opacus.utils.module_utils import trainable_modules

    problems = []
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator is not None else []
        if not errors and any(True for _ in module.buffers()):
            errors = ["a trainable layer with buffers (per-sample statistics would leak across the batch)"]
        if errors:
            problems.append(f"{name or 'model'} ({type(module).__name__}): {errors[0]}")
    if problems:
        raise InputError("--dp: Opacus cannot train this model with differential privacy because of layer "
                         + "; ".join(problems) + " — use a model without these layers (e.g. GroupNorm instead of "
                         "BatchNorm)")


# -- the command line (``cmrsynth train`` adds these flags; see jobs/train.py) ------------------------------
def add_arguments(parser) -> None:
    group = parser.add_argument_group("differential privacy (DP-SGD with Opacus; the privacy unit is the patient)")
    group.add_argument("--dp", action="store_true",
                       help="train with DP-SGD: Poisson sampling of patients (--batch-size is the expected number "
                            "of patients per step, --epochs counts passes over the patients), per-patient clipping; "
                            "needs --delta, --max-grad-norm and --epsilon or --noise-multiplier")
    group.add_argument("--epsilon", type=float, default=None,
                       help="target ε: the noise is calibrated to it, and training stops before exceeding it "
                            "(with --dp, this or --noise-multiplier is required)")
    group.add_argument("--delta", type=float, default=None,
                       help="δ, below 1/patients of the training split (required with --dp)")
    group.add_argument("--max-grad-norm", type=float, default=None,
                       help="C: the norm each patient's gradient is clipped to (required with --dp; 1.0 is usual)")
    group.add_argument("--noise-multiplier", type=float, default=None,
                       help="σ set by hand instead of calibrated to --epsilon (default: calibrated)")
    group.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp",
                       help="Opacus accountant: rdp (Rényi DP) or prv (privacy random variables, tighter)")
    group.add_argument("--slice-level", action="store_true",
                       help="make the SLICE the privacy unit (weaker: the card then reports the patient-level "
                            "ε by group privacy over the most slices any patient has)")
    group.add_argument("--slices-per-patient", type=int, default=1,
                       help="k slices of each drawn patient per step, averaged before clipping")
    group.add_argument("--noise-multiplicity", type=int, default=1,
                       help="K noise levels per slice, averaged before clipping (DPDM)")


_DP_ONLY = {"--epsilon": ("epsilon", None), "--delta": ("delta", None), "--max-grad-norm": ("max_grad_norm", None),
            "--noise-multiplier": ("noise_multiplier", None), "--accountant": ("accountant", "rdp"),
            "--slice-level": ("slice_level", False), "--slices-per-patient": ("slices_per_patient", 1),
            "--noise-multiplicity": ("noise_multiplicity", 1)}


def from_args(args) -> DPTraining | None:
    """The privacy object for ``cmrsynth train`` arguments, or None without ``--dp`` (refuses DP flags then).

    With ``--init``, :func:`init_privacy` decides by patient identity what the init's history means here.
    """
    if not args.dp:
        given = [flag for flag, (dest, default) in _DP_ONLY.items() if getattr(args, dest) != default]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --dp")
        return None
    missing = [flag for flag in ("--delta", "--max-grad-norm") if getattr(args, _DP_ONLY[flag][0]) is None]
    if missing:
        raise InputError(f"--dp needs {' and '.join(missing)}")
    config = DPConfig(delta=args.delta, max_grad_norm=args.max_grad_norm, target_epsilon=args.epsilon,
                      noise_multiplier=args.noise_multiplier, accountant=args.accountant,
                      slice_level=args.slice_level, slices_per_patient=args.slices_per_patient,
                      noise_multiplicity=args.noise_multiplicity)
    if args.generator == "ldm" and not args.init:
        raise InputError("--dp with --generator ldm needs --init: an LDM whose autoencoder was trained on public "
                         "data (DP then fine-tunes its latent diffusion only)")
    if not args.init:
        return DPTraining(config)
    return DPTraining(config, init=init_privacy(args.init, args.data, unit="slice" if config.slice_level else "patient"))


def init_privacy(init: str, data: str, *, unit: str) -> InitPrivacy:
    """What ``init``'s whole lineage (:func:`~.membership.lineage`: the init, its own init, ...) means for a DP
    run on ``data``, decided by patient identity: each ancestor's members against the patients of ``data``.

    - an ancestor trained WITHOUT DP that saw any of them → refused: no guarantee could hold for those patients
      (also when it is not known whom it saw);
    - a DP ancestor that saw some of them, or whose patients are not known here (a shared copy without its
      membership file: the safe side) → its own run's history is spent budget on them: composed (its unit must
      be this run's ``unit``: ε of a slice-level history is not a patient-level ε);
    - a DP ancestor on other patients only → nothing to compose: its guarantee, for its own patients, still
      holds, and the new card's lineage states it.
    """
    from CMRSynthLib.data.cohorts import open_cohort
    from CMRSynthLib.training.checkpoint import read_card, resolve_model
    from CMRSynthLib.training.membership import lineage

    path = resolve_model(init)
    card = read_card(path)
    patients = set(open_cohort(data).patients())
    spent, composed = [], []
    for ancestor in reversed(lineage(card, path)):  # oldest first: the histories in the order they were spent
        overlap = None if ancestor.members is None else ancestor.members & patients
        if ancestor.privacy is None:
            _refuse_unprotected(ancestor, overlap, card, path)
        elif overlap != set():
            ledger = _ancestor_ledger(ancestor, path)
            _check_unit(ledger, unit, overlap, path)
            spent += ledger.own_history()
            composed.append(ancestor.model_id)
    return InitPrivacy(str(card.get("model_id")), tuple(spent), tuple(composed))


def _which(ancestor, card: dict) -> str:
    return "--init" if ancestor.model_id == str(card.get("model_id")) else f"--init's ancestor {ancestor.model_id}"


def _refuse_unprotected(ancestor, overlap: set | None, card: dict, path) -> None:
    """Refuse a lineage whose model trained without DP saw (or may have seen) the run's patients."""
    if overlap:
        raise InputError(f"{_which(ancestor, card)} was trained WITHOUT differential privacy on {len(overlap)} of "
                         "the patients in --data, so no DP guarantee can hold for them in a fine-tune of it; start "
                         "from a checkpoint whose lineage never saw them (public patients)", path=path)
    if overlap is None:
        raise InputError(f"{_which(ancestor, card)} was trained without differential privacy (or its privacy is "
                         "not recorded) on patients this copy does not name, so no DP guarantee can be checked "
                         "for the patients in --data; keep the model's PRIVATE-membership.json beside its folder, "
                         "or start from a model with a complete lineage record", path=path)


def _ancestor_ledger(ancestor, path) -> Ledger:
    try:
        return Ledger.from_dict(ancestor.privacy)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the lineage's model {ancestor.model_id} has an invalid privacy ledger ({exc})",
                         path=path) from None


def _check_unit(ledger: Ledger, unit: str, overlap: set | None, path) -> None:
    if ledger.unit != unit:
        seen = f"{len(overlap)} of the patients in --data" if overlap else "these patients (its members are unknown)"
        raise InputError(f"--init's lineage was DP-trained with a {ledger.unit}-level ledger on {seen}; this run is "
                         f"{unit}-level, and budgets of different privacy units cannot be composed "
                         f"(use {'--slice-level' if ledger.unit == 'slice' else 'patient-level DP'} to match it)",
                         path=path)
