"""8-bit levels for :mod:`streams.corruptions`: float images in [0, 1] to and from uint8.

Four conversions, each one rule everywhere it is used:

- :func:`to_uint8`: an image in [0, 1] as 8-bit levels, rounding half up (``floor(255 x + 0.5)``): the
  uint8 image a corruption that works on 8 bits (``jpeg_compression``, ``pixelate``: PIL and libjpeg
  in the reference) starts from; levels ``k / 255`` come back as ``k``;
- :func:`from_uint8`: an 8-bit result (the codec's, pixelate's) to [0, 1] floats, ``k * float32(1 / 255)``;
- :func:`unit_from_uint8`: a uint8 input batch as the float batch it stands for, ``u.float() / 255``;
- :func:`truncate_to_uint8`: a corrupted image as ImageNet-C's files were written (``np.uint8`` of the
  [0, 255] result, i.e. truncation), with a 1e-3 allowance so that a level computed as 254.9999 in
  float32 stays 255.

On the CPU the float -> uint8 casts go through numpy (about 2.5x faster than torch's cast there, and
fused with the last addition); the arithmetic is one exactly rounded float32 operation at a time on
either side, so the result does not depend on the library or on where a value sits in a tensor.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_INVERSE_255 = 1.0 / 255.0


def _scale_to_uint8(x: Tensor, scale: float, offset: float, out: Tensor | None) -> Tensor:
    """``uint8(x * scale + offset)`` (float32 arithmetic, one rounding per operation, truncating cast) for
    ``x * scale + offset`` in [0, 256); into ``out`` when given."""
    if x.device.type == "cpu" and x.is_contiguous() and (out is None or out.is_contiguous()):
        result = out if out is not None else torch.from_numpy(np.empty(tuple(x.shape), dtype=np.uint8))
        scaled = np.multiply(x.numpy(), np.float32(scale))
        np.add(scaled, np.float32(offset), out=result.numpy(), casting="unsafe")  # the cast truncates
        return result
    values = x.mul(scale).add_(offset)
    return values.to(torch.uint8) if out is None else out.copy_(values)


def to_uint8(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``x`` in [0, 1] (float32) as uint8 levels, rounding half up; into ``out`` when given."""
    return _scale_to_uint8(x, 255.0, 0.5, out)  # in [0.5, 255.5]: truncation rounds


def truncate_to_uint8(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``x`` in [0, 1] as ImageNet-C stored it: ``np.uint8(255 x)`` (truncation, + 1e-3); into ``out``."""
    return _scale_to_uint8(x, 255.0, 1e-3, out)


def from_uint8(levels: Tensor, out: Tensor | None = None) -> Tensor:
    """uint8 ``levels`` (an 8-bit result) as float32 in [0, 1], ``k * float32(1 / 255)``; into ``out``."""
    if out is None:
        return levels.to(torch.float32).mul_(_INVERSE_255)
    return out.copy_(levels).mul_(_INVERSE_255)


def unit_from_uint8(images: Tensor) -> Tensor:
    """A uint8 batch as the float image it stands for, exactly ``images.float() / 255`` (contiguous)."""
    if images.device.type == "cpu":
        result = torch.from_numpy(np.empty(tuple(images.shape), dtype=np.float32))
        np.divide(images.numpy(), np.float32(255.0), out=result.numpy())  # the cast fused, then IEEE division
        return result
    return images.contiguous().float().div_(255.0)
