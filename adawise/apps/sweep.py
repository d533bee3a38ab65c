"""``adawise sweep CONFIG``: a grid of runs (models x streams x methods x settings x seeds) on Ray or locally.

A sweep config (JSON or TOML, :class:`SweepConfig`) names model sources, stream specs, methods,
settings and seeds. :meth:`SweepConfig.runs` expands the grid into :class:`Run` records, each with a
stable id (a hash of what decides its result) and a log path
``<out>/<model>/<stream>/<method>-<setting>-s<seed>.jsonl``. :func:`run_sweep` then

1. plans: a run whose log is complete (has its summary line) is skipped, one with an interrupted log
   is resumed (:func:`adawise.run_stream` with ``resume=True`` replays the logged batches), the rest
   start fresh; a log written for another configuration (another run id) stops the sweep before
   anything runs, with its path;
2. executes the pending runs with :func:`execute_run`, as Ray tasks with the config's CPU/GPU
   requests (``executor="ray"``; ``"auto"`` picks Ray when it is installed), or one after another
   in this process (``"local"``, the path without Ray). Each run writes its JSONL exactly as a local
   :func:`adawise.run_stream` would; a Ray task also returns its log text, which the driver writes
   where the file is missing, so a cluster without a shared filesystem still gathers every log;
3. merges every log (:mod:`adawise.apps.sweep_report`) into ``<out>/sweep.md`` (method x domain per
   model/stream/setting, mean ± std over seeds), ``<out>/sweep.json`` and ``<out>/sweep.png``.

The sweep is restartable: kill it at any point and run it again; only unfinished runs execute.
Model loading happens in the worker: tiny random models and the embedded world are cheap (the latter
is trained once and cached under ``$ADAWISE_CACHE``; the driver builds it before dispatch); real CLIP
checkpoints are read from local paths, and each worker process keeps its last model pair and stream
in memory, so consecutive tasks on the same model skip the reload (Ray reuses worker processes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adawise import options as check
from adawise.apps.factories import MODEL_KINDS, SweepError, build_stream, load_models, resolve_paths
from adawise.apps.sweep_config import Run, SweepConfig, load_config
from adawise.apps.sweep_report import merge

__all__ = [
    "SweepConfig", "SweepError", "Run", "SweepResult", "MODEL_KINDS", "load_config", "run_sweep", "plan",
    "execute_run", "merge", "add_arguments", "main", "load_models", "build_stream",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# One run (the Ray task body; module level so Ray pickles it by reference)
# --------------------------------------------------------------------------------------------------
_CACHE: dict[str, tuple[str, Any]] = {}  # per worker process: kind -> (key, value), one entry per kind


def _cached(kind: str, key: Any, build: Callable[[], Any]) -> Any:
    blob = json.dumps(key, sort_keys=True, default=str)
    hit = _CACHE.get(kind)
    if hit is not None and hit[0] == blob:
        return hit[1]
    _CACHE.pop(kind, None)  # free the previous one before building the next
    value = build()
    _CACHE[kind] = (blob, value)
    return value


def execute_run(run: Run) -> dict[str, Any]:
    """Run one cell of the grid: models and stream from their specs, the method, :func:`adawise.run_stream`
    with ``resume=True`` into ``run.log``. Returns the outcome and the log's text (for the driver)."""
    import torch

    from adawise.evaluation.loop import run_stream
    from adawise.methods.registry import make_method

    started, started_at, cpu = time.perf_counter(), time.time(), time.process_time()
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(run.threads)))
    try:
        zs, ft = _cached("models", [run.model_spec, run.device, run.base_dir],
                         lambda: load_models(run.model_spec, run.device, run.base_dir))
        stream = _cached("stream", [run.stream_spec, run.seed, run.base_dir],
                         lambda: build_stream(run.stream_spec, run.seed, run.base_dir, run.device))
        options = resolve_paths(run.method_options, run.base_dir)
        method = make_method(run.method_name, zeroshot=zs, finetuned=ft, **options).to(run.device)
        result = run_stream(method, stream, log=run.log, setting=run.setting, seed=run.seed,
                            config=run.header_config(), progress=False, resume=True, device=run.device)
        del method
    finally:
        torch.set_num_threads(previous)
    from adawise.evaluation.logs import table_path

    path = Path(run.log)
    table = table_path(path)
    return {"run_id": run.run_id, "log": str(path), "accuracy": result.accuracy,
            "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "started_at": started_at, "host": socket.gethostname(), "pid": os.getpid(),
            "log_text": path.read_text(), "table_text": table.read_text() if table.is_file() else None}


