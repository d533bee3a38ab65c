"""Safe checkpoint IO: safetensors, ``torch.load(weights_only=True)``, pickles only when trusted.

Foreign layouts are mapped onto this project's classifier keys (``visual.*``, ``head.*``):
open_clip full-model state dicts, wise-ft ``ImageClassifier`` checkpoints
(``image_encoder.model.visual.*``, ``classification_head.*``) and DataParallel ``module.`` prefixes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import weakref
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from adawise.errors import AccessError, CheckpointError, MissingFileError, UntrustedPickleError

__all__ = ["load_checkpoint", "save_state_dict", "import_state_dict", "weights_hash", "check_weights",
           "default_mode", "probe_checkpoint", "UntrustedPickleError"]


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
    raise CheckpointError(
        f"{path}: no state dict found (got {type(obj).__name__}); expected a mapping of tensor names to "
        "tensors, optionally under 'state_dict'. Save checkpoints with adawise.save_state_dict()."
    )


def _sniff(path: Path) -> str:
    """The file's format from its first bytes: ``safetensors``, ``zip`` (torch.save), ``pickle`` (legacy
    torch.save), ``text`` (e.g. JSON) or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        return "unknown"
    return "text" if text[:1] in ("{", "[", "#", '"') or text.isprintable() else "unknown"


def probe_checkpoint(path: str | os.PathLike) -> str:
    """Check, from its first bytes only, that ``path`` can be a checkpoint (before anything slow is loaded):
    returns its format, or raises :class:`~adawise.errors.CheckpointError` for a text file, unknown bytes or
    a safetensors header longer than the file."""
    path = Path(path)
    kind = _sniff(path)
    if kind in ("text", "unknown") and path.suffix != ".safetensors":
        what = "a text file (JSON?)" if kind == "text" else "not a checkpoint format adawise knows"
        raise CheckpointError(f"{path} is {what}, not a weights file: pass a .safetensors file or a state dict "
                              "saved with torch.save (adawise.save_state_dict() writes safetensors)")
    if kind == "safetensors":
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
        if header + 8 > path.stat().st_size:
            raise CheckpointError(f"{path}: a damaged safetensors file: its header claims {header} bytes but the file "
                                  f"holds {path.stat().st_size}; the file was cut short. Copy it again.")
    return kind


def _load_safetensors(path: Path, map_location: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    if header + 8 > size:
        raise CheckpointError(f"{path}: a damaged safetensors file: its header claims {header} bytes but the file "
                              f"holds {size}; the file was cut short (an interrupted copy or download?). "
                              "Copy it again.")
    try:
        return load_file(str(path), device=map_location)
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: a damaged safetensors file ({str(err).splitlines()[0][:200]}); copy it "
                              "again or re-save it with adawise.save_state_dict()") from None


def _refused_global(err: Exception, path: Path) -> str | None:
    """The global that weights-only unpickling refused (a pickled Python object), if that is the error:
    named in torch's message, or found by parsing the file's pickle opcodes (nothing is executed)."""
    text = str(err)
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        name = text.split(marker, 1)[1].split()[0]
        # a torch name that does not exist (e.g. torch._utils._rebuild_tens) is a garbled, damaged file
        return None if name.startswith("torch.") and not _torch_has(name) else name
    names = _pickle_globals(path)
    return ", ".join(names[:3]) if names else None


