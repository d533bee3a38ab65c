"""AdaWiSE presets side by side: faithful vs fast, for each objective, on the same continual stream.

Provenance: AdaWiSE (Döbler et al., ECCV Workshops 2024; this project's reconstruction); the ablations
(grid, oracle) come from one α sweep of the stream (:func:`adawise.methods.ablations.sweep_stream`).

Reports, per method: accuracy, agreement of the chosen α with the faithful preset (mean |Δα|, share
of batches within 0.05), the share of batches whose objective at the chosen α is within 2% of the
per-batch grid minimum (grid step ``--grid-step``), forward passes and milliseconds per batch, the
ratio to plain inference (the fine-tuned model alone, timed in the same process) and the BO share
of the method's own time (``seconds_bo / seconds``). Timing is reported on a longer stream
(``--timing-batches``) for the cheap methods, since cold searches at domain changes are amortised.

Worlds: ``constructed`` (a two-layer linear pair whose entropy minimum moves with the domain, known
by construction), ``vit`` (a small open_clip ViT pair with random weights, about 7 ms per forward:
the cost model of a CLIP tower), ``mlp`` (a 3x1024 GELU MLP pair, about 7 ms per forward at batch 64 on one CPU
core, trained in about a minute and cached in the temp directory: "zero-shot" under broad
augmentation, "fine-tuned" on clean data; the best α moves with its shifts) and ``embedded``
(``adawise.load_embedded()``). Quality runs on ``--world``, cost on ``--cost-world``.
Times are process CPU time (steady when other processes share the machine).

Measured on the embedded world (2 shared CPU cores, one torch thread, process CPU time;
``python benchmarks/bench_presets.py --embedded --batches-per-domain 6 --grid-step 0.05``, 126
quality batches, 630 cost batches; fast probes every batch on a CPU; JSON in
``benchmarks/results/presets_embedded_cpu.json``):

=========================  ==========  ==========  ========================  =============  ==========
embedded world              acc. diff   mean |da|   within 2% (fast / faith.)  passes (fast)  cost (fast)
=========================  ==========  ==========  ========================  =============  ==========
entropy                     +0.10 pt    0.024       0.92 / 1.00               2.06           1.70x
infomax                     -0.46 pt    0.063       0.90 / 1.00               2.09           1.77x
anchored                    +0.32 pt    0.053       0.92 / 1.00               3.05           2.74x
=========================  ==========  ==========  ========================  =============  ==========

(faithful: 14.8x.) The other worlds (``--batches-per-domain 8 --cost-batches 30``; JSON in
``benchmarks/results/presets_default_cpu.json``):

=========================  ==========  ==========  ========================  =============
quality (fast vs faithful)  acc. diff   mean |da|   within 2% (fast / faith.)  passes (fast)
=========================  ==========  ==========  ========================  =============
constructed, entropy        +0.03 pt    0.064       0.92 / 1.00               2.25
constructed, infomax        +0.13 pt    0.060       0.96 / 1.00               2.03
constructed, anchored       +0.91 pt    0.090       0.92 / 1.00               2.93
MLP, entropy                -0.03 pt    0.004       1.00 / 1.00               1.53
MLP, infomax                +0.22 pt    0.030       1.00 / 1.00               1.48
MLP, anchored               -0.11 pt    0.016       1.00 / 1.00               3.38
=========================  ==========  ==========  ========================  =============

Cost per batch (ratio to plain inference of the same model in the same process): small ViT (6.9 ms
plain) fast 1.69x entropy / 1.94x infomax / 1.89x anchored, BO share 12-14%; faithful 28x. MLP (3.7 ms
plain, a merge costs 15% of its time: the worst case) fast 3.65x entropy / 2.57x infomax / 5.29x
anchored, BO share 17-19%. An earlier H200 row (``--cost-world vitb16 --device cuda --amp bf16``, a
probe every second batch as CUDA still does): plain 10.75 ms, fast entropy 1.99x, faithful 24x.

Usage::

    python benchmarks/bench_presets.py                      # constructed + MLP quality; ViT, MLP cost
    python benchmarks/bench_presets.py --objectives entropy --batches-per-domain 4 --no-faithful
    python benchmarks/bench_presets.py --embedded --json runs/presets.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import adawise
from adawise.core.alpha_engine import AlphaEvaluator
from adawise.methods.ablations import alpha_grid, sweep_stream
from streams.base import Batch


# ------------------------------------------------------------------------------------------ worlds
def _stream_from(x: Tensor, y: Tensor, shifts: dict[str, Any], per_domain: int, batch_size: int) -> list[Batch]:
    out: list[Batch] = []
    for name, shift in shifts.items():
        xs = shift(x[: per_domain * batch_size])
        for i in range(per_domain):
            sl = slice(i * batch_size, (i + 1) * batch_size)
            out.append(Batch(xs[sl], y[sl], name, len(out)))
    return out


def constructed_world(batches_per_domain: int, batch_size: int, peaks: tuple[float, float] = (0.25, 0.8),
                      k: float = 3.0) -> dict[str, Any]:
    """Two-layer linear pair whose entropy minimum moves with the input domain (known by design).

    Inputs have two 16-feature groups; θ(α) scales group i's logits by s_i(α) = a_i(α)·b_i(α), a
    product of two lerps that peaks at ``peaks[i]`` (the construction of the contract check, twice).
    A domain weights the two groups, so its entropy minimum lies between the peaks: near 0.25 when
    group 1 dominates, near 0.8 when group 2 does. Labels: argmax of the unscaled logits.
    """
    d2, c = 16, 10
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(c, d2, generator=g) / d2**0.5 * k for _ in peaks]

    def net(end: float) -> nn.Sequential:
        m = nn.Sequential(nn.Linear(2 * d2, 2 * d2, bias=False), nn.Linear(2 * d2, c, bias=False))
        with torch.no_grad():
            m[0].weight.copy_(torch.block_diag(*[(1.0 + end) * torch.eye(d2) for _ in peaks]))
            heads = [(1.0 - end / (1.0 + 2.0 * p)) * mt for p, mt in zip(peaks, mats, strict=True)]
            m[1].weight.copy_(torch.cat(heads, 1))
        return m.eval().requires_grad_(False)

    n = batches_per_domain * batch_size
    x = torch.randn(n, 2 * d2, generator=torch.Generator().manual_seed(7))
    y = (x[:, :d2] @ mats[0].T + x[:, d2:] @ mats[1].T).argmax(1)
    group = torch.arange(2 * d2) < d2

    def weigh(w1: float, w2: float, noise: float = 0.0) -> Any:
        scale = torch.where(group, torch.tensor(w1), torch.tensor(w2))
        return lambda z: z * scale + noise * torch.randn(z.shape, generator=torch.Generator().manual_seed(3))

    shifts = {"balanced": weigh(1, 1), "group1": weigh(1, 0.2), "group2": weigh(0.2, 1),
              "tilt1": weigh(0.7, 0.5), "noisy": weigh(1, 1, 0.8), "tilt2": weigh(0.5, 0.7)}
    return {"zeroshot": net(0.0), "finetuned": net(1.0), "name": f"constructed pair (peaks {peaks})",
            "stream": lambda per: _stream_from(x, y, shifts, per, batch_size)}


_D, _C, _WIDTH, _DEPTH = 64, 10, 1024, 3


def _mlp() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(_D, _WIDTH), nn.GELU()]
    for _ in range(_DEPTH - 1):
        layers += [nn.Linear(_WIDTH, _WIDTH), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(_WIDTH, _C))


class _Task:
    """Ten Gaussian classes in a latent space, seen through a fixed nonlinear map (64 features)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.protos = torch.randn(_C, _D, generator=g) * 0.6
        self.mix = torch.randn(_D, _D, generator=g) / math.sqrt(_D)
        self.perm = torch.randperm(_D, generator=g)

    def sample(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, _C, (n,), generator=gen)
        z = self.protos[y] + torch.randn(n, _D, generator=gen)
        return torch.tanh(z @ self.mix) * 2.0, y

    def shifts(self) -> dict[str, Any]:
        """name -> fn(x) -> x: the endpoints trade places across them (fixed noise draws)."""
        perm = self.perm

        def rand(z: Tensor, seed: int) -> Tensor:
            return torch.rand(z.shape, generator=torch.Generator().manual_seed(seed))

        return {
            "clean": lambda z: z,
            "noise": lambda z: z + 1.2 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1)),
            "scale": lambda z: 0.4 * z,
            "dropout": lambda z: z * (rand(z, 2) > 0.5).float(),
            "offset": lambda z: z + 0.8,
            "mixing": lambda z: 0.5 * z[:, perm] + 0.5 * z,
            "sign": lambda z: torch.where(torch.arange(_D) < 16, -z, z),
        }


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    n = len(x)
    scale = torch.exp(torch.randn(n, 1, generator=g) * 0.4)
    noise = torch.randn(x.shape, generator=g) * torch.rand(n, 1, generator=g) * 1.5
    keep = (torch.rand(x.shape, generator=g) > torch.rand(n, 1, generator=g) * 0.5).float()
    return (x * scale + noise) * keep


