"""The Gaussian-process pieces of :mod:`adawise.core.bayesopt`: the Matérn-5/2 kernel of the closed-form
posterior, BoTorch's ``SingleTaskGP`` as the optimizer builds it, and log expected improvement.

:func:`log_expected_improvement` is written here from the formula (Ament et al., NeurIPS 2023,
"Unexpected Improvements to Expected Improvement", eq. 9), with the same branches and constants as
BoTorch's own ``LogExpectedImprovement``, so no private BoTorch name is imported and the closed-form
path chooses exactly the αs BoTorch's helper would (``tests/test_bayesopt.py`` pins known values).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from botorch.exceptions import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from botorch.optim import optimize_acqf
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

__all__ = [
    "DOUBLE", "Suggestion", "closed_form_posterior", "fit_hyperparameters", "log_expected_improvement", "matern52",
    "new_model", "read_hypers", "refine_with_optimize_acqf", "standard_deviation",
]

DOUBLE = torch.float64
_SQRT5 = math.sqrt(5.0)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_LOG_SQRT_2PI = math.log(2 * math.pi) / 2
_NEG_INV_SQRT2 = -(2**-0.5)  # of the log branch
_NEG_INV_SQRT2_CDF = -(1 / math.sqrt(2))  # of Φ (one bit apart from the above; both as BoTorch spells them)
_LOG_SQRT_PI_DIV_2 = math.log(math.pi / 2) / 2


@dataclass(frozen=True)
class Suggestion:
    """A proposed α and the GP's log expected improvement there (objective units; ``inf`` without a GP)."""

    x: float
    log_ei: float
    from_model: bool = True
    mean: float = math.nan  # GP posterior mean of the objective at x (objective units)
    std: float = math.nan  # GP posterior standard deviation there

    @property
    def ei(self) -> float:
        """Expected improvement in the objective's own units (``exp(log_ei)``)."""
        return math.exp(self.log_ei) if self.log_ei < 700 else math.inf


def log_expected_improvement(u: Tensor) -> Tensor:
    """log(φ(u) + u·Φ(u)), the log of the standardised expected improvement at ``u = (μ − f*) / σ``,
    accurate far into the tail (``u`` down to −1e100 in double precision) where the naive form
    underflows to −inf. For ``u > −1`` the naive form is exact enough; below, it is rewritten as
    log φ(u) + log(1 − exp(w)) with w = log(|u|·Φ(u)/φ(u)) = log(erfcx(−u/√2)·|u|) + log(√(π/2)),
    and for u below −1/√eps the last term's leading order −2·log|u|."""
    if u.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"log_expected_improvement takes float32 or float64, got {u.dtype}")
    bound = -1
    u_upper = u.masked_fill(u < bound, bound)
    cdf = 0.5 * torch.erfc(_NEG_INV_SQRT2_CDF * u_upper)
    naive = _INV_SQRT_2PI * (-0.5 * u_upper.square()).exp() + u_upper * cdf
    log_upper = naive.log()
    neg_inv_sqrt_eps = -1e6 if u.dtype == torch.float64 else -1e3
    u_lower = u.masked_fill(u > bound, bound)
    u_eps = u_lower.masked_fill(u < neg_inv_sqrt_eps, neg_inv_sqrt_eps)
    w = torch.log(torch.special.erfcx(_NEG_INV_SQRT2 * u_eps) * u_eps.abs()) + _LOG_SQRT_PI_DIV_2
    log1mexp = torch.where(w > -math.log(2), torch.log(-torch.expm1(w)), torch.log1p(-torch.exp(w)))
    log_phi = -0.5 * u.square() - _LOG_SQRT_2PI
    log_lower = log_phi + torch.where(u > neg_inv_sqrt_eps, log1mexp, -2 * u_lower.abs().log())
    return torch.where(u > bound, log_upper, log_lower)


def matern52(a: Tensor, b: Tensor, lengthscale: float) -> Tensor:
    """Matérn-5/2 correlation between 1-D point sets ``a`` [n] and ``b`` [m]: shape [n, m]."""
    r = (a[:, None] - b[None, :]).abs() * (_SQRT5 / lengthscale)
    return (1.0 + r + r * r / 3.0) * torch.exp(-r)


def standard_deviation(y: Tensor) -> Tensor:
    """Standard deviation as BoTorch's ``Standardize`` takes it (unbiased; 1 when degenerate)."""
    std = y.std() if y.numel() >= 2 else torch.ones((), dtype=y.dtype)
    return std if bool(std >= 1e-8) else torch.ones((), dtype=y.dtype)


