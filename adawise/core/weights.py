"""Weight-space ensembling: the pure state-dict lerp and the in-place flat-buffer version.

Implements the merge of WiSE-FT (Wortsman et al., CVPR 2022): θ(α) = (1 − α)·θ_0 + α·θ_1 over
every floating tensor of the state dict; integer and bool buffers are taken from θ_0.

``interpolate`` is the pure reference. ``WeightSpace`` is what the engine uses on the hot path: it
keeps fp32 masters of both endpoints in flat contiguous buffers and rebinds the live model's floating
parameters and buffers as views into one flat buffer per dtype, so a merge is one ``torch.lerp`` per
dtype group with no allocation (a bf16/fp16 live model is written by the same lerp, which casts on
store, or through a small fp32 staging chunk where a device cannot). With ``share=`` the masters are
the endpoint models' own storage instead of copies (see :class:`WeightSpace`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adawise.errors import StateDictMismatchError, UsageError

StateDict = Mapping[str, Tensor]

__all__ = ["interpolate", "check_compatible", "check_dtypes", "WeightSpace", "StateDictMismatchError"]


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_compatible(sd0: StateDict, sd1: StateDict, names: tuple[str, str] = ("sd0", "sd1")) -> None:
    """Raise :class:`StateDictMismatchError` unless both state dicts have the same keys and shapes.

    The message lists the keys missing from either side and the keys whose shapes differ, so a
    checkpoint for another architecture is recognisable at a glance.
    """
    only0 = sorted(set(sd0) - set(sd1))
    only1 = sorted(set(sd1) - set(sd0))
    shapes = sorted(
        f"{k} {tuple(sd0[k].shape)} vs {tuple(sd1[k].shape)}"
        for k in set(sd0) & set(sd1)
        if tuple(sd0[k].shape) != tuple(sd1[k].shape)
    )
    if not (only0 or only1 or shapes):
        return
    parts = []
    if only0:
        parts.append(f"keys only in {names[0]} ({len(only0)}): {_describe(only0)}")
    if only1:
        parts.append(f"keys only in {names[1]} ({len(only1)}): {_describe(only1)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_describe(shapes)}")
    raise StateDictMismatchError(
        f"{names[0]} and {names[1]} are not the same architecture; " + "; ".join(parts)
        + ". Both endpoints must come from the same model definition (same arch name and head size)."
    )


def check_dtypes(sd0: StateDict, sd1: StateDict, names: tuple[str, str] = ("sd0", "sd1")) -> None:
    """Raise :class:`StateDictMismatchError` where the two state dicts store a key in different dtypes
    (e.g. a float32 and a bfloat16 endpoint): their interpolation would silently round one of them."""
    differ = [f"{k} {sd0[k].dtype} vs {sd1[k].dtype}" for k in sd0 if k in sd1 and sd0[k].dtype != sd1[k].dtype]
    if differ:
        raise StateDictMismatchError(
            f"{names[0]} and {names[1]} store weights in different dtypes ({len(differ)} keys: "
            f"{_describe(differ, 4)}); "
            "convert both endpoints to one dtype first (e.g. model.to(torch.float32) or .to(torch.bfloat16))")


def _check_alpha(alpha: float) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not math.isfinite(alpha):
        raise UsageError(f"alpha must be a finite number, got {alpha}")
    return alpha


def interpolate(sd0: StateDict, sd1: StateDict, alpha: float) -> dict[str, Tensor]:
    """Return θ(α) = (1 − α)·sd0 + α·sd1 as a new state dict (inputs are not modified).

    Every floating tensor is lerped in fp32 (fp64 tensors in fp64) and cast back to sd0's dtype;
    α = 0 returns sd0's values and α = 1 sd1's values exactly. Integer and bool tensors (e.g.
    ``num_batches_tracked``, masks) are copied from sd0. Keys and shapes must match exactly
    (:func:`check_compatible`).
    """
    alpha = _check_alpha(alpha)
    check_compatible(sd0, sd1)
    out: dict[str, Tensor] = {}
    for key, t0 in sd0.items():
        t1 = sd1[key]
        if t0.is_floating_point():
            # at least fp32 (fp64 stays fp64, so alpha = 0 / 1 stay exact for every float dtype)
            work = torch.promote_types(t0.dtype, torch.float32)
            mixed = torch.lerp(t0.detach().to(work), t1.detach().to(t0.device, work), alpha)
            out[key] = mixed.to(t0.dtype)
        else:
            out[key] = t0.detach().clone()
    return out


@dataclass
class _Group:
    """The flat buffers of one dtype: live weights, both fp32 masters, optional fp32 staging chunk."""

    live: Tensor
    master0: Tensor
    master1: Tensor
    # None when the live dtype is the master dtype; otherwise the staging chunk of the chunked lerp
    # (at most ``chunk`` elements), empty when the lerp casts on store (one fused kernel, no staging)
    scratch: Tensor | None
    shared: tuple[bool, bool] = (False, False)  # whether master0 / master1 are an endpoint's storage


def _casts_on_store(master: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``torch.lerp(fp32, fp32, w, out=<dtype>)`` works on this device and rounds exactly as a
    cast of the fp32 result (then a bf16/fp16 live model needs no staging buffer at all)."""
    a = torch.tensor([0.1, -3.7, 1e-3, 12345.678], dtype=master.dtype, device=master.device)
    b = torch.tensor([2.9, 0.3, -7e-4, -0.001], dtype=master.dtype, device=master.device)
    out = torch.empty(4, dtype=dtype, device=master.device)
    try:
        torch.lerp(a, b, 0.37, out=out)
    except (RuntimeError, TypeError):
        return False
    return bool(torch.equal(out, torch.lerp(a, b, 0.37).to(dtype)))


