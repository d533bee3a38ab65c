"""Options of the methods to run, from the command line or a sweep config, checked before any model loads."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adawise import options as check
from adawise.errors import UsageError

__all__ = ["check_method_options", "method_options_of"]


def method_options_of(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """Options per method, and the flag each (method, key) came from (for messages)."""
    opts: dict[str, dict[str, Any]] = {"wiseft": {"alpha": args.alpha}, "ose": {"w": args.ose_w}}
    flags = {("wiseft", "alpha"): f"--alpha {args.alpha}", ("ose", "w"): f"--ose-w {args.ose_w}"}
    if args.vrf_index:
        opts["vrf"] = {"index": str(Path(args.vrf_index).expanduser())}
        flags[("vrf", "index")] = "--vrf-index"
    for item in args.method_option or []:
        name_key, sep, raw = item.partition("=")
        name, dot, key = name_key.partition(".")
        if not sep or not dot or not name or not key:
            raise UsageError(f"--method-option {item!r}: expected NAME.KEY=VALUE, e.g. wiseft.alpha=0.3")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        opts.setdefault(name, {})[key] = value
        flags[(name, key)] = f"--method-option {item}"
    return opts, flags


class _StandIn(nn.Module):
    """A tiny classifier for option checks: a layer norm (what ``tent`` adapts) and ``encode`` / ``classify``
    with a ``head`` (what ``tda`` reads), so every method's constructor can run its own checks on it."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.head = nn.LayerNorm(2), nn.Linear(2, 2)

    def encode(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.norm(x), dim=-1)

    def classify(self, features: Tensor) -> Tensor:
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.encode(x))


def check_method_options(methods: Sequence[str], opts: Mapping[str, Mapping[str, Any]],
                         flags: Mapping[tuple[str, str], str] | None = None) -> None:
    """Refuse options no method can take: an unknown method name, an unknown key, a value the method's
    constructor refuses. Each method to run is built once around two tiny stand-in models (milliseconds),
    so its own checks run before any real model is loaded; ``vrf``'s index file is only checked to exist."""
    import inspect

    from adawise.methods.registry import make_method, method_class, registered_methods

    flags = flags or {}
    known = registered_methods()
    for name, o in opts.items():
        if name not in known:
            flag = next(iter(flags.get((name, k), f"{name}.{k}") for k in o))
            raise UsageError(f"{flag}: there is no method {name!r}; registered methods: {', '.join(known)}")
    for name in methods:
        o = dict(opts.get(name, {}))
        where = " / ".join(sorted({flags.get((name, k), f"{name}.{k}") for k in o})) or f"method {name}"
        required = method_class(name).required_options
        if required:  # it needs an input no stand-in provides (a file): check the names, and that files exist
            params = inspect.signature(method_class(name)).parameters
            unknown = sorted(set(o) - set(params) - {"zeroshot", "finetuned"})
            if unknown:
                raise UsageError(f"{where}: {name} has no option {unknown}; known: "
                                 f"{', '.join(p for p in params if p not in ('self', 'zeroshot', 'finetuned'))}")
            for option in required:
                if isinstance(o.get(option), (str, Path)):
                    check.input_file(o[option], flags.get((name, option), f"{name}.{option}"), f"{name} {option} file")
            continue
        torch.manual_seed(0)
        stand_in = (_StandIn(), _StandIn())
        try:
            make_method(name, zeroshot=stand_in[0], finetuned=stand_in[1], **o)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{where}: {err}") from None
