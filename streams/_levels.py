"""8-bit levels for :mod:`streams.corruptions`: float images in [0, 1] to and from uint8.

Three conversions, each one rule everywhere it is used:

- :func:`to_uint8`: an image in [0, 1] as 8-bit levels, rounding half up (``floor(255 x + 0.5)``): the
  uint8 image a corruption that works on 8 bits (``jpeg_compression``, ``pixelate``: PIL and libjpeg
  in the reference) starts from; levels ``k / 255`` come back as ``k``;
- :func:`from_uint8`: levels to [0, 1] floats, ``k * float32(1 / 255)``;
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


def _cast_to_uint8(values: Tensor, out: Tensor | None) -> Tensor:
    """Truncate float ``values`` in [0, 256) to uint8, into ``out`` when given."""
    if values.device.type == "cpu" and (out is None or out.is_contiguous()) and values.is_contiguous():
        result = out if out is not None else torch.from_numpy(np.empty(tuple(values.shape), dtype=np.uint8))
        np.copyto(result.numpy(), values.numpy(), casting="unsafe")
        return result
    return values.to(torch.uint8) if out is None else out.copy_(values)


def to_uint8(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``x`` in [0, 1] (float32) as uint8 levels, rounding half up; into ``out`` when given."""
    if x.device.type == "cpu" and x.is_contiguous() and (out is None or out.is_contiguous()):
        result = out if out is not None else torch.from_numpy(np.empty(tuple(x.shape), dtype=np.uint8))
        scaled = np.multiply(x.numpy(), np.float32(255.0))
        np.add(scaled, np.float32(0.5), out=result.numpy(), casting="unsafe")  # the cast truncates
        return result
    return _cast_to_uint8(x.mul(255.0).add_(0.5), out)  # in [0.5, 255.5]: truncation rounds


def truncate_to_uint8(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``x`` in [0, 1] as ImageNet-C stored it: ``np.uint8(255 x)`` (truncation, + 1e-3); into ``out``."""
    return _cast_to_uint8(x * 255.0 + 1e-3, out)


def from_uint8(levels: Tensor, out: Tensor | None = None) -> Tensor:
    """uint8 ``levels`` as float32 in [0, 1] (``k * float32(1 / 255)``), into ``out`` when given."""
    if out is None:
        return levels.to(torch.float32).mul_(_INVERSE_255)
    return out.copy_(levels).mul_(_INVERSE_255)