@torch.no_grad()
def _pack(master: Tensor, entries: list[tuple[str, Tensor]], values: Mapping[str, Tensor]
          ) -> list[tuple[str, Tensor]]:
    """Copy ``values[key]`` of every entry, in order, into consecutive slices of the flat ``master``;
    returns each key with its slice, shaped like the entry."""
    views, offset = [], 0
    for key, tensor in entries:
        n = tensor.numel()
        view = master[offset : offset + n].view(tensor.shape)
        view.copy_(values[key])
        views.append((key, view))
        offset += n
    return views


def _flat_base(tensors: list[Tensor], total: int, dtype: torch.dtype) -> Tensor | None:
    """The flat buffer behind ``tensors`` if they already lie in it back to back, in order, from
    offset 0 and fill it exactly (e.g. the endpoints of an earlier sharing WeightSpace); else None."""
    if not tensors:
        return None
    storage = tensors[0].untyped_storage()
    offset = 0
    for t in tensors:
        if (t.dtype != dtype or not t.is_contiguous() or t.untyped_storage().data_ptr() != storage.data_ptr()
                or t.storage_offset() != offset):
            return None
        offset += t.numel()
    if offset != total or storage.nbytes() != total * tensors[0].element_size():
        return None
    return torch.empty(0, dtype=dtype, device=tensors[0].device).set_(storage, 0, (total,), (1,))


