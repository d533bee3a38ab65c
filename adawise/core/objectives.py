"""Label-free objectives for choosing α on a batch (lower is better).

All work on the *projected* logits (the classes of the task) in fp32:

- ``entropy`` (AdaWiSE, Döbler et al. 2024): mean_i H(p_i);
- ``infomax`` (SHOT, Liang et al. 2020; TIM, Boudiaf et al. 2020): mean_i H(p_i) − H(p̄);
- ``anchored`` (this project): mean_i H(p_i) + KL(p̄ || p̄_anchor), p̄_anchor the zero-shot model's
  mean prediction on the same batch;
- ``windowed`` (this project): mean_i H(p_i) + λ·KL(P_W(α) ‖ P_W(0)), the class proportions P_W of a
  window of recent images (:class:`ProportionWindow`, state carried from batch to batch) at θ(α) and
  at the zero-shot model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "entropy", "mean_entropy", "infomax", "anchored", "OBJECTIVES", "NEEDS_ANCHOR", "NEEDS_WINDOW",
    "objective_value", "finite_objective", "ProportionWindow", "DIVERGENCES",
]


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row, computed in fp32: shape [B].

    Classes with logit −inf (probability 0) contribute 0; a row with a NaN or +inf logit gives NaN.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    plogp = logp.exp() * logp
    return -torch.where(logp == -math.inf, torch.zeros_like(plogp), plogp).sum(-1)


def mean_entropy(logits: Tensor, anchor_logits: Tensor | None = None) -> Tensor:
    """The paper's objective: mean prediction entropy of the batch (a scalar tensor)."""
    return entropy(logits).mean()


def _mean_prob(logits: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=-1).mean(0)


def _plogp(p: Tensor) -> Tensor:
    return torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))


def infomax(logits: Tensor, anchor_logits: Tensor | None = None) -> Tensor:
    """Mean entropy minus the entropy of the batch's mean prediction (confident and diverse)."""
    pbar = _mean_prob(logits)
    return entropy(logits).mean() + _plogp(pbar).sum()


def anchored(logits: Tensor, anchor_logits: Tensor | None = None) -> Tensor:
    """Mean entropy plus KL(p̄(α) || p̄(0)): confident, with zero-shot class proportions."""
    if anchor_logits is None:
        raise ValueError("the 'anchored' objective needs anchor_logits (the zero-shot model's logits)")
    pbar, qbar = _mean_prob(logits), _mean_prob(anchor_logits)
    kl = (_plogp(pbar) - pbar * qbar.clamp_min(1e-30).log()).sum()
    return entropy(logits).mean() + kl


ObjectiveFn = Callable[[Tensor, "Tensor | None"], Tensor]
#: ``windowed`` is the batch's mean entropy here; its window term comes from a :class:`ProportionWindow`
OBJECTIVES: dict[str, ObjectiveFn] = {"entropy": mean_entropy, "infomax": infomax, "anchored": anchored,
                                      "windowed": mean_entropy}
#: objectives that need the zero-shot (α = 0) logits of the same batch
NEEDS_ANCHOR = frozenset({"anchored"})
#: objectives whose value adds a :class:`ProportionWindow` term (state across batches)
NEEDS_WINDOW = frozenset({"windowed"})


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """½ Σ_c |p_c − q_c| over the last axis."""
    return 0.5 * (p - q).abs().sum(-1)


def sorted_total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Total variation between the proportions sorted in decreasing order: how much more (or less)
    concentrated ``p`` is than ``q``, whichever classes carry the mass (a swap of two classes' shares is free)."""
    return total_variation(p.sort(-1, descending=True).values, q.sort(-1, descending=True).values)


#: divergences a :class:`ProportionWindow` can compare proportions with
DIVERGENCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "tv": total_variation, "sorted-tv": sorted_total_variation,
    "kl": lambda p, q: (_plogp(p) - p * q.clamp_min(1e-30).log()).sum(-1),
}


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x (xp increasing; x within its range)."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    t = ((x - xp[i - 1]) / (xp[i] - xp[i - 1])).clamp(0.0, 1.0)
    return fp[i - 1] + t * (fp[i] - fp[i - 1])


