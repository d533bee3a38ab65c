"""Label-free objectives for choosing α on a batch (lower is better).

All work on the *projected* logits (the classes of the task) in fp32:

- ``entropy`` (AdaWiSE, Döbler et al. 2024): mean_i H(p_i);
- ``infomax`` (SHOT, Liang et al. 2020; TIM, Boudiaf et al. 2020): mean_i H(p_i) − H(p̄);
- ``anchored`` (this project): mean_i H(p_i) + KL(p̄ || p̄_anchor), p̄_anchor the zero-shot model's
  mean prediction on the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "entropy", "mean_entropy", "infomax", "anchored", "OBJECTIVES", "NEEDS_ANCHOR", "objective_value",
    "finite_objective",
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
OBJECTIVES: dict[str, ObjectiveFn] = {"entropy": mean_entropy, "infomax": infomax, "anchored": anchored}
#: objectives that need the zero-shot (α = 0) logits of the same batch
NEEDS_ANCHOR = frozenset({"anchored"})


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
