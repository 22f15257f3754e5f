"""The standard ops run batched with torch: a whole uint8 ``(N, C, H, W)`` batch on its device, no per-image Python.

PadIfNeeded, RandomCrop, HorizontalFlip, VerticalFlip and CoarseDropout, sampling every random choice per image
exactly as albumentations 2.0.8 does (same distributions, not the same random stream). Geometric ops (pads,
crops, flips) are composed as per-image row/column index maps and applied with one gather; cutout is a broadcast
mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.augment.spec import (
    BORDER_CONSTANT,
    BORDER_NAMES,
    BORDER_REFLECT,
    BORDER_REFLECT_101,
    BORDER_REPLICATE,
    BORDER_WRAP,
    build_albumentations,
)
from pipelines.errors import UserError

_FLAT_INDEX_LIMIT = 1 << 24  # output pixels up to which materialising uses one int64 index per pixel (128 MiB)
PAD_POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right", "random")  # all batched


class _Canvas:
    """A batch with pending geometry: output pixel (n, y, x) = x[n, :, rows[n, y], cols[n, x]].

    ``rows``/``cols`` are int64 ``(1 or N, H')``/``(1 or N, W')``. A negative entry ``-1 - j`` means "constant
    padding with fills[j]"; when both axes are constant the later pad (larger j) wins, as it painted over
    the whole band. ``materialize`` does the single gather. ``flips``: bool (N,), which images HorizontalFlip
    mirrors (the alternating flip), or None: it draws its own coins.
    """

    def __init__(
        self, images: torch.Tensor, generator: torch.Generator | None, flips: torch.Tensor | None = None
    ) -> None:
        self.x = images
        self.generator = generator
        self.flips = flips
        self.device = images.device
        self.n = images.shape[0]
        self.channels = images.shape[1]
        self._reset()

    def _reset(self) -> None:
        h, w = self.x.shape[-2:]
        self.rows = torch.arange(h, device=self.device)[None]
        self.cols = torch.arange(w, device=self.device)[None]
        self.fills: list[torch.Tensor] = []
        self.identity = True

    @property
    def height(self) -> int:
        return self.rows.shape[1]

    @property
    def width(self) -> int:
        return self.cols.shape[1]

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def randint(self, low: int | torch.Tensor, high: int | torch.Tensor, *shape: int) -> torch.Tensor:
        """Uniform integers in [low, high] (inclusive; tensors broadcast) as albumentations' int(span * random())."""
        span = high - low + 1
        offset = torch.floor(self.rand(*shape) * span).long()
        # float32 u * span can round up to span: clamp (no host-to-device copies, so no sync on CUDA)
        offset = torch.minimum(offset, span - 1) if isinstance(span, torch.Tensor) else offset.clamp(max=span - 1)
        return low + offset

    def remap(self, axis: int, positions: torch.Tensor, code: int | None = None) -> None:
        """Compose a new map along ``axis`` (0 rows, 1 cols): new[n, i] = old[n, positions[n, i]].

        Positions that are negative become constant padding ``code`` (an index into fills).
        """
        old = self.rows if axis == 0 else self.cols
        batch = torch.broadcast_shapes(old.shape[:1], positions.shape[:1])[0]
        picked = torch.gather(old.expand(batch, -1), 1, positions.clamp(min=0).expand(batch, -1))
        if code is not None:
            picked = torch.where(positions < 0, torch.full_like(picked, -1 - code), picked)
        if axis == 0:
            self.rows = picked
        else:
            self.cols = picked
        self.identity = False

    def add_fill(self, fill: torch.Tensor) -> int:
        self.fills.append(fill)
        return len(self.fills) - 1

    def materialize(self) -> torch.Tensor:
        if self.identity:
            return self.x
        x, n, c = self.x, self.n, self.channels
        h, w = x.shape[-2:]
        rows, cols = self.rows.expand(n, -1), self.cols.expand(n, -1)
        oh, ow = rows.shape[1], cols.shape[1]
        src_rows, src_cols = rows.clamp(min=0), cols.clamp(min=0)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if n * oh * ow <= _FLAT_INDEX_LIMIT:  # one gather over flattened pixels (fastest; int64 index per pixel)
            index = (src_rows[:, :, None] * w + src_cols[:, None, :]).reshape(n, oh * ow)
            if channels_last:
                flat = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
                out = torch.gather(flat, 1, index[:, :, None].expand(n, oh * ow, c))
                out = out.view(n, oh, ow, c).permute(0, 3, 1, 2)  # NCHW view, channels_last strides
            else:
                flat = x.reshape(n, c, h * w)
                out = torch.gather(flat, 2, index[:, None, :].expand(n, c, oh * ow)).view(n, c, oh, ow)
        else:  # huge batches (a whole epoch): rows then columns, with broadcast indices (no per-pixel index)
            out = torch.gather(x, 2, src_rows[:, None, :, None].expand(n, c, oh, w))
            out = torch.gather(out, 3, src_cols[:, None, None, :].expand(n, c, oh, ow))
            if channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
        if self.fills:  # constant padding; where both axes are padding, the later pad (larger index) wins
            code_r = torch.where(rows < 0, -1 - rows, -1).to(torch.int16)
            code_c = torch.where(cols < 0, -1 - cols, -1).to(torch.int16)
            code = torch.maximum(code_r[:, :, None], code_c[:, None, :])[:, None]  # (n, 1, oh, ow); -1: image
            for j, fill in enumerate(self.fills):
                out = torch.where(code == j, fill[None, :, None, None], out)
        self.x = out
        self._reset()
        return out