def _train(model: nn.Module, task: _Task, steps: int, lr: float, augment: bool, g: torch.Generator) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        x, y = task.sample(128, g)
        loss = nn.functional.cross_entropy(model(_augment(x, g) if augment else x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def mlp_world(batches_per_domain: int, batch_size: int, cache: Path | None = None) -> dict[str, Any]:
    """A 3x1024 GELU MLP pair (about 7 ms per forward at batch 64 on one core), cached in the temp dir.

    "Zero-shot": trained under broad augmentation; "fine-tuned": continued on clean data. Under its
    feature-space shifts the best α moves between 0 and 0.7, while every objective prefers α near 1.
    """
    task = _Task()
    cache = cache or Path(tempfile.gettempdir()) / f"adawise_bench_presets_mlp{_WIDTH}x{_DEPTH}.pt"
    zs, ft = _mlp(), _mlp()
    if cache.exists():
        state = torch.load(cache, weights_only=True)
        zs.load_state_dict(state["zeroshot"])
        ft.load_state_dict(state["finetuned"])
        zs.eval().requires_grad_(False)
        ft.eval().requires_grad_(False)
    else:
        print(f"training the MLP world (cached at {cache}) ...", flush=True)
        g = torch.Generator().manual_seed(1)
        zs = _train(zs, task, 400, 1e-3, True, g)
        ft = _train(copy.deepcopy(zs).train().requires_grad_(True), task, 300, 3e-4, False, g)
        torch.save({"zeroshot": zs.state_dict(), "finetuned": ft.state_dict()}, cache)
    x, y = task.sample(batches_per_domain * batch_size, torch.Generator().manual_seed(7))
    return {"zeroshot": zs, "finetuned": ft, "name": f"MLP {_WIDTH}x{_DEPTH}",
            "stream": lambda per: _stream_from(x, y, task.shifts(), per, batch_size)}


def vit_world(batches_per_domain: int, batch_size: int) -> dict[str, Any]:
    """A small open_clip ViT classifier pair with random weights (about 7 ms per forward at batch 64
    on one CPU core): the cost model of a CLIP tower, where a merge is cheap next to a pass.

    The fine-tuned endpoint is the zero-shot one plus small random offsets, so α matters smoothly;
    the domains change the image statistics (and the entropy level). Labels are random: accuracy
    means nothing here, only cost does.
    """
    from adawise.models.clip import CLIPClassifier, create_clip

    torch.manual_seed(0)
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 64, "layers": 3,
                                           "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    clip, _ = create_clip(cfg)
    g = torch.Generator().manual_seed(1)
    zs = CLIPClassifier(clip.visual, 10.0 * nn.functional.normalize(torch.randn(10, 64, generator=g), dim=-1), 28)
    ft = copy.deepcopy(zs)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.3 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=g))
    zs, ft = zs.eval().requires_grad_(False), ft.eval().requires_grad_(False)
    n = batches_per_domain * batch_size
    x = torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(8))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    shifts = {"plain": lambda z: z, "dark": lambda z: 0.3 * z,
              "noisy": lambda z: (z + 0.5 * noise[: len(z)]).clamp(0, 1),
              "contrast": lambda z: 0.5 + 0.2 * (z - 0.5), "inverted": lambda z: 1 - z}
    return {"zeroshot": zs, "finetuned": ft, "name": "small ViT (open_clip, random weights)",
            "stream": lambda per: _stream_from(x, y, shifts, per, batch_size)}


