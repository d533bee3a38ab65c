"""Checks of command-line values, shared by every command: run before any expensive work (data scans,
model loading, training), each raising an :class:`~adawise.errors.AdawiseError` that names the flag, the
value and what to pass instead.

Reading and writing are tried for real (a folder is listed, a probe file is created and removed), so
permissions that ``os.access`` would misreport (root, ACLs, read-only mounts) are seen as they are.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from adawise.errors import AccessError, MissingFileError, UsageError

__all__ = ["integer", "number", "device", "input_file", "input_dir", "output_dir", "output_file", "read_config"]


def integer(value: Any, flag: str, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as an int within [minimum, maximum] (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"{flag} must be an integer, got {value!r}")
    bounds = f" (pass {'at least ' + str(minimum) if maximum is None else f'{minimum} to {maximum}'})"
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise UsageError(f"{flag} {value} is out of range{bounds}")
    return value


def number(value: Any, flag: str, low: float | None = None, high: float | None = None,
           open_high: bool = False) -> float:
    """``value`` as a finite float within [low, high] (``[low, high)`` with ``open_high``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{flag} must be a number, got {value!r}")
    value = float(value)
    too_high = high is not None and (value >= high if open_high else value > high)
    if not math.isfinite(value) or (low is not None and value < low) or too_high:
        right = ")" if open_high else "]"
        span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{right}"
        raise UsageError(f"{flag} {value} must be a finite number in {span}")
    return value


def device(value: Any, flag: str = "--device") -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (N < the number of GPUs), ``mps``."""
    import torch

    if not isinstance(value, str):
        raise UsageError(f"{flag} must be a device name such as cpu or cuda:0, got {value!r}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {value!r} is not a device; pass cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {value}: CUDA is not available on this machine; pass --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {value}: this machine has {torch.cuda.device_count()} GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{flag} mps: not available on this machine; pass --device cpu")
    elif dev.type != "cpu":
        raise UsageError(f"{flag} {value!r}: adawise runs on cpu or cuda; pass one of those")
    return value


def input_file(value: Any, flag: str, what: str = "file") -> Path:
    """An existing, readable regular file."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"{flag} needs the path of a {what}, got {value!r}")
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {value}: a folder, not a {what}; pass the file itself")
    if path.exists() and not path.is_file():  # a device or a pipe: reading it could block or never end
        raise UsageError(f"{flag} {value}: not a regular file (a device or a pipe?); pass a {what}")
    if not path.is_file():
        raise MissingFileError(f"{flag} {value}: {what} not found (looked at {path.resolve()}); pass the path of an "
                               f"existing {what}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        raise AccessError(f"{flag} {value}: permission denied; make the {what} readable by this user") from None
    except OSError as err:
        raise AccessError(f"{flag} {value}: cannot read the {what} ({err.strerror or err})") from None
    return path


def input_dir(value: Any, flag: str, what: str = "folder") -> Path:
    """An existing folder whose entries can be listed."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"{flag} needs the path of a {what}, got {value!r}")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value}: a file, not a {what}; pass the folder")
    if not path.is_dir():
        raise MissingFileError(f"{flag} {value}: {what} not found (looked at {path.resolve()}); pass the path of an "
                               f"existing {what}")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except PermissionError:
        raise AccessError(f"{flag} {value}: permission denied; make the {what} readable by this user") from None
    return path


def output_dir(value: Any, flag: str = "--out") -> Path:
    """A folder that exists or can be created, and into which a file can be written (tried for real)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"{flag} needs a folder path, got {value!r}")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value}: a file is in the way; pass a folder path (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".adawise-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise UsageError(f"{flag} {value}: a file is in the way of the folder path; pass another --out") from None
    except NotADirectoryError:
        raise UsageError(f"{flag} {value}: part of the path is a file, not a folder; pass another path") from None
    except PermissionError:
        raise AccessError(f"{flag} {value}: not writable by this user; pass a folder you can write to") from None
    except OSError as err:
        raise AccessError(f"{flag} {value}: cannot write there ({err.strerror or err}); pass another folder") from None
    return path


def output_file(value: Any, flag: str = "--out") -> Path:
    """A file path whose folder exists or can be created and is writable; not a folder itself."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UsageError(f"{flag} needs a file path, got {value!r}")
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {value}: a folder; pass a file path inside it, e.g. {path / 'out.file'}")
    output_dir(path.parent, flag)
    return path


def read_config(value: Any, what: str, hint: str) -> dict[str, Any]:
    """The JSON object (or TOML table, by the ``.toml`` suffix) in a config file; ``what`` names it in
    messages (e.g. ``"--config run.json"``), ``hint`` says what the file should be."""
    import json

    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{what}: a folder; pass the config file ({hint})")
    if not path.is_file():
        raise MissingFileError(f"{what}: file not found ({path.resolve()}); pass {hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise UsageError(f"{what}: cannot be read as text ({err}); pass {hint}") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise UsageError(f"{what}: TOML needs Python >= 3.11 (or the tomli package); use JSON") from None
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"{what}: not valid TOML ({err}); pass {hint}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UsageError(f"{what}: not valid JSON ({err}); pass {hint}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what}: expected a JSON object (a TOML table), got {type(data).__name__}; pass {hint}")
    return data
