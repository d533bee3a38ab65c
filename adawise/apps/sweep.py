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
import copy
import hashlib
import importlib.util
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adawise import options as check
from adawise.apps.sweep_report import merge
from adawise.errors import UsageError

__all__ = [
    "SweepConfig", "SweepError", "Run", "SweepResult", "MODEL_KINDS", "load_config", "run_sweep", "plan",
    "execute_run", "merge", "add_arguments", "main",
]

log = logging.getLogger(__name__)

MODEL_KINDS: tuple[str, ...] = ("random-clip", "clip", "embedded")
SETTINGS: tuple[str, ...] = ("continual", "reset_each_shift")
_TOP_KEYS = {"models", "streams", "methods", "settings", "seeds", "resources", "out", "device", "ray", "id_domain",
             "threads"}
#: keys whose string values are local paths, resolved against the directory the sweep was started from
_PATH_KEYS = {"pretrained", "finetuned", "head_cache_dir", "data", "root", "fashion_root", "index"}
#: stream keys that do not change results (left out of the run id)
_STREAM_RUN_ONLY = {"workers"}


class SweepError(UsageError):
    """A sweep config or the state of its output folder that cannot run; the message says what to fix."""


# --------------------------------------------------------------------------------------------------
# Config and runs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One cell of the grid: a method on a stream with a model pair, a setting and a seed."""

    run_id: str
    model: str
    stream: str
    method: str  # the method's label in the config (its file name)
    setting: str
    seed: int
    model_spec: dict[str, Any] = field(repr=False)
    stream_spec: dict[str, Any] = field(repr=False)  # the config's stream entry (the seed is the run's)
    method_name: str = field(repr=False, default="")
    method_options: dict[str, Any] = field(repr=False, default_factory=dict)
    log: str = field(repr=False, default="")  # absolute path of the JSONL log
    base_dir: str = field(repr=False, default=".")  # relative paths in the specs are relative to this
    threads: int = field(repr=False, default=1)  # torch intra-op threads of the run
    device: str = field(repr=False, default="cpu")

    def header_config(self) -> dict[str, Any]:
        """What goes into the log header's ``config`` (and so into its config hash)."""
        return {"sweep_run_id": self.run_id, "model": self.model, "model_spec": self.model_spec,
                "stream": self.stream, "stream_spec": self.stream_spec, "method_label": self.method,
                "method_options": self.method_options}


