"""VRF's Zero-Shot-Failure (ZSF) set: building it, storing it, and k-th nearest-neighbour distances.

Zhu et al., NeurIPS 2024, "Enhancing Robust Fine-Tuning of Vision-Language Models via Variance
Reduction" (reference code: BeierZhu/VRF). The ZSF set holds the L2-normalised fine-tuned features of
the fine-tuning (source) samples that the fine-tuned model classifies correctly and the zero-shot
model does not. At test time the distance d(x) from a sample's fine-tuned feature to its k-th nearest
neighbour in that set decides how much to trust the fine-tuned model: ω(x) = sigmoid(−(d − a)/b).

Distances. The reference searches a faiss ``IndexFlatL2``, so ``d`` is a *squared* L2 distance (in
[0, 4] between unit vectors); that is the default here (``squared=True``), ``squared=False`` gives the
true L2 distance. The search runs on the device of the queries, in fp32: chunks of the index are
ranked by ||x||² − 2 q·x (one fused matmul; ||q||² is constant per query, so the general form also
serves non-normalised features) keeping a running top-k, so sets of ImageNet size fit in memory; the
k-th neighbour's distance is then computed directly as ||q − x||² (no cancellation near 0). faiss is
used for CPU queries when it is installed.

Defaults: k = round(1000·|ZSF| / |train|) (the reference rule, at least 1), a = 1.5, b = 0.6 (the
paper uses b = 0.5 for ViT-B/16), temperatures fitted on held-out in-distribution data so that mean
max-probability equals accuracy.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adawise.errors import CheckpointError, DataError, InputTypeError, MissingFileError, UsageError

__all__ = ["ZSFIndex", "build_zsf_index", "fit_temperature", "kth_distance", "reference_k", "vrf_weight",
           "check_encodes"]

log = logging.getLogger(__name__)

FORMAT = "adawise-zsf/1"
_META_KEY = "adawise_zsf"
_FEATURES_KEY = "features"
DEFAULT_CHUNK = 65536
_QUERY_BLOCK = 256


# ----------------------------------------------------------------------------------------- primitives


def reference_k(n_zsf: int, n_source: int) -> int:
    """The reference rule k = round(1000·|ZSF| / |train|), at least 1."""
    if n_source <= 0:
        raise UsageError(f"reference_k: the source set is empty (n_source={n_source})")
    return max(1, round(1000 * n_zsf / n_source))


def vrf_weight(d: Tensor, a: float, b: float) -> Tensor:
    """ω = sigmoid(−(d − a) / b): 0.5 at d = a, decreasing in d (b > 0)."""
    if b <= 0:
        raise UsageError(f"VRF: b must be > 0, got {b}")
    return torch.sigmoid(-(d - a) / b)


def _faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


@torch.no_grad()
def kth_distance(queries: Tensor, bank: Tensor, k: int, squared: bool = True, chunk_size: int = DEFAULT_CHUNK,
                 bank_sq_norms: Tensor | None = None) -> Tensor:
    """Distance from each query to its k-th nearest row of ``bank`` (flat search, chunked).

    Args:
        queries: [B, D] on the device where the search runs.
        bank: [N, D] fp32 on the same device.
        k: 1 <= k <= N.
        squared: squared L2 (the reference's faiss ``IndexFlatL2``) or true L2.
        chunk_size: rows of ``bank`` scored per matmul.
        bank_sq_norms: precomputed ||x||² of the bank rows [N] (optional).

    Returns:
        [B] fp32 distances.
    """
    n, dim = bank.shape
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise UsageError(f"kth_distance: queries have shape {tuple(queries.shape)}, expected [B, {dim}]")
    if not 1 <= k <= n:
        raise UsageError(f"kth_distance: k={k} must be between 1 and the number of indexed rows ({n})")
    q = queries.float()
    x2 = bank_sq_norms if bank_sq_norms is not None else bank.pow(2).sum(1)
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    for qs in range(0, q.shape[0], _QUERY_BLOCK):
        qb = q[qs:qs + _QUERY_BLOCK]
        best_s: Tensor | None = None
        best_i: Tensor | None = None
        for start in range(0, n, chunk_size):
            xc = bank[start:start + chunk_size]
            # ||q||² is constant per query, so ranking by ||x||² − 2 q·x (one fused addmm) is enough
            s = torch.addmm(x2[start:start + chunk_size][None, :], qb, xc.T, beta=1.0, alpha=-2.0)
            s, pos = torch.topk(s, min(k, xc.shape[0]), dim=1, largest=False, sorted=False)
            pos = pos + start
            if best_s is not None:
                s, pos = torch.cat([best_s, s], 1), torch.cat([best_i, pos], 1)
                s, sel = torch.topk(s, k, dim=1, largest=False, sorted=False) if s.shape[1] > k else (s, None)
                pos = pos if sel is None else torch.gather(pos, 1, sel)
            best_s, best_i = s, pos
        # the k-th neighbour's distance recomputed exactly as ||q − x||² (no cancellation near 0)
        nearest = bank[torch.gather(best_i, 1, best_s.argmax(1, keepdim=True)).squeeze(1)]
        out[qs:qs + _QUERY_BLOCK] = (qb - nearest).pow(2).sum(1)
    return out if squared else out.sqrt()


@torch.no_grad()
def fit_temperature(logits: Tensor, labels: Tensor, lo: float = 1e-3, hi: float = 1e3, tol: float = 1e-6,
                    max_iter: int = 200) -> float:
    """Temperature T such that mean max softmax(z / T) equals the accuracy of ``logits`` [N, C].

    Mean max-probability falls monotonically from about 1 (T → 0) to 1/C (T → ∞), so T is found by
    bisection on log T. An accuracy outside the reachable range gives the nearest end of [lo, hi].
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise UsageError(f"fit_temperature: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "must be [N, C] and [N]")
    if logits.shape[0] == 0:
        raise UsageError("fit_temperature: no held-out samples to fit a temperature on")
    z = logits.detach().double()
    acc = (z.argmax(1) == labels.to(z.device)).double().mean().item()

    def conf(t: float) -> float:
        return torch.softmax(z / t, 1).max(1).values.mean().item()

    if conf(lo) <= acc:
        return lo
    if conf(hi) >= acc:
        return hi
    a, b = math.log(lo), math.log(hi)
    for _ in range(max_iter):
        mid = 0.5 * (a + b)
        c = conf(math.exp(mid))
        if abs(c - acc) < tol:
            break
        a, b = (mid, b) if c > acc else (a, mid)
    return math.exp(0.5 * (a + b))


# ----------------------------------------------------------------------------------------- the index


class ZSFIndex:
    """A Zero-Shot-Failure feature set with its VRF hyperparameters.

    ``ZSFIndex(features, k=5)`` builds one straight from a feature matrix [N, D] (no model hash is
    attached, so no model check is possible); :func:`build_zsf_index` builds one from two models and a
    source stream. :meth:`kth_distance` searches on the device of its input (the index is moved there
    once and cached). Files are safetensors: the feature matrix plus one JSON metadata string.

    Args:
        features: [N, D] feature matrix (VRF stores L2-normalised fine-tuned features).
        k: neighbour rank; ``None`` applies the reference rule, which needs ``n_source`` and ``n_zsf``
            in ``metadata``.
        a, b: ω = sigmoid(−(d − a) / b).
        squared: squared L2 (reference semantics) or true L2 distances.
        T_zs, T_ft: temperatures of the zero-shot and fine-tuned logits.
        metadata: extra JSON-able metadata (model hashes, counts, ...).
        chunk_size: index rows per matmul in the flat search.
        backend: ``"auto"`` (faiss for CPU queries when installed, else torch), ``"torch"``, ``"faiss"``.
    """

    def __init__(self, features: Tensor, k: int | None = None, *, a: float = 1.5, b: float = 0.6,
                 squared: bool = True, T_zs: float = 1.0, T_ft: float = 1.0, metadata: dict[str, Any] | None = None,
                 chunk_size: int = DEFAULT_CHUNK, backend: str = "auto") -> None:
        features = torch.as_tensor(features)
        if features.ndim != 2 or 0 in features.shape:
            raise UsageError(f"ZSFIndex: features must be a non-empty [N, D] matrix, got {tuple(features.shape)}")
        if not features.is_floating_point():
            raise UsageError(f"ZSFIndex: features must be floating point, got {features.dtype}")
        meta = dict(metadata or {})
        if k is None:
            if "n_source" not in meta or "n_zsf" not in meta:
                raise UsageError("ZSFIndex: pass k (the neighbour rank), or metadata with n_source and n_zsf "
                                 "so the reference rule k = round(1000·|ZSF|/|train|) applies")
            k = reference_k(int(meta["n_zsf"]), int(meta["n_source"]))
        if not 1 <= int(k) <= features.shape[0]:
            raise UsageError(f"ZSFIndex: k={k} must be between 1 and the number of features ({features.shape[0]})")
        if b <= 0 or T_zs <= 0 or T_ft <= 0:
            raise UsageError(f"ZSFIndex: b and the temperatures must be > 0, got b={b}, T_zs={T_zs}, T_ft={T_ft}")
        if backend not in ("auto", "torch", "faiss"):
            raise UsageError(f"ZSFIndex: backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
        if backend == "faiss" and not _faiss_available():
            raise ImportError("ZSFIndex: backend='faiss' but faiss is not installed (pip install faiss-cpu); "
                              "or use backend='torch'")
        self.features = features.detach().float().cpu().contiguous()
        self.k, self.a, self.b, self.squared = int(k), float(a), float(b), bool(squared)
        self.T_zs, self.T_ft = float(T_zs), float(T_ft)
        self.metadata = meta
        self.chunk_size, self.backend = int(chunk_size), backend
        self.path: str | None = None
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._faiss: Any = None

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.features.shape[1]

    @property
    def model_hashes(self) -> tuple[str, str] | None:
        """(zero-shot, fine-tuned) weight hashes the index was built for, or ``None``."""
        zs, ft = self.metadata.get("zeroshot_hash"), self.metadata.get("finetuned_hash")
        return (zs, ft) if zs and ft else None

    def __repr__(self) -> str:
        return (f"ZSFIndex(n={len(self)}, dim={self.dim}, k={self.k}, a={self.a}, b={self.b}, "
                f"{'squared L2' if self.squared else 'L2'}, T_zs={self.T_zs:.4g}, T_ft={self.T_ft:.4g})")

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._cache:
            bank = self.features.to(device)
            self._cache[device] = (bank, bank.pow(2).sum(1))
        return self._cache[device]

    def _use_faiss(self, device: torch.device) -> bool:
        if self.backend != "auto":
            return self.backend == "faiss"
        return device.type == "cpu" and _faiss_available()

    def kth_distance(self, features: Tensor) -> Tensor:
        """Distance of each row of ``features`` [B, D] to its k-th nearest ZSF feature, on their device.

        Returns [B] fp32 (squared L2 unless the index was made with ``squared=False``).
        """
        if not isinstance(features, Tensor) or features.ndim != 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise UsageError(f"ZSFIndex.kth_distance: expected features [B, {self.dim}], got {shape}")
        if features.shape[1] != self.dim:
            where = f" {self.path}" if self.path else ""
            raise UsageError(
                f"ZSFIndex.kth_distance: features have dim {features.shape[1]} but the index{where} holds "
                f"dim-{self.dim} features, so it was built for other models; rebuild it for these models "
                "with adawise.build_zsf_index or `adawise vrf-index`"
            )
        if features.shape[0] == 0:
            return torch.empty(0, dtype=torch.float32, device=features.device)
        if self._use_faiss(features.device):
            import faiss
            import numpy as np

            if self._faiss is None:
                self._faiss = faiss.IndexFlatL2(self.dim)
                self._faiss.add(self.features.numpy())
            dist, _ = self._faiss.search(np.ascontiguousarray(features.detach().float().cpu().numpy()), self.k)
            d = torch.from_numpy(dist[:, self.k - 1].copy()).clamp_min_(0.0).to(features.device)
            return d if self.squared else d.sqrt()
        bank, sq = self._on(features.device)
        return kth_distance(features, bank, self.k, self.squared, self.chunk_size, bank_sq_norms=sq)

    def weight(self, features: Tensor, a: float | None = None, b: float | None = None) -> Tensor:
        """ω = sigmoid(−(d − a)/b) per row of ``features`` (the index's a, b unless overridden)."""
        return vrf_weight(self.kth_distance(features), self.a if a is None else a, self.b if b is None else b)

    def header(self) -> dict[str, Any]:
        """Everything saved next to the feature matrix."""
        return {**self.metadata, "format": FORMAT, "feature_dim": self.dim, "n_zsf": len(self), "k": self.k,
                "a": self.a, "b": self.b, "squared": self.squared, "T_zs": self.T_zs, "T_ft": self.T_ft}

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file: tensor ``features`` and metadata ``adawise_zsf`` (one JSON string)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({_FEATURES_KEY: self.features}, str(path),
                  metadata={_META_KEY: json.dumps(self.header(), sort_keys=True)})
        self.path = str(path)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto") -> ZSFIndex:
        """Read an index written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"ZSF index not found: {path} (resolved: {path.resolve()}); build one with "
                                    "adawise.build_zsf_index(...).save(path) or `adawise vrf-index --out PATH`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta_raw, keys = (f.metadata() or {}).get(_META_KEY), list(f.keys())
                features = f.get_tensor(_FEATURES_KEY) if _FEATURES_KEY in keys else None
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        if meta_raw is None or features is None:
            raise CheckpointError(f"{path}: not a ZSF index (expected tensor {_FEATURES_KEY!r} and metadata key "
                             f"{_META_KEY!r}; found tensors {keys}); build one with `adawise vrf-index`")
        try:
            meta = json.loads(meta_raw)
        except ValueError:
            raise CheckpointError(f"{path}: its ZSF metadata is not valid JSON; the file is corrupt, rebuild it"
                                  ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unsupported ZSF index format "
                                  f"{meta.get('format') if isinstance(meta, dict) else meta!r} (expected {FORMAT!r})")
        if meta.get("feature_dim") != features.shape[1]:
            raise CheckpointError(f"{path}: metadata says feature_dim {meta.get('feature_dim')} but the stored "
                             f"matrix has shape {tuple(features.shape)}; the file is corrupt, rebuild it")
        core = {"format", "feature_dim", "k", "a", "b", "squared", "T_zs", "T_ft"}
        try:
            idx = cls(features, k=int(meta["k"]), a=meta["a"], b=meta["b"], squared=meta["squared"], T_zs=meta["T_zs"],
                      T_ft=meta["T_ft"], metadata={k: v for k, v in meta.items() if k not in core}, backend=backend)
        except (KeyError, TypeError, UsageError) as err:
            raise CheckpointError(f"{path}: its ZSF metadata is incomplete or invalid ({err}); rebuild the index"
                                  ) from None
        idx.path = str(path)
        return idx


# ----------------------------------------------------------------------------------------- building


def check_encodes(model: nn.Module, role: str, method: str = "VRF") -> None:
    """Raise a clear error if ``model`` lacks ``encode(images)`` / ``classify(features)`` (``method``: who needs
    them, named in the message)."""
    missing = [m for m in ("encode", "classify") if not callable(getattr(model, m, None))]
    if missing:
        raise InputTypeError(
            f"{method} needs the {role} model to expose encode(images) -> normalised features and "
            f"classify(features) -> logits; {type(model).__name__} lacks {', '.join(missing)}. Wrap it in "
            "adawise.CLIPClassifier (adawise.load_pair builds those) or add the two methods."
        )


def _batches(stream: Iterable[Any]) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in stream:
        yield (batch.images, batch.labels) if hasattr(batch, "images") else (batch[0], batch[1])


def _len_or_none(stream: Any) -> int | None:
    try:
        return len(stream)
    except TypeError:
        return None


def _run_pair(zeroshot: nn.Module, finetuned: nn.Module, images: Tensor,
              device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    images = images.to(device)
    feats = finetuned.encode(images)
    z_ft = finetuned.classify(feats).float()
    return zeroshot(images).float(), z_ft, F.normalize(feats.float(), dim=-1)


@torch.no_grad()
def build_zsf_index(zeroshot: nn.Module, finetuned: nn.Module, stream: Iterable[Any], *,
                    holdout: Iterable[Any] | None = None, holdout_fraction: float = 0.1, k: int | None = None,
                    a: float = 1.5, b: float = 0.6, squared: bool = True, device: str | torch.device | None = None,
                    progress: bool = True, seed: int = 0) -> ZSFIndex:
    """Build VRF's Zero-Shot-Failure set from a labelled source (fine-tuning) stream.

    Both models run over ``stream``; the L2-normalised fine-tuned features of samples the fine-tuned
    model gets right and the zero-shot model gets wrong form the set. Temperatures are fitted (mean
    max-probability = accuracy) on ``holdout``, or, when none is given, on a seeded random
    ``holdout_fraction`` of the source samples, which are then kept out of the set and the counts
    (``holdout_fraction=0`` leaves both temperatures at 1).

    Args:
        zeroshot, finetuned: classifiers with ``encode(images)`` and ``classify(features)``.
        stream: iterable of batches with ``images`` and ``labels`` (e.g. a :class:`streams.Stream`).
        holdout: labelled in-distribution batches for the temperatures.
        holdout_fraction: share of source samples held out when ``holdout`` is None.
        k: neighbour rank; default round(1000·|ZSF|/|source|), at least 1, at most |ZSF|.
        a, b: ω = sigmoid(−(d − a)/b) defaults stored with the index.
        squared: squared L2 (reference) or true L2.
        device: where the models run (default: the fine-tuned model's device); models are not moved.
        progress: show tqdm progress bars.
        seed: seed of the held-out split.

    Returns:
        The :class:`ZSFIndex`, with both models' weight hashes and the counts in its metadata.
    """
    from tqdm.auto import tqdm

    from adawise.models.checkpoints import weights_hash

    check_encodes(zeroshot, "zero-shot")
    check_encodes(finetuned, "fine-tuned")
    if not 0.0 <= holdout_fraction < 1.0:
        raise UsageError(f"build_zsf_index: holdout_fraction must be in [0, 1), got {holdout_fraction}")
    dev = torch.device(device) if device is not None else next(
        (p.device for p in finetuned.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    split = holdout is None and holdout_fraction > 0
    zsf: list[Tensor] = []
    held: list[tuple[Tensor, Tensor, Tensor]] = []
    n_source = ft_correct = zs_correct = 0
    from adawise.methods.base import evaluating

    with evaluating(zeroshot, finetuned):  # eval mode for the passes; every submodule's own mode restored
        for images, labels in tqdm(_batches(stream), total=_len_or_none(stream), desc="ZSF set: source",
                                   disable=None if progress else True):
            z_zs, z_ft, feats = _run_pair(zeroshot, finetuned, images, dev)
            y = torch.as_tensor(labels, dtype=torch.long).to(dev)
            if split:
                is_held = (torch.rand(len(y), generator=gen) < holdout_fraction).to(dev)
                held.append((z_zs[is_held].cpu(), z_ft[is_held].cpu(), y[is_held].cpu()))
                z_zs, z_ft, feats, y = z_zs[~is_held], z_ft[~is_held], feats[~is_held], y[~is_held]
            ft_ok, zs_ok = z_ft.argmax(1) == y, z_zs.argmax(1) == y
            n_source += len(y)
            ft_correct += int(ft_ok.sum())
            zs_correct += int(zs_ok.sum())
            zsf.append(feats[ft_ok & ~zs_ok].cpu())
        if holdout is not None:
            for images, labels in tqdm(_batches(holdout), total=_len_or_none(holdout), desc="ZSF set: holdout",
                                       disable=None if progress else True):
                z_zs, z_ft, _ = _run_pair(zeroshot, finetuned, images, dev)
                held.append((z_zs.cpu(), z_ft.cpu(), torch.as_tensor(labels, dtype=torch.long).cpu()))

    if n_source == 0:
        raise DataError("build_zsf_index: the source stream yielded no samples (after the held-out split)")
    features = torch.cat(zsf) if zsf else torch.empty(0)
    n_zsf = features.shape[0]
    if n_zsf == 0:
        raise DataError(
            f"build_zsf_index: empty Zero-Shot-Failure set: of {n_source} source samples the fine-tuned model "
            f"got {ft_correct} right and the zero-shot model {zs_correct}, but none is right for the "
            "fine-tuned model and wrong for the zero-shot one. Check that the stream is the fine-tuning "
            "data and the models are the intended pair."
        )
    if k is None:
        k = reference_k(n_zsf, n_source)
    if k > n_zsf:
        log.warning("build_zsf_index: k=%d exceeds the ZSF set size %d; using k=%d", k, n_zsf, n_zsf)
        k = n_zsf

    T_zs = T_ft = 1.0
    extra: dict[str, Any] = {"n_holdout": 0}
    if held and sum(len(h[2]) for h in held):
        h_zs, h_ft, h_y = (torch.cat(t) for t in zip(*held, strict=True))
        T_zs, T_ft = fit_temperature(h_zs, h_y), fit_temperature(h_ft, h_y)
        extra = {"n_holdout": len(h_y), "holdout_acc_zs": (h_zs.argmax(1) == h_y).float().mean().item(),
                 "holdout_acc_ft": (h_ft.argmax(1) == h_y).float().mean().item()}
    else:
        log.warning("build_zsf_index: no held-out data; temperatures left at 1")
    meta = {
        "zeroshot_hash": weights_hash(zeroshot), "finetuned_hash": weights_hash(finetuned),
        "n_source": n_source, "n_zsf": n_zsf, "ft_correct": ft_correct, "zs_correct": zs_correct,
        "temperatures_fitted": extra["n_holdout"] > 0,
        "holdout": "stream" if holdout is not None else f"fraction {holdout_fraction} of the source (seed {seed})",
        **extra,
    }
    return ZSFIndex(features, k=k, a=a, b=b, squared=squared, T_zs=T_zs, T_ft=T_ft, metadata=meta)
