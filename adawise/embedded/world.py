"""The embedded world: a small CLIP pretrained and fine-tuned on Fashion-MNIST, trained once and cached.

It reproduces, at a size that trains in minutes on two CPU cores, the setting of robust fine-tuning
(CLIP -> ImageNet in WiSE-FT, Wortsman et al., CVPR 2022):

- *pretraining* (the "web"): an open_clip ``CLIP`` with a custom small config (ViT image tower, text
  transformer over open_clip's bundled BPE tokenizer, so any prompt can be encoded) is trained
  contrastively on ``train[:pretrain_size]`` under broad augmentation with captions that describe
  the augmentation and are sometimes wrong (see :mod:`adawise.embedded.train`);
- *zero-shot model*: its image tower + the zero-shot head from its own text tower (every caption
  template, :data:`~adawise.embedded.train.ALL_TEMPLATES`);
- *fine-tuned model* (the recipe's ``endpoint``, :data:`ENDPOINTS`): trained on clean, disjoint images
  ``train[pretrain_size : pretrain_size + finetune_size]`` by end-to-end cross-entropy (``"e2e"``, head
  initialised from the zero-shot head), by R-Adapter (``"r-adapter"``, :mod:`adawise.embedded.r_adapter`) or
  by dual risk minimisation (``"drm"``, :mod:`adawise.embedded.drm`); always a :class:`CLIPClassifier` with
  the zero-shot model's keys. ``train[-holdout_size:]`` is held out (temperature fitting, VRF);
- *test*: the 10,000 t10k images, under the shifts of :mod:`streams.shifts`.

``load_embedded()`` builds the world (progress bars) or loads it from the cache directory
``$ADAWISE_CACHE`` (default ``~/.cache/adawise``) / ``embedded-<key>/``, the key hashing the recipe fields
that matter to that endpoint, the training code version and the data. Pretraining is shared by the
endpoints: it is cached once in ``pretrained-<key>/`` (key: the pretraining fields only) and reused. A
corrupt cache is rebuilt with a warning: damaged weights (their recorded hashes), an edited ``recipe.json``
/ ``pretrained.json`` (its own ``doc_hash``, which covers the training figures in ``info``; caches written
before it existed carry none and are read as they are), or a file or symlink where the folder belongs.
Folders are created with the umask's mode (0755 typically), so a shared cache works for every user who
may read it; a build holds a lock, so two processes never build one world at once. A world missing from the
cache whose weights the package ships (the default one) is copied from them instead of trained, after
checking their SHA-256 and the hash of the code that made them (:mod:`adawise.embedded.shipped`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adawise.embedded.endpoints import ENDPOINTS as ENDPOINT_TABLE
from adawise.embedded.recipe import ENDPOINTS, FINETUNE_FIELDS, EmbeddedRecipe
from adawise.embedded.stages import finetune_stage, new_clip, pretrain_stage
from adawise.embedded.train import ALL_TEMPLATES, MEAN, STD, Tokenizer, grey3
from adawise.errors import AccessError
from adawise.models.checkpoints import default_mode, load_checkpoint, save_state_dict, weights_hash
from adawise.models.clip import CLIPClassifier
from streams import fashion
from streams.shifts import DEFAULT_DOMAINS, ID_DOMAIN, SHIFTS, Shift

__all__ = ["EmbeddedRecipe", "EmbeddedWorld", "ENDPOINTS", "MEAN", "STD", "load_embedded", "cache_root", "world_dir",
           "world_key", "pretrain_key", "embedded_stream"]

log = logging.getLogger(__name__)

#: bump when the training code changes what a recipe produces (invalidates caches)
CODE_VERSION = 2  # 2: description captions in pretraining; shared pretraining cache; endpoints
_FILES = ("clip.safetensors", "zeroshot.safetensors", "finetuned.safetensors", "recipe.json")
_PRETRAINED_FILES = ("clip.safetensors", "zeroshot.safetensors", "pretrained.json")


@dataclass
class EmbeddedWorld:
    """The bundled world: two classifiers on [B, 3, 28, 28] images in [0, 1], the data, the shifts.

    Image tensors are read-only broadcast views ``[N, 3, 28, 28]`` of the grey images (no copy);
    call ``.contiguous()`` before editing them in place.
    """

    zeroshot: CLIPClassifier
    finetuned: CLIPClassifier
    clip: nn.Module
    tokenizer: Tokenizer
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
    #: where the shifted test domains are cached (they depend on the images and the shift, not on the
    #: weights, so every endpoint's world shares ``cache_root()/streams``)
    streams_dir: Path | None = None
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


def _is_endpoint_field(name: str) -> bool:
    return any(e.field_prefix and name.startswith(e.field_prefix) for e in ENDPOINT_TABLE.values())


def _pretrain_fields(recipe: EmbeddedRecipe) -> dict[str, Any]:
    """The fields pretraining reads: all but the name, the endpoint and the fine-tuning stage's fields."""
    return {k: v for k, v in recipe.to_dict().items()
            if k not in ("name", "endpoint", *FINETUNE_FIELDS) and not _is_endpoint_field(k)}