class WeightSpace:
    """Write θ(α) into a live model in place, from flat fp32 masters of both endpoints.

    On construction the live model's floating parameters and floating (persistent) buffers become
    views into one contiguous buffer per dtype; they keep that storage for the object's lifetime.
    ``set_alpha(a)`` is then a single ``torch.lerp`` per dtype. A bf16/fp16 live model is written on
    a GPU by the same lerp, which computes in fp32 and rounds on store (exactly the cast of the fp32
    result: one kernel, no scratch); on a CPU (where that mixed-dtype kernel is about 4x slower) or
    a device that cannot, the lerp goes through an fp32 staging chunk of at most ``chunk`` elements,
    never a full-size fp32 copy. Either way the result equals :func:`interpolate` cast to the live
    dtype. Integer/bool buffers are set from ``theta0`` once.

    Shared masters (``share=(module0, module1)``, the modules whose ``state_dict()`` ``theta0`` and
    ``theta1`` are): where an endpoint's tensors are already ``master_dtype``, contiguous and on the
    live model's device, its master *is* its storage instead of a copy: the endpoint module's
    parameters and buffers are rebound as views into the flat master (the same ``Parameter``
    objects, the same values, so the module computes exactly what it did; ``requires_grad`` and
    ``training`` are untouched). An endpoint whose tensors already lie back to back in one flat
    buffer (an earlier sharing ``WeightSpace``) is used as it is: no copy, no rebinding, so several
    engines over the same pair hold one copy of it. This saves two model copies of memory. The
    price: the masters follow the endpoint models, so changing an endpoint in place (training it,
    ``load_state_dict``) changes what ``set_alpha`` writes from then on; and an endpoint's tensors
    then share one storage, which ``safetensors.torch.save_file(model.state_dict())`` refuses (save
    with :func:`adawise.models.checkpoints.save_state_dict`, which clones). An endpoint that does
    not qualify (another dtype or device, non-contiguous, ties the live model lacks) gets a private
    copy.

    Args:
        model: the live model (its own copy; the endpoints' modules are never given to it).
        theta0: state dict of the α = 0 endpoint (e.g. zero-shot).
        theta1: state dict of the α = 1 endpoint (e.g. fine-tuned).
        master_dtype: precision of the masters and of the lerp (fp32 by default).
        share: the endpoint modules behind ``theta0`` and ``theta1`` (either may be ``None``), whose
            storage the masters may take over (see above); ``None``: private copies.
        chunk: elements per step of the staged lerp of a bf16/fp16 live model.
        staged: force (True) or forbid (False) the staged lerp of a bf16/fp16 live model; ``None``:
            one kernel that rounds on store on a GPU where it is exact, staged chunks elsewhere.
    """

    def __init__(
        self,
        model: nn.Module,
        theta0: StateDict,
        theta1: StateDict,
        master_dtype: torch.dtype = torch.float32,
        share: tuple[nn.Module | None, nn.Module | None] | None = None,
        chunk: int = 1 << 22,
        staged: bool | None = None,
    ) -> None:
        check_compatible(theta0, theta1, names=("theta0", "theta1"))
        live_sd = model.state_dict(keep_vars=True)
        check_compatible(live_sd, theta0, names=("live model", "theta0"))
        if int(chunk) < 1:
            raise UsageError(f"chunk must be >= 1, got {chunk}")
        self.model = model
        self.master_dtype = master_dtype
        self.chunk = int(chunk)
        self.staged = staged
        self.alpha: float | None = None

        floating: dict[torch.dtype, list[tuple[str, Tensor]]] = {}
        seen: set[int] = set()
        tied: list[tuple[str, Tensor]] = []
        for key, tensor in live_sd.items():
            if not tensor.is_floating_point():
                with torch.no_grad():
                    tensor.copy_(theta0[key])
                continue
            if id(tensor) in seen:  # tied weights: one slot serves every name
                tied.append((key, tensor))
                continue
            seen.add(id(tensor))
            floating.setdefault(tensor.dtype, []).append((key, tensor))

        # which endpoint modules may lend their storage (decided before any rebinding)
        share = share or (None, None)
        devices = {entries[0][1].device for entries in floating.values()}
        self._lenders = tuple(
            _Lender.of(module, theta, [e for entries in floating.values() for e in entries], tied,
                       master_dtype, devices)
            for module, theta in zip(share, (theta0, theta1), strict=True)
        )

        self._views: dict[int, Tensor] = {}  # id of the original tensor -> its view in the flat buffer
        self.groups: list[_Group] = []
        for dtype, entries in floating.items():
            self.groups.append(self._build_group(dtype, entries, theta0, theta1))
        for key, tensor in tied:  # a buffer shared by several modules must be rebound in each of them
            self._rebind(self.model, key, tensor, self._views[id(tensor)])
        self.num_elements = sum(g.live.numel() for g in self.groups)

    def _master(self, which: int, entries: list[tuple[str, Tensor]], theta: StateDict, device: torch.device,
                total: int) -> tuple[Tensor, bool]:
        """Endpoint ``which``'s flat master of these entries: its own storage where it may lend it."""
        lender = self._lenders[which]
        if lender is not None:
            tensors = [lender.tensors[key] for key, _ in entries]
            base = _flat_base(tensors, total, self.master_dtype)
            if base is not None:
                return base, True
            master = torch.empty(total, dtype=self.master_dtype, device=device)
            for key, view in _pack(master, entries, lender.tensors):
                lender.rebind(key, view)  # the endpoint now reads its values from the master
            return master, True
        master = torch.empty(total, dtype=self.master_dtype, device=device)
        _pack(master, entries, theta)
        return master, False

    def _build_group(
        self, dtype: torch.dtype, entries: list[tuple[str, Tensor]], theta0: StateDict, theta1: StateDict
    ) -> _Group:
        device = entries[0][1].device
        total = sum(t.numel() for _, t in entries)
        master0, shared0 = self._master(0, entries, theta0, device, total)
        master1, shared1 = self._master(1, entries, theta1, device, total)
        live = torch.empty(total, dtype=dtype, device=device)
        offset = 0
        with torch.no_grad():
            for key, tensor in entries:
                n = tensor.numel()
                view = live[offset : offset + n].view(tensor.shape)
                view.copy_(tensor)
                self._views[id(tensor)] = view
                self._rebind(self.model, key, tensor, view)
                offset += n
        scratch = None
        if dtype != self.master_dtype:
            fused = (device.type != "cpu") if self.staged is None else not self.staged
            if fused and not _casts_on_store(master0, dtype):
                if self.staged is False:
                    raise RuntimeError(f"staged=False, but torch.lerp cannot round fp32 to {dtype} on store on "
                                       f"{device} exactly; use staged=None")
                fused = False
            size = 0 if fused else min(total, self.chunk)
            scratch = torch.empty(size, dtype=self.master_dtype, device=device)
        return _Group(live=live, master0=master0, master1=master1, scratch=scratch, shared=(shared0, shared1))

    @staticmethod
    def _rebind(model: nn.Module, key: str, tensor: Tensor, view: Tensor) -> None:
        """Point ``model``'s parameter or buffer called ``key`` at ``view``."""
        if isinstance(tensor, nn.Parameter):
            tensor.data = view
            return
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        module._buffers[attr] = view

    @property
    def shared(self) -> tuple[bool, bool]:
        """Whether the masters of endpoint 0 / 1 are that endpoint module's own storage (all groups)."""
        return (all(g.shared[0] for g in self.groups) and bool(self.groups),
                all(g.shared[1] for g in self.groups) and bool(self.groups))

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        """Write θ(α) = (1 − α)·θ0 + α·θ1 into the live model, in place (no allocation)."""
        alpha = _check_alpha(alpha)
        for group in self.groups:
            scratch = group.scratch
            if scratch is None or scratch.numel() == 0:  # same dtype, or the lerp rounds on store
                torch.lerp(group.master0, group.master1, alpha, out=group.live)
                continue
            step = scratch.numel()
            for start in range(0, group.live.numel(), step):
                stop = min(start + step, group.live.numel())
                staged = scratch[: stop - start]
                torch.lerp(group.master0[start:stop], group.master1[start:stop], alpha, out=staged)
                group.live[start:stop].copy_(staged)
        self.alpha = alpha

    @property
    def master_bytes(self) -> int:
        """Bytes this object holds beyond the live model: masters it copied (not those it shares
        with an endpoint module) and the staging chunk."""
        return sum(
            (0 if g.shared[0] else g.master0.nbytes) + (0 if g.shared[1] else g.master1.nbytes)
            + (g.scratch.nbytes if g.scratch is not None else 0)
            for g in self.groups
        )


