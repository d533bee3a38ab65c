"""VRF: sample-wise output ensemble weighted by the distance to the Zero-Shot-Failure set.

Zhu et al., NeurIPS 2024, "Enhancing Robust Fine-Tuning of Vision-Language Models via Variance
Reduction" (reference code: BeierZhu/VRF). For each test sample x, with d(x) the distance from its
normalised fine-tuned feature to the k-th nearest neighbour in the ZSF set (:mod:`adawise.methods.zsf`):

    ω(x) = sigmoid(−(d(x) − a) / b)
    p(x) = ω(x)·softmax(z_ft / T_ft) + (1 − ω(x))·softmax(z_zs / T_zs)

and the method returns log p. Cost: one zero-shot pass and one fine-tuned pass, whose features are
reused for the kNN search. Nothing carries over between batches or domains (``reset`` is a no-op).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adawise.errors import ModelMismatchError, UsageError
from adawise.methods.base import EndpointPair, Method, evaluating
from adawise.methods.registry import register
from adawise.methods.static import check_same_classes, mix_probabilities
from adawise.methods.zsf import ZSFIndex, check_encodes, vrf_weight

__all__ = ["VRF", "check_index_models"]


def check_index_models(index: ZSFIndex, zeroshot: nn.Module, finetuned: nn.Module) -> None:
    """Refuse an index whose stored model hashes differ from the given models' weights."""
    hashes = index.model_hashes
    if hashes is None:
        return
    from adawise.models.checkpoints import weights_hash

    got = (weights_hash(zeroshot), weights_hash(finetuned))
    if got != hashes:
        where = index.path or "the given in-memory index"
        wrong = [role for role, g, h in zip(("zero-shot", "fine-tuned"), got, hashes, strict=True) if g != h]
        raise ModelMismatchError(
            f"ZSF index {where} was built for zero-shot weights {hashes[0]} and fine-tuned weights "
            f"{hashes[1]}, but the given models hash to {got[0]} and {got[1]} ({' and '.join(wrong)} differ). "
            "Rebuild the index for these models (adawise.build_zsf_index or `adawise vrf-index`), or pass the "
            "models it was built for; check_hash=False skips this check at your own risk."
        )


@register("vrf", default_run=True)
class VRF(EndpointPair, Method):
    """Variance-reduction fine-tuning's sample-wise output ensemble; returns log-probabilities.

    Args:
        zeroshot, finetuned: classifiers with ``encode(images)`` and ``classify(features)``.
        index: a :class:`~adawise.methods.zsf.ZSFIndex` or the path of a saved one.
        a, b: override the index's ω = sigmoid(−(d − a)/b) parameters.
        T_zs, T_ft: override the index's fitted temperatures.
        check_hash: refuse an index built for other model weights (default True).
    """

    output_ensemble = False
    app_options = frozenset({"index"})
    required_options = {"index": "it needs a Zero-Shot-Failure index built from the fine-tuning data; build one with "
                                 "`adawise vrf-index --arch ... --pretrained ... --finetuned ... --source-data DIR "
                                 "--out zsf.safetensors` and pass --vrf-index zsf.safetensors"}
    family = "ensemble"

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, index: ZSFIndex | str | os.PathLike | None = None,
                 a: float | None = None, b: float | None = None, T_zs: float | None = None,
                 T_ft: float | None = None, check_hash: bool = True) -> None:
        super().__init__()
        if index is None:
            raise UsageError(
                "vrf needs index=: a ZSFIndex or the path of one. Build it from the fine-tuning data with "
                "adawise.build_zsf_index(zeroshot, finetuned, source_stream).save('zsf.safetensors') or "
                "`adawise vrf-index --out zsf.safetensors`"
            )
        check_encodes(zeroshot, "zero-shot")
        check_encodes(finetuned, "fine-tuned")
        check_same_classes(zeroshot, finetuned, "vrf")
        if not isinstance(index, ZSFIndex):
            index = ZSFIndex.load(index)
        if check_hash:
            check_index_models(index, zeroshot, finetuned)
        self._keep(zeroshot=zeroshot, finetuned=finetuned)  # read only: not submodules
        self.index = index
        self.a = index.a if a is None else float(a)
        self.b = index.b if b is None else float(b)
        self.T_zs = index.T_zs if T_zs is None else float(T_zs)
        self.T_ft = index.T_ft if T_ft is None else float(T_ft)
        if self.b <= 0 or self.T_zs <= 0 or self.T_ft <= 0:
            raise UsageError(f"vrf: b, T_zs and T_ft must be > 0, got b={self.b}, T_zs={self.T_zs}, T_ft={self.T_ft}")
        self.check_hash = bool(check_hash)
        self._info: dict[str, Any] = {"forward_passes": 2.0}
        self.last_omega: Tensor | None = None

    def forward(self, images: Any) -> Tensor:
        with evaluating(self.zeroshot, self.finetuned):
            feats = self.finetuned.encode(images)
            z_ft = self.finetuned.classify(feats)
            z_zs = self.zeroshot(images)
        query = F.normalize(feats.detach().float(), dim=-1)
        if query.is_cuda:
            torch.cuda.synchronize(query.device)
        start = time.perf_counter()
        d = self.index.kth_distance(query)
        if d.is_cuda:
            torch.cuda.synchronize(d.device)
        knn_seconds = time.perf_counter() - start
        omega = vrf_weight(d, self.a, self.b)
        self.last_omega = omega.detach()
        self._info = {
            "forward_passes": 2.0,
            "omega_mean": float(omega.mean()) if omega.numel() else float("nan"),
            "distance_mean": float(d.mean()) if d.numel() else float("nan"),
            "knn_seconds": knn_seconds,
        }
        return mix_probabilities(z_zs.float() / self.T_zs, z_ft.float() / self.T_ft, omega.to(z_ft.device))

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def options(self) -> dict[str, Any]:
        idx = self.index
        return {"index": idx.path or "<in memory>", "index_size": len(idx), "feature_dim": idx.dim, "k": idx.k,
                "squared": idx.squared, "a": self.a, "b": self.b, "T_zs": self.T_zs, "T_ft": self.T_ft,
                "check_hash": self.check_hash, "model_hashes": list(idx.model_hashes) if idx.model_hashes else None}
