"""The embedded world: a small CLIP pretrained and fine-tuned on Fashion-MNIST, trained once and cached.

It reproduces, at a size that trains in minutes on two CPU cores, the setting of robust fine-tuning
(CLIP -> ImageNet in WiSE-FT, Wortsman et al., CVPR 2022):

- *pretraining* (the "web"): an open_clip ``CLIP`` with a custom small config (ViT image tower, text
  transformer over open_clip's bundled BPE tokenizer, so any prompt can be encoded) is trained
  contrastively on ``train[:pretrain_size]`` under broad augmentation with captions that describe
  the augmentation and are sometimes wrong (see :mod:`adawise.models.embedded_train`);
- *zero-shot model*: its image tower + the zero-shot head from its own text tower (every caption
  template, :data:`~adawise.models.embedded_train.ALL_TEMPLATES`);
- *fine-tuned model*: a copy trained end to end on clean, disjoint images
  ``train[pretrain_size : pretrain_size + finetune_size]``, head initialised from the zero-shot head;
  ``train[-holdout_size:]`` is held out (temperature fitting, VRF);
- *test*: the 10,000 t10k images, under the shifts of :mod:`streams.shifts`.

``load_embedded()`` builds the world (progress bars) or loads it from the cache directory
``$ADAWISE_CACHE`` (default ``~/.cache/adawise``) / ``embedded-<key>/``, the key hashing the recipe,
the training code version and the data. A corrupt cache is rebuilt with a warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adawise.models.checkpoints import load_checkpoint, save_state_dict, weights_hash
from adawise.models.clip import CLIPClassifier, build_classifier, create_clip
from adawise.models.embedded_train import ALL_TEMPLATES, finetune, pretrain
from streams import fashion
from streams.shifts import DEFAULT_DOMAINS, ID_DOMAIN, SHIFTS, Shift

__all__ = ["EmbeddedRecipe", "EmbeddedWorld", "load_embedded", "cache_root", "world_dir", "embedded_stream"]

log = logging.getLogger(__name__)

#: bump when the training code changes what a recipe produces (invalidates caches)
CODE_VERSION = 1
#: Fashion-MNIST pixel statistics, folded into the classifiers (grey replicated to 3 channels)
MEAN, STD = (0.286,) * 3, (0.353,) * 3
_FILES = ("clip.safetensors", "zeroshot.safetensors", "finetuned.safetensors", "recipe.json")


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
    seed: int = 0
    #: intra-op threads while training: 1 makes the weights identical on any machine (reduction order)
    #: and immune to a busy machine (two threads sharing 2 cores with other work ran 10x slower)
    train_threads: int = 1

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

    @classmethod
    def resolve(cls, recipe: EmbeddedRecipe | str | os.PathLike | None) -> EmbeddedRecipe:
        """A recipe from itself, a name (``"full"``, ``"tiny"``) or a JSON file of field values."""
        if recipe is None:
            return cls.full()
        if isinstance(recipe, EmbeddedRecipe):
            return recipe
        if str(recipe) in ("full", "tiny"):
            return getattr(cls, str(recipe))()
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"recipe {str(recipe)!r} is neither 'full', 'tiny' nor a JSON file ({path.resolve()})")
        data = json.loads(path.read_text())
        data = data.get("recipe", data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe fields {unknown}; known: {sorted(known)}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})

    def __post_init__(self) -> None:
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


@dataclass
class EmbeddedWorld:
    """The bundled world: two classifiers on [B, 3, 28, 28] images in [0, 1], the data, the shifts.

    Image tensors are read-only broadcast views ``[N, 3, 28, 28]`` of the grey images (no copy);
    call ``.contiguous()`` before editing them in place.
    """

    zeroshot: CLIPClassifier
    finetuned: CLIPClassifier
    clip: nn.Module
    tokenizer: Callable[[list[str]], Tensor]
    class_names: list[str]
    templates: list[str]
    test_images: Tensor
    test_labels: Tensor
    source_images: Tensor
    source_labels: Tensor
    holdout_images: Tensor
    holdout_labels: Tensor
    shifts: dict[str, Shift]
    recipe: EmbeddedRecipe
    key: str
    cache_dir: Path
    data_root: Path
    info: dict[str, Any] = field(default_factory=dict)
    id_domain: str = ID_DOMAIN
    domains: tuple[str, ...] = DEFAULT_DOMAINS

    def stream(self, **kwargs: Any) -> Any:
        """The demo's stream over this world's test images (see :func:`embedded_stream`)."""
        return embedded_stream(self, **kwargs)


def cache_root() -> Path:
    """``$ADAWISE_CACHE``, else ``$XDG_CACHE_HOME/adawise``, else ``~/.cache/adawise``."""
    if os.environ.get("ADAWISE_CACHE"):
        return Path(os.environ["ADAWISE_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adawise"


def _data_fingerprint(*arrays: Tensor) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(tuple(a.shape)).encode())
        digest.update(a.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def world_key(recipe: EmbeddedRecipe, data_fingerprint: str) -> str:
    """Hash of the recipe, the training-code version and the data: the cache directory's key."""
    blob = json.dumps({"recipe": recipe.to_dict(), "code": CODE_VERSION, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def world_dir(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the world with ``key`` is cached."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / f"embedded-{key}"


def _grey3(images_u8: Tensor) -> Tensor:
    return fashion.to_float(images_u8).expand(-1, 3, -1, -1)


def _normalize(x: Tensor) -> Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _new_clip(recipe: EmbeddedRecipe) -> tuple[nn.Module, Callable[[list[str]], Tensor]]:
    torch.manual_seed(recipe.seed)
    clip, tokenizer = create_clip(recipe.clip_config())
    clip.visual.image_mean, clip.visual.image_std = MEAN, STD  # read by build_classifier
    return clip, tokenizer


def _cached_tokenizer(tokenizer: Callable[[list[str]], Tensor]) -> Callable[[list[str]], Tensor]:
    memo: dict[str, Tensor] = {}

    def tokenize(texts: list[str]) -> Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, tokenizer(missing), strict=True))
        return torch.stack([memo[t] for t in texts])

    return tokenize


@torch.no_grad()
def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 1000) -> float:
    correct = sum(int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
                  for i in range(0, len(images), batch))
    return correct / max(1, len(images))


