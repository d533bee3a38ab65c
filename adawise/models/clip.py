"""CLIP image classifiers from open_clip: zero-shot head from class names x templates.

Zero-shot head as in CLIP (Radford et al., 2021) and wise-ft: for each class, encode every template,
L2-normalise each embedding, average, L2-normalise again; stack into W [C, D]; scale by
``logit_scale.exp()``; zero bias. Logits = W · normalize(image_features). The image normalisation
(mean/std) is folded into the classifier, so it takes a float batch [B, 3, H, W] in [0, 1]. An optional
boolean class mask projects the logits (e.g. 1000 ImageNet classes -> 200 ImageNet-R classes).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adawise.core.weights import check_compatible
from adawise.errors import CheckpointError, MissingFileError, StateDictMismatchError, UsageError
from adawise.models.checkpoints import (
    check_weights,
    default_mode,
    import_state_dict,
    load_checkpoint,
    save_state_dict,
    weights_hash,
)

__all__ = [
    "CLIPClassifier",
    "zeroshot_head",
    "encode_text",
    "create_clip",
    "build_classifier",
    "load_pair",
    "resolve_templates",
    "SIMPLE_TEMPLATES",
]

log = logging.getLogger(__name__)

Template = str | Callable[[str], str]
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPClassifier(nn.Module):
    """Image tower + linear head; input [B, 3, H, W] floats in [0, 1], output [B, C] logits.

    Inputs are validated here (methods pass images through unchecked): anything but a 4-D float tensor
    with 1 or 3 channels is refused with a message saying what to pass (a list of images of mixed sizes
    included); a batch of another size (square or not) is resized to ``image_size``.

    ``encode(images)`` returns L2-normalised image features (what VRF's kNN uses) and
    ``classify(features)`` applies the head and the optional class mask. The state dict holds only
    weights (``visual.*``, ``head.*``); mean, std and mask are non-persistent configuration.
    """

    #: normalises float images of any dtype in fp32, then casts them to its weights' dtype
    casts_inputs = True

    def __init__(self, visual: nn.Module, head_weight: Tensor, image_size: int,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 class_mask: Tensor | None = None, head_bias: Tensor | None = None) -> None:
        super().__init__()
        self.visual = visual
        num_classes, dim = head_weight.shape
        self.head = nn.Linear(dim, num_classes, bias=True)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.copy_(head_bias if head_bias is not None else torch.zeros(num_classes))
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.class_mask: Tensor | None
        if class_mask is not None:
            mask = torch.as_tensor(class_mask, dtype=torch.bool)
            if mask.ndim != 1 or mask.numel() != num_classes:
                raise ValueError(
                    f"class_mask has shape {tuple(mask.shape)} but the head has {num_classes} classes; "
                    "pass a 1-D boolean mask with one entry per head class"
                )
            self.register_buffer("class_mask", mask, persistent=False)
            # column indices: index_select needs no host sync (boolean indexing does), so CUDA graphs capture
            self.register_buffer("class_index", mask.nonzero().flatten(), persistent=False)
        else:
            self.class_mask = None
            self.class_index = None

    @property
    def num_classes(self) -> int:
        """Number of output classes after the mask (the task's label space)."""
        return int(self.class_mask.sum()) if self.class_mask is not None else self.head.out_features

    def _prepare(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            hint = ""
            if isinstance(images, (list, tuple)):  # e.g. images of mixed sizes that were never stacked
                hint = ("; to classify images of different sizes, resize or centre-crop each to one size and "
                        "torch.stack them (a stacked batch of any size is resized to the model's "
                        f"{self.image_size}x{self.image_size})")
            raise ValueError(f"expected images as a [B, 3, H, W] float tensor in [0, 1], got {shape}{hint}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels (or 1, replicated), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}; divide uint8 by 255")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        dtype = self.head.weight.dtype
        return ((images - self.mean) / self.std).to(dtype)

    def encode(self, images: Tensor) -> Tensor:
        """L2-normalised image features [B, D] of a batch in [0, 1] (an empty batch gives [0, D])."""
        x = self._prepare(images)
        if x.shape[0] == 0:  # the towers cannot run on no rows; there is nothing to compute
            return x.new_zeros((0, self.head.in_features))
        return F.normalize(self.visual(x), dim=-1)

    def classify(self, features: Tensor) -> Tensor:
        """Head (and class-mask projection) applied to normalised features."""
        logits = self.head(features.to(self.head.weight.dtype))
        return logits.index_select(1, self.class_index) if self.class_index is not None else logits

    def forward(self, images: Tensor) -> Tensor:
        return self.classify(self.encode(images))


def resolve_templates(templates: str | Sequence[Template]) -> list[Template]:
    """``"openai"`` (the 80 ImageNet templates), ``"simple"``, a text file (one per line, ``{}``
    for the class name), or a sequence of format strings / callables."""
    if isinstance(templates, str):
        if templates == "openai":
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

            return list(OPENAI_IMAGENET_TEMPLATES)
        if templates == "simple":
            return list(SIMPLE_TEMPLATES)
        path = Path(templates)
        if not path.is_file():
            raise MissingFileError(
                f"templates: {templates!r} is neither 'openai', 'simple' nor an existing file ({path.resolve()}); "
                "pass a text file with one template per line, {} standing for the class name"
            )
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (UnicodeDecodeError, OSError) as err:
            raise UsageError(f"templates file {path} cannot be read as text ({err}); pass a UTF-8 text file with "
                             "one template per line, {} standing for the class name") from None
        bad = [ln for ln in lines if "{}" not in ln]
        if not lines or bad:
            raise UsageError(f"templates file {path}: every line needs '{{}}' where the class name goes (e.g. "
                             f"'a photo of a {{}}.'); bad lines: {bad[:3] if bad else 'the file is empty'}")
        return lines
    return list(templates)


def _fill(template: Template, name: str) -> str:
    return template(name) if callable(template) else template.format(name)


def encode_text(clip_model: nn.Module, tokens: Tensor) -> Tensor:
    """``clip_model.encode_text(tokens)``, computed only up to the last end-of-text token.

    CLIP's text tower is causal and pools at the end-of-text token (the argmax id), so the padding
    after it never influences the result: cutting it off gives the same embeddings (to rounding)
    several times faster. Models without that structure fall back to ``encode_text``.
    """
    mask = getattr(clip_model, "attn_mask", None)
    if getattr(clip_model, "text_pool_type", None) != "argmax" or mask is None or not hasattr(clip_model, "ln_final"):
        return clip_model.encode_text(tokens)
    eot = tokens.argmax(dim=-1)
    n = int(eot.max()) + 1
    cast = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens[:, :n]).to(cast) + clip_model.positional_embedding[:n].to(cast)
    x = clip_model.ln_final(clip_model.transformer(x, attn_mask=mask[:n, :n]))
    x = x[torch.arange(len(x), device=x.device), eot]
    proj = clip_model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


@torch.no_grad()
def zeroshot_head(clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor], class_names: Sequence[str],
                  templates: Sequence[Template], device: str | torch.device | None = None,
                  chunk: int = 512) -> Tensor:
    """The CLIP zero-shot head W [C, D]: mean of normalised template embeddings, normalised,
    times ``logit_scale.exp()``. Prompts are encoded in chunks of ``chunk`` across classes."""
    if not class_names:
        raise UsageError("zeroshot_head: class_names is empty; pass one name per class")
    if not templates:
        raise UsageError("zeroshot_head: templates is empty; pass at least one template such as 'a photo of a {}.'")
    device = device or next(clip_model.parameters()).device
    prompts = [_fill(t, name) for name in class_names for t in templates]
    embeddings = []
    for start in range(0, len(prompts), chunk):
        tokens = tokenizer(prompts[start:start + chunk]).to(device)
        embeddings.append(F.normalize(encode_text(clip_model, tokens).float(), dim=-1))
    per_class = torch.cat(embeddings).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(per_class, dim=-1) * clip_model.logit_scale.exp().float()


def create_clip(arch: str | dict[str, Any], pretrained: str | os.PathLike | None = None,
                device: str | torch.device = "cpu") -> tuple[nn.Module, Callable[[list[str]], Tensor]]:
    """An open_clip CLIP and its tokenizer, from a local weights file or random weights.

    Args:
        arch: open_clip architecture name (e.g. ``"ViT-B-16"``; ``openai`` weights need the
            QuickGELU variant such as ``"ViT-B-16-quickgelu"``) or a custom config dict with
            ``embed_dim``, ``vision_cfg``, ``text_cfg`` (and optional ``quick_gelu``).
        pretrained: path of a local open_clip checkpoint, or ``None`` for random weights. Nothing is
            ever downloaded: a tag such as ``"openai"`` is refused with an explanation.
    """
    import open_clip

    if pretrained is not None and not Path(pretrained).is_file():
        raise MissingFileError(
            f"pretrained weights not found: {pretrained!r} (looked for a local file at {Path(pretrained).resolve()}). "
            "Nothing is downloaded here: pass the path of a local open_clip checkpoint for this architecture "
            "(e.g. the ViT-B-16 'openai' .bin/.safetensors file), or 'none' for random weights, or run "
            "`adawise demo` for the bundled embedded world."
        )
    if isinstance(arch, dict):
        cfg = dict(arch)
        try:
            model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                                   quick_gelu=cfg.get("quick_gelu", False))
        except (KeyError, TypeError, ValueError, AssertionError, ZeroDivisionError, RuntimeError) as err:
            raise UsageError(f"the custom open_clip config cannot build a CLIP ({type(err).__name__}: {err}); it needs "
                             "embed_dim, vision_cfg and text_cfg with open_clip's field names and positive sizes "
                             "(see open_clip's model_configs/*.json)") from None
        if pretrained is not None:
            _load_pretrained(model, pretrained, "the custom config")
        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=cfg["text_cfg"].get("context_length", 77))
    else:
        if arch not in open_clip.list_models():
            raise UsageError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models() (e.g. ViT-B-16, "
                             "ViT-B-16-quickgelu for OpenAI weights)")
        with _quiet_random_init():
            model = open_clip.create_model(arch, pretrained=None)
        if pretrained is not None:
            _load_pretrained(model, pretrained, arch)
        tokenizer = open_clip.get_tokenizer(arch)
    return model.to(device).eval(), tokenizer


