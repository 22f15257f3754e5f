"""airbench's alternating (derandomised) horizontal flip: each training image is mirrored on every other epoch.

KellerJordan/cifar10-airbench ``airbench94.py`` (``CifarLoader.__iter__``): at epoch 0 each image is flipped with
probability 1/2 (``batch_flip_lr``), and every odd epoch the whole pre-flipped set is mirrored again, so every
image is seen flipped exactly every other epoch. Over any two consecutive epochs each image is seen both ways, where
independent coins would show half of them the same way twice ("increases diversity relative to random flipping",
airbench).

Here the epoch-0 coins are drawn once per run for the whole training set (``first``, indexed by an image's position
in it), and the images of a batch are named by their indices in the training set (an epoch's permutation), so an
epoch can be augmented in any order: image i is flipped at epoch e exactly when ``first[i] != (e is odd)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class AlternatingFlip:
    """``first``: bool (N_train,) on the images' device, whether each training image is flipped at epoch 0."""

    first: torch.Tensor

    @classmethod
    def draw(cls, n: int, *, p: float = 0.5, generator: torch.Generator) -> AlternatingFlip:
        """Epoch 0's coins for ``n`` training images, each flipped with probability ``p`` (airbench: 1/2; here the
        p of the pipeline's HorizontalFlip), on ``generator``'s device."""
        return cls(torch.rand(n, generator=generator, device=generator.device) < p)

    def mask(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """bool (B,): which of the images ``indices`` (int64 (B,), positions in the training set) are flipped at
        ``epoch`` (from 0)."""
        flipped = self.first[indices]
        return ~flipped if epoch % 2 else flipped

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """uint8 (B, C, H, W) -> the same with the images that ``mask`` names mirrored left-right (a new tensor)."""
        flip = self.mask(indices, epoch)
        return torch.where(flip[:, None, None, None], images.flip(-1), images)