def _border_index(pos: torch.Tensor, size: int, mode: int) -> torch.Tensor:
    """cv2.borderInterpolate, vectorised: source index for each (possibly out-of-range) position; -1 = constant."""
    inside = (pos >= 0) & (pos < size)
    if mode == BORDER_CONSTANT:
        return torch.where(inside, pos, torch.full_like(pos, -1))
    if mode == BORDER_REPLICATE:
        return pos.clamp(0, size - 1)
    if mode == BORDER_WRAP:
        return torch.remainder(pos, size)
    if mode == BORDER_REFLECT_101:
        if size == 1:
            return torch.zeros_like(pos)
        period = 2 * (size - 1)
        q = torch.remainder(pos, period)
        return torch.where(q < size, q, period - q)
    if mode == BORDER_REFLECT:
        q = torch.remainder(pos, 2 * size)
        return torch.where(q < size, q, 2 * size - 1 - q)
    raise ValueError(f"unsupported border mode {mode}")


def _pad_fill(fill: Any, channels: int, device: torch.device) -> torch.Tensor:
    """cv2.copyMakeBorder's value: a number for every channel, or a per-channel tuple (missing channels 0),
    saturated to uint8 with round-half-to-even."""
    values = [float(fill)] * channels if isinstance(fill, (int, float)) else [float(v) for v in fill][:channels]
    values += [0.0] * (channels - len(values))
    return _uint8_vector([min(max(round(v), 0), 255) for v in values], device)


def _uint8_vector(values: list[int], device: torch.device) -> torch.Tensor:
    """A small uint8 vector made on the device by fill kernels (torch.tensor would be a synchronous copy on CUDA)."""
    if len(set(values)) <= 1:
        return torch.full((len(values),), values[0] if values else 0, dtype=torch.uint8, device=device)
    return torch.cat([torch.full((1,), v, dtype=torch.uint8, device=device) for v in values])


def _pad_amounts(size: int, minimum: int | None, divisor: int | None) -> tuple[int, int]:
    """albumentations' get_dimension_padding."""
    if minimum is not None:
        if size < minimum:
            before = int((minimum - size) / 2.0)
            return before, minimum - size - before
    elif divisor is not None:
        remainder = size % divisor
        if remainder > 0:
            total = divisor - remainder
            return total // 2, total - total // 2
    return 0, 0


