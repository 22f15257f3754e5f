"""A fixed first convolution that whitens the images' k x k patches (Myrtle.ai part 8, airbench).

The filters are the eigenvectors of the patches' second-moment matrix, each divided by sqrt(eigenvalue + eps), so
the conv's outputs over the training patches have (near) identity covariance: diag(λ / (λ + eps)), eps damping the
directions the images barely use. Both sources, followed here:

* Myrtle (davidcpage/cifar10-fast ``torch_backend.py``: ``patches``, ``eigens``, ``whitening_filter``;
  ``new_dawn.py``): 3x3 patches -> 27 filters, padding 1, no bias, eps 1e-2, fitted to the first 10,000 training
  images (normalised); the conv is followed by a 1x1 conv, batch norm and the activation.
* airbench (KellerJordan/cifar10-airbench ``airbench94.py``: ``get_patches``, ``get_whitening_parameters``,
  ``init_whitening_conv``): 2x2 patches -> 12 filters and their negations (24 channels, so the activation after it
  passes both signs), padding 0, eps 5e-4, fitted to the first 5,000 training images (normalised).

Both use the uncentred second moment X^T X / n of the patches, not the covariance about their mean: the images are
normalised (mean near 0) and the conv has no bias to subtract a mean with. airbench also trains a bias on this conv
for its first 3 epochs; here it has none (a batch norm follows, whose bias does that job).

Input: the normalised float images ``(N, 3, H, W)`` the network trains on (``Feeder.normalize`` of the first
``images`` uint8 training images), so the filters whiten what the conv will see. Deterministic: float64 moments
and eigen-decomposition on the CPU, each eigenvector's sign fixed (its largest entry positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.config import WHITENINGS

_CHUNK_IMAGES = 500  # images per matmul when summing the moments: ~50 MB of float32 patches at 32x32, 3x3


@dataclass(frozen=True)
class WhiteningSpec:
    """One source's whitening: patch size (pixels), eps (in the normalised images' squared units), how many of the
    first training images it is fitted to, whether the negated filters are appended, the conv's padding (pixels)."""

    kernel_size: int
    eps: float
    images: int
    negated: bool
    padding: int

    @property
    def out_channels(self) -> int:
        return 3 * self.kernel_size**2 * (2 if self.negated else 1)


SPECS = {
    # airbench94.py: whiten kernel_size 2, init_whitening_conv(eps=5e-4), train_loader.images[:5000], cat(V, -V)
    "patch2": WhiteningSpec(kernel_size=2, eps=5e-4, images=5000, negated=True, padding=0),
    # cifar10-fast new_dawn.py: whitening_filter(eps=1e-2), Conv2d(3, 27, 3, padding=1), train_set[:10000]
    "patch3": WhiteningSpec(kernel_size=3, eps=1e-2, images=10000, negated=False, padding=1),
}


def patch_moments(images: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, int]:
    """(sum of x x^T over every k x k patch x, flattened channel-major as a conv weight is) and the patch count.

    images: float (N, C, H, W), any device and memory format. Returns float64 (C k k, C k k) on the CPU.
    """
    n, c, h, w = images.shape
    if min(h, w) < kernel_size:
        raise ValueError(f"images of {h}x{w} pixels have no {kernel_size}x{kernel_size} patch")
    dim = c * kernel_size**2
    total = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, n, _CHUNK_IMAGES):  # chunks of images, not a loop over images
        chunk = images[start : start + _CHUNK_IMAGES].float()
        cols = F.unfold(chunk, kernel_size)  # (n, C k k, patches): channel-major, as Conv2d's weight flattens
        flat = cols.transpose(1, 2).reshape(-1, dim)
        total += (flat.T.double() @ flat.double()).cpu()
    count = n * (h - kernel_size + 1) * (w - kernel_size + 1)
    return total, count


def whitening_weights(images: torch.Tensor, *, kernel_size: int, eps: float, negated: bool = False) -> torch.Tensor:
    """Conv weights (C k k [x2 when negated], C, k, k), float32 on the images' device, that whiten k x k patches.

    Filter i is the i-th eigenvector of the patches' second moment (largest eigenvalue first) divided by
    sqrt(eigenvalue_i + eps); ``negated`` appends the same filters times -1 (airbench).
    images: float (N, C, H, W), normalised.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    total, count = patch_moments(images, kernel_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(total / count)  # ascending; columns are eigenvectors
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    biggest = eigenvectors.abs().argmax(0)
    signs = torch.sign(eigenvectors[biggest, torch.arange(eigenvectors.shape[1])])
    filters = (eigenvectors * signs).T / torch.sqrt(eigenvalues.clamp(min=0) + eps)[:, None]
    if negated:
        filters = torch.cat([filters, -filters])
    c = images.shape[1]
    return filters.reshape(-1, c, kernel_size, kernel_size).to(device=images.device, dtype=torch.float32)


def fitted_weights(mode: str, images: torch.Tensor) -> torch.Tensor:
    """The filters of ``mode`` (``patch2`` | ``patch3``) fitted to the first ``SPECS[mode].images`` of ``images``
    (normalised float (N, 3, H, W)): what :meth:`Whitening.fit` writes, computed apart so that it can be kept per
    data set (:class:`~pipelines.reuse.RunCache`) and copied into each run's model."""
    spec = SPECS[mode]
    first = images[: spec.images]
    return whitening_weights(first, kernel_size=spec.kernel_size, eps=spec.eps, negated=spec.negated)


class Whitening(nn.Module):
    """The fixed whitening conv of ``mode`` (``patch2`` | ``patch3``): 3 channels in, ``spec.out_channels`` out.

    The weight is a buffer (saved with the model, outside the optimizer, the EMA averages a constant): zeros until
    :meth:`fit`, which writes it in place, so a compiled model or a captured graph keeps reading the same memory.
    Output (N, out_channels, H + 2p - k + 1, W + 2p - k + 1): patch3 keeps 32x32, patch2 gives 31x31.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in SPECS:
            raise ValueError(f"whitening mode must be one of {', '.join(m for m in WHITENINGS if m != 'none')}")
        self.mode, self.spec = mode, SPECS[mode]
        k = self.spec.kernel_size
        self.register_buffer("weight", torch.zeros(self.spec.out_channels, 3, k, k))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Fit the filters to the first ``spec.images`` of ``images`` (normalised float (N, 3, H, W))."""
        self.weight.copy_(fitted_weights(self.mode, images))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=self.spec.padding)

    def extra_repr(self) -> str:
        return f"{self.mode}, 3 -> {self.spec.out_channels}, kernel {self.spec.kernel_size}"
