"""Drift detection on a per-batch scalar (AdaWiSE watches its objective at the centre α).

An exponentially weighted mean and variance (weight ``beta`` for the newest value) of the values seen
since the last restart; a value *drifts* when it lies more than ``z`` standard deviations from the
mean, the deviation floored at ``min_rel`` of the mean's magnitude (a near-constant history would
otherwise flag every wiggle), once ``warmup`` values were seen. ``z = None`` turns detection off.
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
    n: int = 0


@dataclass(frozen=True)
class DriftRule:
    """When a value counts as drifted and how the statistics follow the values."""

    z: float | None
    min_rel: float
    beta: float
    warmup: int

    def drifted(self, stats: DriftStats, value: float) -> bool:
        """Whether ``value`` is a drift from ``stats`` (never during the warm-up or with ``z`` None)."""
        if self.z is None or stats.n < int(self.warmup):
            return False
        sd = max(math.sqrt(stats.var), float(self.min_rel) * abs(stats.mu), 1e-8)
        return abs(value - stats.mu) > float(self.z) * sd

    def update(self, stats: DriftStats, value: float, restart: bool, paired_shift: float) -> None:
        """Take ``value`` into ``stats`` (in place): a restart (or the first value) starts afresh from it;
        otherwise the mean first moves by ``paired_shift`` (the caller's estimate of how much its own
        change of operating point moved the value) and then towards ``value``. Non-finite values are
        ignored."""
        if not math.isfinite(value):
            return
        if restart or stats.n == 0:
            stats.mu, stats.var, stats.n = value, 0.0, 1
            return
        beta = float(self.beta)
        stats.mu += paired_shift
        delta = value - stats.mu
        stats.mu += beta * delta
        stats.var = (1.0 - beta) * (stats.var + beta * delta * delta)
        stats.n += 1