def vitb16_world(batches_per_domain: int, batch_size: int) -> dict[str, Any]:
    """torchvision's ViT-B/16 pair with random weights (the image tower of the real job, 1000
    classes; for GPU cost runs: ``--cost-world vitb16 --device cuda --amp bf16``). Labels are random."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    zs = vit_b_16()
    ft = copy.deepcopy(zs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=g))
    n = batches_per_domain * batch_size
    x = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(8))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    shifts = {"plain": lambda z: (z - mean) / std, "dark": lambda z: (0.3 * z - mean) / std,
              "contrast": lambda z: (0.5 + 0.2 * (z - 0.5) - mean) / std, "inverted": lambda z: (1 - z - mean) / std}
    return {"zeroshot": zs.eval().requires_grad_(False), "finetuned": ft.eval().requires_grad_(False),
            "name": "ViT-B/16 (torchvision, random weights)",
            "stream": lambda per: _stream_from(x, y, shifts, per, batch_size)}


def embedded_world(batches_per_domain: int, batch_size: int, recipe: str = "full") -> dict[str, Any]:
    """The embedded world (``adawise.load_embedded``): test images under each of its shifts."""
    world = adawise.load_embedded(recipe)
    n = batches_per_domain * batch_size
    idx = torch.randperm(len(world.test_images), generator=torch.Generator().manual_seed(0))[:n]
    x, y = world.test_images[idx].contiguous(), world.test_labels[idx]
    return {"zeroshot": world.zeroshot, "finetuned": world.finetuned, "name": f"embedded ({recipe})",
            "stream": lambda per: _stream_from(x, y, world.shifts, per, batch_size)}


# ------------------------------------------------------------------------------------------ running
_DEVICE = torch.device("cpu")
_AMP: torch.dtype | None = None


def _clock() -> float:
    """Process CPU time on a CPU (steady when other processes share the machine; exact with one
    torch thread), wall-clock time after a synchronisation on a GPU."""
    if _DEVICE.type == "cuda":
        torch.cuda.synchronize(_DEVICE)
        return time.perf_counter()
    return time.process_time()


def _autocast() -> Any:
    return torch.autocast(_DEVICE.type, dtype=_AMP) if _AMP is not None else contextlib.nullcontext()


def run(method: nn.Module, stream: list[Batch]) -> dict[str, Any]:
    """The online protocol (domain signal, predict, score), with per-batch records.

    ``cpu`` is the time of the call by :func:`_clock`; ``seconds*`` are the method's own wall-clock
    breakdown.
    """
    records, domain = [], None
    with torch.no_grad():
        for batch in stream:
            if batch.domain != domain:
                method.on_domain(batch.domain)
                domain = batch.domain
            t = _clock()
            logits = method(batch.images)
            cpu = _clock() - t
            info = dict(method.info)
            records.append({
                "domain": batch.domain, "alpha": method.alpha, "cpu": cpu,
                "correct": int((logits.argmax(-1).cpu() == batch.labels.cpu()).sum()), "n": len(batch.labels),
                "objective": info.get("objective"), "forward_passes": info.get("forward_passes", 1.0),
                "merges": info.get("merges", 0), "mode": info.get("mode"),
                **{k: info.get(k, 0.0) for k in ("seconds", "seconds_forward", "seconds_merge", "seconds_bo")},
            })
    return {"records": records,
            "accuracy": sum(r["correct"] for r in records) / sum(r["n"] for r in records)}


def plain_seconds(model: nn.Module, stream: list[Batch], repeats: int = 2) -> float:
    """Mean seconds (:func:`_clock`) of one plain forward pass per batch (under ``--amp``)."""
    with torch.no_grad(), _autocast():
        model(stream[0].images)
        t = _clock()
        for _ in range(repeats):
            for batch in stream:
                model(batch.images)
        return (_clock() - t) / (repeats * len(stream))


def timing(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean CPU ms per batch, passes and merges per batch, and shares of the method's own time."""
    n, wall = len(records), max(sum(r["seconds"] for r in records), 1e-12)
    return {"ms": 1e3 * sum(r["cpu"] for r in records) / n,
            "passes": sum(r["forward_passes"] for r in records) / n,
            "merges": sum(r["merges"] for r in records) / n,
            "forward_share": sum(r["seconds_forward"] for r in records) / wall,
            "merge_share": sum(r["seconds_merge"] for r in records) / wall,
            "bo_share": sum(r["seconds_bo"] for r in records) / wall}


