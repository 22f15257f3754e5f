"""Test-time augmentation: the logits of a few views of each test image, averaged (airbench94's ``infer``).

``none``: the image. ``flip`` (airbench's tta_level 1, Myrtle.ai part 8's ``forward_tta([identity, flip_lr])``):
the mean of the logits of the image and its horizontal mirror. ``flip_shift`` (airbench's tta_level 2,
``infer_mirror_translate``): half the ``flip`` logits of the image, plus a quarter each of the ``flip`` logits of
the image shifted by one pixel down-and-right and by one pixel up-and-left (reflect padding of 1, then the
top-left and the bottom-right crops of the image's size): 6 views, weighted 1/4, 1/4, 1/8, 1/8, 1/8, 1/8.

Each view is a separate call on a batch of the input's own shape, so a compiled model sees the evaluation shape
only; the caller sets eval mode and autocast. Logits are averaged in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipelines.config import TTAS

SHIFT = 1  # pixels: airbench94's translate views (pad = 1)

Model = Callable[[torch.Tensor], torch.Tensor]


def tta_logits(model: Model, images: torch.Tensor, mode: str) -> torch.Tensor:
    """Logits float32 (N, classes) for images float (N, C, H, W) (normalised, on the model's device) under ``mode``
    (``none`` | ``flip`` | ``flip_shift``)."""
    if mode == "none":
        return model(images).float()
    if mode == "flip":
        return _mirrored(model, images)
    if mode == "flip_shift":
        h, w = images.shape[-2:]
        padded = F.pad(images, (SHIFT,) * 4, mode="reflect")
        # the crops copied into the input's memory format: a compiled model sees the strides it was compiled for
        memory = torch.channels_last if _channels_last(images) else torch.contiguous_format
        down_right = padded[..., :h, :w].contiguous(memory_format=memory)  # pixel (i, j): the image's (i-1, j-1)
        up_left = padded[..., 2 * SHIFT :, 2 * SHIFT :].contiguous(memory_format=memory)  # the image's (i+1, j+1)
        shifted = 0.5 * (_mirrored(model, down_right) + _mirrored(model, up_left))
        return 0.5 * _mirrored(model, images) + 0.5 * shifted
    raise ValueError(f"tta must be one of {', '.join(TTAS)}, got {mode!r}")


def _channels_last(images: torch.Tensor) -> bool:
    return images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def _mirrored(model: Model, images: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(images).float() + model(images.flip(-1)).float())
