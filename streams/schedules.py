"""Schedules of shifts: continual, reset_each_shift, gradual and mixed corruption streams.

A corruption stream applies ImageNet-C corruptions (:mod:`streams.corruptions`) to a base set of
clean images: an in-memory tensor (e.g. the Fashion-MNIST test set) or a folder of clean ImageNet
validation images ``<root>/<wnid>/*.JPEG``. A frozen :class:`~streams.base.StreamSpec` and its seed fix
every choice (image order, corruption seeds), so every method iterating the same spec sees
bit-identical batches. A base image's corruption under a condition depends only on the spec's seed,
the condition and the image's base index (:func:`apply_conditions`), not on the batch size, the order
or the other images of its batch: the corrupted test set is the same in every order. Corruptions are
applied lazily, one batch at a time (on the CPU in loader workers, or on ``device``), so a long stream
never holds its corrupted copies in memory.

Orders (``spec.order``; protocols of the online test-time-adaptation literature, e.g. Wang et al.,
TENT, ICLR 2021, and the continual / gradual benchmarks of Döbler et al.'s test-time-adaptation repo):

- ``"continual"``: the corruptions in the listed order (default: the 15 of ImageNet-C in
  :data:`~streams.corruptions.CORRUPTIONS` order) at one severity (option ``severity``, default 5);
  each corruption is one domain named after it; a batch never straddles two domains.
- ``"reset_each_shift"``: the same batches as ``"continual"``; the run resets the method at every
  domain boundary (:func:`setting_for` returns ``"reset_each_shift"``, the setting the loop uses).
- ``"gradual"``: for each corruption the severities 1, 2, 3, 4, 5, 4, 3, 2, 1, each a domain named
  ``"<corruption>@<severity>"`` (e.g. ``"fog@3"``).
- ``"mixed"``: all (corruption, image) pairs in one seeded permutation at one severity; every batch has
  the domain ``"mixed"``.

The pseudo-corruption ``"clean"`` (identity) may appear in the list, e.g. as an in-distribution
domain at the start, and so may the severity-free rendition-like shifts of :mod:`streams.shifts`
(``invert``, ``rotate``, ``sketch``, ``silhouette``, ``upside_down``; one domain each, also in
``gradual``). Options (``StreamSpec.make(..., **options)``): ``severity`` (1-5, default 5),
``shuffle`` (default True: each domain visits its images in a seeded permutation; False keeps the base
order), ``limit_per_domain`` (a seeded subset of that many images per domain), and per source:
``root`` and ``image_size`` (``"imagenet-c"``), ``base`` (``"fashion-mnist"``: the Fashion-MNIST
test set, read by :mod:`streams.fashion`; ``fashion_root`` optional) or ``base_hash`` (a fingerprint
of given tensors, checked when they are passed again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from streams.base import Batch, Stream, StreamSpec, TensorStream
from streams.imagenet_val import IMAGENET_VAL_HELP, ImageNetValFolder

__all__ = [
    "ORDERS", "SOURCES", "CLEAN", "GRADUAL_SEVERITIES", "corruption_spec", "corruption_stream",
    "imagenet_c_stream", "build_stream", "setting_for", "tensor_fingerprint", "ImageNetValFolder",
    "CorruptionStream", "IMAGENET_VAL_HELP",
]

log = logging.getLogger(__name__)

ORDERS: tuple[str, ...] = ("continual", "reset_each_shift", "gradual", "mixed")
SOURCES: tuple[str, ...] = ("imagenet-r", "imagenet-c", "corruptions", "tensors")
CLEAN = "clean"
GRADUAL_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5, 4, 3, 2, 1)


def _seed(seed: int, key: str) -> int:
    """A 63-bit seed derived from the spec's seed and a string key (stable across runs and machines)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _perm(n: int, seed: int, key: str) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, key)))


def tensor_fingerprint(images: Tensor, labels: Tensor) -> str:
    """Short SHA-256 of a base image set (shapes, dtypes, values), stored in specs as ``base_hash``."""
    digest = hashlib.sha256()
    for t in (images, torch.as_tensor(labels)):
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def setting_for(spec: StreamSpec) -> str:
    """The loop setting a spec asks for: ``"reset_each_shift"`` for that order, else ``"continual"``."""
    return "reset_each_shift" if spec.order == "reset_each_shift" else "continual"


