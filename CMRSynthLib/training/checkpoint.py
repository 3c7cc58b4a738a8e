"""Checkpoints (DESIGN §2.6): a folder of safetensors plus a JSON card. Loading never unpickles.

Layout of a checkpoint folder::

    card.json                   what the model is and how it was made (see below)
    model.safetensors           the generator's state_dict; EMA weights under the prefix "ema."
    trainer_state.safetensors   (optional, for resuming) optimizer tensors and RNG states
    trainer_state.json          (optional) the rest of the trainer state: step, history, arguments, ...
    anatomy/                    (optional) a stage-1 mask generator, itself a checkpoint folder, that
                                ``cmrsynth sample --new-anatomy`` uses with this model (copy one in to bundle it)

The card (``format`` "cmrsynth-checkpoint", ``version`` 1) holds ``family``, ``config`` (the generator's
config dict), ``vocabulary``, ``preprocessing`` (a PreprocessConfig dict), ``data`` (a fingerprint: a hash of
patient ids and file sizes, never patient data), ``members`` / ``validation`` / ``holdout`` (patient ids),
``training`` (steps, epochs, seed, loss curve, wall time, versions, command line), ``privacy`` (the DP
ledger, or null), ``created`` and ``model_id`` (a hash of the weights). The card of a DP model holds no patient
ids, fingerprint, loss curve or intensity statistics: they live beside the folder, in
``<folder>.PRIVATE-membership.json`` (:mod:`CMRSynthLib.training.membership`), which loading never reads.

Compact storage (``save_checkpoint(..., parameters_dtype=...)``, used for the shipped starter models):
float16 stores every parameter in half precision; int8 stores each parameter of two or more dimensions
(convolution kernels, linear maps, embeddings) as symmetric int8 codes ``q`` with one float32 scale ``s``
per output channel (slice along dim 0) under the key ``<name>.int8_scale``, ``w ≈ q·s`` with
``s = max|w_c| / 127``, and the other parameters as float16. Buffers are never cast. Reading rebuilds the
float weights (:func:`read_checkpoint`); loading casts them to the model's float32.

A folder is written whole or not at all (:func:`CMRSynthLib.files.atomic_dir`): a run killed while saving
leaves the previous checkpoint untouched. Tensors are copied (``contiguous().clone()``) before saving, so
tied weights are stored twice and re-tied by ``load_state_dict``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_dir
from CMRSynthLib.training.card import CARD

FORMAT = "cmrsynth-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
ANATOMY = "anatomy"
EMA_PREFIX = "ema."
INT8_SCALE = ".int8_scale"  # key suffix of an int8-stored parameter's per-output-channel scale
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
MODELS_ENV = "CMRSYNTH_MODELS"
_NEVER_UNPICKLE = "CMRSynth never unpickles checkpoints (pickle files can run arbitrary code); " \
                  "convert the weights to a CMRSynth checkpoint folder (model.safetensors + card.json)"


@dataclass
class TrainerState:
    """What a trainer needs to resume: tensors (optimizer moments, RNG states) and a JSON-able dict."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointContents:
    """Everything stored in a checkpoint folder, unbuilt: see :func:`read_checkpoint`."""

    path: Path
    card: dict
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    trainer_state: TrainerState | None


# -- where checkpoints live -----------------------------------------------------------------------
def models_dir() -> Path:
    """The starter models: ``$CMRSYNTH_MODELS`` or ``Resources/models`` beside the package."""
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "Resources" / "models"