def _world(name: str, per: int, batch_size: int, recipe: str) -> dict[str, Any]:
    if name == "constructed":
        return constructed_world(per, batch_size)
    if name == "mlp":
        return mlp_world(per, batch_size)
    if name == "vit":
        return vit_world(per, batch_size)
    if name == "vitb16":
        return vitb16_world(per, batch_size)
    if name == "embedded":
        return embedded_world(per, batch_size, recipe)
    raise ValueError(f"unknown world {name!r}: constructed | mlp | vit | vitb16 | embedded")


def quality(world: dict[str, Any], per: int, objectives: list[str], grid_step: float, faithful: bool,
            fast_options: dict[str, Any]) -> dict[str, Any]:
    """Faithful vs fast per objective on one stream, against the per-batch grid minimum."""
    zs, ft, stream = world["zeroshot"], world["finetuned"], world["stream"](per)
    print(f"\n== quality: {world['name']}; {len(stream)} batches of {len(stream[0].labels)}; domains: "
          f"{', '.join(dict.fromkeys(b.domain for b in stream))}")
    grid = alpha_grid(int(round(1 / grid_step)) + 1)
    t = time.perf_counter()
    sweep = sweep_stream(AlphaEvaluator(zs, ft), stream, grid, objectives)
    static = {a: float(sweep.correct[:, i].sum() / sweep.sizes.sum()) for i, a in enumerate(grid)
              if a in (0.0, 0.5, 1.0)}
    print(f"sweep of {len(grid)} alphas: {time.perf_counter() - t:.0f} s; oracle (UPPER BOUND, reads labels) "
          f"{100 * sweep.oracle_accuracy():.2f}%, alpha per domain {sweep.oracle_alphas()}")
    print("static: " + ", ".join(f"alpha={a}: {100 * v:.2f}%" for a, v in static.items()))
    out: dict[str, Any] = {"world": world["name"], "batches": len(stream), "static": static,
                           "oracle_upper_bound": sweep.oracle_accuracy(), "methods": {}}
    rows = []
    for obj in objectives:
        minimum = sweep.minimum(obj)
        results = {}
        for preset in (["faithful"] if faithful else []) + ["fast"]:
            opts = fast_options if preset == "fast" else {}
            results[preset] = run(adawise.AdaWiSE(zs, ft, preset=preset, objective=obj, **opts), stream)
        for preset, res in results.items():
            recs = res["records"]
            g = torch.tensor([r["objective"] for r in recs], dtype=torch.float64)
            row = {"method": f"adawise-{obj} {preset}", "accuracy": res["accuracy"],
                   "within2": float(((g - minimum) <= 0.02 * minimum.abs() + 1e-9).double().mean()),
                   **timing(recs), "alphas": [r["alpha"] for r in recs]}
            if preset == "fast" and "faithful" in results:
                a = torch.tensor(row["alphas"])
                b = torch.tensor([r["alpha"] for r in results["faithful"]["records"]])
                row["dalpha_mean"] = float((a - b).abs().mean())
                row["dalpha_within_0.05"] = float(((a - b).abs() <= 0.05 + 1e-9).double().mean())
                row["dacc_points"] = 100 * (res["accuracy"] - results["faithful"]["accuracy"])
            rows.append(row)
        rows.append({"method": f"adawise-grid-{obj} (sweep)", "accuracy": sweep.grid_accuracy(obj),
                     "within2": 1.0, "passes": float(len(grid))})
    rows.append({"method": "oracle (UPPER BOUND, labels)", "accuracy": sweep.oracle_accuracy(),
                 "within2": math.nan, "passes": 1.0})
    print(f"within2 = objective at the chosen alpha within 2% of the {grid_step}-grid minimum of the batch; "
          f"dacc, |da|, da<=.05 = fast vs faithful")
    print(f"{'method':30s} {'acc%':>7s} {'dacc':>6s} {'|da|':>6s} {'da<=.05':>7s} {'within2':>7s} {'passes':>6s}")
    for r in rows:
        print(f"{r['method']:30s} {100 * r['accuracy']:7.2f} {r.get('dacc_points', math.nan):6.2f} "
              f"{r.get('dalpha_mean', math.nan):6.3f} {r.get('dalpha_within_0.05', math.nan):7.2f} "
              f"{r['within2']:7.2f} {r['passes']:6.2f}")
        out["methods"][r["method"]] = {k: v for k, v in r.items() if k != "method"}
    return out