def corruption_spec(corruptions: Sequence[str] | None = None, order: str = "continual", severity: int = 5,
                    batch_size: int = 64, seed: int = 0, source: str = "corruptions",
                    schedule: str | None = None, **options: Any) -> StreamSpec:
    """A validated spec for a corruption stream (``source`` ``"corruptions"`` or ``"imagenet-c"``).

    ``corruptions`` defaults to all 15 ImageNet-C corruptions in their canonical order. ``order`` and
    ``schedule`` follow :mod:`streams.orders`: ``order`` a sample order (``shuffled``, ``class-sorted``,
    ``dirichlet[:δ]``, ``given``) or, as before, a schedule (``continual``, ``reset_each_shift``,
    ``gradual``, ``mixed``); the spec stores the schedule as ``spec.order`` and a sample order other
    than ``shuffled`` as the option ``sample_order`` (``given`` as ``shuffle=False``).
    """
    from streams.corruptions import CORRUPTIONS
    from streams.orders import resolve

    try:
        sched, sample = resolve(order, schedule)
    except ValueError as err:
        raise ValueError(f"corruption stream: {err}") from None
    if sample.kind == "given":
        options["shuffle"] = False
    elif sample.kind != "shuffled":
        options["sample_order"] = sample.spelled
    spec = StreamSpec.make(source, domains=tuple(corruptions or CORRUPTIONS), order=sched,
                           batch_size=batch_size, seed=seed, severity=int(severity), **options)
    _check_spec(spec)
    return spec


def _sample_order(spec: StreamSpec) -> Any:
    """The spec's sample order (:class:`streams.orders.SampleOrder`; ``shuffled`` unless set)."""
    from streams.orders import parse_sample_order

    return parse_sample_order(spec.opts.get("sample_order", "shuffled"))


def _other_shifts() -> frozenset[str]:
    """Severity-free shifts of :mod:`streams.shifts` (e.g. ``invert``, ``rotate``) usable as domains."""
    try:
        from streams.shifts import SHIFTS
    except ImportError:
        return frozenset()
    return frozenset(n for n, sh in SHIFTS.items() if sh.kind == "rendition")


def _check_spec(spec: StreamSpec) -> None:
    from streams.corruptions import CORRUPTIONS, SEVERITIES

    if spec.order not in ORDERS:
        raise ValueError(f"unknown order {spec.order!r} for a corruption stream; choose from {list(ORDERS)}")
    if _sample_order(spec).kind == "given":
        raise ValueError("sample_order 'given' is spelled shuffle=False in a corruption spec")
    extra = _other_shifts()
    bad = [d for d in spec.domains if d not in CORRUPTIONS and d != CLEAN and d not in extra]
    if bad:
        raise ValueError(f"unknown corruption(s) {bad}; choose from {list(CORRUPTIONS)} (or {CLEAN!r}"
                         + (f", or the shifts {sorted(extra)}" if extra else "") + ")")
    severity = spec.opts.get("severity", 5)
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if spec.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {spec.batch_size}")
    limit = spec.opts.get("limit_per_domain")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit_per_domain must be >= 1 or None, got {limit}")


def _as_rgb_float(images: Tensor) -> Tensor:
    if not images.is_floating_point():
        images = images.float().div(255.0)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"base images must be [N, 3, H, W] or [N, 1, H, W] (or [N, H, W]), got "
                         f"{tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    domain: str
    indices: Tensor  # base-image indices
    conds: Tensor  # condition id per image (index into the stream's ``conditions``)
    position: int  # position in the plan


class _PlanDataset(Dataset):
    """Item k = planned batch k: gather or decode its images, then (optionally) corrupt them."""

    def __init__(self, stream: CorruptionStream, corrupt_here: bool) -> None:
        self.plan, self.conditions, self.seed = stream._plan, stream.conditions, stream.spec.seed
        self.images, self.labels, self.folder = stream._images, stream._labels, stream.folder
        self.corrupt_here = corrupt_here

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict[str, Any]:
        planned = self.plan[k]
        skipped: list[tuple[str, str]] = []
        if self.folder is None:
            images = _as_rgb_float(self.images[planned.indices])
            labels, conds = self.labels[planned.indices], planned.conds
        else:
            items = [self.folder[int(i)] for i in planned.indices]
            ok = [j for j, it in enumerate(items) if it[0] is not None]
            skipped = [(it[2], it[3] or "unreadable") for it in items if it[0] is None]
            if not ok:
                return {"images": None, "labels": None, "conds": None, "skipped": skipped}
            images = torch.stack([items[j][0] for j in ok])
            labels = torch.tensor([items[j][1] for j in ok], dtype=torch.long)
            conds = planned.conds[ok]
        indices = planned.indices if self.folder is None else planned.indices[ok]
        if self.corrupt_here:
            images = apply_conditions(images, conds, self.conditions, self.seed, indices)
        return {"images": images, "labels": labels, "conds": conds, "indices": indices, "skipped": skipped}


