"""Weight-space ensembling: the pure state-dict lerp and the in-place flat-buffer version.

Implements the merge of WiSE-FT (Wortsman et al., CVPR 2022): θ(α) = (1 − α)·θ_0 + α·θ_1 over
every floating tensor of the state dict; integer and bool buffers are taken from θ_0.

``interpolate`` is the pure reference. ``WeightSpace`` is what the engine uses on the hot path: it
keeps fp32 masters of both endpoints in flat contiguous buffers and rebinds the live model's floating
parameters and buffers as views into one flat buffer per dtype, so a merge is one ``torch.lerp`` per
dtype group with no allocation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

StateDict = Mapping[str, Tensor]

__all__ = ["interpolate", "check_compatible", "WeightSpace", "StateDictMismatchError"]


class StateDictMismatchError(ValueError):
    """Two state dicts (or a state dict and a model) do not describe the same architecture."""


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


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
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
    """The flat buffers of one dtype: live weights, both fp32 masters, optional fp32 scratch."""

    live: Tensor
    master0: Tensor
    master1: Tensor
    scratch: Tensor | None  # only when the live dtype is not the master dtype


class WeightSpace:
    """Write θ(α) into a live model in place, from flat fp32 masters of both endpoints.

    On construction the live model's floating parameters and floating (persistent) buffers become
    views into one contiguous buffer per dtype; they keep that storage for the object's lifetime.
    ``set_alpha(a)`` is then a single ``torch.lerp`` per dtype (into a preallocated fp32 scratch and a
    cast-copy when the live model is bf16/fp16). Integer/bool buffers are set from ``theta0`` once.

    Args:
        model: the live model (its own copy; the endpoints' modules are never touched).
        theta0: state dict of the α = 0 endpoint (e.g. zero-shot).
        theta1: state dict of the α = 1 endpoint (e.g. fine-tuned).
        master_dtype: precision of the masters and of the lerp (fp32 by default).
    """

    def __init__(
        self,
        model: nn.Module,
        theta0: StateDict,
        theta1: StateDict,
        master_dtype: torch.dtype = torch.float32,
    ) -> None:
        check_compatible(theta0, theta1, names=("theta0", "theta1"))
        live_sd = model.state_dict(keep_vars=True)
        check_compatible(live_sd, theta0, names=("live model", "theta0"))
        self.model = model
        self.master_dtype = master_dtype
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

        self._views: dict[int, Tensor] = {}  # id of the original tensor -> its view in the flat buffer
        self.groups: list[_Group] = []
        for dtype, entries in floating.items():
            self.groups.append(self._build_group(dtype, entries, theta0, theta1))
        for key, tensor in tied:  # a buffer shared by several modules must be rebound in each of them
            self._rebind(key, tensor, self._views[id(tensor)])
        self.num_elements = sum(g.live.numel() for g in self.groups)

    def _build_group(
        self, dtype: torch.dtype, entries: list[tuple[str, Tensor]], theta0: StateDict, theta1: StateDict
    ) -> _Group:
        device = entries[0][1].device
        total = sum(t.numel() for _, t in entries)
        master0 = torch.empty(total, dtype=self.master_dtype, device=device)
        master1 = torch.empty(total, dtype=self.master_dtype, device=device)
        live = torch.empty(total, dtype=dtype, device=device)
        offset = 0
        with torch.no_grad():
            for key, tensor in entries:
                n = tensor.numel()
                master0[offset : offset + n].copy_(theta0[key].reshape(-1))
                master1[offset : offset + n].copy_(theta1[key].reshape(-1))
                view = live[offset : offset + n].view(tensor.shape)
                view.copy_(tensor)
                self._views[id(tensor)] = view
                self._rebind(key, tensor, view)
                offset += n
        scratch = None if dtype == self.master_dtype else torch.empty_like(master0)
        return _Group(live=live, master0=master0, master1=master1, scratch=scratch)

    def _rebind(self, key: str, tensor: Tensor, view: Tensor) -> None:
        """Point the model's parameter or buffer called ``key`` at ``view``."""
        if isinstance(tensor, nn.Parameter):
            tensor.data = view
            return
        module_name, _, attr = key.rpartition(".")
        module = self.model.get_submodule(module_name) if module_name else self.model
        module._buffers[attr] = view

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        """Write θ(α) = (1 − α)·θ0 + α·θ1 into the live model, in place (no allocation)."""
        alpha = _check_alpha(alpha)
        for group in self.groups:
            if group.scratch is None:
                torch.lerp(group.master0, group.master1, alpha, out=group.live)
            else:
                torch.lerp(group.master0, group.master1, alpha, out=group.scratch)
                group.live.copy_(group.scratch)
        self.alpha = alpha

    @property
    def master_bytes(self) -> int:
        """Bytes held by the two masters (and scratch), i.e. the memory cost beyond the live model."""
        return sum(
            g.master0.nbytes + g.master1.nbytes + (g.scratch.nbytes if g.scratch is not None else 0)
            for g in self.groups
        )
