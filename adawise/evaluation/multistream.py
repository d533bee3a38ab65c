"""Many independent streams, one worker: AdaWiSE with per-stream search state over shared weights.

A deployment that adapts N camera feeds (or tenants, or sites) needs one α history per stream, but
not N model copies. :class:`MultiStreamAdaWiSE` holds one :class:`~adawise.methods.adawise.AdaWiSE`
engine (one live model and one :class:`~adawise.core.weights.WeightSpace` with the flat fp32 masters of
both endpoints, built once) and, per stream id, only the *search state* that carries over from batch
to batch: the current and centre α, the drift statistics and counters (AdaWiSE's ``_State``), the
BO history and GP hyperparameters (``BayesOpt1D``'s ``_BOState``) and the optimizer's RNG state.
A call swaps that stream's state into the engine, runs AdaWiSE's own per-batch step (the same code
path as a single-stream engine, not a copy of it), and keeps the state the step left behind. Memory
therefore grows with the number of streams by a few kilobytes each (:meth:`state_bytes`), not by a
model (:meth:`engine_bytes`).

Exactness: θ(α) is recomputed from the masters whenever α changes, so what another stream did to the
live weights in between cannot leak; stream k's αs and logits equal those of a separate AdaWiSE run
on stream k alone (tests check this bit for bit).

Usage::

    server = MultiStreamAdaWiSE(zs, ft)          # same options as AdaWiSE (preset, objective, ...)
    logits = server("camera-3", images)          # predict with camera-3's α search, then keep its state
    server.alpha("camera-3"), server.info("camera-3")
    server.reset("camera-3")                     # that stream only; reset() forgets every stream
    run_stream(server.stream("camera-3"), stream) # a Method view of one stream, for the online loop

Calls are serialised by a lock (one engine, one live model); run one adapter per device to scale.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Hashable
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adawise.methods.adawise import AdaWiSE, SearchState
from adawise.methods.base import Method

__all__ = ["MultiStreamAdaWiSE", "StreamState", "StreamView", "deep_nbytes"]


#: what one stream owns: AdaWiSE's search state, the BO state and the BO generator's RNG state
StreamState = SearchState


class MultiStreamAdaWiSE(nn.Module):
    """AdaWiSE for N independent streams with one copy of the weights.

    Args:
        zeroshot, finetuned: the endpoints (same architecture); only read, as by :class:`AdaWiSE`.
        **adawise_options: any :class:`~adawise.methods.adawise.AdaWiSE` option (``preset``,
            ``objective``, ``seed``, ``device``, ``amp_dtype``, overrides); every stream starts from the
            same initial state those options define.
    """

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, **adawise_options: Any) -> None:
        super().__init__()
        self.engine = AdaWiSE(zeroshot, finetuned, **adawise_options)
        self._states: dict[Hashable, StreamState] = {}
        self._lock = threading.Lock()
        self._active: Hashable | None = None  # the stream whose state is in the engine right now

    # ------------------------------------------------------------------ state plumbing
    def _swap_in(self, stream_id: Hashable) -> StreamState:
        state = self._states.get(stream_id)
        if state is None:
            state = self._states[stream_id] = self.engine.initial_search_state()
        self.engine.load_search_state(state)
        self._active = stream_id
        return state

    def _swap_out(self, state: StreamState) -> None:
        now = self.engine.search_state()  # the step may have replaced the objects (e.g. a reset)
        state.search, state.bo, state.rng = now.search, now.bo, now.rng

    # ------------------------------------------------------------------ the API
    @torch.no_grad()
    def forward(self, stream_id: Hashable, images: Any) -> Tensor:
        """Logits of ``images`` from ``stream_id``'s α search; that stream's state then carries over.

        A new ``stream_id`` starts from the initial state (``init_alpha``, empty BO history).
        """
        with self._lock:
            state = self._swap_in(stream_id)
            try:
                return self.engine(images)
            finally:
                self._swap_out(state)

    def on_domain(self, stream_id: Hashable, domain: str) -> None:
        """Forward a domain-boundary signal of one stream (used only with ``search_on_domain``)."""
        with self._lock:
            state = self._swap_in(stream_id)
            try:
                self.engine.on_domain(domain)
            finally:
                self._swap_out(state)

    def alpha(self, stream_id: Hashable) -> float:
        """The α whose logits the stream's last call returned (``init_alpha`` for a new stream)."""
        state = self._states.get(stream_id)
        return float(state.search.alpha) if state is not None else float(self.engine.opts.init_alpha)

    def info(self, stream_id: Hashable) -> dict[str, Any]:
        """The stream's last per-batch record (see :class:`AdaWiSE`)."""
        state = self._states.get(stream_id)
        return dict(state.search.info) if state is not None else {"forward_passes": 0.0}

    def reset(self, stream_id: Hashable | None = None) -> None:
        """Restore one stream's exact initial state; with no id, forget every stream."""
        with self._lock:
            if stream_id is None:
                self._states.clear()
            else:
                self._states.pop(stream_id, None)

    def drop(self, stream_id: Hashable) -> None:
        """Forget a stream that ended (frees its state)."""
        self.reset(stream_id)

    def streams(self) -> list[Hashable]:
        """Ids of the streams with state, in order of first appearance."""
        return list(self._states)

    @property
    def num_streams(self) -> int:
        """Number of streams with state (no ``__len__``: an empty adapter must stay truthy)."""
        return len(self._states)

    def state(self, stream_id: Hashable) -> StreamState:
        """A deep copy of the stream's state (e.g. to checkpoint it; :meth:`load_state` restores it)."""
        return copy.deepcopy(self._states[stream_id])

    def load_state(self, stream_id: Hashable, state: StreamState) -> None:
        """Install a state obtained from :meth:`state` (of an adapter with the same options)."""
        with self._lock:
            self._states[stream_id] = copy.deepcopy(state)

    def state_bytes(self, stream_id: Hashable | None = None) -> int:
        """Bytes held by one stream's state (all streams' with no id), counted recursively."""
        if stream_id is not None:
            return deep_nbytes(self._states[stream_id])
        return sum(deep_nbytes(s) for s in self._states.values())

    def engine_bytes(self) -> int:
        """Bytes the engine holds, once for all streams: the live model's tensors plus what the
        WeightSpace holds beyond them (masters it copied; masters shared with the endpoint modules
        are their storage and count in neither)."""
        ev = self.engine.evaluator
        live = sum(t.nbytes for t in ev.model.state_dict().values())
        return live + ev.space.master_bytes

    def stream(self, stream_id: Hashable) -> StreamView:
        """A :class:`~adawise.methods.base.Method` for one stream (for :func:`adawise.run_stream`)."""
        return StreamView(self, stream_id)

    def options(self) -> dict[str, Any]:
        """The engine's options (what every stream runs with)."""
        return self.engine.options()