def _torch_has(name: str) -> bool:
    """Whether the dotted ``torch.*`` name resolves to an attribute (torch is already imported; nothing runs)."""
    obj: object = torch
    for part in name.split(".")[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals a well-formed pickle file imports (without running it); ``None`` if it does not parse."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - any parse failure means: not a well-formed pickle
        return None
    return list(dict.fromkeys(names))


def load_checkpoint(
    path: str | os.PathLike, trust_pickle: bool = False, map_location: str = "cpu"
) -> dict[str, Tensor]:
    """Load a state dict from ``path`` without executing code unless told to.

    safetensors files (recognised by their header, whatever their name) are read with safetensors; files
    written by ``torch.save`` with ``torch.load(weights_only=True)``. A file that needs arbitrary
    unpickling (e.g. a wise-ft checkpoint that pickles the whole module) is refused with
    :class:`UntrustedPickleError` unless ``trust_pickle=True``, which you should pass only for files you
    trust. A damaged file, or one that is not a checkpoint at all (JSON, random bytes), is a
    :class:`~adawise.errors.CheckpointError` saying so; so is a state dict with NaN or Inf values or with
    no floating-point tensor (:func:`check_weights`).

    Returns:
        The state dict (tensor name -> tensor), with a ``state_dict`` wrapper or module unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a folder; pass the weights file inside it "
                                  "(.safetensors, .pt or .bin)")
        if path.exists():
            raise CheckpointError(f"checkpoint {path} is not a regular file (a device or a pipe?); pass a weights file")
        raise MissingFileError(
            f"checkpoint not found: {path} (resolved: {path.resolve()}). Pass the path of a local "
            ".safetensors or .pt state dict; nothing is downloaded."
        )
    try:
        kind = _sniff(path)
    except PermissionError:
        raise AccessError(f"checkpoint {path}: permission denied; make it readable by this user") from None
    if kind == "safetensors" or (path.suffix == ".safetensors" and kind != "zip"):
        state = _load_safetensors(path, map_location)
    elif kind in ("zip", "pickle"):
        state = _torch_load(path, trust_pickle, map_location)
    else:
        what = "a text file (JSON?)" if kind == "text" else "not a checkpoint format adawise knows"
        raise CheckpointError(f"{path} is {what}, not a weights file: pass a .safetensors file or a state dict "
                              "saved with torch.save (adawise.save_state_dict() writes safetensors)")
    check_weights(state, str(path))
    return state


def _torch_load(path: Path, trust_pickle: bool, map_location: str) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(err, path)
        if refused is None:
            raise CheckpointError(f"{path}: a damaged or unsupported torch file (weights-only loading failed and "
                                  "no pickled object is to blame); copy it again or re-save it as safetensors "
                                  "with adawise.save_state_dict()") from None
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{path} contains pickled Python objects ({refused}) that weights-only loading refuses. Loading "
                "it would run code from the file. If you trust it, pass trust_pickle=True (CLI: --trust-pickle), "
                "then re-save it as safetensors with adawise.save_state_dict()."
            ) from None
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError, ModuleNotFoundError) as err2:
            raise CheckpointError(f"{path}: cannot unpickle it even trusted ({type(err2).__name__}: "
                                  f"{str(err2).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, OSError) as err:
        if isinstance(err, PermissionError):
            raise AccessError(f"checkpoint {path}: permission denied; make it readable by this user") from None
        raise CheckpointError(f"{path}: a damaged torch file ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                              "it was probably cut short or corrupted in transfer: copy it again") from None
    return _extract_state_dict(obj, path)


def check_weights(state_dict: Mapping[str, Tensor], source: str,
                  reference: Mapping[str, Tensor] | None = None) -> None:
    """Refuse weights that cannot be meant: no tensor at all, no floating-point tensor, NaN or Inf values,
    or (with ``reference``) an integer/bool tensor where the reference model has a floating one. The
    error names ``source`` and the key."""
    if not state_dict:
        raise CheckpointError(f"{source}: holds no tensors; pass a state dict of the model's weights")
    floating = [k for k, v in state_dict.items() if v.is_floating_point()]
    if not floating:
        key = next(iter(state_dict))
        raise CheckpointError(f"{source}: holds only integer/bool tensors (e.g. {key!r}, "
                              f"{state_dict[key].dtype}); model weights are floating point: save the float state dict")
    if reference is not None:
        wrong = [k for k, v in state_dict.items() if k in reference and reference[k].is_floating_point()
                 and not v.is_floating_point()]
        if wrong:
            raise CheckpointError(f"{source}: key {wrong[0]!r} is {state_dict[wrong[0]].dtype} but the model stores a "
                                  f"floating-point tensor there ({len(wrong)} such keys); save the float weights")
    for key in floating:
        t = state_dict[key]
        bad = int((~torch.isfinite(t)).sum()) if t.numel() else 0
        if bad:
            raise CheckpointError(f"{source}: key {key!r} holds {bad} NaN/Inf value(s) of {t.numel()}; the weights "
                                  "are broken (a diverged training run or a damaged file): pass a finite checkpoint")


def default_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets from the umask: what a cache written through a temporary file
    (created private, 0600 / 0700) must be given before it is renamed into place, so others can read it."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


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


_HASHES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str, bool]] = weakref.WeakKeyDictionary()


def _signature(sd: Mapping[str, Tensor]) -> tuple:
    """What changes when a tensor is replaced or written in place (storage, version counter, layout)."""
    return tuple((k, t.data_ptr(), t._version, t.dtype, tuple(t.shape), str(t.device)) for k, t in sd.items())


def weights_hash(model: nn.Module | Mapping[str, Tensor], finite: str | None = None) -> str:
    """A short SHA-256 of a model's state dict (names, shapes, dtypes and values).

    A module's hash is remembered until one of its tensors is replaced or modified in place (their version
    counters), so hashing the same endpoints for every run of a session reads their bytes once. With
    ``finite`` (a name for the message, e.g. ``"the zeroshot model"``) a NaN or Inf value is refused with a
    :class:`~adawise.errors.CheckpointError` naming the key.
    """
    module = model if isinstance(model, nn.Module) else None
    sd = model.state_dict() if module is not None else model
    signature = _signature(sd) if module is not None else None
    if module is not None:
        known = _HASHES.get(module)
        if known is not None and known[0] == signature and (known[2] or finite is None):
            return known[1]
    digest = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach()
        if finite is not None and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{finite}: key {key!r} holds {bad} NaN/Inf value(s) of {t.numel()}; its predictions "
                                  "would be undefined: pass finite weights")
        t = t.cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    value = digest.hexdigest()[:16]
    if module is not None:
        _HASHES[module] = (signature, value, finite is not None)
    return value