def _identity(x: Any) -> Any:
    return x


def apply_conditions(images: Tensor, conds: Tensor, conditions: Sequence[tuple[str, int]], seed: int,
                     indices: Tensor) -> Tensor:
    """Corrupt each group of ``images`` sharing a condition with a seed fixed by (spec seed, condition)
    and the images' base indices, so a base image gets the same corruption under a condition at any
    batch size, position or order; ``"clean"`` is left unchanged."""
    from streams.corruptions import corrupt

    out = images.clone()
    for c in torch.unique(conds).tolist():
        name, severity = conditions[c]
        if name == CLEAN:
            continue
        host_mask = conds.cpu() == c
        mask = host_mask.to(images.device)
        ids = indices[host_mask]
        key = f"corrupt:{name}@{severity}"
        if severity:
            out[mask] = corrupt(images[mask], name, severity, seed=_seed(seed, key), indices=ids)
        else:  # a severity-free shift of streams.shifts
            from streams.shifts import get_shift

            out[mask] = get_shift(name)(images[mask].contiguous(), _seed(seed, key), ids)
    return out


class CorruptionStream(Stream):
    """Corruptions of a base image set in a schedule; see the module docstring for the orders.

    Iterating twice, or iterating two streams built from the same spec and base images, yields
    identical batches. Batches of a folder source whose files all fail to decode are dropped, and
    the failures are logged with their paths and listed in ``skipped``.
    """

    def __init__(self, spec: StreamSpec, images: Tensor | None = None, labels: Tensor | None = None,
                 folder: ImageNetValFolder | None = None, num_workers: int = 0,
                 device: str | torch.device | None = None) -> None:
        super().__init__()
        _check_spec(spec)
        if (images is None) == (folder is None):
            raise ValueError("a corruption stream needs exactly one base: images + labels, or a folder")
        self.spec, self.folder = spec, folder
        self._images: Tensor | None = None
        self._labels: Tensor | None = None
        if images is not None:
            if labels is None or len(labels) != len(images):
                raise ValueError("base images need labels of the same length")
            labels = torch.as_tensor(labels, dtype=torch.long)
            expected = spec.opts.get("base_hash")
            if expected is not None and tensor_fingerprint(images, labels) != expected:
                raise ValueError(f"the given base images do not match the spec (base_hash {expected}); "
                                 "pass the images the spec was made for")
            self._images, self._labels = images, labels
        self.num_workers = int(num_workers)
        self.device = torch.device(device) if device is not None else None
        self.severity = int(spec.opts.get("severity", 5))
        self.conditions: list[tuple[str, int]] = []
        self._plan = self._make_plan()

    @property
    def num_base(self) -> int:
        """Number of clean base images."""
        return len(self.folder) if self.folder is not None else len(self._images)

    def _cond(self, name: str, severity: int) -> int:
        from streams.corruptions import CORRUPTIONS

        key = (name, severity if name in CORRUPTIONS else 0)
        if key not in self.conditions:
            self.conditions.append(key)
        return self.conditions.index(key)

    def _segments(self) -> list[tuple[str, int]]:
        """(domain name, condition id) per contiguous domain, in stream order."""
        from streams.corruptions import CORRUPTIONS

        names = list(self.spec.domains) or list(CORRUPTIONS)
        if self.spec.order == "gradual":
            out = []
            for name in names:
                if name in CORRUPTIONS:
                    out += [(f"{name}@{s}", self._cond(name, s)) for s in GRADUAL_SEVERITIES]
                else:  # clean and severity-free shifts: one domain
                    out.append((name, self._cond(name, 0)))
            return out
        return [(name, self._cond(name, self.severity)) for name in names]

    def _base_labels(self) -> Tensor:
        """The labels of the base images, in base order (for the class-sorted and Dirichlet orders)."""
        if self.folder is not None:
            return torch.tensor([label for _, label in self.folder.samples], dtype=torch.long)
        return self._labels

    def _sample_positions(self, idx: Tensor, key: str) -> Tensor:
        """Positions into ``idx`` (base indices, shuffled or in base order) that put it in the spec's
        sample order (``shuffled``: as it is)."""
        from streams.orders import arrange

        sample = _sample_order(self.spec)
        if sample.kind == "shuffled":
            return torch.arange(len(idx))
        return arrange(self._base_labels()[idx], torch.arange(len(idx)), sample,
                       _seed(self.spec.seed, f"{sample.spelled}:{key}"))

    def _make_plan(self) -> list[_Planned]:
        n, seed, bs = self.num_base, self.spec.seed, self.spec.batch_size
        shuffle = bool(self.spec.opts.get("shuffle", True))
        limit = self.spec.opts.get("limit_per_domain")
        segments = self._segments()
        self.segment_names = {cond: domain for domain, cond in segments}
        plan: list[_Planned] = []
        if self.spec.order == "mixed":
            parts_i, parts_c = [], []
            for s, (domain, cond) in enumerate(segments):
                idx = torch.arange(n)
                if limit is not None and n > limit:
                    idx = _perm(n, seed, f"limit:{s}:{domain}")[: int(limit)].sort().values
                parts_i.append(idx)
                parts_c.append(torch.full((len(idx),), cond, dtype=torch.long))
            all_i, all_c = torch.cat(parts_i), torch.cat(parts_c)
            order = _perm(len(all_i), seed, "mixed") if shuffle else torch.arange(len(all_i))
            all_i, all_c = all_i[order], all_c[order]
            local = self._sample_positions(all_i, "mixed")
            all_i, all_c = all_i[local], all_c[local]
            for start in range(0, len(all_i), bs):
                plan.append(_Planned("mixed", all_i[start:start + bs], all_c[start:start + bs], len(plan)))
            return plan
        for s, (domain, cond) in enumerate(segments):
            idx = _perm(n, seed, f"order:{s}:{domain}") if shuffle else torch.arange(n)
            if limit is not None and n > limit and shuffle:
                idx = idx[: int(limit)]
            elif limit is not None and n > limit:
                idx = _perm(n, seed, f"limit:{s}:{domain}")[: int(limit)].sort().values
            idx = idx[self._sample_positions(idx, f"{s}:{domain}")]
            for start in range(0, len(idx), bs):
                chunk = idx[start:start + bs]
                plan.append(_Planned(domain, chunk, torch.full((len(chunk),), cond, dtype=torch.long), len(plan)))
        return plan

    def __len__(self) -> int:
        return len(self._plan)

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(p.domain for p in self._plan))

    @property
    def num_images(self) -> int:
        """Number of (corrupted) images the stream yields, before unreadable files are dropped."""
        return sum(len(p.indices) for p in self._plan)

    def __iter__(self) -> Iterator[Batch]:
        """Yield batches in plan order; resets and refills ``skipped``."""
        self.skipped = list(self.folder.scan_skipped) if self.folder is not None else []
        on_device = self.device is not None and self.device.type != "cpu"
        data = _PlanDataset(self, corrupt_here=not on_device)
        if self.num_workers > 0:
            items: Any = DataLoader(data, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                    collate_fn=_identity, persistent_workers=False)
        else:
            items = (data[k] for k in range(len(data)))
        index = 0
        for planned, out in zip(self._plan, items, strict=True):
            for path, reason in out["skipped"]:
                log.warning("corruption stream: skipped unreadable file %s (%s)", path, reason)
            self.skipped.extend(out["skipped"])
            if out["images"] is None:
                log.warning("corruption stream: dropped batch of domain %r: none of its files could be read",
                            planned.domain)
                continue
            images = out["images"]
            if on_device:
                images = apply_conditions(images.to(self.device, non_blocking=True), out["conds"],
                                          self.conditions, self.spec.seed, out["indices"])
            mixed = (tuple(self.segment_names[int(c)] for c in out["conds"])
                     if self.spec.order == "mixed" else None)
            yield Batch(images, out["labels"], planned.domain, index, mixed)
            index += 1
        if self.skipped:
            log.warning("corruption stream: skipped %d unreadable file(s) in total", len(self.skipped))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(base_images=self.num_base, images=self.num_images,
                 conditions=[f"{c}@{s}" if s else c for c, s in self.conditions],
                 setting=setting_for(self.spec), skipped=[list(s) for s in self.skipped])
        if self.folder is not None:  # which files a resumed run must find again
            from streams.imagenet_r import files_fingerprint

            d.update(files_hash=files_fingerprint(self.folder.root, self.folder.files),
                     unlisted=[list(s) for s in self.folder.scan_skipped])
        return d


