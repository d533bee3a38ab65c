"""Ablations of AdaWiSE: what a grid, the labels, or a closed-form rule achieve instead of BO.

- ``adawise-grid``: the objective's minimum over a fixed α grid on every batch (what BO approximates;
  Döbler et al., ECCV Workshops 2024, reconstructed by this project).
- ``oracle``: for each domain the static α with the best accuracy there, read from the labels in
  ``prepare(stream)``; an UPPER BOUND (``uses_labels = True``), never a competitor.
- ``dawin``: DaWin (Oh et al., ICLR 2025): a closed-form per-sample coefficient
  λ(x) = e^{−H_ft(x)} / (e^{−H_zs(x)} + e^{−H_ft(x)}) from the endpoints' entropies, applied to the
  outputs: p(x) = (1 − λ(x))·p_zs(x) + λ(x)·p_ft(x).

Grid and oracle share one α sweep (:func:`sweep_batch`, :func:`sweep_stream`): per batch, the
objective and the number of correct predictions at each α of a grid, so a benchmark computes it once
and reads both the grid method and the oracle from it (:class:`StreamSweep`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from adawise.core.alpha_engine import AlphaEvaluator
from adawise.core.objectives import NEEDS_ANCHOR, OBJECTIVES, entropy, finite_objective
from adawise.methods.base import Method, evaluating
from adawise.methods.registry import register
from adawise.methods.static import check_same_classes, mix_probabilities
from adawise.methods.weight_space import WeightSpaceMethod

__all__ = ["GridSearch", "Oracle", "DaWin", "BatchSweep", "StreamSweep", "sweep_batch", "sweep_stream",
           "alpha_grid"]


def alpha_grid(grid: int | Sequence[float]) -> list[float]:
    """``grid`` equally spaced αs in [0, 1] (an int >= 2), or the given αs checked and sorted."""
    if isinstance(grid, int):
        if grid < 2:
            raise ValueError(f"an alpha grid needs at least 2 points, got {grid}")
        return [round(i / (grid - 1), 6) for i in range(grid)]
    alphas = sorted({round(float(a), 6) for a in grid})
    if not alphas or not all(math.isfinite(a) for a in alphas) or alphas[0] < 0.0 or alphas[-1] > 1.0:
        raise ValueError(f"alphas must lie in [0, 1], got {list(grid)}")
    return alphas


@dataclass
class BatchSweep:
    """One batch at every α of a grid: objectives, correct counts (with labels), the best α's logits.

    ``objectives`` maps each objective name to its values along ``alphas``; ``best`` indexes the
    lowest finite value of the first objective (first of ties; 0 when none is finite).
    """

    alphas: list[float]
    objectives: dict[str, list[float]]
    correct: list[int] | None
    best: int
    logits: Tensor | None  # logits at alphas[best] when kept
    #: with ``sample_domains``: per domain of the batch's samples, (count, correct at each α)
    by_domain: dict[str, tuple[int, list[int]]] | None = None


def sweep_batch(
    evaluator: AlphaEvaluator,
    images: Any,
    alphas: Sequence[float],
    objectives: str | Sequence[str] = "entropy",
    labels: Tensor | None = None,
    keep_logits: bool = True,
    sample_domains: Sequence[str] | None = None,
) -> BatchSweep:
    """Evaluate θ(α) on ``images`` for every α (full-batch passes, in place through ``evaluator``).

    Every objective is computed from the same pass. The anchored objective's anchor is the α = 0
    pass (made first; an extra pass when 0 is not in ``alphas``). Only the best α's logits (by the
    first objective) are kept. With ``labels`` and ``sample_domains`` (a batch that mixes domains) the
    correct counts are also kept per sample domain.
    """
    names = [objectives] if isinstance(objectives, str) else list(objectives)
    for name in names:
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    images = evaluator.prepare_input(images)
    anchor = evaluator.logits(0.0, images) if any(n in NEEDS_ANCHOR for n in names) else None
    values: dict[str, list[float]] = {n: [] for n in names}
    correct: list[int] | None = [] if labels is not None else None
    groups = ({d: torch.tensor([x == d for x in sample_domains]) for d in dict.fromkeys(sample_domains)}
              if labels is not None and sample_domains is not None else None)
    by_domain = {d: (int(m.sum()), []) for d, m in groups.items()} if groups else None
    best, best_value, best_logits = 0, math.inf, None
    for i, a in enumerate(alphas):
        logits = anchor if (anchor is not None and a == 0.0) else evaluator.logits(a, images)
        for n in names:
            values[n].append(finite_objective(n, logits, anchor if n in NEEDS_ANCHOR else None)[0])
        if correct is not None:
            hits = logits.argmax(-1).cpu() == labels.cpu()
            correct.append(int(hits.sum()))
            for d, m in (groups or {}).items():
                by_domain[d][1].append(int(hits[m].sum()))
        value = values[names[0]][-1]
        improved = value < best_value
        if improved:
            best, best_value = i, value
        if keep_logits and (improved or i == 0):  # the first α's logits stand in when none is finite
            best_logits = logits
    return BatchSweep(list(alphas), values, correct, best, best_logits, by_domain)


@dataclass
class StreamSweep:
    """Every batch of a stream at every α of a grid.

    ``objectives[name]`` and ``correct`` are [batches, alphas]; ``sizes`` [batches]; ``domains`` the
    domain of each batch. A stream whose batches mix domains (``Batch.sample_domains``) also keeps
    ``sample_counts`` (sample domain -> (images, correct at each α)); :meth:`accuracy_per_domain` then
    reports those domains, while :meth:`oracle_alphas` (what a per-batch α can follow) stays per batch domain.
    """

    alphas: list[float]
    objectives: dict[str, Tensor]
    correct: Tensor
    sizes: Tensor
    domains: list[str] = field(default_factory=list)
    sample_counts: dict[str, tuple[int, Tensor]] | None = None

    def _values(self, objective: str | None) -> Tensor:
        name = objective or next(iter(self.objectives))
        return torch.nan_to_num(self.objectives[name], nan=math.inf)

    def accuracy_per_domain(self, per_sample: bool = True) -> dict[str, Tensor]:
        """Accuracy at each α, per domain (in order of first appearance): per sample domain where batches
        mix domains (unless ``per_sample=False``), else per batch domain."""
        if per_sample and self.sample_counts:
            return {d: c.double() / n for d, (n, c) in self.sample_counts.items()}
        out: dict[str, Tensor] = {}
        for d in dict.fromkeys(self.domains):
            mask = torch.tensor([x == d for x in self.domains])
            out[d] = self.correct[mask].sum(0).double() / self.sizes[mask].sum().double()
        return out

    def oracle_alphas(self) -> dict[str, float]:
        """Per batch domain, the α with the best accuracy (the lowest such α on ties); a stream whose
        batches mix domains has one batch domain, ``"mixed"``."""
        return {d: self.alphas[int(torch.argmax(acc))]
                for d, acc in self.accuracy_per_domain(per_sample=False).items()}

    def grid_choice(self, objective: str | None = None) -> Tensor:
        """Per batch, the index of the α minimising the objective (first of ties; NaN never wins)."""
        return torch.argmin(self._values(objective), dim=1)

    def minimum(self, objective: str | None = None) -> Tensor:
        """Per batch, the grid minimum of the objective."""
        return self._values(objective).min(1).values

    def grid_accuracy(self, objective: str | None = None) -> float:
        """Accuracy of ``adawise-grid`` (this objective) on the swept stream."""
        idx = self.grid_choice(objective)
        return float(self.correct.gather(1, idx[:, None]).sum() / self.sizes.sum())

    def oracle_accuracy(self) -> float:
        """Accuracy of ``oracle`` (an upper bound) on the swept stream."""
        table = self.oracle_alphas()
        idx = torch.tensor([self.alphas.index(table[d]) for d in self.domains])
        return float(self.correct.gather(1, idx[:, None]).sum() / self.sizes.sum())


def sweep_stream(
    evaluator: AlphaEvaluator,
    stream: Iterable[Any],
    alphas: Sequence[float],
    objectives: str | Sequence[str] = "entropy",
) -> StreamSweep:
    """:func:`sweep_batch` over a whole stream of ``Batch`` (reads the labels)."""
    names = [objectives] if isinstance(objectives, str) else list(objectives)
    objs: dict[str, list[list[float]]] = {n: [] for n in names}
    corr, sizes, domains = [], [], []
    samples: dict[str, tuple[int, Tensor]] = {}
    for batch in stream:
        mixed = getattr(batch, "sample_domains", None)
        r = sweep_batch(evaluator, batch.images, alphas, names, labels=batch.labels, keep_logits=False,
                        sample_domains=mixed)
        for n in names:
            objs[n].append(r.objectives[n])
        corr.append(r.correct)
        sizes.append(len(batch.labels))
        domains.append(batch.domain)
        for d, (count, right) in (r.by_domain or {}).items():
            n0, c0 = samples.get(d, (0, torch.zeros(len(alphas), dtype=torch.long)))
            samples[d] = (n0 + count, c0 + torch.tensor(right, dtype=torch.long))
    shape = (len(sizes), len(alphas))
    return StreamSweep(
        list(alphas),
        {n: torch.tensor(v, dtype=torch.float64).reshape(shape) for n, v in objs.items()},
        torch.tensor(corr, dtype=torch.long).reshape(shape),
        torch.tensor(sizes, dtype=torch.long),
        domains,
        samples or None,
    )


def _timed_info(evaluator: AlphaEvaluator, t0: float, **extra: Any) -> dict[str, Any]:
    seconds = time.perf_counter() - t0
    return {
        "forward_passes": evaluator.passes,
        "merges": evaluator.merges,
        "seconds": seconds,
        "seconds_forward": evaluator.seconds_forward,
        "seconds_merge": evaluator.seconds_merge,
        "seconds_bo": max(seconds - evaluator.seconds_forward - evaluator.seconds_merge, 0.0),
        **extra,
    }


@register("adawise-grid")
class GridSearch(WeightSpaceMethod):
    """Per batch, the α of a fixed grid with the lowest objective; its logits are the prediction.

    Options:
        objective: ``entropy`` (default), ``infomax`` or ``anchored``.
        grid: number of equally spaced αs (21: step 0.05) or an explicit list.
        device, amp_dtype: as for :class:`~adawise.methods.adawise.AdaWiSE`.

    No state carries over between batches (``reset`` is a no-op); costs ``len(grid)`` passes.
    """

    family = "adaptive"

    @classmethod
    def sweep_replay(cls, sweep: Any) -> tuple[Any, float, dict[str, Any]]:
        """The grid minimiser of the entropy per batch (what this method computes with a pass per grid α)."""
        alphas = list(sweep.alphas)
        choice = [alphas[i] for i in sweep.grid_choice("entropy").tolist()]
        return (lambda t, d: choice[t]), float(len(alphas)), {"objective": "entropy", "grid": alphas}

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, objective: str = "entropy",
                 grid: int | Sequence[float] = 21, device: Any = None,
                 amp_dtype: torch.dtype | None = None) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
        super().__init__(zeroshot, finetuned, device=device, amp_dtype=amp_dtype)
        self.objective, self.alphas = objective, alpha_grid(grid)
        self._alpha: float | None = None
        self._info: dict[str, Any] = {"forward_passes": 0.0}

    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        self.evaluator.reset_counters()
        r = sweep_batch(self.evaluator, images, self.alphas, self.objective)
        values = r.objectives[self.objective]
        self._alpha = r.alphas[r.best]
        self._info = _timed_info(self.evaluator, t0, alpha=self._alpha, objective=values[r.best],
                                 alphas=r.alphas, objectives=values,
                                 nonfinite=not all(math.isfinite(v) for v in values))
        return r.logits

    @property
    def alpha(self) -> float | None:
        return self._alpha

    @property
    def info(self) -> dict[str, Any]:
        return self._info

    def reset(self) -> None:
        self._alpha, self._info = None, {"forward_passes": 0.0}

    def options(self) -> dict[str, Any]:
        return {"objective": self.objective, "grid": self.alphas}


@register("oracle")
class Oracle(WeightSpaceMethod):
    """UPPER BOUND: per domain, the static α with the best accuracy there, found from the labels.

    ``prepare(stream)`` sweeps the stream over the α grid (labels read here and only here); at test
    time the α of the current domain (set by ``on_domain``; with a single prepared domain it is
    implied) is applied in place and one pass is made. Calling it before ``prepare`` raises.

    Options:
        grid: number of equally spaced αs (21: step 0.05) or an explicit list.
        sweep: a precomputed :class:`StreamSweep` of the same stream (shared with a benchmark or
            ``adawise-grid``), used instead of sweeping in ``prepare``.
        device, amp_dtype: as for :class:`~adawise.methods.adawise.AdaWiSE`.

    ``reset()`` keeps the prepared table (it is knowledge, not adaptation state).
    """

    family = "bound"

    @classmethod
    def sweep_replay(cls, sweep: Any) -> tuple[Any, float, dict[str, Any]]:
        """The best α per domain of the sweep (what this method finds from the labels)."""
        table = sweep.oracle_alphas()
        return (lambda t, d: table[d]), 1.0, {"grid": list(sweep.alphas), "alphas_per_domain": table,
                                              "upper_bound": True}

    uses_labels = True
    upper_bound = True

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, grid: int | Sequence[float] = 21,
                 sweep: StreamSweep | None = None, device: Any = None,
                 amp_dtype: torch.dtype | None = None) -> None:
        super().__init__(zeroshot, finetuned, device=device, amp_dtype=amp_dtype)
        self.alphas = alpha_grid(grid) if sweep is None else list(sweep.alphas)
        self._sweep = sweep
        self.table: dict[str, float] | None = None
        self.domain: str | None = None

    def prepare(self, stream: Any) -> None:
        """Sweep ``stream`` (reading its labels) and keep the best α per domain."""
        if self._sweep is None:
            self._sweep = sweep_stream(self.evaluator, stream, self.alphas, "entropy")
        self.table = self._sweep.oracle_alphas()

    def on_domain(self, domain: str) -> None:
        self.domain = domain

    def _current_alpha(self) -> float:
        if self.table is None:
            raise RuntimeError(
                "oracle is an upper bound that reads the labels: call prepare(stream) first "
                "(run_stream does), then on_domain(name) before each domain's batches"
            )
        if self.domain is None:
            if len(self.table) == 1:
                return next(iter(self.table.values()))
            raise RuntimeError(f"oracle: call on_domain(name) first; prepared domains: {sorted(self.table)}")
        if self.domain not in self.table:
            raise KeyError(f"oracle: domain {self.domain!r} was not in the prepared stream {sorted(self.table)}")
        return self.table[self.domain]

    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        self.evaluator.reset_counters()
        alpha = self._current_alpha()
        logits = self.evaluator.logits(alpha, self.evaluator.prepare_input(images))
        self._info = _timed_info(self.evaluator, t0, alpha=alpha, upper_bound=True)
        return logits

    @property
    def alpha(self) -> float | None:
        try:
            return self._current_alpha()
        except (RuntimeError, KeyError):
            return None

    @property
    def info(self) -> dict[str, Any]:
        return getattr(self, "_info", {"forward_passes": 0.0, "upper_bound": True})

    def options(self) -> dict[str, Any]:
        return {"grid": self.alphas, "upper_bound": True, "alphas_per_domain": self.table}


@register("dawin")
class DaWin(Method):
    """DaWin: per-sample output mixing weight from the endpoints' prediction entropies.

    λ(x) = e^{−H_ft} / (e^{−H_zs} + e^{−H_ft}) = sigmoid(H_zs − H_ft), computed on the (projected)
    logits; returns log((1 − λ)·p_zs + λ·p_ft). Two passes per batch (the given models, read only);
    no state. ``info`` holds the batch mean of λ. A row whose entropies are not finite gets λ = 0.5.
    """

    output_ensemble = True
    family = "ensemble"

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module) -> None:
        super().__init__()
        check_same_classes(zeroshot, finetuned, "dawin")
        self._keep(zeroshot=zeroshot, finetuned=finetuned)  # not submodules, so .to()/.train() leave them
        self._info: dict[str, Any] = {"forward_passes": 0.0}

    @torch.no_grad()
    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        zs, ft = self.endpoints()["zeroshot"], self.endpoints()["finetuned"]
        with evaluating(zs, ft):  # the given models' modes and batch-norm buffers stay as they are
            lz, lf = zs(images), ft(images)
        if lz.shape != lf.shape:
            return mix_probabilities(lz, lf, 0.5)  # refuses, naming both shapes
        lam = torch.sigmoid(entropy(lz) - entropy(lf))
        lam = torch.nan_to_num(lam, nan=0.5)
        self._info = {"forward_passes": 2.0, "lambda_mean": float(lam.mean()) if lam.numel() else math.nan,
                      "seconds": time.perf_counter() - t0}
        return mix_probabilities(lz, lf, lam)

    @property
    def info(self) -> dict[str, Any]:
        return self._info
