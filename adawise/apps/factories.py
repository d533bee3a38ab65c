"""The one factory of model pairs and the one of streams, both from spec mappings (a sweep config's
entries, the command line's options): ``adawise sweep``, ``adawise run`` and ``adawise vrf-index`` build
through here (CLIP pairs from files through :func:`adawise.models.pairs.clip_pair`).

Model kinds are a table (:data:`MODEL_KINDS`: kind -> builder); adding one means adding a builder there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from adawise.errors import UsageError

__all__ = ["MODEL_KINDS", "SweepError", "build_stream", "load_models", "resolve_paths"]


class SweepError(UsageError):
    """A sweep config or the state of its output folder that cannot run; the message says what to fix."""


#: keys whose string values are local paths, resolved against the directory the sweep was started from
PATH_KEYS = {"pretrained", "finetuned", "head_cache_dir", "data", "root", "fashion_root", "index"}


def resolve_paths(spec: Mapping[str, Any], base_dir: str) -> dict[str, Any]:
    """``spec`` with its relative paths (:data:`PATH_KEYS`) made relative to ``base_dir``."""
    out = dict(spec)
    for key in PATH_KEYS & set(out):
        value = out[key]
        if isinstance(value, str) and value.lower() != "none":
            p = Path(value).expanduser()
            out[key] = str(p if p.is_absolute() else Path(base_dir) / p)
    return out


def _random_clip(spec: Mapping[str, Any], device: str) -> tuple[Any, Any]:
    from adawise.models.clip import load_pair

    arch = copy.deepcopy(spec.get("config") or spec.get("arch"))
    if arch is None:
        raise SweepError("a random-clip model needs 'config' (an open_clip custom config) or 'arch'")
    classes = spec.get("classes") or [f"class {i}" for i in range(int(spec.get("num_classes", 10)))]
    return load_pair(arch, list(classes), pretrained=None, finetuned=None,
                     templates=list(spec.get("templates", ["a photo of a {}."])), device=device,
                     seed=int(spec.get("seed", 0)))


def _clip(spec: Mapping[str, Any], device: str) -> tuple[Any, Any]:
    from adawise.models.pairs import class_names, clip_pair

    missing = [k for k in ("arch", "pretrained", "finetuned") if not spec.get(k)]
    if missing:
        raise SweepError(f"a clip model needs {', '.join(missing)} (local paths; 'none' for random weights)")
    names, mask = class_names(spec.get("classes", "imagenet"))
    return clip_pair(spec["arch"], spec["pretrained"], spec["finetuned"], class_names=names, class_mask=mask,
                     templates=spec.get("templates", "openai"), device=device,
                     trust_pickle=bool(spec.get("trust_pickle", False)),
                     head_cache_dir=spec.get("head_cache_dir"), seed=int(spec.get("seed", 0)))


def _embedded(spec: Mapping[str, Any], device: str) -> tuple[Any, Any]:
    from adawise.embedded.world import load_embedded

    world = load_embedded(spec.get("recipe", "full"), data=spec.get("data"), progress=False)
    return world.zeroshot.to(device), world.finetuned.to(device)


#: model kind -> builder of its (zero-shot, fine-tuned) pair from a spec (paths resolved) and a device
MODEL_KINDS: dict[str, Callable[[Mapping[str, Any], str], tuple[Any, Any]]] = {
    "random-clip": _random_clip,
    "clip": _clip,
    "embedded": _embedded,
}


def load_models(spec: Mapping[str, Any], device: str = "cpu", base_dir: str = ".") -> tuple[Any, Any]:
    """The (zero-shot, fine-tuned) pair a model spec describes (``kind``: one of :data:`MODEL_KINDS`)."""
    spec = resolve_paths(spec, base_dir)
    build = MODEL_KINDS.get(spec["kind"])
    if build is None:
        raise SweepError(f"unknown model kind {spec['kind']!r}; choose from {', '.join(MODEL_KINDS)}")
    return build(spec, device)


def build_stream(spec: Mapping[str, Any], seed: int, base_dir: str = ".", device: str | None = None) -> Any:
    """The stream a stream spec describes (``source``: ``embedded`` or a :mod:`streams.schedules` source),
    with ``seed`` (see :class:`~adawise.apps.sweep_config.SweepConfig`)."""
    from streams.base import StreamSpec
    from streams.schedules import build_stream as build

    opts = resolve_paths(spec, base_dir)
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
