"""Counter-based random numbers per image for :mod:`streams.corruptions`.

Every random number a corruption uses is a pure function of ``(image key, stream, position)``:

- the **image key** (64 bits) hashes the call's ``seed`` with either the image's dataset index (when
  the caller passes ``indices``) or the image's content (a hash of its float32 bits), see
  :func:`image_keys`;
- the **stream** names one random field of one corruption (e.g. ``"snow:flakes"``), hashed to 64 bits;
- the **position** counts the values of that field for that image (0, 1, 2, ...).

A value is ``splitmix64(key' + (position + 1) * golden_gamma)`` with ``key' = splitmix64(key ^ stream)``:
exactly SplitMix64's output sequence (Steele, Lea & Flood, OOPSLA 2014; it passes BigCrush) seeded
with ``key'``. It is computed with torch integer ops (int64 arithmetic wraps modulo 2^64 on CPU and
CUDA alike), vectorised over the whole batch: no Python generator per image, no host transfer, the
same integers on every device. So an image's draws never depend on which other images share its
batch, or in what order, and two images of one batch with different keys never share a field.

Distributions: :meth:`Draws.uniform` (24-bit resolution, two values per 64-bit hash),
:meth:`Draws.normal` (Box-Muller, two values per hash), :meth:`Draws.integers` and
:meth:`Draws.poisson` (exact inversion against a tabulated CDF, :mod:`streams._poisson`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from streams._poisson import poisson_counts

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``value``."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_SEED_SALT, _INDEX_SALT, _CONTENT_SALT, _WEIGHT_SALT = (0x5EED, 0x1D3E, 0xC0DE, 0x3E16)
MAX_SEED = (1 << 63) - 1


def mix_int(z: int) -> int:
    """SplitMix64's finaliser of a Python int (the scalar twin of :func:`mix_`), as an int64."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _signed(z ^ (z >> 31))


def mix_(z: Tensor) -> Tensor:
    """SplitMix64's finaliser, in place on an int64 tensor (logical shifts by masking)."""
    t = torch.empty_like(z)
    for shift, multiplier in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)
        t &= (1 << (64 - shift)) - 1
        z ^= t
        if multiplier is not None:
            z *= multiplier
    return z


@functools.lru_cache(maxsize=256)
def stream_key(stream: str) -> int:
    """64-bit key of a stream name (stable across runs, machines and Python versions)."""
    return _signed(int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "little"))


@functools.lru_cache(maxsize=16)
def _counters(n: int, device: str) -> Tensor:
    """``(1..n) * golden_gamma`` as int64 (wrapping), cached per length and device."""
    return torch.arange(1, n + 1, dtype=torch.int64, device=device) * _GAMMA


@functools.lru_cache(maxsize=16)
def _content_weights(n: int, device: str) -> Tensor:
    """Odd 32-bit weights per position for the content hash (int32, wrapping)."""
    w = mix_(torch.arange(n, dtype=torch.int64, device=device) + _WEIGHT_SALT) | 1
    return w.to(torch.int32)