def resolve_model(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint folder from a path, or from the name of a starter model (``acdc-ldm``, ``phantom-flow``, ...)."""
    path = Path(path_or_name)
    if path.exists():
        return path
    name = str(path_or_name)
    if os.sep not in name and (models_dir() / name).is_dir():
        return models_dir() / name
    starters = sorted(p.name for p in models_dir().glob("*") if (p / CARD).is_file()) if models_dir().is_dir() else []
    known = f"; starter models: {', '.join(starters)}" if starters else ""
    raise InputError(f"no checkpoint folder or starter model of this name{known}", path=name)


# -- writing --------------------------------------------------------------------------------------
def model_id(weights: Mapping[str, torch.Tensor]) -> str:
    """A short hash of the weights: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def generator_config(generator) -> dict:
    """The generator's config as a JSON-able dict (the generators package's own serialiser)."""
    from CMRSynthLib.generators import config_to_dict

    return config_to_dict(generator.config)


def save_checkpoint(out_dir: str | os.PathLike, generator: torch.nn.Module, card: dict, *,
                    ema: Mapping[str, torch.Tensor] | None = None, trainer_state: TrainerState | None = None,
                    parameters_dtype: torch.dtype | None = None) -> dict:
    """Write a checkpoint folder atomically; returns the card as written.

    ``card`` supplies everything but the fields this function owns: ``format``, ``version``, ``family``,
    ``config``, ``model_id`` and ``created`` are set here. ``ema`` is the EMA copy of the generator's
    state_dict (same keys). ``parameters_dtype`` (float16, bfloat16 or int8, for compact starter models)
    stores the parameters, not the buffers, that way (module docstring); loading restores the model's dtype.
    """
    weights = _cpu_copy(generator.state_dict())
    stored = _cast_parameters(weights, generator, parameters_dtype)
    if ema is not None:
        ema = _cpu_copy(ema)
        if set(ema) != set(weights):
            raise ValueError("ema state_dict keys differ from the generator's")
        ema = _cast_parameters(ema, generator, parameters_dtype)
        stored.update({EMA_PREFIX + k: v for k, v in ema.items()})
    full = {**card, "format": FORMAT, "version": VERSION, "family": generator.family,
            "config": generator_config(generator),
            "model_id": model_id(ema if ema is not None else stored),
            "created": card.get("created") or datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    full.setdefault("privacy", None)
    with atomic_dir(out_dir) as tmp:
        _write_folder(tmp, stored, full, trainer_state)
    return full


def _cast_parameters(state: dict, generator: torch.nn.Module, dtype: torch.dtype | None) -> dict:
    if dtype is None:
        return dict(state)
    if dtype not in (torch.float16, torch.bfloat16, torch.int8):
        raise ValueError(f"parameters_dtype must be float16, bfloat16 or int8, got {dtype}")
    names = set(dict(generator.named_parameters(remove_duplicate=False)))
    out = {}
    for k, v in state.items():
        if k not in names or not v.is_floating_point():
            out[k] = v
        elif dtype == torch.int8 and v.ndim >= 2:
            out.update(quantize_int8(k, v))
        else:
            out[k] = v.to(torch.float16 if dtype == torch.int8 else dtype)
    return out


def quantize_int8(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: q, name + INT8_SCALE: s}``: symmetric int8 codes ``q`` (shape of ``weight``) and one float32
    scale per output channel ``s`` ``(C, 1, …)``, ``s = max|w_c| / 127``, so that ``|w − q·s| ≤ s/2``."""
    scale = weight.detach().float().abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    scale = scale.view(-1, *[1] * (weight.ndim - 1))
    codes = torch.round(weight.float() / scale).clamp(-127, 127).to(torch.int8)
    return {name: codes, name + INT8_SCALE: scale}


def dequantize_int8(stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors with every int8 parameter replaced by its float32 value ``q·s`` (others unchanged)."""
    out = {}
    for k, v in stored.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = stored.get(k + INT8_SCALE)
        out[k] = v if scale is None else v.float() * scale
    return out


def _write_folder(folder: Path, stored: dict, card: dict, trainer_state: TrainerState | None) -> None:
    from safetensors.torch import save_file

    save_file(stored, str(folder / WEIGHTS), metadata={"format": FORMAT})
    if trainer_state is not None:
        save_file(_cpu_copy(trainer_state.tensors), str(folder / STATE_TENSORS), metadata={"format": FORMAT})
        (folder / STATE_JSON).write_text(json.dumps(trainer_state.info, indent=1), encoding="utf-8")
    # the card goes last: a folder with a card is a complete folder
    (folder / CARD).write_text(json.dumps(card, indent=1, sort_keys=True), encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.iterdir()):  # temporary files are private (0600/0700); a checkpoint is not
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


# -- reading --------------------------------------------------------------------------------------
def _refuse_pickles(path: Path) -> None:
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(f"is a pickle-based checkpoint; {_NEVER_UNPICKLE}", path=path)
    if path.is_dir() and not (path / WEIGHTS).exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise InputError(f"holds only pickle files ({', '.join(pickles[:3])}); {_NEVER_UNPICKLE}", path=path)


def read_card(path: Path) -> dict:
    """The card of checkpoint folder ``path``, checked for format, version and family."""
    card_path = path / CARD
    if not card_path.is_file():
        raise InputError(f"is not a CMRSynth checkpoint (no {CARD})", path=path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path=card_path) from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise InputError(f"format is {found!r}, expected {FORMAT!r}", path=card_path)
    if card.get("version") != VERSION:
        raise InputError(f"checkpoint version {card.get('version')!r} is not supported (this CMRSynth reads "
                         f"version {VERSION})", path=card_path)
    from CMRSynthLib.generators import GENERATORS

    if card.get("family") not in GENERATORS:
        raise InputError(f"unknown generator family {card.get('family')!r}; known: {', '.join(GENERATORS)}",
                         path=card_path)
    return card


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError("is missing from the checkpoint", path=path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"is not a readable safetensors file ({str(exc).splitlines()[0][:120]})",
                         path=path) from None


def read_checkpoint(path_or_name: str | os.PathLike, *, trainer_state: bool = False) -> CheckpointContents:
    """Read a checkpoint folder without building the generator (the trainer resumes from this)."""
    path = Path(path_or_name)
    _refuse_pickles(path)
    path = resolve_model(path_or_name)
    _refuse_pickles(path)
    if not path.is_dir():
        raise InputError("is a file; a checkpoint is a folder holding card.json and model.safetensors", path=path)
    card = read_card(path)
    stored = dequantize_int8(_load_tensors(path / WEIGHTS))
    weights = {k: v for k, v in stored.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX):]: v for k, v in stored.items() if k.startswith(EMA_PREFIX)}
    state = None
    if trainer_state and (path / STATE_JSON).is_file():
        try:
            info = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"is not valid JSON ({exc})", path=path / STATE_JSON) from None
        state = TrainerState(_load_tensors(path / STATE_TENSORS), info)
    return CheckpointContents(path, card, weights, ema, state)


