"""The arguments of one training run, as a frozen dataclass (what ``cmrsynth train`` parses into).

A run's *identity* is every field except the operational ones (``out``, ``device``, ``save_every``,
``force``): resuming an unfinished run requires the same identity, and the card records it. The identity names
its data and ``--init`` folders and does not locate them (:func:`without_path`): a card is shared, and the
training machine's paths are not the recipient's business (a DP run keeps them in its private record).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import PurePath

from CMRSynthLib.errors import InputError
from CMRSynthLib.models.config import strict_from_dict

LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PRESETS = ("tiny", "small", "base")
OPERATIONAL = ("out", "device", "save_every", "force")
GUIDED_FAMILIES = ("flow", "ldm")  # the families whose config holds p_mask_uncond, guidance, heart_coordinates
STAGES = ("diffusion", "decoder")  # what an LDM fine-tune may train (its autoencoder stage belongs to a new model)
DEFAULT_ADVERSARIAL_WEIGHT = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``preset``/``image_size``/``spatial_dims`` None means: from ``init``, else the default.

    Attributes:
        data: cohort folder. family: generator family. out: checkpoint folder.
        max_steps / epochs: the run stops at whichever comes first (epochs default 100 when neither is set).
        spacing: in-plane mm per pixel (None: a 192 mm field of view at ``image_size``).
        depth: 3D only, slices per stack (None: the deepest stack, rounded up to a multiple of 8; a DP run
        without ``init`` must give it, the deepest stack being a fact of the private data).
        vendors: the vendor names a new model knows (None: the members' vendors; under DP, whose card may
        not reveal the members' vendors, :data:`~CMRSynthLib.training.loop.PUBLIC_VENDORS`). A fine-tune keeps
        its ``init``'s vocabulary.
        warmup: linear LR warm-up steps. grad_clip: max global gradient norm (0 = off; Opacus clips
        per sample instead when DP is on). ema_decay: EMA decay (warmed up). save_every: steps between
        checkpoints (0: only at the end). autoencoder_fraction: LDM only, the share of the steps spent on
        the autoencoder stage before the latent diffusion stage (default 0.3).
        field_of_view: ``"heart"`` (a heart-centred crop) or ``"whole"`` (the whole field of view; see
        :mod:`CMRSynthLib.data.preprocess`); None: the ``init`` model's, ``"heart"`` for a new one.
        autoencoder_patch: LDM only, the autoencoder trains on random squares of this many pixels (None: 96 for
        a whole field of view, else whole images).
        mask_dropout: flow/LDM only, the share of training samples with no condition at all, not even the
        mask, so that guidance can pull images towards their mask (None: the model's own, 0 for a new one).
        guidance: flow/LDM only, the guidance weight the model samples with by default (None: the model's own, 1
        for a new one); above 1 it needs condition dropout, and guides the mask too with ``mask_dropout``.
        heart_coordinates: flow/LDM only, give the network each pixel's offset from the heart as two more mask
        channels (None: the model's own, off for a new one; a fine-tune can switch it on, not off).
        stage: LDM fine-tunes only, what trains: ``"diffusion"`` (the latent network; the default) or ``"decoder"``
        (the autoencoder's decoder alone, adversarially: :mod:`CMRSynthLib.models.autoencoder`).
        adversarial_weight: the decoder stage's weight of the adversarial term beside L1 (None: 0.05).
    """

    data: str
    family: str
    out: str
    preset: str | None = None
    image_size: int | None = None
    spatial_dims: int | None = None
    depth: int | None = None
    vendors: tuple[str, ...] | None = None
    spacing: float | None = None
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 16
    lr: float = 2e-4
    lr_schedule: str = "cosine"
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    autoencoder_fraction: float | None = None
    field_of_view: str | None = None
    autoencoder_patch: int | None = None
    mask_dropout: float | None = None
    guidance: float | None = None
    heart_coordinates: bool | None = None
    stage: str | None = None
    adversarial_weight: float | None = None
    seed: int = 0
    train_patients: int | None = None
    init: str | None = None
    device: str = "auto"
    precision: str = "auto"
    save_every: int = 0
    force: bool = False

    def __post_init__(self):
        _positive("--batch-size", self.batch_size)
        for flag, value in (("--max-steps", self.max_steps), ("--epochs", self.epochs),
                            ("--image-size", self.image_size), ("--train-patients", self.train_patients),
                            ("--depth", self.depth)):
            if value is not None:
                _positive(flag, value)
        for flag, value in (("--warmup", self.warmup), ("--save-every", self.save_every)):
            if int(value) != value or value < 0:
                raise InputError(f"{flag} must be a whole number ≥ 0, got {value}")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise InputError("--weight-decay and --grad-clip must be ≥ 0")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.autoencoder_fraction is not None:
            if self.family != "ldm":
                raise InputError(f"--autoencoder-fraction applies to --generator ldm only, not {self.family}")
            if not 0 < self.autoencoder_fraction < 1:
                raise InputError(f"--autoencoder-fraction must be in (0, 1), got {self.autoencoder_fraction}")
        if self.field_of_view is not None:
            _choice("--field-of-view", self.field_of_view, ("heart", "whole"))
        if self.autoencoder_patch is not None:
            if self.family != "ldm":
                raise InputError(f"--autoencoder-patch applies to --generator ldm only, not {self.family}")
            _positive("--autoencoder-patch", self.autoencoder_patch)
        for flag, value in (("--mask-dropout", self.mask_dropout), ("--guidance", self.guidance),
                            ("--heart-coordinates", self.heart_coordinates)):
            if value is not None and self.family not in GUIDED_FAMILIES:
                raise InputError(f"{flag} applies to --generator {' or '.join(GUIDED_FAMILIES)} only, not {self.family}")
        if self.mask_dropout is not None and not 0 <= self.mask_dropout < 1:
            raise InputError(f"--mask-dropout must be in [0, 1), got {self.mask_dropout}")
        if self.guidance is not None and not self.guidance >= 0:
            raise InputError(f"--guidance must be ≥ 0, got {self.guidance}")
        if self.stage is not None:
            _choice("--stage", self.stage, STAGES)
            if self.family != "ldm" or self.init is None:
                raise InputError("--stage chooses what a fine-tune of an LDM trains: give --generator ldm and --init")
        if self.adversarial_weight is not None:
            if self.stage != "decoder":
                raise InputError("--adversarial-weight applies to --stage decoder only")
            if not self.adversarial_weight >= 0:
                raise InputError(f"--adversarial-weight must be ≥ 0, got {self.adversarial_weight}")
        if self.spacing is not None and not self.spacing > 0:
            raise InputError(f"--spacing must be > 0 mm, got {self.spacing}")
        _choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("--device", self.device, DEVICES)
        _choice("--precision", self.precision, PRECISIONS)
        if self.preset is not None:
            _choice("--preset", self.preset, PRESETS)
        if self.spatial_dims is not None:
            _choice("--spatial-dims", self.spatial_dims, (2, 3))
        if self.vendors is not None:
            object.__setattr__(self, "vendors", tuple(str(v) for v in self.vendors))
            if not self.vendors or any(not v.strip() for v in self.vendors) or len(set(self.vendors)) < len(self.vendors):
                raise InputError(f"--vendors must name distinct, non-empty vendors, got {','.join(self.vendors)!r}")
            if self.init is not None:
                raise InputError("--vendors names the vendors of a NEW model; a fine-tune keeps its --init model's")
        if self.depth is not None and self.spatial_dims != 3:
            raise InputError("--depth applies to 3D training only (--spatial-dims 3)")

    def identity(self) -> dict:
        """The fields that define the run (see the module docstring), ``data`` and ``init`` by name."""
        return named({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                      if k not in OPERATIONAL})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return strict_from_dict(cls, data, where="training arguments")


def without_path(word: str) -> str:
    """A command-line word with a path in it cut to the path's last part (``--data=/x/ACDC`` → ``--data=ACDC``)."""
    flag, equals, value = word.partition("=") if word.startswith("--") else ("", "", word)
    return flag + equals + (PurePath(value).name if os.sep in value or "/" in value else value)


def named(arguments: dict) -> dict:
    """Training arguments whose ``data`` and ``init`` name their folders instead of locating them."""
    return {k: without_path(v) if k in ("data", "init") and isinstance(v, str) else v for k, v in arguments.items()}


def _positive(flag: str, value) -> None:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise InputError(f"{flag} must be a positive whole number, got {value}")


def _choice(flag: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(f"{flag} {value!r} is not one of {', '.join(map(str, allowed))}")
