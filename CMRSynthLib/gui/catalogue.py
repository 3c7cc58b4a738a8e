"""The models a person can pick: bundled starter models plus checkpoint folders in the user's model folder.

A model is a checkpoint folder holding ``card.json`` (see :mod:`CMRSynthLib.training.checkpoint`). The card
is read as JSON here, without torch, because the panel's process (Slicer before its first job, or a plain
Qt window) need not have torch at all. The model folder defaults to ``~/.cmrsynth/models``: outside any
Slicer installation, so every Slicer version and the command line share it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from CMRSynthLib import DEFAULT_MODEL
from CMRSynthLib.errors import InputError
from CMRSynthLib.training.card import CARD, decoder_runs, runs_of
from CMRSynthLib.training.ledger import patient_level

USER_MODELS_ENV = "CMRSYNTH_MODEL_FOLDER"
STARTER_MODELS_ENV = "CMRSYNTH_MODELS"  # the starter-model override of training.checkpoint.models_dir()


def default_model_folder() -> Path:
    """Where trained models go unless the user chooses: ``$CMRSYNTH_MODEL_FOLDER`` or ``~/.cmrsynth/models``."""
    env = os.environ.get(USER_MODELS_ENV)
    return Path(env) if env else Path.home() / ".cmrsynth" / "models"


def starter_folder() -> Path:
    """The bundled starter models (same rule as ``training.checkpoint.models_dir``, which imports torch)."""
    env = os.environ.get(STARTER_MODELS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "Resources" / "models"


@dataclass(frozen=True)
class ModelInfo:
    """What the panel shows about one checkpoint folder.

    ``vendors``, ``groups`` and ``phases`` are the card's vocabulary: the conditions the model knows, and the only
    ones the panel offers. A card names its training data under ``dataset`` (name, license, citation, url,
    ``spacing``: the spacing assumption, patients) and its pixel size under ``preprocessing.spacing``; a phantom
    model's card says ``data.simulated`` instead.
    """

    name: str
    path: Path
    family: str
    starter: bool
    epsilon: float | None = None
    delta: float | None = None
    vendors: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    patients: int | None = None
    model_id: str = ""
    card: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def argument(self) -> str:
        """What ``--model`` gets: the starter's name, or the folder."""
        return self.name if self.starter else str(self.path)

    @property
    def dataset(self) -> dict:
        """The card's ``dataset`` record (empty when the card names none)."""
        dataset = self.card.get("dataset")
        return dataset if isinstance(dataset, dict) else {}

    @property
    def simulated(self) -> bool:
        return bool((self.card.get("data") or {}).get("simulated"))

    def data_source(self) -> str:
        """Which data the model learned from, with its license: "ACDC (CC BY-NC-SA 4.0)", "a simulated phantom"."""
        if self.simulated:
            return "a simulated phantom"
        name = self.dataset.get("name")
        if not name:
            return ""
        license_ = self.dataset.get("license")
        return f"{name} ({license_})" if license_ else f"{name} (license not stated)"

    def describe(self) -> str:
        """One line: generator, training data and its license, privacy."""
        origin = "starter model" if self.starter else str(self.path)
        patients = self.patients if self.patients is not None else self.dataset.get("patients")
        counted = f"{patients} {'patient' if patients == 1 else 'patients'}" if patients is not None else ""
        source = self.data_source()
        if source:
            data = f"trained on {source}" + (f", {counted}" if counted else "")
        else:
            data = f"trained on {counted}" if counted else "training data unknown"
        privacy = (f"DP ε = {self.epsilon:.3g}" + (f", δ = {self.delta:.1e}" if self.delta else "")
                   if self.epsilon is not None else "no differential privacy")
        family = f"{self.family} with a coarse stage" if self.card.get("cascade") else self.family
        return f"{family} · {data} · {privacy} · {origin}"

    def details(self) -> str:
        """Several lines for a tooltip: the data's citation, link and spacing assumption, and what the model knows."""
        lines = []
        if self.simulated:
            lines.append("Data: the built-in simulated phantom cohort (no real patient)")
        elif self.dataset:
            lines.append(f"Data: {self.data_source()}")
            for key, label in (("citation", "Cite"), ("url", "Source"), ("spacing", "Spacing")):
                if self.dataset.get(key):
                    lines.append(f"{label}: {self.dataset[key]}")
        pixel = (self.card.get("preprocessing") or {}).get("spacing")
        if isinstance(pixel, list) and pixel and all(isinstance(v, (int, float)) for v in pixel):
            lines.append(f"Pixel size: {' × '.join(f'{v:g}' for v in pixel)} mm in-plane (images are generated at "
                         "about this size and resampled to the reference grid)")
        cascade = self.card.get("cascade")
        if isinstance(cascade, dict):
            spacing = (cascade.get("coarse_preprocessing") or {}).get("spacing")
            known = isinstance(spacing, list) and spacing and isinstance(spacing[0], (int, float))
            at = f" at {spacing[0]:g} mm" if known else ""
            lines.append(f"Coarse stage: a flow model draws the whole field{at} first; the latent model refines it "
                         f"from t = {cascade.get('start', '?')}")
        runs = runs_of(self.card)
        decoder = decoder_runs(runs)
        if decoder:
            steps = runs[decoder[-1] - 1].get("steps") or "?"
            lines.append(f"Decoder: sharpened against a discriminator ({steps} steps), on the "
                         "same latents")
        for label, values in (("Vendors", self.vendors), ("Pathology groups", self.groups), ("Phases", self.phases)):
            lines.append(f"{label}: {', '.join(values) if values else 'none (unconditional)'}")
        return "\n".join(lines)


