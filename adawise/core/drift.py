"""Drift detection on a per-batch scalar (AdaWiSE watches its objective at the centre α).

An exponentially weighted mean and variance (weight ``beta`` for the newest value) of the values seen
since the last restart; a value *drifts* when it lies more than ``z`` standard deviations from the
mean, the deviation floored at ``min_rel`` of the mean's magnitude (a near-constant history would
otherwise flag every wiggle), once ``warmup`` values were seen. ``z = None`` turns detection off.

Each value is a mean over some rows (a batch's images). The detector tests and learns from values
pooled over at least ``rows`` rows (the row-weighted mean of consecutive values): with batches of
``rows`` or more every batch is one value, as if there were no pool; with smaller batches the values
are pooled until that many images were seen, so the detector weighs the same evidence at every batch
size (the mean entropy of 8 images is far noisier than that of 64, and a detector fed it raw mistakes
sampling noise for drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DriftRule", "DriftStats"]


@dataclass
class DriftStats:
    """The running statistics (part of a method's per-stream state; copied and restored with it)."""

    mu: float = 0.0
    var: float = 0.0
    n: int = 0  # pooled values learnt since the last restart
    pool_sum: float = 0.0  # row-weighted sum of the values pooled since the last learnt one
    pool_rows: int = 0


@dataclass(frozen=True)
class DriftRule:
    """When a value counts as drifted and how the statistics follow the values."""

    z: float | None
    min_rel: float
    beta: float
    warmup: int
    rows: int = 1

    def drifted(self, stats: DriftStats, value: float, rows: int = 1) -> bool:
        """Whether ``value`` (a mean over ``rows`` rows), pooled with the values since the last learnt
        one, is a drift from ``stats``; never during the warm-up, before the pool holds ``self.rows``
        rows, or with ``z`` None."""
        if self.z is None or stats.n < int(self.warmup) or not math.isfinite(value):
            return False
        pooled_rows = stats.pool_rows + int(rows)
        if pooled_rows < int(self.rows):
            return False
        pooled = (stats.pool_sum + value * int(rows)) / pooled_rows
        sd = max(math.sqrt(stats.var), float(self.min_rel) * abs(stats.mu), 1e-8)
        return abs(pooled - stats.mu) > float(self.z) * sd

    def shift(self, stats: DriftStats, delta: float) -> None:
        """The caller moved its operating point between values, by ``delta`` in the watched value: the
        mean and the pooled values move with it (in place)."""
        if stats.n > 0:
            stats.mu += delta
        stats.pool_sum += delta * stats.pool_rows

    def update(self, stats: DriftStats, value: float, restart: bool, paired_shift: float, rows: int = 1) -> None:
        """Take ``value`` (a mean over ``rows`` rows) into ``stats`` (in place). A restart forgets
        everything before it. Otherwise the mean and the pooled values first move by ``paired_shift``
        (the caller's estimate of how much its own change of operating point moved the value). The value
        joins the pool; once the pool holds ``self.rows`` rows its mean is learnt: the first one since a
        restart starts the statistics, later ones move the mean towards it. Non-finite values are
        ignored."""
        if not math.isfinite(value):
            return
        if restart:
            stats.mu, stats.var, stats.n = 0.0, 0.0, 0
            stats.pool_sum, stats.pool_rows = 0.0, 0
        else:
            self.shift(stats, paired_shift)
        stats.pool_sum += value * int(rows)
        stats.pool_rows += int(rows)
        if stats.pool_rows < int(self.rows):
            return
        pooled = stats.pool_sum / stats.pool_rows
        stats.pool_sum, stats.pool_rows = 0.0, 0
        if stats.n == 0:
            stats.mu, stats.var, stats.n = pooled, 0.0, 1
            return
        beta = float(self.beta)
        delta = pooled - stats.mu
        stats.mu += beta * delta
        stats.var = (1.0 - beta) * (stats.var + beta * delta * delta)
        stats.n += 1