@dataclass
class _Lender:
    """An endpoint module whose tensors may become the masters: name -> tensor, and how to rebind."""

    module: nn.Module
    tensors: dict[str, Tensor]  # every state-dict name of the live model's floating entries
    names: dict[int, list[str]]  # id of a tensor -> every state-dict name that refers to it

    @classmethod
    def of(cls, module: nn.Module | None, theta: StateDict, entries: list[tuple[str, Tensor]],
           tied: list[tuple[str, Tensor]], dtype: torch.dtype, devices: set[torch.device]) -> _Lender | None:
        """A lender when ``theta`` is ``module``'s own state and every tensor qualifies, else None."""
        if module is None or len(devices) != 1:
            return None
        device = next(iter(devices))
        own = module.state_dict(keep_vars=True)
        names: dict[int, list[str]] = {}
        for key, t in own.items():
            names.setdefault(id(t), []).append(key)
        tensors: dict[str, Tensor] = {}
        used: set[int] = set()
        for key, _ in entries:
            t = own.get(key)
            given = theta.get(key)
            if (t is None or given is None or t.dtype != dtype or t.device != device or not t.is_contiguous()
                    or given.data_ptr() != t.data_ptr() or given.shape != t.shape or id(t) in used):
                return None  # not this module's state, another dtype/device, or ties the live model lacks
            used.add(id(t))
            tensors[key] = t
        live_ids = {id(t): key for key, t in entries}
        for key, t in tied:  # the live model's ties must be the endpoint's ties too
            if own.get(key) is not tensors[live_ids[id(t)]]:
                return None
        return cls(module, tensors, names)

    def rebind(self, key: str, view: Tensor) -> None:
        """Point every name of the tensor called ``key`` at ``view`` (values already copied)."""
        tensor = self.tensors[key]
        for name in self.names[id(tensor)]:
            WeightSpace._rebind(self.module, name, tensor, view)
