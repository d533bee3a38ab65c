"""The embedded world's two training stages: contrastive pretraining of a small CLIP, then the fine-tuned
endpoint the recipe names (trained by its entry in :data:`adawise.embedded.endpoints.ENDPOINTS`)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from adawise.embedded.endpoints import ENDPOINTS
from adawise.embedded.recipe import EmbeddedRecipe
from adawise.embedded.train import (
    ALL_TEMPLATES,
    MEAN,
    STD,
    Tokenizer,
    cached_tokenizer,
    normalize,
    pretrain,
)
from adawise.models.clip import CLIPClassifier, build_classifier, create_clip
from streams import fashion

__all__ = ["finetune_stage", "new_clip", "pretrain_stage", "training_threads"]


def new_clip(recipe: EmbeddedRecipe) -> tuple[nn.Module, Tokenizer]:
    """The recipe's untrained CLIP (seeded by ``recipe.seed``) and its tokenizer."""
    torch.manual_seed(recipe.seed)
    clip, tokenizer = create_clip(recipe.clip_config())
    clip.visual.image_mean, clip.visual.image_std = MEAN, STD  # read by build_classifier
    return clip, tokenizer


@contextlib.contextmanager
def training_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pretrain_stage(recipe: EmbeddedRecipe, splits: dict[str, tuple[Tensor, Tensor]], progress: bool
                   ) -> tuple[nn.Module, Tokenizer, CLIPClassifier, dict[str, Any]]:
    """Contrastive pretraining of the recipe's CLIP on the pretraining split, and its zero-shot classifier."""
    clip, tokenizer = new_clip(recipe)
    names = list(fashion.CLASS_NAMES)
    pre_x, pre_y = splits["pretrain"]
    t0 = time.perf_counter()
    with training_threads(recipe.train_threads):
        losses = pretrain(clip, cached_tokenizer(tokenizer), fashion.to_float(pre_x), pre_y, names, normalize,
                          recipe, progress)
        zeroshot = build_classifier(clip, tokenizer, names, list(ALL_TEMPLATES))
    info = {"pretrain_seconds": round(time.perf_counter() - t0, 1), "pretrain_loss": [round(v, 4) for v in losses],
            "threads": recipe.train_threads, "cpus": os.cpu_count()}
    return clip, tokenizer, zeroshot, info


def finetune_stage(recipe: EmbeddedRecipe, clip: nn.Module, tokenizer: Tokenizer, zeroshot: CLIPClassifier,
                   splits: dict[str, tuple[Tensor, Tensor]], progress: bool
                   ) -> tuple[CLIPClassifier, dict[str, Any]]:
    """The recipe's endpoint from the pretrained CLIP and its zero-shot classifier (neither is modified)."""
    ft_x, ft_y = splits["finetune"]
    t0 = time.perf_counter()
    with training_threads(recipe.train_threads):
        finetuned, losses, endpoint_info = ENDPOINTS[recipe.endpoint].finetune(
            recipe, clip, tokenizer, zeroshot, ft_x, ft_y, progress)
    info = {"endpoint": recipe.endpoint, "finetune_seconds": round(time.perf_counter() - t0, 1),
            "finetune_loss": [round(v, 4) for v in losses], **endpoint_info,
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    return finetuned.eval(), info
