"""ImageNet-R as a test stream: 200 wnid folders, rendition domains from file names, 1000->200 mask.

Dataset: Hendrycks et al., "The Many Faces of Robustness" (ICCV 2021), https://github.com/hendrycks/imagenet-r.
The archive (https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar) unpacks to
``imagenet-r/<wnid>/<rendition>_<n>.jpg``: 200 of the 1000 ImageNet classes, 15 renditions.

Label space. ImageNet-1k class order is the sorted wnid order, and ImageFolder also sorts the 200
wnid folders, so :data:`IMAGENET_R_MASK` (a bool mask over 1000 logits) keeps the 200 columns in
ImageNet-R label order: ``logits[:, IMAGENET_R_MASK]`` is the 200-way prediction. Accuracy, entropy
and probability mixing must use these projected logits (a softmax over 1000 classes is a classic bug).
The wnid lists ship as package data (``streams/data/*.txt``); class names are open_clip's
``IMAGENET_CLASSNAMES`` (the OpenAI CLIP clean names).

Images. The transform is CLIP's eval transform without normalisation (normalisation belongs to the
model): resize the shorter side to ``image_size`` (bicubic, antialiased), centre crop, float tensor in
[0, 1]. Grayscale, CMYK, 16-bit and palette images are converted to RGB; images with an alpha channel
(RGBA, LA, palette with transparency) are composited on a white background. EXIF orientation is not
applied (as in the reference ImageFolder evaluation). Unreadable or truncated files are skipped,
logged with their path and recorded in ``skipped`` as (path, reason); they never crash a run. So are
images whose header announces more than :data:`MAX_PIXELS` pixels or an aspect ratio beyond
1::data:`MAX_ASPECT` (a 1x10000 PNG would be resized to 224x2,240,000 pixels): they are refused from the
header, before any pixel is decoded, in whichever loader worker reads them. Entries of the folders that
cannot be listed (a symlink loop, an unreadable class folder) are skipped and reported the same way, at
scan time. The stream's header description holds a fingerprint of the files it reads (their relative
paths and sizes), so a resumed run notices another set of files.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from streams.base import Batch, Stream, StreamSpec
from streams.folders import (
    MAX_ASPECT,
    MAX_PIXELS,
    Sample,
    collate_drop_failed,
    decode_image,
    files_fingerprint,
    list_folders,
    list_images,
)

__all__ = [
    "IMAGENET_WNIDS", "IMAGENET_CLASSNAMES", "IMAGENET_R_WNIDS", "IMAGENET_R_CLASSNAMES",
    "IMAGENET_R_MASK", "IMAGENET_R_INDICES", "RENDITIONS", "ORDERS", "LEGACY_ORDERS", "resolve_order", "DOWNLOAD_URL",
    "MAX_PIXELS", "MAX_ASPECT",
    "project_logits", "ImageNetRFolder", "Sample", "collate_drop_failed", "ImageNetRStream",
    "imagenet_r_stream", "from_spec", "decode_image", "list_folders", "list_images", "files_fingerprint",
]

log = logging.getLogger(__name__)

DOWNLOAD_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
RENDITIONS: tuple[str, ...] = (
    "art", "cartoon", "deviantart", "embroidery", "graffiti", "graphic", "misc", "origami",
    "painting", "sculpture", "sketch", "sticker", "tattoo", "toy", "videogame",
)
ORDERS = ("rendition", "shuffled", "mixed", "class-sorted")
#: the old order words as (schedule, sample order) of :mod:`streams.orders` (``rendition``: files in
#: (class, file name) order within each rendition; ``class-sorted``: every file in ImageFolder order)
LEGACY_ORDERS: dict[str, tuple[str, str]] = {
    "rendition": ("continual", "given"), "shuffled": ("continual", "shuffled"), "mixed": ("mixed", "shuffled"),
    "class-sorted": ("mixed", "given"),
}
#: schedules ImageNet-R supports (no severities, so no ``gradual``)
SCHEDULES = ("continual", "reset_each_shift", "mixed")
UNKNOWN_DOMAIN = "unknown"  # files whose name has no "<rendition>_" prefix


def _read_lines(name: str) -> tuple[str, ...]:
    text = resources.files("streams").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


IMAGENET_WNIDS: tuple[str, ...] = _read_lines("imagenet_wnids.txt")
IMAGENET_CLASSNAMES: tuple[str, ...] = _read_lines("imagenet_classnames.txt")
IMAGENET_R_WNIDS: tuple[str, ...] = _read_lines("imagenet_r_wnids.txt")
_WNID_INDEX = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
IMAGENET_R_INDICES: tuple[int, ...] = tuple(_WNID_INDEX[w] for w in IMAGENET_R_WNIDS)
IMAGENET_R_CLASSNAMES: tuple[str, ...] = tuple(IMAGENET_CLASSNAMES[i] for i in IMAGENET_R_INDICES)
IMAGENET_R_MASK: Tensor = torch.zeros(len(IMAGENET_WNIDS), dtype=torch.bool)
IMAGENET_R_MASK[list(IMAGENET_R_INDICES)] = True
_R_LABEL = {w: i for i, w in enumerate(IMAGENET_R_WNIDS)}

assert len(IMAGENET_WNIDS) == 1000 and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
assert len(IMAGENET_CLASSNAMES) == 1000 and len(IMAGENET_R_WNIDS) == 200
assert list(IMAGENET_R_WNIDS) == sorted(IMAGENET_R_WNIDS)


def project_logits(logits: Tensor) -> Tensor:
    """Keep the 200 ImageNet-R columns of ``[..., 1000]`` logits, in ImageNet-R label order."""
    if logits.shape[-1] != len(IMAGENET_WNIDS):
        raise ValueError(f"expected 1000-way logits, got last dimension {logits.shape[-1]}")
    return logits[..., IMAGENET_R_MASK.to(logits.device)]


def _missing_root_message(root: Path) -> str:
    return (f"ImageNet-R folder not found: looked at {root}. Download {DOWNLOAD_URL}, unpack it "
            f"(tar -xf imagenet-r.tar) and pass the unpacked folder, e.g. --data DIR/imagenet-r "
            f"(it must contain the 200 <wnid> folders, e.g. {IMAGENET_R_WNIDS[0]}/art_0.jpg).")


def _domain_of(filename: str) -> str:
    prefix, sep, _ = filename.partition("_")
    return prefix if sep and prefix else UNKNOWN_DOMAIN


class ImageNetRFolder(Dataset):
    """ImageNet-R laid out as ``<root>/<wnid>/<rendition>_<n>.<ext>``.

    ``samples`` is a list of (path, label, domain) sorted by (label, file name); ``label`` is the
    index of the wnid in :data:`IMAGENET_R_WNIDS`, ``domain`` the file-name prefix before the first
    ``_``. ``renditions`` keeps only those domains. Empty class folders are listed in
    ``empty_classes`` and reported as a warning.

    ``dataset[i]`` returns a :class:`Sample` and never raises on a bad file: its ``image`` is None
    and ``error`` holds the reason (a bare None could not carry the path back from a DataLoader
    worker). Use :func:`collate_drop_failed` as the DataLoader's ``collate_fn``; it drops failures
    and returns their paths with the batch, so the main process can log and record them.
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int = 224,
                 renditions: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if renditions is not None:
            if isinstance(renditions, str):
                renditions = [r for r in renditions.split(",") if r]
            bad = sorted(set(renditions) - set(RENDITIONS))
            if bad:
                raise ValueError(f"unknown rendition(s) {bad}; choose from {list(RENDITIONS)}")
        self.renditions = tuple(renditions) if renditions is not None else None
        self.samples: list[tuple[str, int, str]] = []
        self.empty_classes: list[str] = []
        self.skipped: list[tuple[str, str]] = []  # filled only by __getitem__ in this process
        self.scan_skipped: list[tuple[str, str]] = []  # entries the scan could not list (symlink loops, ...)
        self._scan()

    def _scan(self) -> None:
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(_missing_root_message(root))
        try:
            folders, self.scan_skipped = list_folders(root)
        except PermissionError:
            raise PermissionError(f"cannot list the ImageNet-R folder {root}: permission denied; make it readable "
                                  "by this user") from None
        unknown = [f for f in folders if f not in _R_LABEL]
        if unknown:
            hint = ""
            nested = [f for f in unknown if (root / f / IMAGENET_R_WNIDS[0]).is_dir()]
            if nested:
                hint = f" Did you mean --data {root / nested[0]}?"
            raise ValueError(
                f"{root} contains folder(s) that are not ImageNet-R classes: "
                f"{[str(root / f) for f in unknown[:5]]}{' ...' if len(unknown) > 5 else ''}. "
                f"An ImageNet-R root holds only the 200 <wnid> folders ({IMAGENET_R_WNIDS[0]} ...); "
                f"move the other folders away or pass the right directory.{hint}")
        if not folders:
            raise FileNotFoundError(
                _missing_root_message(root) + f" ({root} exists but has no class folders.)")
        keep = set(self.renditions) if self.renditions is not None else None
        unknown_domains: set[str] = set()
        self.files: list[tuple[str, int]] = []
        for wnid in folders:
            names, problems = list_images(root / wnid)
            self.scan_skipped += problems
            if not names:
                self.empty_classes.append(wnid)
                continue
            for name, size in names:
                domain = _domain_of(name)
                if keep is not None and domain not in keep:
                    continue
                if domain not in RENDITIONS:
                    unknown_domains.add(domain)
                self.samples.append((str(root / wnid / name), _R_LABEL[wnid], domain))
                self.files.append((str(root / wnid / name), size))
        for path, reason in self.scan_skipped:
            log.warning("ImageNet-R: skipped %s (%s)", path, reason)
        if self.empty_classes:
            log.warning("ImageNet-R: %d empty class folder(s) under %s: %s", len(self.empty_classes), root,
                        ", ".join(self.empty_classes))
        missing = len(IMAGENET_R_WNIDS) - len(folders)
        if missing:
            log.warning("ImageNet-R: %d of the 200 class folders are missing under %s", missing, root)
        if unknown_domains:
            log.warning("ImageNet-R: file-name prefixes that are not known renditions under %s: %s "
                        "(kept as their own domains)", root, sorted(unknown_domains))
        if not self.samples:
            what = f" for renditions {list(self.renditions)}" if self.renditions is not None else ""
            raise FileNotFoundError(f"no images found under {root}{what} (expected "
                                    f"<wnid>/<rendition>_<n>.jpg). " + _missing_root_message(root))

    @property
    def domains(self) -> list[str]:
        """Domains present: known renditions in :data:`RENDITIONS` order, then others sorted."""
        present = {d for _, _, d in self.samples}
        return [r for r in RENDITIONS if r in present] + sorted(present - set(RENDITIONS))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tensor:
        """Decode file ``index`` to a [3, S, S] float tensor in [0, 1] (:func:`decode_image`); raises on
        unreadable files and on images too large or too elongated to decode."""
        return decode_image(self.samples[index][0], self.image_size)

    def __getitem__(self, index: int) -> Sample:
        path, label, _ = self.samples[index]
        try:
            return Sample(index, path, self.load(index), label, None)
        except Exception as exc:  # noqa: BLE001 - any decode failure skips the file, never the run
            reason = f"{type(exc).__name__}: {exc}"
            self.skipped.append((path, reason))
            return Sample(index, path, None, label, reason)


def _seeded_perm(n: int, seed: int, salt: str) -> list[int]:
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(salt.encode())) % (2**63))
    return torch.randperm(n, generator=g).tolist()


@dataclass(frozen=True)
class _PlannedBatch:
    indices: tuple[int, ...]
    domain: str


class ImageNetRStream(Stream):
    """ImageNet-R as a :class:`~streams.base.Stream`; see :func:`imagenet_r_stream` for the orders."""

    num_classes = len(IMAGENET_R_WNIDS)  # 200: a 1000-way head needs IMAGENET_R_MASK

    def __init__(self, root: str | os.PathLike[str], order: str = "rendition", batch_size: int = 64,
                 seed: int = 0, image_size: int = 224, num_workers: int | None = None,
                 renditions: Sequence[str] | None = None, limit_per_domain: int | None = None,
                 schedule: str | None = None) -> None:
        super().__init__()
        self.schedule, self.sample_order = resolve_order(order, schedule)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if limit_per_domain is not None and limit_per_domain < 1:
            raise ValueError(f"limit_per_domain must be >= 1 or None, got {limit_per_domain}")
        self.dataset = ImageNetRFolder(root, image_size=image_size, renditions=renditions)
        legacy = {v: k for k, v in LEGACY_ORDERS.items()}.get((self.schedule, self.sample_order.spelled))
        self.order, self.batch_size, self.seed = legacy or self.schedule, int(batch_size), int(seed)
        self.limit_per_domain = limit_per_domain
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        extra = {} if legacy else {"sample_order": self.sample_order.spelled}
        self.spec = StreamSpec.make(
            "imagenet-r", domains=tuple(renditions or ()), order=self.order, batch_size=batch_size, seed=seed,
            root=str(self.dataset.root), image_size=int(image_size), limit_per_domain=limit_per_domain, **extra)
        self._plan = self._make_plan()

    def _make_plan(self) -> list[_PlannedBatch]:
        by_domain: dict[str, list[int]] = {d: [] for d in self.dataset.domains}
        for i, (_, _, d) in enumerate(self.dataset.samples):
            by_domain[d].append(i)  # already sorted by (label, file name)
        if self.limit_per_domain is not None:  # a seeded subset over all classes, kept in sorted order
            for d, idx in by_domain.items():
                if len(idx) > self.limit_per_domain:
                    pick = sorted(_seeded_perm(len(idx), self.seed, "limit:" + d)[: self.limit_per_domain])
                    by_domain[d] = [idx[k] for k in pick]
        bs = self.batch_size
        if self.schedule != "mixed":
            plan = []
            for d, idx in by_domain.items():
                idx = self._arranged(idx, d)
                plan += [_PlannedBatch(tuple(idx[s:s + bs]), d) for s in range(0, len(idx), bs)]
            return plan
        everything = self._arranged(sorted(i for idx in by_domain.values() for i in idx), "mixed")
        return [_PlannedBatch(tuple(everything[s:s + bs]), "mixed") for s in range(0, len(everything), bs)]

    def _arranged(self, idx: list[int], key: str) -> list[int]:
        """Files ``idx`` (in (class, file name) order) in the stream's sample order."""
        from streams.orders import arrange

        if self.sample_order.kind == "given":
            return idx
        salt = "shuffle:" + key if key != "mixed" else "mixed"
        labels = torch.tensor([self.dataset.samples[i][1] for i in idx], dtype=torch.long)
        perm = torch.tensor(_seeded_perm(len(idx), self.seed, salt), dtype=torch.long)
        seed = (self.seed * 1_000_003 + zlib.crc32(f"{self.sample_order.spelled}:{key}".encode())) % (2**63)
        return [idx[k] for k in arrange(labels, perm, self.sample_order, seed).tolist()]

    def __len__(self) -> int:
        return len(self._plan)

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(b.domain for b in self._plan))

    @property
    def num_images(self) -> int:
        """Number of files the stream will try to decode."""
        return sum(len(b.indices) for b in self._plan)

    def __iter__(self) -> Iterator[Batch]:
        """Decode and yield batches in plan order; resets and refills ``skipped``.

        A batch whose files all fail to decode is dropped (logged), so the number of batches seen
        can be lower than ``len(self)`` and the running ``index`` only counts yielded batches.
        """
        self.skipped = list(self.dataset.scan_skipped)
        loader = DataLoader(self.dataset, batch_sampler=[list(b.indices) for b in self._plan],
                            num_workers=self.num_workers, collate_fn=collate_drop_failed,
                            persistent_workers=False)
        index = 0
        for planned, out in zip(self._plan, loader, strict=True):
            for path, reason in out["skipped"]:
                log.warning("ImageNet-R: skipped unreadable file %s (%s)", path, reason)
            self.skipped.extend(out["skipped"])
            if out["images"] is None:
                log.warning("ImageNet-R: dropped batch of domain %r: none of its %d files could be read",
                            planned.domain, len(planned.indices))
                continue
            names = (tuple(self.dataset.samples[int(i)][2] for i in out["indices"])
                     if self.schedule == "mixed" else None)
            yield Batch(out["images"], out["labels"], planned.domain, index, names)
            index += 1
        if self.skipped:
            log.warning("ImageNet-R: skipped %d unreadable file(s) in total under %s",
                        len(self.skipped), self.dataset.root)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(images=self.num_images, empty_classes=list(self.dataset.empty_classes),
                 files_hash=files_fingerprint(self.dataset.root, self.dataset.files),
                 unlisted=[list(s) for s in self.dataset.scan_skipped], skipped=[list(s) for s in self.skipped])
        return d


def imagenet_r_stream(root: str | os.PathLike[str], order: str = "rendition", batch_size: int = 64,
                      seed: int = 0, image_size: int = 224, num_workers: int | None = None,
                      renditions: Sequence[str] | None = None,
                      limit_per_domain: int | None = None, schedule: str | None = None) -> ImageNetRStream:
    """An ImageNet-R stream of :class:`~streams.base.Batch` (images [B,3,S,S] in [0,1], 200-way labels).

    Orders (``seed`` fixes every random choice; the sequence does not depend on ``num_workers``):

    - ``"rendition"``: grouped by rendition in :data:`RENDITIONS` order, files sorted by (class,
      file name) within a domain; a batch never straddles two domains (a domain's last batch may be
      partial). This is the continual-shift stream.
    - ``"shuffled"``: the same domain grouping, files shuffled within each domain.
    - ``"mixed"``: all files in one seeded permutation; ``Batch.domain`` is ``"mixed"`` and
      ``Batch.sample_domains`` names each file's rendition.
    - ``"class-sorted"``: all files in ImageFolder order (class, then file name), as in the dataset
      authors' evaluation; domains interleave, ``Batch.domain`` is ``"mixed"``.

    With ``schedule`` (``continual``, ``reset_each_shift`` or ``mixed``, :mod:`streams.orders`) ``order``
    is a sample order instead: ``given`` ((class, file name) order), ``shuffled``, ``class-sorted``
    (shuffled within each class) or ``dirichlet[:δ]``; ``order="dirichlet"`` alone keeps the renditions
    one after another. The four words above are (schedule, sample order) pairs of that vocabulary
    (:data:`LEGACY_ORDERS`).

    ``limit_per_domain`` keeps a seeded random subset of that many files per rendition (spread over
    classes, then ordered as above); ``renditions`` keeps only those renditions. Decoding runs in
    ``num_workers`` DataLoader workers (default ``min(4, cpu count)``). Unreadable files are
    skipped, logged and listed in ``stream.skipped`` after iteration.
    """
    return ImageNetRStream(root, order=order, batch_size=batch_size, seed=seed, image_size=image_size,
                           num_workers=num_workers, renditions=renditions, limit_per_domain=limit_per_domain,
                           schedule=schedule)


def resolve_order(order: str, schedule: str | None) -> tuple[str, Any]:
    """``(schedule, SampleOrder)`` of an ImageNet-R stream (:mod:`streams.orders`): the old order words
    alone keep their meaning (:data:`LEGACY_ORDERS`); with a ``schedule``, ``order`` is a sample order."""
    from streams.orders import parse_sample_order, resolve

    if schedule is None and order in LEGACY_ORDERS:
        sched, sample = LEGACY_ORDERS[order]
        return sched, parse_sample_order(sample)
    try:
        return resolve(order, schedule, default="given", schedules=SCHEDULES)
    except ValueError as err:
        raise ValueError(f"ImageNet-R: {err} (or one of the orders {', '.join(ORDERS)})") from None


def from_spec(spec: StreamSpec, num_workers: int | None = None) -> ImageNetRStream:
    """Rebuild the stream a :class:`~streams.base.StreamSpec` (source ``"imagenet-r"``) describes."""
    if spec.source != "imagenet-r":
        raise ValueError(f"spec source is {spec.source!r}, expected 'imagenet-r'")
    o = spec.opts
    sample = o.get("sample_order")
    return imagenet_r_stream(o["root"], order=sample or spec.order, batch_size=spec.batch_size, seed=spec.seed,
                             image_size=o.get("image_size", 224), num_workers=num_workers,
                             renditions=list(spec.domains) or None,
                             limit_per_domain=o.get("limit_per_domain"),
                             schedule=spec.order if sample else None)