class ProportionWindow:
    """The class proportions of a window of recent images at any α: the state of the ``windowed`` objective.

    Rows enter with their logits at α = 0, at their batch's centre α (the batch's first full pass) and at
    α = 1; the oldest leave once ``rows`` are held. θ(α)'s logits of a held row are interpolated in α
    through those three points (quadratic; linear between the endpoints when the centre is one of them),
    within a fraction of a point of accuracy of the exact logits on the embedded world
    (``benchmarks/objective_lab.py``); P_W(α) is the held rows' mean probability. Then

        penalty(α) = weight · min(1, held / rows) · coverage · D(P_W(α) ‖ P_W(0)),

    D the KL divergence by default (:data:`DIVERGENCES`). The ``min(1, held / rows)`` ramp keeps a
    window of a few rows (after a reset, or a restart at a domain change) from over-ruling the entropy:
    on class-sorted streams such a window holds one class, and the zero-shot model's share of the
    right class on it is its accuracy, so any confident model would look drifted. ``coverage`` (on by
    default) is the window's effective share of the classes at the zero-shot model,
    exp(H(P_W(0))) / C: the anchor is only as trustworthy as the classes it averages over. On a window
    of one or two classes the zero-shot model's bias on those classes is the whole of P_W(0), and a
    model that is right there (the fine-tuned one, in distribution) looks drifted; over many classes
    such biases average out, while a collapse onto a few classes still shows in full.

    The window is longer than a batch on purpose: on class-sorted or Dirichlet-ordered streams a batch
    holds one or two classes, and only proportions over many recent batches tell whether θ(α)'s
    predictions drift from the zero-shot model's (the lab's ``window`` row).
    """

    def __init__(self, rows: int = 128, weight: float = 3.0, divergence: str = "kl", coverage: bool = True) -> None:
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown window divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
        if int(rows) < 1:
            raise ValueError(f"window rows must be >= 1, got {rows}")
        self.rows, self.weight, self.divergence = int(rows), float(weight), divergence
        self.coverage = bool(coverage)
        self.version = 0  # counts the changes of the held rows (a clear, an add)
        self.clear()

    def clear(self) -> None:
        """Forget every held row."""
        self.z0: Tensor | None = None
        self.zc: Tensor | None = None
        self.z1: Tensor | None = None
        self.ac: Tensor | None = None
        self._changed()

    def _changed(self) -> None:
        """The held rows changed: a new version, and every cached proportion and penalty is stale."""
        self.version += 1
        self._cache: dict[float, Tensor] = {}
        self._grid: tuple[Tensor, Tensor] | None = None
        self._penalty: dict[float, float] = {}

    def __len__(self) -> int:
        return 0 if self.z0 is None else len(self.z0)

    def add(self, z0: Tensor, zc: Tensor, z1: Tensor, centre: float) -> None:
        """Add rows with their logits at α = 0, at ``centre`` and at α = 1 (rows with a non-finite logit are
        left out); the oldest rows leave beyond ``rows``."""
        z0, zc, z1 = (t.detach().float().cpu() for t in (z0, zc, z1))
        if not (z0.shape == zc.shape == z1.shape) or z0.ndim != 2:
            raise ValueError(f"window rows need [rows, classes] logits of one shape, got {tuple(z0.shape)}, "
                             f"{tuple(zc.shape)}, {tuple(z1.shape)}")
        ok = torch.isfinite(z0).all(-1) & torch.isfinite(zc).all(-1) & torch.isfinite(z1).all(-1)
        z0, zc, z1 = z0[ok], zc[ok], z1[ok]
        ac = torch.full((len(z0),), float(centre))
        if self.z0 is not None:
            if self.z0.shape[1] != z0.shape[1]:
                raise ValueError(f"window rows have {z0.shape[1]} classes, the window holds {self.z0.shape[1]}")
            z0, zc, z1 = torch.cat([self.z0, z0]), torch.cat([self.zc, zc]), torch.cat([self.z1, z1])
            ac = torch.cat([self.ac, ac])
        keep = slice(max(len(z0) - self.rows, 0), None)
        self.z0, self.zc, self.z1, self.ac = z0[keep], zc[keep], z1[keep], ac[keep]
        self._changed()

    def logits(self, alpha: float | Tensor) -> Tensor:
        """The held rows' logits at θ(α), interpolated through (0, centre, 1): ``[rows, C]``; for a 1-D
        tensor of αs, ``[len(alpha), rows, C]``."""
        if self.z0 is None:
            raise RuntimeError("the proportion window is empty")
        if torch.is_tensor(alpha):
            a, c = alpha.float().reshape(-1, 1, 1), self.ac[None, :, None]
        else:
            a, c = float(alpha), self.ac[:, None]
        inner = (c > 1e-3) & (c < 1 - 1e-3)
        cs = torch.where(inner, c, torch.full_like(c, 0.5))
        quad = ((a - cs) * (a - 1.0) / cs * self.z0 + a * (a - 1.0) / (cs * (cs - 1.0)) * self.zc
                + a * (a - cs) / (1.0 - cs) * self.z1)
        return torch.where(inner, quad, (1.0 - a) * self.z0 + a * self.z1)

    def proportions(self, alpha: float) -> Tensor:
        """P_W(α): the held rows' mean probability at θ(α) (``[C]``, cached per α)."""
        key = round(float(alpha), 6)
        if key not in self._cache:
            self._cache[key] = torch.softmax(self.logits(key), -1).mean(0)
        return self._cache[key]

    def class_coverage(self) -> float:
        """exp(H(P_W(0))) / C: the held rows' effective share of the classes at the zero-shot model, in
        (1/C, 1] (1 when the window is empty)."""
        if len(self) == 0:
            return 1.0
        p0 = self.proportions(0.0)
        return float(torch.exp(-_plogp(p0).sum())) / p0.numel()

    def _scale(self) -> float:
        """The divergence's factor: ``weight · min(1, held / rows) · coverage`` (coverage 1 when off)."""
        coverage = self.class_coverage() if self.coverage else 1.0
        return self.weight * min(1.0, len(self) / self.rows) * coverage

    def penalties(self, alphas: Tensor, nodes: int = 21) -> Tensor:
        """:meth:`penalty` at every α of a 1-D tensor at once (float64, zeros while the window is empty):
        the known part of the ``windowed`` objective that the search adds to its model of the batch term.
        More than ``nodes`` αs (a search grid): computed at ``nodes`` evenly spaced αs over their range and
        linear in between (the term is smooth in α; a 201-point grid costs what 21 points do), kept until the
        window changes while the same tensor is asked for again."""
        if len(self) == 0:
            return torch.zeros(len(alphas), dtype=torch.float64)
        if self._grid is not None and self._grid[0] is alphas:
            return self._grid[1]
        coarse = len(alphas) > nodes
        at = torch.linspace(float(alphas.min()), float(alphas.max()), nodes) if coarse else alphas
        p = torch.softmax(self.logits(at), -1).mean(1)
        out = (self._scale() * DIVERGENCES[self.divergence](p, self.proportions(0.0)[None])).double()
        if coarse:
            out = _interp(alphas.double(), at.double(), out)
            self._grid = (alphas, out)
        return out

    def penalty(self, alpha: float) -> float:
        """``weight · min(1, held / rows) · coverage · D(P_W(α) ‖ P_W(0))`` (0 while the window is empty;
        ``coverage`` is :meth:`class_coverage`, or 1 when the option is off)."""
        if len(self) == 0:
            return 0.0
        key = round(float(alpha), 6)
        if key not in self._penalty:
            d = float(DIVERGENCES[self.divergence](self.proportions(key), self.proportions(0.0)))
            self._penalty[key] = self._scale() * d
        return self._penalty[key]


