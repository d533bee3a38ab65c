"""The embedded world's fine-tuned endpoints, as a table: name -> how to train it and which recipe fields
are its own (:data:`ENDPOINTS`). A recipe names one (``EmbeddedRecipe.endpoint``); its cache key covers
the fine-tuning fields every endpoint reads plus the fields starting with the endpoint's ``field_prefix``.

Adding an endpoint: a function ``(recipe, clip, tokenizer, zeroshot, images_u8, labels, progress) ->
(classifier, losses, info)`` and one entry here (its fields in :class:`~adawise.embedded.recipe.EmbeddedRecipe`,
named with its prefix, so the other endpoints' cache keys stay as they are).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from adawise.embedded.train import ALL_TEMPLATES, Tokenizer, cached_tokenizer, description_caption, finetune, grey3
from adawise.embedded.train import normalize as normalize_images
from adawise.models.clip import CLIPClassifier
from streams import fashion

__all__ = ["ENDPOINTS", "ENDPOINT_NAMES", "Endpoint"]

#: (recipe, clip, tokenizer, zero-shot classifier, fine-tuning images (uint8), labels, progress)
#: -> (fine-tuned classifier, losses per epoch, extra training info for the world's ``info``)
Finetune = Callable[[Any, nn.Module, Tokenizer, CLIPClassifier, Tensor, Tensor, bool],
                    tuple[CLIPClassifier, list[float], dict[str, Any]]]


@dataclass(frozen=True)
class Endpoint:
    """One fine-tuned endpoint: its trainer and the prefix of its own recipe fields (``None``: none)."""

    name: str
    finetune: Finetune
    field_prefix: str | None
    description: str


def _e2e(recipe: Any, clip: nn.Module, tokenizer: Tokenizer, zeroshot: CLIPClassifier, images: Tensor,
         labels: Tensor, progress: bool) -> tuple[CLIPClassifier, list[float], dict[str, Any]]:
    finetuned = copy.deepcopy(zeroshot)
    return finetuned, finetune(finetuned, grey3(images), labels, recipe, progress), {}


def _r_adapter(recipe: Any, clip: nn.Module, tokenizer: Tokenizer, zeroshot: CLIPClassifier, images: Tensor,
               labels: Tensor, progress: bool) -> tuple[CLIPClassifier, list[float], dict[str, Any]]:
    from adawise.embedded.r_adapter import radapter_finetune

    finetuned, info = radapter_finetune(clip, cached_tokenizer(tokenizer), fashion.to_float(images), labels,
                                        list(fashion.CLASS_NAMES), list(ALL_TEMPLATES), normalize_images, recipe,
                                        progress)
    return finetuned, info.pop("loss"), info


def _drm(recipe: Any, clip: nn.Module, tokenizer: Tokenizer, zeroshot: CLIPClassifier, images: Tensor,
         labels: Tensor, progress: bool) -> tuple[CLIPClassifier, list[float], dict[str, Any]]:
    from adawise.embedded.drm import core_feature_head, drm_finetune

    names = list(fashion.CLASS_NAMES)
    core = core_feature_head(clip, tokenizer, [description_caption(n, with_name=False) for n in names])
    finetuned, info = drm_finetune(zeroshot, core, grey3(images), labels, recipe, progress)
    return finetuned, info.pop("loss"), info


#: the endpoints, by name (the order is the demo's)
ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (
    Endpoint("e2e", _e2e, None, "end-to-end cross-entropy fine-tuning"),
    Endpoint("r-adapter", _r_adapter, "radapter_", "R-Adapter (Kim et al., ECCV 2024)"),
    Endpoint("drm", _drm, "drm_", "dual risk minimisation (Li et al., NeurIPS 2024)"),
)}
#: their names (what ``EmbeddedRecipe.endpoint`` takes)
ENDPOINT_NAMES: tuple[str, ...] = tuple(ENDPOINTS)
