"""The α engine: one private live copy of a model whose weights are θ(α) = (1 − α)·θ_zs + α·θ_ft,
rewritten in place for every α (:class:`~adawise.core.weights.WeightSpace`, no allocation), with timed,
optionally CUDA-graph-replayed forward passes. AdaWiSE, the grid ablations, the demo's shared α sweep
and the benchmarks all evaluate θ(α) through it (:class:`~adawise.methods.weight_space.WeightSpaceMethod`
wraps it as a method base).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adawise.core.weights import WeightSpace, check_dtypes
from adawise.errors import ModelMismatchError

__all__ = ["AlphaEvaluator", "evaluating"]


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Run ``models`` in eval mode inside the block, then give every submodule back its own mode.

    Only the ``training`` flags of submodules that were training are switched (and switched back), so a
    model a user left in train mode is in train mode again afterwards, and batch norm inside the block
    uses its running statistics without updating them (its buffers are unchanged)."""
    switched = [m for model in models for m in model.modules() if m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True


class AlphaEvaluator:
    """One private copy of the model whose weights are θ(α), written in place; timed forward passes.

    The copy is made once (from the fine-tuned module, put in eval mode, gradients off); a
    :class:`~adawise.core.weights.WeightSpace` holds flat fp32 masters of both endpoints and lerps into
    it, so changing α allocates nothing. The given modules' values are only read.

    CUDA graphs: on a CUDA device the forward pass of each input shape (the full batch, the probe
    sub-batch, a short last batch; at most ``max_graphs``, least recently used dropped) is captured
    once into a CUDA graph and replayed: the eager call of a CLIP tower is bound by kernel launches
    (timings in ``benchmarks/RESULTS.md``). A graph reads the live model's
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

    def _forward(self, images: Any, cache: bool = True, model: nn.Module | None = None) -> Tensor:
        model = self.model if model is None else model
        if self.amp_dtype is None:
            return model(images)
        # no autocast weight cache inside a graph capture (the cast must be part of the graph)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache):
            return model(images)

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

    def _endpoint(self, alpha: float) -> nn.Module | None:
        """The endpoint module that *is* θ(α), for α = 0 or 1, where running it computes what the live model
        would after a merge, bit for bit: its weights are the masters themselves (``share_masters``), in the
        live model's dtype and on its device, it is the live model's class, and passes are not replayed
        from CUDA graphs. ``None`` otherwise (the live model is merged to α)."""
        if alpha not in (0.0, 1.0) or self.cuda_graphs or not self.space.shared[int(alpha)]:
            return None
        module = self._endpoints[int(alpha)]
        first = next(iter(module.parameters()), None)
        if type(module) is not type(self.model) or first is None or first.dtype != self.dtype:
            return None
        return module if first.device == self.device else None

    @torch.no_grad()
    def logits(self, alpha: float, images: Any, fraction: float = 1.0) -> Tensor:
        """Forward ``images`` through θ(α); counts ``fraction`` of a pass (sub-batches count less). At α = 0
        or 1 the endpoint module itself runs where it computes the same (:meth:`_endpoint`): no merge, and
        the live model keeps its α."""
        if not self._forward_checked:
            self.check_forward(images)
        endpoint = self._endpoint(alpha) if self.space.alpha != alpha else None
        if endpoint is not None:
            t = time.perf_counter()
            with evaluating(endpoint):
                out = self._forward(images, model=endpoint)
            self._sync()
            self.seconds_forward += time.perf_counter() - t
            self.passes += fraction
            return out
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
