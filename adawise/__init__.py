"""adawise: test-time adaptation of weight-space ensembles for zero-shot vision models.

Public API (resolved lazily, so ``import adawise`` stays fast)::

    zs, ft = adawise.load_pair(...)                 # two classifiers, same architecture
    engine = adawise.AdaWiSE(zs, ft)                # BO over alpha per batch, one live model
    logits = engine(images)                         # predict at the best alpha found on this batch
    method = adawise.make_method("vrf", zeroshot=zs, finetuned=ft, index=...)
    result = adawise.run_stream(method, stream, log="runs/x.jsonl")

Every error a caller can cause is an :class:`adawise.AdawiseError` (each also a ``ValueError``,
``TypeError``, ``FileNotFoundError``, ... as fits; see :mod:`adawise.errors`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "interpolate": "adawise.core.weights",
    "WeightSpace": "adawise.core.weights",
    "check_compatible": "adawise.core.weights",
    "Method": "adawise.methods.base",
    "make_method": "adawise.methods.registry",
    "registered_methods": "adawise.methods.registry",
    "register": "adawise.methods.registry",
    "run_stream": "adawise.evaluation.loop",
    "StreamResult": "adawise.evaluation.loop",
    "load_checkpoint": "adawise.models.checkpoints",
    "save_state_dict": "adawise.models.checkpoints",
    "load_pair": "adawise.models.clip",
    "build_classifier": "adawise.models.clip",
    "CLIPClassifier": "adawise.models.clip",
    "AdaWiSE": "adawise.methods.adawise",
    "BayesOpt1D": "adawise.core.bayesopt",
    "ZSFIndex": "adawise.methods.zsf",
    "build_zsf_index": "adawise.methods.zsf",
    "load_embedded": "adawise.embedded.world",
    "EmbeddedWorld": "adawise.embedded.world",
    "EmbeddedRecipe": "adawise.embedded.world",
    "AdaWiSEConfig": "adawise.methods.adawise_config",
    **{name: "adawise.errors" for name in (
        "AdawiseError", "UsageError", "InputTypeError", "MissingFileError", "AccessError", "DataError",
        "CheckpointError", "UntrustedPickleError", "ModelMismatchError", "StateDictMismatchError", "LogError",
        "ResumeError", "RunLockedError", "UnknownNameError")},
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adawise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
