"""The online evaluation protocol. It lives here and nowhere else.

For each batch of a stream, in order:

1. at a domain change: ``method.reset()`` if the setting is ``reset_each_shift``, then
   ``method.on_domain(domain)``;
2. ``logits = method(images)``: the prediction, made once and final;
3. the prediction is scored against the labels (the method never sees them); a row without a defined
   prediction (a NaN logit) counts as wrong and the record says how many there were
   (``nonfinite_rows``); labels outside the method's classes, or a class count other than the
   stream's ``num_classes``, are an error naming both numbers, never a silently wrong accuracy;
4. ``method.observe(images, logits)``: the method may now update its state;
5. one JSON line is written and flushed.

Settings: ``continual`` (state carries over the whole stream) and ``reset_each_shift``. The setting,
seed, stream spec, library versions, device and model provenance go into the log header. A run can be
resumed (``resume=True``): complete batches already in the log are replayed through the method (so its
state is exactly what it was) without being logged again, and the run continues from the next batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adawise.logs import JsonlWriter, domain_counts, format_table, library_versions, read_jsonl, to_jsonable
from adawise.methods.base import Method
from adawise.objectives import entropy
from streams.base import Batch, Stream

__all__ = ["run_stream", "StreamResult", "SETTINGS"]

log = logging.getLogger(__name__)
SETTINGS = ("continual", "reset_each_shift")
_RESERVED = {"type", "method", "domain", "batch", "n", "correct", "accuracy", "entropy", "alpha", "seconds",
             "nonfinite_rows", "by_domain"}
_STREAM_RESULTS = {"skipped"}  # keys of Stream.describe() that change when the stream is iterated


@dataclass
class StreamResult:
    """Outcome of one method on one stream (accuracies are fractions in [0, 1])."""

    method: str
    setting: str
    accuracy: float
    per_domain: dict[str, float]
    alphas: list[float | None]
    records: list[dict[str, Any]] = field(repr=False)
    seconds: float = 0.0
    log_path: str | None = None

    def table(self) -> str:
        """Readable per-domain table (percent)."""
        return format_table({self.method: self.per_domain}, list(self.per_domain))


def _device_of(method: nn.Module) -> torch.device:
    for tensor in list(method.parameters()) + list(method.buffers()):
        return tensor.device
    return torch.device("cpu")


def _provenance(method: nn.Module) -> dict[str, Any]:
    """How each wrapped model was loaded, from ``provenance`` attributes set by the loaders."""
    out = {}
    for name, module in method.named_modules():
        prov = getattr(module, "provenance", None)
        if prov is not None and name:
            out[name] = prov
    return out


def _header(method: Method, stream: Stream, setting: str, seed: int, config: dict[str, Any] | None,
            device: torch.device) -> dict[str, Any]:
    body = {
        "method": method.name,
        "options": method.options(),
        "setting": setting,
        "seed": seed,
        "stream": stream.describe(),
        "config": config or {},
    }
    # what a stream reports after an iteration (files it skipped) is a result, not configuration: left
    # out of the hash, so that resuming in a fresh process (where no iteration happened yet) still matches
    hashed = {**body, "stream": {k: v for k, v in body["stream"].items() if k not in _STREAM_RESULTS}}
    config_hash = hashlib.sha256(json.dumps(to_jsonable(hashed), sort_keys=True).encode()).hexdigest()[:12]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "type": "header",
        **body,
        "config_hash": config_hash,
        "uses_labels": method.uses_labels,
        "models": _provenance(method),
        "device": str(device),
        "device_name": device_name,
        "versions": library_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _check_classes(logits: Tensor, batch: Batch, num_classes: int | None) -> None:
    """Refuse logits and labels that cannot belong together, naming both sizes (never a silent 0 %)."""
    where = f"batch {batch.index} (domain {batch.domain!r})"
    labels = batch.labels
    if logits.ndim != 2 or logits.shape[0] != len(labels):
        raise ValueError(f"{where}: the method returned logits of shape {tuple(logits.shape)} for {len(labels)} "
                         "labels; a method must return [B, C] logits, one row per image")
    classes = logits.shape[-1]
    if num_classes is not None and classes != num_classes:
        raise ValueError(f"{where}: the method predicts {classes} classes but the stream has {num_classes}; "
                         "build the classifier for the stream's label space (class names, or a class mask such "
                         "as streams.imagenet_r.IMAGENET_R_MASK for 1000 -> 200)")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"{where}: labels range from {int(labels.min())} to {int(labels.max())} but the method "
                         f"predicts {classes} classes; the stream's labels and the model's head must share one "
                         "label space (same class names in the same order)")


def _score(logits: Tensor, labels: Tensor) -> tuple[Tensor, float | None, int]:
    """Per-row correctness (a bool tensor on the CPU), mean prediction entropy (``None`` if not finite) and
    the number of rows without a defined prediction (a NaN logit, or every logit −inf), scored as wrong."""
    undefined = logits.isnan().any(-1) | (logits == float("-inf")).all(-1)
    preds = logits.argmax(dim=-1)
    hits = (preds.cpu() == labels.cpu()) & ~undefined.cpu()
    ent = float(entropy(logits).mean())
    return hits, (ent if ent == ent and abs(ent) != float("inf") else None), int(undefined.sum())


def _by_domain(hits: Tensor, sample_domains: tuple[str, ...]) -> dict[str, list[int]]:
    """``{domain: [n, correct]}`` of a batch whose samples come from several domains."""
    if len(sample_domains) != len(hits):
        raise ValueError(f"the batch names {len(sample_domains)} sample domains for {len(hits)} images")
    out: dict[str, list[int]] = {}
    for d, h in zip(sample_domains, hits.tolist(), strict=True):
        n_c = out.setdefault(d, [0, 0])
        n_c[0] += 1
        n_c[1] += int(h)
    return out


def _step(method: Method, batch: Batch, device: torch.device, state: dict[str, Any], setting: str) -> Tensor:
    """Domain bookkeeping + prediction for one batch (shared by live and replayed batches)."""
    if batch.domain != state.get("domain"):
        if setting == "reset_each_shift" and state.get("domain") is not None:
            method.reset()
        method.on_domain(batch.domain)
        state["domain"] = batch.domain
    images = batch.images.to(device, non_blocking=True) if isinstance(batch.images, Tensor) else batch.images
    with torch.no_grad():
        logits = method(images)
    state["images"] = images
    return logits


def _load_resume(path: Path, header: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Complete batch records of a previous run with the same config, or None if it cannot resume."""
    if not path.is_file():
        return None
    records = read_jsonl(path, repair=True)
    if not records:  # killed before its header was complete: nothing to keep, start afresh
        return None
    old = next((r for r in records if r.get("type") == "header"), None)
    if old is None:
        raise ValueError(f"cannot resume {path}: it has no header line; delete it or pass another log path")
    if old.get("config_hash") != header["config_hash"]:
        raise ValueError(
            f"cannot resume {path}: it was written for another configuration (config_hash "
            f"{old.get('config_hash')} vs {header['config_hash']}); use a new log path or resume=False"
        )
    return [r for r in records if r.get("type") in ("batch", "summary")]