def _hash(blob: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_key(recipe: EmbeddedRecipe, data_fingerprint: str) -> str:
    """Hash of the pretraining fields, the training-code version and the data: shared by every endpoint."""
    return _hash({"pretrain": _pretrain_fields(recipe), "code": CODE_VERSION, "data": data_fingerprint})


def world_key(recipe: EmbeddedRecipe, data_fingerprint: str) -> str:
    """The world's cache key: the pretraining key, the fine-tuning fields, the endpoint and its own fields.

    Another endpoint's fields (and the recipe's name) do not enter it, so changing an R-Adapter field
    leaves the e2e and drm worlds' keys unchanged.
    """
    prefix = ENDPOINT_TABLE[recipe.endpoint].field_prefix
    own = {k: v for k, v in recipe.to_dict().items()
           if k in FINETUNE_FIELDS or (prefix is not None and k.startswith(prefix))}
    return _hash({"pretrained": pretrain_key(recipe, data_fingerprint), "endpoint": recipe.endpoint,
                  "finetune": own, "code": CODE_VERSION})


def world_dir(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the world with ``key`` is cached."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / f"embedded-{key}"


@torch.no_grad()
def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 1000) -> float:
    correct = sum(int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
                  for i in range(0, len(images), batch))
    return correct / max(1, len(images))


def _doc_hash(doc: dict[str, Any]) -> str:
    """Hash of a cache document (every field but ``doc_hash`` itself), so an edited ``info`` is noticed."""
    return hashlib.sha256(json.dumps({k: v for k, v in doc.items() if k != "doc_hash"}, sort_keys=True).encode()
                          ).hexdigest()[:16]


def _cache_parent(directory: Path) -> None:
    """Create the folder that holds ``directory``, or say clearly why it cannot be."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AccessError(f"the cache folder {directory.parent} (or a folder above it) is a file; remove it or set "
                          "ADAWISE_CACHE to a folder") from None
    except PermissionError:
        raise AccessError(f"the cache folder {directory.parent} is not writable by this user; set ADAWISE_CACHE "
                          "to a folder you can write") from None


def _remove(path: Path) -> None:
    """Remove a cache entry, whatever it is: a folder, a file, or a symlink (the link, not its target)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def _building(directory: Path) -> Iterator[None]:
    """Hold the build lock of a cache entry (blocking: a second builder waits, then finds it built)."""
    from filelock import FileLock

    _cache_parent(directory)
    lock = FileLock(str(directory.parent / f".{directory.name}.lock"))
    try:
        lock.acquire()
    except OSError:  # a read-only shared cache: build without the lock (the write will say why it fails)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _write_dir(directory: Path, models: dict[str, nn.Module], doc: dict[str, Any], doc_name: str) -> None:
    """Write ``<name>.safetensors`` for each model and ``doc_name`` (with their hashes) atomically."""
    _cache_parent(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it private (0700): a shared cache needs the umask
    meta = {"adawise_embedded_key": doc["key"]}
    hashes = {}
    for name, model in models.items():
        save_state_dict(model.state_dict(), tmp / f"{name}.safetensors", meta)
        hashes[name] = weights_hash(model)
    doc = {**doc, "code_version": CODE_VERSION, "weights_hash": hashes,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    doc["doc_hash"] = _doc_hash(doc)
    (tmp / doc_name).write_text(json.dumps(doc, indent=2) + "\n")
    _remove(directory)
    os.replace(tmp, directory)


def _read_dir(directory: Path, recipe: EmbeddedRecipe, key: str, files: tuple[str, ...], doc_name: str
              ) -> tuple[nn.Module, Tokenizer, dict[str, CLIPClassifier], dict[str, Any]]:
    """Load and verify a cached directory; raises on anything missing, mismatched or corrupt."""
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}")
    doc = json.loads((directory / doc_name).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{doc_name} is not a JSON object")
    if "doc_hash" in doc and doc["doc_hash"] != _doc_hash(doc):
        raise ValueError(f"{doc_name} was edited after it was written (its doc_hash does not match)")
    if doc.get("key") != key:
        raise ValueError(f"{doc_name} is for {doc.get('key')}, expected {key}")
    clip, tokenizer = new_clip(recipe)
    clip.load_state_dict(load_checkpoint(directory / "clip.safetensors"))
    head = torch.zeros(len(fashion.CLASS_NAMES), recipe.embed_dim)  # overwritten by the stored head
    template = CLIPClassifier(copy.deepcopy(clip.visual), head, 28, MEAN, STD)
    models: dict[str, CLIPClassifier] = {}
    roles = [f.removesuffix(".safetensors") for f in files if f.endswith(".safetensors") and f != "clip.safetensors"]
    for name in roles:
        models[name] = copy.deepcopy(template)
        models[name].load_state_dict(load_checkpoint(directory / f"{name}.safetensors"))
    for name, model in (("clip", clip), *models.items()):
        if weights_hash(model) != doc.get("weights_hash", {}).get(name):
            raise ValueError(f"{name}.safetensors does not match the hash recorded in {doc_name}")
    return clip.eval(), tokenizer, {k: m.eval() for k, m in models.items()}, doc


def _pretrained(recipe: EmbeddedRecipe, fingerprint: str, splits: dict[str, tuple[Tensor, Tensor]], retrain: bool,
                progress: bool) -> tuple[nn.Module, Tokenizer, CLIPClassifier, dict[str, Any]]:
    """The pretrained CLIP and zero-shot classifier: from ``cache_root()/pretrained-<key>/`` or trained there."""
    key = pretrain_key(recipe, fingerprint)
    directory = cache_root() / f"pretrained-{key}"
    if not retrain and directory.exists():
        try:
            clip, tokenizer, models, doc = _read_dir(directory, recipe, key, _PRETRAINED_FILES, "pretrained.json")
            log.info("pretrained CLIP %s loaded from %s", key, directory)
            return clip, tokenizer, models["zeroshot"], {**doc.get("info", {}), "key": key, "trained": False}
        except Exception as err:  # noqa: BLE001 - any defect of the cache means: rebuild it
            warnings.warn(f"pretrained CLIP cache at {directory} is unusable ({err}); rebuilding it", stacklevel=3)
    with _building(directory):
        if not retrain and directory.is_dir():  # another process built it while this one waited for the lock
            try:
                clip, tokenizer, models, doc = _read_dir(directory, recipe, key, _PRETRAINED_FILES, "pretrained.json")
                return clip, tokenizer, models["zeroshot"], {**doc.get("info", {}), "key": key, "trained": False}
            except Exception:  # noqa: BLE001 - still unusable: build it here
                pass
        log.info("pretraining the embedded world's CLIP %s (recipe %s) into %s", key, recipe.name, directory)
        clip, tokenizer, zeroshot, info = pretrain_stage(recipe, splits, progress)
        _write_dir(directory, {"clip": clip, "zeroshot": zeroshot},
                   {"key": key, "data_fingerprint": fingerprint, "pretrain_fields": _pretrain_fields(recipe),
                    "info": info}, "pretrained.json")
    return clip, tokenizer, zeroshot, {**info, "key": key, "trained": True}


def load_embedded(recipe: EmbeddedRecipe | str | None = "full", data: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, retrain: bool | str = False,
                  progress: bool = True, train: bool = True, shipped: bool | str | os.PathLike = True
                  ) -> EmbeddedWorld:
    """The embedded world: trained on first use (with progress bars), then loaded from the cache.

    Args:
        recipe: ``"full"`` (the demo's), ``"tiny"`` (tests), an endpoint name (``"e2e"``, ``"r-adapter"``,
            ``"drm"``: the full world with that fine-tuned endpoint), ``"tiny:<endpoint>"``, an
            :class:`EmbeddedRecipe` or a JSON file.
        data: directory of the Fashion-MNIST idx files (default: ``$ADAWISE_FASHION_MNIST`` or the
            Debian package's ``/usr/share/datasets/fashion-mnist``).
        cache_dir: the world's directory (default: ``cache_root()/embedded-<key>``); the shared pretraining
            is always cached in ``cache_root()/pretrained-<key>``.
        retrain: ``True``: train again (pretraining included) even if a valid cache exists;
            ``"endpoint"``: only the fine-tuning stage (the cached pretraining is reused).
        progress: show progress bars while training.
        train: ``False``: load only (benchmarks that must never train); a missing or unusable cache
            raises :class:`FileNotFoundError` instead of training.
        shipped: ``True``: when the cache lacks the world, use the weights shipped with the package if their
            key and code hash match and every file hashes as recorded (:mod:`adawise.embedded.shipped`; copied
            into the cache), else train; ``False``: never (a cache entry copied from them is trained again);
            a folder: shipped weights from there instead of the package's (tests).

    Returns:
        An :class:`EmbeddedWorld` with ``zeroshot``, ``finetuned`` (the recipe's endpoint), ``test_images``,
        ``test_labels``, ``class_names``, ``shifts``, ``source_*`` (fine-tuning data) and ``holdout_*``;
        ``info`` holds the pretraining's and the endpoint's training figures and clean accuracies.
    """
    if retrain not in (False, True, "endpoint"):
        raise ValueError(f"retrain must be True, False or 'endpoint', got {retrain!r}")
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

    from adawise.embedded import shipped as ship

    pretrained_dir = cache_root() / f"pretrained-{pretrain_key(recipe, fingerprint)}"
    if shipped is False and not retrain and ship.is_materialised(directory, pretrained_dir):
        log.warning("shipped weights not wanted: the cache of world %s holds a copy of them, training it", key)
        retrain = True
    loaded = None
    if not retrain and directory.exists():
        try:
            clip, tokenizer, models, doc = _read_dir(directory, recipe, key, _FILES, "recipe.json")
            loaded = (clip, tokenizer, models["zeroshot"], models["finetuned"], doc.get("info", {}))
            log.info("embedded world %s loaded from %s", key, directory)
        except Exception as err:  # noqa: BLE001 - any defect of the cache means: rebuild it
            warnings.warn(f"embedded world cache at {directory} is unusable ({err}); rebuilding it", stacklevel=2)
    if loaded is None and not retrain and shipped is not False:
        with _building(directory), _building(pretrained_dir):
            shipped_root = ship.SHIPPED_ROOT if shipped is True else Path(shipped)
            if ship.materialise(key, directory, pretrained_dir, shipped_root):
                clip, tokenizer, models, doc = _read_dir(directory, recipe, key, _FILES, "recipe.json")
                loaded = (clip, tokenizer, models["zeroshot"], models["finetuned"], {**doc["info"], "shipped": True})
    if loaded is None and not train:
        raise FileNotFoundError(f"embedded world {key} (recipe {recipe.name}, endpoint {recipe.endpoint}) is not "
                                f"cached in {directory}; build it once with `adawise demo` (or load_embedded())")
    if loaded is None:
        with _building(directory):
            if not retrain and directory.is_dir():  # built by another process while this one waited
                try:
                    clip, tokenizer, models, doc = _read_dir(directory, recipe, key, _FILES, "recipe.json")
                    loaded = (clip, tokenizer, models["zeroshot"], models["finetuned"], doc.get("info", {}))
                except Exception:  # noqa: BLE001 - still unusable: build it here
                    pass
            built = None if loaded is not None else _build_world(recipe, fingerprint, splits, retrain, progress,
                                                                 directory, key, test_x, test_y)
    if loaded is not None:
        clip, tokenizer, zeroshot, finetuned, info = loaded
        info = {**info, "trained": False, "pretrained_trained": False}
    else:
        clip, tokenizer, zeroshot, finetuned, info = built
    for model, role in ((zeroshot, "zeroshot"), (finetuned, "finetuned")):
        model.provenance = {"source": "embedded", "role": role, "world": key, "endpoint": recipe.endpoint,
                            "path": str(directory / f"{role}.safetensors")}
        model.requires_grad_(False)
    return EmbeddedWorld(
        zeroshot=zeroshot, finetuned=finetuned, clip=clip.requires_grad_(False), tokenizer=tokenizer,
        class_names=list(fashion.CLASS_NAMES), templates=list(ALL_TEMPLATES),
        test_images=grey3(test_x), test_labels=test_y,
        source_images=grey3(splits["finetune"][0]), source_labels=splits["finetune"][1],
        holdout_images=grey3(splits["holdout"][0]), holdout_labels=splits["holdout"][1],
        shifts=dict(SHIFTS), recipe=recipe, key=key, cache_dir=directory, data_root=root, info=info,
        streams_dir=cache_root() / "streams" if cache_dir is None else directory / "streams",
    )


def _build_world(recipe: EmbeddedRecipe, fingerprint: str, splits: dict[str, tuple[Tensor, Tensor]],
                 retrain: bool | str, progress: bool, directory: Path, key: str, test_x: Tensor, test_y: Tensor
                 ) -> tuple[nn.Module, Tokenizer, CLIPClassifier, CLIPClassifier, dict[str, Any]]:
    """Pretrain (or load the shared pretraining), fine-tune the endpoint, write the world's folder."""
    clip, tokenizer, zeroshot, pre_info = _pretrained(recipe, fingerprint, splits, retrain is True, progress)
    log.info("fine-tuning the embedded world %s (recipe %s, endpoint %s) into %s", key, recipe.name,
             recipe.endpoint, directory)
    finetuned, ft_info = finetune_stage(recipe, clip, tokenizer, zeroshot, splits, progress)
    pretrained_trained, pretrained_key = pre_info.pop("trained"), pre_info.pop("key")
    info = {**pre_info, "pretrained_key": pretrained_key, **ft_info}
    info["clean_accuracy"] = {"zeroshot": round(_accuracy(zeroshot, grey3(test_x), test_y), 4),
                              "finetuned": round(_accuracy(finetuned, grey3(test_x), test_y), 4)}
    _write_dir(directory, {"clip": clip, "zeroshot": zeroshot, "finetuned": finetuned},
               {"key": key, "data_fingerprint": fingerprint, "recipe": recipe.to_dict(), "info": info},
               "recipe.json")
    return clip, tokenizer, zeroshot, finetuned, {**info, "trained": True, "pretrained_trained": pretrained_trained}


def embedded_stream(world_or_spec: Any, **kwargs: Any) -> Any:
    """The embedded world's test stream; see :func:`streams.fashion.embedded_stream`."""
    return fashion.embedded_stream(world_or_spec, **kwargs)