def new_model(x: Tensor, y_neg: Tensor, hypers: dict[str, float] | None = None,
               yvar: Tensor | None = None) -> SingleTaskGP:
    """A ``SingleTaskGP`` (Matérn-5/2, dimension-scaled priors, Standardize) on [n, 1] inputs;
    with ``yvar`` (original units) the observation noise is fixed per point."""
    model = SingleTaskGP(
        x,
        y_neg,
        train_Yvar=yvar,
        covar_module=get_covar_module_with_dim_scaled_prior(ard_num_dims=1, use_rbf_kernel=False),
        outcome_transform=Standardize(m=1),
    )
    if hypers is not None:
        model.covar_module.lengthscale = torch.tensor(hypers["lengthscale"], dtype=DOUBLE)
        if yvar is None:
            model.likelihood.noise = torch.tensor(hypers["noise"], dtype=DOUBLE)
        model.mean_module.constant = torch.tensor(hypers["constant"], dtype=DOUBLE)
    return model


def read_hypers(model: SingleTaskGP) -> dict[str, float]:
    return {
        "lengthscale": float(model.covar_module.lengthscale.detach().reshape(-1)[0]),
        "noise": float(model.likelihood.noise.detach().reshape(-1)[0]),
        "constant": float(model.mean_module.constant.detach().reshape(-1)[0]),
    }


def closed_form_posterior(x: Tensor, y_neg: Tensor, noise: Tensor, at: Tensor,
                          hypers: dict[str, float]) -> tuple[Tensor, Tensor] | None:
    """Exact GP posterior mean and std of ``y_neg`` at ``at``, original units: the model of
    :func:`new_model` (Matérn-5/2, constant mean, Standardize) with observation noise ``noise``
    (standardised units, one per point) and hyperparameters ``hypers``; ``None`` when the kernel
    matrix is singular."""
    mean_y, std_y = y_neg.mean(), standard_deviation(y_neg)
    ys = (y_neg - mean_y) / std_y
    h = hypers
    k = matern52(x, x, h["lengthscale"])
    k.diagonal().add_(noise)
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        return None
    k_star = matern52(at, x, h["lengthscale"])
    coef = torch.cholesky_solve((ys - h["constant"])[:, None], chol)[:, 0]
    mu = h["constant"] + k_star @ coef
    v = torch.linalg.solve_triangular(chol, k_star.T, upper=False)
    var = (1.0 - (v * v).sum(0)).clamp_min(1e-12)
    return mean_y + std_y * mu, std_y * var.sqrt()


def refine_with_optimize_acqf(acq: Any, taken: Tensor, grid_best: Suggestion, grid_score: float,
                              acquisition: str, min_distance: float, generator: torch.Generator) -> Suggestion:
    """Polish the grid argmax ``grid_best`` of acquisition ``acq`` with BoTorch's ``optimize_acqf``
    (multi-start L-BFGS-B, seeded from ``generator``); keep the grid point when the polished one is
    within ``min_distance`` of a ``taken`` input or scores lower."""
    bounds = torch.tensor([[0.0], [1.0]], dtype=DOUBLE)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            warnings.simplefilter("ignore")
            cand, val = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=4, raw_samples=64)
    except RuntimeError:
        return grid_best
    c = float(cand.reshape(-1)[0].clamp(0.0, 1.0))
    if taken.numel() and float((taken - c).abs().min()) < min_distance:
        return grid_best
    v = float(val)
    v = math.log(max(v, 1e-300)) if acquisition == "ei" else v
    if v < grid_score:
        return grid_best
    log_ei = grid_best.log_ei if acquisition == "ucb" else v
    return Suggestion(c, log_ei)


def fit_hyperparameters(x: Tensor, y_neg: Tensor, hypers: dict[str, float], maxiter: int | None,
                        generator: torch.Generator) -> dict[str, float] | None:
    """Maximum-marginal-likelihood GP hyperparameters (BoTorch's ``fit_gpytorch_mll``, starting from
    ``hypers``, at most ``maxiter`` L-BFGS-B iterations, under a seed drawn from ``generator``; the
    global RNG is left alone); ``None`` when the fit fails or ends non-finite."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    kwargs = {} if maxiter is None else {"optimizer_kwargs": {"options": {"maxiter": maxiter}}}
    try:
        model = new_model(x[:, None], y_neg[:, None], hypers)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(mll, **kwargs)
        fitted = read_hypers(model)
        if not all(math.isfinite(v) for v in fitted.values()):
            raise ModelFittingError(f"non-finite hyperparameters {fitted}")
        return fitted
    except (ModelFittingError, RuntimeError, ValueError):
        return None
