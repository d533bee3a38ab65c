"""Base of the methods that run θ(α) through one :class:`~adawise.core.alpha_engine.AlphaEvaluator`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adawise.core.alpha_engine import AlphaEvaluator
from adawise.methods.base import Method

__all__ = ["WeightSpaceMethod"]


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