class StreamView(Method):
    """One stream of a :class:`MultiStreamAdaWiSE` as a Method; ``reset`` resets this stream only."""

    adapts = True

    def __init__(self, adapter: MultiStreamAdaWiSE, stream_id: Hashable) -> None:
        super().__init__()
        self.adapter = adapter
        self.stream_id = stream_id
        self.name = f"{adapter.engine.name}[{stream_id}]"

    def forward(self, images: Any) -> Tensor:
        return self.adapter(self.stream_id, images)

    def on_domain(self, domain: str) -> None:
        self.adapter.on_domain(self.stream_id, domain)

    def reset(self) -> None:
        self.adapter.reset(self.stream_id)

    @property
    def alpha(self) -> float:
        return self.adapter.alpha(self.stream_id)

    @property
    def info(self) -> dict[str, Any]:
        return self.adapter.info(self.stream_id)

    def options(self) -> dict[str, Any]:
        return {**self.adapter.options(), "stream_id": str(self.stream_id)}


def deep_nbytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Recursive in-memory size of ``obj``: ``sys.getsizeof`` of containers and scalars plus tensor
    storage bytes; dataclasses and objects are followed through their fields, shared objects count once."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        return sys.getsizeof(obj) + obj.nbytes
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        return size + sum(deep_nbytes(k, seen) + deep_nbytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(deep_nbytes(v, seen) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return size + sum(deep_nbytes(getattr(obj, f.name), seen) for f in fields(obj))
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return size + deep_nbytes(vars(obj), seen)
    return size
