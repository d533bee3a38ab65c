"""DRM: dual risk minimisation (Li et al., NeurIPS 2024, arXiv 2411.19757, github vaynexie/DRM).

Fine-tuning minimises the empirical risk of the usual ("default prompt") head plus ``λ`` times a worst-case
risk estimated from *core-feature* zero-shot predictions: the zero-shot model's prediction with a head
built from text descriptions of each class's defining features (DRM's "concept descriptions", one prompt
per class; here :data:`~adawise.embedded.train.CORE_DESCRIPTIONS`, written by hand).

- core-feature head (:func:`core_feature_head`): one description per class through the text tower,
  L2-normalised, times ``logit_scale.exp()`` (as DRM's ``get_zeroshot_classifier`` does for its
  concept-description head, and like the zero-shot head);
- worst-case term (:func:`worst_case_risk`): ``E_x[ Σ_y q(y|x) · (-log p_θ^core(y|x)) ]`` with
  ``q = softmax`` of the *frozen* zero-shot model's core-feature logits (the proxy of the prediction from
  core features alone) and ``p_θ^core`` the fine-tuned image tower with its own, trained core-feature head;
- objective (:func:`drm_loss`): ``CE(z_default, y) + λ · worst_case_risk``;
- inference: DRM mixes the two heads' probabilities, ``β·softmax(z_default) + (1-β)·softmax(z_core)``
  (``--beta`` 0.5 in DRM's evaluation code). To keep the endpoint one linear head (so it interpolates with
  the zero-shot model in weight space) the endpoint mixes the heads' *weights*:
  ``W = β·W_default + (1-β)·W_core``, i.e. logits ``β·z_default + (1-β)·z_core``, whose softmax is the
  normalised weighted geometric mean of the two heads' probabilities (:func:`combine_heads`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adawise.embedded.train import split_decay, train_epochs
from adawise.models.clip import CLIPClassifier, zeroshot_head

__all__ = ["core_feature_head", "worst_case_risk", "drm_loss", "combine_heads", "drm_finetune"]


def core_feature_head(clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor],
                      descriptions: Sequence[str]) -> Tensor:
    """The core-feature zero-shot head ``[C, D]``: one description prompt per class (in class order)."""
    return zeroshot_head(clip_model, tokenizer, list(descriptions), ["{}"])


def worst_case_risk(core_logits: Tensor, core_zeroshot_probs: Tensor) -> Tensor:
    """DRM's worst-case risk proxy: mean over samples of ``Σ_y q(y|x) · (-log softmax(core_logits))_y``.

    Args:
        core_logits: [B, C] the model's core-feature-head logits.
        core_zeroshot_probs: [B, C] ``q``, the frozen zero-shot core-feature prediction (rows sum to 1).
    """
    return -(core_zeroshot_probs * F.log_softmax(core_logits, dim=1)).sum(1).mean()


def drm_loss(default_logits: Tensor, core_logits: Tensor, labels: Tensor, core_zeroshot_probs: Tensor,
             lam: float) -> Tensor:
    """``CE(default_logits, labels) + lam · worst_case_risk(core_logits, core_zeroshot_probs)``."""
    return F.cross_entropy(default_logits, labels) + lam * worst_case_risk(core_logits, core_zeroshot_probs)


def combine_heads(default: nn.Linear, core: nn.Linear, beta: float) -> tuple[Tensor, Tensor]:
    """The endpoint's single head: ``β·default + (1-β)·core`` (weight and bias)."""
    weight = beta * default.weight.detach() + (1 - beta) * core.weight.detach()
    bias = beta * default.bias.detach() + (1 - beta) * core.bias.detach()
    return weight, bias


@torch.no_grad()
def _zeroshot_core_probs(zeroshot: CLIPClassifier, core_head: Tensor, images: Tensor, chunk: int = 1000) -> Tensor:
    out = [F.softmax(zeroshot.encode(images[i : i + chunk]) @ core_head.T, dim=1) for i in range(0, len(images), chunk)]
    return torch.cat(out)


def drm_finetune(zeroshot: CLIPClassifier, core_head: Tensor, images: Tensor, labels: Tensor, recipe: Any,
                 progress: bool = True) -> tuple[CLIPClassifier, dict[str, Any]]:
    """Fine-tune a copy of ``zeroshot`` end to end with the DRM objective; returns the endpoint and info.

    Args:
        zeroshot: the zero-shot classifier (head = default-prompt zero-shot head); not modified.
        core_head: [C, D] the core-feature zero-shot head (:func:`core_feature_head`) of the same CLIP.
        images: [N, 3, H, W] in [0, 1]; ``labels`` [N].
        recipe: ``finetune_epochs``, ``finetune_batch``, ``finetune_lr``, ``weight_decay``, ``seed``,
            ``drm_lambda``, ``drm_beta`` of :class:`~adawise.embedded.world.EmbeddedRecipe`.

    Returns:
        A :class:`CLIPClassifier` (zero-shot keys; head = β·default + (1-β)·core) and
        ``{"loss": [...], "zeroshot_core_accuracy": ..., ...}``.
    """
    q = _zeroshot_core_probs(zeroshot, core_head, images)
    model = copy.deepcopy(zeroshot).requires_grad_(True)
    core = nn.Linear(core_head.shape[1], core_head.shape[0])
    with torch.no_grad():
        core.weight.copy_(core_head)
        core.bias.zero_()
    both = nn.ModuleDict({"classifier": model, "core": core})
    gen = torch.Generator().manual_seed(recipe.seed + 3)
    parts: dict[str, float] = {}

    def step(idx: Tensor) -> Tensor:
        features = model.encode(images[idx])
        default_logits, core_logits = model.classify(features), core(features)
        ce = F.cross_entropy(default_logits, labels[idx])
        worst = worst_case_risk(core_logits, q[idx])
        parts["ce"], parts["worst"] = float(ce.detach()), float(worst.detach())
        return ce + recipe.drm_lambda * worst

    both.train()
    losses = train_epochs(split_decay(both), len(images), recipe.finetune_epochs, recipe.finetune_batch,
                          recipe.finetune_lr, recipe.weight_decay, gen, step, "fine-tune (DRM)", progress,
                          postfix=lambda loss: {"ce": f"{parts['ce']:.3f}", "worst": f"{parts['worst']:.3f}"})
    both.eval().requires_grad_(False)
    weight, bias = combine_heads(model.head, core, recipe.drm_beta)
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    info = {"loss": [round(v, 4) for v in losses], "last_ce": round(parts.get("ce", float("nan")), 4),
            "last_worst_case": round(parts.get("worst", float("nan")), 4),
            "zeroshot_core_accuracy_on_finetune_set": round(float((q.argmax(1) == labels).float().mean()), 4),
            "lambda": recipe.drm_lambda, "beta": recipe.drm_beta}
    return model.eval(), info