def corruption_stream(images: Tensor | None, labels: Tensor | None, spec: StreamSpec,
                      num_workers: int = 0, device: str | torch.device | None = None) -> CorruptionStream:
    """Corruption stream over in-memory base images ``[N, 3, H, W]`` (or grey ``[N, 1, H, W]``,
    replicated to RGB; uint8 is scaled to [0, 1]) with ``labels`` [N].

    With ``images=None`` the spec must name its base: ``base="fashion-mnist"`` loads the
    Fashion-MNIST test set (:func:`streams.fashion.load_split`, optional ``fashion_root``).
    ``device`` (e.g. ``"cuda"``) applies the corruptions there; the batches then live on it.
    """
    if spec.source not in ("corruptions", "imagenet-c"):
        raise ValueError(f"spec source is {spec.source!r}, expected 'corruptions'")
    if images is None:
        base = spec.opts.get("base")
        if base != "fashion-mnist":
            raise ValueError("corruption_stream needs base images (images=, labels=) or a spec option "
                             "base='fashion-mnist'")
        from streams.fashion import load_split, to_float

        raw, labels = load_split("test", spec.opts.get("fashion_root"))
        images = to_float(raw)
    return CorruptionStream(spec, images=images, labels=labels, num_workers=num_workers, device=device)


