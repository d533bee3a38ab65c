"""The embedded world's recipe: every field that decides its weights (:class:`EmbeddedRecipe`).

The cache keys (:func:`adawise.embedded.world.world_key`, :func:`~adawise.embedded.world.pretrain_key`) hash
these fields grouped by stage: the pretraining fields, the fine-tuning fields shared by every endpoint
(:data:`FINETUNE_FIELDS`) and each endpoint's own fields (its prefix in :data:`adawise.embedded.endpoints.ENDPOINTS`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from adawise.embedded.endpoints import ENDPOINT_NAMES as ENDPOINTS

__all__ = ["EmbeddedRecipe", "ENDPOINTS", "FINETUNE_FIELDS"]

#: fields that only the fine-tuning stage reads (every endpoint)
FINETUNE_FIELDS = ("finetune_size", "holdout_size", "finetune_epochs", "finetune_batch", "finetune_lr")


@dataclass(frozen=True)
class EmbeddedRecipe:
    """Everything that decides the embedded world's weights. ``full()`` is the demo's, ``tiny()`` the tests'.

    Derive variants with ``dataclasses.replace(EmbeddedRecipe.full(), seed=1)``; each gets its own cache.
    """

    name: str = "full"
    # data split of Fashion-MNIST train (60k): pretraining | fine-tuning | ... | held out (last rows)
    pretrain_size: int = 30000
    finetune_size: int = 28000
    holdout_size: int = 2000
    # model (open_clip CLIP, custom config)
    embed_dim: int = 64
    vision_width: int = 96
    vision_layers: int = 4
    vision_head_width: int = 32
    patch_size: int = 7
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 16
    # contrastive pretraining
    pretrain_epochs: int = 6
    pretrain_batch: int = 256
    pretrain_lr: float = 1e-3
    # fine-tuning (clean images, head from the zero-shot head)
    finetune_epochs: int = 10
    finetune_batch: int = 128
    finetune_lr: float = 3e-4
    weight_decay: float = 0.1
    # pretraining augmentation (per sample) and captions
    p_affine: float = 0.7
    max_rotate: float = 20.0
    scale_range: tuple[float, float] = (0.75, 1.25)
    max_shift: float = 4.0
    p_invert: float = 0.2
    p_style: float = 0.35
    blur_sigma: tuple[float, float] = (0.6, 1.6)
    contrast_range: tuple[float, float] = (0.15, 0.6)
    brightness_range: tuple[float, float] = (0.15, 0.45)
    noise_sigma: tuple[float, float] = (0.05, 0.3)
    caption_noise: float = 0.2
    p_generic_caption: float = 0.3
    #: share of captions that describe the class's defining features (CORE_DESCRIPTIONS), taken from the
    #: generic share; half of them name the class ("coat: long sleeves, ..."), half do not
    p_description_caption: float = 0.15
    seed: int = 0
    #: intra-op threads while training: 1 makes the weights identical on any machine (reduction order)
    #: and immune to a busy machine (two threads sharing 2 cores with other work ran 10x slower)
    train_threads: int = 1
    #: which fine-tuned endpoint the world holds (:data:`ENDPOINTS`)
    endpoint: str = "e2e"
    # R-Adapter (Kim et al., ECCV 2024); epochs and batch are finetune_epochs / finetune_batch
    radapter_lr: float = 5e-4
    radapter_drop: float = 0.2
    radapter_ema: float = 0.99
    radapter_margin: float = 0.05
    radapter_smoothing: float = 0.1
    radapter_temperature: float = 0.01
    radapter_scale: float = 1.0
    radapter_text: bool = True
    #: the endpoint head's logit scale: "temperature" (1 / radapter_temperature, the scale MPM-NCE trained
    #: the adapters at) or "clip" (the CLIP's own logit scale, 13.8 here: near-uniform softmax, entropy
    #: 2.1 nats on clean images, so every entropy-based objective preferred the zero-shot model)
    radapter_head_scale: str = "temperature"
    # DRM (Li et al., NeurIPS 2024); optimiser and schedule are the e2e fine-tuning's
    drm_lambda: float = 1.0
    drm_beta: float = 0.5

    @classmethod
    def full(cls) -> EmbeddedRecipe:
        """The demo's world (about 5 minutes of training on 2 CPU cores)."""
        return cls()

    @classmethod
    def tiny(cls) -> EmbeddedRecipe:
        """Same code, a few seconds of training: for tests (the phenomenon is not expected)."""
        return cls(name="tiny", pretrain_size=512, finetune_size=512, holdout_size=128, embed_dim=32,
                   vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1,
                   pretrain_epochs=1, pretrain_batch=128, finetune_epochs=1, finetune_batch=128)

    def with_endpoint(self, name: str) -> EmbeddedRecipe:
        """The same recipe with another fine-tuned endpoint (same pretraining)."""
        return replace(self, endpoint=name)

    @classmethod
    def resolve(cls, recipe: EmbeddedRecipe | str | os.PathLike | None) -> EmbeddedRecipe:
        """A recipe from itself, a name or a JSON file of field values.

        Names: ``"full"``, ``"tiny"``, an endpoint (``"e2e"``, ``"r-adapter"``, ``"drm"``: the full world with
        that endpoint) or ``"<full|tiny>:<endpoint>"`` (e.g. ``"tiny:r-adapter"``).
        """
        if recipe is None:
            return cls.full()
        if isinstance(recipe, EmbeddedRecipe):
            return recipe
        text = str(recipe)
        if text in ("full", "tiny"):
            return getattr(cls, text)()
        if text in ENDPOINTS:
            return cls.full().with_endpoint(text)
        base, sep, endpoint = text.partition(":")
        if sep and base in ("full", "tiny") and not Path(text).is_file():
            return getattr(cls, base)().with_endpoint(endpoint)  # an unknown endpoint raises, listing the valid
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"recipe {text!r} is neither 'full', 'tiny', an endpoint {list(ENDPOINTS)}, "
                             f"'tiny:<endpoint>' nor a JSON file ({path.resolve()}); pass one of those")
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a valid JSON file ({err}); pass a JSON object of recipe fields") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of recipe fields, got {type(data).__name__}")
        data = data.get("recipe", data)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: 'recipe' must be a JSON object of recipe fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe fields {unknown}; known: {sorted(known)}")
        defaults = cls()
        for key, value in data.items():  # each field keeps the type of its default (an int, a float, a pair, ...)
            default = getattr(defaults, key)
            kind = (int, float) if isinstance(default, float) else type(default)
            ok = isinstance(value, list if isinstance(default, tuple) else kind) and not (
                isinstance(value, bool) and not isinstance(default, bool))
            if ok and isinstance(default, tuple):
                ok = len(value) == len(default) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in value)
            if not ok:
                raise ValueError(f"{path}: recipe field {key!r} must be like {default!r} "
                                 f"({type(default).__name__}), got {value!r}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {self.endpoint!r}; valid: {', '.join(ENDPOINTS)}")
        if not 0.0 <= self.p_description_caption <= self.p_generic_caption:
            raise ValueError(f"p_description_caption ({self.p_description_caption}) is taken from the generic "
                             f"captions' share: it must lie in [0, p_generic_caption = {self.p_generic_caption}]")
        if self.radapter_head_scale not in ("temperature", "clip"):
            raise ValueError(f"radapter_head_scale must be 'temperature' or 'clip', got {self.radapter_head_scale!r}")
        used = self.pretrain_size + self.finetune_size + self.holdout_size
        if min(self.pretrain_size, self.finetune_size, self.holdout_size) <= 0 or used > 60000:
            raise ValueError(f"recipe {self.name}: pretrain+finetune+holdout sizes must be positive and fit in "
                             f"60,000 training images, got {used}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly field values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def clip_config(self) -> dict[str, Any]:
        """The open_clip config dict (see :func:`adawise.models.clip.create_clip`)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": 28, "patch_size": self.patch_size, "width": self.vision_width,
                           "layers": self.vision_layers, "head_width": self.vision_head_width},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }
