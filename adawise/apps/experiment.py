"""Experiments: every method on the same stream, one JSONL log each, then a table and plots.

Shared by ``adawise run`` (:mod:`adawise.apps.run_cmd`) and ``examples/stream_imagenet_r.py``:

- :func:`add_arguments` / :func:`main`: the command line (ImageNet-R or ImageNet-C streams, local
  weights, a config file), with exit code 2 and a message saying what to download and pass when
  data or weights are missing;
- :func:`load_models` (:func:`adawise.models.pairs.clip_pair`): the (zero-shot, fine-tuned) pair from local
  files (``none``: random weights);
- :func:`run_methods`: :func:`adawise.run_stream` for each method on one stream, logs under ``out``;
- :func:`write_summary`: ``table.md``, ``accuracy.png`` (per domain) and ``alpha.png`` (α over the
  stream, domain boundaries marked).

Files written under ``--out``: ``<method>.jsonl`` and ``<method>.txt`` per method, ``table.md``,
``accuracy.png``, ``alpha.png`` and ``config.json`` (pass it back with ``--config`` to repeat a run).

Every option (from the command line or ``--config``) is checked before the data is scanned and the models
are loaded (:func:`check_args`); a misuse is an :class:`~adawise.errors.AdawiseError` naming the option and
what to pass (exit code 2). The output folder is locked for the run: a second run into it is refused. A
refused ``--resume`` leaves ``config.json`` as it was (it is rewritten only once every log resumed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adawise import options as check
from adawise.apps.method_options import check_method_options, method_options_of
from adawise.errors import AccessError, MissingFileError, UsageError
from adawise.evaluation.loop import SETTINGS
from adawise.models.pairs import clip_pair as load_models
from adawise.models.pairs import default_head_cache, image_size_of, parse_arch, weights_path
from streams.base import Stream, StreamSpec

__all__ = [
    "STREAMS", "UsageError", "add_arguments", "main", "load_models", "run_methods",
    "write_summary", "missing_inputs_message", "default_head_cache", "parse_arch", "image_size_of", "check_args",
    "check_method_options", "EPILOG",
]

log = logging.getLogger(__name__)

STREAMS: tuple[str, ...] = ("imagenet-r", "imagenet-c")
#: options that do not change results; left out of the log config (so --resume still matches)
_RUN_ONLY = {"methods", "resume", "no_progress", "config", "out", "workers", "verbose", "head_cache_dir",
             "command"}
_LIST_OPTIONS = {"methods", "renditions", "corruptions"}


EPILOG = """examples:
  adawise run --stream imagenet-r --data ~/data/imagenet-r --arch ViT-B-16-quickgelu \\
      --pretrained ~/weights/vit_b_16_openai.bin --finetuned ~/weights/wiseft_ft.safetensors \\
      --methods zeroshot,finetuned,wiseft,ose,adawise --out runs/inr
  adawise run --stream imagenet-c --data ~/data/imagenet/val --order gradual --corruptions fog,snow \\
      --pretrained clip.bin --finetuned ft.safetensors --method-option adawise.preset=faithful
  adawise run --config runs/inr/config.json --resume   # continue an interrupted run"""


# --- messages ---------------------------------------------------------------------------------------


def missing_inputs_message(stream: str, missing: Sequence[str]) -> str:
    """What to download and pass when ``missing`` (e.g. ``["--data", "--pretrained"]``) were not given."""
    from streams.imagenet_r import DOWNLOAD_URL
    from streams.schedules import IMAGENET_VAL_HELP

    lines = [f"missing {', '.join(missing)}. This job runs on local files only (nothing is downloaded):"]
    if stream == "imagenet-r":
        lines.append(f"  --data DIR          ImageNet-R: download {DOWNLOAD_URL}, extract it "
                     "(tar -xf imagenet-r.tar) and pass --data path/imagenet-r (the folder holding the 200 "
                     "<wnid> folders).")
    else:
        lines.append(f"  --data DIR          {IMAGENET_VAL_HELP}")
    lines += [
        "  --pretrained PATH   the open_clip checkpoint file of the zero-shot CLIP for --arch, e.g. the ViT-B-16 "
        "OpenAI weights file (OpenAI weights are QuickGELU models: pass --arch ViT-B-16-quickgelu with them).",
        "  --finetuned PATH    a fine-tuned state dict of the same architecture with a 1000-class ImageNet head "
        "(e.g. a wise-ft end-to-end checkpoint), as safetensors or a weights-only .pt; a pickled checkpoint "
        "(like wise-ft's) is opened only with --trust-pickle.",
        "  Smoke test without weights: --pretrained none --finetuned none (random weights, meaningless accuracy).",
        "No downloads here? Run `adawise demo`: every method on the bundled embedded world.",
    ]
    return "\n".join(lines)


