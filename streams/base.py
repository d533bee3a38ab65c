"""Streams: what a method sees at test time, batch after batch.

A stream is an iterable of :class:`Batch` (images in [0, 1], labels, domain name, running index).
Normalisation belongs to the models, never to the stream. A frozen :class:`StreamSpec` plus its seed
describes a stream completely, so every method iterates the identical sequence.

Input validation lives where images are made and where they are consumed, not in the methods: a stream
yields one tensor per batch (folder streams decode, convert to RGB and centre-crop every file to one size,
skipping unreadable files; :class:`TensorStream` refuses anything but one tensor, e.g. a list of images of
mixed sizes), and the model checks what it is given (``CLIPClassifier`` wants ``[B, 3, H, W]`` floats and
resizes any one size to its resolution). Methods pass on whatever their wrapped models accept.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch", "Stream", "StreamSpec", "TensorStream", "ConcatStream", "PooledStream", "from_tensors", "concat",
           "class_indices"]


@dataclass(frozen=True)
class Batch:
    """One test batch: ``images`` [B, ...] (CLIP models take [B, 3, H, W] in [0, 1]), ``labels`` [B].

    ``sample_domains`` names each sample's domain where a batch mixes several (the ``mixed``
    schedule, whose ``domain`` is ``"mixed"``); ``None`` when every sample is in ``domain``. Like the
    labels, it is for scoring only: the loop never shows it to a method.
    """

    images: Tensor
    labels: Tensor
    domain: str
    index: int
    sample_domains: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StreamSpec:
    """Everything needed to rebuild a stream: source, domains, order, batch size, seed, options.

    ``options`` holds source-specific settings as a sorted tuple of (key, value) pairs so the spec
    stays hashable; use :meth:`make` to build one from keyword arguments.
    """

    source: str
    domains: tuple[str, ...] = ()
    order: str = "continual"
    batch_size: int = 64
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def make(cls, source: str, domains: Sequence[str] = (), order: str = "continual",
             batch_size: int = 64, seed: int = 0, **options: Any) -> StreamSpec:
        """Build a spec, storing ``options`` as a sorted hashable tuple."""
        return cls(source, tuple(domains), order, int(batch_size), int(seed), tuple(sorted(options.items())))

    @property
    def opts(self) -> dict[str, Any]:
        """The source-specific options as a dict."""
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (written into every log header)."""
        d = asdict(self)
        d["domains"] = list(self.domains)
        d["options"] = {k: v for k, v in self.options}
        return d

    def config_hash(self) -> str:
        """Short stable hash of the spec (identifies the stream in logs and caches)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class Stream(abc.ABC):
    """An iterable of :class:`Batch`. Iterating twice yields the identical sequence."""

    spec: StreamSpec | None = None
    #: size of the label space when the source knows it (e.g. 200 for ImageNet-R); ``run_stream`` then
    #: refuses a method whose logits have another number of classes
    num_classes: int | None = None

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of inputs that could not be read

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Batch]: ...

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of batches."""

    @property
    @abc.abstractmethod
    def domains(self) -> list[str]:
        """Domain names in the order they first appear."""

    def describe(self) -> dict[str, Any]:
        """What a log header records about the stream."""
        return {
            "type": type(self).__name__,
            "batches": len(self),
            "domains": self.domains,
            "spec": self.spec.to_dict() if self.spec else None,
            "spec_hash": self.spec.config_hash() if self.spec else None,
        }