@dataclass(frozen=True)
class _Pad:
    """PadIfNeeded (and RandomCrop's pad_if_needed): pad to a minimum size or a multiple, cv2 border modes."""

    min_height: int | None
    min_width: int | None
    height_divisor: int | None
    width_divisor: int | None
    position: str
    border_mode: int
    fill: Any

    def __call__(self, canvas: _Canvas) -> None:
        top, bottom = _pad_amounts(canvas.height, self.min_height, self.height_divisor)
        left, right = _pad_amounts(canvas.width, self.min_width, self.width_divisor)
        if top == bottom == left == right == 0:
            return
        code = None
        if self.border_mode == BORDER_CONSTANT:
            code = canvas.add_fill(_pad_fill(self.fill, canvas.channels, canvas.device))
        for axis, before, after in ((0, top, bottom), (1, left, right)):
            size = canvas.height if axis == 0 else canvas.width
            total = before + after
            if total == 0:
                continue
            first = self._before(axis, before, total, canvas)  # int or (N, 1) tensor
            pos = torch.arange(size + total, device=canvas.device)[None] - first
            canvas.remap(axis, _border_index(pos, size, self.border_mode), code)

    def _before(self, axis: int, centered: int, total: int, canvas: _Canvas) -> int | torch.Tensor:
        """Padding before the image along an axis: albumentations' adjust_padding_by_position."""
        if self.position == "center":
            return centered
        if self.position == "random":  # py_random.randint(0, total), per image
            return canvas.randint(0, total, canvas.n)[:, None]
        top, left = {"top_left": (0, 0), "top_right": (0, 1), "bottom_left": (1, 0), "bottom_right": (1, 1)}[
            self.position
        ]
        return total * (top if axis == 0 else left)


@dataclass(frozen=True)
class _RandomCrop:
    height: int
    width: int

    def __call__(self, canvas: _Canvas) -> None:
        h, w = canvas.height, canvas.width
        if self.height > h or self.width > w:  # albumentations raises CropSizeError
            raise ValueError(f"RandomCrop size {self.height}x{self.width} exceeds the image size {h}x{w}")
        # get_crop_coords: y_min = int((h - crop + 1) * random()), h_start drawn before w_start
        top = canvas.randint(0, h - self.height, canvas.n)
        left = canvas.randint(0, w - self.width, canvas.n)
        ar_h = torch.arange(self.height, device=canvas.device)
        ar_w = torch.arange(self.width, device=canvas.device)
        canvas.remap(0, top[:, None] + ar_h[None])
        canvas.remap(1, left[:, None] + ar_w[None])


@dataclass(frozen=True)
class _Flip:
    axis: int  # 0 vertical (rows), 1 horizontal (cols)
    p: float

    def __call__(self, canvas: _Canvas) -> None:
        if self.p <= 0:
            return
        size = canvas.height if self.axis == 0 else canvas.width
        ar = torch.arange(size, device=canvas.device)
        alternating = self.axis == 1 and canvas.flips is not None  # the alternating flip decided which images
        # should_apply: random() < p (p >= 1: always)
        flip = canvas.flips if alternating else canvas.rand(canvas.n) < self.p
        canvas.remap(self.axis, torch.where(flip[:, None], ar.flip(0)[None], ar[None]))


