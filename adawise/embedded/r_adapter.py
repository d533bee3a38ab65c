"""R-Adapter: robust fine-tuning with re-parameterisable linear adapters (Kim et al., ECCV 2024, arXiv 2408.05749).

What the paper does, and how it is done here (choices and deviations: docs/robust_endpoints.md):

- *Adapters*: a residual linear map ``h(X) = X + X W_adp`` (no non-linearity, no bias; full rank) after the
  multi-head attention and after the feed-forward network of every transformer block, in the image tower
  and the text tower; all pre-trained weights frozen, ``W_adp`` initialised to zero (so training starts at
  the zero-shot model). In open_clip's ``ResidualAttentionBlock`` the attention and MLP outputs pass
  through ``ls_1`` / ``ls_2`` (identity without layer scale) right before the residual sum: the adapters
  take their place (:func:`add_adapters`).
- *Adapter dropping* (dynamic ensemble): during training each adapter is switched off with probability
  ``p`` per sample, ``h(X) = X + γ/(1-p) · X W_adp``, ``γ ~ Bernoulli(1-p)``; never at inference.
- *Accumulation* (temporal ensemble): an exponential moving average of the adapter weights
  (:class:`AdapterEMA`), used for the endpoint.
- *Re-parameterisation*: the adapter follows a linear layer (attention ``out_proj``, MLP ``c_proj``), so
  ``W' = (I + s·W_adp) W``, ``b' = (I + s·W_adp) b`` (:func:`merge_adapters`); ``s`` is the paper's
  inference re-scaling (weight-space ensemble with the pre-trained model). The merged model has the
  original architecture and state-dict keys.
- *MPM-NCE* (:func:`mpm_nce_loss`): image-text InfoNCE in both directions where every pair of the same
  class is a positive (soft targets ``(1-ε)/|P(i)|`` on positives, ``ε/(B-|P(i)|)`` on negatives) and an
  additive margin ``δ`` on the negatives' similarities, temperature ``τ``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adawise.embedded.train import train_epochs
from adawise.models.clip import CLIPClassifier, build_classifier, encode_text

__all__ = ["LinearAdapter", "AdapterEMA", "add_adapters", "merge_adapters", "mpm_nce_loss",
           "radapter_finetune"]


class LinearAdapter(nn.Module):
    """``x + x Aᵀ`` with adapter dropping: in training mode each sample skips it with probability ``drop``.

    Args:
        dim: feature width (the block's width); ``A`` is ``[dim, dim]``, initialised to zero.
        drop: the adapter-dropping probability ``p``; the kept branch is scaled by ``1/(1-p)``.
        generator: CPU generator for the drop masks (reproducible training).
    """

    def __init__(self, dim: int, drop: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"adapter drop probability must be in [0, 1), got {drop}")
        self.weight = nn.Parameter(torch.zeros(dim, dim))
        self.drop = float(drop)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        branch = F.linear(x, self.weight)
        if self.training and self.drop > 0:
            keep = torch.rand(x.shape[0], generator=self.generator) >= self.drop  # batch-first tokens [B, L, D]
            branch = branch * (keep.to(x.dtype) / (1 - self.drop)).view(-1, *([1] * (x.ndim - 1)))
        return x + branch


def _blocks(transformer: nn.Module) -> list[nn.Module]:
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise TypeError(f"{type(transformer).__name__} has no .resblocks: expected an open_clip Transformer")
    if not getattr(transformer, "batch_first", True):
        raise TypeError("adapter dropping assumes batch-first tokens; this open_clip Transformer is sequence-first")
    return list(blocks)


def _sites(transformer: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Where the adapters go: (block, ``ls_1``, attention ``out_proj``) and (block, ``ls_2``, MLP ``c_proj``)."""
    return [(block, name, linear) for block in _blocks(transformer)
            for name, linear in (("ls_1", block.attn.out_proj), ("ls_2", block.mlp.c_proj))]


def add_adapters(transformer: nn.Module, drop: float = 0.0, generator: torch.Generator | None = None
                 ) -> list[LinearAdapter]:
    """Put a :class:`LinearAdapter` after the attention and after the MLP of every block (in place).

    They replace the blocks' ``ls_1`` / ``ls_2``, which must be identities (open_clip without layer
    scale), so the adapter sees exactly the branch output that the following residual sum adds.
    Returns the adapters, two per block.
    """
    adapters = []
    for block, name, linear in _sites(transformer):
        if not isinstance(getattr(block, name), nn.Identity):
            raise TypeError(f"block.{name} is {type(getattr(block, name)).__name__}, not an identity; "
                            "layer-scale blocks are not supported")
        adapter = LinearAdapter(linear.out_features, drop, generator)
        setattr(block, name, adapter)
        adapters.append(adapter)
    return adapters


@torch.no_grad()
def merge_adapters(transformer: nn.Module, scale: float = 1.0) -> None:
    """Fold every block's adapters into the preceding linear layers and remove them (in place).

    ``W ← (I + scale·A) W`` and ``b ← (I + scale·A) b`` for the attention ``out_proj`` (adapter in
    ``ls_1``) and the MLP ``c_proj`` (adapter in ``ls_2``); computed in float64. ``scale`` is R-Adapter's
    inference re-scaling: 1 keeps the tuned model, 0 gives back the pre-trained weights exactly.
    """
    for block, name, linear in _sites(transformer):
        adapter = getattr(block, name)
        if not isinstance(adapter, LinearAdapter):
            continue
        a = adapter.weight.double() * float(scale)
        eye = torch.eye(a.shape[0], dtype=torch.float64)
        linear.weight.copy_(((eye + a) @ linear.weight.double()).to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_(((eye + a) @ linear.bias.double()).to(linear.bias.dtype))
        setattr(block, name, nn.Identity())


class AdapterEMA:
    """Temporal ensemble: ``Ã ← m·Ã + (1-m)·A`` after every step, starting from the initial (zero) weights."""

    def __init__(self, adapters: Sequence[LinearAdapter], momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.adapters = list(adapters)
        self.momentum = float(momentum)
        self.shadow = [a.weight.detach().clone() for a in self.adapters]

    @torch.no_grad()
    def update(self) -> None:
        """Accumulate the adapters' current weights."""
        for avg, adapter in zip(self.shadow, self.adapters, strict=True):
            avg.lerp_(adapter.weight.detach(), 1 - self.momentum)

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the accumulated weights into the adapters."""
        for avg, adapter in zip(self.shadow, self.adapters, strict=True):
            adapter.weight.copy_(avg)


def mpm_nce_loss(image_features: Tensor, text_features: Tensor, labels: Tensor, temperature: float = 0.01,
                 margin: float = 0.05, smoothing: float = 0.1) -> Tensor:
    """Multi-positive margin NCE between B images and their B captions (R-Adapter's MPM-NCE).

    Pairs (i, j) with ``labels[i] == labels[j]`` are positives. Similarities are cosine (the features are
    normalised here); ``margin`` is added to every negative similarity before dividing by ``temperature``;
    the soft target of row i puts ``(1-ε)/|P(i)|`` on each positive and ``ε/(B-|P(i)|)`` on each negative
    (``ε = smoothing``; 0 where a row has no negative). The loss is the mean of the image-to-text and
    text-to-image soft cross-entropies.
    """
    f = F.normalize(image_features, dim=-1)
    g = F.normalize(text_features, dim=-1)
    positive = (labels.view(-1, 1) == labels.view(1, -1)).to(f.dtype)
    n_pos = positive.sum(1, keepdim=True)
    n_neg = positive.shape[1] - n_pos
    target = (1 - smoothing) * positive / n_pos + smoothing * (1 - positive) / n_neg.clamp(min=1)
    target = target / target.sum(1, keepdim=True)  # rows without negatives: all mass on the positives
    logits = (f @ g.T + margin * (1 - positive)) / temperature
    image_to_text = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()  # positive is symmetric
    return (image_to_text + text_to_image) / 2


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def radapter_finetune(clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor], images: Tensor,
                      labels: Tensor, class_names: Sequence[str], templates: Sequence[str],
                      normalize: Callable[[Tensor], Tensor], recipe: Any, progress: bool = True
                      ) -> tuple[CLIPClassifier, dict[str, Any]]:
    """Fine-tune a copy of ``clip_model`` with R-Adapter and return the merged classifier and training info.

    Args:
        clip_model: the pre-trained CLIP (not modified).
        images: [N, 1 or 3, H, W] in [0, 1]; ``labels`` [N].
        templates: caption templates: each image's caption is a random one filled with its class name
            (the positives of MPM-NCE), and the endpoint's head is the zero-shot head of the tuned text
            tower over all of them.
        normalize: maps [B, 3, H, W] in [0, 1] to the image tower's input.
        recipe: ``finetune_epochs``, ``finetune_batch``, ``seed`` and the ``radapter_*`` fields of
            :class:`~adawise.embedded.world.EmbeddedRecipe`.

    Returns:
        A :class:`CLIPClassifier` with the pre-trained architecture (adapters merged with
        ``radapter_scale``) and ``{"loss": [...], "tuned_params": ..., "tuned_fraction": ...}``.
    """
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    model = copy.deepcopy(clip_model).requires_grad_(False)
    towers = [model.visual.transformer] + ([model.transformer] if recipe.radapter_text else [])
    adapters = [a for t in towers for a in add_adapters(t, recipe.radapter_drop, gen)]
    ema = AdapterEMA(adapters, recipe.radapter_ema)
    encoder_params = _count(p for n, p in clip_model.named_parameters() if n != "logit_scale")
    block_params = _count(p for t in (clip_model.visual.transformer, clip_model.transformer) for p in t.parameters())
    tuned = _count(a.weight for a in adapters)
    x3 = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    prompts = [[t.format(name) for t in templates] for name in class_names]

    def step(idx: Tensor) -> Tensor:
        y = labels[idx]
        pick = torch.randint(0, len(templates), (len(idx),), generator=gen)
        captions = [prompts[int(c)][int(t)] for c, t in zip(y, pick, strict=True)]
        image_features = model.encode_image(normalize(x3[idx]))
        text_features = encode_text(model, tokenizer(captions))
        return mpm_nce_loss(image_features, text_features, y, recipe.radapter_temperature, recipe.radapter_margin,
                            recipe.radapter_smoothing)

    for adapter in adapters:
        adapter.weight.requires_grad_(True)
    model.train()
    losses = train_epochs([{"params": [a.weight for a in adapters], "weight_decay": 0.0}], len(images),
                          recipe.finetune_epochs, recipe.finetune_batch, recipe.radapter_lr, 0.0, gen, step,
                          "fine-tune (R-Adapter)", progress, after_step=ema.update)
    model.eval()
    ema.copy_to()
    update_norm = float(torch.sqrt(sum((a.weight.detach() ** 2).sum() for a in adapters)))
    for tower in towers:
        merge_adapters(tower, recipe.radapter_scale)
    model.requires_grad_(False)
    classifier = build_classifier(model, tokenizer, class_names, list(templates))  # x the CLIP's logit scale
    if recipe.radapter_head_scale == "temperature":  # the scale the adapters were trained at: cos / tau
        with torch.no_grad():
            classifier.head.weight.mul_(1.0 / (recipe.radapter_temperature * float(model.logit_scale.exp())))
    info = {"loss": [round(v, 4) for v in losses], "tuned_params": tuned,
            "tuned_fraction": round(tuned / encoder_params, 4),
            "tuned_fraction_of_transformer_blocks": round(tuned / block_params, 4),
            "adapter_norm": round(update_norm, 4), "scale": recipe.radapter_scale,
            "head_scale": recipe.radapter_head_scale}
    return classifier, info