def card_config(card: dict, *, path: Path | None = None):
    """The generator config the card describes (an :class:`InputError` naming the card if it is invalid)."""
    from CMRSynthLib.generators import config_from_dict

    try:
        return config_from_dict(card["family"], card["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"card has an invalid {card.get('family')} config ({exc})",
                         path=None if path is None else path / CARD) from None


def build_from_card(card: dict, *, path: Path | None = None):
    """An untrained generator of the card's family and config."""
    from CMRSynthLib.generators import build_generator

    return build_generator(card["family"], card_config(card, path=path))


def load_weights(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], *, path: Path) -> None:
    """``module.load_state_dict(weights)``, strict; a mismatch is an :class:`InputError` naming ``path``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or extra or wrong:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
            "shape mismatch " + ", ".join(f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
                                          for k in wrong[:3]) if wrong else "") if part)
        raise InputError(f"weights do not fit the card's model ({detail})", path=path)
    module.load_state_dict(weights)


def load_checkpoint(path_or_name: str | os.PathLike, *, device: str | torch.device = "cpu",
                    ema: bool = True):
    """Build the generator a checkpoint describes and load its weights → ``(generator, card)``.

    ``path_or_name`` is a checkpoint folder or a starter model name. The EMA weights are loaded when the
    checkpoint has them and ``ema`` is true. The generator is in eval mode on ``device``.
    """
    contents = read_checkpoint(path_or_name)
    generator = build_from_card(contents.card, path=contents.path)
    weights = contents.ema if ema and contents.ema else contents.weights
    load_weights(generator, weights, path=contents.path / WEIGHTS)
    generator.eval()
    return generator.to(device), contents.card


# -- nested state (optimizer, scaler, accountant) as JSON + tensors, never pickle ------------------
def pack_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-able copy of ``obj`` with every tensor moved into ``tensors`` under a key from ``prefix``.

    Dicts with non-string keys (an optimizer's ``state`` is keyed by parameter index) and tuples keep
    their types through :func:`unpack_state`.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: pack_state(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, pack_state(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint ({prefix})")


def unpack_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_state`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: unpack_state(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(unpack_state(v, tensors) for v in obj["__tuple__"])
        return {k: unpack_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj
