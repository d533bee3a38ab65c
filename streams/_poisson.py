"""Poisson counts from uniforms by exact inversion, vectorised, for ``shot_noise`` (:mod:`streams._rng`).

A rate ``r`` in ``[0, max_rate]`` is split as ``r = r0 + d`` with ``r0`` on a grid of step 1/16 and
``0 <= d < 1/16``; by additivity ``Poisson(r) = Poisson(r0) + Poisson(d)`` (independent parts):

- ``Poisson(r0)`` inverts a 24-bit uniform ``v / 2^24`` against the tabulated CDF of every grid rate
  (counts ``0 .. W-1``, ``W`` the power of two whose tail probability at ``max_rate`` is below 1e-12;
  the last entry is 1): the count is the number of CDF entries ``F`` with ``F < v / 2^24``, compared
  exactly as integers ``floor(F * 2^24) < v``. On the CPU a guide table (the count at ``v / 2^24 =
  m / 1024``) gives it up to two comparisons; the few values whose guide bucket spans more than two
  counts (the far tails) take the binary search. Elsewhere (CUDA) every value takes the fixed-step
  binary search: no host sync, the same counts.
- ``Poisson(d)`` inverts the second uniform over its first four terms (the fifth has probability
  below 7e-7 per value); on the CPU the terms past the first only where the count is at least 1.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

STEP = 1.0 / 16
GUIDE_BITS = 10  # guide buckets: the top 10 of the uniform's 24 bits
_CORRECTIONS = 2
_PAD = _CORRECTIONS  # entries past each row's end, set to 2^24 (never below a uniform)


@functools.lru_cache(maxsize=16)
def tables(max_rate: float, device: str) -> tuple[Tensor, Tensor, int, int]:
    """``(thresholds, guide, W, stride)`` for rates up to ``max_rate``, on ``device``.

    ``thresholds`` (int32, ``rows x stride`` flattened): ``floor(CDF * 2^24)`` per grid rate and
    count, padded with 2^24. ``guide`` (int32, ``rows x 2^GUIDE_BITS``): the count at the bucket's
    lower edge (low 8 bits) and how many counts the bucket spans (bits 8 and up).
    """
    rows = int(math.ceil(max_rate / STEP)) + 1
    rates = torch.arange(rows, dtype=torch.float64) * STEP
    width = 16
    while _tail(max_rate, width) > 1e-12:
        width *= 2
    k = torch.arange(width, dtype=torch.float64)
    log_pmf = k * torch.log(rates[:, None].clamp_min(1e-300)) - rates[:, None] - torch.lgamma(k + 1)
    pmf = torch.where(rates[:, None] > 0, torch.exp(log_pmf), (k == 0).double().expand(rows, width))
    cdf = pmf.cumsum(dim=1).clamp_(max=1.0)
    cdf[:, -1] = 1.0
    thresholds = torch.floor(cdf * 2.0**24).to(torch.int64)
    thresholds = torch.cat([thresholds, torch.full((rows, _PAD), 2**24, dtype=torch.int64)], dim=1)
    buckets = 1 << GUIDE_BITS
    edges = torch.arange(buckets + 1, dtype=torch.int64) << (24 - GUIDE_BITS)
    low = (thresholds[:, None, :width] < edges[None, :, None]).sum(dim=2)  # [rows, buckets + 1]
    span = low[:, 1:] - low[:, :-1]
    assert width <= 256, "guide entries hold counts below 256"
    guide = low[:, :-1] + (span << 8)
    return (thresholds.to(torch.int32).reshape(-1).to(device), guide.to(torch.int32).reshape(-1).to(device),
            width, width + _PAD)


def _tail(rate: float, width: int) -> float:
    """P(X >= width) for X ~ Poisson(rate)."""
    if rate == 0:
        return 0.0
    return max(0.0, 1.0 - sum(math.exp(k * math.log(rate) - rate - math.lgamma(k + 1)) for k in range(width)))


def _binary_search(thresholds: Tensor, row_start: Tensor, v: Tensor, width: int) -> Tensor:
    """Number of thresholds below ``v`` in each row (``width`` entries starting at ``row_start``)."""
    count = torch.zeros_like(row_start)
    half = width // 2
    while half:
        probe = thresholds.index_select(0, (row_start + count).add_(half - 1).view(-1)).view_as(v)
        count += (probe < v).to(count.dtype) * half
        half //= 2
    return count


def poisson_counts(rate: Tensor, v: Tensor, u_rest: Tensor, max_rate: float) -> Tensor:
    """Poisson counts (float32) for ``rate`` (float32, ``0 <= rate <= max_rate``) from a 24-bit integer
    uniform ``v`` (int32 in ``[0, 2^24)``) and a uniform ``u_rest`` in [0, 1) of the same shape."""
    thresholds, guide, width, stride = tables(float(max_rate), str(rate.device))
    rows = thresholds.numel() // stride
    row = torch.floor(rate * (1 / STEP)).clamp_(0, rows - 1)
    rest = rate.sub(row, alpha=STEP).clamp_(min=0.0)
    row = row.to(torch.int32)
    row_start = row * stride
    if rate.device.type == "cpu":
        bucket = (v >> (24 - GUIDE_BITS)).add_(row << GUIDE_BITS)
        packed = guide.index_select(0, bucket.view(-1)).view_as(v)
        count = packed & 0xFF
        start = row_start.add_(count)
        for j in range(_CORRECTIONS):  # the padding after each row is never below v
            probe = thresholds.index_select(0, (start + j).view(-1)).view_as(v)
            count += probe < v
        where = ((packed >> 8) > _CORRECTIONS).view(-1).nonzero().view(-1)
        if where.numel():
            count.view(-1)[where] = _binary_search(thresholds, row.view(-1)[where] * stride, v.view(-1)[where], width)
    else:
        count = _binary_search(thresholds, row_start, v, width)
    # Poisson(rest): P(0), P(1), ... by the recurrence; on the CPU only where the count is at least 1
    term = rest.neg().exp_()
    extra = (u_rest > term).to(torch.float32)
    if rate.device.type == "cpu":
        where = extra.view(-1).nonzero().view(-1)
        extra.view(-1)[where] += _rest_tail(rest.view(-1)[where], u_rest.reshape(-1)[where], term.view(-1)[where])
    else:
        extra += _rest_tail(rest, u_rest, term)
    return extra.add_(count)


def _rest_tail(rest: Tensor, u_rest: Tensor, term: Tensor) -> Tensor:
    """The counts beyond 1 of ``Poisson(rest)`` inverted at ``u_rest`` (``term`` = its P(0))."""
    cdf = term.clone()
    extra = torch.zeros_like(rest)
    for k in range(1, 4):
        term = term * rest * (1.0 / k)
        cdf += term
        extra += u_rest > cdf
    return extra