def run_stream(method: Method, stream: Stream, log: str | Path | None = None, setting: str = "continual",
               seed: int = 0, config: dict[str, Any] | None = None, progress: bool = True,
               resume: bool = False, device: str | torch.device | None = None) -> StreamResult:
    """Run ``method`` online over ``stream`` and score every batch before the method adapts.

    Args:
        method: a :class:`~adawise.methods.base.Method` (see :func:`adawise.make_method`).
        stream: an iterable of :class:`~streams.base.Batch`.
        log: JSONL path; a readable table is written beside it (``.txt``). ``None``: no files.
        setting: ``"continual"`` or ``"reset_each_shift"`` (reset at every domain boundary).
        seed: seeds torch's global RNG before the run (written to the header).
        config: free-form run configuration for the header (e.g. the CLI arguments).
        progress: show a tqdm progress bar.
        resume: continue an interrupted log at ``log`` (same configuration) instead of overwriting it.
        device: where images go (default: the method's parameters' device).

    Returns:
        :class:`StreamResult` with overall and per-domain accuracy, α per batch and all records.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    torch.manual_seed(seed)
    method.eval()
    device = torch.device(device) if device is not None else _device_of(method)
    header = _header(method, stream, setting, seed, config, device)

    done: list[dict[str, Any]] = []
    path = Path(log) if log is not None else None
    resuming = False  # True when appending to an existing log (it already has its header)
    if path is not None and resume:
        previous = _load_resume(path, header)
        resuming = previous is not None
        done = previous or []
        if any(r.get("type") == "summary" for r in done):
            log_records = [r for r in done if r.get("type") == "batch"]
            return _result(method, setting, log_records, 0.0, path)
    elif path is not None and path.exists():
        path.unlink()
    writer = JsonlWriter(path) if path is not None else None
    if writer is not None and not resuming:
        writer.write(header)

    method.prepare(stream)
    records: list[dict[str, Any]] = list(done)
    state: dict[str, Any] = {}
    started = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(stream), desc=method.name, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for batch in stream:
            if batch.index < len(done):  # resume: replay to rebuild the method's state, do not log
                logits = _step(method, batch, device, state, setting)
                with torch.no_grad():
                    method.observe(state["images"], logits)
                bar.update(1)
                continue
            t0 = time.perf_counter()
            logits = _step(method, batch, device, state, setting)
            _check_classes(logits, batch, getattr(stream, "num_classes", None))
            hits, ent, undefined = _score(logits, batch.labels)  # scored before the method may update
            correct = int(hits.sum())
            alpha = method.alpha
            with torch.no_grad():
                method.observe(state["images"], logits)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            info = {k: v for k, v in method.info.items() if k not in _RESERVED}
            record = {
                "type": "batch", "method": method.name, "domain": batch.domain, "batch": batch.index,
                "n": len(batch.labels), "correct": correct, "accuracy": correct / max(len(batch.labels), 1),
                "entropy": ent, "alpha": alpha, "seconds": time.perf_counter() - t0, "nonfinite_rows": undefined,
                **info,
            }
            record.setdefault("forward_passes", 1.0)
            if getattr(batch, "sample_domains", None) is not None:
                record["by_domain"] = _by_domain(hits, batch.sample_domains)
            records.append(to_jsonable(record))
            if writer is not None:
                writer.write(record)
            bar.update(1)
            if alpha is not None:
                bar.set_postfix(acc=f"{correct / max(len(batch.labels), 1):.2f}", alpha=f"{alpha:.2f}")
        elapsed = time.perf_counter() - started
        result = _result(method, setting, records, elapsed, path)
        if writer is not None:
            writer.write({
                "type": "summary", "method": method.name, "setting": setting, "accuracy": result.accuracy,
                "per_domain": result.per_domain, "n": sum(r["n"] for r in records),
                "correct": sum(r["correct"] for r in records), "batches": len(records),
                "seconds": elapsed, "skipped": [list(s) for s in stream.skipped],
            })
            table = f"{method.name} ({setting}, seed {seed})\n{result.table()}\n"
            if stream.skipped:
                table += f"skipped {len(stream.skipped)} unreadable inputs: " + ", ".join(
                    p for p, _ in stream.skipped[:10]) + "\n"
            path.with_suffix(".txt").write_text(table)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return result


def _result(method: Method, setting: str, records: list[dict[str, Any]], seconds: float,
            path: Path | None) -> StreamResult:
    per_n = domain_counts(records)
    total_n = sum(n for n, _ in per_n.values())
    total_c = sum(c for _, c in per_n.values())
    return StreamResult(
        method=method.name,
        setting=setting,
        accuracy=total_c / total_n if total_n else float("nan"),
        per_domain={d: c / n if n else float("nan") for d, (n, c) in per_n.items()},
        alphas=[r.get("alpha") for r in records],
        records=records,
        seconds=seconds,
        log_path=str(path) if path else None,
    )
