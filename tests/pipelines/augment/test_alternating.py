"""airbench's alternating flip: every image flips exactly on the epochs it did not flip the epoch before, whatever
order the epoch visits the images in."""

from __future__ import annotations

import torch

from pipelines.augment import AlternatingFlip, BatchAugment

N = 64  # training images


def coded_images(n: int = N, size: int = 4) -> torch.Tensor:
    """uint8 (n, 1, size, size): pixel (y, x) of image i is i + 64 x, so each image tells its identity (value mod
    64) and whether it is mirrored (its columns decrease)."""
    values = torch.arange(n)[:, None, None, None] + 64 * torch.arange(size)[None, None, None, :]
    return values.expand(n, 1, size, size).to(torch.uint8)


def flipped(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(identity of each output image, whether it is mirrored) decoded from coded_images()."""
    return out[:, 0, 0, 0].long() % 64, out[:, 0, 0, 0] > out[:, 0, 0, -1]


def test_each_image_flips_exactly_when_it_did_not_the_epoch_before() -> None:
    generator = torch.Generator().manual_seed(0)
    flip = AlternatingFlip.draw(N, generator=generator)
    train = coded_images()
    previous = None
    for epoch in range(4):
        order = torch.randperm(N, generator=generator)  # the epoch's permutation names each image of the batch
        out = flip(train[order], order, epoch)
        identity, mirrored = flipped(out)
        assert torch.equal(identity, order)
        by_image = torch.empty(N, dtype=torch.bool)
        by_image[identity] = mirrored
        if previous is None:
            assert 16 < int(by_image.sum()) < 48  # epoch 0: each image flipped with probability 1/2
        else:
            assert torch.equal(by_image, ~previous)  # flipped exactly when it was not the epoch before
        previous = by_image


def test_mask_names_the_flipped_images_of_a_batch() -> None:
    flip = AlternatingFlip(torch.tensor([True, False, False, True]))
    indices = torch.tensor([3, 1, 2])
    assert flip.mask(indices, 0).tolist() == [True, False, False]
    assert flip.mask(indices, 1).tolist() == [False, True, True]
    assert flip.mask(indices, 6).tolist() == [True, False, False]


def test_the_first_epoch_coins_come_from_the_generator() -> None:
    a = AlternatingFlip.draw(N, generator=torch.Generator().manual_seed(3))
    b = AlternatingFlip.draw(N, generator=torch.Generator().manual_seed(3))
    c = AlternatingFlip.draw(N, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.first, b.first) and not torch.equal(a.first, c.first)
    assert not AlternatingFlip.draw(N, p=0.0, generator=torch.Generator()).first.any()


def test_the_batched_flip_follows_the_mask_it_is_given() -> None:
    augment = BatchAugment.from_ops([{"name": "HorizontalFlip", "p": 0.5}])
    images = torch.randint(0, 256, (6, 3, 4, 5), dtype=torch.uint8)
    mask = torch.tensor([True, False, False, True, True, False])
    out = augment(images, generator=torch.Generator().manual_seed(0), flips=mask)
    assert torch.equal(out, torch.where(mask[:, None, None, None], images.flip(-1), images))
    assert augment.horizontal_flip_p == 0.5