def _run_id(model_spec: Mapping[str, Any], stream_spec: Mapping[str, Any], name: str, options: Mapping[str, Any],
            setting: str, seed: int) -> str:
    body = {"model": model_spec, "stream": {k: v for k, v in stream_spec.items() if k not in _STREAM_RUN_ONLY},
            "method": name, "options": options, "setting": setting, "seed": seed}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class SweepConfig:
    """A sweep: the grid and how to run it.

    Fields (all but ``models``, ``streams`` and ``methods`` optional):
        models: name -> model source, by ``kind``:
            ``{"kind": "random-clip", "config": {open_clip custom config} or "arch": NAME, "num_classes": 5
            or "classes": [...], "templates": [...], "seed": 0}`` (random weights, no downloads; the
            fine-tuned end is a seeded perturbation),
            ``{"kind": "clip", "arch": "ViT-B-16", "pretrained": PATH, "finetuned": PATH, "classes":
            "imagenet" | "imagenet-r" | [...], "templates": "openai", "trust_pickle": false,
            "head_cache_dir": DIR}`` (local files, see ``adawise run``),
            ``{"kind": "embedded", "recipe": "full"}`` (the bundled world of ``adawise demo``).
        streams: name -> stream spec: ``source`` (``embedded``, ``corruptions``, ``imagenet-c``,
            ``imagenet-r``), ``domains``, ``order`` (sample order) and ``schedule`` (of the domains, see
            :mod:`streams.orders`; an old ``order`` such as ``mixed`` still names the schedule), ``batch_size``
            and the source's options (e.g.
            ``severity``, ``limit_per_domain``, ``root``, ``per_domain``; ``base``: ``fashion-mnist`` or
            ``synthetic`` with ``base_size``, ``image_size``, ``num_classes``, ``base_seed``). The stream's
            seed is the run's seed (no ``seed`` key here); ``workers``: loader processes (not hashed).
        methods: registry names, or ``{"name": ..., "options": {...}, "label": ...}`` (the label names
            the log file; needed when one method appears twice).
        settings: ``continual`` and/or ``reset_each_shift`` (default ``["continual"]``).
        seeds: run seeds (default ``[0]``): the stream order and torch's global seed.
        resources: per run: ``num_cpus`` (default 1; also the run's torch threads), ``num_gpus``
            (default 0; fractions share a GPU), ``max_retries`` (Ray retries after a worker crash).
        device: where runs compute (default ``cuda`` when ``num_gpus`` > 0, else ``cpu``).
        threads: torch threads per run (default: ``num_cpus``).
        ray: ``address`` (``auto``, ``ray://host:10001``), ``num_cpus`` (size of a local cluster started
            here), ``runtime_env`` (passed to ``ray.init``).
        out: output folder (default ``runs/sweep``).
        id_domain: in-distribution domain, left out of the table's mean column.
    """

    models: dict[str, dict[str, Any]]
    streams: dict[str, dict[str, Any]]
    methods: list[dict[str, Any]]
    settings: list[str] = field(default_factory=lambda: ["continual"])
    seeds: list[int] = field(default_factory=lambda: [0])
    resources: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/sweep"
    device: str | None = None
    threads: int | None = None
    ray: dict[str, Any] = field(default_factory=dict)
    id_domain: str | None = None
    base_dir: str = field(default_factory=os.getcwd)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> SweepConfig:
        """Validate and normalise a config mapping (see the class docstring)."""
        if not isinstance(data, Mapping):
            raise SweepError("a sweep config must be a mapping (a JSON object / TOML table)")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise SweepError(f"unknown sweep config key(s) {unknown}; known: {', '.join(sorted(_TOP_KEYS))}")
        for key in ("models", "streams", "methods"):
            if not data.get(key):
                raise SweepError(f"the sweep config needs a non-empty {key!r}")
        models = {str(k): dict(v) for k, v in _named(data["models"], "models").items()}
        for name, spec in models.items():
            if spec.get("kind") not in MODEL_KINDS:
                raise SweepError(f"model {name!r}: kind must be one of {', '.join(MODEL_KINDS)}, got "
                                 f"{spec.get('kind')!r}")
        streams = {str(k): dict(v) for k, v in _named(data["streams"], "streams").items()}
        for name, spec in streams.items():
            if "source" not in spec:
                raise SweepError(f"stream {name!r} needs a 'source' (embedded, corruptions, imagenet-c, imagenet-r)")
            if "seed" in spec:
                raise SweepError(f"stream {name!r}: remove 'seed'; the sweep's 'seeds' set each run's stream seed")
        for name, spec in streams.items():
            for key in ("batch_size", "per_domain", "limit_per_domain", "severity", "base_size", "image_size",
                        "num_classes", "workers"):
                if key in spec and spec[key] is not None:
                    _sweep_int(spec[key], f"stream {name!r}: {key}", 0 if key == "workers" else 1)
            domains = spec.get("domains", [])
            if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
                raise SweepError(f"stream {name!r}: domains must be a list of names, got {spec.get('domains')!r}")
        for name, spec in models.items():
            for key in ("num_classes", "seed"):
                if key in spec:
                    _sweep_int(spec[key], f"model {name!r}: {key}", 0 if key == "seed" else 1)
        methods = _methods(data["methods"])
        settings = data.get("settings", ["continual"])
        if not isinstance(settings, list):
            raise SweepError(f"settings must be a list such as [\"continual\"], got {settings!r}")
        bad = [s for s in settings if s not in SETTINGS]
        if bad or not settings:
            raise SweepError(f"settings must be a non-empty list from {', '.join(SETTINGS)}; got {settings}")
        seeds = data.get("seeds", [0])
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise SweepError(f"seeds must be a non-empty list of integers, got {seeds!r}")
        if not isinstance(data.get("resources", {}), Mapping):
            raise SweepError("resources must be a table such as {\"num_cpus\": 1, \"num_gpus\": 0}")
        resources = dict(data.get("resources", {}))
        unknown = sorted(set(resources) - {"num_cpus", "num_gpus", "max_retries", "memory"})
        if unknown:
            raise SweepError(f"unknown resources key(s) {unknown}; known: num_cpus, num_gpus, max_retries, memory")
        for key in ("num_cpus", "num_gpus", "memory"):
            if key in resources:
                _sweep_number(resources[key], f"resources.{key}")
        if "max_retries" in resources:
            _sweep_int(resources["max_retries"], "resources.max_retries", -1)
        if data.get("threads") is not None:
            _sweep_int(data["threads"], "threads", 1)
        if data.get("device") is not None and not isinstance(data["device"], str):
            raise SweepError(f"device must be a name such as cpu or cuda, got {data['device']!r}")
        if not isinstance(data.get("out", "runs/sweep"), str) or not data.get("out", "runs/sweep"):
            raise SweepError(f"out must be a folder path, got {data.get('out')!r}")
        if not isinstance(data.get("ray", {}), Mapping):
            raise SweepError(f"ray must be a table (address, num_cpus, runtime_env), got {data.get('ray')!r}")
        if data.get("id_domain") is not None and not isinstance(data["id_domain"], str):
            raise SweepError(f"id_domain must be a domain name, got {data['id_domain']!r}")
        return cls(models=models, streams=streams, methods=methods, settings=settings, seeds=list(seeds),
                   resources=resources, out=str(data.get("out", "runs/sweep")), device=data.get("device"),
                   threads=data.get("threads"), ray=dict(data.get("ray", {})), id_domain=data.get("id_domain"),
                   base_dir=str(Path(base_dir) if base_dir is not None else Path.cwd()))

    @classmethod
    def load(cls, path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> SweepConfig:
        """Read a ``.json`` or ``.toml`` sweep config."""
        return cls.from_dict(load_config(path), base_dir=base_dir)

    @property
    def num_cpus(self) -> float:
        return float(self.resources.get("num_cpus", 1))

    @property
    def num_gpus(self) -> float:
        return float(self.resources.get("num_gpus", 0))

    def out_dir(self) -> Path:
        """The output folder, absolute."""
        out = Path(self.out).expanduser()
        return out if out.is_absolute() else Path(self.base_dir) / out

    def runs(self) -> list[Run]:
        """The grid, model-major (consecutive runs share a model pair and a stream)."""
        device = self.device or ("cuda" if self.num_gpus > 0 else "cpu")
        threads = int(self.threads or max(1, math.floor(self.num_cpus)))
        out = self.out_dir()
        runs = []
        for model, mspec in self.models.items():
            for stream, sspec in self.streams.items():
                for setting in self.settings:
                    for m in self.methods:
                        for seed in self.seeds:
                            rid = _run_id(mspec, sspec, m["name"], m["options"], setting, seed)
                            path = out / _safe(model) / _safe(stream) / f"{_safe(m['label'])}-{setting}-s{seed}.jsonl"
                            runs.append(Run(rid, model, stream, m["label"], setting, int(seed), mspec, sspec,
                                            m["name"], m["options"], str(path), self.base_dir, threads, device))
        return runs


def _sweep_int(value: Any, what: str, minimum: int) -> int:
    try:
        return int(check.integer(value, what, minimum=minimum))
    except UsageError as err:
        raise SweepError(str(err)) from None


def _sweep_number(value: Any, what: str) -> float:
    try:
        return check.number(value, what, low=0.0)
    except UsageError as err:
        raise SweepError(f"{err} (a number of CPUs, GPUs or bytes)") from None


def _named(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise SweepError(f"{what} must map names to specs, e.g. {{\"tiny\": {{\"kind\": \"random-clip\", ...}}}}")
    return value


def _methods(value: Any) -> list[dict[str, Any]]:
    from adawise.methods.registry import registered_methods

    known = registered_methods()
    out: list[dict[str, Any]] = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise SweepError(f"a method is a registry name or {{\"name\", \"options\", \"label\"}}, got {entry!r}")
        name = str(entry["name"])
        if name not in known:
            raise SweepError(f"unknown method {name!r}; registered methods: {', '.join(known)}")
        if not isinstance(entry.get("options", {}), Mapping):
            raise SweepError(f"method {name!r}: options must be a table of option -> value, got {entry['options']!r}")
        options = dict(entry.get("options", {}))
        if name == "vrf" and "index" not in options:
            raise SweepError("method vrf needs options.index: a Zero-Shot-Failure index file (build one with "
                             "`adawise vrf-index ... --out zsf.safetensors`)")
        from adawise.apps.experiment import check_method_options

        try:  # a value the method refuses (wiseft alpha 1.5, an unknown AdaWiSE option) stops the sweep now
            check_method_options([name], {name: {k: v for k, v in options.items() if k != "index"}},
                                 {(name, k): f"method {name!r} option {k!r}" for k in options})
        except UsageError as err:
            raise SweepError(str(err)) from None
        out.append({"name": name, "options": options, "label": str(entry.get("label", name))})
    labels = [m["label"] for m in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise SweepError(f"method label(s) {dupes} appear twice; give each entry a distinct 'label'")
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(name))


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a ``.json`` or ``.toml`` file."""
    try:
        return check.read_config(path, f"sweep config {path}", "a .json or .toml sweep config (see "
                                 "examples/sweep.json)")
    except UsageError as err:
        raise SweepError(str(err)) from None


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


def _resolve(spec: Mapping[str, Any], base_dir: str) -> dict[str, Any]:
    out = dict(spec)
    for key in _PATH_KEYS & set(out):
        value = out[key]
        if isinstance(value, str) and value.lower() != "none":
            p = Path(value).expanduser()
            out[key] = str(p if p.is_absolute() else Path(base_dir) / p)
    return out


def _class_names(classes: Any) -> tuple[list[str], Any]:
    from streams import imagenet_r

    if classes == "imagenet":
        return list(imagenet_r.IMAGENET_CLASSNAMES), None
    if classes == "imagenet-r":
        return list(imagenet_r.IMAGENET_CLASSNAMES), imagenet_r.IMAGENET_R_MASK
    if isinstance(classes, str):
        return [line.strip() for line in Path(classes).read_text().splitlines() if line.strip()], None
    return [str(c) for c in classes], None


def load_models(spec: Mapping[str, Any], device: str = "cpu", base_dir: str = ".") -> tuple[Any, Any]:
    """The (zero-shot, fine-tuned) pair a sweep model spec describes (see :class:`SweepConfig`)."""
    spec = _resolve(spec, base_dir)
    kind = spec["kind"]
    if kind == "random-clip":
        from adawise.models.clip import load_pair

        arch = copy.deepcopy(spec.get("config") or spec.get("arch"))
        if arch is None:
            raise SweepError("a random-clip model needs 'config' (an open_clip custom config) or 'arch'")
        classes = spec.get("classes") or [f"class {i}" for i in range(int(spec.get("num_classes", 10)))]
        return load_pair(arch, list(classes), pretrained=None, finetuned=None,
                         templates=list(spec.get("templates", ["a photo of a {}."])), device=device,
                         seed=int(spec.get("seed", 0)))
    if kind == "clip":
        from adawise.apps.experiment import load_models as load_clip_pair

        missing = [k for k in ("arch", "pretrained", "finetuned") if not spec.get(k)]
        if missing:
            raise SweepError(f"a clip model needs {', '.join(missing)} (local paths; 'none' for random weights)")
        names, mask = _class_names(spec.get("classes", "imagenet"))
        return load_clip_pair(spec["arch"], spec["pretrained"], spec["finetuned"], class_names=names, class_mask=mask,
                              templates=spec.get("templates", "openai"), device=device,
                              trust_pickle=bool(spec.get("trust_pickle", False)),
                              head_cache_dir=spec.get("head_cache_dir"), seed=int(spec.get("seed", 0)))
    if kind == "embedded":
        from adawise.embedded.world import load_embedded

        world = load_embedded(spec.get("recipe", "full"), data=spec.get("data"), progress=False)
        return world.zeroshot.to(device), world.finetuned.to(device)
    raise SweepError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_KINDS)}")


def build_stream(spec: Mapping[str, Any], seed: int, base_dir: str = ".", device: str | None = None) -> Any:
    """The stream a sweep stream spec describes, with ``seed`` (see :class:`SweepConfig`)."""
    from streams.base import StreamSpec
    from streams.schedules import build_stream as build

    opts = _resolve(spec, base_dir)
    source = opts.pop("source")
    domains = tuple(opts.pop("domains", ()) or ())
    order = opts.pop("order", None)
    schedule = opts.pop("schedule", None)
    batch_size = int(opts.pop("batch_size", 64))
    workers = opts.pop("workers", None)
    if source == "embedded":
        from streams.fashion import embedded_stream

        return embedded_stream(None, domains=domains or None, order=order or "shuffled", schedule=schedule,
                               per_domain=int(opts.pop("per_domain", 2000)), batch_size=batch_size, seed=seed,
                               data=opts.pop("data", None))
    from streams.orders import spec_fields

    order, extra = spec_fields(source, order, schedule)
    opts.update(extra)
    if source == "corruptions" and opts.get("base") == "synthetic":
        import torch

        gen = torch.Generator().manual_seed(int(opts.get("base_seed", 0)))
        n, size = int(opts.get("base_size", 64)), int(opts.get("image_size", 32))
        classes = int(opts.get("num_classes", 10))
        images = torch.rand(n, 3, size, size, generator=gen)
        labels = torch.randint(0, classes, (n,), generator=gen)
        return build(StreamSpec.make(source, domains, order, batch_size, seed, **opts), images=images, labels=labels)
    on_device = device if device and device != "cpu" and source in ("corruptions", "imagenet-c") else None
    return build(StreamSpec.make(source, domains, order, batch_size, seed, **opts), num_workers=workers,
                 device=on_device)


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
        options = _resolve(run.method_options, run.base_dir)
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
        spec = _resolve(run.model_spec, run.base_dir)
        key = json.dumps(spec, sort_keys=True)
        if spec["kind"] == "embedded" and key not in done:
            done.add(key)
            load_embedded(spec.get("recipe", "full"), data=spec.get("data"), progress=progress)


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)


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
