"""Static baselines: the endpoints, WiSE-FT at a fixed α, and the output-space ensemble.

WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022. None of these adapt:
they carry no state from batch to batch, so ``reset()`` is a no-op.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from adawise.methods.base import Method
from adawise.methods.registry import register
from adawise.weights import interpolate

__all__ = ["ZeroShot", "FineTuned", "WiSEFT", "OutputEnsemble"]


class _Single(Method):
    """Plain inference with one wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Any) -> Tensor:
        return self.model(images)


@register("zeroshot")
class ZeroShot(_Single):
    """The zero-shot model alone (α = 0)."""

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module | None = None) -> None:
        super().__init__(zeroshot)

    @property
    def alpha(self) -> float:
        return 0.0


@register("finetuned")
class FineTuned(_Single):
    """The fine-tuned model alone (α = 1); the plain-inference reference of the benchmarks."""

    def __init__(self, finetuned: nn.Module, zeroshot: nn.Module | None = None) -> None:
        super().__init__(finetuned)

    @property
    def alpha(self) -> float:
        return 1.0


@register("wiseft")
class WiSEFT(_Single):
    """Weight-space ensemble at a fixed α: one merged copy, built once."""

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, alpha: float = 0.5) -> None:
        merged = copy.deepcopy(finetuned)
        merged.load_state_dict(interpolate(zeroshot.state_dict(), finetuned.state_dict(), alpha))
        merged.provenance = {  # read by the log header instead of the fine-tuned model's own
            "merge": f"WiSE-FT weights (1 - {float(alpha)}) * zeroshot + {float(alpha)} * finetuned",
            "zeroshot": getattr(zeroshot, "provenance", None),
            "finetuned": getattr(finetuned, "provenance", None),
        }
        super().__init__(merged)
        self._alpha = float(alpha)

    @property
    def alpha(self) -> float:
        return self._alpha

    def options(self) -> dict[str, Any]:
        return {"alpha": self._alpha}


def mix_probabilities(logits_zs: Tensor, logits_ft: Tensor, w: Tensor | float) -> Tensor:
    """log(w·softmax(z_ft) + (1 − w)·softmax(z_zs)); ``w`` a scalar or a per-sample [B] tensor."""
    w_t = torch.as_tensor(w, dtype=torch.float32, device=logits_ft.device)
    if w_t.ndim == 1:
        w_t = w_t[:, None]
    p = w_t * torch.softmax(logits_ft.float(), -1) + (1 - w_t) * torch.softmax(logits_zs.float(), -1)
    return p.clamp_min(1e-30).log()


@register("ose")
class OutputEnsemble(Method):
    """Output-space ensemble: p = w·softmax(z_ft) + (1 − w)·softmax(z_zs); returns log p."""

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, w: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(w) <= 1.0:
            raise ValueError(f"ose: w must be in [0, 1], got {w}")
        self.zeroshot, self.finetuned, self.w = zeroshot, finetuned, float(w)

    def forward(self, images: Any) -> Tensor:
        return mix_probabilities(self.zeroshot(images), self.finetuned(images), self.w)

    @property
    def info(self) -> dict[str, Any]:
        return {"forward_passes": 2.0}

    def options(self) -> dict[str, Any]:
        return {"w": self.w}
