"""Safe checkpoint IO: safetensors, ``torch.load(weights_only=True)``, pickles only when trusted.

Foreign layouts are mapped onto this project's classifier keys (``visual.*``, ``head.*``):
open_clip full-model state dicts, wise-ft ``ImageClassifier`` checkpoints
(``image_encoder.model.visual.*``, ``classification_head.*``) and DataParallel ``module.`` prefixes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["load_checkpoint", "save_state_dict", "import_state_dict", "weights_hash", "UntrustedPickleError"]


class UntrustedPickleError(RuntimeError):
    """A checkpoint holds pickled Python objects and ``trust_pickle`` was not given."""


def _extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
                return _extract_state_dict(obj[key], path)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise ValueError(
        f"{path}: no state dict found (got {type(obj).__name__}); expected a mapping of tensor names to "
        "tensors, optionally under 'state_dict'. Save checkpoints with adawise.save_state_dict()."
    )


def _is_safetensors(path: Path) -> bool:
    """Sniff the safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def load_checkpoint(
    path: str | os.PathLike, trust_pickle: bool = False, map_location: str = "cpu"
) -> dict[str, Tensor]:
    """Load a state dict from ``path`` without executing code unless told to.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A file that needs arbitrary unpickling (e.g. a wise-ft
    checkpoint that pickles the whole module) is refused with :class:`UntrustedPickleError` unless
    ``trust_pickle=True``, which you should pass only for files you trust.

    Returns:
        The state dict (tensor name -> tensor), with a ``state_dict`` wrapper or module unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (resolved: {path.resolve()}). Pass the path of a local "
            ".safetensors or .pt state dict; nothing is downloaded."
        )
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path), device=map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{path} contains pickled Python objects that weights-only loading refuses "
                f"({str(err).splitlines()[0][:200]}). Loading it would run code from the file. If you trust "
                "it, pass trust_pickle=True (CLI: --trust-pickle), then re-save it as safetensors with "
                "adawise.save_state_dict()."
            ) from None
        obj = torch.load(path, map_location=map_location, weights_only=False)
    return _extract_state_dict(obj, path)


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors (shared storage is cloned; values are made contiguous)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=dict(metadata or {}))


_PREFIX_MAP = (
    ("module.", ""),
    ("image_encoder.model.visual.", "visual."),
    ("image_encoder.model.", ""),
    ("model.visual.", "visual."),
    ("classification_head.", "head."),
)


def import_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map foreign key layouts onto ``visual.*`` / ``head.*`` and drop text-tower keys.

    Text-tower and logit-scale entries of a full CLIP state dict are not part of the image
    classifier and are dropped; everything else keeps its name after prefix mapping.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for old, new in _PREFIX_MAP:
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith(("visual.", "head.")):
            out[key] = value
    return out


def weights_hash(model: nn.Module | Mapping[str, Tensor]) -> str:
    """A short SHA-256 of a model's state dict (names, shapes, dtypes and values)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
