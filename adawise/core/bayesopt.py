"""1-D Bayesian optimisation of a noisy objective over α ∈ [0, 1], with BoTorch.

Provenance: AdaWiSE (Döbler et al., ECCV Workshops 2024) chooses the WiSE-FT coefficient α per test
batch by Bayesian optimisation of the prediction entropy; the paper does not give the BO details, so
this is the project's reconstruction. The surrogate is BoTorch's ``SingleTaskGP``
(Balandat et al., NeurIPS 2020) with a Matérn-5/2 kernel under BoTorch's dimension-scaled priors
(Hvarfner et al., ICML 2024), standardised outcomes and double precision; the acquisition is
(log) expected improvement (Ament et al., NeurIPS 2023), maximised on a dense grid in one batched
call. BoTorch maximises, so the optimizer stores the negated objective.

:class:`BayesOpt1D` is an ask/tell optimizer with a notion of *batches*: observations made on the
current batch exclude their near duplicates from the next suggestions (re-evaluating the same α on
the same batch returns the same value), while observations of earlier batches are kept for a warm
start (a window or an exponential decay), averaged per α bin and weighted (noise / weight per GP
input). :meth:`BayesOpt1D.minimize` runs a plain search on a function, as in BoTorch's own tests.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from botorch.acquisition import ExpectedImprovement, LogExpectedImprovement, UpperConfidenceBound
from botorch.models import SingleTaskGP
from torch import Tensor

from adawise.core.gp import DOUBLE as _DOUBLE
from adawise.core.gp import (
    Suggestion,
    closed_form_posterior,
    fit_hyperparameters,
    log_expected_improvement,
    new_model,
    read_hypers,
    refine_with_optimize_acqf,
    standard_deviation,
)

__all__ = ["BayesOpt1D", "BOResult", "Suggestion"]

#: the acquisition functions :class:`BayesOpt1D` takes
ACQUISITIONS = ("logei", "ei", "ucb")


@dataclass
class BOResult:
    """Outcome of :meth:`BayesOpt1D.minimize`.

    ``x``/``y``: the best *observed* point; ``x_model``: the minimiser of the GP posterior mean on
    the grid (the better recommendation for noisy functions); ``xs``/``ys``: every evaluation in order.
    """

    x: float
    y: float
    x_model: float
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


@dataclass
class _BOState:
    """Everything :meth:`BayesOpt1D.reset` restores."""

    obs: list[tuple[float, float, int, float]]  # (x, y, batch id, weight); y: objective (lower is better)
    batch: int
    hypers: dict[str, float]
    new_since_fit: int
    n_fits: int
    fit_failures: int
    rng_state: Tensor
    noise_var: float = 0.0  # online estimate of the noise variance per unit weight (objective units²)
    noise_n: int = 0  # residuals behind it


class BayesOpt1D:
    """Bayesian optimisation of a (noisy) function of one variable on [0, 1]; minimisation.

    Ask/tell use: :meth:`observe` ``(x, y)`` pairs, :meth:`suggest` the next x, :meth:`next_batch`
    when the function changes (a new test batch), :meth:`shift` to re-express stored values against
    a new reference, :meth:`clear` to forget. :meth:`minimize` is the one-call search.

    Options (all keyword-only):
        grid_size: number of equally spaced candidates in [0, 1] on which the acquisition is
            evaluated in one batched call (201: spacing 0.005, far below the α resolution that
            changes a prediction; timings in ``benchmarks/RESULTS.md``).
        acquisition: ``"logei"`` (LogExpectedImprovement, numerically safe far from the incumbent),
            ``"ei"`` (ExpectedImprovement) or ``"ucb"`` (UpperConfidenceBound, mean + sqrt(ucb_beta)
            std: optimistic exploration); :meth:`suggest` may override it per call.
        ucb_beta: the UCB trade-off (9: three posterior standard deviations).
        incumbent: the value EI improves on: ``"observed"`` (the best aggregated observation: right
            for a deterministic function, e.g. one batch's objective) or ``"model"`` (the best GP
            posterior mean at the observed inputs, the usual choice for noisy observations, e.g. a
            memory of several batches; one outlier then cannot make every candidate look hopeless).
        acq_optimizer: ``"grid"`` (argmax over the grid) or ``"optimize_acqf"`` (BoTorch's multi-start
            L-BFGS-B, ``num_restarts=4, raw_samples=64``; falls back to the grid when its answer is
            a near duplicate). ``optimize_acqf`` always uses the BoTorch posterior.
        posterior: ``"botorch"`` builds a ``SingleTaskGP`` and calls BoTorch's acquisition on the grid;
            ``"closed_form"`` computes the same exact GP posterior (same kernel, hyperparameters,
            per-point noise, standardisation and LogEI formula; a test checks agreement to 1e-5)
            without GPyTorch's overhead, for per-batch use (timings in ``benchmarks/RESULTS.md``).
            Hyperparameters are always fitted with BoTorch (``fit_gpytorch_mll``).
        refit: hyperparameter refit policy: ``"every"`` (before each suggestion whose data changed,
            the textbook loop), ``"never"`` (BoTorch's prior modes: lengthscale 0.205, noise 6.7e-3
            in standardised units, constant mean 0), or an int N (refit once N observations arrived
            since the last fit, the construction counting as one). Fitting runs under a private RNG
            seeded from ``seed``.
        min_fit_points: a GP with fewer inputs than this is never fitted (its hyperparameters stay).
        noise: where the observation noise comes from: ``"fit"`` (the fitted or default GP noise
            hyperparameter) or ``"online"`` (an exponentially weighted estimate from the GP's
            one-step-ahead residuals on observations made after the first batch, the default's noise
            before three of them; needs no fit, so it suits a memory of noisy batches with rare
            refits). Observation i's noise variance is noise / weight_i either way.
        fit_maxiter: L-BFGS-B iteration cap of a fit (None: BoTorch's default).
        min_distance: candidates closer than this to an observation of the *current* batch are not
            proposed (duplicate handling; on the same batch the objective is deterministic).
        merge_tol: observations whose x differ by less than this are averaged into one GP input
            (near-duplicate inputs make the kernel matrix singular).
        memory: which earlier batches the GP sees: ``"none"`` (current batch only: cold start),
            ``"window"`` (the last ``window`` batches, current included) or ``"decay"`` (weight
            ``decay ** age`` in the per-bin average, dropped below ``min_weight``).
        window, decay, min_weight: parameters of ``memory``.
        seed: seed of the private generator (fits, ``optimize_acqf``); runs never touch the global RNG.

    Non-finite observations are ignored (``observe`` returns False). Fitting errors are caught and
    counted in :attr:`fit_failures`; the previous hyperparameters stay in force. When no GP can be
    built (fewer than two distinct inputs or a singular kernel) :meth:`suggest` proposes the grid
    point farthest from the current batch's observations, or ``None`` when every candidate is a
    near duplicate: the caller then keeps the best point seen.
    """

    def __init__(
        self,
        *,
        grid_size: int = 201,
        acquisition: str = "logei",
        ucb_beta: float = 9.0,
        incumbent: str = "observed",
        acq_optimizer: str = "grid",
        posterior: str = "botorch",
        refit: str | int = "every",
        min_fit_points: int = 3,
        noise: str = "fit",
        fit_maxiter: int | None = None,
        min_distance: float = 0.01,
        merge_tol: float = 1e-3,
        memory: str = "none",
        window: int = 8,
        decay: float = 0.8,
        min_weight: float = 0.05,
        seed: int = 0,
    ) -> None:
        if grid_size < 3:
            raise ValueError(f"grid_size must be >= 3, got {grid_size}")
        _check_choice("acquisition", acquisition, ACQUISITIONS)
        _check_choice("incumbent", incumbent, ("observed", "model"))
        _check_choice("acq_optimizer", acq_optimizer, ("grid", "optimize_acqf"))
        _check_choice("posterior", posterior, ("botorch", "closed_form"))
        _check_choice("memory", memory, ("none", "window", "decay"))
        _check_choice("noise", noise, ("fit", "online"))
        if not (refit in ("every", "never") or (isinstance(refit, int) and refit >= 1)):
            raise ValueError(f"refit must be 'every', 'never' or an int >= 1, got {refit!r}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.grid_size, self.acquisition, self.acq_optimizer = int(grid_size), acquisition, acq_optimizer
        self.incumbent, self.ucb_beta = incumbent, float(ucb_beta)
        self.posterior, self.refit, self.fit_maxiter = posterior, refit, fit_maxiter
        self.min_fit_points = int(min_fit_points)
        self.min_distance, self.merge_tol = float(min_distance), float(merge_tol)
        self.memory, self.window, self.decay, self.min_weight = memory, int(window), float(decay), float(min_weight)
        self.seed = int(seed)
        self.grid = torch.linspace(0.0, 1.0, self.grid_size, dtype=_DOUBLE)
        gen = torch.Generator().manual_seed(self.seed)
        self._gen = gen
        self.noise, self.noise_beta, self.noise_warmup = noise, 0.2, 3
        self._initial = _BOState([], 0, self.default_hyperparameters(), 0, 0, 0, gen.get_state())
        self._s = copy.deepcopy(self._initial)

    # ------------------------------------------------------------------ state
    def options(self) -> dict[str, object]:
        """Constructor options (for log headers)."""
        keys = ("grid_size", "acquisition", "ucb_beta", "incumbent", "acq_optimizer", "posterior", "refit",
                "min_fit_points", "noise", "fit_maxiter",
                "min_distance", "merge_tol", "memory", "window", "decay", "min_weight", "seed")
        return {k: getattr(self, k) for k in keys}

    def reset(self) -> None:
        """Restore the exact initial state: no observations, default hyperparameters, seeded RNG."""
        self._s = copy.deepcopy(self._initial)
        self._gen.set_state(self._s.rng_state)

    def export_state(self) -> tuple[Any, Tensor]:
        """The search state (observations, hyperparameters, counters; the live object, not a copy)
        and the generator's RNG state: what :meth:`import_state` takes back."""
        return self._s, self._gen.get_state()

    def import_state(self, state: Any, rng_state: Tensor) -> None:
        """Continue from a state :meth:`export_state` or :meth:`initial_state` returned (used as is)."""
        self._s = state
        self._gen.set_state(rng_state)

    def initial_state(self) -> tuple[Any, Tensor]:
        """A fresh copy of the initial state and RNG state (what :meth:`reset` restores)."""
        return copy.deepcopy(self._initial), self._initial.rng_state.clone()

    @property
    def hyperparameters(self) -> dict[str, float]:
        """GP hyperparameters in force (standardised units): lengthscale, noise, constant."""
        return dict(self._s.hypers)

    @property
    def n_fits(self) -> int:
        """Hyperparameter fits attempted so far."""
        return self._s.n_fits

    @property
    def fit_failures(self) -> int:
        """Fits that raised (the previous hyperparameters were kept)."""
        return self._s.fit_failures

    @property
    def batch(self) -> int:
        """Id of the current batch (incremented by :meth:`next_batch`)."""
        return self._s.batch

    @staticmethod
    def default_hyperparameters() -> dict[str, float]:
        """BoTorch's initial values (the prior modes) of a fresh Matérn ``SingleTaskGP``."""
        x = torch.tensor([[0.0], [1.0]], dtype=_DOUBLE)
        model = new_model(x, torch.tensor([[0.0], [1.0]], dtype=_DOUBLE))
        return read_hypers(model)

    # -------------------------------------------------------------- ask/tell
    def observe(self, x: float, y: float, weight: float = 1.0, learn_noise: bool = True,
                predicted: Suggestion | None = None) -> bool:
        """Record f(x) = y on the current batch; returns False (and ignores it) if not finite.

        ``weight`` is the observation's precision relative to a unit one (e.g. 4 for an objective
        measured on four times as many rows): its noise variance is the GP noise / weight.
        ``learn_noise=False`` keeps it out of the online noise estimate (e.g. a reference value
        that is 0 by construction); ``predicted``, the :meth:`suggest` answer that proposed x (no
        observation since), saves recomputing the GP prediction for that estimate.
        """
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            return False
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"x must be in [0, 1], got {x}")
        if not weight > 0.0:
            raise ValueError(f"weight must be positive, got {weight}")
        if learn_noise and self.noise == "online" and any(b != self._s.batch for _, _, b, _ in self._s.obs):
            self._learn_noise(x, y, weight, predicted)
        self._s.obs.append((x, y, self._s.batch, float(weight)))
        self._s.new_since_fit += 1
        return True

    def next_batch(self) -> None:
        """Start a new batch: age the memory and drop what it no longer keeps."""
        self._s.batch += 1
        self._s.obs = [o for o in self._s.obs if self._weight(self._s.batch - o[2]) > 0.0]

    def clear(self) -> None:
        """Forget every observation (hyperparameters and RNG are kept)."""
        self._s.obs = []

    def shift(self, delta: float) -> None:
        """Subtract ``delta`` from every stored value (re-express them against a new reference)."""
        self._s.obs = [(x, y - delta, b, w) for x, y, b, w in self._s.obs]

    def current(self) -> list[tuple[float, float]]:
        """The (x, y) observations of the current batch, in order."""
        return [(x, y) for x, y, b, _ in self._s.obs if b == self._s.batch]

    def best(self) -> tuple[float, float] | None:
        """The current batch's best observation (first of ties), or ``None``."""
        cur = self.current()
        return min(cur, key=lambda o: o[1]) if cur else None

    def _weight(self, age: int) -> float:
        if self.memory == "none":
            return 1.0 if age == 0 else 0.0
        if self.memory == "window":
            return 1.0 if age < self.window else 0.0
        w = self.decay**age
        return w if w >= self.min_weight else 0.0

    def data(self) -> tuple[Tensor, Tensor, Tensor]:
        """The GP's training data, double, shape [n]: x, y and weight per ``merge_tol`` bin.

        y is the weighted mean of the bin's observations, weight the sum of their weights times the
        memory's age factor (so the GP trusts a bin observed often and recently more).
        """
        bins: dict[int, list[float]] = {}
        for x, y, b, w in self._s.obs:
            w = w * self._weight(self._s.batch - b)
            if w <= 0.0:
                continue
            acc = bins.setdefault(round(x / self.merge_tol), [0.0, 0.0, 0.0])
            acc[0] += w
            acc[1] += w * x
            acc[2] += w * y
        xs = [a[1] / a[0] for a in bins.values()]
        ys = [a[2] / a[0] for a in bins.values()]
        ws = [a[0] for a in bins.values()]
        return (torch.tensor(xs, dtype=_DOUBLE), torch.tensor(ys, dtype=_DOUBLE), torch.tensor(ws, dtype=_DOUBLE))

    # ------------------------------------------------------------------ model
    def _maybe_fit(self, x: Tensor, y_neg: Tensor) -> None:
        s = self._s
        if self.refit == "never" or s.new_since_fit == 0 or x.numel() < self.min_fit_points:
            return
        if self.refit != "every" and s.new_since_fit < int(self.refit):
            return
        s.new_since_fit, s.n_fits = 0, s.n_fits + 1
        hypers = fit_hyperparameters(x, y_neg, s.hypers, self.fit_maxiter, self._gen)
        if hypers is None:
            s.fit_failures += 1
        else:
            s.hypers = hypers

    def _learn_noise(self, x: float, y: float, weight: float, predicted: Suggestion | None) -> None:
        """Update the online noise estimate with the GP's one-step-ahead residual at x.

        E[(y − μ(x))²] = σ_f²(x) + σ_n² / weight, so (residual² − σ_f²)·weight estimates σ_n²
        (exponentially weighted, weight ``noise_beta``).
        """
        if predicted is not None and abs(predicted.x - x) < 1e-6 and math.isfinite(predicted.mean):
            mu, sd = predicted.mean, predicted.std
        else:
            xs, ys, ws = self.data()
            if xs.numel() < 2:
                return
            post = self._closed_form(xs, -ys, ws, torch.tensor([x], dtype=_DOUBLE))
            if post is None:
                return
            mu, sd = -float(post[0][0]), float(post[1][0])
        sample = ((y - mu) ** 2 - sd**2) * weight
        s = self._s
        s.noise_var = sample if s.noise_n == 0 else (1 - self.noise_beta) * s.noise_var + self.noise_beta * sample
        s.noise_n += 1

    def _noise(self, y_neg: Tensor) -> float:
        """Noise variance per unit weight in standardised units: fitted, or the online estimate."""
        s = self._s
        if self.noise == "online" and s.noise_n >= self.noise_warmup:
            return min(max(s.noise_var / float(standard_deviation(y_neg)) ** 2, 1e-4), 10.0)
        return s.hypers["noise"]

    def _model(self, x: Tensor, y_neg: Tensor, w: Tensor) -> SingleTaskGP:
        """The BoTorch GP of the data; observation noise ``noise / w`` unless every weight is 1."""
        yvar = None
        if self.noise == "online" or not bool((w == 1.0).all()):
            yvar = (self._noise(y_neg) * standard_deviation(y_neg) ** 2 / w)[:, None]
        model = new_model(x[:, None], y_neg[:, None], self._s.hypers, yvar)
        return model.eval()

    def _closed_form(self, x: Tensor, y_neg: Tensor, w: Tensor, at: Tensor) -> tuple[Tensor, Tensor] | None:
        """Exact GP posterior mean and std of the negated objective at ``at``, original units.

        The same model as :meth:`_model` (Matérn-5/2, constant mean, Standardize, noise / weight).
        """
        return closed_form_posterior(x, y_neg, self._noise(y_neg) / w, at, self._s.hypers)

    def _acq_function(self, model: SingleTaskGP, acquisition: str, best_f: Tensor, ucb_beta: float) -> Any:
        if acquisition == "ucb":
            return UpperConfidenceBound(model, beta=ucb_beta)
        cls = LogExpectedImprovement if acquisition == "logei" else ExpectedImprovement
        return cls(model, best_f=best_f)

    def _scores(self, x: Tensor, y_neg: Tensor, w: Tensor, acquisition: str, ucb_beta: float,
                known: Callable[[Tensor], Tensor] | None = None) -> tuple[Any, ...] | None:
        """Over the grid, original units: (score to maximise, log EI, posterior mean and std of the
        modelled part of the objective or ``None``, (BoTorch model, incumbent) or ``None``); ``None`` when
        the GP is unusable (singular kernel matrix). ``ucb_beta``: UCB's trade-off; ``known``: see
        :meth:`suggest`."""
        g = self.grid_size
        if self.posterior == "closed_form" and self.acq_optimizer == "grid":
            at = torch.cat([self.grid, x])
            post = self._closed_form(x, y_neg, w, at)
            if post is None:
                return None
            mu, sd = post
            moments = (-mu[:g], sd[:g])
            if known is not None:  # the objective is the GP's part plus the known one
                at_x = known(x).to(y_neg)
                mu = mu - torch.cat([known(self.grid).to(mu), at_x])  # the grid itself: a callee may cache
                y_neg = y_neg - at_x
            best_f = mu[g:].max() if self.incumbent == "model" else y_neg.max()
            mu, sd = mu[:g], sd[:g]
            log_ei = log_expected_improvement((mu - best_f) / sd) + sd.log()
            # "ei" and "logei" share their argmax; the log form is the numerically safe one
            score = mu + math.sqrt(ucb_beta) * sd if acquisition == "ucb" else log_ei
            return score, log_ei, moments, None
        if known is not None:
            raise ValueError("a known objective term needs posterior='closed_form' and acq_optimizer='grid'")
        try:
            model = self._model(x, y_neg, w)
            with torch.no_grad():
                best_f = model.posterior(x[:, None]).mean.max() if self.incumbent == "model" else y_neg.max()
                log_ei = LogExpectedImprovement(model, best_f=best_f)(self.grid[:, None, None])
                if acquisition == "logei":
                    score = log_ei
                else:
                    score = self._acq_function(model, acquisition, best_f, ucb_beta)(self.grid[:, None, None])
                    if acquisition == "ei":
                        score = score.clamp_min(1e-300).log()
        except RuntimeError:  # e.g. NotPSDError from a degenerate kernel matrix
            return None
        return score, log_ei, None, (model, best_f)

    def suggest(self, exclude: Sequence[float] = (), acquisition: str | None = None,
                known: Callable[[Tensor], Tensor] | None = None,
                ucb_beta: float | None = None) -> Suggestion | None:
        """The next x to evaluate, or ``None`` when every candidate is a near duplicate.

        Candidates within ``min_distance`` of the current batch's observations (and of ``exclude``)
        are never proposed. Refits the hyperparameters first when the policy says so.
        ``acquisition`` overrides the optimizer's for this call. ``known``: a part of the objective
        known exactly at any x (a function of a double tensor of xs): the observations are then of the
        rest alone, the GP models that rest, and the acquisition scores the sum (closed-form grid search
        only). The suggestion's ``mean`` and ``std`` are the modelled part's. ``ucb_beta`` overrides the
        optimizer's UCB trade-off for this call (UCB only).
        """
        acquisition = acquisition or self.acquisition
        beta = self.ucb_beta if ucb_beta is None else float(ucb_beta)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"ucb_beta must be a finite number >= 0, got {ucb_beta!r}")
        _check_choice("acquisition", acquisition, ACQUISITIONS)
        taken = torch.tensor([o[0] for o in self.current()] + [float(e) for e in exclude], dtype=_DOUBLE)
        free = torch.ones(self.grid_size, dtype=torch.bool)
        if taken.numel():
            free = (self.grid[:, None] - taken[None, :]).abs().min(1).values >= self.min_distance
        if not bool(free.any()):
            return None
        x, y, w = self.data()
        scored = None
        if x.numel() >= 2:
            self._maybe_fit(x, -y)
            scored = self._scores(x, -y, w, acquisition, beta, known)
        if scored is None or not bool(torch.isfinite(scored[0][free]).any()):
            return self._space_filling(taken, free)
        score, log_ei, moments, built = scored
        score = torch.where(free & torch.isfinite(score), score, torch.full_like(score, -math.inf))
        i = int(torch.argmax(score))
        mean, std = (float(moments[0][i]), float(moments[1][i])) if moments is not None else (math.nan, math.nan)
        best = Suggestion(float(self.grid[i]), float(log_ei[i]), mean=mean, std=std)
        if self.acq_optimizer == "optimize_acqf" and built is not None:
            acq = self._acq_function(built[0], acquisition, built[1], beta)
            best = refine_with_optimize_acqf(acq, taken, best, float(score[i]), acquisition, self.min_distance,
                                             self._gen)
        return best

    def _space_filling(self, taken: Tensor, free: Tensor) -> Suggestion:
        """Fallback without a GP: the free grid point farthest from the current batch's points."""
        if taken.numel() == 0:
            return Suggestion(0.5, math.inf, from_model=False)
        dist = (self.grid[:, None] - taken[None, :]).abs().min(1).values
        dist = torch.where(free, dist, torch.full_like(dist, -1.0))
        return Suggestion(float(self.grid[int(torch.argmax(dist))]), math.inf, from_model=False)

    def posterior_mean_sd(self, xs: Sequence[float] | Tensor) -> tuple[Tensor, Tensor] | None:
        """GP posterior mean and standard deviation of the objective at ``xs`` (float64 tensors, the
        closed-form posterior; ``None`` without a usable GP)."""
        x, y, w = self.data()
        if x.numel() < 2:
            return None
        at = xs.to(_DOUBLE) if torch.is_tensor(xs) else torch.tensor([float(v) for v in xs], dtype=_DOUBLE)
        post = self._closed_form(x, -y, w, at)
        return None if post is None else (-post[0], post[1])

    def posterior_mean(self, xs: Sequence[float],
                       known: Callable[[Tensor], Tensor] | None = None) -> list[float] | None:
        """GP posterior mean of the objective at ``xs`` (``None`` without a usable GP); plus the ``known``
        part (:meth:`suggest`) where given."""
        at = torch.tensor([float(v) for v in xs], dtype=_DOUBLE)
        post = self.posterior_mean_sd(at)
        if post is None:
            return None
        mean = post[0] if known is None else post[0] + known(at).to(post[0])
        return [float(v) for v in mean]

    def recommend(self) -> float | None:
        """The grid minimiser of the GP posterior mean (or the best observation without a GP)."""
        means = self.posterior_mean(self.grid.tolist())
        if means is None:
            b = self.best()
            return None if b is None else b[0]
        return float(self.grid[min(range(len(means)), key=means.__getitem__)])

    # ---------------------------------------------------------------- one call
    def minimize(
        self, f: Callable[[float], float], budget: int = 10, init: Sequence[float] = (0.0, 0.5, 1.0)
    ) -> BOResult:
        """Minimise ``f`` on [0, 1] with at most ``budget`` evaluations (the initial design included).

        Starts a new batch (earlier observations are kept only as the memory option says). Stops
        early when every candidate is a near duplicate. Non-finite values are skipped.
        """
        self.next_batch()
        xs: list[float] = []
        ys: list[float] = []

        def evaluate(x: float) -> None:
            y = float(f(x))
            xs.append(x)
            ys.append(y)
            self.observe(x, y)

        for x in list(init)[:budget]:
            evaluate(float(x))
        while len(xs) < budget:
            s = self.suggest()
            if s is None:
                break
            evaluate(s.x)
        finite = [(y, i) for i, y in enumerate(ys) if math.isfinite(y)]
        i = min(finite)[1] if finite else 0
        x_model = self.recommend()
        return BOResult(xs[i], ys[i], xs[i] if x_model is None else x_model, xs, ys)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
