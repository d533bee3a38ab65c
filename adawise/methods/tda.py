"""TDA: a training-free dynamic adapter, two caches of test features whose affinities adjust the logits.

Karmanov et al., "Efficient Test-Time Adaptation of Vision-Language Models", CVPR 2024 (reference code
azshue/TDA, ``tda_runner.py`` and ``configs/*.yaml``; reconstructed here from the paper and that code's
published description, written anew). For each test image with normalised feature ``f``, zero-shot logits
``z``, prediction ``ŷ = argmax z`` and entropy ``H`` (nats) of ``softmax(z)``:

- **positive cache**: per pseudo-class ``ŷ``, at most ``pos_capacity`` (3) features of the lowest entropy
  seen: an image joins while its class has a free slot, else it replaces the class's highest-entropy entry
  if its own entropy is lower;
- **negative cache**: the same per pseudo-class rule (``neg_capacity`` 2), only for images whose
  normalised entropy ``H / log2(C)`` lies strictly inside ``neg_entropy`` (0.2, 0.5); each entry keeps a
  negative pseudo-label: the classes its prediction gave a probability strictly inside ``neg_mask``
  (0.03, 1.0);
- **logits**: ``z + pos_alpha · Σ_pos A(f, k)·onehot(class) − neg_alpha · Σ_neg A(f, k)·mask``, the
  affinity ``A(f, k) = exp(−β (1 − f·k))`` with ``pos_beta`` 5 and ``neg_beta`` 1.

Defaults are the reference's ImageNet configuration. The method is training-free (no gradient, no
change to any weight); its state is the two caches, which carry over in ``continual`` and are emptied by
``reset()`` (``reset_each_shift``). It runs the zero-shot model (the default), or the WiSE-FT weights θ(α)
built once with ``alpha=``, through ``encode(images)`` / ``classify(features)`` (a
:class:`~adawise.models.clip.CLIPClassifier`); a model without them is refused at construction.

Where this reconstruction departs from the reference, and why:

- **One view per image.** The reference classifies each ImageNet-A/V/R/S image from 63 AugMix views plus
  the original (the 10% most confident views' mean feature and logits); here every image is one view (64
  passes per image are not a baseline at the cost of the others on the same stream).
- **Batches.** The reference streams one image at a time; here a batch is processed image by image in its
  order (``update="sample"``, the default): image ``i`` joins the caches, then is classified with the
  caches as they stand after images ``0..i`` (itself included, as in the reference). So the logits do not
  depend on the batch size (tested), and a batch's prediction uses only that batch's earlier images and
  the images before it, never its labels. ``update="batch"`` classifies a whole batch with the caches as
  they were before it and adds its images after (the strict batch-online order; the first batch then
  equals the zero-shot model exactly).
- **Logit scale.** The reference's ``pos_alpha`` 2.0 and ``neg_alpha`` 0.117 are sized against CLIP logits
  at scale 100 (``100 · f·W``). With ``weight_scale="auto"`` (default) they are multiplied by
  ``s / 100``, ``s`` the model's own logit scale (the mean norm of its head's rows: 100 for CLIP, 13.8 in
  the embedded world), so the caches move the logits by the same fraction of their range as in the
  reference; a number sets ``s`` explicitly and ``weight_scale=100`` gives the reference's values as they are.
- **Entropy band.** The reference normalises the entropy in nats by ``log2(C)`` (not ``ln C``), i.e. its
  band is on ``ln 2 ·`` the normalised entropy; the band here is on the same quantity, so the published
  (0.2, 0.5) means what it means there.
- **Ties and NaN.** Among a full class's entries of equal highest entropy the latest one is replaced (what
  the reference's stable sort does); images whose logits are not finite never enter a cache.
- **Precision.** Cache logits are computed in fp32 (the reference uses fp16 on CUDA).

Cost: one forward pass (the features and logits of the same pass), plus an affinity matrix between the
batch and at most ``(pos_capacity + neg_capacity)·C`` cache entries and the batch itself; the cache
bookkeeping runs on the host (one device sync per batch).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adawise.core.objectives import entropy
from adawise.errors import DataError, UsageError
from adawise.methods.base import Method, evaluating
from adawise.methods.registry import register
from adawise.methods.static import check_alpha, merged_copy
from adawise.methods.zsf import check_encodes

__all__ = ["TDA", "FeatureCache", "head_scale", "UPDATES"]

UPDATES = ("sample", "batch")
#: the logit scale the reference's cache weights are sized for (CLIP: 100 · f·W)
REFERENCE_SCALE = 100.0


def head_scale(model: nn.Module) -> float:
    """The model's logit scale: the mean L2 norm of its head's rows (``model.head.weight``): for a CLIP
    zero-shot head, ``logit_scale.exp()``."""
    head = getattr(model, "head", None)
    weight = getattr(head, "weight", None)
    if not torch.is_tensor(weight) or weight.ndim != 2:
        raise UsageError(f"tda: weight_scale='auto' reads the logit scale from model.head.weight, which "
                         f"{type(model).__name__} lacks; pass weight_scale=<its logit scale> (e.g. 100 for CLIP)")
    return float(weight.detach().float().norm(dim=1).mean())


@dataclass
class FeatureCache:
    """One TDA cache: per class, at most ``capacity`` entries (feature, entropy, optional value row).

    Slots live in tensors (``keys`` [C, K, D] and ``values`` [C, K, V] on the features' device) and the
    bookkeeping on the host (``entropy`` [C][K], ``inf`` for a free slot; ``stamp``: when a slot was
    last written, for ties). :meth:`plan` decides, image by image, which slot each image of a batch
    writes, without touching the tensors; :meth:`commit` writes them.
    """

    capacity: int
    keys: Tensor | None = None
    values: Tensor | None = None
    entropy: list[list[float]] = field(default_factory=list)
    stamp: list[list[int]] = field(default_factory=list)
    clock: int = 0

    def allocate(self, classes: int, dim: int, value_dim: int, like: Tensor) -> None:
        """Empty slots for ``classes`` classes of ``dim``-dimensional features (on ``like``'s device)."""
        self.keys = torch.zeros(classes, self.capacity, dim, dtype=torch.float32, device=like.device)
        self.values = torch.zeros(classes, self.capacity, value_dim, dtype=torch.float32, device=like.device)
        self.entropy = [[math.inf] * self.capacity for _ in range(classes)]
        self.stamp = [[-1] * self.capacity for _ in range(classes)]
        self.clock = 0

    def size(self) -> int:
        """Entries held."""
        return sum(1 for row in self.entropy for h in row if h < math.inf)

    def valid_slots(self) -> list[int]:
        """Flat indices ``c * capacity + k`` of the slots that hold an entry."""
        return [c * self.capacity + k for c, row in enumerate(self.entropy) for k, h in enumerate(row) if h < math.inf]

    def plan(self, preds: list[int], entropies: list[float], eligible: list[bool]) -> list[int | None]:
        """For each image in order: the flat slot it writes, or ``None`` (not eligible, not finite, or not
        better than its class's worst entry). Updates the host bookkeeping as it goes."""
        writes: list[int | None] = []
        for c, h, ok in zip(preds, entropies, eligible, strict=True):
            slot = None
            if ok and self.capacity > 0 and math.isfinite(h):
                row, stamps = self.entropy[c], self.stamp[c]
                # a free slot (inf) first; else the highest entropy, the latest written among ties
                k = max(range(self.capacity), key=lambda j: (row[j], stamps[j]))
                if h < row[k]:
                    row[k], stamps[k] = h, self.clock
                    slot = c * self.capacity + k
            self.clock += 1
            writes.append(slot)
        return writes

    def commit(self, writes: list[int | None], features: Tensor, values: Tensor | None) -> None:
        """Write the planned entries (the last write to a slot wins)."""
        last: dict[int, int] = {}
        for i, slot in enumerate(writes):
            if slot is not None:
                last[slot] = i
        if not last or self.keys is None or self.values is None:
            return
        slots = torch.tensor(list(last), dtype=torch.long, device=features.device)
        rows = torch.tensor(list(last.values()), dtype=torch.long, device=features.device)
        dim = self.keys.shape[-1]
        self.keys.view(-1, dim)[slots] = features[rows].float()
        if values is not None:
            self.values.view(-1, self.values.shape[-1])[slots] = values[rows].float()


def _alive(old: list[int], writes: list[int | None], n: int, see_batch: bool) -> tuple[Tensor, list[int]]:
    """Which entries each image of a batch is classified with: a [n, len(old) + len(new)] boolean matrix
    over the entries held before the batch (flat slots ``old``) and the batch images that become entries
    (``new``, returned with it).

    ``see_batch`` (``update="sample"``): image ``i`` sees the state after images ``0..i`` were added: an old
    entry until its slot is first rewritten, batch image ``j <= i`` until its slot is rewritten after it.
    Otherwise every image sees the old entries only (and ``new`` is empty).
    """
    rows = torch.arange(n)[:, None]
    if not see_batch:
        return torch.ones(n, len(old), dtype=torch.bool), []
    first: dict[int, int] = {}
    following: dict[int, int] = {}  # batch image j -> the next image that rewrites its slot (n: none)
    upcoming: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        slot = writes[i]
        if slot is not None:
            following[i] = upcoming.get(slot, n)
            upcoming[slot] = i
            first[slot] = i
    new = sorted(following)
    old_end = torch.tensor([first.get(slot, n) for slot in old], dtype=torch.long)
    new_start = torch.tensor(new, dtype=torch.long)
    new_end = torch.tensor([following[j] for j in new], dtype=torch.long)
    alive_new = (rows >= new_start[None, :]) & (rows < new_end[None, :])
    return torch.cat([rows < old_end[None, :], alive_new], dim=1), new


@register("tda")
class TDA(Method):
    """TDA (Karmanov et al., CVPR 2024): positive and negative caches of test features; their affinity
    logits are added to the zero-shot logits (module docstring: the algorithm and every departure).

    Args:
        zeroshot, finetuned: the endpoints (only read). Without ``alpha`` only ``zeroshot`` is used.
        alpha: ``None`` (default): the zero-shot model; a number in [0, 1]: the WiSE-FT weights θ(α).
        pos_capacity, pos_alpha, pos_beta: positive cache: entries per class (3), weight (2.0 at logit
            scale 100) and affinity sharpness β (5.0).
        neg_capacity, neg_alpha, neg_beta: negative cache: entries per class (2), weight (0.117 at logit
            scale 100), sharpness (1.0).
        neg_entropy: (low, high): the open band of ``H / log2(C)`` an image needs for the negative cache
            ((0.2, 0.5)).
        neg_mask: (low, high): the open band of probabilities whose classes form an entry's negative
            pseudo-label ((0.03, 1.0)).
        weight_scale: the model's logit scale ``s``; ``pos_alpha`` and ``neg_alpha`` are multiplied by
            ``s / 100``. ``"auto"`` (default): the mean row norm of ``model.head.weight``.
        update: ``"sample"`` (default: each image joins the caches before it is classified, as in the
            reference) or ``"batch"`` (a batch is classified with the caches as they were before it).

    ``info`` after a call: ``forward_passes`` 1, ``pos_entries`` / ``neg_entries`` (held after the batch),
    ``pos_writes`` / ``neg_writes`` (this batch), ``seconds``, ``seconds_cache``.
    """

    adapts = True
    family = "tta"

    def __init__(self, zeroshot: nn.Module | None = None, finetuned: nn.Module | None = None,
                 alpha: float | None = None, pos_capacity: int = 3, pos_alpha: float = 2.0, pos_beta: float = 5.0,
                 neg_capacity: int = 2, neg_alpha: float = 0.117, neg_beta: float = 1.0,
                 neg_entropy: tuple[float, float] = (0.2, 0.5), neg_mask: tuple[float, float] = (0.03, 1.0),
                 weight_scale: float | str = "auto", update: str = "sample") -> None:
        super().__init__()
        for name, value in (("pos_capacity", pos_capacity), ("neg_capacity", neg_capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"tda: {name} must be a whole number >= 0 (entries per class), got {value!r}")
        numbers = {"pos_alpha": pos_alpha, "pos_beta": pos_beta, "neg_alpha": neg_alpha, "neg_beta": neg_beta}
        for name, value in numbers.items():
            try:
                ok = math.isfinite(float(value)) and float(value) >= 0.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UsageError(f"tda: {name} must be a finite number >= 0, got {value!r}")
        bands = {"neg_entropy": neg_entropy, "neg_mask": neg_mask}
        for name, band in bands.items():
            try:
                low, high = (float(b) for b in band)
                ok = math.isfinite(low) and math.isfinite(high) and low < high
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UsageError(f"tda: {name} must be two numbers (low, high) with low < high, got {band!r}")
        if update not in UPDATES:
            raise UsageError(f"tda: update must be one of {', '.join(UPDATES)}, got {update!r}")
        if alpha is None:
            if zeroshot is None:
                raise UsageError("tda needs the zero-shot model (zeroshot=...), the model it adapts")
            check_encodes(zeroshot, "zero-shot", "tda")
            self._keep(zeroshot=zeroshot)
            self.__dict__["_model"] = zeroshot  # a given model: read only, run under evaluating()
            self._alpha = 0.0
        else:
            check_alpha(alpha, "tda")
            if zeroshot is None or finetuned is None:
                raise UsageError("tda with alpha= needs both endpoints (zeroshot=..., finetuned=...)")
            check_encodes(finetuned, "fine-tuned", "tda")
            self.merged = merged_copy(zeroshot, finetuned, alpha, "tda").requires_grad_(False)
            self.__dict__["_model"] = self.merged
            self._keep(zeroshot=zeroshot, finetuned=finetuned)
            self._alpha = float(alpha)
        if weight_scale == "auto":
            self.weight_scale = head_scale(self.model)
        else:
            try:
                self.weight_scale = float(weight_scale)
                ok = math.isfinite(self.weight_scale) and self.weight_scale > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UsageError(f"tda: weight_scale must be 'auto' or a logit scale > 0, got {weight_scale!r}")
        self.pos_capacity, self.neg_capacity = pos_capacity, neg_capacity
        self.pos_alpha, self.pos_beta = float(pos_alpha), float(pos_beta)
        self.neg_alpha, self.neg_beta = float(neg_alpha), float(neg_beta)
        self.neg_entropy = tuple(float(b) for b in neg_entropy)
        self.neg_mask = tuple(float(b) for b in neg_mask)
        self.update = update
        self.reset()

    @property
    def model(self) -> nn.Module:
        """The model whose features and logits TDA adjusts (the zero-shot model or θ(α))."""
        return self.__dict__["_model"]

    def reset(self) -> None:
        """Empty both caches: the exact initial state."""
        self.positive = FeatureCache(self.pos_capacity)
        self.negative = FeatureCache(self.neg_capacity)
        self._classes: int | None = None
        self._info: dict[str, Any] = {"forward_passes": 0.0}

    def _cache_logits(self, cache: FeatureCache, old: list[int], writes: list[int | None], feats: Tensor,
                      beta: float, values: Tensor) -> Tensor | None:
        """Σ over the entries each image sees of exp(−β(1 − f·k)) · value row: [n, V], or None if none."""
        alive, new = _alive(old, writes, feats.shape[0], self.update == "sample")
        if not old and not new:
            return None
        assert cache.keys is not None and cache.values is not None
        device = feats.device
        old_index = torch.tensor(old, dtype=torch.long, device=device)
        new_index = torch.tensor(new, dtype=torch.long, device=device)
        keys = torch.cat([cache.keys.view(-1, cache.keys.shape[-1])[old_index], feats[new_index]])
        vals = torch.cat([cache.values.view(-1, cache.values.shape[-1])[old_index], values[new_index]])
        affinity = torch.exp(-beta * (1.0 - feats @ keys.T)) * alive.to(device)
        return affinity @ vals

    @torch.no_grad()
    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        with evaluating(self.model):
            raw = self.model.encode(images)
            logits = self.model.classify(raw)
        if not torch.is_tensor(logits) or logits.ndim != 2 or not torch.is_tensor(raw) or raw.ndim != 2:
            raise DataError(f"tda: encode must return [B, D] features and classify [B, C] logits, got "
                            f"{tuple(getattr(raw, 'shape', ()))} and {tuple(getattr(logits, 'shape', ()))}")
        n, classes = logits.shape
        if self._classes is None:
            self._classes = classes
        elif classes != self._classes:
            raise DataError(f"tda: the model predicted {self._classes} classes on earlier batches and {classes} "
                            "now; the caches belong to one label space (reset() to start over)")
        self._info = {"forward_passes": 1.0, "pos_entries": self.positive.size(), "neg_entries": self.negative.size(),
                      "pos_writes": 0, "neg_writes": 0}
        if n == 0:
            self._info |= {"seconds": time.perf_counter() - t0, "seconds_cache": 0.0}
            return logits
        t1 = time.perf_counter()
        with torch.autocast(logits.device.type, enabled=False):  # the cache arithmetic in fp32
            out = self._adapt(F.normalize(raw.float(), dim=-1), logits)
        self._info |= {"pos_entries": self.positive.size(), "neg_entries": self.negative.size(),
                       "seconds": time.perf_counter() - t0, "seconds_cache": time.perf_counter() - t1}
        return out

    def _adapt(self, feats: Tensor, logits: Tensor) -> Tensor:
        """The batch's cache updates and adjusted logits (module docstring)."""
        n, classes = logits.shape
        if self.positive.keys is None:
            self.positive.allocate(classes, feats.shape[1], classes, feats)
            self.negative.allocate(classes, feats.shape[1], classes, feats)
        z = logits.float()
        ent = torch.where(torch.isfinite(z).all(-1), entropy(z), torch.full_like(z[:, 0], math.nan))
        probs = torch.softmax(z, dim=-1)
        low, high = self.neg_mask
        negative_labels = ((probs > low) & (probs < high)).float()
        pred = z.argmax(-1)
        onehot = F.one_hot(pred, classes).float()
        preds, ents = pred.tolist(), ent.tolist()  # the host's view of the batch: one sync
        norm = math.log2(classes) if classes > 1 else 1.0  # the reference's normalisation (see the docstring)
        band = [self.neg_entropy[0] < h / norm < self.neg_entropy[1] for h in ents]
        old_pos, old_neg = self.positive.valid_slots(), self.negative.valid_slots()
        pos_writes = self.positive.plan(preds, ents, [True] * n)
        neg_writes = self.negative.plan(preds, ents, band)
        pos = self._cache_logits(self.positive, old_pos, pos_writes, feats, self.pos_beta, onehot)
        neg = self._cache_logits(self.negative, old_neg, neg_writes, feats, self.neg_beta, negative_labels)
        self.positive.commit(pos_writes, feats, onehot)
        self.negative.commit(neg_writes, feats, negative_labels)
        self._info["pos_writes"] = sum(w is not None for w in pos_writes)
        self._info["neg_writes"] = sum(w is not None for w in neg_writes)
        if pos is None and neg is None:
            return logits  # empty caches: exactly the model's logits
        scale = self.weight_scale / REFERENCE_SCALE
        adjusted = z.clone()
        if pos is not None:
            adjusted += (self.pos_alpha * scale) * pos
        if neg is not None:
            adjusted -= (self.neg_alpha * scale) * neg
        return adjusted.to(logits.dtype)

    @property
    def alpha(self) -> float:
        """The α of the weights TDA runs (0: the zero-shot model)."""
        return self._alpha

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def options(self) -> dict[str, Any]:
        return {"alpha": self._alpha, "pos_capacity": self.pos_capacity, "pos_alpha": self.pos_alpha,
                "pos_beta": self.pos_beta, "neg_capacity": self.neg_capacity, "neg_alpha": self.neg_alpha,
                "neg_beta": self.neg_beta, "neg_entropy": list(self.neg_entropy), "neg_mask": list(self.neg_mask),
                "weight_scale": self.weight_scale, "update": self.update}