# --------------------------------------------------------------------------------------------------
# Planning, executing, merging
# --------------------------------------------------------------------------------------------------
def plan(runs: Sequence[Run]) -> dict[str, str]:
    """Status of each run id: ``complete`` (skip), ``partial`` (resume) or ``new``.

    Raises :class:`SweepError` when a log at a run's path was written for another configuration.
    """
    from adawise.evaluation.logs import read_run

    status: dict[str, str] = {}
    stale: list[str] = []
    for run in runs:
        path = Path(run.log)
        if not path.is_file():
            status[run.run_id] = "new"
            continue
        if path.stat().st_size == 0:  # killed before the header was written
            path.unlink()
            status[run.run_id] = "new"
            continue
        try:
            rec = read_run(path)
        except ValueError as err:  # LogError included: an edited or merged log is not resumed
            raise SweepError(f"{path}: unreadable log ({err}); delete it to rerun that run") from None
        header = rec["header"]
        rid = ((header or {}).get("config") or {}).get("sweep_run_id")
        if rid != run.run_id:
            stale.append(f"{path} (run id {rid}, expected {run.run_id})")
            continue
        status[run.run_id] = "complete" if rec["complete"] else "partial"
    if stale:
        raise SweepError("these logs were written for another configuration; delete them or choose another "
                         "'out' folder:\n  " + "\n  ".join(stale))
    return status


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: executed / skipped / failed run ids, the merged results, file paths,
    and per executed run where it ran."""

    runs: list[Run]
    executed: list[str]
    skipped: list[str]
    failed: dict[str, str]
    merged: dict[str, Any]
    paths: dict[str, Path]
    executor: str
    seconds: float
    #: run id -> where and how long each executed run ran (host, pid, seconds, cpu_seconds, started_at)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every run of the grid has a complete log."""
        return not self.failed and not self.merged["missing"]


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_sweep(config: SweepConfig | Mapping[str, Any] | str | os.PathLike, *, executor: str = "auto",
              address: str | None = None, progress: bool = True) -> SweepResult:
    """Run every unfinished run of a sweep, then merge all logs (see the module docstring).

    Args:
        config: a :class:`SweepConfig`, a mapping, or a path to a JSON/TOML file.
        executor: ``"ray"`` (Ray tasks), ``"local"`` (sequential, in this process) or ``"auto"``
            (Ray when it is installed, else local).
        address: attach to an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); default: the
            config's ``ray.address``, else a Ray session already initialised in this process, else a
            local cluster started here (and shut down at the end).
        progress: show a progress bar over runs.
    """
    if not isinstance(config, SweepConfig):
        config = SweepConfig.from_dict(config) if isinstance(config, Mapping) else SweepConfig.load(config)
    if executor not in ("auto", "ray", "local"):
        raise SweepError(f"executor must be 'auto', 'ray' or 'local', got {executor!r}")
    address = address or config.ray.get("address")
    if executor == "auto" and address:
        executor = "ray"  # an address means a cluster: never fall back to running here unnoticed
    if executor == "ray" and not _ray_available():
        raise SweepError("executor 'ray' needs Ray: pip install 'adawise[ray]' (or run with --local)")
    if executor == "auto":
        executor = "ray" if _ray_available() else "local"
        if executor == "local":
            log.info("Ray is not installed: running the sweep sequentially here (pip install 'adawise[ray]')")
    started = time.perf_counter()
    runs = config.runs()
    status = plan(runs)
    pending = [r for r in runs if status[r.run_id] != "complete"]
    skipped = [r.run_id for r in runs if status[r.run_id] == "complete"]
    log.info("sweep: %d runs, %d complete, %d to resume, %d new (%s executor)", len(runs), len(skipped),
             sum(status[r.run_id] == "partial" for r in runs), sum(status[r.run_id] == "new" for r in runs), executor)
    if pending and address is None:
        _warm_embedded(config, pending, progress)
    failed: dict[str, str] = {}
    tasks: dict[str, dict[str, Any]] = {}
    if pending and executor == "ray":
        failed = _execute_ray(pending, config, address, progress, tasks)
    elif pending:
        failed = _execute_local(pending, progress, tasks)
    merged = merge(runs, config.out_dir(), id_domain=config.id_domain)
    return SweepResult(runs, [r.run_id for r in pending], skipped, failed, merged, merged.pop("paths"), executor,
                       time.perf_counter() - started, tasks)


def _warm_embedded(config: SweepConfig, pending: Sequence[Run], progress: bool) -> None:
    """Train (or load) each embedded world once here, so workers on this machine read the cache."""
    from adawise.embedded.world import load_embedded

    done = set()
    for run in pending:
        spec = resolve_paths(run.model_spec, run.base_dir)
        key = json.dumps(spec, sort_keys=True)
        if spec["kind"] == "embedded" and key not in done:
            done.add(key)
            load_embedded(spec.get("recipe", "full"), data=spec.get("data"), progress=progress)


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="run", disable=None if progress else True, dynamic_ncols=True)


def _task_record(out: Mapping[str, Any]) -> dict[str, Any]:
    return {k: out[k] for k in ("host", "pid", "seconds", "cpu_seconds", "started_at")}


