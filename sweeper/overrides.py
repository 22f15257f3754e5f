"""``--config FILE`` + ``--set dotted.key=value`` tokens -> a validated Config."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import Config, load_yaml
from pipelines.errors import UserError

CACHE_ENV = "SWEEPER_CACHE_DIR"  # where decoded datasets are cached, unless data.cache_dir is set


def parse_overrides(tokens: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=0.2", "train.device=cpu"]`` -> ``{"optim.lr": 0.2, "train.device": "cpu"}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {token!r} must look like section.key=value, e.g. optim.lr=0.2")
        try:
            value = load_yaml(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise UserError(f"override {token!r}: value is not valid YAML") from err
        out[key.strip()] = value
    return out


def resolve_config(
    config_file: Path | None,
    tokens: Iterable[str] = (),
    *,
    extra: Mapping[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Base (file, or ``base``, or the recipe) <- ``extra`` (e.g. from --data) <- ``--set`` tokens, in that order."""
    config = Config.load(config_file) if config_file is not None else (base or Config())
    overrides = collect_overrides(tokens, extra=extra)
    return config.with_overrides(overrides) if overrides else config


def collect_overrides(tokens: Iterable[str], *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``extra`` (e.g. from --data) <- the ``--set`` tokens, plus this machine's settings where not given."""
    overrides: dict[str, Any] = dict(extra or {})
    overrides.update(parse_overrides(tokens))
    return {**machine_overrides(overrides), **overrides}


def machine_overrides(explicit: Mapping[str, Any]) -> dict[str, Any]:
    """Settings that belong to this machine, not to the experiment: the data cache ($SWEEPER_CACHE_DIR)."""
    if "data.cache_dir" not in explicit and os.environ.get(CACHE_ENV):
        return {"data.cache_dir": os.environ[CACHE_ENV]}
    return {}


def positive_int(text: str, *, name: str, expected: str) -> int:
    """``text`` as a whole number >= 1; else UserError "<name> must be <expected>, got ..." (or ">= 1")."""
    try:
        value = int(text)
    except ValueError as err:
        raise UserError(f"{name} must be {expected}, got {text!r}") from err
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")
    return value
