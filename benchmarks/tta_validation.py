"""Choose the TTA baselines' scale-dependent hyperparameters on a validation stream, never the test stream.

TENT's learning rate and TDA's cache weights and sharpness were published for CLIP / ResNet models on
ImageNet; the embedded world is far smaller (a 4-layer ViT, 10 classes, logit scale 13.8). This script
runs a grid of settings on a *validation* stream that shares nothing with the demo's test stream: its
images are the world's 2,000 held-out training images (``train[-2000:]``, used by no model and not by the
test stream, which reads t10k), its shifts are six shifts the demo's stream does not contain (the practice
of ImageNet-C's held-out validation corruptions). The setting with the best validation shift mean is the
one docs/tta_baselines.md adopts; ``--stream test`` runs the same grid on the demo's test stream, to show
in hindsight how sensitive each method is (not to choose).

Usage::

    python benchmarks/tta_validation.py --json runs/tta_validation.json          # about 4 min on 2 cores
    python benchmarks/tta_validation.py --stream test --json runs/tta_test_grid.json

Prints one row per setting: clean accuracy, the mean over the stream's shifts and each domain (%).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adawise  # noqa: E402
from adawise.embedded.world import embedded_stream, load_embedded  # noqa: E402
from streams.base import ConcatStream, TensorStream  # noqa: E402
from streams.shifts import apply_shift  # noqa: E402

#: shifts of the validation stream: none of them is in the demo's stream (streams.shifts.DEFAULT_DOMAINS);
#: noise, blur, weather, digital and a rendition, like the test stream's families
VALIDATION_SHIFTS = ("shot_noise", "zoom_blur", "fog", "pixelate", "jpeg_compression", "upside_down")


def grid() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) of every setting: the endpoints, TENT's learning rates (the published
    2.5e-4 at batch 64 and multiples of 4), TDA's cache weights (multiples of the published ones, which the
    method scales by the model's logit scale) and positive-cache sharpness, and both methods on θ(0.5)."""
    rows: list[tuple[str, str, dict[str, Any]]] = [("zeroshot", "zeroshot", {}), ("finetuned", "finetuned", {})]
    for lr in (2.5e-4, 1e-3, 4e-3, 1.6e-2, 6.4e-2):
        rows.append((f"tent lr={lr:g}", "tent", {"lr": lr}))
    for factor in (1.0, 2.0, 4.0, 8.0):
        for beta in (2.0, 5.0, 10.0):
            rows.append((f"tda weights x{factor:g} beta={beta:g}", "tda",
                         {"pos_alpha": 2.0 * factor, "neg_alpha": 0.117 * factor, "pos_beta": beta}))
    rows.append(("tda reference weights (scale 100)", "tda", {"weight_scale": 100.0}))
    for alpha in (0.5,):  # on WiSE-FT's default merge instead of an endpoint (defaults otherwise)
        rows.append((f"wiseft alpha={alpha:g}", "wiseft", {"alpha": alpha}))
        rows.append((f"tent alpha={alpha:g}", "tent", {"alpha": alpha}))
        rows.append((f"tda alpha={alpha:g}", "tda", {"alpha": alpha}))
    return rows


def validation_stream(world: Any, batch_size: int, seed: int) -> ConcatStream:
    """The held-out images, clean then under each validation shift, shuffled once per domain."""
    images, labels = world.holdout_images, world.holdout_labels
    parts = []
    for i, name in enumerate(("clean",) + VALIDATION_SHIFTS):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + i))
        shifted = images if name == "clean" else apply_shift(images, name, seed=seed + i)
        parts.append(TensorStream(shifted[order], labels[order], name, batch_size))
    return ConcatStream(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stream", default="validation", choices=("validation", "test"),
                   help="validation (held-out images and shifts; the default) or test (the demo's stream)")
    p.add_argument("--order", default="continual", help="test stream order (continual or class-sorted)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated substrings: run the settings whose label has one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = load_embedded("full", progress=False, train=False)
    if args.stream == "validation":
        stream = validation_stream(world, args.batch_size, args.seed)
    else:
        stream = embedded_stream(world, domains=list(world.domains), order=args.order, batch_size=args.batch_size,
                                 seed=args.seed)
    settings = grid()
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        settings = [s for s in settings if any(k in s[0] for k in keys)]
    shifts = list(VALIDATION_SHIFTS) if args.stream == "validation" else list(world.domains[1:])
    out: dict[str, Any] = {"stream": args.stream, "order": args.order, "batch_size": args.batch_size,
                           "shifts": shifts, "results": {}}
    print(f"{'setting':38s} {'clean':>6s} {'shifts':>6s}  per shift", flush=True)
    for label, name, options in settings:
        t0 = time.perf_counter()
        method = adawise.make_method(name, zeroshot=world.zeroshot, finetuned=world.finetuned, **options)
        result = adawise.run_stream(method, stream, progress=False, seed=args.seed)
        per = {d: 100 * a for d, a in result.per_domain.items()}
        shifts = [v for d, v in per.items() if d != "clean"]
        row = {"method": name, "options": options, "clean": per.get("clean"), "shift_mean": sum(shifts) / len(shifts),
               "per_domain": per, "seconds": time.perf_counter() - t0}
        out["results"][label] = row
        print(f"{label:38s} {row['clean']:6.1f} {row['shift_mean']:6.2f}  "
              + " ".join(f"{v:5.1f}" for d, v in per.items() if d != "clean"), flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1))
    for family in ("tent", "tda"):
        rows = {k: v for k, v in out["results"].items() if v["method"] == family}
        if rows:
            best = max(rows, key=lambda k: rows[k]["shift_mean"])
            print(f"best {family} on this stream's shift mean: {best} ({rows[best]['shift_mean']:.2f})", flush=True)
    return out


if __name__ == "__main__":
    main()