def imagenet_c_stream(spec: StreamSpec, num_workers: int | None = None,
                      device: str | torch.device | None = None) -> CorruptionStream:
    """ImageNet-C-style stream: clean ImageNet validation images from ``spec.opts["root"]``
    (``<root>/<wnid>/*.JPEG``, 1000-way labels), decoded at ``image_size`` (default 224) in
    ``num_workers`` loader workers (default ``min(4, cpu count)``) and corrupted per batch."""
    if spec.source != "imagenet-c":
        raise ValueError(f"spec source is {spec.source!r}, expected 'imagenet-c'")
    if "root" not in spec.opts:
        raise ValueError("an imagenet-c spec needs the option root=<folder of clean ImageNet val images>. "
                         + IMAGENET_VAL_HELP)
    folder = ImageNetValFolder(spec.opts["root"], image_size=spec.opts.get("image_size", 224))
    workers = min(4, os.cpu_count() or 1) if num_workers is None else int(num_workers)
    return CorruptionStream(spec, folder=folder, num_workers=workers, device=device)


def build_stream(spec: StreamSpec, *, images: Tensor | None = None, labels: Tensor | None = None,
                 num_workers: int | None = None, device: str | torch.device | None = None) -> Stream:
    """Rebuild the stream a spec describes, dispatching on ``spec.source``.

    - ``"imagenet-r"``: :func:`streams.imagenet_r.from_spec` (orders ``rendition``, ``shuffled``,
      ``mixed``, ``class-sorted``; ``continual`` and ``reset_each_shift`` mean ``rendition``);
    - ``"imagenet-c"``: :func:`imagenet_c_stream` (a folder of clean ImageNet val images);
    - ``"corruptions"``: :func:`corruption_stream` over ``images``/``labels`` (or ``base`` in the spec);
    - ``"tensors"``: ``images``/``labels`` as they are, one domain (``spec.domains[0]``), in order.
    """
    if spec.source == "imagenet-r":
        from streams.imagenet_r import from_spec

        if spec.order in ("continual", "reset_each_shift") and "sample_order" not in spec.opts:
            spec = dataclasses.replace(spec, order="rendition")
        return from_spec(spec, num_workers=num_workers)
    if spec.source == "imagenet-c":
        return imagenet_c_stream(spec, num_workers=num_workers, device=device)
    if spec.source == "corruptions":
        return corruption_stream(images, labels, spec, num_workers=num_workers or 0, device=device)
    if spec.source == "tensors":
        if images is None or labels is None:
            raise ValueError("a 'tensors' spec needs images= and labels=")
        domain = spec.domains[0] if spec.domains else "default"
        return TensorStream(images, labels, domain, spec.batch_size, spec=spec)
    raise ValueError(f"unknown stream source {spec.source!r}; choose from {list(SOURCES)}")
