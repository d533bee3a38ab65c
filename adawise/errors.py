"""The package's exceptions: one root, :class:`AdawiseError`, for every error a user can cause.

Each class also subclasses the matching built-in (``ValueError``, ``TypeError``, ``FileNotFoundError``,
``PermissionError``, ...), so code written against the built-ins (``except ValueError``) keeps working.
The command line maps exactly these to exit code 2 and one line on stderr (:func:`one_line`); any other
exception is a bug and ends in a traceback. Messages name the option, file, key or shape at fault and say
what to pass instead.
"""

from __future__ import annotations

import re

__all__ = [
    "AdawiseError", "UsageError", "InputTypeError", "MissingFileError", "AccessError", "DataError",
    "CheckpointError", "UntrustedPickleError", "ModelMismatchError", "StateDictMismatchError", "LogError",
    "ResumeError", "RunLockedError", "UnknownNameError", "one_line",
]


class AdawiseError(Exception):
    """Root of every error a caller can cause and fix (bad options, files, data, logs)."""


class UsageError(AdawiseError, ValueError):
    """An option or argument with a value that cannot work (CLI flags, config files, API keywords)."""


class InputTypeError(AdawiseError, TypeError):
    """An input of the wrong kind (a list where a tensor belongs, float labels, ...)."""


class MissingFileError(AdawiseError, FileNotFoundError):
    """A file or folder that was named but does not exist."""


class AccessError(AdawiseError, PermissionError):
    """A file or folder that exists but cannot be read or written (permissions, a file where a folder
    belongs, a read-only location)."""


class DataError(AdawiseError, ValueError):
    """Data that cannot be scored honestly: labels outside the head, a stream with no readable image, ..."""


class CheckpointError(AdawiseError, ValueError):
    """A weights file that is damaged, not a checkpoint at all, or holds unusable values (NaN, integers)."""


class UntrustedPickleError(CheckpointError, RuntimeError):
    """A checkpoint holds pickled Python objects and ``trust_pickle`` was not given."""


class ModelMismatchError(AdawiseError, ValueError):
    """Two models (or a model and a checkpoint) that cannot be combined: other keys, shapes, dtypes, classes
    or forward."""


class StateDictMismatchError(ModelMismatchError):
    """Two state dicts (or a state dict and a model) do not describe the same architecture."""


class LogError(AdawiseError, ValueError):
    """A run log that is malformed or was not written by a run (bad JSON, missing fields, duplicated or
    reordered batch records)."""


class ResumeError(LogError):
    """A log that a resumed run must not continue: another configuration, other weights, another stream,
    or records a crash cannot leave."""


class RunLockedError(AdawiseError, RuntimeError):
    """Another run holds the lock on the same log or output folder."""


class UnknownNameError(AdawiseError, KeyError):
    """A name looked up in a registry (a method, a shift, an endpoint) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def one_line(message: object) -> str:
    """``message`` as one line of plain text: ANSI escape sequences removed, line breaks and runs of
    whitespace collapsed to single spaces."""
    return " ".join(_ANSI.sub("", str(message)).split())