def cost(world: dict[str, Any], per: int, objectives: list[str], fast_options: dict[str, Any],
         faithful_batches: int) -> dict[str, Any]:
    """Per-batch CPU milliseconds of plain inference, fast and faithful, in this process."""
    zs, ft = world["zeroshot"].to(_DEVICE), world["finetuned"].to(_DEVICE)
    stream = [Batch(b.images.to(_DEVICE), b.labels, b.domain, b.index) for b in world["stream"](per)]
    plain = plain_seconds(ft, stream)
    clock = "wall time, synchronised" if _DEVICE.type == "cuda" else "process CPU time"
    print(f"\n== cost: {world['name']} on {_DEVICE} (amp {_AMP}); {len(stream)} batches ({per} per domain); "
          f"plain forward {1e3 * plain:.2f} ms/batch ({clock})")
    out: dict[str, Any] = {"world": world["name"], "batches": len(stream), "plain_ms": 1e3 * plain, "methods": {}}
    runs = [(f"adawise-{o} fast", o, "fast", stream) for o in objectives]
    if faithful_batches:
        short = stream[:: max(1, len(stream) // faithful_batches)][:faithful_batches]
        runs.append(("adawise-entropy faithful", "entropy", "faithful", short))
    print(f"{'method':30s} {'ms/batch':>9s} {'ratio':>6s} {'passes':>6s} {'merges':>6s} "
          f"{'fwd%':>5s} {'merge%':>6s} {'BO%':>5s}")
    for name, obj, preset, strm in runs:
        opts = fast_options if preset == "fast" else {}
        res = run(adawise.AdaWiSE(zs, ft, preset=preset, objective=obj, amp_dtype=_AMP, **opts), strm)
        tm = timing(res["records"])
        tm["ratio"] = tm["ms"] / (1e3 * plain)
        out["methods"][name] = tm
        print(f"{name:30s} {tm['ms']:9.2f} {tm['ratio']:6.2f} {tm['passes']:6.2f} {tm['merges']:6.2f} "
              f"{100 * tm['forward_share']:5.1f} {100 * tm['merge_share']:6.1f} {100 * tm['bo_share']:5.1f}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="constructed,mlp", help="quality worlds: constructed, mlp, embedded")
    p.add_argument("--embedded", action="store_true", help="shorthand for --world embedded --cost-world embedded")
    p.add_argument("--recipe", default="full", help="embedded world recipe (full | tiny | JSON file)")
    p.add_argument("--cost-world", default="vit,mlp", help="worlds of the timing runs (none: skip)")
    p.add_argument("--batches-per-domain", type=int, default=6)
    p.add_argument("--cost-batches", type=int, default=30, help="batches per domain of the timing stream")
    p.add_argument("--faithful-cost-batches", type=int, default=10, help="batches the faithful preset is timed on")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--objectives", default="entropy,infomax,anchored")
    p.add_argument("--grid-step", type=float, default=0.01, help="alpha grid of the per-batch minimum")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives steady timings)")
    p.add_argument("--no-faithful", action="store_true", help="skip the (slow) faithful preset")
    p.add_argument("--fast-options", default="{}", help="JSON dict of options overriding the fast preset")
    p.add_argument("--device", default="cpu", help="device of the cost runs (e.g. cuda)")
    p.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast dtype of the cost runs")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global _DEVICE, _AMP
    _DEVICE = torch.device(args.device)
    _AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    if args.embedded:
        args.world, args.cost_world = "embedded", "embedded"
    objectives = [o for o in args.objectives.split(",") if o]
    fast_options = json.loads(args.fast_options)
    out: dict[str, Any] = {"quality": [], "fast_options": fast_options}
    for name in [w for w in args.world.split(",") if w]:
        world = _world(name, args.batches_per_domain, args.batch_size, args.recipe)
        out["quality"].append(quality(world, args.batches_per_domain, objectives, args.grid_step,
                                      not args.no_faithful, fast_options))
    out["cost"] = []
    for name in [w for w in args.cost_world.split(",") if w and w != "none"]:
        world = _world(name, args.cost_batches, args.batch_size, args.recipe)
        out["cost"].append(cost(world, args.cost_batches, objectives, fast_options,
                                0 if args.no_faithful else args.faithful_cost_batches))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
