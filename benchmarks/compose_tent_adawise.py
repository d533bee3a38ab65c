"""Does TENT's normalisation update on top of adaptive α help? A measured prototype, not a registered method.

The composition: AdaWiSE picks α for each batch and predicts with its live model; then one TENT step
(entropy of that batch at the chosen α, SGD with momentum on the normalisation layers' affine parameters)
adapts the live model for the next batches. The interaction: AdaWiSE writes θ(α) = (1 − α)·θ_zs + α·θ_ft
into the live model in place at every α it evaluates, so a TENT step taken on the live weights is
overwritten by the next merge. Here the normalisation parameters are kept *outside* the merge as an
offset δ: every merge writes θ(α) and then adds δ to the normalisation scales and shifts, so the live model
is θ(α) + δ for whichever α the search evaluates, and TENT's step moves δ. The α search then sees the
adapted model (its objective is measured with δ in place).

Cost per batch: AdaWiSE's passes plus one forward and one backward pass at the chosen α.

Usage::

    python benchmarks/compose_tent_adawise.py --json runs/compose_tent.json            # test stream, ~6 min
    python benchmarks/compose_tent_adawise.py --stream validation --json runs/compose_tent_val.json

Prints clean accuracy, the shift mean and every shift (%), next to AdaWiSE alone and TENT alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tta_validation import validation_stream  # noqa: E402

import adawise  # noqa: E402
from adawise.core.objectives import entropy  # noqa: E402
from adawise.embedded.world import embedded_stream, load_embedded  # noqa: E402
from adawise.methods.adawise import AdaWiSE  # noqa: E402
from adawise.methods.tent import norm_parameters  # noqa: E402


class AdaWiSETent(AdaWiSE):
    """AdaWiSE whose live model carries a TENT offset δ on its normalisation parameters (module docstring)."""

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module, lr: float = 2.5e-4, lr_batch: int = 64,
                 momentum: float = 0.9, **options: Any) -> None:
        super().__init__(zeroshot, finetuned, **options)
        self.live = [p for _, p in norm_parameters(self.evaluator.model)]
        self.delta = [torch.zeros_like(p, requires_grad=True) for p in self.live]
        self.lr, self.lr_batch, self.momentum = lr, lr_batch, momentum
        self.tent_optimizer = torch.optim.SGD(self.delta, lr=lr, momentum=momentum)
        space = self.evaluator.space
        merge = space.set_alpha

        def set_alpha(alpha: float) -> None:  # θ(α), then the offset on the normalisation parameters
            merge(alpha)
            with torch.no_grad():
                for p, d in zip(self.live, self.delta, strict=True):
                    p.add_(d)

        space.set_alpha = set_alpha

    def forward(self, images: Any) -> Tensor:
        logits = super().forward(images)  # the prediction: θ(α_t) + δ, δ from the earlier batches
        ev = self.evaluator
        x = ev.prepare_input(images)
        ev.space.set_alpha(self.alpha)
        with torch.enable_grad():
            for p in self.live:
                p.requires_grad_(True)
            try:
                loss = entropy(ev.model(x)).mean()
                grads = torch.autograd.grad(loss, self.live) if torch.isfinite(loss) else None
            finally:
                for p in self.live:
                    p.requires_grad_(False)
        if grads is not None:
            for d, g in zip(self.delta, grads, strict=True):
                d.grad = g
            for group in self.tent_optimizer.param_groups:
                group["lr"] = self.lr * len(x) / self.lr_batch
            self.tent_optimizer.step()
        ev.space.alpha = None  # the next pass merges again, with the new δ
        return logits

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            for d in self.delta:
                d.zero_()
        self.tent_optimizer = torch.optim.SGD(self.delta, lr=self.lr, momentum=self.momentum)
        self.evaluator.space.alpha = None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stream", default="test", choices=("test", "validation"))
    p.add_argument("--order", default="continual")
    p.add_argument("--setting", default="continual", choices=("continual", "reset_each_shift"))
    p.add_argument("--lrs", default="2.5e-4,1e-3", help="TENT learning rates at batch 64 for the composition")
    p.add_argument("--objectives", default="entropy,anchored")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = load_embedded("full", progress=False, train=False)
    stream = (validation_stream(world, 64, 0) if args.stream == "validation" else
              embedded_stream(world, domains=list(world.domains), order=args.order, batch_size=64, seed=0))
    zs, ft = world.zeroshot, world.finetuned
    runs: list[tuple[str, Any]] = [("tent", lambda: adawise.make_method("tent", zeroshot=zs, finetuned=ft))]
    for objective in args.objectives.split(","):
        name = "adawise" if objective == "entropy" else f"adawise-{objective}"
        runs.append((name, lambda o=objective: AdaWiSE(zs, ft, objective=o)))
        for lr in (float(v) for v in args.lrs.split(",")):
            runs.append((f"{name} + tent lr={lr:g}",
                         lambda o=objective, lr=lr: AdaWiSETent(zs, ft, lr=lr, objective=o)))
    out: dict[str, Any] = {"stream": args.stream, "order": args.order, "setting": args.setting, "results": {}}
    print(f"{'method':36s} {'clean':>6s} {'shifts':>6s}  per shift", flush=True)
    for label, build in runs:
        t0 = time.perf_counter()
        method = build()
        method.name = label
        result = adawise.run_stream(method, stream, setting=args.setting, progress=False)
        per = {d: 100 * a for d, a in result.per_domain.items()}
        shifts = [v for d, v in per.items() if d != "clean"]
        alphas = [a for a in result.alphas if a is not None]
        row = {"clean": per.get("clean"), "shift_mean": sum(shifts) / len(shifts), "per_domain": per,
               "mean_alpha": sum(alphas) / len(alphas) if alphas else None, "seconds": time.perf_counter() - t0}
        out["results"][label] = row
        print(f"{label:36s} {row['clean']:6.1f} {row['shift_mean']:6.2f}  "
              + " ".join(f"{v:5.1f}" for d, v in per.items() if d != "clean") + f"  ({row['seconds']:.0f} s)",
              flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
