"""Resuming a run from its log: the logged batches of the same configuration are kept (and replayed
against the stream, batch by batch), anything else is refused with a :class:`~adawise.errors.ResumeError`
naming the log and what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adawise.errors import LogError, ResumeError
from adawise.evaluation.logs import check_run, read_jsonl, to_jsonable
from streams.base import Batch

__all__ = ["STREAM_RESULTS", "check_replay", "header_differences", "load_resume"]

#: keys of Stream.describe() that change when the stream is iterated (left out of the config hash)
STREAM_RESULTS = {"skipped"}


def header_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which parts of two headers differ, for the refusal message."""
    parts = []
    if old.get("log_format") != new.get("log_format"):
        parts.append(f"log format {old.get('log_format', 1)} vs {new.get('log_format')} (written by another "
                     "version of adawise)")
    for key in ("method", "options", "setting", "seed", "weights", "config"):
        if to_jsonable(old.get(key)) != to_jsonable(new.get(key)):
            shown = f": {old.get(key)} vs {new.get(key)}" if key in ("method", "setting", "seed", "weights") else ""
            parts.append(f"{key}{shown}")
    old_stream = {k: v for k, v in (old.get("stream") or {}).items() if k not in STREAM_RESULTS}
    new_stream = {k: v for k, v in (new.get("stream") or {}).items() if k not in STREAM_RESULTS}
    if to_jsonable(old_stream) != to_jsonable(new_stream):
        keys = sorted(k for k in set(old_stream) | set(new_stream)
                      if to_jsonable(old_stream.get(k)) != to_jsonable(new_stream.get(k)))
        parts.append(f"stream ({', '.join(keys)})")
    return "; ".join(parts) or "config_hash"


def load_resume(path: Path, header: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None] | None:
    """The batch records (and summary) of a previous run of this configuration at ``path``; ``None``
    when there is nothing to continue (no file, or killed before its header was complete)."""
    if not path.is_file():
        return None
    try:
        records = read_jsonl(path, repair=True, with_lines=True)
    except LogError as err:
        raise ResumeError(f"cannot resume: {err}") from None
    if not records:  # killed before its header was complete: nothing to keep, start afresh
        return None
    old = records[0]
    if old.get("type") != "header":
        raise ResumeError(f"cannot resume {path}: its first line is not a header; delete it or pass another log path")
    if old.get("config_hash") != header["config_hash"]:
        raise ResumeError(
            f"cannot resume {path}: it was written for another configuration (config_hash "
            f"{old.get('config_hash')} vs {header['config_hash']}; differs: {header_differences(old, header)}); use a "
            "new log path or resume=False"
        )
    try:
        check_run(path, records)
    except LogError as err:
        raise ResumeError(f"cannot resume: {err}") from None
    batches = [r for r in records if r.get("type") == "batch"]
    for r in records[1:]:  # every batch record and the summary carry the run's config hash
        if r.get("method") != header["method"] or r.get("config_hash") != header["config_hash"]:
            raise ResumeError(f"cannot resume {path}:{r['_line']}: a record of another run (method "
                              f"{r.get('method')!r}, config_hash {r.get('config_hash')}); the log was edited or merged")
    summary = records[-1] if records[-1].get("type") == "summary" else None
    for r in records:
        del r["_line"]
    return batches, summary


def check_replay(path: Path, record: dict[str, Any], batch: Batch, fingerprint: str) -> None:
    """A replayed batch must be the batch that was logged (index, domain, size, fingerprint)."""
    now = (batch.index, batch.domain, len(batch.labels), fingerprint)
    then = (record.get("batch"), record.get("domain"), record.get("n"), record.get("fingerprint"))
    if now != then:
        raise ResumeError(
            f"cannot resume {path}: the stream's batch {batch.index} (domain {batch.domain!r}, {now[2]} images, "
            f"fingerprint {fingerprint}) is not the batch logged as batch {then[0]} (domain {then[1]!r}, {then[2]} "
            f"images, fingerprint {then[3]}); the stream changed since the log was written (other data, files that "
            "became readable or unreadable, another order); use a new log path or resume=False")
