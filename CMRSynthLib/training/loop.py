"""The training loop: one :class:`Trainer` for every generator family, on one process or under torchrun.

A run reads a cohort (:mod:`.data`), builds the generator from a preset (or ``--init`` checkpoint), and
takes AdamW steps on ``generator.loss(images, cond).mean()`` with LR warm-up and a constant or cosine
schedule, global gradient clipping, an EMA of the weights (:mod:`.ema`), and mixed precision on CUDA.
Every ``save_every`` steps and at the end it writes a checkpoint folder atomically (:mod:`.checkpoint`),
with the trainer state needed to resume.

Determinism: every random draw is a function of ``(seed, step, rank)``: the data order comes from
:class:`.distributed.ResumableSampler` (seed + epoch) and the loss's noise and any dropout from
generators reseeded at each step. So a resumed run needs no saved RNG state, and ends with exactly the
weights of an uninterrupted run (on CPU).

Hooks for differential privacy (``training/privacy.py``, owned by the DP work)
-------------------------------------------------------------------------------
The trainer builds its parts in small factory methods a subclass or the privacy object can rely on:

- :meth:`Trainer.make_model` → a :class:`LossModel` (DDP-wrapped under torchrun, unless ``P`` is given: it
  then wraps the model itself) whose ``forward`` returns the per-sample losses ``(B,)``; the loop takes
  ``.mean()``.
- :meth:`Trainer.make_optimizer` → AdamW over the generator's parameters.
- :meth:`Trainer.make_loader` → a DataLoader over the member slices (or stacks).

``Trainer(config, privacy=P)`` with ``P`` implementing::

    P.attach(model, optimizer, loader, *, steps) -> (model, optimizer, loader)  # e.g. Opacus make_private
    P.steps_for(loader, epochs) -> int  # the steps of `epochs` epochs, as the DP planner counts them
    P.epsilon() -> float               # spent so far, reported with every progress update
    P.ledger() -> dict                 # stored as card["privacy"]
    P.state_dict() -> dict             # JSON-able; stored in trainer_state.json["privacy"] for resuming
    P.load_state_dict(state) -> None
    P.identity() -> dict               # DP arguments that are part of the run's identity (resume check)

When ``P`` is given the trainer does not clip the aggregated gradient (DP-SGD clips per sample), and
``len(loader)`` after ``attach`` is the number of steps per epoch. The DP loader yields ``None`` for a Poisson
draw with no patient: a step all the same, taken as the optimizer's ``noise_only_step`` (no loss is recorded).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from CMRSynthLib.data.conventions import MNMS_VENDORS
from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.base import Conditions, Vocabulary
from CMRSynthLib.training import checkpoint as ckpt
from CMRSynthLib.training import distributed
from CMRSynthLib.training.config import DEFAULT_ADVERSARIAL_WEIGHT, TrainConfig, named, without_path
from CMRSynthLib.training.ema import EMA
from CMRSynthLib.training.membership import (SPLITS, descendant_lineage, lineage, membership_path, read_membership,
                                             write_membership)

DEFAULT_EPOCHS = 100
DEFAULT_PRESET, DEFAULT_IMAGE_SIZE, DEFAULT_SPATIAL_DIMS = "small", 64, 2
DEFAULT_AUTOENCODER_FRACTION = 0.3
PUBLIC_VENDORS = tuple(MNMS_VENDORS.values())  # a DP model's vocabulary unless --vendors or --init says otherwise
WHOLE_FIELD_AUTOENCODER_PATCH = 96
DISCRIMINATOR_LR_SCALE = 4.0
FIELD_OF_VIEW_MM = 192.0  # default in-plane field of view: spacing = FIELD_OF_VIEW_MM / image_size


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    total_steps: int
    final_loss: float | None
    resumed_from: int  # step the run resumed from (0 for a fresh run)
    already_finished: bool = False


class LossModel(nn.Module):
    """The module DDP and Opacus wrap: ``forward`` is the generator's per-sample training loss ``(B,)``."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, images: torch.Tensor, mask: torch.Tensor, vendor: torch.Tensor, phase: torch.Tensor,
                group: torch.Tensor, noise: torch.Generator | None = None) -> torch.Tensor:
        return self.generator.loss(images, Conditions(mask, vendor, phase, group), generator=noise)


