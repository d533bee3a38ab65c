"""Stream orders: the order of samples within a domain, and the schedule of domains. They combine.

Two independent settings describe how a test stream presents its images (one vocabulary for
:func:`streams.fashion.embedded_stream`, the corruption streams of :mod:`streams.schedules`, ImageNet-R,
``adawise demo``, ``adawise run`` and sweeps):

- the **sample order** (:class:`SampleOrder`, spelled ``shuffled``, ``class-sorted``, ``dirichlet``,
  ``dirichlet:<δ>`` or ``given``): how the images of a domain (or, in the mixed schedule, of the
  pooled domains) follow one another:

  - ``shuffled``: a seeded permutation (i.i.d. labels; the default of the embedded and corruption
    streams; ``continual`` is accepted as its old name where it meant that);
  - ``class-sorted``: sorted by label (stable over the shuffled order), so a batch holds one or two
    classes;
  - ``dirichlet`` (δ = 0.1 unless ``dirichlet:<δ>``): temporally correlated labels, the protocol of
    RoTTA (Yuan et al., CVPR 2023) and ROID (Marsden et al., WACV 2024): the stream is cut into as many
    slots as there are classes; each slot draws its class weights from Dir(δ, ..., δ) and then its
    samples one by one by those weights, without replacement (the weights of classes with no image
    left are dropped and the rest renormalised), so every image appears exactly once. Small δ gives
    slots of one or two classes (δ = 0.01 is close to class-sorted), large δ an i.i.d. stream;
  - ``given``: the source's own order (ImageNet-R: class, then file name; tensors: as given).

- the **schedule** of domains (:data:`SCHEDULES`): ``continual`` (one domain after another),
  ``reset_each_shift`` (the same batches; the run resets the method at every domain boundary),
  ``gradual`` (each corruption at severities 1, 2, 3, 4, 5, 4, 3, 2, 1; sources with severities only),
  ``mixed`` (every (domain, image) pair pooled and ordered by the sample order, so every batch holds
  samples of several domains; ``Batch.domain`` is ``"mixed"`` and ``Batch.sample_domains`` names
  each sample's domain).

:func:`resolve` turns the user's ``order`` / ``schedule`` strings (old spellings included, e.g. an old
``order="mixed"`` that named the schedule) into one ``(schedule, SampleOrder)`` pair; :func:`arrange`
applies a sample order to labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["SAMPLE_ORDERS", "SCHEDULES", "DEFAULT_DELTA", "SampleOrder", "parse_sample_order", "resolve",
           "arrange", "dirichlet_order", "spec_fields", "ORDER_HELP", "SCHEDULE_HELP"]

#: sample orders (``dirichlet`` takes ``:<δ>``; ``given`` keeps the source's own order)
SAMPLE_ORDERS: tuple[str, ...] = ("shuffled", "class-sorted", "dirichlet", "given")
#: schedules of domains
SCHEDULES: tuple[str, ...] = ("continual", "reset_each_shift", "gradual", "mixed")
#: the Dirichlet concentration of ``dirichlet`` without a value (RoTTA's and ROID's default)
DEFAULT_DELTA = 0.1
ORDER_HELP = ("order of the samples: shuffled (default), class-sorted (a batch holds one or two classes), "
              f"dirichlet (correlated labels, Dir(δ) class weights per slot, δ = {DEFAULT_DELTA}) or "
              "dirichlet:<δ> (e.g. dirichlet:0.01, close to class-sorted)")
SCHEDULE_HELP = ("schedule of the domains: continual (one after another, the default), reset_each_shift (the "
                 "same, the method reset at every domain boundary), gradual (severities 1->5->1 per corruption) "
                 "or mixed (every batch mixes all domains)")


@dataclass(frozen=True)
class SampleOrder:
    """A sample order: ``kind`` from :data:`SAMPLE_ORDERS`, ``delta`` for ``dirichlet``."""

    kind: str = "shuffled"
    delta: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_ORDERS:
            raise ValueError(f"unknown order {self.kind!r}; sample orders: {', '.join(SAMPLE_ORDERS)} "
                             f"(dirichlet:<δ> sets the concentration); schedules: {', '.join(SCHEDULES)}")
        if self.kind == "dirichlet":
            if self.delta is None:
                object.__setattr__(self, "delta", DEFAULT_DELTA)
            if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta > 0):
                raise ValueError(f"dirichlet: δ must be a positive number, got {self.delta!r}")
            object.__setattr__(self, "delta", float(self.delta))
        elif self.delta is not None:
            raise ValueError(f"only the dirichlet order takes a δ, not {self.kind!r}")

    @property
    def spelled(self) -> str:
        """The canonical spelling (``"dirichlet:0.1"``, ``"class-sorted"``, ...)."""
        return f"dirichlet:{self.delta:g}" if self.kind == "dirichlet" else self.kind

    def __str__(self) -> str:
        return self.spelled


def parse_sample_order(text: str | SampleOrder) -> SampleOrder:
    """``"shuffled"``, ``"class-sorted"``, ``"dirichlet"``, ``"dirichlet:0.01"`` or ``"given"`` (also a
    :class:`SampleOrder`); ``"continual"`` is read as ``"shuffled"`` (its old name in the embedded stream)."""
    if isinstance(text, SampleOrder):
        return text
    name, sep, value = str(text).strip().partition(":")
    if name == "continual" and not sep:
        name = "shuffled"
    if name == "dirichlet" and sep:
        try:
            delta = float(value)
        except ValueError:
            raise ValueError(f"order {text!r}: δ must be a number, e.g. dirichlet:0.1") from None
        return SampleOrder("dirichlet", delta)
    if sep:
        raise ValueError(f"order {text!r}: only dirichlet takes a value (dirichlet:<δ>)")
    return SampleOrder(name)


def resolve(order: str | SampleOrder | None = None, schedule: str | None = None, *,
            default: str = "shuffled", legacy: dict[str, tuple[str, str]] | None = None,
            schedules: Sequence[str] = SCHEDULES) -> tuple[str, SampleOrder]:
    """``(schedule, sample order)`` from the user's ``order`` and ``schedule``.

    ``order`` may be a sample order or, as streams used to spell it, a schedule (``order="mixed"``
    means the mixed schedule with the ``default`` sample order); ``legacy`` maps a source's own old
    order words to ``(schedule, sample order)`` (e.g. ImageNet-R's ``rendition``). A schedule given
    both ways must agree. ``schedules`` limits the schedules the source supports.
    """
    sched = schedule
    sample: SampleOrder | None = None
    if isinstance(order, SampleOrder):
        sample = order
    elif order is not None:
        word = str(order).strip()
        if legacy and word in legacy:
            implied, sample_word = legacy[word]
            sample = parse_sample_order(sample_word)
            if sched is not None and sched != implied:
                raise ValueError(f"order {word!r} implies the schedule {implied!r}, but schedule {sched!r} was "
                                 "given; pass a sample order instead")
            sched = implied
        elif word in SCHEDULES and word != "continual":
            if sched is not None and sched != word:
                raise ValueError(f"order {word!r} names a schedule, but schedule {sched!r} was given")
            sched = word
        else:
            sample = parse_sample_order(word)
    sched = sched or "continual"
    if sched not in SCHEDULES:
        raise ValueError(f"unknown schedule {sched!r}; choose from {', '.join(SCHEDULES)}")
    if sched not in schedules:
        raise ValueError(f"schedule {sched!r} is not available for this source; choose from {', '.join(schedules)}")
    return sched, sample or parse_sample_order(default)


def arrange(labels: Tensor, shuffled: Tensor, order: SampleOrder, seed: int) -> Tensor:
    """Indices into ``labels`` in the given sample order.

    Args:
        labels: ``[N]`` class labels in the source's own order.
        shuffled: a permutation of ``range(N)`` (the source's seeded shuffle): the ``shuffled`` order
            itself, and the within-class order of ``class-sorted`` (stable) and ``dirichlet``.
        order: the sample order.
        seed: seed of the Dirichlet draws (the other orders draw nothing here).
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    shuffled = torch.as_tensor(shuffled, dtype=torch.long).cpu()
    if len(shuffled) != len(labels):
        raise ValueError(f"arrange: {len(shuffled)} shuffled indices for {len(labels)} labels")
    if order.kind == "given":
        return torch.arange(len(labels))
    if order.kind == "shuffled":
        return shuffled
    if order.kind == "class-sorted":
        return shuffled[torch.argsort(labels[shuffled], stable=True)]
    return shuffled[dirichlet_order(labels[shuffled], float(order.delta), seed)]


def dirichlet_order(labels: Tensor, delta: float, seed: int, slots: int | None = None) -> Tensor:
    """A permutation of ``range(len(labels))`` with Dirichlet-correlated labels (see the module docstring).

    Within a class the images keep their given order. ``slots`` defaults to the number of classes
    (RoTTA's choice); slot lengths differ by at most one. Seeded by ``seed`` (numpy's PCG64: the same
    order on every machine).
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    n = len(labels)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    classes, inverse = torch.unique(labels, return_inverse=True)
    c = len(classes)
    queues = [torch.nonzero(inverse == k).flatten().tolist() for k in range(c)]
    heads = [0] * c
    remaining = np.array([len(q) for q in queues], dtype=np.int64)
    rng = np.random.default_rng(int(seed) & (2**63 - 1))
    n_slots = max(1, min(int(slots) if slots is not None else c, n))
    bounds = np.linspace(0, n, n_slots + 1).round().astype(int)
    out: list[int] = []
    for s in range(n_slots):
        weights = rng.dirichlet(np.full(c, float(delta)))
        need = int(bounds[s + 1] - bounds[s])
        while need > 0:
            p = np.where(remaining > 0, weights, 0.0)
            total = p.sum()
            if not np.isfinite(total) or total <= 0:  # the slot's classes are used up (or underflowed)
                p, total = (remaining > 0).astype(float), float((remaining > 0).sum())
            draws = rng.choice(c, size=need, p=p / total)
            # accept draws until one would take a class beyond its remaining images
            counts = np.zeros(c, dtype=np.int64)
            taken = 0
            for k in draws:
                if counts[k] >= remaining[k]:
                    break
                counts[k] += 1
                q = queues[k]
                out.append(q[heads[k]])
                heads[k] += 1
                taken += 1
            remaining -= counts
            need -= taken
    return torch.tensor(out, dtype=torch.long)


def spec_fields(source: str, order: str | None, schedule: str | None) -> tuple[str, dict[str, object]]:
    """``(StreamSpec.order, extra options)`` for a spec-built source (``corruptions``, ``imagenet-c``,
    ``imagenet-r``) from the user's ``order`` and ``schedule``.

    The spec's ``order`` field holds the schedule (ImageNet-R: one of its old order words where the
    combination has one) and a sample order other than the source's default goes into the option
    ``sample_order`` (``given`` for corruptions: ``shuffle=False``). The old spellings alone keep the
    specs (and their hashes) they always made.
    """
    if source == "imagenet-r":
        from streams.imagenet_r import LEGACY_ORDERS, resolve_order

        if schedule is None and (order or "rendition") in (*LEGACY_ORDERS, "continual", "reset_each_shift"):
            return order or "rendition", {}
        sched, sample = resolve_order(order or "given", schedule)
        legacy = {v: k for k, v in LEGACY_ORDERS.items()}.get((sched, sample.spelled))
        return (legacy, {}) if legacy else (sched, {"sample_order": sample.spelled})
    if schedule is None and (order or "continual") in SCHEDULES:
        return order or "continual", {}
    sched, sample = resolve(order, schedule)
    if sample.kind == "given":
        return sched, {"shuffle": False}
    return sched, ({} if sample.kind == "shuffled" else {"sample_order": sample.spelled})
