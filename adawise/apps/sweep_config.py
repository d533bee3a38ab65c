"""A sweep's configuration: :class:`SweepConfig` (the grid, checked on load) and its cells, :class:`Run`."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adawise import options as check
from adawise.apps.factories import MODEL_KINDS, SweepError
from adawise.errors import UsageError
from adawise.evaluation.loop import SETTINGS

__all__ = ["Run", "SweepConfig", "SETTINGS", "load_config"]






_TOP_KEYS = {"models", "streams", "methods", "settings", "seeds", "resources", "out", "device", "ray", "id_domain",
             "threads"}


#: stream keys that do not change results (left out of the run id)
_STREAM_RUN_ONLY = {"workers"}


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
        from adawise.apps.method_options import check_method_options
        from adawise.methods.registry import method_class

        required = method_class(name).required_options
        for option, how in required.items():
            if option not in options:
                raise SweepError(f"method {name} needs options.{option}: {how}")
        try:  # a value the method refuses (wiseft alpha 1.5, an unknown AdaWiSE option) stops the sweep now
            check_method_options([name], {name: {k: v for k, v in options.items() if k not in required}},
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
