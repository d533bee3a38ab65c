"""BayesOpt1D: finds known 1-D minima, matches BoTorch's posterior, survives bad data, resets exactly."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.acquisition import LogExpectedImprovement

import adawise
from adawise.core import gp
from adawise.core.bayesopt import BayesOpt1D
from adawise.core.gp import log_expected_improvement


def _two_minima(x: float) -> float:
    """Local minima near 0.18 (global, thanks to the tilt) and 0.8."""
    return 8 * (x - 0.2) ** 2 * (x - 0.8) ** 2 + 0.1 * x


def _noisy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def f(x: float) -> float:
        return 4 * (x - 0.55) ** 2 + 0.02 * float(torch.randn((), generator=g))

    return f


def _argmin(f, n: int = 100001) -> float:
    xs = torch.linspace(0, 1, n, dtype=torch.float64)
    return float(xs[int(torch.argmin(torch.tensor([f(float(x)) for x in xs[::10]])) * 10)])


CASES = {
    "bowl at 0.3": (lambda x: (x - 0.3) ** 2, 0.3),
    "bowl at 0.85": (lambda x: (x - 0.85) ** 2, 0.85),
    "two local minima": (_two_minima, _argmin(_two_minima)),
}
CONFIGS = {
    "textbook (BoTorch posterior, refit every iteration)": {"posterior": "botorch", "refit": "every"},
    "fast (closed form, fixed hyperparameters)": {"posterior": "closed_form", "refit": "never"},
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", list(CASES))
def test_finds_known_minimum_in_ten_evaluations(case: str, config: str) -> None:
    f, x_star = CASES[case]
    result = BayesOpt1D(**CONFIGS[config]).minimize(f, budget=10)
    assert len(result.xs) <= 10
    assert abs(result.x - x_star) <= 0.03, (result.x, x_star, result.xs)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_noisy_bowl_recommendation(config: str) -> None:
    result = BayesOpt1D(**CONFIGS[config]).minimize(_noisy(), budget=10)
    assert len(result.xs) <= 10
    assert abs(result.x_model - 0.55) <= 0.03, (result.x_model, result.xs)


def test_closed_form_posterior_equals_botorch() -> None:
    """The fast path computes BoTorch's own LogEI (same GP, hyperparameters, standardisation)."""
    bo = BayesOpt1D(posterior="closed_form", refit="never")
    x = torch.tensor([0.0, 0.2, 0.45, 0.5, 0.9, 1.0], dtype=torch.float64)
    y_neg = -((x - 0.4) ** 2 + 0.01 * torch.sin(20 * x))
    for w in (torch.ones(6, dtype=torch.float64), torch.tensor([1.0, 4.0, 0.5, 2.0, 1.0, 3.0], dtype=torch.float64)):
        mu, sd = bo._closed_form(x, y_neg, w, bo.grid)
        model = bo._model(x, y_neg, w)
        with torch.no_grad():
            post = model.posterior(bo.grid[:, None])
            ref = LogExpectedImprovement(model, best_f=y_neg.max())(bo.grid[:, None, None])
        mine = log_expected_improvement((mu - y_neg.max()) / sd) + sd.log()
        assert torch.allclose(mu, post.mean.squeeze(-1), atol=1e-6)
        assert torch.allclose(sd, post.variance.squeeze(-1).clamp_min(1e-12).sqrt(), atol=1e-6)
        assert torch.allclose(mine, ref, atol=1e-5)


def _log_ei_reference(u: float) -> float:
    """log(φ(u) + u·Φ(u)) from the standard library (exact enough for u >= -8)."""
    phi = math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    return math.log(phi + u * 0.5 * math.erfc(-u / math.sqrt(2)))


