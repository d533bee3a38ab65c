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
           "to_float", "embedded_stream", "domain_images", "sample_plan", "scheduled_domains"]

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


#: sample orders accepted by :func:`embedded_stream` (``continual`` is the old name of ``shuffled``; any
#: ``dirichlet:<δ>`` too, see :mod:`streams.orders`)
ORDERS = ("continual", "shuffled", "class-sorted", "dirichlet", "dirichlet:0.01")


def embedded_stream(source: Any = None, *, domains: Any = None, order: str = "shuffled", per_domain: int = 2000,
                    batch_size: int = 64, seed: int = 0, data: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, progress: bool = False,
                    schedule: str | None = None) -> Stream:
    """The embedded world's test stream: the clean domain, then one shift after another.

    Every domain holds the *same* ``per_domain`` test images (a seeded subset of t10k, as ImageNet-C
    corrupts the same validation images for every corruption), shifted once with a seed derived from
    ``seed`` and the domain name and, per image, its t10k index (so an image's shift does not depend on
    which others were picked with it). Shifted images are quantised to 8 bits, as ImageNet-C's stored
    images are, which also lets them be cached.

    The sample order and the schedule of domains (:mod:`streams.orders`) combine:

    - ``order``: ``"shuffled"`` (default; ``"continual"`` is its old name) shuffles each domain with a
      per-domain seed, ``"class-sorted"`` sorts it by label (a batch holds one or two classes),
      ``"dirichlet"`` / ``"dirichlet:<δ>"`` gives Dirichlet-correlated labels (δ = 0.1 by default), all
      with the same images and shift draws, only the order differs;
    - ``schedule``: ``"continual"`` (default: the domains one after another), ``"reset_each_shift"``
      (the same batches; the run resets the method at every boundary, :func:`streams.schedules.setting_for`),
      ``"gradual"`` (each corruption at severities 1, 2, 3, 4, 5, 4, 3, 2, 1, domains named
      ``"<corruption>:<severity>"``; other shifts once) or ``"mixed"`` (every (domain, image) pair pooled
      and ordered by ``order``: each batch mixes the domains, ``Batch.domain`` is ``"mixed"`` and
      ``Batch.sample_domains`` names each sample's). ``order="mixed"`` etc. name the schedule as before.

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

    from streams.orders import resolve
    from streams.shifts import DEFAULT_DOMAINS, get_shift

    if isinstance(source, StreamSpec):
        spec = source
        if spec.source != "embedded":
            raise ValueError(f"embedded_stream: spec is for source {spec.source!r}, not 'embedded'")
        images, labels = _test_tensors(spec.opts.get("data"))
        sched, sample = resolve(spec.opts.get("sample_order", spec.order if spec.order == "class-sorted" else None),
                                None if spec.order == "class-sorted" else spec.order)
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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sched, sample = resolve(order, schedule)
        extra = {} if sample.kind == "shuffled" else {"sample_order": sample.spelled}
        spec = StreamSpec.make("embedded", domains, sched, batch_size, seed, per_domain=int(per_domain), data=root,
                               world=world, **extra)
    base_x, base_y, pick = domain_images(images, labels, int(spec.opts["per_domain"]), spec.seed)
    names = scheduled_domains(spec.domains, sched)
    shifted = []
    for name in tqdm(names, desc="shifting test images", disable=None if progress else True, leave=False):
        shifted.append(_shifted(base_x, name, zlib.crc32(f"{spec.seed}:{name}".encode()), cache_dir, indices=pick))
    pairs = sample_plan(base_y, names, sched, sample, spec.seed)
    if sched == "mixed":
        from streams.base import PooledStream

        bs = spec.batch_size
        plan = [pairs[s:s + bs] for s in range(0, len(pairs), bs)]
        return PooledStream(shifted, [base_y] * len(names), names, plan, spec=spec)
    parts = []
    for k, (name, x) in enumerate(zip(names, shifted, strict=True)):
        perm = pairs[pairs[:, 0] == k, 1]
        parts.append(TensorStream(x[perm], base_y[perm], name, spec.batch_size))
    return ConcatStream(parts, spec=spec)


def domain_images(images: Tensor, labels: Tensor, per_domain: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``per_domain`` test images (a seeded subset, in a seeded order) that every domain shifts:
    ``(images, labels, indices)``, the indices into the test set (which key each image's shift draws)."""
    n = min(int(per_domain), len(images))
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[pick].contiguous(), labels[pick], pick


def sample_plan(labels: Tensor, names: list[str], schedule: str, sample: Any, seed: int) -> Tensor:
    """The stream's (domain id, row) pairs in stream order, ``[len(names) * N, 2]``.

    ``labels`` are the ``N`` images' labels (the same images in every domain), ``names`` the domains in
    stream order (:func:`scheduled_domains`). Outside the mixed schedule the pairs run domain by domain
    (each domain in its own seeded order, batches cut within a domain); in the mixed schedule every pair is
    pooled and ordered at once (batches cut across domains). :func:`embedded_stream` and the objective lab
    (``benchmarks/objective_lab.py``) both order their samples with this function.
    """
    from streams.orders import arrange

    n, k = len(labels), len(names)

    def order_seed(key: int) -> int:
        return zlib.crc32(f"{key}:{sample.spelled}".encode())

    if schedule == "mixed":
        pairs = torch.stack([torch.arange(k).repeat_interleave(n), torch.arange(n).repeat(k)], 1)
        mixed_seed = zlib.crc32(f"{seed}:mixed".encode())
        perm = torch.randperm(n * k, generator=torch.Generator().manual_seed(mixed_seed))
        return pairs[arrange(labels.repeat(k), perm, sample, order_seed(mixed_seed))]
    out = []
    for d, name in enumerate(names):
        domain_seed = zlib.crc32(f"{seed}:{name}".encode())
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(domain_seed))
        rows = arrange(labels, perm, sample, order_seed(domain_seed))
        out.append(torch.stack([torch.full((n,), d, dtype=torch.long), rows], 1))
    return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.long)


def scheduled_domains(domains: tuple[str, ...] | list[str], schedule: str) -> list[str]:
    """The domains in stream order: ``gradual`` expands each corruption into its severities 1->5->1."""
    if schedule != "gradual":
        return list(domains)
    from streams.schedules import GRADUAL_SEVERITIES
    from streams.shifts import get_shift

    out: list[str] = []
    for name in domains:
        base = name.partition(":")[0]
        if get_shift(name).kind == "corruption":
            out += [f"{base}:{s}" for s in GRADUAL_SEVERITIES]
        else:
            out.append(name)
    return out


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
