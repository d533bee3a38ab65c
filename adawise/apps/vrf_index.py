"""``adawise vrf-index``: build VRF's Zero-Shot-Failure index from the fine-tuning data.

VRF: Zhu et al., NeurIPS 2024, "Enhancing Robust Fine-Tuning of Vision-Language Models via Variance
Reduction". Two ways to name the models and the source data:

* ``--embedded``: the bundled small world (:func:`adawise.load_embedded`), its fine-tuning images
  as the source and its held-out clean images for the temperatures;
* ``--arch A --pretrained W --finetuned F --source-data DIR``: open_clip models from local files
  (:func:`adawise.load_pair`) and an image folder with one sub-folder per class (ImageNet train
  layout: ``DIR/<wnid>/*.JPEG``), optionally ``--holdout-data DIR`` for the temperatures.

The index is written as safetensors (``--out``); pass it to ``make_method("vrf", ..., index=PATH)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from adawise import options
from adawise.errors import AccessError, DataError, MissingFileError, UsageError
from streams.folders import FolderStream

__all__ = ["add_arguments", "main", "FolderStream"]

EPILOG = """examples:
  adawise vrf-index --embedded --out zsf.safetensors
  adawise vrf-index --arch ViT-B-16 --pretrained clip.bin --finetuned ft.safetensors \\
      --source-data ~/data/imagenet/train --out zsf.safetensors"""

_FILE_FLAGS = ("arch", "pretrained", "finetuned", "source_data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adawise vrf-index``."""
    src = parser.add_argument_group("models and source data")
    src.add_argument("--embedded", action="store_true",
                     help="use the bundled small world (its fine-tuning data is the source)")
    src.add_argument("--arch", help="open_clip architecture, e.g. ViT-B-16 (openai weights: ViT-B-16-quickgelu)")
    src.add_argument("--pretrained", help="local CLIP weights file (zero-shot model)")
    src.add_argument("--finetuned", help="local fine-tuned checkpoint (safetensors or weights-only .pt)")
    src.add_argument("--trust-pickle", action="store_true", help="allow pickled checkpoints (trusted files only)")
    src.add_argument("--source-data", help="image folder of the fine-tuning data, one sub-folder per class")
    src.add_argument("--holdout-data", help="image folder of held-out in-distribution data (temperatures)")
    src.add_argument("--class-names", default="imagenet",
                     help="'imagenet' (folders are ImageNet wnids; default) or a text file with one class "
                          "name per line, in sorted-folder order")
    src.add_argument("--templates", default="openai", help="zero-shot templates: openai, simple or a file")
    src.add_argument("--head-cache-dir", help="cache the zero-shot head here")
    vrf = parser.add_argument_group("index")
    vrf.add_argument("--out", required=True, help="output file, e.g. zsf.safetensors")
    vrf.add_argument("--k", type=int, default=None, help="neighbour rank (default: round(1000*|ZSF|/|source|))")
    vrf.add_argument("--a", type=float, default=1.5, help="omega = sigmoid(-(d - a)/b): a (default 1.5)")
    vrf.add_argument("--b", type=float, default=0.6, help="omega = sigmoid(-(d - a)/b): b (default 0.6)")
    vrf.add_argument("--true-l2", action="store_true", help="true L2 distances instead of the reference's squared L2")
    vrf.add_argument("--holdout-fraction", type=float, default=0.1,
                     help="share of the source held out for the temperatures when no holdout data is given")
    vrf.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--workers", type=int, default=4, help="image decoding workers (folder data)")
    run.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def _class_names(spec: str) -> tuple[list[str], dict[str, int] | None]:
    if spec == "imagenet":
        from streams.imagenet_r import IMAGENET_CLASSNAMES, IMAGENET_WNIDS

        return list(IMAGENET_CLASSNAMES), {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    path = Path(spec)
    if not path.is_file():
        raise MissingFileError(f"--class-names: {spec!r} is neither 'imagenet' nor a file ({path.resolve()}); pass "
                               "'imagenet' or a text file with one class name per line")
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (UnicodeDecodeError, OSError) as err:
        raise UsageError(f"--class-names {path}: cannot be read as text ({err}); pass a UTF-8 text file") from None
    if not names:
        raise UsageError(f"--class-names: {path} has no class names (one per line expected)")
    return names, None


def _embedded(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    from adawise.embedded.world import load_embedded
    from streams.base import from_tensors

    world = load_embedded(progress=not args.no_progress)
    source = from_tensors(world.source_images, world.source_labels, "source", args.batch_size)
    holdout = from_tensors(world.holdout_images, world.holdout_labels, "holdout", args.batch_size)
    return world.zeroshot, world.finetuned, source, holdout


def _check(args: argparse.Namespace) -> str:
    """Every option checked before any model or image is loaded; returns the device."""
    if args.embedded and any(getattr(args, n) for n in _FILE_FLAGS):
        raise UsageError("--embedded cannot be combined with --arch/--pretrained/--finetuned/--source-data; pass "
                         "either --embedded or all four")
    if not args.embedded:
        missing = [f"--{n.replace('_', '-')}" for n in _FILE_FLAGS if not getattr(args, n)]
        if missing:
            raise UsageError("pass --embedded, or all of --arch --pretrained --finetuned --source-data "
                             f"(missing: {' '.join(missing)})")
        from adawise.models.pairs import parse_arch

        parse_arch(args.arch)
        from adawise.models.checkpoints import probe_checkpoint

        for flag, value in (("--pretrained", args.pretrained), ("--finetuned", args.finetuned)):
            options.input_file(value, flag, "weights file")
            probe_checkpoint(value)  # a JSON file, random bytes, a cut safetensors header: refused now
        options.input_dir(args.source_data, "--source-data", "image folder")
        if args.holdout_data:
            options.input_dir(args.holdout_data, "--holdout-data", "image folder")
        _class_names(args.class_names)
        from adawise.models.clip import resolve_templates

        try:
            resolve_templates(args.templates)
        except MissingFileError as err:
            raise UsageError(f"--templates: {err}") from None
    options.integer(args.k, "--k", minimum=1, optional=True)
    options.number(args.b, "--b", low=1e-12)
    options.number(args.a, "--a")
    options.number(args.holdout_fraction, "--holdout-fraction", low=0.0, high=1.0, open_high=True)
    options.integer(args.batch_size, "--batch-size", minimum=1)
    options.integer(args.workers, "--workers", minimum=0)
    out = options.output_file(args.out, "--out")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {args.out}: the index is written as safetensors; pass a path ending in .safetensors")
    return options.device(args.device) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")


def _from_files(args: argparse.Namespace, device: str) -> tuple[Any, Any, Any, Any]:
    from adawise.models.pairs import clip_pair

    names, label_of = _class_names(args.class_names)
    zs, ft = clip_pair(args.arch, args.pretrained, args.finetuned, class_names=names, templates=args.templates,
                       device=device, trust_pickle=args.trust_pickle, head_cache_dir=args.head_cache_dir)
    size = int(getattr(zs, "image_size", 224))

    def folder(root: str) -> FolderStream:
        try:
            stream = FolderStream(root, size, args.batch_size, args.workers, label_of)
        except FileNotFoundError as err:
            raise MissingFileError(str(err)) from None
        except PermissionError as err:
            raise AccessError(str(err)) from None
        except ValueError as err:
            raise DataError(str(err)) from None
        if label_of is None and len(stream.classes) != len(names):
            raise DataError(f"{root}: {len(stream.classes)} class folders but {len(names)} class names in "
                            f"{args.class_names}")
        return stream

    return zs, ft, folder(args.source_data), folder(args.holdout_data) if args.holdout_data else None


def main(args: argparse.Namespace) -> int:
    """Run ``adawise vrf-index``; every misuse is an :class:`~adawise.errors.AdawiseError` (exit code 2)."""
    from adawise.methods.zsf import build_zsf_index

    device = _check(args)
    if args.embedded:
        zs, ft, source, holdout = _embedded(args)
        zs, ft = zs.to(device), ft.to(device)
    else:
        zs, ft, source, holdout = _from_files(args, device)
    index = build_zsf_index(zs, ft, source, holdout=holdout, holdout_fraction=args.holdout_fraction, k=args.k,
                            a=args.a, b=args.b, squared=not args.true_l2, device=device,
                            progress=not args.no_progress, seed=args.seed)
    for path, reason in getattr(source, "skipped", []):
        print(f"skipped {path}: {reason}", file=sys.stderr)
    try:
        index.save(args.out)
    except OSError as err:
        raise AccessError(f"--out {args.out}: cannot write the index ({err.strerror or err})") from None
    m = index.metadata
    print(f"ZSF index: {m['n_zsf']} of {m['n_source']} source samples (fine-tuned right {m['ft_correct']}, "
          f"zero-shot right {m['zs_correct']}); k={index.k}, a={index.a}, b={index.b}, "
          f"{'squared L2' if index.squared else 'L2'}, T_zs={index.T_zs:.4f}, T_ft={index.T_ft:.4f} "
          f"({m['n_holdout']} held-out samples) -> {args.out}")
    return 0
