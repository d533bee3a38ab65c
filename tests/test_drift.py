"""The drift detector (adawise.core.drift): per-value tests, and values pooled over small batches."""

from __future__ import annotations

import random

import pytest

from adawise.core.drift import DriftRule, DriftStats


def feed(rule: DriftRule, values: list[tuple[float, int]],
         stats: DriftStats | None = None) -> tuple[DriftStats, list[bool]]:
    """Run the detector over (value, rows) pairs the way AdaWiSE does: test, then learn (a restart at a drift),
    from ``stats`` (fresh statistics by default)."""
    stats, fired = stats if stats is not None else DriftStats(), []
    for value, rows in values:
        drift = rule.drifted(stats, value, rows)
        fired.append(drift)
        rule.update(stats, value, drift, 0.0, rows)
    return stats, fired


def test_batches_at_least_as_large_as_the_pool_are_each_one_value() -> None:
    rng = random.Random(0)
    values = [(1.0 + 0.05 * rng.gauss(0, 1), 64) for _ in range(30)] + [(2.0, 64), (2.0, 64)]
    pooled, fired_pooled = feed(DriftRule(z=4.0, min_rel=0.05, beta=0.2, warmup=1, rows=64), values)
    plain, fired_plain = feed(DriftRule(z=4.0, min_rel=0.05, beta=0.2, warmup=1, rows=1), values)
    assert fired_pooled == fired_plain and fired_pooled[30] and not any(fired_pooled[:30])
    assert (pooled.mu, pooled.var, pooled.n) == (plain.mu, plain.var, plain.n)


def test_small_batches_are_pooled_so_their_noise_is_not_a_drift() -> None:
    raw = pooled = 0
    for seed in range(5):  # 5 streams of 400 batches of 8 images at one level
        rng = random.Random(seed)
        # the mean entropy of 8 images scatters by about 30% around its level 1.0 (that of 64: by about 10%)
        values = [(1.0 + 0.3 * rng.gauss(0, 1), 8) for _ in range(400)]
        raw += sum(feed(DriftRule(z=4.0, min_rel=0.05, beta=0.2, warmup=1, rows=1), values)[1])
        stats, fired = feed(DriftRule(z=4.0, min_rel=0.05, beta=0.2, warmup=1, rows=64), values)
        pooled += sum(fired)
    assert raw > 100  # unpooled, sampling noise restarts the search again and again
    assert pooled <= 10  # pooled over 64 images: as rare as with batches of 64
    if sum(fired) == 0:
        assert stats.n == 400 // 8  # one learnt value per 64 images
    # a real change of level is still caught, within one pool of images
    after = [(2.0 + 0.3 * rng.gauss(0, 1), 8) for _ in range(16)]
    _, fired_after = feed(DriftRule(z=4.0, min_rel=0.05, beta=0.2, warmup=1, rows=64), after, stats)
    assert any(fired_after[:8])


def test_a_restart_starts_the_pool_afresh_and_a_shift_moves_the_pooled_values() -> None:
    rule = DriftRule(z=4.0, min_rel=0.05, beta=0.2, warmup=1, rows=16)
    stats = DriftStats()
    rule.update(stats, 5.0, False, 0.0, 8)
    assert stats.n == 0 and not rule.drifted(stats, 100.0, 8)  # nothing learnt yet: no test
    rule.update(stats, 1.0, True, 0.0, 8)  # a restart forgets the 5.0
    assert stats.pool_rows == 8 and stats.pool_sum == pytest.approx(8.0)
    rule.update(stats, 2.0, False, 0.5, 8)  # the operating point moved by +0.5: the pooled 1.0 reads 1.5
    assert stats.n == 1 and stats.mu == pytest.approx((1.5 * 8 + 2.0 * 8) / 16) and stats.pool_rows == 0
    rule.update(stats, float("nan"), False, 0.0, 8)  # ignored
    assert stats.pool_rows == 0 and stats.n == 1