def test_log_expected_improvement_known_values() -> None:
    """Our log EI against closed forms: log φ(0) = -log(2π)/2 at u = 0, the direct formula on
    moderate u, and the tail's asymptotic series log φ(u) - 2 log|u| + log(1 - 3/u² + 15/u⁴ - 105/u⁶) far
    below, where the direct formula underflows (both precisions)."""
    assert float(log_expected_improvement(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(
        -0.5 * math.log(2 * math.pi), abs=1e-15)
    for u in (-8.0, -5.0, -1.5, -1.0, -0.3, 0.7, 1.0, 3.0, 12.0):
        got = float(log_expected_improvement(torch.tensor(u, dtype=torch.float64)))
        assert got == pytest.approx(_log_ei_reference(u), rel=1e-12, abs=1e-12), u
    for u in (-40.0, -300.0, -1e4):
        series = (-0.5 * u * u - 0.5 * math.log(2 * math.pi) - 2 * math.log(-u)
                  + math.log1p(-3 / u**2 + 15 / u**4 - 105 / u**6))
        for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            got = float(log_expected_improvement(torch.tensor(u, dtype=dtype)))
            assert got == pytest.approx(series, rel=rel), (u, dtype)
    with pytest.raises(TypeError, match="float32 or float64"):
        log_expected_improvement(torch.tensor([1], dtype=torch.int64))


def test_nonfinite_observations_are_ignored_and_constant_objective_is_fine() -> None:
    bo = BayesOpt1D()
    assert not bo.observe(0.5, math.nan)
    assert not bo.observe(0.5, math.inf)
    assert bo.current() == []
    result = BayesOpt1D().minimize(lambda x: 1.0, budget=6)
    assert len(result.xs) == 6 and result.y == 1.0
    result = BayesOpt1D().minimize(lambda x: math.nan if x > 0.4 else (x - 0.2) ** 2, budget=8)
    assert 0.0 <= result.x <= 0.4 and math.isfinite(result.y)
    result = BayesOpt1D().minimize(lambda x: math.nan, budget=5)
    assert len(result.xs) == 5


def test_duplicates_are_never_proposed_and_an_exhausted_grid_stops() -> None:
    bo = BayesOpt1D(posterior="closed_form", refit="never", min_distance=0.05)
    for x in (0.0, 0.3, 0.3004, 0.6, 1.0):  # 0.3 and 0.3004 (< merge_tol apart) are one GP input
        bo.observe(x, (x - 0.3) ** 2)
    assert bo.data()[0].numel() == 4
    for _ in range(5):
        s = bo.suggest()
        assert min(abs(s.x - x) for x, _ in bo.current()) >= 0.05
        bo.observe(s.x, (s.x - 0.3) ** 2)
    crowded = BayesOpt1D(min_distance=0.6)
    for x in (0.0, 0.5, 1.0):
        crowded.observe(x, x)
    assert crowded.suggest() is None


def test_memory_window_decay_and_shift() -> None:
    bo = BayesOpt1D(memory="window", window=2)
    bo.observe(0.1, 1.0)
    bo.next_batch()
    bo.observe(0.2, 2.0)
    assert bo.data()[0].numel() == 2 and bo.current() == [(0.2, 2.0)]
    bo.next_batch()
    assert bo.data()[0].tolist() == [0.2]  # batch 0 left the window
    bo.shift(0.5)
    assert bo.data()[1].tolist() == [1.5]
    decay = BayesOpt1D(memory="decay", decay=0.5, min_weight=0.2)
    decay.observe(0.3, 1.0)
    decay.next_batch()
    decay.observe(0.3, 3.0)
    x, y, w = decay.data()
    assert y.tolist() == pytest.approx([(0.5 * 1 + 3.0) / 1.5]) and w.tolist() == pytest.approx([1.5])
    decay.next_batch()
    decay.next_batch()  # weight 0.125 < 0.2: the first observation is dropped
    assert decay.data()[2].tolist() == pytest.approx([0.25])
    none = BayesOpt1D(memory="none")
    none.observe(0.3, 1.0)
    none.next_batch()
    assert none.data()[0].numel() == 0


def test_fit_errors_fall_back_to_previous_hyperparameters(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("simulated fitting failure")

    monkeypatch.setattr(gp, "fit_gpytorch_mll", broken)
    bo = BayesOpt1D(refit="every")
    before = bo.hyperparameters
    result = bo.minimize(lambda x: (x - 0.3) ** 2, budget=6)
    assert bo.fit_failures >= 1 and bo.hyperparameters == before
    assert len(result.xs) == 6


def test_unusable_gp_falls_back_to_space_filling(monkeypatch) -> None:
    bo = BayesOpt1D(posterior="closed_form", refit="never")
    monkeypatch.setattr(bo, "_closed_form", lambda *args: None)  # as for a singular kernel matrix
    for x in (0.0, 0.5, 1.0):
        bo.observe(x, x)
    s = bo.suggest()
    assert s is not None and not s.from_model and s.x in (0.25, 0.75)
    assert BayesOpt1D().suggest().x == 0.5  # no data at all


def test_reset_is_exact_and_the_global_rng_is_untouched() -> None:
    bo = BayesOpt1D(refit="every", memory="decay")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = bo.minimize(_two_minima, budget=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    bo.minimize(lambda x: (x - 0.7) ** 2, budget=5)
    bo.reset()
    assert bo.n_fits == 0 and bo.data()[0].numel() == 0
    assert bo.minimize(_two_minima, budget=8).xs == first.xs


def test_acquisition_choices_and_optimize_acqf() -> None:
    for acquisition in ("ei", "ucb"):
        r = BayesOpt1D(acquisition=acquisition, refit="never").minimize(lambda x: (x - 0.3) ** 2, budget=10)
        assert abs(r.x - 0.3) <= 0.05, (acquisition, r.xs)
    r = BayesOpt1D(acq_optimizer="optimize_acqf", refit="never").minimize(lambda x: (x - 0.62) ** 2, budget=10)
    assert abs(r.x - 0.62) <= 0.03 and any(round(x, 3) != x for x in r.xs), r.xs  # off-grid candidates
    with pytest.raises(ValueError, match="acquisition"):
        BayesOpt1D(acquisition="pi")


def test_ucb_beta_override_trades_exploration_for_the_mean() -> None:
    """The same data: UCB with the full trade-off goes to the unexplored end, a small override stays by the
    observed minimum; a bad override is refused by name."""
    bo = BayesOpt1D(posterior="closed_form", refit="never", min_distance=0.01)
    for x in (0.4, 0.5, 0.6, 0.55, 0.45):
        bo.observe(x, (x - 0.5) ** 2)
    explore = bo.suggest(acquisition="ucb", ucb_beta=100.0)
    exploit = bo.suggest(acquisition="ucb", ucb_beta=0.01)
    assert explore is not None and exploit is not None
    assert min(explore.x, 1 - explore.x) < 0.2, explore  # far from every observation
    assert abs(exploit.x - 0.5) < 0.1, exploit
    assert bo.suggest(acquisition="ucb").x == bo.suggest(acquisition="ucb", ucb_beta=bo.ucb_beta).x
    with pytest.raises(ValueError, match="ucb_beta"):
        bo.suggest(acquisition="ucb", ucb_beta=-1.0)


def test_online_noise_estimate_tracks_the_residuals() -> None:
    bo = BayesOpt1D(posterior="closed_form", refit="never", memory="window", window=50, noise="online")
    g = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(40):
        for x in (0.2, 0.5, 0.8):
            bo.observe(x, (x - 0.5) ** 2 + 0.05 * float(torch.randn((), generator=g)))
        bo.next_batch()
        estimates.append(bo._s.noise_var)
    mean = sum(estimates[10:]) / 30  # the estimate is exponentially weighted, so it fluctuates
    assert 0.7 * 0.05**2 < mean < 1.4 * 0.05**2


def test_public_name() -> None:
    assert adawise.BayesOpt1D is BayesOpt1D


def test_a_known_term_is_added_exactly_and_only_the_rest_is_modelled() -> None:
    """f = g + k with k known: observing g alone and passing k to suggest finds the minimum of the sum
    (0.7 here, where g alone has its minimum at 0.2), and posterior_mean adds k exactly."""
    def g(x: float) -> float:
        return (x - 0.2) ** 2

    def known(xs: torch.Tensor) -> torch.Tensor:
        return 1.0 * (xs - 1.2) ** 2  # g + k = 2 (x - 0.7)^2 + const

    bo = BayesOpt1D(posterior="closed_form", refit="never")
    for x in (0.0, 1.0):
        bo.observe(x, g(x))
    xs = []
    for _ in range(8):
        s = bo.suggest(known=known)
        if s is None:
            break
        bo.observe(s.x, g(s.x), predicted=s)
        xs.append(s.x)
    best = min(xs + [0.0, 1.0], key=lambda x: g(x) + float(known(torch.tensor(x, dtype=torch.float64))))
    assert abs(best - 0.7) <= 0.03, xs
    plain, summed = bo.posterior_mean([0.3, 0.7]), bo.posterior_mean([0.3, 0.7], known=known)
    for a, b, x in zip(plain, summed, (0.3, 0.7), strict=True):
        assert b == pytest.approx(a + (x - 1.2) ** 2, abs=1e-9)
    with pytest.raises(ValueError, match="closed_form"):
        BayesOpt1D(posterior="botorch")._scores(torch.tensor([0.0, 1.0], dtype=torch.float64),
                                                torch.tensor([0.0, -1.0], dtype=torch.float64),
                                                torch.ones(2, dtype=torch.float64), "logei", 9.0, known)