def check_seed(seed: object) -> int:
    """``seed`` as an int if it is a non-negative integer below 2**63, else a TypeError or ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative integer (e.g. seed=0), got {seed!r} of type "
                        f"{type(seed).__name__}; pass int(seed) if it is a whole number")
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {seed}; pass seed % 2**63 "
                         "to fold a larger value into range")
    return seed


def check_indices(indices: Sequence[int] | Tensor, batch: int, device: torch.device) -> Tensor:
    """``indices`` as an int64 tensor ``[batch]`` on ``device``, or a ValueError/TypeError saying what is wrong."""
    if isinstance(indices, Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be integers (one dataset index per image), got dtype {indices.dtype}")
        tensor = indices.detach().to(torch.int64)
    else:
        values = list(indices)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
            raise TypeError("indices must be integers (one dataset index per image), got "
                            f"{[v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)][:3]}")
        if any(not 0 <= int(v) <= MAX_SEED for v in values):
            raise ValueError(f"indices must be integers from 0 to 2**63 - 1, got {min(values)}..{max(values)}")
        tensor = torch.tensor([int(v) for v in values], dtype=torch.int64)
    if tensor.dim() != 1 or tensor.numel() != batch:
        raise ValueError(f"indices must hold one index per image: shape ({batch},), got {tuple(tensor.shape)}")
    if isinstance(indices, Tensor) and tensor.device.type == "cpu" and tensor.numel() and bool((tensor < 0).any()):
        raise ValueError("indices must be non-negative dataset indices")  # on a GPU: see corrupt's input check
    return tensor.to(device)


def image_keys(seed: int, images: Tensor, indices: Tensor | None = None) -> Tensor:
    """Per-image 64-bit keys ``[B]`` (int64, on the images' device) from ``seed`` and indices or content.

    With ``indices`` (int64 ``[B]``, see :func:`check_indices`) the key of image ``i`` depends only on
    ``(seed, indices[i])``. Without, on ``(seed, content of image i)``: two 32-bit sums over the bit
    patterns of its float32 values, plain and weighted by odd per-position weights (wrapping integer
    sums: exact, order-free, the same on every device), so two images that differ in any value get
    different keys, and equal images equal keys.
    """
    seed_key = mix_int(seed ^ _SEED_SALT)
    if indices is not None:
        ids = indices.to(device=images.device, dtype=torch.int64) ^ _INDEX_SALT
    else:
        bits = images.reshape(images.shape[0], -1).to(torch.float32).contiguous().view(torch.int32)
        weights = _content_weights(bits.shape[1], str(bits.device))
        plain = bits.sum(dim=1, dtype=torch.int32).to(torch.int64) & 0xFFFFFFFF
        weighted = (bits * weights).sum(dim=1, dtype=torch.int32).to(torch.int64)
        ids = ((weighted << 32) | plain) ^ _CONTENT_SALT
    return mix_(mix_(ids) ^ seed_key)


class Draws:
    """The random fields of one corruption call: one key per image, one stream per field."""

    def __init__(self, keys: Tensor) -> None:
        self.keys = keys
        self.device = keys.device

    def __len__(self) -> int:
        return self.keys.numel()

    def hashes(self, stream: str, n: int) -> Tensor:
        """``[B, n]`` int64: the first ``n`` 64-bit values of ``stream`` for every image."""
        base = mix_(self.keys ^ stream_key(stream))
        return mix_(base[:, None] + _counters(n, str(self.device))[None, :])

    def uniform(self, stream: str, shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> Tensor:
        """``U[low, high)`` float32 ``[B, *shape]``, 24-bit resolution (the two halves of each hash)."""
        n = math.prod(shape)
        half = (n + 1) // 2
        z = self.hashes(stream, half)
        out = torch.empty(len(self), 2 * half, dtype=torch.float32, device=self.device)
        out[:, :half] = z >> 40  # signed 24-bit values from the high bits ...
        out[:, half:] = z.to(torch.int32) >> 8  # ... and from bits 8-31
        width = high - low
        out.mul_(width * 2.0**-24).add_(low + width / 2)
        return out[:, :n].view(len(self), *shape) if n != 2 * half else out.view(len(self), *shape)

    def uniform_bits(self, stream: str, n: int) -> tuple[Tensor, Tensor]:
        """The uniforms of :meth:`uniform` for ``n`` values as signed 24-bit integers ``v`` (``u = v *
        2^-24 + 1/2``): values ``0 .. ceil(n/2) - 1`` from the first tensor, the rest from the second."""
        z = self.hashes(stream, (n + 1) // 2)
        return z >> 40, (z.to(torch.int32) >> 8)[:, : n // 2]

    @staticmethod
    def bits_below(t: float) -> int:
        """The integer ``limit`` with ``u < t  <=>  v < limit`` for :meth:`uniform_bits` values."""
        return math.ceil(t * 2**24) - 2**23

    def normal(self, stream: str, shape: Sequence[int], mean: float = 0.0, std: float = 1.0) -> Tensor:
        """``N(mean, std^2)`` float32 ``[B, *shape]`` by Box-Muller (cosine and sine halves of each hash)."""
        n = math.prod(shape)
        half = (n + 1) // 2
        z = self.hashes(stream, half)
        radius = ((z >> 32) + (2**31 + 1)).to(torch.float32)  # 1 .. 2^32: never log(0)
        radius.mul_(2.0**-32).log_().mul_(-2.0 * std * std).sqrt_()
        angle = (z.to(torch.int32) >> 8).to(torch.float32).mul_(2 * math.pi * 2.0**-24)
        out = torch.empty(len(self), 2 * half, dtype=torch.float32, device=self.device)
        torch.cos(angle, out=out[:, :half])
        torch.sin(angle, out=out[:, half:])
        out[:, :half] *= radius
        out[:, half:] *= radius
        if mean:
            out += mean
        return out[:, :n].reshape(len(self), *shape) if n != 2 * half else out.view(len(self), *shape)

    def integers(self, stream: str, shape: Sequence[int], low: int, high: int) -> Tensor:
        """Integers uniform in ``[low, high)`` as int64 ``[B, *shape]`` (``numpy.random.randint``'s range)."""
        u = self.uniform(stream, shape)
        return torch.floor(u * (high - low)).to(torch.int64).clamp_(max=high - low - 1) + low

    def poisson(self, stream: str, rate: Tensor, max_rate: float) -> Tensor:
        """Poisson counts (float32, shape of ``rate``, ``0 <= rate <= max_rate``), one per value, by exact
        inversion of two uniforms (the two halves of one hash; :func:`streams._poisson.poisson_counts`)."""
        n = rate[0].numel()
        z = self.hashes(stream, n)
        v = (z >> 40).to(torch.int32).add_(2**23).view(rate.shape)  # 0 .. 2^24 - 1
        u_rest = (z.to(torch.int32) >> 8).to(torch.float32).mul_(2.0**-24).add_(0.5).view(rate.shape)
        return poisson_counts(rate.float(), v, u_rest, max_rate)
