"""Generator families (DESIGN §3): one file each, one interface (:mod:`.base`).

``GENERATORS`` maps a family name to its class; each class has a ``config_class`` (a frozen dataclass with
``preset(name, *, spatial_dims, image_size, vocabulary)``). A checkpoint stores ``family`` and
``config_to_dict(config)``; :func:`config_from_dict` and :func:`build_generator` rebuild the model.
"""

from __future__ import annotations

from CMRSynthLib.errors import InputError
from CMRSynthLib.generators.anatomy import AnatomyGenerator
from CMRSynthLib.generators.base import Generator, Vocabulary
from CMRSynthLib.generators.ddpm import DDPMGenerator
from CMRSynthLib.generators.flow import FlowGenerator
from CMRSynthLib.generators.hybrid import HybridGenerator
from CMRSynthLib.generators.ldm import LDMGenerator

GENERATORS: dict[str, type[Generator]] = {
    "ddpm": DDPMGenerator,
    "ldm": LDMGenerator,
    "flow": FlowGenerator,
    "hybrid": HybridGenerator,
    "anatomy": AnatomyGenerator,
}


def generator_class(family: str) -> type[Generator]:
    if family not in GENERATORS:
        raise InputError(f"unknown generator family {family!r}; choose one of {', '.join(GENERATORS)}")
    return GENERATORS[family]


def preset_config(family: str, name: str, *, spatial_dims: int, image_size, vocabulary: Vocabulary, **overrides):
    """The family's "tiny", "small" or "base" configuration (keyword overrides win)."""
    try:
        return generator_class(family).config_class.preset(name, spatial_dims=spatial_dims, image_size=image_size,
                                                           vocabulary=vocabulary, **overrides)
    except (TypeError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"invalid {family} configuration: {error}") from error


def build_generator(family: str, config) -> Generator:
    """A freshly initialised generator of ``family`` with ``config`` (its family's config class)."""
    cls = generator_class(family)
    if not isinstance(config, cls.config_class):
        raise TypeError(f"{family} needs a {cls.config_class.__name__}, got {type(config).__name__}")
    return cls(config)


def config_to_dict(config) -> dict:
    """A JSON-ready dict of a generator config."""
    return config.to_dict()


def config_from_dict(family: str, data: dict):
    """The config of ``family`` from :func:`config_to_dict`'s dict; unknown keys raise InputError."""
    return generator_class(family).config_class.from_dict(data)
