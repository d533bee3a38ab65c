"""Fashion-MNIST from its idx.gz files: the image source of the embedded world.

Dataset: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms" (2017). Debian/Ubuntu ship it as the package ``dataset-fashion-mnist``, which
installs the four files under ``/usr/share/datasets/fashion-mnist/``::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (60,000 images)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (10,000 images)

Any directory holding these four files (gzipped or not) can be given instead. Images are 28x28 grey,
returned as uint8 ``[N, 28, 28]`` tensors; :func:`to_float` turns them into ``[N, 1, 28, 28]`` in [0, 1].
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streams.base import ConcatStream, Stream, StreamSpec, TensorStream

__all__ = ["DEFAULT_ROOT", "CLASS_NAMES", "SPLITS", "ORDERS", "FashionMNISTError", "find_root", "load_split",
           "to_float", "embedded_stream"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
#: the ten labels in label order, worded for prompts (the official names are "T-shirt/top", ...)
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
SPLITS = {"train": ("train", 60000), "test": ("t10k", 10000)}
_INSTALL_HINT = (
    "Install the Debian package (`apt-get install -y dataset-fashion-mnist`, files under "
    f"{DEFAULT_ROOT}) or pass a directory holding the four Fashion-MNIST idx files (--data DIR)."
)


class FashionMNISTError(RuntimeError):
    """Fashion-MNIST files are missing or unreadable; the message names the path and the fix."""


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The directory to read from: ``root``, else ``$ADAWISE_FASHION_MNIST``, else the Debian path."""
    chosen = root or os.environ.get("ADAWISE_FASHION_MNIST") or DEFAULT_ROOT
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise FashionMNISTError(f"Fashion-MNIST directory not found: {path}. {_INSTALL_HINT}")
    return path


