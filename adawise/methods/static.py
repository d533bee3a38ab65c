"""Static baselines: the endpoints, WiSE-FT at a fixed α, and the output-space ensemble.

WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022. None of these adapt:
they carry no state from batch to batch, so ``reset()`` is a no-op.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from adawise.core.weights import check_compatible, check_dtypes, interpolate
from adawise.errors import ModelMismatchError, UsageError
from adawise.methods.base import EndpointPair, Method, evaluating
from adawise.methods.registry import register

__all__ = ["ZeroShot", "FineTuned", "WiSEFT", "OutputEnsemble", "mix_probabilities", "check_same_classes",
           "check_alpha", "merged_copy"]


class _Single(Method):
    """Plain inference with one model: a given one (kept outside the module tree, run under
    :func:`evaluating`), or a private one (``own=True``: a submodule, e.g. WiSE-FT's merged copy)."""

    def __init__(self, model: nn.Module, own: bool = False) -> None:
        super().__init__()
        if own:
            self.merged = model
        self.__dict__["_model"] = model

    @property
    def model(self) -> nn.Module:
        """The model this method runs."""
        return self.__dict__["_model"]

    def forward(self, images: Any) -> Tensor:
        with evaluating(self.model):
            return self.model(images)


@register("zeroshot", default_run=True)
class ZeroShot(_Single):
    """The zero-shot model alone (α = 0)."""

    static_alpha = 0.0
    family = "static"

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module | None = None) -> None:
        super().__init__(zeroshot)
        self._keep(zeroshot=zeroshot)

    @property
    def alpha(self) -> float:
        return 0.0


@register("finetuned", default_run=True)
class FineTuned(_Single):
    """The fine-tuned model alone (α = 1); the plain-inference reference of the benchmarks."""

    static_alpha = 1.0
    family = "static"

    def __init__(self, finetuned: nn.Module, zeroshot: nn.Module | None = None) -> None:
        super().__init__(finetuned)
        self._keep(finetuned=finetuned)

    @property
    def alpha(self) -> float:
        return 1.0


def check_alpha(alpha: Any, method: str) -> float:
    """``alpha`` as a float in [0, 1], or a :class:`UsageError` naming ``method``."""
    try:
        ok = 0.0 <= float(alpha) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{method}: alpha must be a number in [0, 1] (0: the zero-shot model, 1: the fine-tuned "
                         f"one), got {alpha!r}")
    return float(alpha)


def merged_copy(zeroshot: nn.Module, finetuned: nn.Module, alpha: Any, method: str) -> nn.Module:
    """A private copy of the model with the WiSE-FT weights θ(α) = (1 − α)·θ_zs + α·θ_ft, in eval mode.

    Built once from ``finetuned``'s module (the given models are only read); ``alpha`` is checked first
    (:func:`check_alpha`), then the two state dicts' keys, shapes and dtypes. ``provenance`` names the merge
    (the log header reads it instead of the fine-tuned model's own)."""
    alpha = check_alpha(alpha, method)
    sd0, sd1 = zeroshot.state_dict(), finetuned.state_dict()
    check_compatible(sd0, sd1, names=("the zero-shot model", "the fine-tuned model"))
    check_dtypes(sd0, sd1, names=("the zero-shot model", "the fine-tuned model"))
    merged = copy.deepcopy(finetuned)
    merged.load_state_dict(interpolate(sd0, sd1, alpha))
    merged.provenance = {
        "merge": f"WiSE-FT weights (1 - {alpha}) * zeroshot + {alpha} * finetuned",
        "zeroshot": getattr(zeroshot, "provenance", None),
        "finetuned": getattr(finetuned, "provenance", None),
    }
    return merged.eval()


@register("wiseft", default_run=True)
class WiSEFT(_Single):
    """Weight-space ensemble at a fixed α: one merged copy, built once."""

    static_alpha = 0.5  # its default α
    family = "static"

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, alpha: float = static_alpha) -> None:
        merged = merged_copy(zeroshot, finetuned, alpha, "wiseft")
        super().__init__(merged, own=True)
        self._keep(zeroshot=zeroshot, finetuned=finetuned)
        self._alpha = float(alpha)

    @property
    def alpha(self) -> float:
        return self._alpha

    def options(self) -> dict[str, Any]:
        return {"alpha": self._alpha}


def check_same_classes(zeroshot: nn.Module, finetuned: nn.Module, method: str) -> None:
    """Refuse endpoints whose declared class counts (``num_classes``) differ, before any batch."""
    counts = (getattr(zeroshot, "num_classes", None), getattr(finetuned, "num_classes", None))
    if None not in counts and counts[0] != counts[1]:
        raise ModelMismatchError(f"{method}: the zero-shot model predicts {counts[0]} classes but the fine-tuned model "
                                 f"{counts[1]}; both endpoints must share one label space")


def mix_probabilities(logits_zs: Tensor, logits_ft: Tensor, w: Tensor | float) -> Tensor:
    """log(w·softmax(z_ft) + (1 − w)·softmax(z_zs)); ``w`` a scalar or a per-sample [B] tensor."""
    if logits_zs.shape != logits_ft.shape:
        raise ModelMismatchError(f"the zero-shot model returned logits of shape {tuple(logits_zs.shape)} but the "
                                 f"fine-tuned model {tuple(logits_ft.shape)}; both endpoints must predict the same "
                                 "classes for the same batch")
    w_t = torch.as_tensor(w, dtype=torch.float32, device=logits_ft.device)
    if w_t.ndim == 1:
        w_t = w_t[:, None]
    p = w_t * torch.softmax(logits_ft.float(), -1) + (1 - w_t) * torch.softmax(logits_zs.float(), -1)
    return p.clamp_min(1e-30).log()


@register("ose", default_run=True)
class OutputEnsemble(EndpointPair, Method):
    """Output-space ensemble: p = w·softmax(z_ft) + (1 − w)·softmax(z_zs); returns log p."""

    output_ensemble = True
    family = "ensemble"

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, w: float = 0.5) -> None:
        super().__init__()
        try:
            ok = 0.0 <= float(w) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"ose: w must be in [0, 1] (the fine-tuned model's weight), got {w!r}")
        check_same_classes(zeroshot, finetuned, "ose")
        self._keep(zeroshot=zeroshot, finetuned=finetuned)
        self.w = float(w)

    def forward(self, images: Any) -> Tensor:
        with evaluating(self.zeroshot, self.finetuned):
            return mix_probabilities(self.zeroshot(images), self.finetuned(images), self.w)

    @property
    def info(self) -> dict[str, Any]:
        return {"forward_passes": 2.0}

    def options(self) -> dict[str, Any]:
        return {"w": self.w}
