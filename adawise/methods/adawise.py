"""AdaWiSE: choose the WiSE-FT coefficient α per test batch by Bayesian optimisation of a label-free
objective, with one live interpolated model updated in place.

Provenance: Döbler et al., "AdaWiSE", ECCV Workshops 2024 (only the abstract is public; everything it
does not say is this project's reconstruction, see METHODS.md); θ(α) = (1 − α)·θ_zs + α·θ_ft is
WiSE-FT (Wortsman et al., CVPR 2022); objectives: entropy (the paper's), infomax (SHOT, Liang et al.
2020; TIM, Boudiaf et al. 2020), anchored (this project). The 1-D search is :class:`BayesOpt1D`.

Online contract: ``forward(images)`` searches α on the batch itself (label-free) and returns the
logits of the evaluated α with the lowest objective, always from a full-batch pass at that α; the
search state (current α, GP observations and hyperparameters, drift statistics) carries over from
batch to batch; ``observe`` does nothing more; ``reset()`` restores the exact initial state.

Two presets share one code path and differ only in options (:data:`PRESETS`):

- ``faithful``, a straightforward reading of the paper: a cold BO on every batch (initial design
  {0, 0.5, 1}, then LogEI proposals up to 10 full-batch evaluations, GP hyperparameters refitted
  before every proposal, BoTorch's own posterior). About 10 passes and 7 GP fits per batch.
- ``fast`` (default): the centre α (the last confirmed choice) is evaluated on the full batch first;
  that pass is the prediction unless something better turns up. On every warm batch (every second
  one on CUDA, where a small pass costs more, see ``probe_every``) one BO
  proposal (LogEI and UCB in turn: exploit, then explore) is probed on 16 evenly strided rows and
  compared with the centre on the same rows (paired, so batch-to-batch noise cancels); only a probe that
  wins by ``switch_margin`` costs a full pass, and the better of the two full passes is returned.
  The GP keeps the recent batches' observations relative to the centre (weights decaying 0.7 per
  batch, full-batch values weighing 1/fraction, noise estimated online from the GP's one-step
  residuals); hyperparameters are refitted every 500 observations only; the posterior is computed
  in closed form. The centre moves only when that pooled GP agrees, so one batch's noise does not
  drag the next batches along. A cold search (the centre, {0, 1} and three LogEI proposals, on the
  full batch) runs on the first batch, when the objective at the centre drifts (a domain change)
  and after a probe moved the centre by 0.2 or more. On a long stream of the embedded world: 1.54
  passes per batch on CPU (1.32 with a probe every second batch, the CUDA default); ``probe_backoff``
  spaces the probes out while they keep losing (fewer passes, slower tracking).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from adawise.core.bayesopt import BayesOpt1D
from adawise.methods.base import Method
from adawise.methods.registry import register
from adawise.core.objectives import NEEDS_ANCHOR, NEEDS_WINDOW, OBJECTIVES, ProportionWindow, entropy, finite_objective
from adawise.core.weights import WeightSpace, check_dtypes

__all__ = ["AdaWiSE", "AlphaEvaluator", "WeightSpaceMethod", "PRESETS", "SearchState"]


# --------------------------------------------------------------------------------------------------
# The live model
# --------------------------------------------------------------------------------------------------
class AlphaEvaluator:
    """One private copy of the model whose weights are θ(α), written in place; timed forward passes.

    The copy is made once (from the fine-tuned module, put in eval mode, gradients off); a
    :class:`~adawise.core.weights.WeightSpace` holds flat fp32 masters of both endpoints and lerps into
    it, so changing α allocates nothing. The given modules' values are only read.

    CUDA graphs: on a CUDA device the forward pass of each input shape (the full batch, the probe
    sub-batch, a short last batch; at most ``max_graphs``, least recently used dropped) is captured
    once into a CUDA graph and replayed: the eager call of a CLIP tower is bound by kernel launches
    (ViT-B/16 at 16 rows: 7.9 ms eager, 2.7 ms replayed on an H100). A graph reads the live model's
    parameters where they are, in the flat buffer that :meth:`WeightSpace.set_alpha` rewrites in
    place, so one capture stays valid for every α. The input is copied into the graph's static
    input and the output cloned out of it (the engine keeps several αs' logits of one batch). A
    model that cannot be captured (e.g. a forward that synchronises with the host) runs eagerly,
    with one warning per shape.

    Args:
        zeroshot, finetuned: the endpoints (same architecture).
        device: where the live model runs (default: where ``finetuned``'s parameters are).
        amp_dtype: if set (e.g. ``torch.bfloat16``), forward passes run under ``torch.autocast``.
        share_masters: let the fp32 masters be the endpoint modules' own storage where they are fp32
            on the live model's device (:class:`~adawise.core.weights.WeightSpace` ``share``): saves two
            model copies; the endpoints then share storage with the engine (same values, so they
            compute the same; changing them in place changes the engine). ``False``: private copies.
        cuda_graphs: capture and replay forward passes as CUDA graphs (``None``: on a CUDA device).
        max_graphs: input shapes kept captured at once.
    """

    def __init__(
        self,
        zeroshot: nn.Module,
        finetuned: nn.Module,
        device: torch.device | str | None = None,
        amp_dtype: torch.dtype | None = None,
        share_masters: bool = True,
        cuda_graphs: bool | None = None,
        max_graphs: int = 8,
    ) -> None:
        self._endpoints = (zeroshot, finetuned)
        self.amp_dtype = amp_dtype
        self.share_masters = bool(share_masters)
        self.cuda_graphs_option = cuda_graphs
        self.max_graphs = max(1, int(max_graphs))
        self._forward_checked = False  # the first batch checks that θ(0) computes what the zero-shot model does
        first = next(iter(finetuned.parameters()), None)
        self._build(torch.device(device) if device is not None else (first.device if first is not None
                                                                      else torch.device("cpu")), None)
        self.reset_counters()

    def _build(self, device: torch.device, dtype: torch.dtype | None) -> None:
        if device.type == "cuda" and device.index is None:  # "cuda" -> "cuda:N", as tensors report it
            device = torch.device("cuda", torch.cuda.current_device())
        zeroshot, finetuned = self._endpoints
        check_dtypes(zeroshot.state_dict(), finetuned.state_dict(),
                     names=("the zero-shot model", "the fine-tuned model"))
        live = copy.deepcopy(finetuned).eval().requires_grad_(False)
        live.to(device=device, dtype=dtype) if dtype is not None else live.to(device=device)
        self.model = live
        share = (zeroshot, finetuned) if self.share_masters else None
        self.space = WeightSpace(live, zeroshot.state_dict(), finetuned.state_dict(), share=share)
        self.device = device
        floating = [t for t in live.state_dict().values() if t.is_floating_point()]
        self.dtype = floating[0].dtype if floating else torch.float32
        self.cuda_graphs = device.type == "cuda" if self.cuda_graphs_option is None else (
            bool(self.cuda_graphs_option) and device.type == "cuda")
        self._graphs: OrderedDict[tuple[Any, ...], _Graph | None] = OrderedDict()
        self._pool: Any = None

    def move(self, fn: Any) -> None:
        """Apply an ``nn.Module._apply`` conversion (``.to``, ``.cuda``, ``.half``) by rebuilding."""
        probe = fn(torch.zeros((), device=self.device, dtype=self.dtype))
        if probe.device != self.device or probe.dtype != self.dtype:
            self._graphs.clear()  # they read the old live model's memory
            self._build(probe.device, probe.dtype if probe.dtype != self.dtype else None)

    def reset_counters(self) -> None:
        """Zero the per-batch counters (passes, merges, seconds)."""
        self.passes, self.merges = 0.0, 0
        self.seconds_forward = self.seconds_merge = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare_input(self, images: Any) -> Any:
        """Move a tensor batch to the live model's device (other inputs pass through); float images of
        another dtype than a low-precision live model's (fp32 images, bf16 engine) are cast to it, unless
        the model casts its inputs itself (``casts_inputs``) or autocast runs the passes."""
        if torch.is_tensor(images) and images.device != self.device:
            images = images.to(self.device, non_blocking=True)
        if (torch.is_tensor(images) and images.is_floating_point() and images.dtype != self.dtype
                and self.amp_dtype is None and not getattr(self.model, "casts_inputs", False)):
            images = images.to(self.dtype)
        return images

    def check_forward(self, images: Any) -> None:
        """Refuse endpoints with the same keys but another forward (e.g. average vs max pooling): at α = 0
        the live model (the fine-tuned model's code with the zero-shot weights) must reproduce the zero-shot
        model's logits on a few rows of the first batch. Counters and the merged α are left as they were."""
        from adawise.errors import ModelMismatchError
        from adawise.methods.base import evaluating

        if self._forward_checked or not torch.is_tensor(images) or len(images) == 0:
            return
        self._forward_checked = True
        zeroshot = self._endpoints[0]
        rows = images[:4]
        first = next(iter(zeroshot.parameters()), None)
        counters, alpha = (self.passes, self.merges, self.seconds_forward, self.seconds_merge), self.space.alpha
        given = rows
        if first is not None:  # the zero-shot model where it lives, in its dtype (the engine may run elsewhere)
            given = rows.to(first.device, dtype=first.dtype if rows.is_floating_point() else rows.dtype)
        with torch.no_grad(), evaluating(zeroshot):
            if self.amp_dtype is not None and first is not None:  # the same autocast as the engine's passes
                with torch.autocast(first.device.type, dtype=self.amp_dtype):
                    ref = zeroshot(given)
            else:
                ref = zeroshot(given)
            self.space.set_alpha(0.0)
            got = self._forward(rows)
        self.passes, self.merges, self.seconds_forward, self.seconds_merge = counters
        self.space.alpha = alpha  # the live weights are θ(0) now; the next pass merges its α again
        if not (torch.is_tensor(ref) and torch.is_tensor(got)):
            return
        exact = first is not None and first.dtype == self.dtype == torch.float32 and first.device == self.device
        tol = 1e-3 if exact and self.amp_dtype is None else 5e-2
        ok = ref.shape == got.shape
        if ok:
            ref, got = ref.float().cpu(), got.float().cpu()
            both = torch.isfinite(ref) & torch.isfinite(got)
            err = float((got - ref)[both].norm() / (ref[both].norm() + 1e-6)) if bool(both.any()) else 0.0
            ok = err <= tol
        if not ok:
            shape = (f"shape {tuple(got.shape)} vs {tuple(ref.shape)}" if got.shape != ref.shape
                     else f"relative error {err:.3g}")
            raise ModelMismatchError(
                "the zero-shot and fine-tuned models have the same weights layout but do not compute alike: at "
                "alpha = 0 the fine-tuned model's forward with the zero-shot weights differs from the zero-shot model "
                f"({shape} on the first batch); both endpoints must be the same architecture and configuration (e.g. "
                "the same pooling)")

    def _forward(self, images: Any, cache: bool = True) -> Tensor:
        if self.amp_dtype is None:
            return self.model(images)
        # no autocast weight cache inside a graph capture (the cast must be part of the graph)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache):
            return self.model(images)

    def _graph(self, images: Tensor) -> _Graph | None:
        """The captured graph for this input shape (captured now if new; ``None``: run eagerly)."""
        key = (tuple(images.shape), images.dtype)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        try:
            graph = self._capture(images)
        except Exception as err:  # noqa: BLE001 - any capture failure means: this shape runs eagerly
            torch.cuda.synchronize(self.device)
            warnings.warn(f"AlphaEvaluator: CUDA graph capture failed for input {tuple(images.shape)} "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); running it eagerly",
                          stacklevel=3)
            graph = None
        self._graphs[key] = graph
        return graph

    def _capture(self, images: Tensor) -> _Graph:
        static_in = torch.empty(images.shape, dtype=images.dtype, device=self.device)
        static_in.copy_(images)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        # warm-up (lazy initialisation, algorithm choice), then the capture, on a side stream; written
        # out rather than ``with torch.cuda.graph(...)``, whose exit leaves the capture stream current
        # when the capture fails
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(static_in, cache=False)
            side.synchronize()
            graph.capture_begin(pool=self._pool)
            try:
                static_out = self._forward(static_in, cache=False)
            finally:
                graph.capture_end()
        current.wait_stream(side)
        if not torch.is_tensor(static_out):
            raise TypeError(f"the model returned {type(static_out).__name__}, not a tensor")
        return _Graph(graph, static_in, static_out)

    def graph_status(self) -> dict[str, str]:
        """Input shape -> ``"graph"`` (captured) or ``"eager"`` (capture failed), for the logs."""
        return {"x".join(map(str, k[0])): ("graph" if g is not None else "eager") for k, g in self._graphs.items()}

    @torch.no_grad()
    def logits(self, alpha: float, images: Any, fraction: float = 1.0) -> Tensor:
        """Forward ``images`` through θ(α); counts ``fraction`` of a pass (sub-batches count less)."""
        if not self._forward_checked:
            self.check_forward(images)
        if self.space.alpha != alpha:
            t = time.perf_counter()
            self.space.set_alpha(alpha)
            self._sync()
            self.seconds_merge += time.perf_counter() - t
            self.merges += 1
        t = time.perf_counter()
        graph = (self._graph(images) if self.cuda_graphs and torch.is_tensor(images)
                 and images.device == self.device else None)
        if graph is not None:
            graph.inp.copy_(images)
            graph.graph.replay()
            out = graph.out.clone()
        else:
            out = self._forward(images)
        self._sync()
        self.seconds_forward += time.perf_counter() - t
        self.passes += fraction
        return out


@dataclass
class _Graph:
    """A captured forward pass: the graph, its static input and output."""

    graph: Any
    inp: Tensor
    out: Tensor


class WeightSpaceMethod(Method):
    """Base of the methods that run θ(α) through one :class:`AlphaEvaluator` (not a submodule, so
    ``.train()``/``state_dict()`` never touch it; ``.to()``/``.cuda()`` rebuild it on the target)."""

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, device: Any = None,
                 amp_dtype: torch.dtype | None = None, share_masters: bool = True,
                 cuda_graphs: bool | None = None) -> None:
        super().__init__()
        self.evaluator = AlphaEvaluator(zeroshot, finetuned, device=device, amp_dtype=amp_dtype,
                                        share_masters=share_masters, cuda_graphs=cuda_graphs)
        self._keep(zeroshot=zeroshot, finetuned=finetuned)  # read only; the log header hashes their weights
        # an empty buffer on the live model's device, so callers (run_stream) can see where it runs
        self.register_buffer("_device_tag", torch.empty(0, device=self.evaluator.device), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> WeightSpaceMethod:  # type: ignore[override]
        super()._apply(fn, recurse)
        self.evaluator.move(fn)
        return self


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------
_COMMON: dict[str, Any] = {
    "init_alpha": 0.5,
    "grid_size": 201,
    "acquisition": "logei",
    "acq_optimizer": "grid",
    "probe_every": "auto",
    "probe_backoff": 1.0,
    "probe_every_max": 8,
    "ucb_beta": 9.0,
    "min_distance": 0.01,
    "fit_maxiter": None,
    "window": 8,
    "search_every": None,
    "search_on_domain": False,
    "min_fit_points": 3,
    "noise": "fit",
    # the windowed objective's proportion window (ProportionWindow; other objectives ignore them)
    "window_rows": 128,
    "window_stride": 8.0,
    "window_fill": 32,
    "window_weight": 3.0,
    "window_divergence": "kl",
    "window_restart": True,
    # per-sample mix with the zero-shot model of the rows the chosen θ(α) is unsure about (None: off)
    "mix_threshold": None,
    "mix_cap": None,
}

#: option values of the two presets; any option passed to :class:`AdaWiSE` overrides its preset
PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {
        **_COMMON,
        "track": False, "init_design": (0.0, 0.5, 1.0), "search_evals": 10, "search_on": "full",
        "sub_batch": None,
        "probe_evals": 0, "probe_acquisitions": ("logei",), "probe_min_ei": 0.0, "switch_margin": 0.0,
        "drift_z": None, "drift_min_rel": 0.05, "drift_beta": 0.2, "drift_warmup": 3, "search_on_jump": None,
        "memory": "none", "decay": 0.8, "refit": "every", "posterior": "botorch", "incumbent": "observed",
    },
    "fast": {
        **_COMMON,
        "track": True, "init_design": (0.0, 1.0), "search_evals": 6, "search_on": "full",
        "sub_batch": 16,
        "probe_evals": 1, "probe_acquisitions": ("logei", "ucb"), "probe_min_ei": 0.0, "switch_margin": 2e-3,
        "drift_z": 4.0, "drift_min_rel": 0.05, "drift_beta": 0.2, "drift_warmup": 1, "search_on_jump": 0.2,
        "memory": "decay", "decay": 0.7, "refit": 500, "posterior": "closed_form", "incumbent": "model",
        "noise": "online",
    },
}


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
    drift_mu: float = 0.0
    drift_var: float = 0.0
    drift_n: int = 0
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


@register("adawise")
class AdaWiSE(WeightSpaceMethod):
    """Test-time weight-space ensemble: per batch, BO over α of a label-free objective.

    ``engine = AdaWiSE(zs, ft); logits = engine(images)`` predicts the batch at the α the search
    chose on it (then the state carries over); ``engine.alpha``, ``engine.info``, ``engine.reset()``.

    Options (keyword-only; each overrides the preset's value, see :data:`PRESETS`):
        preset: ``"fast"`` (default) or ``"faithful"`` (module docstring).
        objective: ``"entropy"`` (default, the paper's), ``"infomax"`` or ``"anchored"``
            (:mod:`adawise.core.objectives`). ``anchored`` costs one full pass at α = 0 per batch
            (reused when α = 0 is evaluated on the full batch anyway).
        init_alpha: α in force before the first batch (0.5).
        track: evaluate the centre α on the full batch first and search warm (fast), or run a cold
            search on every batch (faithful).
        init_design: αs evaluated at the start of a cold search (besides αs already evaluated).
        search_evals: αs known on the search rows when a cold search stops, reused ones included
            (faithful 10; fast 6 = centre + {0, 1} + 3 proposals).
        search_on: rows of a cold search, ``"full"`` or ``"sub"`` (the sub-batch, then the winner
            confirmed on the full batch).
        sub_batch: rows of a probe (evenly strided through the batch; a pass on them counts
            ``sub_batch / B`` in ``forward_passes``); ``None`` or a batch no larger: the full batch.
        probe_every: probe on every N-th warm batch (the others cost one pass). ``"auto"`` (both
            presets): every batch on CPU, every second batch on CUDA. A probe is a pass on the
            sub-batch: on CPU it costs its share of rows (16 of 64: a quarter of a pass), on a GPU a
            16-row pass is launch-bound and costs about a third of a 64-row one (ViT-B/16, H200,
            CUDA graphs: 3.5 vs 10.6 ms), so probing every batch there would cost about 1.6x plain
            inference (an estimate from those timings) instead of the measured 1.39x. On the embedded world (``benchmarks/bench_presets.py
            --embedded``) probing every batch and ``drift_warmup`` 1 put the objective within 2% of
            the batch's grid minimum on 0.92 / 0.90 / 0.92 of batches (entropy / infomax /
            anchored), against 0.71 for entropy with a probe every second batch and warm-up 3
            (``--fast-options '{"probe_every": 2, "drift_warmup": 3}'``), for 1.70x instead of 1.37x
            plain inference (CPU, same benchmark).
        probe_backoff, probe_every_max: after a probe that did not change the prediction, the
            interval between probes is multiplied by ``probe_backoff``, up to ``probe_every_max``
            batches (e.g. 2.0: 2, 4, 8); a probe that wins or a cold search resets it to
            ``probe_every``. Both presets: 1.0, a fixed interval (back-off saved 0.1 passes per batch
            but lowered the share of batches within 2% of the grid minimum from 0.96-0.98 to
            0.86-0.89 on the constructed and MLP worlds of ``benchmarks/bench_presets.py``).
        probe_evals: BO proposals probed on a probing batch (fast 1).
        probe_acquisitions: acquisitions the probes take in turn (fast: ``("logei", "ucb")``).
        probe_min_ei: skip a probe when the GP's expected improvement is below this fraction of
            the objective at the centre (0: never skip).
        switch_margin: a probe must beat the centre on the sub rows by this fraction of its
            objective before a full pass at the probe is spent.
        drift_z, drift_min_rel, drift_beta, drift_warmup: drift detector on the full-batch objective
            at the centre (exponentially weighted mean/variance with weight ``drift_beta``): a cold
            search runs when it moves more than ``drift_z`` standard deviations, the deviation
            floored at ``drift_min_rel`` of the mean, after ``drift_warmup`` batches; ``None``
            disables it. Fast: warm-up 1, so a jump right after a search (a domain change two
            batches after the last one) is caught at once by the ``drift_z * drift_min_rel`` (20%)
            floor; with 3 such batches went by at the wrong α (embedded world: contrast after
            brightness).
        search_on_jump: run a cold search on the next batch when a probe moved the centre by at
            least this much (the landscape moved although the objective's level did not; None: never).
        search_every: also run a cold search (memory kept) every N batches (None: never).
        search_on_domain: run a cold search at each ``on_domain`` call (uses the loop's domain
            boundary signal; off by default so the method needs no boundaries).
        memory, window, decay: which earlier batches' observations the GP keeps (``"none"``,
            ``"window"``, ``"decay"``); fast keeps them relative to the centre.
        refit, min_fit_points, fit_maxiter: GP hyperparameter refit policy (``"every"``,
            ``"never"`` or every N observations) and its limits.
        noise: GP observation noise ``"fit"`` (hyperparameter) or ``"online"`` (residual estimate).
        posterior: ``"botorch"`` or ``"closed_form"`` (same GP, about 15x less overhead).
        grid_size, acquisition, ucb_beta, incumbent, acq_optimizer, min_distance: :class:`BayesOpt1D`.
        window_rows, window_stride, window_fill, window_weight, window_divergence, window_restart: the
            ``windowed`` objective's :class:`~adawise.core.objectives.ProportionWindow`: it holds ``window_rows``
            rows (128), one per ``window_stride`` images (8: evenly strided rows of each batch, entered after
            the prediction, with their logits at α = 0 and α = 1 from two small passes and at the centre
            from the batch's full pass), ``window_fill`` rows of the batch when it is empty (32); its term
            is ``window_weight`` (3) x KL (``window_divergence``) ramped by how full it is; it restarts at
            a detected drift (``window_restart``; the detector then watches the entropy part only).
        mix_threshold, mix_cap: after the prediction's α is chosen, rows whose entropy there exceeds
            ``mix_threshold`` x log(classes) (at most a ``mix_cap`` share of the batch, the most uncertain) are mixed
            per sample with the zero-shot model by DaWin's weight (one zero-shot pass over those rows; the
            call then returns log-probabilities). ``None``: off (``adawise-windowed``: 0.3).
        seed: seed of the optimizer's private generator (runs never read the global RNG).
        device: where the live model runs (default: ``finetuned``'s device).
        amp_dtype: autocast dtype of the forward passes (e.g. ``torch.bfloat16`` on CUDA).
        share_masters, cuda_graphs: engine options of :class:`AlphaEvaluator` (masters in the
            endpoints' own storage; forward passes replayed from CUDA graphs on a CUDA device).

    ``info`` after a call: ``alpha``, ``center``, ``objective`` (full batch, at ``alpha``),
    ``alphas``, ``objectives`` and ``fractions`` (one entry per forward pass, in order; 1.0 = full
    batch), ``forward_passes``, ``merges``, ``seconds`` = ``seconds_forward`` + ``seconds_merge`` +
    ``seconds_bo`` (all the rest: objectives, GP, bookkeeping), ``mode`` (``search``, ``probe``,
    ``track`` or ``skip``), ``reason`` of a search (``first``, ``drift``, ``jump``, ``domain``,
    ``periodic``, ``cold``), ``switched``, ``nonfinite``, ``dropped_rows``, ``gp_fits``, ``fit_failures``.
    """

    adapts = True

    def __init__(
        self,
        zeroshot: nn.Module,
        finetuned: nn.Module,
        *,
        preset: str = "fast",
        objective: str = "entropy",
        seed: int = 0,
        device: Any = None,
        amp_dtype: torch.dtype | None = None,
        share_masters: bool = True,
        cuda_graphs: bool | None = None,
        **overrides: Any,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
        unknown = sorted(set(overrides) - set(PRESETS[preset]))
        if unknown:
            raise TypeError(f"AdaWiSE got unknown options {unknown}; known: {', '.join(sorted(PRESETS[preset]))}")
        super().__init__(zeroshot, finetuned, device=device, amp_dtype=amp_dtype, share_masters=share_masters,
                         cuda_graphs=cuda_graphs)
        opts = dict(PRESETS[preset])
        opts.update(overrides)
        if not 0.0 <= float(opts["init_alpha"]) <= 1.0:
            raise ValueError(f"init_alpha must be in [0, 1], got {opts['init_alpha']}")
        if int(opts["search_evals"]) < 1:
            raise ValueError("search_evals must be >= 1")
        self.preset, self.objective, self.seed = preset, objective, int(seed)
        self.opts = opts
        self.bo = BayesOpt1D(
            grid_size=opts["grid_size"], acquisition=opts["acquisition"], ucb_beta=opts["ucb_beta"],
            incumbent=opts["incumbent"],
            acq_optimizer=opts["acq_optimizer"], posterior=opts["posterior"], refit=opts["refit"],
            fit_maxiter=opts["fit_maxiter"], min_distance=opts["min_distance"], memory=opts["memory"],
            window=opts["window"], decay=opts["decay"], min_fit_points=opts["min_fit_points"],
            noise=opts["noise"], seed=self.seed,
        )
        if float(opts["probe_backoff"]) < 1.0:
            raise ValueError(f"probe_backoff must be >= 1, got {opts['probe_backoff']}")
        if opts["probe_every"] != "auto" and int(opts["probe_every"]) < 1:
            raise ValueError(f"probe_every must be 'auto' or >= 1, got {opts['probe_every']!r}")
        self._initial = _State(alpha=float(opts["init_alpha"]), center=float(opts["init_alpha"]))
        if objective in NEEDS_WINDOW:
            self._initial.window = ProportionWindow(rows=opts["window_rows"], weight=opts["window_weight"],
                                                    divergence=opts["window_divergence"])
        if int(opts["window_fill"]) < 1:
            raise ValueError(f"window_fill must be >= 1, got {opts['window_fill']}")
        if not float(opts["window_stride"]) >= 1.0:
            raise ValueError(f"window_stride (images per window row) must be >= 1, got {opts['window_stride']}")
        if opts["mix_cap"] is not None and not 0.0 < float(opts["mix_cap"]) <= 1.0:
            raise ValueError(f"mix_cap must be None or a share of the batch in (0, 1], got {opts['mix_cap']}")
        if opts["mix_threshold"] is not None and not 0.0 <= float(opts["mix_threshold"]) <= 1.0:
            raise ValueError(f"mix_threshold must be None or a fraction of log(classes) in [0, 1], "
                             f"got {opts['mix_threshold']}")
        self._s = copy.deepcopy(self._initial)

    # ------------------------------------------------------------------ Method API
    @property
    def alpha(self) -> float:
        """The α whose logits the last call returned (``init_alpha`` before the first call)."""
        return self._s.alpha

    @property
    def info(self) -> dict[str, Any]:
        return self._s.info

    def options(self) -> dict[str, Any]:
        out = {"preset": self.preset, "objective": self.objective, "seed": self.seed,
               "amp_dtype": str(self.evaluator.amp_dtype) if self.evaluator.amp_dtype else None}
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.opts.items()})
        return out

    def reset(self) -> None:
        """Restore the exact initial state: α, BO history and hyperparameters, RNG, drift statistics."""
        self._s = copy.deepcopy(self._initial)
        self.bo.reset()

    def probe_every(self) -> int:
        """Warm batches between probes (``probe_every``; ``"auto"``: 1 on CPU, 2 on an accelerator)."""
        every = self.opts["probe_every"]
        if every == "auto":
            return 1 if self.evaluator.device.type == "cpu" else 2
        return int(every)

    def search_state(self) -> SearchState:
        """The search state in force (live objects, not copies: the next call changes them)."""
        bo, rng = self.bo.export_state()
        return SearchState(self._s, bo, rng)

    def load_search_state(self, state: SearchState) -> None:
        """Continue from ``state`` (used as is, not copied): the next call picks up where it left off."""
        self._s = state.search
        self.bo.import_state(state.bo, state.rng)

    def initial_search_state(self) -> SearchState:
        """A fresh copy of the initial search state (what :meth:`reset` restores)."""
        bo, rng = self.bo.initial_state()
        return SearchState(copy.deepcopy(self._initial), bo, rng)

    def on_domain(self, domain: str) -> None:
        if self.opts["search_on_domain"] and self._s.batches > 0:
            self._s.pending = "domain"

    # ------------------------------------------------------------------ evaluation helpers
    def _objective(self, b: _Batch, logits: Tensor, anchor: Tensor | None, count: bool, alpha: float) -> float:
        value, dropped = finite_objective(self.objective, logits, anchor)
        if self._s.window is not None:
            value += self._s.window.penalty(alpha)
        if count:
            b.dropped = max(b.dropped, dropped)
        b.nonfinite |= dropped > 0 or not math.isfinite(value)
        return value

    def _sub(self, t: Any) -> Any:
        return t[:: self._step][: self._m]

    def _full(self, b: _Batch, alpha: float) -> tuple[Tensor, float]:
        """Full-batch logits and objective at α (a pass unless already made on this batch)."""
        k = _key(alpha)
        if k not in b.full:
            logits = self.evaluator.logits(k, b.images)
            if b.anchor is None and self.objective in NEEDS_ANCHOR:
                b.anchor = logits  # forward() asks for α = 0 first
            if b.window_ends is not None:  # the first full pass: its rows complete the window's new entry
                self._s.window.add(b.window_ends[0], logits[b.window_rows], b.window_ends[1], k)
                b.window_ends = None
            value = self._objective(b, logits, b.anchor, count=True, alpha=k)
            b.full[k] = (logits, value)
            b.log.append((k, value, 1.0))
        return b.full[k]

    def _known(self, b: _Batch, on: str) -> dict[float, float]:
        """Objective values known on the ``full`` batch or on the ``sub`` rows (a full pass gives
        its sub rows' value for free; it is computed when first asked for)."""
        if on == "sub" and b.split:
            for k, (logits, _) in b.full.items():
                if k not in b.sub:
                    anchor = None if b.anchor is None else self._sub(b.anchor)
                    b.sub[k] = self._objective(b, self._sub(logits), anchor, count=False, alpha=k)
            return b.sub
        return {k: v for k, (_, v) in b.full.items()}

    def _value(self, b: _Batch, alpha: float, on: str) -> float:
        """Objective at α on the ``full`` batch or the ``sub`` rows (a pass unless already known)."""
        k = _key(alpha)
        if on == "full" or not b.split:
            return self._full(b, k)[1]
        if k not in self._known(b, "sub"):
            logits = self.evaluator.logits(k, b.sub_images, b.fraction)
            anchor = None if b.anchor is None else self._sub(b.anchor)
            b.sub[k] = self._objective(b, logits, anchor, count=False, alpha=k)
            b.log.append((k, b.sub[k], b.fraction))
        return b.sub[k]

    @staticmethod
    def _strided(n: int, k: int, device: Any) -> Tensor:
        """``min(n, k)`` evenly strided row indices of a batch of ``n``."""
        k = max(min(n, int(k)), 1)
        return torch.arange(0, n, max(n // k, 1), device=device)[:k]

    def _window_fill(self, b: _Batch) -> None:
        """(Re)fill the empty proportion window from this batch: ``window_fill`` rows at α = 0 and α = 1
        (two passes on a few rows); their logits at the centre come from the batch's first full pass
        (``_full``), or from a pass made now if there was one already."""
        rows = self._strided(len(b.images), self.opts["window_fill"], b.images.device)
        part, fraction = b.images[rows], len(rows) / len(b.images)
        ends = (self.evaluator.logits(0.0, part, fraction), self.evaluator.logits(1.0, part, fraction))
        b.window_filled = True
        if b.full:  # a restart after the centre pass: its logits are there
            k = next(iter(b.full))
            self._s.window.add(ends[0], b.full[k][0][rows], ends[1], k)
            for a, (logits, _) in list(b.full.items()):  # the values change with the window
                b.full[a] = (logits, self._objective(b, logits, b.anchor, count=False, alpha=a))
            b.sub.clear()
        else:
            b.window_rows, b.window_ends = rows, ends

    def _after(self, b: _Batch, logits: Tensor, centre: float) -> tuple[Tensor, int]:
        """After the prediction's α is chosen: rows enter the proportion window (their logits at α = 0
        and 1: small passes), and the rows θ(α) is unsure about (entropy above ``mix_threshold`` x
        log(classes), the most uncertain ``mix_cap``) are mixed with the zero-shot model per sample,
        p = λ·p_α + (1 − λ)·p_0 with DaWin's λ = sigmoid(H_0 − H_α) (Oh et al., ICLR 2025), one
        zero-shot pass over both sets of rows. Returns the log-probabilities and the mixed row count."""
        n, device, o = len(b.images), b.images.device, self.opts
        window = self._s.window
        k = 0
        if window is not None and not b.window_filled:  # one row per window_stride images, whatever the batch size
            self._s.window_credit += n / float(o["window_stride"])
            k = int(self._s.window_credit)
            self._s.window_credit -= k
        wrows = self._strided(n, k, device) if k else torch.zeros(0, dtype=torch.long, device=device)
        h = entropy(logits)
        sel = torch.zeros(n, dtype=torch.bool, device=logits.device)
        if o["mix_threshold"] is not None and logits.shape[-1] > 1:
            sel = h > float(o["mix_threshold"]) * math.log(logits.shape[-1])
            cap = None if o["mix_cap"] is None else max(int(float(o["mix_cap"]) * n), 1)
            if cap is not None and int(sel.sum()) > cap:
                sel &= h >= h[sel].topk(cap).values[-1]
        mixed = torch.nonzero(sel).flatten().to(device)
        need = torch.unique(torch.cat([mixed, wrows]))
        out = torch.log_softmax(logits.float(), -1)
        if len(need) == 0:
            return out, 0
        z0 = self.evaluator.logits(0.0, b.images[need], len(need) / n)
        where = {int(r): i for i, r in enumerate(need.tolist())}
        if len(wrows):
            z1 = self.evaluator.logits(1.0, b.images[wrows], len(wrows) / n)
            zc = b.full[_key(centre)][0][wrows]
            window.add(z0[[where[int(r)] for r in wrows.tolist()]], zc, z1, centre)
        if len(mixed):
            zm = z0[[where[int(r)] for r in mixed.tolist()]].float()
            lam = torch.sigmoid(torch.nan_to_num(entropy(zm) - h[mixed.to(h.device)], nan=0.0))[:, None]
            p = lam * torch.softmax(logits[mixed].float(), -1) + (1.0 - lam) * torch.softmax(zm, -1)
            out[mixed] = p.clamp_min(1e-30).log()
        return out, len(mixed)

    # ------------------------------------------------------------------ the search
    def _observe(self, b: _Batch, k: float, y: float, on: str, predicted: Any = None) -> None:
        """Tell the GP y at α; a full-batch value of a split batch weighs ``1 / fraction`` sub values.
        The centre's own value (0 by construction) does not teach the noise estimate."""
        self.bo.observe(k, y, weight=1.0 / b.fraction if (on == "full" and b.split) else 1.0,
                        learn_noise=k != _key(self._s.center), predicted=predicted)

    def _observe_known(self, b: _Batch, on: str, ref: float) -> None:
        have = {_key(x) for x, _ in self.bo.current()}
        for k, v in self._known(b, on).items():
            if k not in have:
                self._observe(b, k, v - ref, on)

    def _cold_search(self, b: _Batch, on: str, ref: float, clear: bool) -> None:
        """Initial design, then BO proposals, until ``search_evals`` αs are known on the rows."""
        if clear:
            self.bo.clear()
        self._observe_known(b, on, ref)
        budget = int(self.opts["search_evals"])
        for a in self.opts["init_design"]:
            if len(self._known(b, on)) >= budget:
                break
            if _key(a) not in self._known(b, on):
                self._observe(b, _key(a), self._value(b, a, on) - ref, on)
        if not any(math.isfinite(v) for v in self._known(b, on).values()):
            return  # nothing is finite on this batch: searching further cannot help
        while len(self._known(b, on)) < budget:
            s = self.bo.suggest()
            if s is None:
                break
            self._observe(b, _key(s.x), self._value(b, s.x, on) - ref, on, predicted=s)

    def _probe(self, b: _Batch, ref: float) -> None:
        """Probe BO-proposed αs on the sub-batch rows, unless the GP expects too little from them."""
        self._observe_known(b, "sub", ref)
        floor = float(self.opts["probe_min_ei"]) * max(abs(ref), 1e-8)
        cycle = self.opts["probe_acquisitions"]
        for _ in range(int(self.opts["probe_evals"])):
            acquisition = cycle[self._s.probes % len(cycle)]
            self._s.probes += 1
            s = self.bo.suggest(acquisition=acquisition)
            if s is None or s.ei < floor:
                break
            self._observe(b, _key(s.x), self._value(b, s.x, "sub") - ref, "sub", predicted=s)

    def _select(self, b: _Batch, current: float, on: str, margin: float | None) -> float:
        """The α to predict with: the best on the rows searched, confirmed on the full batch.

        ``margin`` (probe mode): the relative improvement on the sub rows a challenger needs before a
        full pass at it is spent; ``None``: always confirm. Ties stay close to the current α.
        """
        cur = _key(current)
        rows = {k: v for k, v in self._known(b, on).items() if math.isfinite(v)}
        if not rows:
            return current
        winner = min(rows, key=lambda k: (rows[k], abs(k - cur)))
        if winner not in b.full:
            if margin is not None and cur in rows and not rows[winner] < rows[cur] - margin * abs(rows[cur]):
                return current
            self._full(b, winner)
        full = {k: v for k, v in self._known(b, "full").items() if math.isfinite(v)}
        if not full:
            return current
        return min(full, key=lambda k: (full[k], abs(k - cur)))

    # ------------------------------------------------------------------ drift
    def _drift_value(self, value: float, alpha: float) -> float:
        """What the drift detector watches: the objective, without the proportion window's term (the
        window changes as rows enter; a domain change shows in the batch's own entropy)."""
        window = self._s.window
        return value - window.penalty(alpha) if window is not None and math.isfinite(value) else value

    def _drifted(self, g: float) -> bool:
        s, z = self._s, self.opts["drift_z"]
        if z is None or s.drift_n < int(self.opts["drift_warmup"]):
            return False
        sd = max(math.sqrt(s.drift_var), float(self.opts["drift_min_rel"]) * abs(s.drift_mu), 1e-8)
        return abs(g - s.drift_mu) > float(z) * sd

    def _update_drift(self, g: float, restart: bool, paired_shift: float) -> None:
        s, beta = self._s, float(self.opts["drift_beta"])
        if not math.isfinite(g):
            return
        if restart or s.drift_n == 0:
            s.drift_mu, s.drift_var, s.drift_n = g, 0.0, 1
            return
        s.drift_mu += paired_shift
        delta = g - s.drift_mu
        s.drift_mu += beta * delta
        s.drift_var = (1.0 - beta) * (s.drift_var + beta * delta * delta)
        s.drift_n += 1

    # ------------------------------------------------------------------ forward
    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        ev, s, o = self.evaluator, self._s, self.opts
        ev.reset_counters()
        images = ev.prepare_input(images)
        n, m = len(images), o["sub_batch"]
        if m is None or not torch.is_tensor(images) or n <= int(m):
            self._step, self._m = 1, n
            b = _Batch(images, images, 1.0)
        else:
            self._step, self._m = n // int(m), int(m)
            b = _Batch(images, self._sub(images), int(m) / n)
        current = s.center
        if self.objective in NEEDS_ANCHOR:
            self._full(b, 0.0)  # the anchor: the zero-shot prediction on the same batch
        window = s.window if torch.is_tensor(images) else None
        if window is not None and len(window) == 0:
            self._window_fill(b)

        reason = s.pending or ("first" if s.batches == 0 else None)
        if reason is None and o["search_every"] and s.since_search + 1 >= int(o["search_every"]):
            reason = "periodic"
        search_on = o["search_on"]
        g_cur = math.nan
        if o["track"]:
            g_cur = self._full(b, current)[1]
            if reason is None and math.isfinite(g_cur) and self._drifted(self._drift_value(g_cur, current)):
                reason = "drift"
                if window is not None and o["window_restart"]:  # a new domain: its own proportions
                    window.clear()
                    self._window_fill(b)
        elif reason is None:
            reason = "cold"
        on = search_on if reason else "sub"
        ref = self._known(b, on)[_key(current)] if o["track"] else 0.0
        if not math.isfinite(ref):
            mode = "skip"  # nothing comparable on this batch: keep α, leave the search state alone
            final = current
        elif reason:
            mode = "search"
            self._cold_search(b, on, ref, clear=reason != "periodic")
            final = self._select(b, current, on, None)
        else:
            s.since_probe += 1
            if s.probe_interval is None:
                s.probe_interval = float(self.probe_every())
            mode = "probe" if s.since_probe >= s.probe_interval else "track"
            if mode == "probe":
                s.since_probe = 0
                self._probe(b, ref)
            if mode == "track" and len(b.full) == 1:
                final = current  # only the centre was evaluated: what _select returns, without its work
            else:
                final = self._select(b, current, "sub", float(o["switch_margin"]))
        logits, g_final = self._full(b, final)  # reused: the search already made this pass
        mixed = 0
        if torch.is_tensor(images) and (window is not None or o["mix_threshold"] is not None):
            first = _key(current) if _key(current) in b.full else next(iter(b.full))
            logits, mixed = self._after(b, logits, first)

        center = current
        if mode == "search":
            center = final
        elif mode == "probe" and _key(final) != _key(current):
            # the batch's winner predicts this batch; the centre moves only if the GP, which pools the
            # recent batches, agrees (one batch's noise must not drag the next batches along)
            self._observe(b, _key(final), g_final - g_cur, "full")
            means = self.bo.posterior_mean([current, final])
            center = final if means is None or means[1] < means[0] else current
        if mode != "skip":
            g_center = b.full[_key(center)][1]
            if o["track"] and _key(center) != _key(current):
                means = self.bo.posterior_mean([current, center])  # re-express the GP data vs the centre
                self.bo.shift(means[1] - means[0] if means is not None else g_center - g_cur)
            restart = mode == "search" and reason != "periodic"
            d_center = self._drift_value(g_center, center)
            self._update_drift(d_center, restart,
                               d_center - self._drift_value(g_cur, current) if math.isfinite(g_cur) else 0.0)
            s.since_search = 0 if mode == "search" else s.since_search + 1
        if mode == "search" or (mode == "probe" and _key(final) != _key(current)):
            s.probe_interval = float(self.probe_every())  # the landscape moved: look again soon
        elif mode == "probe":  # the probe lost: the search is stable, probe less often
            s.probe_interval = min(s.probe_interval * float(o["probe_backoff"]),
                                   max(float(o["probe_every_max"]), float(self.probe_every())))
        self.bo.next_batch()
        s.alpha, s.center, s.pending, s.batches = float(final), float(center), None, s.batches + 1
        jump = o["search_on_jump"]
        if mode == "probe" and jump is not None and abs(center - current) >= float(jump):
            s.pending = "jump"  # the landscape moved under a steady objective level: re-localise
        seconds = time.perf_counter() - t0
        s.info = {
            "alpha": s.alpha,
            "center": s.center,
            "objective": g_final,
            "alphas": [a for a, _, _ in b.log],
            "objectives": [v for _, v, _ in b.log],
            "fractions": [f for _, _, f in b.log],
            "forward_passes": ev.passes,
            "merges": ev.merges,
            "seconds": seconds,
            "seconds_forward": ev.seconds_forward,
            "seconds_merge": ev.seconds_merge,
            "seconds_bo": max(seconds - ev.seconds_forward - ev.seconds_merge, 0.0),
            "mode": mode,
            "reason": reason,
            "switched": _key(final) != _key(current),
            "nonfinite": b.nonfinite,
            "dropped_rows": b.dropped,
            "gp_fits": self.bo.n_fits,
            **({"window_rows": len(s.window)} if s.window is not None else {}),
            **({"mixed_rows": mixed} if o["mix_threshold"] is not None else {}),
            "fit_failures": self.bo.fit_failures,
        }
        return logits


def _variant(objective: str, **defaults: Any) -> Any:
    def factory(zeroshot: nn.Module, finetuned: nn.Module, **options: Any) -> AdaWiSE:
        if options.get("objective", objective) != objective:
            raise ValueError(f"adawise-{objective} fixes objective={objective!r}; use 'adawise' to choose")
        options = {**defaults, **options, "objective": objective}
        return AdaWiSE(zeroshot, finetuned, **options)

    factory.__name__ = factory.__qualname__ = f"adawise_{objective}"
    factory.__doc__ = f"AdaWiSE with the ``{objective}`` objective (same options as :class:`AdaWiSE`)."
    return factory


register("adawise-infomax")(_variant("infomax"))
register("adawise-anchored")(_variant("anchored"))
#: the registered configuration of ``adawise-windowed``: one for every stream type (objective lab and
#: real-engine runs in docs/adaptive_alpha.md)
#: (a probe every second batch: its window and mix passes cost about what the saved probes do; on the
#: embedded world 64.30 vs 64.36 shift mean, shuffled continual)
WINDOWED_DEFAULTS: dict[str, Any] = {"mix_threshold": 0.3, "mix_cap": 0.5, "probe_every": 2}
register("adawise-windowed")(_variant("windowed", **WINDOWED_DEFAULTS))
