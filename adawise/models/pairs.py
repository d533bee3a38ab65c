"""The one factory of (zero-shot, fine-tuned) CLIP pairs from local files, and its inputs: the
architecture (an open_clip name or a JSON config), its image size, the class names, the text-head cache.

``adawise run``, ``adawise sweep`` (model kinds ``clip`` and ``random-clip``), ``adawise vrf-index`` and
``examples/stream_imagenet_r.py`` all build their models here (:func:`clip_pair`); the embedded world's
pair comes from :func:`adawise.load_embedded`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adawise.errors import MissingFileError, UsageError
from adawise.models.clip import load_pair

__all__ = ["class_names", "clip_pair", "default_head_cache", "image_size_of", "parse_arch", "weights_path"]


def parse_arch(arch: str | dict[str, Any]) -> str | dict[str, Any]:
    """An open_clip architecture name, or the config dict in a ``.json`` file."""
    if isinstance(arch, dict):
        return arch
    if not isinstance(arch, str) or not arch:
        raise UsageError(f"--arch must be an open_clip architecture name or a JSON file, got {arch!r}")
    if arch.lower().endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise MissingFileError(f"--arch {arch}: JSON config file not found ({path.resolve()}); pass an open_clip "
                                   "architecture name (e.g. ViT-B-16) or an existing JSON config")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            raise UsageError(f"--arch {arch}: not a valid JSON file ({err})") from None
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise UsageError(f"--arch {arch}: an open_clip config is a JSON object with embed_dim, vision_cfg and "
                             "text_cfg")
        if not (isinstance(cfg["embed_dim"], int) and not isinstance(cfg["embed_dim"], bool) and cfg["embed_dim"] > 0
                and isinstance(cfg["vision_cfg"], dict) and isinstance(cfg["text_cfg"], dict)):
            raise UsageError(f"--arch {arch}: embed_dim must be a positive integer and vision_cfg / text_cfg JSON "
                             "objects (open_clip's field names)")
        size = cfg["vision_cfg"].get("image_size", 224)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                   for v in (size if isinstance(size, (list, tuple)) else [size])):
            raise UsageError(f"--arch {arch}: vision_cfg.image_size must be a positive integer, got {size!r}")
        return cfg
    import open_clip

    if arch not in open_clip.list_models():
        raise UsageError(f"--arch {arch!r} is not an open_clip architecture; see open_clip.list_models() "
                         "(e.g. ViT-B-16, ViT-B-16-quickgelu for OpenAI weights, ViT-L-14)")
    return arch


def image_size_of(arch: str | dict[str, Any]) -> int:
    """Input resolution of an architecture, without building it."""
    if isinstance(arch, dict):
        cfg = arch
    else:
        import open_clip

        cfg = open_clip.get_model_config(arch) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def default_head_cache(out: str | os.PathLike | None = None) -> Path | None:
    """``$ADAWISE_CACHE/heads`` or ``~/.cache/adawise/heads`` if writable, else ``<out>/cache``."""
    base = os.environ.get("ADAWISE_CACHE")
    candidates = [Path(base).expanduser() / "heads"] if base else [Path.home() / ".cache" / "adawise" / "heads"]
    if out is not None:
        candidates.append(Path(out) / "cache")
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return None


def weights_path(value: str | None) -> str | None:
    return None if value is None or value.lower() == "none" else str(Path(value).expanduser())


def clip_pair(arch: str | dict[str, Any], pretrained: str | None, finetuned: str | None, *,
                class_names: Sequence[str], class_mask: torch.Tensor | None = None, templates: str = "openai",
                device: str | torch.device = "cpu", trust_pickle: bool = False,
                head_cache_dir: str | os.PathLike | None = None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(zero-shot, fine-tuned) classifiers from local files via :func:`~adawise.models.clip.load_pair`
    (``arch`` checked by :func:`parse_arch`); ``"none"`` for a weights path means random weights."""
    return load_pair(parse_arch(arch), list(class_names), pretrained=weights_path(pretrained),
                     finetuned=weights_path(finetuned), templates=templates, class_mask=class_mask,
                     device=device, trust_pickle=trust_pickle, head_cache_dir=head_cache_dir, seed=seed)


def class_names(classes: Any) -> tuple[list[str], Any]:
    """Class names and the ImageNet class mask (or ``None``) for ``classes``: ``"imagenet"``, ``"imagenet-r"``
    (its 200 classes of ImageNet's 1000), a text file with one name a line, or a list of names."""
    from streams import imagenet_r

    if classes == "imagenet":
        return list(imagenet_r.IMAGENET_CLASSNAMES), None
    if classes == "imagenet-r":
        return list(imagenet_r.IMAGENET_CLASSNAMES), imagenet_r.IMAGENET_R_MASK
    if isinstance(classes, str):
        return [line.strip() for line in Path(classes).read_text().splitlines() if line.strip()], None
    return [str(c) for c in classes], None