class DecoderLossModel(LossModel):
    """An LDM's decoder stage: ``forward`` is the decoder's and the discriminator's per-sample loss ``(B,)``
    (:meth:`~CMRSynthLib.models.autoencoder.SliceAutoencoder.adversarial_loss`). The discriminator is training
    state, like the optimizer's: it is saved with the trainer state, not in the model."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, weight: float):
        super().__init__(generator)
        self.discriminator, self.weight = discriminator, weight

    def forward(self, images: torch.Tensor, mask: torch.Tensor, vendor: torch.Tensor, phase: torch.Tensor,
                group: torch.Tensor, noise: torch.Generator | None = None) -> torch.Tensor:
        return self.generator.autoencoder.adversarial_loss(images, self.discriminator, self.weight, generator=noise)


def resolve_device(name: str, world: distributed.World) -> torch.device:
    """``auto`` → CUDA, else MPS, else CPU. Refuses a device this machine does not have."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: Apple MPS is not available on this machine")
    return torch.device("cuda", world.local_rank) if name == "cuda" else torch.device(name)


def lr_at(step: int, *, base: float, total: int, warmup: int, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of all randomness at one step of one process."""
    return (seed * 1_000_003 + step * 8191 + rank * 131) % (2**63 - 1)


class Trainer:
    """Runs one training configuration to completion (or resumes it). See the module docstring."""

    def __init__(self, config: TrainConfig, *, progress=None, privacy=None,
                 world: distributed.World | None = None):
        from CMRSynthLib.jobs.progress import Progress

        self.config = config
        self.world = world or distributed.world_from_env()
        self.progress = progress if (progress is not None and self.world.is_main) else Progress("none")
        self.privacy = privacy
        self.out = Path(config.out)
        self.discriminator: nn.Module | None = None  # an LDM decoder stage's (make_model)

    # -- the factories (hooks) -------------------------------------------------------------------
    def make_generator(self, vocabulary, init: ckpt.CheckpointContents | None, *, depth: int | None = None):
        """The generator of ``config.family`` from its preset, or from ``init``'s config and weights.

        ``depth`` (3D) is the slices per stack: the generator's ``image_size`` is ``(depth, H, W)``.
        """
        from CMRSynthLib.generators import build_generator, config_to_dict, preset_config

        c = self.config
        size = c.image_size or DEFAULT_IMAGE_SIZE
        image_size = size if depth is None else (depth, size, size)
        if init is not None:
            if init.card["family"] != c.family:
                raise InputError(f"--init is a {init.card['family']} model; --generator {c.family} cannot "
                                 "fine-tune it", path=init.path)
            config = ckpt.card_config(init.card, path=init.path)
            generator = build_generator(c.family, self._with_guidance(config))
            wanted = None
            if any(v is not None for v in (c.preset, c.image_size, c.spatial_dims)):
                wanted = preset_config(c.family, c.preset or DEFAULT_PRESET, vocabulary=vocabulary,
                                       image_size=image_size, spatial_dims=c.spatial_dims or DEFAULT_SPATIAL_DIMS)
            if wanted is not None and config_to_dict(wanted) != config_to_dict(config):
                raise InputError("--preset/--image-size/--spatial-dims describe a different model than --init; "
                                 "leave them out to fine-tune the checkpoint's own configuration", path=init.path)
            weights = init.ema or init.weights
            if c.heart_coordinates and not config.heart_coordinates:  # c: flow or ldm only (TrainConfig)
                weights = _with_coordinate_inputs(weights, generator.state_dict())
            ckpt.load_weights(generator, weights, path=init.path / ckpt.WEIGHTS)
            if c.stage is not None and generator.stage == "autoencoder":
                raise InputError("--stage: --init has not finished training its autoencoder (a run stopped before "
                                 "its latent stage); resume that run instead", path=init.path)
            if c.stage is not None or getattr(generator, "stage", None) == "decoder":
                generator.stage = c.stage or "diffusion"  # a fine-tune trains the latent network unless told
            return generator
        config = preset_config(c.family, c.preset or DEFAULT_PRESET, vocabulary=vocabulary,
                               image_size=image_size, spatial_dims=c.spatial_dims or DEFAULT_SPATIAL_DIMS)
        return build_generator(c.family, self._with_guidance(self._with_autoencoder_patch(config)))

    def _with_guidance(self, config):
        """The config with ``--mask-dropout``, ``--guidance`` and ``--heart-coordinates`` where given (a
        fine-tune can learn to go without the mask, choose the weight it samples with, and gain the coordinate
        inputs: :func:`_with_coordinate_inputs`)."""
        c = self.config
        given = {k: v for k, v in (("p_mask_uncond", c.mask_dropout), ("guidance", c.guidance),
                                   ("heart_coordinates", c.heart_coordinates)) if v is not None}
        try:
            return replace(config, **given) if given else config
        except ValueError as error:
            raise InputError(f"--mask-dropout/--guidance/--heart-coordinates: {error}") from None

    def _with_autoencoder_patch(self, config):
        """An LDM config whose autoencoder trains on ``--autoencoder-patch`` squares (default: 96 pixels for a
        whole field of view, where whole slices would cost it several times more per step)."""
        c = self.config
        patch = c.autoencoder_patch or (WHOLE_FIELD_AUTOENCODER_PATCH if c.field_of_view == "whole" else 0)
        if c.family != "ldm" or not patch:
            return config
        try:
            return replace(config, autoencoder=replace(config.autoencoder, train_patch=patch))
        except ValueError as error:
            raise InputError(f"--autoencoder-patch {patch}: {error}") from None

    def make_model(self, generator: nn.Module) -> nn.Module:
        if getattr(generator, "stage", None) == "decoder":
            from CMRSynthLib.models.autoencoder import patch_discriminator

            self.discriminator = self.discriminator or patch_discriminator()
            weight = self.config.adversarial_weight
            model = DecoderLossModel(generator, self.discriminator,
                                     DEFAULT_ADVERSARIAL_WEIGHT if weight is None else weight).to(self.device)
        else:
            model = LossModel(generator).to(self.device)
        if self.privacy is not None:  # DP-SGD reduces clipped, noised gradients itself (privacy.attach)
            return model
        return distributed.wrap(model, self.world, self.device)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        if self.discriminator is not None:  # the GAN convention: β1 0.5, the discriminator learns 4× faster
            theirs = list(self.discriminator.parameters())
            ids = {id(p) for p in theirs}
            groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in ids]},
                      {"params": theirs, "lr_scale": DISCRIMINATOR_LR_SCALE}]
            return torch.optim.AdamW(groups, lr=c.lr, betas=(0.5, 0.9), weight_decay=c.weight_decay)
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    def make_loader(self, dataset) -> torch.utils.data.DataLoader:
        from CMRSynthLib.data.datasets import collate

        self.sampler = distributed.ResumableSampler(dataset, self.world, seed=self.config.seed)
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, sampler=self.sampler,
                                           collate_fn=collate, num_workers=0)

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        c = self.config
        self.device = resolve_device(c.device, self.world)
        distributed.start(self.world, self.device)
        try:
            return self._run()
        finally:
            distributed.stop(self.world)

    def _run(self) -> TrainResult:
        c = self.config
        previous = self._previous_run()
        if previous is not None and previous.trainer_state.info.get("finished") and not c.force:
            info = previous.trainer_state.info
            return TrainResult(self.out, info["step"], info["total_steps"], info.get("final_loss"),
                               info["step"], already_finished=True)
        resume = previous if previous is not None and not c.force else None
        init = ckpt.read_checkpoint(c.init) if c.init else None
        precision = self._precision()

        torch.manual_seed(c.seed)
        from CMRSynthLib.training.data import load_training_data

        preprocessing = self._preprocessing(init)
        vocabulary = self._vocabulary(init)
        depth = int(init.card["config"]["image_size"][0]) if init is not None and self._spatial_dims(init) == 3 \
            else c.depth
        if depth is None and self.privacy is not None and self._spatial_dims(init) == 3:
            raise InputError("--dp with --spatial-dims 3 needs --depth (or a 3D --init model): the default, the "
                             "deepest stack of the patients, would publish a fact of the private data in the card")
        data = load_training_data(c.data, preprocessing=preprocessing, spatial_dims=self._spatial_dims(init),
                                  seed=c.seed, train_patients=c.train_patients, vocabulary=vocabulary, depth=depth)
        self._warn_null_vendors(data.null_vendors, data.vocabulary, init)
        torch.manual_seed(c.seed)
        generator = self.make_generator(data.vocabulary, init, depth=data.depth).to(self.device)
        ema = EMA(generator, decay=c.ema_decay)
        info = {"step": 0, "history": [], "wall_seconds": 0.0}
        if resume is not None:  # weights first: they carry an LDM's stage, which decides what trains
            info = self._restore_weights(resume, generator, ema)
            if self.privacy is not None:  # a DP run keeps its loss curve beside the folder
                private = read_membership(self.out)
                if private.get("step") == info["step"]:  # else it is from a save that did not complete
                    info.update(history=private["loss_curve"], window=private["window"])
        model = self.make_model(generator)
        if resume is not None and "discriminator" in info:
            self.discriminator.load_state_dict(ckpt.unpack_state(info["discriminator"], resume.trainer_state.tensors))
        optimizer = self.make_optimizer(model)
        loader = self.make_loader(data.dataset)
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise InputError("the training set is empty after preprocessing", path=c.data)
        total = self._total_steps(loader, steps_per_epoch)
        self.switch_step = info["switch_step"] if resume is not None else self._switch_step(generator, total)
        if resume is not None:
            optimizer.load_state_dict(ckpt.unpack_state(info["optimizer"], resume.trainer_state.tensors))
        if self.privacy is not None:
            if self.discriminator is not None:
                raise InputError("--dp cannot train --stage decoder: its discriminator learns from the private "
                                 "images without DP; sharpen the decoder on public data, then fine-tune with --dp")
            if self.switch_step is not None:
                raise InputError("--dp cannot train an LDM's autoencoder stage; pre-train the LDM without DP "
                                 "(public data) and fine-tune it with --init")
            model, optimizer, loader = self.privacy.attach(model, optimizer, loader, steps=total)
            steps_per_epoch = len(loader)
            if resume is not None and "privacy" in info:
                self.privacy.load_state_dict(info["privacy"])
        scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        if resume is not None and info.get("scaler"):
            scaler.load_state_dict(info["scaler"])

        ancestry = lineage(init.card, init.path) if init is not None else []
        parts = _Parts(generator, ema, model, optimizer, loader, scaler, precision, data, init, ancestry)
        return self._loop(parts, info, total=total, steps_per_epoch=steps_per_epoch)

    def _loop(self, parts: "_Parts", info: dict, *, total: int, steps_per_epoch: int) -> TrainResult:
        c = self.config
        step = start = info["step"]
        history = [list(h) for h in info["history"]]
        window = max(1, total // 100)  # the loss curve keeps the mean loss of every window of steps
        self.window_sum, self.window_n = info.get("window", (0.0, 0))
        self._clock = (time.monotonic(), time.process_time(), float(info.get("wall_seconds", 0.0)),
                       float(info.get("cpu_seconds", 0.0)))
        noise = torch.Generator(device=self.device)
        self.progress.start("train", total=total, family=c.family, resumed_from=start)
        parts.generator.train()
        while step < total:
            self._start_epoch(parts, step, steps_per_epoch)
            drawn = False
            for batch in parts.loader:
                drawn = True
                if step == self.switch_step:
                    self._start_diffusion_stage(parts, batch[0])
                loss = self._train_step(parts, batch, step, noise, total=total)
                step += 1
                if loss is not None:
                    self.window_sum, self.window_n = self.window_sum + loss, self.window_n + 1
                if step % window == 0 or step == total:
                    mean = self._window_mean()
                    if mean is not None:
                        history.append([step, mean])
                    epsilon = self.privacy.epsilon() if self.privacy is not None else None
                    self.progress.update(step, loss=mean, epsilon=epsilon)
                if step == total or (c.save_every and step % c.save_every == 0):
                    self._save(parts, step=step, total=total, steps_per_epoch=steps_per_epoch, history=history)
                if step == total:
                    break
            if not drawn:  # the loader has stopped for good (a DP loader does once the budget is spent)
                break
        if step < total:
            self.progress.warning(f"training stopped at step {step} of {total}: the data loader gave no more "
                                  "batches (the privacy budget is spent)")
            total = step
            self._save(parts, step=step, total=total, steps_per_epoch=steps_per_epoch, history=history)
        final = history[-1][1] if history else None
        self.progress.done(out=str(self.out), steps=step, final_loss=final)
        return TrainResult(self.out, step, total, final, start)

    def _start_epoch(self, parts: "_Parts", step: int, steps_per_epoch: int) -> None:
        """Tell the data where the run is: the resumable sampler's epoch and skip, or under DP (Poisson draws,
        no sampler of ours) the dataset's epoch alone, so that whole-field tiles move from epoch to epoch."""
        epoch, offset = divmod(step, steps_per_epoch)
        if getattr(parts.loader, "sampler", None) is getattr(self, "sampler", False):
            self.sampler.start_epoch(epoch, skip=offset * self.config.batch_size)
        elif hasattr(parts.loader.dataset, "epoch"):
            parts.loader.dataset.epoch = epoch

    def _window_mean(self) -> float | None:
        """The mean loss of the steps since the last point of the loss curve (None if all were noise-only)."""
        total, n = self.window_sum, self.window_n
        self.window_sum, self.window_n = 0.0, 0
        return distributed.mean_across(self.world, total / n, self.device) if n else None

    def _train_step(self, parts: "_Parts", batch, step: int, noise: torch.Generator, *,
                    total: int) -> float | None:
        """One optimizer step on ``batch``; its mean loss, or None for a DP noise-only step (``batch`` None)."""
        c = self.config
        start, end = self._stage_bounds(step, total)
        for group in parts.optimizer.param_groups:
            group["lr"] = group.get("lr_scale", 1.0) * lr_at(step - start, base=c.lr, total=end - start,
                                                             warmup=c.warmup, schedule=c.lr_schedule)
        if batch is None:  # a Poisson draw with no patient: DP-SGD's step of noise alone
            parts.optimizer.noise_only_step()
            parts.ema.update(parts.generator)
            return None
        images, cond, _ = batch
        images, cond = images.to(self.device), cond.to(self.device)
        torch.manual_seed(step_seed(c.seed, step, self.world.rank))
        noise.manual_seed(step_seed(c.seed, step, self.world.rank) + 1)
        with torch.autocast(self.device.type, dtype=parts.precision, enabled=parts.precision != torch.float32):
            losses = parts.model(images, cond.mask, cond.vendor, cond.phase, cond.group, noise)
        loss = losses.float().mean()
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        if c.grad_clip and self.privacy is None:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in parts.optimizer.param_groups for p in g["params"]],
                                           c.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.ema.update(parts.generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"training diverged: the loss is {value} at step {step}; lower --lr")
        return value

    # -- checkpoints and resuming -------------------------------------------------------------------
    def _previous_run(self) -> ckpt.CheckpointContents | None:
        """The unfinished or finished run in ``out``, None for a new or empty folder (refuses others)."""
        out = self.out
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            return None
        if not (out / ckpt.CARD).is_file():
            raise InputError("--out is not empty and holds no CMRSynth training run; choose a new or empty "
                             "folder", path=out)
        previous = ckpt.read_checkpoint(out, trainer_state=True)
        if previous.trainer_state is None:
            if self.config.force:
                return None
            raise InputError("--out holds a checkpoint without trainer state (it cannot be resumed); use "
                             "--force to replace it or choose another folder", path=out)
        recorded = previous.trainer_state.info.get("arguments", {})
        stored = _effective_field_of_view({**named(recorded), "sources": recorded.get("sources") or _sources(
            recorded.get("data", ""), recorded.get("init"))})  # a record from before "sources": its full paths
        mine = _effective_field_of_view(self._identity())
        # an argument added after the run started is absent from its record: at its default (None), the same run
        differ = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        if differ and not self.config.force:
            detail = ", ".join(f"{k}: {stored.get(k)!r} → {mine.get(k)!r}" for k in differ[:4])
            raise InputError(f"--out holds a run with other arguments ({detail}); pass the same arguments to "
                             "resume it, --force to start over, or choose another folder", path=out)
        return previous

    @functools.cached_property
    def _exact_sources(self) -> dict:
        """This run's :func:`_sources`, read once (the identity is written with every checkpoint)."""
        return _sources(self.config.data, self.config.init)

    def _identity(self) -> dict:
        identity = {**self.config.identity(), "world_size": self.world.size,
                    "sources": self._exact_sources}
        if self.privacy is not None:
            identity["privacy"] = self.privacy.identity()
        return identity

    def _restore_weights(self, previous: ckpt.CheckpointContents, generator, ema: EMA) -> dict:
        state = previous.trainer_state
        ckpt.load_weights(generator, previous.weights, path=previous.path / ckpt.WEIGHTS)
        ema.load_state_dict(previous.ema, updates=state.info["ema_updates"])
        info = dict(state.info)
        info["scaler"] = ckpt.unpack_state(info.get("scaler", {}), state.tensors)
        return info

    def _elapsed(self) -> dict:
        """Wall and CPU seconds of the whole run so far (a resumed run adds its earlier processes')."""
        t0, cpu0, wall_before, cpu_before = self._clock
        return {"wall_seconds": round(wall_before + time.monotonic() - t0, 1),
                "cpu_seconds": round(cpu_before + time.process_time() - cpu0, 1)}

    def _save(self, parts: "_Parts", *, step: int, total: int, steps_per_epoch: int, history: list) -> None:
        if self.world.is_main:
            tensors: dict[str, torch.Tensor] = {}
            finished = step == total
            info = {"step": step, "total_steps": total, "finished": finished, "history": history,
                    "switch_step": self.switch_step, "window": [self.window_sum, self.window_n],
                    **self._elapsed(), "final_loss": history[-1][1] if history else None,
                    "arguments": self._identity(), "ema_updates": parts.ema.updates,
                    "optimizer": ckpt.pack_state(parts.optimizer.state_dict(), tensors, "optimizer"),
                    "scaler": ckpt.pack_state(parts.scaler.state_dict(), tensors, "scaler")}
            if self.discriminator is not None:
                info["discriminator"] = ckpt.pack_state(self.discriminator.state_dict(), tensors, "discriminator")
            card = self._card(parts, step=step, total=total, steps_per_epoch=steps_per_epoch, history=history)
            if self.privacy is not None:
                info["privacy"] = self.privacy.state_dict()
                self._save_private(parts, info, card)
            else:  # the paths of this machine and, for a DP ancestor, whom it saw: not in the card
                write_membership(self.out, self._private_record(parts))
                if any(ancestor.privacy is not None for ancestor in parts.lineage):
                    card["membership"] = (f"whom its DP ancestors saw is kept beside this folder, not in it: "
                                          f"{membership_path(self.out).name}")
            ckpt.save_checkpoint(self.out, parts.generator, card, ema=parts.ema.state_dict(),
                                 trainer_state=ckpt.TrainerState(tensors, info))
            self.progress.artefact(str(self.out), "checkpoint")
        distributed.barrier(self.world)

    def _save_private(self, parts: "_Parts", info: dict, card: dict) -> None:
        """A DP run's folder keeps nothing computed from the private data outside DP-SGD: the patient lists,
        the data fingerprint and the loss curve move from ``card``/``info`` to the membership file beside it."""
        private = {**self._private_record(parts), **{name: card.pop(name) for name in SPLITS}}
        private["data"], card["data"] = card["data"], {k: card["data"][k] for k in ("layout", "simulated")}
        for key in ("loss_curve", "final_loss"):
            private[key], card["training"][key] = card["training"][key], None
        private["window"], info["window"], private["step"] = info["window"], [0.0, 0], info["step"]
        info["history"], info["final_loss"] = [], None
        card["membership"] = f"kept beside this folder, not in it: {membership_path(self.out).name}"
        write_membership(self.out, private)

    def _epochs(self, step: int, steps_per_epoch: int) -> float:
        """Passes over the data after ``step`` steps: under DP ``step · q`` (each step draws each patient with
        probability q; the loader's pass of round(1/q) steps is only a rounding of it)."""
        return step * self.privacy.sample_rate if self.privacy is not None else step / steps_per_epoch

    def _private_record(self, parts: "_Parts") -> dict:
        """What the membership file beside the folder keeps of any run: whom each ancestor saw, and the command
        with its paths (the card names folders, it does not locate them)."""
        return {"lineage": descendant_lineage(parts.lineage, dp=self.privacy is not None)[1],
                "command": list(sys.argv), "paths": {"data": str(self.config.data), "init": self.config.init}}

    def _card(self, parts: "_Parts", *, step, total, steps_per_epoch, history) -> dict:
        import monai

        from CMRSynthLib import __version__

        data, c = parts.data, self.config
        card = {
            "vocabulary": data.vocabulary.to_dict(), "preprocessing": data.preprocessing.to_dict(),
            "dataset": self._dataset(parts),
            "data": data.fingerprint, "members": list(data.members), "validation": list(data.validation),
            "holdout": list(data.holdout), "unused": list(data.unused), "intensity": self._intensity(parts),
            "privacy": self.privacy.ledger() if self.privacy is not None else None,
            "lineage": descendant_lineage(parts.lineage, dp=self.privacy is not None)[0],
            "training": {
                "steps": step, "total_steps": total, "epochs": round(self._epochs(step, steps_per_epoch), 3),
                "steps_per_epoch": steps_per_epoch, "seed": c.seed, "batch_size": c.batch_size,
                "autoencoder_steps": self.switch_step,
                "world_size": self.world.size, "device": self.device.type, "precision": str(parts.precision),
                "arguments": c.identity(), "init": parts.init.card["model_id"] if parts.init else None,
                "loss_curve": history, "final_loss": history[-1][1] if history else None,
                **self._elapsed(), "command": [without_path(word) for word in sys.argv],
                "versions": {"cmrsynth": __version__, "torch": torch.__version__, "monai": monai.__version__,
                             "python": sys.version.split()[0]},
            },
        }
        if parts.init is not None and parts.init.card.get("cascade"):  # a fine-tune keeps its init's coarse stage
            card["cascade"] = parts.init.card["cascade"]
        return card

    def _dataset(self, parts: "_Parts") -> dict | None:
        """The card's "dataset": the training data's source; a fine-tune also names its --init model's."""
        source = parts.data.source
        if parts.init is not None and parts.init.card.get("dataset"):
            return {**(source or {"name": "a user's cohort"}), "pretrained_on": parts.init.card["dataset"]}
        return source

    def _intensity(self, parts: "_Parts") -> dict | None:
        """The intensities samples are de-normalised to. Under DP the private data's statistics are not
        released: a fine-tune keeps its --init model's (public) ones, a DP run from scratch has none."""
        if self.privacy is None:
            return parts.data.intensity
        return parts.init.card.get("intensity") if parts.init is not None else None

    # -- the two stages of a latent diffusion model ---------------------------------------------------
    def _switch_step(self, generator, total: int) -> int | None:
        """The step at which an LDM starting in its autoencoder stage moves on to latent diffusion."""
        if getattr(generator, "stage", None) != "autoencoder":
            return None
        fraction = self.config.autoencoder_fraction or DEFAULT_AUTOENCODER_FRACTION
        return min(total - 1, max(1, round(total * fraction)))

    def _stage_bounds(self, step: int, total: int) -> tuple[int, int]:
        """First and end step of the stage ``step`` is in (each stage has its own warm-up and schedule)."""
        if self.switch_step is None:
            return 0, total
        return (0, self.switch_step) if step < self.switch_step else (self.switch_step, total)

    def _start_diffusion_stage(self, parts: "_Parts", images: torch.Tensor) -> None:
        """Freeze the autoencoder (latent scale from this batch), restart the EMA from the current weights,
        and rebuild the model wrapper and optimizer over the latent network's parameters."""
        parts.generator.freeze_autoencoder(images.to(self.device))
        parts.generator.zero_grad(set_to_none=True)  # the autoencoder's last gradients must not linger
        parts.ema.load_state_dict(parts.generator.state_dict(), updates=0)
        parts.model = self.make_model(parts.generator)
        parts.optimizer = self.make_optimizer(parts.model)

    # -- small decisions -----------------------------------------------------------------------------
    def _precision(self) -> torch.dtype:
        name, device = self.config.precision, self.device
        # fp16 needs GradScaler, whose decision to skip a step depends on the (private) gradients and is not
        # accounted by DP-SGD; bf16 and fp32 need no scaler
        if name == "fp16" and self.privacy is not None:
            raise InputError("--precision fp16 cannot be used with --dp: the loss scaler skips steps depending on the "
                             "private gradients, outside the DP mechanism; use --precision bf16 or fp32")
        if name in ("fp16", "bf16") and device.type != "cuda":
            raise InputError(f"--precision {name} needs --device cuda (mixed precision is CUDA-only here)")
        if name == "auto":
            if device.type != "cuda":
                return torch.float32
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float16 if self.privacy is None else torch.float32
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]

    def _vocabulary(self, init) -> Vocabulary | None:
        """The vendors the model knows: ``init``'s, ``--vendors``, or (None) the members' own. Under DP the card
        must not reveal which vendors the private patients come from (a rare vendor outs its patient), so the
        members' own are never used: :data:`PUBLIC_VENDORS` instead."""
        if init is not None:
            return Vocabulary.from_dict(init.card["vocabulary"])
        if self.config.vendors is not None:
            return Vocabulary(vendors=self.config.vendors)
        return Vocabulary(vendors=PUBLIC_VENDORS) if self.privacy is not None else None

    def _warn_null_vendors(self, vendors: tuple[str, ...], vocabulary: Vocabulary, init) -> None:
        """Say that the training patients of ``vendors``, which the model's vocabulary lacks, train its null
        (vendor-free) token: the model learns their anatomy and images, not their vendor's style, and cannot be
        asked for it. The vocabulary is not widened: a DP card would then name the private cohort's vendors."""
        if not vendors:
            return
        source = ("its --init model's" if init is not None else "--vendors" if self.config.vendors is not None
                  else "the public vendors of a DP model")
        self.progress.warning(
            f"vendors {', '.join(vendors)} of the training patients are not in the model's vocabulary "
            f"({', '.join(vocabulary.vendors) or 'none'}, {source}): their images train the null (vendor-free) token, "
            "as vendor 'unknown' does; the model will not render them as a style")

    def _spatial_dims(self, init) -> int:
        if init is not None and self.config.spatial_dims is None:
            return int(init.card["config"].get("spatial_dims", DEFAULT_SPATIAL_DIMS))
        return self.config.spatial_dims or DEFAULT_SPATIAL_DIMS

    def _preprocessing(self, init):
        from CMRSynthLib.data.preprocess import PreprocessConfig

        wanted = self.config.field_of_view
        if init is not None:
            preprocessing = PreprocessConfig.from_dict(init.card["preprocessing"])
            if wanted not in (None, preprocessing.field_of_view):
                raise InputError(f"--field-of-view {wanted}: --init is a {preprocessing.field_of_view} field-of-view "
                                 "model; leave it out to fine-tune the checkpoint's own", path=init.path)
            return preprocessing
        size = self.config.image_size or DEFAULT_IMAGE_SIZE
        spacing = self.config.spacing or round(FIELD_OF_VIEW_MM / size, 4)
        return PreprocessConfig(spacing=(spacing, spacing), size=(size, size), field_of_view=wanted or "heart")

    def _total_steps(self, loader, steps_per_epoch: int) -> int:
        """``--max-steps`` or the steps of ``--epochs``, whichever is fewer. Under DP an epoch is 1/q steps
        (each patient drawn once on average), counted as ``cmrsynth privacy-budget`` counts them."""
        c = self.config
        epochs = c.epochs if c.epochs is not None else (None if c.max_steps is not None else DEFAULT_EPOCHS)
        by_epochs = epochs and (self.privacy.steps_for(loader, epochs) if self.privacy is not None
                                else epochs * steps_per_epoch)
        return int(min(n for n in (c.max_steps, by_epochs) if n))