def _locate(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FashionMNISTError(
        f"Fashion-MNIST file missing: {root / (stem + '.gz')} (nor {stem} unzipped). {_INSTALL_HINT}"
    )


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Parse one idx file (magic 0x0000 08 <ndim>, big-endian sizes, uint8 payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise FashionMNISTError(f"cannot read {path}: {err}. The file looks corrupt; {_INSTALL_HINT}") from None
    if len(data) < 4 + 4 * expect_dims:
        raise FashionMNISTError(f"{path} is truncated ({len(data)} bytes). {_INSTALL_HINT}")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim != expect_dims:
        raise FashionMNISTError(
            f"{path} is not a uint8 idx file with {expect_dims} dimension(s) "
            f"(header {data[:4].hex()}). {_INSTALL_HINT}"
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = data[4 + 4 * ndim :]
    if len(payload) != int(np.prod(dims)):
        raise FashionMNISTError(
            f"{path}: header promises {dims} = {int(np.prod(dims))} bytes, file holds {len(payload)}. {_INSTALL_HINT}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def load_split(split: str = "train", root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of ``"train"`` (60k) or ``"test"`` (10k)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    base = find_root(root)
    prefix, _ = SPLITS[split]
    images = _read_idx(_locate(base, f"{prefix}-images-idx3-ubyte"), 3)
    labels = _read_idx(_locate(base, f"{prefix}-labels-idx1-ubyte"), 1)
    if len(images) != len(labels):
        raise FashionMNISTError(f"{base}: {split} has {len(images)} images but {len(labels)} labels. {_INSTALL_HINT}")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise FashionMNISTError(f"{base}: {split} labels exceed {len(CLASS_NAMES) - 1}; not Fashion-MNIST?")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_float(images: Tensor) -> Tensor:
    """uint8 ``[N, 28, 28]`` -> float ``[N, 1, 28, 28]`` in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


#: image orders within each domain ("shuffled" is another name for the default, "continual")
ORDERS = ("continual", "shuffled", "class-sorted")


def _canonical_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose from {', '.join(ORDERS)}")
    return "continual" if order == "shuffled" else order


def embedded_stream(source: Any = None, *, domains: Any = None, order: str = "continual", per_domain: int = 2000,
                    batch_size: int = 64, seed: int = 0, data: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, progress: bool = False) -> Stream:
    """The embedded world's test stream: the clean domain, then one shift after another.

    Every domain holds the *same* ``per_domain`` test images (a seeded subset of t10k, as ImageNet-C
    corrupts the same validation images for every corruption), shifted once with a seed derived from
    ``seed`` and the domain name and, per image, its t10k index (so an image's shift does not depend on
    which others were picked with it), then ordered: ``"continual"`` (alias ``"shuffled"``) shuffles them
    with a per-domain seed, ``"class-sorted"`` sorts them by label so a batch holds one or two classes
    (same images and same shift draws as the shuffled stream, only the order differs). Shifted images
    are quantised to 8 bits, as ImageNet-C's stored images are, which also lets them be cached.

    Args:
        source: an object with ``test_images``/``test_labels`` (an ``EmbeddedWorld``), a
            :class:`StreamSpec` made by this function (rebuilds the identical stream), or ``None``
            (reads t10k from ``data``).
        domains: shift names (:data:`streams.shifts.DEFAULT_DOMAINS` by default), in stream order.
        per_domain: images per domain (at most 10,000).
        data: Fashion-MNIST directory when the images are read here.
        cache_dir: keep each shifted domain there (uint8 safetensors keyed by the shift's name, seed,
            input images and the shift code), so later runs skip the slow shifts (frost, snow). A world
            as ``source`` defaults to its ``streams_dir`` (shared by every world); ``None`` otherwise.
    """
    from tqdm.auto import tqdm

    from streams.shifts import DEFAULT_DOMAINS, get_shift

    if isinstance(source, StreamSpec):
        spec = source
        if spec.source != "embedded":
            raise ValueError(f"embedded_stream: spec is for source {spec.source!r}, not 'embedded'")
        images, labels = _test_tensors(spec.opts.get("data"))
    else:
        if source is None:
            images, labels = _test_tensors(data)
            root, world = str(find_root(data)), None
        else:
            images, labels = source.test_images, source.test_labels
            root, world = str(getattr(source, "data_root", data) or ""), getattr(source, "key", None)
            if cache_dir is None:
                cache_dir = getattr(source, "streams_dir", None)
        domains = tuple(domains or DEFAULT_DOMAINS)
        for name in domains:
            get_shift(name)  # fail early on unknown names
        if per_domain < 1:
            raise ValueError(f"per_domain must be >= 1, got {per_domain}")
        spec = StreamSpec.make("embedded", domains, _canonical_order(order), batch_size, seed,
                               per_domain=int(per_domain), data=root, world=world)
    n = min(int(spec.opts["per_domain"]), len(images))
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(spec.seed))[:n]
    base_x, base_y = images[pick].contiguous(), labels[pick]
    parts = []
    for name in tqdm(spec.domains, desc="shifting test images", disable=not progress, leave=False):
        domain_seed = zlib.crc32(f"{spec.seed}:{name}".encode())
        shifted = _shifted(base_x, name, domain_seed, cache_dir, indices=pick)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(domain_seed))
        if spec.order == "class-sorted":
            perm = perm[torch.argsort(base_y[perm], stable=True)]
        parts.append(TensorStream(shifted[perm], base_y[perm], name, spec.batch_size))
    return ConcatStream(parts, spec=spec)


#: every module that decides what a shift computes: ``streams.shifts`` and all the ``streams`` modules it
#: imports, directly or not (``tests/test_embedded.py`` checks that none is missing)
SHIFT_MODULES: tuple[str, ...] = (
    "streams.shifts", "streams.corruptions", "streams._corruption_ops", "streams._imageops", "streams._noise",
    "streams._rng", "streams._poisson", "streams._frost", "streams._jpeg", "streams._levels", "streams._pixelate",
)


def _shift_code_hash() -> str:
    """Hash of the source of every module that decides what a shift computes (:data:`SHIFT_MODULES`)."""
    import importlib

    digest = hashlib.sha256()
    for module in SHIFT_MODULES:
        digest.update(Path(importlib.import_module(module).__file__).read_bytes())
    return digest.hexdigest()[:16]


def _shifted(images: Tensor, name: str, seed: int, cache_dir: str | os.PathLike | None,
             indices: Tensor | None = None) -> Tensor:
    """``apply_shift`` quantised to 8 bits; with ``cache_dir``, read from / written to the disk cache.

    ``indices`` are the images' indices in the dataset (default: their positions): image ``i``'s random
    draws depend only on ``seed`` and ``indices[i]``.
    """
    from safetensors.torch import load_file, save_file

    from streams.shifts import apply_shift

    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{name}:{seed}:{tuple(images.shape)}:{_shift_code_hash()}".encode())
        digest.update(images.mul(255).round().to(torch.uint8).numpy().tobytes())
        if indices is not None:
            digest.update(torch.as_tensor(indices, dtype=torch.int64).numpy().tobytes())
        path = Path(cache_dir) / f"{name.replace(':', '-')}-{digest.hexdigest()[:16]}.safetensors"
        if path.is_file():
            try:
                q = load_file(str(path))["images"]
                return q.float().div_(255.0).expand(-1, 3, -1, -1)
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                pass
    q = apply_shift(images, name, seed=seed, indices=indices).mul_(255.0).round_().to(torch.uint8)
    if bool((q[:, :1] == q).all()):
        q = q[:, :1].contiguous()  # grey: one channel stored, replicated on reading
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"images": q}, str(tmp))
            os.replace(tmp, path)
        except OSError as err:  # a file where the cache folder belongs, a read-only cache: run without it
            import warnings

            warnings.warn(f"cannot cache the shifted domain {name!r} in {path.parent} ({err}); computing it each time",
                          stacklevel=2)
            if tmp.is_file():
                tmp.unlink()
    return q.float().div_(255.0).expand(-1, 3, -1, -1)


def _test_tensors(data: str | os.PathLike | None) -> tuple[Tensor, Tensor]:
    images, labels = load_split("test", data or None)
    return to_float(images).expand(-1, 3, -1, -1), labels