class _DropRandomInitNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Any:
    """open_clip says "No pretrained weights loaded ... initialized randomly" when the weights are loaded
    right after, from a local file: drop that one note."""
    note = _DropRandomInitNote()
    root = logging.getLogger()
    root.addFilter(note)
    try:
        yield
    finally:
        root.removeFilter(note)


def _load_pretrained(model: nn.Module, path: str | os.PathLike, arch: str) -> None:
    """Load a local CLIP checkpoint into ``model`` with open_clip's key conversions, after checking the file
    ourselves (damaged, not a checkpoint, NaN/Inf, pickled objects: a clear error naming it)."""
    import open_clip

    state = None
    if Path(path).suffix not in (".npz", ".npy"):  # big_vision numpy weights: open_clip's own reader
        state = load_checkpoint(path)
    try:
        open_clip.load_checkpoint(model, str(path))
    except (RuntimeError, AssertionError, KeyError, ValueError, IndexError) as err:
        detail = str(err).splitlines()[0][:200]
        if state is not None:
            theirs = {k.removeprefix("module."): v for k, v in state.items()}
            try:
                check_compatible(model.state_dict(), theirs, names=(f"the {arch} CLIP", str(path)))
            except StateDictMismatchError as mismatch:
                detail = str(mismatch)
        raise StateDictMismatchError(f"--pretrained {path} does not fit the architecture {arch}: {detail}. Pass the "
                                     "weights of that architecture, or the architecture of these weights "
                                     "(--arch, e.g. ViT-B-32 or a JSON config)") from None