def _sources(data: str, init: str | None) -> dict:
    """What a resumed run must share exactly, though its identity names folders only (``data``/``init`` by name):
    a digest of the data folder's absolute path, and the ``--init`` model's ``model_id``. Another cohort or init
    of the same folder name would otherwise resume the run, and its card would name the wrong lineage."""
    import hashlib

    model = None
    if init:
        try:
            model = ckpt.read_card(ckpt.resolve_model(init))["model_id"]
        except InputError:
            model = f"missing: {without_path(init)}"
    return {"data": hashlib.sha256(os.path.abspath(data).encode()).hexdigest()[:16], "init": model}


def _effective_field_of_view(arguments: dict) -> dict:
    """A run's arguments with the field of view it builds: a fine-tune's init's (None), else the value or
    "heart". Runs recorded before ``--field-of-view`` lost its default hold "heart" where a fine-tune ignored it:
    they resume as the same run."""
    field = None if arguments.get("init") else arguments.get("field_of_view") or "heart"
    return {**arguments, "field_of_view": field}


def _with_coordinate_inputs(weights: dict, expected: dict) -> dict:
    """``weights`` of a model without heart coordinates, its first convolution widened with zero weights for
    the two coordinate channels (the last inputs: image, mask, coordinates), so that the fine-tune starts from
    exactly the ``--init`` model's outputs and learns how much to use them."""
    key = "net.unet.conv_in.conv.weight"
    if key not in weights or key not in expected:
        return weights
    old, new = weights[key], expected[key]
    if new.shape[1] != old.shape[1] + 2:
        return weights  # not the model this is for: load_weights names the mismatch
    zeros = old.new_zeros((old.shape[0], 2, *old.shape[2:]))
    return {**weights, key: torch.cat([old, zeros], dim=1)}


@dataclass
class _Parts:
    generator: nn.Module
    ema: EMA
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    scaler: torch.amp.GradScaler
    precision: torch.dtype
    data: object
    init: ckpt.CheckpointContents | None
    lineage: list  # the --init's lineage (membership.Ancestor, nearest first); empty without --init