def _execute_local(pending: Sequence[Run], progress: bool, tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    failed: dict[str, str] = {}
    try:
        with _bar(len(pending), progress) as bar:
            for run in pending:
                try:
                    out = execute_run(run)
                    tasks[run.run_id] = _task_record(out)
                    bar.set_postfix_str(f"{run.method} {run.stream} s{run.seed}: {100 * out['accuracy']:.1f}%")
                except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
                    log.error("run %s (%s) failed: %s", run.run_id, run.log, err)
                    failed[run.run_id] = f"{type(err).__name__}: {err}"
                bar.update(1)
    finally:
        _CACHE.clear()  # in this process the cached models and stream would outlive the sweep
    return failed


def _execute_ray(pending: Sequence[Run], config: SweepConfig, address: str | None, progress: bool,
                 tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    import ray

    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "runtime_env": config.ray.get("runtime_env")}
        if address is None:  # a local cluster: its size may be set, its dashboard is not needed
            kwargs.update(num_cpus=config.ray.get("num_cpus"), num_gpus=config.ray.get("num_gpus"),
                          include_dashboard=False)
        try:
            ray.init(**{k: v for k, v in kwargs.items() if v is not None})
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise SweepError(f"cannot start or reach Ray at {address!r}: {err}\n(an existing cluster: `ray start "
                             "--head` on its head node, then --address auto there or --address ray://HEAD:10001 "
                             "with `pip install 'ray[client]'`; no --address: a local cluster)") from None
        started_here = True
    options: dict[str, Any] = {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus}
    for key in ("max_retries", "memory"):
        if key in config.resources:
            options[key] = config.resources[key]
    task = ray.remote(execute_run).options(**options)
    refs = {task.remote(run): run for run in pending}
    failed: dict[str, str] = {}
    waiting = list(refs)
    try:
        with _bar(len(pending), progress) as bar:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                for ref in done:
                    run = refs[ref]
                    try:
                        out = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - RayTaskError wraps the run's own error
                        log.error("run %s (%s) failed: %s", run.run_id, run.log, err)
                        failed[run.run_id] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
                    else:
                        _store(run, out)
                        tasks[run.run_id] = _task_record(out)
                        bar.set_postfix_str(f"{run.method} {run.stream} s{run.seed}: {100 * out['accuracy']:.1f}%")
                    bar.update(1)
    finally:
        if started_here:
            ray.shutdown()
    return failed


def _store(run: Run, out: Mapping[str, Any]) -> None:
    """Write a task's log where the driver cannot see it (a worker on a node without shared storage)."""
    from adawise.evaluation.logs import table_path

    path = Path(run.log)
    for target, text in ((path, out.get("log_text")), (table_path(path), out.get("table_text"))):
        if text is None:
            continue
        if not target.is_file() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_text(text)
            tmp.replace(target)


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adawise sweep``."""
    parser.add_argument("config", help="sweep config (.json or .toml), see docs/scale_out.md")
    parser.add_argument("--out", default=None, help="output folder (overrides the config's 'out')")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run sequentially in this process (no Ray)")
    where.add_argument("--address", default=None,
                       help="attach to a running Ray cluster: 'auto' (this node joined one, e.g. after "
                            "`ray start --head`) or 'ray://HOST:10001' (Ray Client)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray cluster started here (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.add_argument("--merge-only", action="store_true", help="only rebuild sweep.md / sweep.json / sweep.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the sweep; exit code 0 when every run is complete, 1 when some failed, 2 on a config error (a
    :class:`SweepError` or any other :class:`~adawise.errors.AdawiseError`, e.g. the output folder in use)."""
    from adawise.evaluation.logs import exclusive

    config = SweepConfig.load(args.config)
    if args.out:
        config.out = args.out
    if args.num_cpus is not None:
        config.ray["num_cpus"] = check.integer(args.num_cpus, "--num-cpus", minimum=1)
    out = config.out_dir()
    if out.exists() and not out.is_dir():
        raise SweepError(f"out {out} is a file; pass a folder (--out or the config's 'out')")
    if args.dry_run:
        runs = config.runs()
        status = plan(runs)
        for run in runs:
            print(f"{status[run.run_id]:8s} {run.run_id}  {run.log}")
        print(f"{len(runs)} runs: " + ", ".join(f"{sum(s == k for s in status.values())} {k}"
                                                for k in ("complete", "partial", "new")))
        return 0
    check.output_dir(out, "out")
    with exclusive(out):  # one sweep per output folder
        if args.merge_only:
            runs = config.runs()
            plan(runs)
            merged = merge(runs, out, id_domain=config.id_domain)
            print(merged["paths"]["table"].read_text())
            return 0 if not merged["missing"] else 1
        result = run_sweep(config, executor="local" if args.local else "auto", address=args.address,
                           progress=not args.no_progress)
    print(result.paths["table"].read_text())
    print(f"{len(result.executed)} run(s) executed, {len(result.skipped)} already complete, "
          f"{len(result.failed)} failed ({result.executor}, {result.seconds:.1f} s)")
    for rid, err in result.failed.items():
        print(f"failed {rid}: {err}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in result.paths.values()))
    return 0 if result.ok else 1
