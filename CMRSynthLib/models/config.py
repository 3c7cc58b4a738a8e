"""Frozen configuration dataclasses that turn into plain dicts (JSON) and back, nested or not.

Every model and generator config derives from :class:`FrozenConfig`. ``from_dict`` refuses unknown keys
(a checkpoint written by another program, or a typo) with an :class:`InputError` naming the key; missing keys
take the field's default, and a missing key without a default is an error too. Tuples are stored as lists.
:func:`strict_from_dict` gives the same strict reading to any frozen dataclass that does not use the mixin.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from CMRSynthLib.errors import InputError

T = TypeVar("T", bound="FrozenConfig")


class FrozenConfig:
    """Mixin for ``@dataclass(frozen=True)`` configs: :meth:`to_dict` / :meth:`from_dict`."""

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        return strict_from_dict(cls, data)


def strict_from_dict(cls: type, data: dict, *, where: str | None = None):
    """An instance of the dataclass ``cls`` from ``data`` (JSON), strictly.

    Unknown keys, missing keys without a default and non-object ``data`` raise :class:`InputError`
    naming ``where`` (default: the class name); lists become tuples where the field is a tuple;
    nested dataclass fields are read the same way. Errors raised by the class itself pass unchanged.
    """
    return _build(cls, data, where or cls.__name__)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _build(cls, data: Any, where: str):
    """An instance of the dataclass ``cls`` from the dict ``data``, strictly (unknown keys are errors)."""
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a JSON object, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"unknown {where} keys {unknown}; allowed: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{where} is missing the keys {missing}")
    hints = typing.get_type_hints(cls)
    values = {name: _typed(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except InputError:
        raise
    except (TypeError, ValueError) as error:
        raise InputError(f"invalid {where}: {error}") from error


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` read from JSON, converted to the annotated type ``hint`` (dataclasses and tuples)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    optional = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(optional) == 1:  # ``X | None``: null, or read as X
        return None if value is None else _typed(value, optional[0], where)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        inner = args[0] if len(set(args)) == 1 else Any
        return tuple(_typed(v, inner, where) for v in value)
    return value
