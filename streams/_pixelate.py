"""ImageNet-C's ``pixelate`` exactly as PIL computes it: ``BOX`` down, ``BOX`` back up, on 8-bit images.

``make_imagenet_c.py`` resizes the uint8 image with PIL's ``BOX`` filter to ``int(224 * c)`` and back.
PIL's 8-bit resampling (``libImaging/Resample.c``) is separable; each output value is
``(2**21 + sum(level * k)) >> 22`` clipped to 0..255, with the box weights ``1 / n`` as 22-bit
fixed-point integers ``k = int(0.5 + 2**22 / n)``, so each pass ends on 8 bits, and the order of the
passes matters (:func:`vertical_first`). Upscaling with ``BOX``
only replicates pixels (one tap of weight ``2**22`` per output pixel). This module reproduces that bit
for bit, from PIL's own coefficient rule (:func:`box_coefficients`), in two ways with one result:

- on the CPU, PIL itself for the downscale (per image; the reference's own computation), then the
  replication as one batched gather;
- on other devices, the same integer arithmetic as batched tensor ops (int32, no host round trip).

Float images are rounded to 8-bit levels first (:func:`streams._levels.to_uint8`), as the reference
only ever sees uint8 images; the result is the levels, or ``levels / 255`` as float32 for float input.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from streams._levels import from_uint8, to_uint8

_PRECISION_BITS = 22  # PIL: 32 - 8 - 2
_HALF = 1 << (_PRECISION_BITS - 1)


@functools.lru_cache(maxsize=128)
def box_coefficients(n_in: int, n_out: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """PIL's ``BOX`` resampling of ``n_in`` pixels to ``n_out`` along one axis, as in ``precompute_coeffs``
    and ``normalize_coeffs_8bpc`` of ``Resample.c`` (the same double arithmetic, in Python floats).

    Returns ``(first, weights)``: output pixel ``i`` is ``sum_t level[first[i] + t] * weights[i][t]`` in
    22-bit fixed point (``len(weights[i])`` taps, all rows padded to the same length with 0).
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    inverse = 1.0 / filterscale
    firsts, rows = [], []
    for i in range(n_out):
        centre = 0.0 + (i + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        count = min(int(centre + support + 0.5), n_in) - first
        taps = [1.0 if -0.5 < (x + first - centre + 0.5) * inverse <= 0.5 else 0.0 for x in range(count)]
        total = sum(taps)
        taps = [t / total for t in taps] if total != 0.0 else taps
        firsts.append(first)
        rows.append([int(0.5 + t * (1 << _PRECISION_BITS)) for t in taps])
    width = max(len(row) for row in rows)
    return tuple(firsts), tuple(tuple(row + [0] * (width - len(row))) for row in rows)


@functools.lru_cache(maxsize=128)
def _taps(n_in: int, n_out: int, device: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`box_coefficients` as tensors on ``device``: input indices and int32 weights ``[T, n_out]``,
    and the index each output pixel copies when the resize only replicates (one tap of weight 1)."""
    firsts, rows = box_coefficients(n_in, n_out)
    first = torch.tensor(firsts, dtype=torch.int64)
    tap = torch.arange(len(rows[0]), dtype=torch.int64)[:, None]
    index = (first[None, :] + tap).clamp_(max=n_in - 1)
    weight = torch.tensor(rows, dtype=torch.int32).T.contiguous()
    copies = index.shape[0] == 1 and bool(torch.all(weight == 1 << _PRECISION_BITS))
    return index.to(device), weight.to(device), index[0].to(device) if copies else None


def replication_index(n_in: int, n_out: int, device: torch.device | str = "cpu") -> Tensor | None:
    """The input pixel each output pixel copies when PIL's ``BOX`` resize from ``n_in`` to ``n_out`` is a
    pure replication (upscaling: one tap of weight 1), else ``None``."""
    return _taps(n_in, n_out, str(device))[2]


def _fixed_point_pass(levels: Tensor, n_out: int, dim: int) -> Tensor:
    """One 8-bit ``BOX`` pass of int32 ``levels`` along ``dim`` (-1: horizontal, -2: vertical)."""
    n_in = levels.shape[dim]
    if n_in == n_out:
        return levels
    index, weight, _ = _taps(n_in, n_out, str(levels.device))
    shape = [1] * levels.dim()
    shape[dim] = n_out
    total = torch.full((), _HALF, dtype=torch.int32, device=levels.device)
    for tap in range(index.shape[0]):
        total = total + levels.index_select(dim, index[tap]) * weight[tap].view(shape)
    return (total >> _PRECISION_BITS).clamp_(0, 255)


def vertical_first(h: int, w: int, height: int, width: int) -> bool:
    """Whether PIL resizes ``h x w`` to ``height x width`` with the vertical pass first.

    Pillow up to 12 always starts with the horizontal pass; Pillow 13 starts with the vertical one when
    the height loses more than twice as many pixels as the width (``2 (w - width) < h - height``: the
    rule that reproduces Pillow 13.0.0 on all of 2,948 random downscales whose result depends on the
    order). The two agree on pixelate's images unless one is over twice as tall as it is wide.
    """
    from PIL import __version__

    return int(__version__.split(".")[0]) >= 13 and 2 * (w - width) < h - height


def _downscale_torch(levels: Tensor, height: int, width: int) -> Tensor:
    """PIL's 8-bit ``BOX`` resize of uint8 ``[B, C, H, W]`` as int32 tensor ops, passes in PIL's order."""
    h, w = levels.shape[-2:]
    result = levels.to(torch.int32)
    if vertical_first(h, w, height, width):
        result = _fixed_point_pass(_fixed_point_pass(result, height, -2), width, -1)
    else:
        result = _fixed_point_pass(_fixed_point_pass(result, width, -1), height, -2)
    return result.to(torch.uint8)


def _downscale_pil(levels: Tensor, height: int, width: int) -> Tensor:
    """PIL's 8-bit ``BOX`` resize of uint8 ``[B, 3, H, W]`` (CPU), image by image."""
    from PIL import Image

    b, _, h, w = levels.shape
    planes = levels.contiguous().numpy()
    small = np.empty((b, height, width, 3), dtype=np.uint8)
    for image, target in zip(planes, small, strict=True):
        bands = [Image.frombuffer("L", (w, h), image[c], "raw", "L", 0, 1) for c in range(3)]
        target[...] = np.asarray(Image.merge("RGB", bands).resize((width, height), Image.BOX))
    return torch.from_numpy(small).permute(0, 3, 1, 2).contiguous()  # planar: faster column gathers


def _upscale(small: Tensor, height: int, width: int, out: Tensor | None, as_float: bool) -> Tensor:
    """PIL's ``BOX`` resize of uint8 ``small`` back to ``height x width``; float32 levels / 255 when
    ``as_float``; into ``out`` when given."""
    h, w = small.shape[-2:]
    rows, cols = replication_index(h, height, small.device), replication_index(w, width, small.device)
    if rows is None or cols is None:
        raise ValueError(f"pixelate upscales {h} x {w} back to {height} x {width}: no side may shrink")
    b, c = small.shape[:2]
    wide = small.gather(3, cols.view(1, 1, 1, width).expand(b, c, h, width))  # 2.5x index_select's speed
    if as_float:
        wide = from_uint8(wide)
    if out is None:
        return wide.index_select(2, rows)
    return torch.index_select(wide, 2, rows, out=out)


def pixelate(x: Tensor, height: int, width: int, out: Tensor | None = None) -> Tensor:
    """``BOX`` down to ``height x width`` and back, as PIL on 8 bits, of ``x [B, 3, H, W]``: uint8 levels
    (returned as uint8) or floats in [0, 1] (rounded to levels first; returned as float32 levels / 255).
    Into ``out`` (the result's dtype and shape) when given; a new tensor otherwise."""
    as_float = x.dtype != torch.uint8
    levels = to_uint8(x) if as_float else x
    h, w = x.shape[-2:]
    if levels.device.type == "cpu" and (height, width) != (h, w):
        small = _downscale_pil(levels, height, width)
    else:
        small = _downscale_torch(levels, height, width)
    return _upscale(small, h, w, out, as_float)
