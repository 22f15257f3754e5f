"""The whitening conv: identity covariance on the training patches, the two sources' shapes, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipelines.whitening import SPECS, Whitening, whitening_weights


def correlated_images(n: int, size: int = 8, *, seed: int = 0) -> torch.Tensor:
    """Normalised-looking float images whose pixels are strongly correlated across channels and neighbours."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, size + 2, size + 2, generator=generator)
    smooth = F.avg_pool2d(base, 3, stride=1)  # neighbours share most of their value
    mix = torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    noise = 0.2 * torch.randn(n, 3, size, size, generator=generator)
    return smooth * mix + noise + 0.1


def output_moment(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """E[y y^T] of the conv's outputs over every patch inside the images (no padding)."""
    y = F.conv2d(images.double(), weights.double())
    flat = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    return flat.T @ flat / flat.shape[0]


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_whitened_patches_have_identity_covariance(kernel_size: int) -> None:
    images = correlated_images(64)
    weights = whitening_weights(images, kernel_size=kernel_size, eps=0.0)
    dim = 3 * kernel_size**2
    assert weights.shape == (dim, 3, kernel_size, kernel_size)
    moment = output_moment(images, weights)
    assert torch.allclose(moment, torch.eye(dim, dtype=torch.float64), atol=1e-4)
    raw = output_moment(images, torch.eye(dim).view(dim, 3, kernel_size, kernel_size))
    assert (raw - torch.diag(raw.diag())).abs().max() > 0.1  # the patches themselves were far from white


def test_eps_damps_the_directions_the_images_barely_use() -> None:
    images = correlated_images(64)
    weights = whitening_weights(images, kernel_size=3, eps=1e-2)
    moment = output_moment(images, weights)
    variances = moment.diag()
    off_diagonal = moment - torch.diag(variances)
    assert off_diagonal.abs().max() < 1e-4  # still decorrelated
    assert (variances <= 1).all() and variances[0] > 0.99  # lambda / (lambda + eps): the strongest direction ~1
    assert list(variances) == sorted(variances, reverse=True)  # filters ordered by eigenvalue, largest first


def test_airbench_patch2_appends_the_negated_filters() -> None:
    module = Whitening("patch2")
    module.fit(correlated_images(32))
    assert module.weight.shape == (24, 3, 2, 2)
    assert torch.equal(module.weight[12:], -module.weight[:12])
    assert module(correlated_images(2)).shape == (2, 24, 7, 7)  # padding 0, as airbench: one pixel less


def test_myrtle_patch3_keeps_the_image_size() -> None:
    module = Whitening("patch3")
    module.fit(correlated_images(32))
    assert module(correlated_images(2)).shape == (2, 27, 8, 8)  # 27 channels, padding 1
    assert SPECS["patch3"].eps == 1e-2 and SPECS["patch2"].eps == 5e-4


@pytest.mark.parametrize("mode", ["patch2", "patch3"])
def test_the_fit_reads_only_the_first_images_and_is_deterministic(mode: str) -> None:
    first = SPECS[mode].images  # airbench: 5000; Myrtle: 10000
    images = correlated_images(first + 3, size=4)
    other = images.clone()
    other[first:] = 100.0  # past the sample: must not matter
    a, b = Whitening(mode), Whitening(mode)
    a.fit(images)
    b.fit(other)
    assert torch.equal(a.weight, b.weight)
    c = Whitening(mode)
    c.fit(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a.weight, c.weight, atol=1e-5)  # any memory format, the same filters


def test_the_weight_is_a_fixed_buffer_not_a_parameter() -> None:
    module = Whitening("patch3")
    assert list(module.parameters()) == []
    assert "weight" in module.state_dict()  # saved with the model
    address = module.weight.data_ptr()
    module.fit(correlated_images(8))
    assert module.weight.data_ptr() == address  # written in place: a compiled model keeps reading it
