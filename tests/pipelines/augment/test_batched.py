"""pipelines.augment.batched: the batched augmentation matches albumentations, exactly where deterministic, in
distribution where random.

Random cases use coordinate-encoded images (channel 0 = 7 * row, channel 1 = 7 * column, channel 2 = 255), so
every augmented output reveals its crop offset, whether it was flipped and where the cutout hole is (channel 2
is 0 only inside a hole). Both sides use fixed seeds, so the tolerances are not a source of flakiness.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.augment import BatchAugment, build_albumentations
from pipelines.config import AugmentConfig

N = 20_000  # samples per side for distribution checks (albumentations: ~40 us each)


STEP = 7  # coordinate encoding: value = 7 * index (32 * 7 < 256)


RECIPE = AugmentConfig().ops


def coord_image(h: int = 32, w: int = 32) -> np.ndarray:
    """uint8 (h, w, 3): channel 0 encodes the row, channel 1 the column, channel 2 is 255."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows * STEP, cols * STEP, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def run_albumentations(ops, image: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n per-sample albumentations outputs of one image, as uint8 (n, C, H, W)."""
    compose = build_albumentations(ops)
    compose.set_random_seed(seed)
    return np.stack([compose(image=image)["image"] for _ in range(n)]).transpose(0, 3, 1, 2)


