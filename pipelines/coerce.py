"""Frozen dataclasses built from plain mappings (YAML, JSON, ``--set``): every value checked against its annotation,
gently converted (int -> float, list -> tuple), and every refusal a :class:`UserError` naming the dotted key."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from pipelines.errors import UserError


def require(ok: bool, message: str) -> None:
    """Raise UserError(message) unless ``ok``: a config's cross-key checks."""
    if not ok:
        raise UserError(message)


def plain(value: Any) -> Any:
    """Nested mappings and sequences as plain dicts and lists (YAML-safe)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def build(cls: type, raw: Any, *, prefix: str) -> Any:
    """``cls`` (a dataclass) from ``raw``, nested dataclasses from nested mappings; keys named ``prefix`` + name."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix + str(unknown[0])!r}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, prefix=key + ".")
        else:
            kwargs[name] = _coerce(hint, value, key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) a value against its annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(hint, value, key)
    if origin is tuple:
        return _coerce_tuple(hint, value, key)
    if hint not in _SCALARS:
        return value
    converted = _SCALARS[hint](value)
    if converted is _REJECTED:
        raise UserError(f"{key} must be {_describe(hint)}, got {value!r}")
    return converted


def _coerce_union(hint: Any, value: Any, key: str) -> Any:
    """The first option of ``X | Y | None`` that takes ``value``."""
    options = typing.get_args(hint)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(option, value, key)
        except UserError:
            continue
    raise UserError(f"{key} must be {_describe(hint)}, got {value!r}")


def _coerce_tuple(hint: Any, value: Any, key: str) -> tuple[Any, ...]:
    """A list (YAML) as a tuple; a list of scalars is checked item by item like scalar keys."""
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{key} must be a list, got {value!r}")
    item = typing.get_args(hint)[0]
    if item in _SCALARS:
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    return tuple(value)


_REJECTED = object()  # what a scalar conversion returns for a value of the wrong type


def _as_bool(value: Any) -> Any:
    return value if isinstance(value, bool) else _REJECTED


def _as_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else _REJECTED


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _REJECTED


def _as_str(value: Any) -> Any:
    return value if isinstance(value, str) else _REJECTED


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        hint, str(hint)
    )