# --- arguments --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, streams: Sequence[str] = STREAMS) -> None:
    """Add the experiment options to ``parser``; ``streams`` limits ``--stream`` (one: no option)."""
    defaults: dict[str, Any] = {}

    actions: dict[str, Any] = {}

    def add(group: Any, *flags: str, **kw: Any) -> None:
        action = group.add_argument(*flags, **kw)
        defaults[action.dest] = action.default
        actions[action.dest] = action

    data = parser.add_argument_group("stream")
    if len(streams) > 1:
        add(data, "--stream", choices=list(streams), default=streams[0],
            help=f"which stream (default {streams[0]}): imagenet-r (renditions of 200 classes) or imagenet-c "
                 "(clean ImageNet val images, corrupted on the fly)")
    else:
        parser.set_defaults(stream=streams[0])
    add(data, "--data", help="ImageNet-R folder (imagenet-r) or clean ImageNet val folder <wnid>/*.JPEG (imagenet-c)")
    add(data, "--order", help="order of the samples (streams.orders): shuffled, class-sorted, dirichlet, "
                              "dirichlet:<δ> or given (the source's own); the old words still work: imagenet-r "
                              "rendition (default), shuffled, mixed, class-sorted; imagenet-c continual (default), "
                              "reset_each_shift, gradual, mixed (a schedule)")
    add(data, "--schedule", help="schedule of the domains: continual (default), reset_each_shift, gradual "
                                 "(imagenet-c: severity 1->5->1), mixed (every batch mixes the domains)")
    add(data, "--renditions", help="imagenet-r: comma-separated renditions to keep (default: all present)")
    add(data, "--corruptions", help="imagenet-c: comma-separated corruptions in stream order (default: the 15 "
                                    "of ImageNet-C; 'clean' adds an uncorrupted domain)")
    add(data, "--severity", type=int, default=5, help="imagenet-c: severity 1-5 (default 5; gradual ignores it)")
    add(data, "--limit-per-domain", type=int, help="a seeded subset of this many images per domain")
    add(data, "--batch-size", type=int, default=64, help="test batch size (default 64)")
    add(data, "--seed", type=int, default=0, help="seed of the stream order, corruptions and the run (default 0)")
    add(data, "--workers", type=int, help="image decoding workers (default min(4, cpus))")

    models = parser.add_argument_group("models (local files only)")
    add(models, "--arch", default="ViT-B-16",
        help="open_clip architecture (default ViT-B-16; OpenAI weights: ViT-B-16-quickgelu), or a JSON file "
             "with a custom open_clip config (embed_dim, vision_cfg, text_cfg)")
    add(models, "--pretrained", help="local zero-shot CLIP weights file, or 'none' for random weights")
    add(models, "--finetuned", help="local fine-tuned checkpoint (1000-class ImageNet head), or 'none' "
                                    "(a randomly perturbed copy of the zero-shot model; smoke tests)")
    add(models, "--trust-pickle", action="store_true", help="allow pickled checkpoints (trusted files only)")
    add(models, "--templates", default="openai",
        help="zero-shot prompts: openai (the 80 ImageNet templates, default), simple (one plain template) "
             "or a text file with one template per line ({} for the class name)")
    add(models, "--head-cache-dir", help="where zero-shot heads are cached, keyed by weights, class names and "
                                         "templates (default $ADAWISE_CACHE/heads or ~/.cache/adawise/heads)")

    methods = parser.add_argument_group("methods")
    add(methods, "--methods", help="comma-separated method names (default: the methods registered with "
                                   "default_run, adawise.methods.registry.default_methods(); see "
                                   "adawise.registered_methods())")
    add(methods, "--alpha", type=float, default=0.5, help="wiseft: the fixed alpha (default 0.5)")
    add(methods, "--ose-w", type=float, default=0.5, help="ose: the fine-tuned weight w (default 0.5)")
    add(methods, "--vrf-index", help="vrf: a Zero-Shot-Failure index file (build one with `adawise vrf-index`)")
    add(methods, "--method-option", action="append", default=[], metavar="NAME.KEY=VALUE",
        help="extra method option, e.g. adawise.probe_every=2 or adawise.preset=faithful (repeatable; VALUE "
             "parsed as JSON if it can be)")

    run = parser.add_argument_group("run")
    add(run, "--setting", choices=["continual", "reset_each_shift"],
        help="continual (default) or reset_each_shift (reset at every domain boundary)")
    add(run, "--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    add(run, "--out", default="runs/experiment", help="output folder (default runs/experiment)")
    add(run, "--resume", action="store_true", help="continue interrupted logs with the same configuration")
    add(run, "--no-progress", action="store_true", help="no progress bars")
    add(run, "--config", help="JSON (or TOML) file of options (keys as the long option names); options "
                              "given on the command line win; <out>/config.json of a run repeats it")
    parser.set_defaults(_experiment_defaults=defaults, _experiment_actions=actions)


def _load_config(path: str) -> dict[str, Any]:
    return check.read_config(path, f"--config {path}", "a JSON or TOML file of options (a run's <out>/config.json "
                             "repeats it)")


def _config_value(path: str, key: str, value: Any, action: Any) -> Any:
    """A config file's value for ``action``'s option, with the type the command line would give it."""
    flag = f"--config {path}: {key!r}"
    if action is None:
        return value
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise UsageError(f"{flag} must be true or false, got {value!r}")
    elif action.type in (int, float):
        if value is not None:
            value = check.integer(value, flag) if action.type is int else check.number(value, flag)
    elif isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{flag} must be a list of NAME.KEY=VALUE strings (or a mapping), got {value!r}")
    elif value is not None and not isinstance(value, str):
        raise UsageError(f"{flag} must be a string, got {value!r}")
    if action.choices is not None and value is not None and value not in action.choices:
        raise UsageError(f"{flag} is {value!r}; choose from {', '.join(map(str, action.choices))}")
    return value


def apply_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options left at their defaults from ``args.config`` (command-line values win)."""
    if not getattr(args, "config", None):
        return args
    defaults: dict[str, Any] = getattr(args, "_experiment_defaults", {})
    actions: dict[str, Any] = getattr(args, "_experiment_actions", {})
    for key, value in _load_config(args.config).items():
        dest = key.replace("-", "_")
        if dest in ("config", "verbose", "_experiment_defaults", "_experiment_actions"):
            continue
        if dest == "stream" and "stream" not in defaults:  # the example fixes its stream
            if value != args.stream:
                raise UsageError(f"--config {args.config}: stream {value!r}, but this command runs {args.stream}; pass "
                                 f"a config for {args.stream} (or use `adawise run --stream {value}`)")
            continue
        if dest not in defaults:
            raise UsageError(f"--config {args.config}: unknown option {key!r}; known: {', '.join(sorted(defaults))}")
        if dest in _LIST_OPTIONS and isinstance(value, (list, tuple)):
            if not all(isinstance(v, str) for v in value):
                raise UsageError(f"--config {args.config}: {key!r} must be a list of names, got {value!r}")
            value = ",".join(value)
        if dest == "method_option" and isinstance(value, Mapping):
            if not all(isinstance(o, Mapping) for o in value.values()):
                raise UsageError(f"--config {args.config}: 'method_option' maps method names to {{option: value}}")
            value = [f"{m}.{k}={json.dumps(v)}" for m, opts in value.items() for k, v in opts.items()]
        value = _config_value(args.config, key, value, actions.get(dest))
        if getattr(args, dest) == defaults[dest]:
            setattr(args, dest, value)
    return args


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _resolve_methods(args: argparse.Namespace) -> list[str]:
    from adawise.methods.registry import default_methods, registered_methods

    known = set(registered_methods())
    if args.methods:
        if not isinstance(args.methods, str):
            raise UsageError(f"--methods must be comma-separated names, got {args.methods!r}")
        names = list(dict.fromkeys(_split(args.methods)))
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise UsageError(f"--methods: unknown method(s) {unknown or [args.methods]}; registered methods: "
                             f"{', '.join(sorted(known))}")
        return names
    return default_methods()


# --- running ----------------------------------------------------------------------------------------


def run_methods(zs: nn.Module, ft: nn.Module, stream: Stream, methods: Sequence[str], out: str | os.PathLike,
                setting: str = "continual", seed: int = 0, device: str | torch.device | None = None,
                method_options: Mapping[str, Mapping[str, Any]] | None = None,
                config: Mapping[str, Any] | None = None, progress: bool = True, resume: bool = False,
                id_domain: str | None = None) -> dict[str, Any]:
    """Run each method (by registry name) on ``stream``; write logs, the table and the plots to ``out``.

    Every method iterates the same stream object, hence the identical batches. ``vrf`` without an
    ``index`` option is skipped with a message saying how to build one.

    Returns:
        method name -> :class:`~adawise.evaluation.loop.StreamResult`.
    """
    from tqdm.auto import tqdm

    from adawise.evaluation.loop import run_stream
    from adawise.methods.registry import make_method, method_class

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {k: dict(v) for k, v in (method_options or {}).items()}
    results: dict[str, Any] = {}
    upper_bounds: list[str] = []
    methods = list(methods)
    for name in list(methods):  # a method without an option it cannot run without is skipped, saying why
        for option, how in method_class(name).required_options.items():
            if options.get(name, {}).get(option) is None:
                log.warning("skipping %s: %s", name, how)
                methods.remove(name)
                break
    for name in tqdm(methods, desc="methods", disable=None if progress else True, dynamic_ncols=True):
        opts = options.get(name, {})
        method = make_method(name, zeroshot=zs, finetuned=ft, **opts)
        if method.uses_labels:
            upper_bounds.append(name)
        result = run_stream(method, stream, log=out / f"{name}.jsonl", setting=setting, seed=seed,
                            config=dict(config or {}), progress=progress, resume=resume, device=device)
        results[name] = result
        log.info("%s: accuracy %.2f%% (%s, %.1f s) -> %s", name, 100 * result.accuracy, setting, result.seconds,
                 result.log_path)
        del method
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if results:
        write_summary(results, out, domains=stream.domains, id_domain=id_domain, upper_bounds=upper_bounds,
                      skipped=[p for p, _ in stream.skipped])
    return results


def write_summary(results: Mapping[str, Any], out: str | os.PathLike, domains: Sequence[str] | None = None,
                  id_domain: str | None = None, upper_bounds: Sequence[str] = (),
                  skipped: Sequence[str] = ()) -> dict[str, Path]:
    """``table.md`` (accuracy per domain, markdown), ``accuracy.png`` and ``alpha.png`` under ``out``."""
    from adawise.evaluation.logs import format_table, plot_accuracy, plot_alpha

    out = Path(out)
    accuracy = {m: r.per_domain for m, r in results.items()}
    present = {d for row in accuracy.values() for d in row}
    domains = [d for d in (domains or []) if d in present] + sorted(present - set(domains or []))
    bounds = tuple(upper_bounds)
    setting = next(iter(results.values())).setting
    lines = [f"# Accuracy per domain (%), setting {setting}", "",
             format_table(accuracy, domains, id_domain=id_domain, upper_bounds=bounds, fmt="markdown"), "",
             "Overall (all images): " + ", ".join(f"{m} {100 * r.accuracy:.1f}" for m, r in results.items())]
    if skipped:
        lines += ["", f"Skipped {len(skipped)} unreadable file(s): " + ", ".join(skipped[:20])
                  + (" ..." if len(skipped) > 20 else "")]
    paths = {"table": out / "table.md"}
    paths["table"].write_text("\n".join(lines) + "\n")
    paths["accuracy"] = plot_accuracy(accuracy, out / "accuracy.png", domains, upper_bounds=bounds)
    series = {m: r.alphas for m, r in results.items() if any(a is not None for a in r.alphas)}
    longest = max(results.values(), key=lambda r: len(r.records))
    per_batch = [rec["domain"] for rec in longest.records]
    paths["alpha"] = plot_alpha(series, per_batch, out / "alpha.png")
    return paths


# --- the command ------------------------------------------------------------------------------------


def _check_inputs(args: argparse.Namespace) -> None:
    from adawise.models.checkpoints import probe_checkpoint

    missing = [flag for flag, value in (("--data", args.data), ("--pretrained", args.pretrained),
                                        ("--finetuned", args.finetuned)) if not value]
    if missing:
        raise UsageError(missing_inputs_message(args.stream, missing))
    for flag, value in (("--pretrained", args.pretrained), ("--finetuned", args.finetuned)):
        path = weights_path(value)
        if path is None:
            continue
        try:
            check.input_file(path, f"{flag}", "weights file")
        except MissingFileError:
            raise MissingFileError(f"{flag} {value}: file not found (looked at {Path(path).resolve()}).\n"
                                   + missing_inputs_message(args.stream, [flag])) from None
        probe_checkpoint(path)  # a JSON file, random bytes or a cut safetensors header: refused now
    try:
        check.input_dir(args.data, "--data", "data folder")
    except MissingFileError:
        raise MissingFileError(f"--data {args.data}: folder not found (looked at "
                               f"{Path(args.data).expanduser().resolve()}).\n"
                               + missing_inputs_message(args.stream, ["--data"])) from None


def _check_batch_memory(batch_size: int, image_size: int) -> None:
    """Refuse a batch that could not fit in this machine's memory (decoded, float32, twice: loader and model)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    need = 2 * batch_size * 3 * image_size * image_size * 4
    if need > memory / 2:
        raise UsageError(f"--batch-size {batch_size}: one batch of {image_size}x{image_size} images needs about "
                         f"{need / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.0f} GiB; pass a "
                         "smaller --batch-size (64 is the default)")


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Every option of ``args`` checked, cheapest first, before any data or model is read; returns what the
    run needs: ``methods``, ``method_options``, ``device``, ``arch``, ``out``."""
    from adawise.models.clip import resolve_templates

    check.integer(args.batch_size, "--batch-size", minimum=1)
    check.integer(args.seed, "--seed", minimum=0, maximum=2**63 - 1)
    check.integer(args.severity, "--severity", minimum=1, maximum=5)
    check.integer(args.limit_per_domain, "--limit-per-domain", minimum=1, optional=True)
    check.integer(args.workers, "--workers", minimum=0, maximum=max(8, 4 * (os.cpu_count() or 1)), optional=True)
    check.number(args.alpha, "--alpha", 0.0, 1.0)
    check.number(args.ose_w, "--ose-w", 0.0, 1.0)
    if args.setting not in (None, *SETTINGS):
        raise UsageError(f"--setting {args.setting!r}: choose continual or reset_each_shift")
    if "reset_each_shift" in (args.order, getattr(args, "schedule", None)) and args.setting == "continual":
        raise UsageError("the schedule reset_each_shift runs with the setting reset_each_shift; drop --setting "
                         "continual")
    methods = _resolve_methods(args)
    method_options, flags = method_options_of(args)
    check_method_options(methods, method_options, flags)
    device = check.device(args.device) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    arch = parse_arch(args.arch)
    _check_batch_memory(args.batch_size, image_size_of(arch))
    try:
        resolve_templates(args.templates)
    except MissingFileError as err:
        raise UsageError(f"--templates: {err}") from None
    _check_inputs(args)
    out = check.output_dir(args.out, "--out")
    if args.head_cache_dir:
        check.output_dir(args.head_cache_dir, "--head-cache-dir")
    return {"methods": methods, "method_options": method_options, "device": device, "arch": arch, "out": out}


def _make_spec(args: argparse.Namespace, image_size: int) -> StreamSpec:
    from streams import imagenet_r, schedules
    from streams.orders import spec_fields

    root = str(Path(args.data).expanduser())
    schedule = getattr(args, "schedule", None)
    if args.stream == "imagenet-r":
        renditions = _split(args.renditions)
        bad = [r for r in renditions if r not in imagenet_r.RENDITIONS]
        if bad:
            raise UsageError(f"--renditions: unknown {bad}; choose from {', '.join(imagenet_r.RENDITIONS)}")
        try:
            order, extra = spec_fields("imagenet-r", args.order, schedule)
        except ValueError as err:
            raise UsageError(f"--order/--schedule: {err}") from None
        return StreamSpec.make("imagenet-r", domains=renditions, order=order, batch_size=args.batch_size,
                               seed=args.seed, root=root, image_size=image_size,
                               limit_per_domain=args.limit_per_domain, **extra)
    try:
        return schedules.corruption_spec(_split(args.corruptions) or None, order=args.order or "continual",
                                         schedule=schedule, severity=args.severity, batch_size=args.batch_size,
                                         seed=args.seed, source="imagenet-c", root=root, image_size=image_size,
                                         shuffle=True, limit_per_domain=args.limit_per_domain)
    except ValueError as err:
        raise UsageError(f"--order/--schedule: {err}") from None


def _config_record(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_")}


def main(args: argparse.Namespace) -> int:
    """Run the experiment described by ``args`` (see :func:`add_arguments`); returns an exit code. Every
    misuse raises an :class:`~adawise.errors.AdawiseError` (the command line turns it into exit code 2)."""
    from adawise.evaluation.logs import exclusive
    from streams import imagenet_r, schedules

    args = apply_config(args)
    checked = check_args(args)
    methods, method_options, device, arch, out = (checked[k] for k in ("methods", "method_options", "device",
                                                                       "arch", "out"))
    spec = _make_spec(args, image_size_of(arch))
    setting = args.setting or schedules.setting_for(spec)
    if spec.order == "reset_each_shift" and setting != "reset_each_shift":
        raise UsageError("the schedule reset_each_shift runs with the setting reset_each_shift; drop --setting "
                         "continual")
    with exclusive(out):  # one run per output folder: a second one is refused, not merged
        try:  # scan the data before the (slow) model loading
            stream = schedules.build_stream(spec, num_workers=args.workers, device=device)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"{err}\n" + missing_inputs_message(args.stream, ["--data"])) from None
        except PermissionError as err:
            raise AccessError(f"--data {args.data}: {err}") from None
        log.info("stream %s: %d batches, domains %s (spec %s)", spec.source, len(stream), stream.domains,
                 spec.config_hash())

        record = _config_record(args)
        repeat = {k: v for k, v in record.items() if k not in ("config", "verbose", "resume")}
        config_file = out / "config.json"
        if not (args.resume and config_file.is_file()):  # a resume rewrites it only once every log continued
            config_file.write_text(json.dumps(repeat, indent=2) + "\n")
        head_cache = args.head_cache_dir or default_head_cache(out)
        class_mask = imagenet_r.IMAGENET_R_MASK if args.stream == "imagenet-r" else None
        try:
            zs, ft = load_models(arch, args.pretrained, args.finetuned, class_names=imagenet_r.IMAGENET_CLASSNAMES,
                                 class_mask=class_mask, templates=args.templates, device=device,
                                 trust_pickle=args.trust_pickle, head_cache_dir=head_cache, seed=args.seed)
        except MissingFileError as err:
            raise MissingFileError(f"{err}\n" + missing_inputs_message(args.stream, ["--pretrained", "--finetuned"])
                                   ) from None
        config = {k: v for k, v in record.items() if k not in _RUN_ONLY}
        config["spec_hash"] = spec.config_hash()
        id_domain = schedules.CLEAN if schedules.CLEAN in stream.domains else None
        results = run_methods(zs, ft, stream, methods, out, setting=setting, seed=args.seed, device=device,
                              method_options=method_options, config=config, progress=not args.no_progress,
                              resume=args.resume, id_domain=id_domain)
        if args.resume:
            config_file.write_text(json.dumps(repeat, indent=2) + "\n")
    if not results:
        print("error: no method ran (see the messages above)", file=sys.stderr)
        return 1
    print((out / "table.md").read_text())
    print(f"logs: {', '.join(str(r.log_path) for r in results.values())}")
    print(f"table: {out / 'table.md'}  plots: {out / 'accuracy.png'}, {out / 'alpha.png'}")
    return 0