def run_batched(ops, image: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    batch = BatchAugment.from_ops(ops)
    assert batch is not None
    images = torch.from_numpy(image).permute(2, 0, 1)[None].expand(n, -1, -1, -1).contiguous()
    out = batch(images, generator=torch.Generator().manual_seed(seed))
    assert out.dtype == torch.uint8 and out.shape[0] == n
    return out.numpy()


def reflect101(pos: np.ndarray, size: int) -> np.ndarray:
    period = 2 * (size - 1)
    q = np.mod(pos, period)
    return np.where(q < size, q, period - q)


def decode_recipe(out: np.ndarray) -> dict[str, np.ndarray]:
    """For recipe outputs of coord_image(): crop offsets (0..8), flips, hole masks (reflect pad 4 each side).

    Each candidate offset/flip predicts the whole index map; exactly one must agree on all pixels outside the hole.
    """
    n = len(out)
    hole = out[:, 2] == 0
    keep = ~hole
    rows = out[:, 0].astype(int) // STEP
    cols = out[:, 1].astype(int) // STEP
    ar = np.arange(32)
    row_hits = np.stack(
        [((rows == reflect101(oy - 4 + ar, 32)[None, :, None]) | hole).all(axis=(1, 2)) for oy in range(9)], axis=1
    )
    col_maps = [
        (ox, flip, reflect101(ox - 4 + ar, 32)[::-1] if flip else reflect101(ox - 4 + ar, 32))
        for flip in (False, True)
        for ox in range(9)
    ]
    col_hits = np.stack([((cols == m[None, None, :]) | hole).all(axis=(1, 2)) for _, _, m in col_maps], axis=1)
    assert (row_hits.sum(1) == 1).all(), "every output must match exactly one vertical offset"
    assert (col_hits.sum(1) == 1).all(), "every output must match exactly one horizontal offset and flip"
    assert (out[:, 2][keep] == 255).all()
    col_choice = col_hits.argmax(1)
    return {
        "oy": row_hits.argmax(1),
        "ox": np.array([m[0] for m in col_maps])[col_choice],
        "flip": np.array([m[1] for m in col_maps])[col_choice],
        "hole": hole,
        "n": n,
    }


def freq(values: np.ndarray, bins: int) -> np.ndarray:
    return np.bincount(values, minlength=bins) / len(values)


def hole_corners(hole: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per holed image: top row, left column and pixel count of its hole."""
    holed = hole.any(axis=(1, 2))
    h = hole[holed]
    top = h.any(axis=2).argmax(axis=1)
    left = h.any(axis=1).argmax(axis=1)
    return top, left, h.sum(axis=(1, 2))


@pytest.fixture(scope="module")
def recipe_samples() -> tuple[dict, dict]:
    image = coord_image()
    return decode_recipe(run_albumentations(RECIPE, image, N)), decode_recipe(run_batched(RECIPE, image, N))


def test_recipe_crop_offsets_match_albumentations(recipe_samples):
    ref, got = recipe_samples
    uniform = np.full(9, 1 / 9)
    for axis in ("oy", "ox"):
        f_ref, f_got = freq(ref[axis], 9), freq(got[axis], 9)
        assert np.abs(f_ref - uniform).max() < 0.012, (axis, f_ref)  # albumentations: uniform over 0..8
        assert np.abs(f_got - uniform).max() < 0.012, (axis, f_got)
        assert np.abs(f_ref - f_got).max() < 0.015, (axis, f_ref, f_got)
    # the two axes are independent (joint frequencies ~ 1/81)
    joint = np.bincount(got["oy"] * 9 + got["ox"], minlength=81) / N
    assert np.abs(joint - 1 / 81).max() < 0.006


def test_recipe_flip_and_cutout_rates_match(recipe_samples):
    ref, got = recipe_samples
    for side in (ref, got):
        assert abs(side["flip"].mean() - 0.5) < 0.015
        assert abs(side["hole"].any(axis=(1, 2)).mean() - 0.5) < 0.015
    # flip, cutout and offsets are independent draws
    cut = got["hole"].any(axis=(1, 2))
    assert abs((got["flip"] & cut).mean() - 0.25) < 0.015


def test_recipe_holes_match_albumentations(recipe_samples):
    ref, got = recipe_samples
    stats = {}
    for label, side in (("albumentations", ref), ("batched", got)):
        top, left, area = hole_corners(side["hole"])
        # albumentations 2.0.8 places the top-left corner in 0..H-8: a hole never crosses the border
        assert (area == 64).all(), (label, np.unique(area))
        assert top.max() == 24 and left.max() == 24 and top.min() == 0 and left.min() == 0
        stats[label] = (freq(top, 25), freq(left, 25), top.mean(), left.mean(), top.std(), left.std())
    expected_std = np.sqrt((25**2 - 1) / 12)  # discrete uniform over 0..24
    for label, (f_top, f_left, m_top, m_left, s_top, s_left) in stats.items():
        assert abs(m_top - 12) < 0.3 and abs(m_left - 12) < 0.3, label
        assert abs(s_top - expected_std) < 0.2 and abs(s_left - expected_std) < 0.2, label
        assert np.abs(f_top - 1 / 25).max() < 0.012 and np.abs(f_left - 1 / 25).max() < 0.012, label
    a, b = stats["albumentations"], stats["batched"]
    assert np.abs(a[0] - b[0]).max() < 0.015 and np.abs(a[1] - b[1]).max() < 0.015


def test_recipe_pixel_statistics_match():
    """Independent of the decoder: per-position mean of every channel over many samples agrees."""
    image = coord_image()
    ref = run_albumentations(RECIPE, image, 5000, seed=1).astype(np.float64).mean(0)
    got = run_batched(RECIPE, image, 5000, seed=1).astype(np.float64).mean(0)
    assert np.abs(ref - got).max() < 8  # values span 0..255; sampling noise ~2


@pytest.mark.parametrize(
    "dropout",
    [
        {"num_holes_range": (1, 3), "hole_height_range": (4, 10), "hole_width_range": (2, 6), "p": 0.8},
        {"num_holes_range": (2, 2), "hole_height_range": (0.1, 0.4), "hole_width_range": (0.2, 0.3), "p": 1.0},
        {"num_holes_range": (1, 1), "hole_height_range": (20, 40), "hole_width_range": (16, 16), "p": 1.0},
        # albumentations decides pixels-vs-fractions from hole_height_range alone: these widths become 0 pixels
        {"num_holes_range": (1, 1), "hole_height_range": (8, 8), "hole_width_range": (0.1, 0.2), "p": 1.0},
    ],
    ids=["pixels", "fractions", "clamped-to-image", "mixed-units"],
)
def test_coarse_dropout_distribution_matches(dropout):
    ops = [{"name": "CoarseDropout", "fill": 0, **dropout}]
    image = np.full((24, 32, 3), 255, np.uint8)  # non-square on purpose
    n = 10_000
    ref = run_albumentations(ops, image, n)[:, 0] == 0
    got = run_batched(ops, image, n)[:, 0] == 0
    assert np.abs(ref.mean(0) - got.mean(0)).max() < 0.05  # per-pixel drop probability
    area_ref, area_got = ref.sum(axis=(1, 2)), got.sum(axis=(1, 2))
    assert abs(area_ref.mean() - area_got.mean()) < 0.05 * max(area_ref.mean(), 1)  # ~4 sigma
    assert abs((area_ref > 0).mean() - (area_got > 0).mean()) < 0.02


@pytest.mark.parametrize("fill", ["random", "random_uniform"])
def test_random_fills_match(fill):
    ops = [
        {
            "name": "CoarseDropout",
            "num_holes_range": (1, 2),
            "hole_height_range": (6, 6),
            "hole_width_range": (6, 6),
            "fill": fill,
            "p": 1.0,
        }
    ]
    image = np.full((16, 16, 3), 7, np.uint8)  # dropped pixels: any channel changed
    for out in (run_albumentations(ops, image, 3000), run_batched(ops, image, 3000)):
        dropped = (out != 7).any(axis=1)  # (n, h, w); a random value of exactly 7 in all channels is ~6e-8
        values = out.transpose(0, 2, 3, 1)[dropped]  # (pixels, 3)
        assert abs(values.mean() - 127.5) < 3 and values.min() < 5 and values.max() > 250
        if fill == "random_uniform":  # single-hole images are one colour
            one_hole = dropped.sum(axis=(1, 2)) == 36
            colours = [
                len(np.unique(img.transpose(1, 2, 0)[m], axis=0))
                for img, m in zip(out[one_hole][:50], dropped[one_hole][:50], strict=True)
            ]
            assert set(colours) == {1}


def test_flips_and_pad_random_position_distribution():
    ops = [
        {"name": "VerticalFlip", "p": 0.3},
        {"name": "PadIfNeeded", "min_height": 37, "min_width": 35, "position": "random", "border_mode": 0, "fill": 0},
    ]
    image = coord_image(32, 32)
    n = 8000
    for out in (run_albumentations(ops, image, n), run_batched(ops, image, n)):
        assert out.shape == (n, 3, 37, 35)
        inside = out[:, 2] == 255
        top = inside.any(axis=2).argmax(axis=1)  # 0..5 padding rows above, uniform
        left = inside.any(axis=1).argmax(axis=1)  # 0..3
        assert np.abs(freq(top, 6) - 1 / 6).max() < 0.02 and np.abs(freq(left, 4) - 1 / 4).max() < 0.02
        first_row = out[np.arange(n), 0, top, left] // STEP  # 31 when flipped vertically
        assert set(np.unique(first_row)) == {0, 31}
        assert abs((first_row == 31).mean() - 0.3) < 0.02


def _exact(ops, image: np.ndarray) -> None:
    ref = build_albumentations(ops)(image=image)["image"]
    got = run_batched(ops, image, 2)
    assert got.shape[1:] == ref.transpose(2, 0, 1).shape
    np.testing.assert_array_equal(got[0], ref.transpose(2, 0, 1))
    np.testing.assert_array_equal(got[1], ref.transpose(2, 0, 1))


def test_reflect_pad_then_center_is_the_image():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pad = [RECIPE[0]]
    _exact(pad, image)
    got = run_batched(pad, image, 1)[0]
    np.testing.assert_array_equal(got[:, 4:36, 4:36], image.transpose(2, 0, 1))
    np.testing.assert_array_equal(got[:, 0, 4:36], image[4].T)  # reflect_101: row -4 is row 4


@pytest.mark.parametrize("border_mode", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(
    "size",
    [
        {"min_height": 40, "min_width": 40},
        {"min_height": 37, "min_width": 44},
        {"min_height": 20, "min_width": 19},
    ],
    ids=["even", "odd", "multi-reflection"],
)
def test_pad_if_needed_exact(border_mode, size):
    h, w = (32, 30) if size["min_height"] != 20 else (5, 4)  # pads larger than the image reflect repeatedly
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    _exact([{"name": "PadIfNeeded", **size, "border_mode": border_mode, "fill": 77}], image)


@pytest.mark.parametrize("position", ["top_left", "top_right", "bottom_left", "bottom_right"])
def test_pad_positions_divisors_and_fills_exact(position):
    image = np.random.default_rng(2).integers(0, 256, (30, 27, 3), dtype=np.uint8)
    _exact(
        [{"name": "PadIfNeeded", "min_height": 36, "min_width": 33, "position": position, "fill": [10, 200, 30]}], image
    )
    _exact(
        [
            {
                "name": "PadIfNeeded",
                "min_height": None,
                "min_width": None,
                "pad_height_divisor": 16,
                "pad_width_divisor": 8,
                "border_mode": 0,
                "fill": 127.5,
                "position": position,
            }
        ],
        image,
    )


def test_chained_pads_flips_and_full_holes_exact():
    """Constant pads with different fills around reflect pads, deterministic flips and a hole covering everything."""
    image = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    ops = [
        {"name": "PadIfNeeded", "min_height": 14, "min_width": 12, "border_mode": 0, "fill": 9},
        {"name": "PadIfNeeded", "min_height": 18, "min_width": 17, "border_mode": 4},
        {"name": "HorizontalFlip", "p": 1.0},
        {"name": "PadIfNeeded", "min_height": 21, "min_width": 20, "border_mode": 0, "fill": (1, 2, 3)},
        {"name": "VerticalFlip", "p": 1.0},
        {"name": "PadIfNeeded", "min_height": 24, "min_width": 26, "border_mode": 2, "position": "bottom_right"},
        {"name": "RandomCrop", "height": 24, "width": 26},  # the whole image: deterministic
        {"name": "HorizontalFlip", "p": 0.0},
    ]
    _exact(ops, image)
    hole = {
        "name": "CoarseDropout",
        "num_holes_range": (1, 1),
        "hole_height_range": (24, 24),
        "hole_width_range": (26, 26),
        "fill": (5, 6, 7.9),
        "p": 1.0,
    }
    _exact([*ops, hole], image)
    _exact([{"name": "RandomCrop", "height": 40, "width": 36, "pad_if_needed": True, "border_mode": 1}], image)


def test_shapes_dtypes_layouts_and_seeds():
    batch = BatchAugment.from_ops(RECIPE)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = batch(images, generator=torch.Generator().manual_seed(5))
    b = batch(images, generator=torch.Generator().manual_seed(5))
    c = batch(images, generator=torch.Generator().manual_seed(6))
    assert a.shape == images.shape and a.dtype == torch.uint8 and a.device == images.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    last = batch(images.contiguous(memory_format=torch.channels_last), generator=torch.Generator().manual_seed(5))
    assert torch.equal(last, a) and last.is_contiguous(memory_format=torch.channels_last)
    assert batch(images[:0]).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        batch(images.float())


def test_large_batch_gather_path_agrees(monkeypatch):
    """Whole-epoch batches gather rows then columns (no per-pixel int64 index): same result as the flat gather."""
    from pipelines.augment import batched

    ops = [
        {"name": "PadIfNeeded", "min_height": 38, "min_width": 36, "border_mode": 0, "fill": 3, "position": "random"},
        {"name": "PadIfNeeded", "min_height": 40, "min_width": 40, "border_mode": 0, "fill": (1, 2, 3)},
        *RECIPE[1:],
    ]
    batch = BatchAugment.from_ops(ops)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    flat = batch(images, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(batched, "_FLAT_INDEX_LIMIT", 0)
    split = batch(images, generator=torch.Generator().manual_seed(1))
    last = batch(images.contiguous(memory_format=torch.channels_last), generator=torch.Generator().manual_seed(1))
    assert torch.equal(flat, split) and torch.equal(flat, last)
    assert last.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_contract():
    batch = BatchAugment.from_ops(RECIPE)
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device="cuda")
    out = batch(images, generator=torch.Generator(device="cuda").manual_seed(0))
    again = batch(images, generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.device and out.dtype == torch.uint8 and torch.equal(out, again)
    with pytest.raises(ValueError, match="generator"):
        batch(images, generator=torch.Generator().manual_seed(0))
    got = decode_recipe(run_batched_on(batch, coord_image(), 8000, "cuda"))
    assert np.abs(freq(got["oy"], 9) - 1 / 9).max() < 0.02 and abs(got["flip"].mean() - 0.5) < 0.02
    assert (hole_corners(got["hole"])[2] == 64).all()


def run_batched_on(batch: BatchAugment, image: np.ndarray, n: int, device: str) -> np.ndarray:
    images = torch.from_numpy(image).permute(2, 0, 1)[None].expand(n, -1, -1, -1).contiguous().to(device)
    return batch(images, generator=torch.Generator(device=device).manual_seed(0)).cpu().numpy()
