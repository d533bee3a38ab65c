"""The state an :class:`~adawise.methods.adawise.AdaWiSE` search carries from batch to batch, and the
evaluations it makes on one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from adawise.core.drift import DriftStats
from adawise.core.objectives import ProportionWindow

__all__ = ["SearchState"]


@dataclass
class _State:
    """Everything that carries over from batch to batch (restored by ``reset``)."""

    alpha: float  # returned by the last call
    center: float  # the α evaluated first on the next batch (fast), moved only with the GP's consent
    batches: int = 0
    since_search: int = 0
    since_probe: int = 0
    probe_interval: float | None = None  # warm batches between probes (None: probe_every; backs off while probes lose)
    probes: int = 0
    pending: str | None = None
    drift: DriftStats = field(default_factory=DriftStats)  # the drift detector's running statistics
    window: ProportionWindow | None = None  # the windowed objective's recent rows
    window_credit: float = 0.0  # images seen since the last row entered the window, in rows
    info: dict[str, Any] = field(default_factory=lambda: {"forward_passes": 0.0})


@dataclass
class SearchState:
    """Everything an :class:`AdaWiSE` search carries from batch to batch, apart from the weights:
    its own state (α, centre, drift statistics, counters, last ``info``), the optimizer's
    (observations, hyperparameters, fit counters) and the optimizer generator's RNG state.
    :meth:`AdaWiSE.search_state` / :meth:`AdaWiSE.load_search_state` move it in and out, so one
    engine (one live model) can serve many streams (:class:`adawise.evaluation.multistream.MultiStreamAdaWiSE`).
    """

    search: _State
    bo: Any  # adawise.core.bayesopt's state object
    rng: Tensor


@dataclass
class _Batch:
    """Evaluations made on the current batch: full-batch passes and sub-batch (probe) passes."""

    images: Any
    sub_images: Any  # ``images`` itself when the batch is not larger than the sub-batch
    fraction: float  # of a sub-batch pass
    anchor: Tensor | None = None
    full: dict[float, tuple[Tensor, float]] = field(default_factory=dict)  # α -> (logits, objective)
    sub: dict[float, float] = field(default_factory=dict)  # α -> objective on the sub-batch rows
    log: list[tuple[float, float, float]] = field(default_factory=list)  # (α, objective, fraction)
    dropped: int = 0
    nonfinite: bool = False
    window_rows: Tensor | None = None  # rows filling the proportion window, awaiting the first full pass
    window_ends: tuple[Tensor, Tensor] | None = None  # their logits at α = 0 and α = 1
    window_filled: bool = False  # the window was (re)filled from this batch: no rows enter after it

    @property
    def split(self) -> bool:
        """Whether the sub-batch is a strict subset of the batch."""
        return self.sub_images is not self.images


def _key(alpha: float) -> float:
    return round(float(alpha), 6)
