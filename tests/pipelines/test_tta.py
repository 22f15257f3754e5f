"""Test-time augmentation: the flip average, airbench's six weighted views, one batch shape per call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.tta import tta_logits


def images(n: int = 3, size: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def linear_model(size: int = 5) -> nn.Module:
    """Position-sensitive logits (no symmetry a TTA could hide behind)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 4))


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """numpy's 'reflect' (edge not repeated) for positions one pixel outside [0, size)."""
    return torch.where(index < 0, -index, torch.where(index >= size, 2 * (size - 1) - index, index))


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Pixel (i, j) of the result is x's (i - dy, j - dx), reflected at the border."""
    h, w = x.shape[-2:]
    rows = reflect(torch.arange(h) - dy, h)
    cols = reflect(torch.arange(w) - dx, w)
    return x[..., rows[:, None], cols[None, :]]


def test_none_is_the_plain_logits() -> None:
    model, x = linear_model(), images()
    assert torch.equal(tta_logits(model, x, "none"), model(x))


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror_logits() -> None:
    model, x = linear_model(), images()
    expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    assert torch.allclose(tta_logits(model, x, "flip"), expected, atol=1e-6)
    assert not torch.allclose(expected, model(x), atol=1e-3)  # the mirror changed something


def test_flip_shift_weights_airbench_six_views() -> None:
    model, x = linear_model(), images()

    def both(v: torch.Tensor) -> torch.Tensor:
        return model(v) + model(torch.flip(v, dims=[3]))

    # airbench94 infer_mirror_translate: 1/4 each for the image and its mirror, 1/8 for each shifted view's pair
    expected = both(x) / 4 + (both(shifted(x, 1, 1)) + both(shifted(x, -1, -1))) / 8
    assert torch.allclose(tta_logits(model, x, "flip_shift"), expected, atol=1e-5)


def test_every_view_is_one_call_of_the_batch_shape() -> None:
    seen: list[tuple[int, ...]] = []
    model = linear_model()

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return model(x)

    x = images(n=3)
    for mode, calls in (("none", 1), ("flip", 2), ("flip_shift", 6)):
        seen.clear()
        assert tta_logits(recording, x, mode).dtype == torch.float32
        assert seen == [(3, 3, 5, 5)] * calls  # a compiled model sees the evaluation shape only


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="tta must be one of none, flip, flip_shift, got 'rotate'"):
        tta_logits(linear_model(), images(), "rotate")