def objective_value(name: str, logits: Tensor, anchor_logits: Tensor | None = None) -> float:
    """Evaluate the named objective as a Python float (``nan`` where the logits are not finite)."""
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return float(OBJECTIVES[name](logits, anchor_logits))


def _usable_rows(logits: Tensor) -> Tensor:
    """Rows with no NaN, no +inf and at least one finite logit (−inf marks a masked class)."""
    return ~(logits.isnan() | logits.isposinf()).any(-1) & (logits > -math.inf).any(-1)


def finite_objective(name: str, logits: Tensor, anchor_logits: Tensor | None = None) -> tuple[float, int]:
    """The named objective over the rows whose logits (and anchor logits) are usable.

    A row is usable without NaN or +inf logits and with at least one finite one (−inf logits of
    masked classes are fine).

    Returns ``(value, dropped)``: ``dropped`` counts the rows left out (a NaN or inf input row makes
    its logits non-finite); ``value`` is ``nan`` when no row is left. AdaWiSE uses this so that one
    broken image does not blind the search for the rest of its batch.
    """
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    value = float(OBJECTIVES[name](logits, anchor_logits))
    if math.isfinite(value):  # the common case: every row is usable (one reduction, no filtering)
        return value, 0
    ok = _usable_rows(logits)
    if anchor_logits is not None:
        ok &= _usable_rows(anchor_logits)
    n_ok = int(ok.sum())
    dropped = int(ok.numel()) - n_ok
    if n_ok == 0:
        return math.nan, dropped
    if dropped:
        logits = logits[ok]
        anchor_logits = None if anchor_logits is None else anchor_logits[ok]
    return float(OBJECTIVES[name](logits, anchor_logits)), dropped