def _image_stats(clip_model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    visual = clip_model.visual
    mean = tuple(getattr(visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or CLIP_STD)
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return mean, std, int(size)


def _head_cache_path(cache_dir: str | os.PathLike, clip_model: nn.Module, class_names: Sequence[str],
                     templates: Sequence[Template]) -> Path:
    probe = [_fill(t, "{}") for t in templates]
    key = json.dumps({"weights": weights_hash(clip_model), "classes": list(class_names), "templates": probe})
    return Path(cache_dir) / f"zeroshot-head-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def _read_head(path: Path, num_classes: int) -> Tensor | None:
    """A cached zero-shot head, or ``None`` (with a warning) when it is missing, damaged or does not fit."""
    if not path.is_file():
        if path.exists() or path.is_symlink():
            warnings.warn(f"zero-shot head cache {path} is not a regular file; computing the head instead",
                          stacklevel=3)
        return None
    try:
        head = load_checkpoint(path)["weight"]
        if head.ndim != 2 or head.shape[0] != num_classes:
            raise CheckpointError(f"it holds a {list(head.shape)} head for {num_classes} class names")
    except (KeyError, CheckpointError, OSError) as err:
        warnings.warn(f"zero-shot head cache {path} is unusable ({err}); computing the head again", stacklevel=3)
        return None
    log.info("zero-shot head loaded from cache %s", path)
    return head


def _write_head(path: Path, head: Tensor) -> None:
    """Write the head atomically (a temporary file renamed into place), or warn when the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".part", dir=path.parent)
        os.close(fd)
        try:
            save_state_dict({"weight": head}, tmp)
            os.chmod(tmp, default_mode())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        warnings.warn(f"cannot write the zero-shot head cache {path} ({err}); the head is not cached", stacklevel=3)


def build_classifier(clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor], class_names: Sequence[str],
                     templates: str | Sequence[Template] = "simple", class_mask: Tensor | None = None,
                     head_cache_dir: str | os.PathLike | None = None) -> CLIPClassifier:
    """Zero-shot classifier from a CLIP model: a copy of its image tower + the zero-shot head.

    With ``head_cache_dir`` the head is cached on disk keyed by the weights, class names and templates.
    """
    tmpl = resolve_templates(templates)
    cache = _head_cache_path(head_cache_dir, clip_model, class_names, tmpl) if head_cache_dir else None
    head = _read_head(cache, len(class_names)) if cache is not None else None
    if head is None:
        head = zeroshot_head(clip_model, tokenizer, class_names, tmpl)
        if cache is not None:
            _write_head(cache, head)
    mean, std, size = _image_stats(clip_model)
    visual = copy.deepcopy(clip_model.visual)
    device = next(visual.parameters()).device
    return CLIPClassifier(visual, head.to(device), size, mean, std, class_mask=class_mask).to(device).eval()


def load_finetuned(zeroshot: CLIPClassifier, path: str | os.PathLike, trust_pickle: bool = False) -> CLIPClassifier:
    """The zero-shot classifier's architecture with a fine-tuned state dict from ``path``.

    Accepts this project's layout and foreign ones (see :func:`import_state_dict`); an incompatible
    checkpoint raises an error listing missing, unexpected and mis-shaped keys.
    """
    state = import_state_dict(load_checkpoint(path, trust_pickle=trust_pickle))
    reference = zeroshot.state_dict()
    if not state:
        raise CheckpointError(f"{path}: none of its keys belong to an image classifier (visual.*, head.*, or the "
                              "wise-ft / open_clip layouts); pass the fine-tuned model's state dict")
    check_weights(state, str(path), reference)
    try:
        check_compatible(reference, state, names=(f"the {type(zeroshot.visual).__name__} classifier", str(path)))
    except StateDictMismatchError as err:
        head, theirs = reference.get("head.weight"), state.get("head.weight")
        if head is None or theirs is None or theirs.ndim != 2 or theirs.shape[0] == head.shape[0]:
            raise
        raise StateDictMismatchError(  # the commonest case first: a head for another class list
            f"{path}: its head has {theirs.shape[0]} classes but the zero-shot head was built from "
            f"{head.shape[0]} class names; pass the class names the checkpoint was fine-tuned on, in its order "
            f"(e.g. the 1000 ImageNet classes, with a class mask to project them onto the task's classes). {err}"
        ) from None
    finetuned = copy.deepcopy(zeroshot)
    finetuned.load_state_dict(state)
    return finetuned.eval()


def load_pair(arch: str | dict[str, Any], class_names: Sequence[str], pretrained: str | os.PathLike | None = None,
              finetuned: str | os.PathLike | None = None, templates: str | Sequence[Template] = "openai",
              class_mask: Tensor | None = None, device: str | torch.device = "cpu", trust_pickle: bool = False,
              head_cache_dir: str | os.PathLike | None = None, seed: int = 0) -> tuple[CLIPClassifier, CLIPClassifier]:
    """(zero-shot, fine-tuned) classifiers with identical architectures.

    Args:
        arch: open_clip architecture name or custom config (see :func:`create_clip`).
        class_names: one name per head class (e.g. the 1000 ImageNet names).
        pretrained: local CLIP weights file, or ``None`` for random weights (smoke tests).
        finetuned: local fine-tuned state dict (safetensors or weights-only ``.pt``); ``None`` gives a
            randomly perturbed copy of the zero-shot model (smoke tests only).
        templates: ``"openai"``, ``"simple"``, a file, or a list (see :func:`resolve_templates`).
        class_mask: optional boolean mask over the head classes (projected logits).
        head_cache_dir: cache the zero-shot head there.
    """
    torch.manual_seed(seed)
    clip_model, tokenizer = create_clip(arch, pretrained, device)
    zeroshot = build_classifier(clip_model, tokenizer, class_names, templates, class_mask, head_cache_dir)
    zeroshot.provenance = {
        "arch": arch if isinstance(arch, str) else "custom config",
        "pretrained": str(pretrained) if pretrained is not None else "random init",
        "head": f"zero-shot, {len(class_names)} classes x {len(resolve_templates(templates))} templates",
        "class_mask": int(torch.as_tensor(class_mask).sum()) if class_mask is not None else None,
    }
    if finetuned is not None:
        ft = load_finetuned(zeroshot, finetuned, trust_pickle)
        ft.provenance = {**zeroshot.provenance, "finetuned": str(finetuned)}
        return zeroshot, ft
    log.warning("no fine-tuned checkpoint given: using a randomly perturbed copy of the zero-shot model")
    ft = copy.deepcopy(zeroshot)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * p.detach().abs().mean() * torch.randn(p.shape, generator=gen).to(p))
    ft.provenance = {**zeroshot.provenance, "finetuned": "random perturbation of the zero-shot model (smoke test)"}
    return zeroshot, ft.eval()