def _train(recipe: EmbeddedRecipe, splits: dict[str, tuple[Tensor, Tensor]], progress: bool
           ) -> tuple[nn.Module, CLIPClassifier, CLIPClassifier, dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.train_threads)
    try:
        return _train_stages(recipe, splits, progress)
    finally:
        torch.set_num_threads(threads)


def _train_stages(recipe: EmbeddedRecipe, splits: dict[str, tuple[Tensor, Tensor]], progress: bool
                  ) -> tuple[nn.Module, CLIPClassifier, CLIPClassifier, dict[str, Any]]:
    clip, tokenizer = _new_clip(recipe)
    names = list(fashion.CLASS_NAMES)
    pre_x, pre_y = splits["pretrain"]
    t0 = time.perf_counter()
    pre_losses = pretrain(clip, _cached_tokenizer(tokenizer), fashion.to_float(pre_x), pre_y, names, _normalize,
                          recipe, progress)
    t1 = time.perf_counter()
    zeroshot = build_classifier(clip, tokenizer, names, list(ALL_TEMPLATES))
    finetuned = copy.deepcopy(zeroshot)
    ft_x, ft_y = splits["finetune"]
    ft_losses = finetune(finetuned, _grey3(ft_x), ft_y, recipe, progress)
    t2 = time.perf_counter()
    info = {"pretrain_seconds": round(t1 - t0, 1), "finetune_seconds": round(t2 - t1, 1),
            "pretrain_loss": [round(v, 4) for v in pre_losses], "finetune_loss": [round(v, 4) for v in ft_losses],
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    return clip, zeroshot, finetuned, info


def _save(directory: Path, recipe: EmbeddedRecipe, key: str, fingerprint: str, clip: nn.Module,
          zeroshot: nn.Module, finetuned: nn.Module, info: dict[str, Any]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    meta = {"adawise_embedded_key": key}
    hashes = {}
    for name, model in (("clip", clip), ("zeroshot", zeroshot), ("finetuned", finetuned)):
        save_state_dict(model.state_dict(), tmp / f"{name}.safetensors", meta)
        hashes[name] = weights_hash(model)
    doc = {"key": key, "code_version": CODE_VERSION, "data_fingerprint": fingerprint, "recipe": recipe.to_dict(),
           "weights_hash": hashes, "info": info, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / "recipe.json").write_text(json.dumps(doc, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def _load(directory: Path, recipe: EmbeddedRecipe, key: str
          ) -> tuple[nn.Module, Callable[[list[str]], Tensor], CLIPClassifier, CLIPClassifier, dict[str, Any]]:
    """Load and verify a cached world; raises on anything missing, mismatched or corrupt."""
    missing = [f for f in _FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}")
    doc = json.loads((directory / "recipe.json").read_text())
    if doc.get("key") != key:
        raise ValueError(f"recipe.json is for world {doc.get('key')}, expected {key}")
    clip, tokenizer = _new_clip(recipe)
    clip.load_state_dict(load_checkpoint(directory / "clip.safetensors"))
    head = torch.zeros(len(fashion.CLASS_NAMES), recipe.embed_dim)  # overwritten by the stored head
    zeroshot = CLIPClassifier(copy.deepcopy(clip.visual), head, 28, MEAN, STD)
    zeroshot.load_state_dict(load_checkpoint(directory / "zeroshot.safetensors"))
    finetuned = copy.deepcopy(zeroshot)
    finetuned.load_state_dict(load_checkpoint(directory / "finetuned.safetensors"))
    for name, model in (("clip", clip), ("zeroshot", zeroshot), ("finetuned", finetuned)):
        if weights_hash(model) != doc.get("weights_hash", {}).get(name):
            raise ValueError(f"{name}.safetensors does not match the hash recorded in recipe.json")
    return clip.eval(), tokenizer, zeroshot.eval(), finetuned.eval(), doc.get("info", {})


def load_embedded(recipe: EmbeddedRecipe | str | None = "full", data: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, retrain: bool = False,
                  progress: bool = True) -> EmbeddedWorld:
    """The embedded world: trained on first use (with progress bars), then loaded from the cache.

    Args:
        recipe: ``"full"`` (the demo's), ``"tiny"`` (tests), an :class:`EmbeddedRecipe` or a JSON file.
        data: directory of the Fashion-MNIST idx files (default: ``$ADAWISE_FASHION_MNIST`` or the
            Debian package's ``/usr/share/datasets/fashion-mnist``).
        cache_dir: the world's directory (default: ``cache_root()/embedded-<key>``).
        retrain: train again even if a valid cache exists.
        progress: show progress bars while training.

    Returns:
        An :class:`EmbeddedWorld` with ``zeroshot``, ``finetuned``, ``test_images``, ``test_labels``,
        ``class_names``, ``shifts``, ``source_*`` (fine-tuning data) and ``holdout_*``.
    """
    recipe = EmbeddedRecipe.resolve(recipe)
    root = fashion.find_root(data)
    train_x, train_y = fashion.load_split("train", root)
    test_x, test_y = fashion.load_split("test", root)
    fingerprint = _data_fingerprint(train_x, train_y, test_x, test_y)
    key = world_key(recipe, fingerprint)
    directory = world_dir(key, cache_dir)
    p, f, h = recipe.pretrain_size, recipe.finetune_size, recipe.holdout_size
    splits = {"pretrain": (train_x[:p], train_y[:p]), "finetune": (train_x[p : p + f], train_y[p : p + f]),
              "holdout": (train_x[-h:], train_y[-h:])}

    loaded = None
    if not retrain and directory.exists():
        try:
            loaded = _load(directory, recipe, key)
            log.info("embedded world %s loaded from %s", key, directory)
        except Exception as err:  # noqa: BLE001 - any defect of the cache means: rebuild it
            warnings.warn(f"embedded world cache at {directory} is unusable ({err}); rebuilding it", stacklevel=2)
    if loaded is None:
        log.info("training the embedded world %s (recipe %s) into %s", key, recipe.name, directory)
        clip, zeroshot, finetuned, info = _train(recipe, splits, progress)
        info["clean_accuracy"] = {"zeroshot": round(_accuracy(zeroshot, _grey3(test_x), test_y), 4),
                                  "finetuned": round(_accuracy(finetuned, _grey3(test_x), test_y), 4)}
        _save(directory, recipe, key, fingerprint, clip, zeroshot, finetuned, info)
        tokenizer = _new_clip(recipe)[1]
        info["trained"] = True
    else:
        clip, tokenizer, zeroshot, finetuned, info = loaded
        info = {**info, "trained": False}
    for model, role in ((zeroshot, "zeroshot"), (finetuned, "finetuned")):
        model.provenance = {"source": "embedded", "role": role, "world": key,
                            "path": str(directory / f"{role}.safetensors")}
        model.requires_grad_(False)
    return EmbeddedWorld(
        zeroshot=zeroshot, finetuned=finetuned, clip=clip.requires_grad_(False), tokenizer=tokenizer,
        class_names=list(fashion.CLASS_NAMES), templates=list(ALL_TEMPLATES),
        test_images=_grey3(test_x), test_labels=test_y,
        source_images=_grey3(splits["finetune"][0]), source_labels=splits["finetune"][1],
        holdout_images=_grey3(splits["holdout"][0]), holdout_labels=splits["holdout"][1],
        shifts=dict(SHIFTS), recipe=recipe, key=key, cache_dir=directory, data_root=root, info=info,
    )


def embedded_stream(world_or_spec: Any, **kwargs: Any) -> Any:
    """The embedded world's test stream; see :func:`streams.fashion.embedded_stream`."""
    return fashion.embedded_stream(world_or_spec, **kwargs)