def read_model(path: str | os.PathLike, *, starter: bool = False) -> ModelInfo:
    """The :class:`ModelInfo` of checkpoint folder ``path``; :class:`InputError` if it has no readable card."""
    path = Path(path)
    card_path = path / CARD
    if not card_path.is_file():
        raise InputError(f"is not a CMRSynth model folder (no {CARD})", path=path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not readable JSON ({exc})", path=card_path) from None
    if not isinstance(card, dict) or "family" not in card:
        raise InputError("has no generator family; is this a CMRSynth checkpoint card?", path=card_path)
    privacy = card.get("privacy") or {}
    epsilon, delta = patient_level(privacy)  # a slice-level model shows its patient-level (group) guarantee
    members = card.get("members")
    vocabulary = card.get("vocabulary") or {}
    return ModelInfo(name=path.name, path=path, family=str(card["family"]), starter=starter,
                     epsilon=epsilon, delta=delta,
                     vendors=tuple(vocabulary.get("vendors", ())), groups=tuple(vocabulary.get("groups", ())),
                     phases=tuple(vocabulary.get("phases", ())),
                     # a DP card lists no patient (they live beside the folder); its ledger counts them
                     patients=len(members) if isinstance(members, list) else privacy.get("patients"),
                     model_id=str(card.get("model_id", "")), card=card)


def list_models(folder: str | os.PathLike | None = None, *, families: tuple[str, ...] | None = None
                ) -> list[ModelInfo]:
    """Starter models first, then every checkpoint folder directly inside ``folder`` (default model folder).

    Starters in the order a user should try them: the default (:data:`~CMRSynthLib.DEFAULT_MODEL`, the best
    real one), the other real ones, the phantom ones. Folders without a readable card
    are skipped (a run still writing has no card yet). ``families`` keeps only those generator families (the
    image choosers leave out the stage-1 ``anatomy`` model).
    """
    found = []
    for root, starter in ((starter_folder(), True), (Path(folder) if folder else default_model_folder(), False)):
        if not root.is_dir():
            continue
        infos = []
        for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                infos.append(read_model(path, starter=starter))
            except InputError:
                continue
        if starter:
            infos.sort(key=lambda info: (info.name != DEFAULT_MODEL, info.simulated, info.name))
        found += infos
    return [info for info in found if families is None or info.family in families]


def find_model(name_or_path: str, folder: str | os.PathLike | None = None) -> ModelInfo:
    """A model by starter name, by folder name in the model folder, or by path."""
    for info in list_models(folder):
        if name_or_path in (info.name, str(info.path)):
            return info
    if Path(name_or_path).is_dir():
        return read_model(name_or_path)
    known = ", ".join(info.name for info in list_models(folder)) or "none installed"
    raise InputError(f"no model named {name_or_path!r} (known: {known})")