@dataclass(frozen=True)
class _CoarseDropout:
    """CoarseDropout: per image, with probability p, ``num_holes`` rectangles filled with ``fill``.

    albumentations 2.0.8: num_holes ~ U{a..b}; if hole_height_range[1] >= 1 both ranges are pixels, sizes
    ~ U{int(lo)..int(min(hi, size))}, else fractions, size = int(size * U(lo, hi)); the top-left corner is
    ~ U{0..H - h} x U{0..W - w}, so a hole never crosses the border (always h * w pixels).
    """

    num_holes: tuple[int, int]
    height_range: tuple[float, float]
    width_range: tuple[float, float]
    fill: Any  # number, per-channel tuple, "random" or "random_uniform"
    p: float

    def __call__(self, canvas: _Canvas) -> None:
        if self.p <= 0:
            return
        x = canvas.materialize()
        n, c, h, w = x.shape
        device = canvas.device
        k = self.num_holes[1]
        apply = canvas.rand(n) < self.p
        count = canvas.randint(self.num_holes[0], self.num_holes[1], n)
        pixels = self.height_range[1] >= 1
        hole_h = self._sizes(canvas, self.height_range, h, pixels, n, k, "height")
        hole_w = self._sizes(canvas, self.width_range, w, pixels, n, k, "width")
        y0 = canvas.randint(torch.zeros_like(hole_h), h - hole_h, n, k)
        x0 = canvas.randint(torch.zeros_like(hole_w), w - hole_w, n, k)
        active = (torch.arange(k, device=device)[None] < count[:, None]) & apply[:, None]  # (n, k)
        ar_h = torch.arange(h, device=device)
        ar_w = torch.arange(w, device=device)
        in_rows = (ar_h >= y0[..., None]) & (ar_h < (y0 + hole_h)[..., None]) & active[..., None]  # (n, k, h)
        in_cols = (ar_w >= x0[..., None]) & (ar_w < (x0 + hole_w)[..., None])  # (n, k, w)
        # a loop over hole slots (k = the most holes, a handful), never over images; memory O(n * h * w)
        if self.fill == "random_uniform":  # one random colour per hole; later holes paint over earlier ones
            colors = torch.randint(0, 256, (n, k, c), generator=canvas.generator, device=device, dtype=torch.uint8)
            for j in range(k):
                cover = in_rows[:, j, :, None] & in_cols[:, j, None, :]  # (n, h, w)
                x = torch.where(cover[:, None], colors[:, j, :, None, None], x)
        else:
            mask = in_rows[:, 0, :, None] & in_cols[:, 0, None, :]
            for j in range(1, k):
                mask |= in_rows[:, j, :, None] & in_cols[:, j, None, :]
            if self.fill == "random":  # a random value per pixel and channel
                value = torch.randint(0, 256, x.shape, generator=canvas.generator, device=device, dtype=torch.uint8)
            else:
                value = self._constant(c, device)[None, :, None, None]
            x = torch.where(mask[:, None], value, x)
        canvas.x = x
        canvas._reset()

    def _sizes(self, canvas: _Canvas, bounds: tuple[float, float], size: int, pixels: bool, n: int, k: int, what: str):
        lo, hi = bounds
        if pixels:
            lo_i, hi_i = int(lo), int(min(hi, size))
            if hi_i < lo_i:
                raise ValueError(f"CoarseDropout hole {what} {lo} exceeds the image {what} {size}")
            return canvas.randint(lo_i, hi_i, n, k)
        return torch.floor(size * (lo + canvas.rand(n, k) * (hi - lo))).long()  # hi < 1: always < size

    def _constant(self, channels: int, device: torch.device) -> torch.Tensor:
        """albumentations' np.array(fill, dtype=uint8): truncation; a tuple must match the channels."""
        if isinstance(self.fill, (int, float)):
            values = [int(self.fill)] * channels
        else:
            values = [int(v) for v in self.fill]
            if len(values) != channels:
                raise ValueError(f"CoarseDropout fill {self.fill} has {len(values)} values for {channels} channels")
        return _uint8_vector(values, device)


