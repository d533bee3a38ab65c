"""The online evaluation protocol. It lives here and nowhere else.

For each batch of a stream, in order:

1. at a domain change: ``method.reset()`` if the setting is ``reset_each_shift``, then
   ``method.on_domain(domain)``;
2. ``logits = method(images)``: the prediction, made once and final;
3. the prediction is scored against the labels (the method never sees them); a row without a defined
   prediction (a NaN logit, every logit −inf, or a tie at +inf) counts as wrong and the record says how
   many there were (``nonfinite_rows``); labels must be integer class indices ``[B]`` (one-hot or float
   labels are refused), and labels outside the method's classes, or a class count other than the
   stream's ``num_classes``, are an error naming both numbers, never a silently wrong accuracy;
4. ``method.observe(images, logits)``: the method may now update its state;
5. one JSON line is written, flushed and fsynced.

Settings: ``continual`` (state carries over the whole stream) and ``reset_each_shift``. The log header
records the setting, seed, stream spec (with the list of files for folder streams), method options,
library versions, device, model provenance and a content hash of the weights of every model the method
was given; its ``config_hash`` covers everything that decides the results. Every batch record names its
batch: index, domain, ``n``, a fingerprint of its labels and a sample of its pixels, the header's
``config_hash``. A writer holds a lock on the log (:func:`adawise.evaluation.logs.exclusive`): a second run on the
same log is refused at once.

Resume (``resume=True``) repairs what a crash leaves and refuses what a crash cannot leave. A torn or
truncated last line is cut off, a missing summary is written after the remaining batches; the log's
complete batches are replayed through the method (so its state is exactly what it was), each checked
against the batch the stream yields now (same index, domain, size and fingerprint), and the run continues
from the next batch. Another configuration (other weights, options, seed, stream or set of readable
files), duplicated, reordered or foreign records, or a batch that is not the one logged are a
:class:`~adawise.errors.ResumeError` naming the log and what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adawise.core.objectives import entropy
from adawise.errors import AccessError, DataError, InputTypeError, ResumeError, UsageError
from adawise.evaluation.logs import (
    JsonlWriter,
    domain_counts,
    exclusive,
    format_table,
    library_versions,
    table_path,
    to_jsonable,
)
from adawise.evaluation.resume import STREAM_RESULTS, check_replay, load_resume
from adawise.methods.base import Method
from adawise.models.checkpoints import weights_hash
from streams.base import Batch, Stream

__all__ = ["run_stream", "StreamResult", "SETTINGS", "LOG_FORMAT", "batch_fingerprint", "model_weights"]

log = logging.getLogger(__name__)
SETTINGS = ("continual", "reset_each_shift")
#: version of the log layout; 2: weights hashes in the header, fingerprint and config hash in every record
LOG_FORMAT = 2
_RESERVED = {"type", "method", "domain", "batch", "n", "correct", "accuracy", "entropy", "alpha", "seconds",
             "nonfinite_rows", "fingerprint", "config_hash", "skipped_inputs", "by_domain"}
_SAMPLE = 4096  # pixel values of a batch in its fingerprint (and in the [0, 1] range check)


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


def _endpoints(method: nn.Module) -> dict[str, nn.Module]:
    given = getattr(method, "endpoints", None)
    return dict(given()) if callable(given) else {}


def _device_of(method: nn.Module) -> torch.device:
    modules = [method, *_endpoints(method).values()]
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")


def _provenance(method: nn.Module) -> dict[str, Any]:
    """How each wrapped model was loaded, from ``provenance`` attributes set by the loaders."""
    out = {}
    for name, module in [*method.named_modules(), *_endpoints(method).items()]:
        prov = getattr(module, "provenance", None)
        if prov is not None and name:
            out[name] = prov
    return out


def model_weights(method: nn.Module) -> dict[str, str]:
    """Content hashes of the weights a run depends on: of every model the method was given
    (``method.endpoints()``), else of the method's own state dict; NaN or Inf in any of them is refused."""
    given = _endpoints(method) or ({"method": method} if method.state_dict() else {})
    return {role: weights_hash(module, finite=f"the {role} model") for role, module in given.items()}


