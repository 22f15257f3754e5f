"""The albumentations side of ``augment.ops``: ``A.Compose`` built with errors naming the op, one-line descriptions."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A

from pipelines.config import recipe_augment
from pipelines.errors import UserError, one_line

# OpenCV border modes accepted by albumentations' pads (cv2.BORDER_*), named as numpy/torch name them:
# cv2's REFLECT_101 (gfedcb|abcdefgh) is numpy's "reflect", cv2's REFLECT (fedcba|abcdefgh) is numpy's "symmetric".
BORDER_CONSTANT, BORDER_REPLICATE, BORDER_REFLECT, BORDER_WRAP, BORDER_REFLECT_101 = 0, 1, 2, 3, 4
BORDER_NAMES = {
    BORDER_CONSTANT: "constant",
    BORDER_REPLICATE: "replicate",
    BORDER_REFLECT: "symmetric",
    BORDER_WRAP: "wrap",
    BORDER_REFLECT_101: "reflect",
}

# The link pydantic appends to each problem it reports; it says nothing about the config.
_PYDANTIC_LINK = re.compile(r"\s*For further information visit \S+")


RECIPE_SIZE = 32  # pixels: the recipe's pipeline is written for 32x32 images (pad 4, crop 32, cutout 8)


def fit_to_size(ops: Sequence[Mapping], height: int, width: int) -> tuple[dict[str, Any], ...]:
    """The recipe's pipeline redrawn for ``height`` x ``width`` images: pad by an eighth of the side (4 of 32),
    crop back to the image's size, flip, cut out a quarter of the side (8 of 32). Any other pipeline as written."""
    ops = tuple(dict(op) for op in ops)
    if ops != recipe_augment() or (height, width) == (RECIPE_SIZE, RECIPE_SIZE):
        return ops
    pad_h, pad_w = (max(1, round(side / 8)) for side in (height, width))
    hole_h, hole_w = (max(1, round(side / 4)) for side in (height, width))
    pad, crop, flip, cutout = ops
    return (
        {**pad, "min_height": height + 2 * pad_h, "min_width": width + 2 * pad_w},
        {**crop, "height": height, "width": width},
        flip,
        {**cutout, "hole_height_range": [hole_h, hole_h], "hole_width_range": [hole_w, hole_w]},
    )


def build_albumentations(ops: Sequence[Mapping]) -> A.Compose:
    """``A.Compose`` of ``getattr(A, name)(**kwargs)`` for each op, in order.

    Unknown names and bad or unknown keyword arguments raise UserError naming the op (``augment.ops[i]``).
    Lists become tuples; ``transforms`` of OneOf/SomeOf/Sequential/... may itself be a list of op dicts.
    """
    return A.Compose(_build_list(ops, "augment.ops"))


def _build_list(ops: Any, where: str) -> list[Any]:
    if isinstance(ops, Mapping) or not isinstance(ops, Sequence) or isinstance(ops, str):
        raise UserError(f"{where} must be a list of {{name: <albumentations transform>, ...}} mappings")
    return [_build_one(op, f"{where}[{i}]") for i, op in enumerate(ops)]


def _build_one(op: Any, where: str) -> Any:
    if not isinstance(op, Mapping):
        raise UserError(f"{where} must be a mapping with a 'name' (an albumentations transform), got {op!r}")
    name = op.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where} needs a 'name' (an albumentations transform)")
    cls = getattr(A, name, None)
    is_transform = isinstance(cls, type) and issubclass(cls, A.BasicTransform)
    is_compose = isinstance(cls, type) and issubclass(cls, A.BaseCompose)
    if name.startswith("_") or not (is_transform or is_compose):
        raise UserError(f"{where}: unknown albumentations transform {name!r}")
    kwargs = {k: _tuples(v) for k, v in op.items() if k != "name"}
    if is_compose:
        kwargs["transforms"] = _build_list(op.get("transforms", ()), f"{where}.transforms")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # albumentations only warns about unknown arguments: checked below
            transform = cls(**kwargs)
    except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise UserError(f"{where} ({name}): {_validation_message(err)}") from err
    invalid = list(getattr(transform, "invalid_args", None) or ())
    if invalid:
        schema = getattr(cls, "InitSchema", None)
        known = sorted(set(getattr(schema, "model_fields", {})) - {"strict"})
        raise UserError(
            f"{where} ({name}): unknown argument(s) {', '.join(map(repr, invalid))}; known: {', '.join(known)}"
        )
    return transform


def _tuples(value: Any) -> Any:
    """YAML lists -> tuples, recursively (albumentations' schemas want tuples for ranges and fills)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _validation_message(err: Exception) -> str:
    """What is wrong with a transform's arguments, on one line.

    albumentations re-raises pydantic's ValidationError as a ValueError; its ``errors()`` read best as
    "field: message; ...". Anything else is :func:`one_line`, less pydantic's "For further information" links.
    """
    cause = err.__cause__ if err.__cause__ is not None else err
    details = getattr(cause, "errors", None)  # pydantic's ValidationError: "field: message" for each problem
    if callable(details):
        try:
            return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in details())
        except (TypeError, KeyError):
            pass
    return _PYDANTIC_LINK.sub("", one_line(err)).strip()