def class_indices(labels: Any) -> Tensor:
    """``labels`` as int64 class indices ``[N]``; one-hot ``[N, C]`` labels, bool labels and floats that
    are not whole numbers (which a cast would truncate, 1.9 -> 1) are refused with a message."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        hint = " (one-hot labels? pass labels.argmax(1))" if labels.ndim == 2 else ""
        raise ValueError(f"labels must be class indices of shape [N], got shape {tuple(labels.shape)}{hint}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.is_floating_point():
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not bool(whole.all()):
            bad = labels[~whole][:3].tolist()
            raise TypeError(f"labels must be integer class indices, got {labels.dtype} values such as {bad} (a cast "
                            "would truncate them); pass the class index of each image")
    return labels.long()


class TensorStream(Stream):
    """Batches of an in-memory tensor pair, all in one domain, in order (last batch may be partial)."""

    def __init__(self, images: Tensor, labels: Tensor, domain: str, batch_size: int,
                 spec: StreamSpec | None = None) -> None:
        super().__init__()
        if not isinstance(images, Tensor):
            sizes = sorted({tuple(x.shape) for x in images if isinstance(x, Tensor)})[:4] if isinstance(
                images, (list, tuple)) else []
            raise TypeError(f"images must be one tensor [N, ...] (e.g. [N, 3, H, W] in [0, 1]), got "
                            f"{type(images).__name__}" + (f" of tensors shaped {sizes}" if sizes else "")
                            + "; resize or centre-crop images of different sizes to one size, then torch.stack")
        labels = class_indices(labels)
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.domain, self.batch_size = str(domain), int(batch_size)
        self.spec = spec

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    @property
    def domains(self) -> list[str]:
        return [self.domain] if len(self.images) else []

    def __iter__(self) -> Iterator[Batch]:
        for i, start in enumerate(range(0, len(self.images), self.batch_size)):
            end = start + self.batch_size
            yield Batch(self.images[start:end], self.labels[start:end], self.domain, i)


class ConcatStream(Stream):
    """Several streams one after another; batch indices run on across the parts."""

    def __init__(self, parts: Sequence[Stream], spec: StreamSpec | None = None) -> None:
        super().__init__()
        self.parts = list(parts)
        self.spec = spec

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        """The parts' label-space size when they all know and agree on it, else ``None``."""
        sizes = {getattr(p, "num_classes", None) for p in self.parts}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(d for p in self.parts for d in p.domains))

    def __iter__(self) -> Iterator[Batch]:
        index = 0
        for part in self.parts:
            for batch in part:
                yield dataclasses.replace(batch, index=index)
                index += 1
            self.skipped.extend(s for s in part.skipped if s not in self.skipped)


class PooledStream(Stream):
    """Batches that gather images from several in-memory domains (the ``mixed`` schedule).

    ``parts[d]`` holds domain ``d``'s images and ``labels[d]`` its labels; each planned batch is a
    ``[b, 2]`` long tensor of (domain id, row) pairs. Every batch has the domain ``domain`` and names
    each sample's domain in ``Batch.sample_domains``.
    """

    def __init__(self, parts: Sequence[Tensor], labels: Sequence[Tensor], names: Sequence[str],
                 plan: Sequence[Tensor], domain: str = "mixed", spec: StreamSpec | None = None) -> None:
        super().__init__()
        if not (len(parts) == len(labels) == len(names)):
            raise ValueError(f"PooledStream: {len(parts)} image parts, {len(labels)} label parts, {len(names)} names")
        self.parts, self.names, self.domain, self.spec = list(parts), [str(n) for n in names], str(domain), spec
        self.labels = [torch.as_tensor(y, dtype=torch.long) for y in labels]
        self.plan = [torch.as_tensor(p, dtype=torch.long).reshape(-1, 2) for p in plan]

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def domains(self) -> list[str]:
        return [self.domain] if self.plan else []

    @property
    def sample_domain_names(self) -> list[str]:
        """The pooled domains, in the order they were given."""
        return list(self.names)

    def __iter__(self) -> Iterator[Batch]:
        for i, pairs in enumerate(self.plan):
            d, rows = pairs[:, 0], pairs[:, 1]
            first = self.parts[int(d[0])]
            images = torch.empty((len(pairs), *first.shape[1:]), dtype=first.dtype)
            labels = torch.empty(len(pairs), dtype=torch.long)
            for k in torch.unique(d).tolist():
                at = d == k
                images[at] = self.parts[k][rows[at]]
                labels[at] = self.labels[k][rows[at]]
            yield Batch(images, labels, self.domain, i, tuple(self.names[k] for k in d.tolist()))


def from_tensors(images: Tensor, labels: Tensor, domain: str = "default", batch_size: int = 64) -> Stream:
    """A stream over in-memory tensors, one domain, fixed order."""
    return TensorStream(images, labels, domain, batch_size)


def concat(*streams: Stream) -> Stream:
    """Concatenate streams (e.g. one per domain) into one continual stream."""
    return ConcatStream(streams)