@dataclass(frozen=True, eq=False)
class BatchAugment:
    """The supported albumentations ops, batched with torch on the images' device. Immutable; build with from_ops."""

    steps: tuple[Any, ...]
    ops: tuple[Mapping, ...] = ()

    @classmethod
    def from_ops(cls, ops: Sequence[Mapping]) -> BatchAugment | None:
        """The batched pipeline, or None when some op has no batched version (use SampleDataset then).

        Raises UserError for unknown transforms or bad arguments (the ops are built with albumentations first).
        """
        transforms = build_albumentations(ops).transforms
        steps = []
        for i, transform in enumerate(transforms):
            step = _batched(transform, f"augment.ops[{i}]")
            if step is None:
                return None
            if step is not _SKIP:
                steps.append(step)
        return cls(steps=tuple(steps), ops=tuple(dict(op) for op in ops))

    @property
    def horizontal_flip_p(self) -> float:
        """The probability with which HorizontalFlip mirrors an image (0 without one)."""
        return next((s.p for s in self.steps if isinstance(s, _Flip) and s.axis == 1), 0.0)

    def __call__(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None, flips: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Augment a uint8 ``(N, C, H, W)`` batch (any device, contiguous or channels_last) -> uint8 on the same device.

        Every random draw is a torch op on ``generator`` (which must live on the images' device), so a seeded
        generator reproduces the batch exactly. The input is never modified (with no ops it is returned as is).
        ``flips``: bool (N,) on the images' device, the images HorizontalFlip mirrors (instead of drawing with
        its p): :class:`~pipelines.augment.AlternatingFlip`'s mask.
        """
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"BatchAugment wants a uint8 (N, C, H, W) tensor, got {got}")
        if generator is not None and generator.device.type != images.device.type:
            raise ValueError(f"generator is on {generator.device} but the images are on {images.device}")
        if flips is not None and flips.shape != images.shape[:1]:
            raise ValueError(f"flips must be one bool per image ({images.shape[0]},), got {tuple(flips.shape)}")
        canvas = _Canvas(images, generator, flips)
        for step in self.steps:
            step(canvas)
        return canvas.materialize()


_SKIP = object()  # an op that is a no-op for every image (p = 0)


def _batched(t: Any, where: str) -> Any:
    """The batched step for one albumentations transform; None if unsupported, _SKIP if it never applies."""
    name = type(t).__name__
    if name in ("HorizontalFlip", "VerticalFlip", "CoarseDropout", "PadIfNeeded", "RandomCrop") and t.p <= 0:
        return _SKIP
    if name == "HorizontalFlip":
        return _Flip(axis=1, p=float(t.p))
    if name == "VerticalFlip":
        return _Flip(axis=0, p=float(t.p))
    if name == "PadIfNeeded":
        if t.p < 1 or t.border_mode not in BORDER_NAMES or t.position not in PAD_POSITIONS:
            return None
        return _Pad(
            t.min_height,
            t.min_width,
            t.pad_height_divisor,
            t.pad_width_divisor,
            t.position,
            t.border_mode,
            _check_fill(t.fill, where),
        )
    if name == "RandomCrop":
        if t.p < 1:
            return None
        crop = _RandomCrop(int(t.height), int(t.width))
        if t.pad_if_needed:
            if t.border_mode not in BORDER_NAMES or t.pad_position not in PAD_POSITIONS:
                return None
            pad = _Pad(crop.height, crop.width, None, None, t.pad_position, t.border_mode, _check_fill(t.fill, where))
            return _Chain((pad, crop))
        return crop
    if name == "CoarseDropout":
        fill = t.fill
        if isinstance(fill, str):
            if fill not in ("random", "random_uniform"):
                return None  # inpainting: OpenCV only
        else:
            fill = _check_fill(fill, where, truncate=True)
        return _CoarseDropout(
            num_holes=(int(t.num_holes_range[0]), int(t.num_holes_range[1])),
            height_range=(float(t.hole_height_range[0]), float(t.hole_height_range[1])),
            width_range=(float(t.hole_width_range[0]), float(t.hole_width_range[1])),
            fill=fill,
            p=float(t.p),
        )
    return None


@dataclass(frozen=True)
class _Chain:
    steps: tuple[Any, ...]

    def __call__(self, canvas: _Canvas) -> None:
        for step in self.steps:
            step(canvas)


def _check_fill(fill: Any, where: str, *, truncate: bool = False) -> Any:
    """A numeric fill for uint8 images: each value in 0..255 (CoarseDropout would overflow; pads would saturate)."""
    values = [fill] if isinstance(fill, (int, float)) else list(fill)
    for v in values:
        if not isinstance(v, (int, float)) or not math.isfinite(v) or (truncate and not 0 <= v < 256):
            raise UserError(f"{where}: fill {fill!r} is not a value for uint8 images (0..255)")
    return fill if isinstance(fill, (int, float)) else tuple(values)