def _header(method: Method, stream: Stream, setting: str, seed: int, config: dict[str, Any] | None,
            device: torch.device) -> dict[str, Any]:
    body = {
        "log_format": LOG_FORMAT,
        "method": method.name,
        "options": method.options(),
        "setting": setting,
        "seed": seed,
        "weights": model_weights(method),
        "stream": stream.describe() if callable(getattr(stream, "describe", None)) else {"type": type(stream).__name__},
        "config": config or {},
    }
    # what a stream reports after an iteration (files it skipped) is a result, not configuration: left
    # out of the hash, so that resuming in a fresh process (where no iteration happened yet) still matches
    hashed = {**body, "stream": {k: v for k, v in body["stream"].items() if k not in STREAM_RESULTS}}
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


def _pixel_sample(images: Any) -> Tensor | None:
    """About :data:`_SAMPLE` evenly strided values of a batch's images (on the CPU), or None."""
    if not isinstance(images, Tensor) or images.numel() == 0:
        return None
    flat = (images if images.is_contiguous() else images.contiguous()).reshape(-1)
    return flat[:: max(1, flat.numel() // _SAMPLE)][:_SAMPLE].contiguous().cpu()


def batch_fingerprint(batch: Batch, sample: Tensor | None = None) -> str:
    """A short hash of a batch: its labels, its images' shape and dtype, and a strided sample of its
    pixels (cheap on any batch size; two batches of other files or another order differ)."""
    digest = hashlib.sha256()
    labels = batch.labels
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().contiguous()
        digest.update(f"{tuple(labels.shape)}:{labels.dtype}".encode())
        digest.update(labels.view(torch.uint8).numpy().tobytes() if labels.numel() else b"")
    images = batch.images
    if isinstance(images, Tensor):
        digest.update(f"{tuple(images.shape)}:{images.dtype}".encode())
        sample = _pixel_sample(images) if sample is None else sample
        if sample is not None:
            digest.update(sample.view(torch.uint8).numpy().tobytes())
    else:
        digest.update(type(images).__name__.encode())
    return digest.hexdigest()[:16]


def _check_labels(batch: Batch) -> None:
    """Labels must be integer class indices, one per image."""
    where = f"batch {batch.index} (domain {batch.domain!r})"
    labels = batch.labels
    if not isinstance(labels, Tensor):
        raise InputTypeError(f"{where}: labels must be a tensor of class indices, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be class indices of shape [B], got shape {tuple(labels.shape)}"
                        + (" (one-hot labels? pass labels.argmax(1))" if labels.ndim == 2 else ""))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputTypeError(f"{where}: labels must be integer class indices, got dtype {labels.dtype} (float labels "
                             "would be truncated); pass labels.long() if they hold whole numbers")


def _check_classes(logits: Tensor, batch: Batch, num_classes: int | None) -> None:
    """Refuse logits and labels that cannot belong together, naming both sizes (never a silent 0 %)."""
    where = f"batch {batch.index} (domain {batch.domain!r})"
    labels = batch.labels
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != len(labels):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise DataError(f"{where}: the method returned logits of shape {shape} for {len(labels)} "
                        "labels; a method must return [B, C] logits, one row per image")
    classes = logits.shape[-1]
    if num_classes is not None and classes != num_classes:
        raise DataError(f"{where}: the method predicts {classes} classes but the stream has {num_classes}; "
                        "build the classifier for the stream's label space (class names, or a class mask such "
                        "as streams.imagenet_r.IMAGENET_R_MASK for 1000 -> 200)")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DataError(f"{where}: labels range from {int(labels.min())} to {int(labels.max())} but the method "
                        f"predicts {classes} classes; the stream's labels and the model's head must share one "
                        "label space (same class names in the same order)")


def _score(logits: Tensor, labels: Tensor) -> tuple[Tensor, float | None, int]:
    """Per-row correctness (a bool tensor on the CPU), mean prediction entropy (``None`` if not finite) and
    the number of rows without a defined prediction (a NaN logit, every logit −inf, or two or more logits
    +inf: a tie at infinity), which are scored as wrong."""
    undefined = (logits.isnan().any(-1) | (logits == float("-inf")).all(-1)
                 | ((logits == float("inf")).sum(-1) >= 2))
    preds = logits.argmax(dim=-1)
    hits = (preds.cpu() == labels.cpu()) & ~undefined.cpu()
    ent = float(entropy(logits).mean()) if len(logits) else float("nan")
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


def _warn_range(sample: Tensor | None, batch: Batch, state: dict[str, Any]) -> None:
    """Warn once per run when an image batch lies far outside [0, 1] (e.g. uint8-range pixels)."""
    if state.get("warned") or sample is None or not sample.is_floating_point() or batch.images.ndim != 4:
        return
    finite = sample[torch.isfinite(sample)]
    if finite.numel() and (float(finite.max()) > 2.0 or float(finite.min()) < -1.0):
        state["warned"] = True
        warnings.warn(f"batch {batch.index} (domain {batch.domain!r}): pixel values span [{float(finite.min()):.3g}, "
                      f"{float(finite.max()):.3g}] but CLIP models expect [0, 1] (uint8 images: divide by 255; "
                      "normalisation belongs to the model); scored as given", stacklevel=3)


def _check_log_path(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"log {path} is a folder; pass a file path such as {path / 'run.jsonl'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AccessError(f"cannot write the log {path}: {parent} is a file, not a folder")
            break


def run_stream(method: Method, stream: Stream, log: str | Path | None = None, setting: str = "continual",
               seed: int = 0, config: dict[str, Any] | None = None, progress: bool = True,
               resume: bool = False, device: str | torch.device | None = None) -> StreamResult:
    """Run ``method`` online over ``stream`` and score every batch before the method adapts.

    Args:
        method: a :class:`~adawise.methods.base.Method` (see :func:`adawise.make_method`).
        stream: an iterable of :class:`~streams.base.Batch`.
        log: JSONL path; a readable table is written beside it (``.txt``, see
            :func:`adawise.evaluation.logs.table_path`). ``None``: no files. The log is locked while the run writes it.
        setting: ``"continual"`` or ``"reset_each_shift"`` (reset at every domain boundary).
        seed: seeds torch's global RNG before the run (written to the header).
        config: free-form run configuration for the header (e.g. the CLI arguments).
        progress: show a tqdm progress bar.
        resume: continue an interrupted log at ``log`` (same configuration; see the module docstring)
            instead of overwriting it.
        device: where images go (default: the method's parameters' device).

    Returns:
        :class:`StreamResult` with overall and per-domain accuracy, α per batch and all records.

    Raises:
        ResumeError: ``resume=True`` and the log cannot be continued (another configuration, edited records,
            a changed stream).
        RunLockedError: another run is writing the same log.
        DataError: labels that are not class indices of the method's classes; a stream with no readable batch.
    """
    if not isinstance(method, nn.Module) or not callable(getattr(method, "observe", None)):
        raise InputTypeError(f"method must be an adawise Method (adawise.make_method builds one), got "
                             f"{type(method).__name__}")
    if not hasattr(stream, "__iter__") or isinstance(stream, (str, bytes, Tensor)):
        raise InputTypeError(f"stream must be an iterable of streams.Batch (e.g. streams.from_tensors(images, "
                             f"labels)), got {type(stream).__name__}")
    if setting not in SETTINGS:
        raise UsageError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise UsageError(f"device {device!r} is not a torch device; pass cpu, cuda or cuda:N") from None
    path = Path(log) if log is not None else None
    if path is None:
        return _run(method, stream, None, setting, seed, config, progress, False, device)
    _check_log_path(path)
    with exclusive(path):
        return _run(method, stream, path, setting, seed, config, progress, resume, device)


def _run(method: Method, stream: Stream, path: Path | None, setting: str, seed: int, config: dict[str, Any] | None,
         progress: bool, resume: bool, device: str | torch.device | None) -> StreamResult:
    torch.manual_seed(seed)
    method.eval()
    device = torch.device(device) if device is not None else _device_of(method)
    header = _header(method, stream, setting, seed, config, device)
    config_hash = header["config_hash"]

    done: list[dict[str, Any]] = []
    resuming = False  # True when appending to an existing log (it already has its header)
    if path is not None and resume:
        previous = load_resume(path, header)
        resuming = previous is not None
        if previous is not None:
            done, summary = previous
            if summary is not None:  # complete: nothing to run (the table is rewritten if it was lost)
                result = _result(method, setting, done, 0.0, path)
                if not table_path(path).is_file():
                    table_path(path).write_text(f"{method.name} ({setting}, seed {seed})\n{result.table()}\n")
                return result
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

    # disable=None: no bar when stderr is not a terminal (a redirected log gets no bar lines)
    bar = tqdm(total=len(stream) if hasattr(stream, "__len__") else None, desc=method.name,
               disable=None if progress else True,
               leave=False, dynamic_ncols=True)
    seen = 0  # batches the stream has yielded
    skipped_before = 0
    try:
        for batch in stream:
            if not all(hasattr(batch, k) for k in ("images", "labels", "domain", "index")):
                raise InputTypeError(f"the stream yielded a {type(batch).__name__}, not a streams.Batch(images, "
                                     "labels, domain, index); wrap your data with streams.from_tensors or yield Batch "
                                     "objects")
            sample = _pixel_sample(batch.images)
            fingerprint = batch_fingerprint(batch, sample)
            skipped_now = len(getattr(stream, "skipped", ()))
            skipped_inputs, skipped_before = skipped_now - skipped_before, skipped_now
            seen += 1
            if seen <= len(done):  # resume: replay to rebuild the method's state, do not log
                check_replay(path, done[seen - 1], batch, fingerprint)
                logits = _step(method, batch, device, state, setting)
                with torch.no_grad():
                    method.observe(state["images"], logits)
                bar.update(1)
                continue
            _check_labels(batch)
            _warn_range(sample, batch, state)
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
            n = len(batch.labels)
            record = {
                "type": "batch", "method": method.name, "domain": batch.domain, "batch": batch.index,
                "n": n, "correct": correct, "accuracy": correct / n if n else None,
                "entropy": ent, "alpha": alpha, "seconds": time.perf_counter() - t0, "nonfinite_rows": undefined,
                "fingerprint": fingerprint, "config_hash": config_hash, "skipped_inputs": skipped_inputs,
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
                bar.set_postfix(acc=f"{correct / max(n, 1):.2f}", alpha=f"{alpha:.2f}")
        if seen < len(done):
            raise ResumeError(f"cannot resume {path}: the log holds {len(done)} batches but the stream now yields "
                              f"only {seen}; the stream changed since the log was written; use a new log path or "
                              "resume=False")
        skipped = list(getattr(stream, "skipped", ()))
        if not records:
            if skipped:
                raise DataError(f"no batch could be scored: all {len(skipped)} inputs of the stream were unreadable "
                                f"(first: {skipped[0][0]}: {skipped[0][1]}); check the data")
            raise DataError("the stream yielded no batch: there is nothing to score")
        elapsed = time.perf_counter() - started
        result = _result(method, setting, records, elapsed, path)
        if writer is not None:
            writer.write({
                "type": "summary", "method": method.name, "setting": setting, "accuracy": result.accuracy,
                "per_domain": result.per_domain, "n": sum(r["n"] for r in records),
                "correct": sum(r["correct"] for r in records), "batches": len(records),
                "seconds": elapsed, "skipped": [list(s) for s in skipped], "config_hash": config_hash,
            })
            table = f"{method.name} ({setting}, seed {seed})\n{result.table()}\n"
            if skipped:
                table += f"skipped {len(skipped)} unreadable inputs: " + ", ".join(p for p, _ in skipped[:10]) + "\n"
            table_path(path).write_text(table)
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
