"""Long streams: does AdaWiSE keep its memory flat and its α stable over tens of thousands of batches?

Provenance: AdaWiSE (Döbler et al., ECCV Workshops 2024; this project's reconstruction).

The model is tiny on purpose (the question is the engine's bookkeeping, not the network): a two-layer
linear pair whose entropy minimum over α is known per domain by construction. The input has one block of
``dim`` features per domain and a domain's images live in its block only; per block, layer 1 goes from 0
to k·I (α* ≥ 0.5; mirrored below) and layer 2 from M_i to (1 − 1/(2α*))·M_i, so on domain i the logits are
s_i(α)·M_i·x with s_i peaking at α*_i. The stream is continual: ``--segment`` batches of one domain, then
the next, cycling through ``--domains`` (default four, α* = 0.3, 0.7, 0.5, 0.9), generated lazily (seeded
per batch), so the stream holds nothing.

The loop is the online protocol of :func:`adawise.run_stream` (predict, score, then ``observe``), run here
by hand with per-domain counters instead of a list of per-batch records, so that the resident memory it
reports is the engine's (``run_stream`` keeps every record in ``StreamResult.records``: pass
``--via-run-stream`` to measure that too). Every ``--every`` batches it samples the resident set size
(psutil if installed, else ``VmRSS`` of /proc/self/status), the size of the BO history (observations the
optimizer stores, and GP inputs after merging), GP fits and α. At the end: a memory table and per-domain
α statistics (all batches, and "settled": without the first ``--settle`` batches after each shift).

Usage::

    python benchmarks/bench_long_stream.py                        # 20,000 batches of 8
    python benchmarks/bench_long_stream.py --batches 2000 --every 200 --json runs/long.json
    python benchmarks/bench_long_stream.py --via-run-stream       # through run_stream (records kept)

Measured (20,000 batches of 8, default options, one torch thread, a shared 2-core CPU, RSS from
/proc/self/status; the start value is after importing torch, open_clip and BoTorch):

======================  ==========  ==========  =====================  ===========  ==========
loop                    RSS start   RSS end     growth, second half    BO history   ms/batch
======================  ==========  ==========  =====================  ===========  ==========
engine (this loop)      776.3 MiB   825.8 MiB   +0.8 MiB               8 (max 8)    1.07
run_stream (records)    775.7 MiB   856.4 MiB   +16.2 MiB (records)    8 (max 8)    1.34
======================  ==========  ==========  =====================  ===========  ==========

RSS rises by about 48 MiB early on, once (about 10 MiB over the first batches, 38 MiB at the first GP
hyperparameter fit, when BoTorch's fitting code runs for the first time); after that the engine stays
flat (0.8 MiB over the last 10,000 batches). Through ``run_stream`` the
growth is the list of per-batch records it returns (about 1.6 KiB a batch). α per domain, settled
(mean ± std, share within 0.05 of α*): α* 0.3 -> 0.307 ± 0.015 (1.00), 0.7 -> 0.695 ± 0.012 (1.00),
0.5 -> 0.498 ± 0.006 (1.00), 0.9 -> 0.903 ± 0.013 (1.00); 1.53 forward passes per batch, 41 GP fits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from streams.base import Batch, Stream

DEFAULT_ALPHAS = (0.3, 0.7, 0.5, 0.9)


# ----------------------------------------------------------------------------- the tiny world


def block_pair(alpha_stars: Sequence[float], dim: int = 8, classes: int = 10, k: float = 8.0,
               seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(zero-shot, fine-tuned) two-layer linear models; on inputs in block i, entropy is lowest at α*_i."""
    g = torch.Generator().manual_seed(seed)
    n = len(alpha_stars)
    w1 = {a: torch.zeros(n * dim, n * dim) for a in (0.0, 1.0)}
    w2 = {a: torch.zeros(classes, n * dim) for a in (0.0, 1.0)}
    directions = torch.zeros(classes, n * dim)  # M_i side by side: the class each input points to
    for i, star in enumerate(alpha_stars):
        if not 0.0 < star < 1.0:
            raise ValueError(f"alpha* must be in (0, 1), got {star}")
        m = torch.randn(classes, dim, generator=g) / dim**0.5
        mirror = star < 0.5  # the construction peaks at a >= 0.5; swap the endpoints' roles below it
        a = 1.0 - star if mirror else star
        block = slice(i * dim, (i + 1) * dim)
        directions[:, block] = m
        lo, hi = (1.0, 0.0) if mirror else (0.0, 1.0)  # which endpoint holds the k·I end of layer 1
        w1[hi][block, block] = k * torch.eye(dim)
        w2[lo][:, block] = m
        w2[hi][:, block] = (1.0 - 1.0 / (2.0 * a)) * m

    def net(end: float) -> nn.Module:
        model = nn.Sequential(nn.Linear(n * dim, n * dim, bias=False), nn.Linear(n * dim, classes, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(w1[end])
            model[1].weight.copy_(w2[end])
        return model.eval()

    zeroshot, finetuned = net(0.0), net(1.0)
    zeroshot.class_directions = directions  # read by BlockStream for its labels; not a weight
    return zeroshot, finetuned


class BlockStream(Stream):
    """Continual stream: ``segment`` batches per domain, domains in turn; batch ``b`` is seeded by (seed, b).

    Images of domain i are Gaussian in block i (zero elsewhere); the label is the class the models point
    to there (the argmax of M_i·x, the same for every α > 0) with ``label_noise`` of them replaced.
    """

    def __init__(self, pair: tuple[nn.Module, nn.Module], alpha_stars: Sequence[float], batches: int,
                 batch_size: int = 8, segment: int = 500, dim: int = 8, seed: int = 0,
                 label_noise: float = 0.2) -> None:
        super().__init__()
        self.alpha_stars, self.batches, self.batch_size = tuple(alpha_stars), int(batches), int(batch_size)
        self.segment, self.dim, self.seed, self.label_noise = int(segment), int(dim), int(seed), float(label_noise)
        self._head = pair[0].class_directions  # [C, n * dim]
        self.num_classes = self._head.shape[0]

    def domain_of(self, b: int) -> int:
        return (b // self.segment) % len(self.alpha_stars)

    def name(self, i: int) -> str:
        return f"d{i}(a*={self.alpha_stars[i]:g})"

    def __len__(self) -> int:
        return self.batches

    @property
    def domains(self) -> list[str]:
        used = sorted({self.domain_of(b) for b in range(0, self.batches, self.segment)})
        return [self.name(i) for i in used]

    def __iter__(self) -> Iterator[Batch]:
        n, d = len(self.alpha_stars), self.dim
        for b in range(self.batches):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
            i = self.domain_of(b)
            x = torch.zeros(self.batch_size, n * d)
            x[:, i * d:(i + 1) * d] = torch.randn(self.batch_size, d, generator=g)
            labels = (x @ self._head.T).argmax(-1)
            flip = torch.rand(self.batch_size, generator=g) < self.label_noise
            labels[flip] = torch.randint(0, self.num_classes, (int(flip.sum()),), generator=g)
            yield Batch(x, labels, self.name(i), b)


class MonitoredStream(BlockStream):
    """A :class:`BlockStream` that calls ``after(index)`` once the loop is done with a batch (when it asks
    for the next one, or at the end), to watch a run of :func:`adawise.run_stream` from the inside."""

    def __init__(self, *args: Any, after: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after = after

    def __iter__(self) -> Iterator[Batch]:
        last = None
        for batch in super().__iter__():
            if last is not None:
                self.after(last)
            yield batch
            last = batch.index
        if last is not None:
            self.after(last)


# ----------------------------------------------------------------------------- measurement


def rss_mb() -> float:
    """Resident set size of this process in MiB (psutil, else /proc/self/status)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return math.nan


def history(engine: nn.Module) -> dict[str, int]:
    """Size of AdaWiSE's BO history: stored observations and GP inputs (after merging near duplicates)."""
    bo = engine.bo
    return {"observations": len(bo._s.obs), "gp_inputs": int(bo.data()[0].numel()), "gp_fits": bo.n_fits}


def _alpha_stats(alphas: list[float], star: float) -> dict[str, float]:
    if not alphas:
        return {}
    return {
        "batches": len(alphas),
        "mean": statistics.fmean(alphas),
        "std": statistics.pstdev(alphas),
        "median": statistics.median(alphas),
        "within_0.05": sum(abs(a - star) <= 0.05 for a in alphas) / len(alphas),
        "within_0.10": sum(abs(a - star) <= 0.10 for a in alphas) / len(alphas),
    }


def run(batches: int = 20_000, batch_size: int = 8, segment: int = 500, every: int = 1000,
        alpha_stars: Sequence[float] = DEFAULT_ALPHAS, settle: int = 10, preset: str = "fast", seed: int = 0,
        via_run_stream: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run AdaWiSE over the long stream; returns samples (memory, history, α over time) and α per domain."""
    import adawise

    torch.manual_seed(seed)
    pair = block_pair(alpha_stars, seed=seed)
    stream = BlockStream(pair, alpha_stars, batches, batch_size=batch_size, segment=segment, seed=seed)
    engine = adawise.AdaWiSE(*pair, preset=preset, seed=seed)
    samples: list[dict[str, Any]] = []
    per_domain: dict[int, dict[str, list[float]]] = {i: {"all": [], "settled": []} for i in range(len(alpha_stars))}
    counts = {"n": 0, "correct": 0, "passes": 0.0, "nonfinite": 0}
    started = time.perf_counter()

    def sample(b: int) -> None:
        samples.append({"batch": b, "rss_mb": rss_mb(), **history(engine), "alpha": engine.alpha,
                        "seconds": time.perf_counter() - started})
        if progress:
            s = samples[-1]
            print(f"  batch {b:6d}  RSS {s['rss_mb']:7.1f} MiB  history {s['observations']:3d} obs "
                  f"/ {s['gp_inputs']:3d} inputs  alpha {s['alpha']:.3f}  {s['seconds']:6.1f} s", flush=True)

    def account(b: int, alpha: float, passes: float) -> None:
        i = stream.domain_of(b)
        per_domain[i]["all"].append(alpha)
        if b % segment >= settle:
            per_domain[i]["settled"].append(alpha)
        counts["passes"] += passes
        if (b + 1) % every == 0 or b + 1 == batches:
            sample(b + 1)

    sample(0)
    if via_run_stream:  # the library loop: it also keeps every per-batch record in memory
        stream = MonitoredStream(pair, alpha_stars, batches, batch_size=batch_size, segment=segment, seed=seed,
                                 after=lambda b: account(b, engine.alpha, engine.info["forward_passes"]))
        result = adawise.run_stream(engine, stream, progress=False, seed=seed)
        counts["n"] = sum(r["n"] for r in result.records)
        counts["correct"] = sum(r["correct"] for r in result.records)
        counts["nonfinite"] = sum(bool(r.get("nonfinite")) for r in result.records)
    else:  # the same protocol by hand: predict (scored before the update), then observe
        engine.eval()
        for batch in stream:
            with torch.no_grad():
                logits = engine(batch.images)
                counts["correct"] += int((logits.argmax(-1) == batch.labels).sum())
                counts["n"] += len(batch.labels)
                engine.observe(batch.images, logits)
            counts["nonfinite"] += bool(engine.info.get("nonfinite"))
            account(batch.index, engine.alpha, engine.info["forward_passes"])
    seconds = time.perf_counter() - started

    alpha = {stream.name(i): {"alpha_star": alpha_stars[i], "all": _alpha_stats(v["all"], alpha_stars[i]),
                              "settled": _alpha_stats(v["settled"], alpha_stars[i])}
             for i, v in per_domain.items() if v["all"]}
    half = [s for s in samples if s["batch"] >= batches // 2] or samples
    return {
        "config": {"batches": batches, "batch_size": batch_size, "segment": segment, "every": every,
                   "alpha_stars": list(alpha_stars), "settle": settle, "preset": preset, "seed": seed,
                   "loop": "run_stream" if via_run_stream else "engine", "torch_threads": torch.get_num_threads(),
                   "rss_source": "psutil" if _has_psutil() else "/proc/self/status"},
        "samples": samples,
        "memory": {"rss_start_mb": samples[0]["rss_mb"], "rss_end_mb": samples[-1]["rss_mb"],
                   "rss_max_mb": max(s["rss_mb"] for s in samples),
                   "rss_growth_second_half_mb": half[-1]["rss_mb"] - half[0]["rss_mb"],
                   "history_max": max(s["observations"] for s in samples),
                   "history_end": samples[-1]["observations"],
                   "gp_inputs_max": max(s["gp_inputs"] for s in samples)},
        "alpha": alpha,
        "accuracy": counts["correct"] / max(counts["n"], 1),
        "passes_per_batch": counts["passes"] / max(batches, 1),
        "nonfinite_batches": counts["nonfinite"],
        "seconds": seconds,
        "ms_per_batch": 1000 * seconds / max(batches, 1),
    }


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def report(res: dict[str, Any]) -> str:
    """Readable tables: memory and history over time, α per domain."""
    c, m = res["config"], res["memory"]
    lines = [f"AdaWiSE ({c['preset']}) over {c['batches']} batches of {c['batch_size']} "
             f"(loop: {c['loop']}, {c['torch_threads']} torch thread(s), RSS from {c['rss_source']})",
             "", f"{'batch':>7} {'RSS MiB':>9} {'history':>8} {'GP inputs':>10} {'GP fits':>8} {'alpha':>6} {'s':>7}"]
    for s in res["samples"]:
        lines.append(f"{s['batch']:7d} {s['rss_mb']:9.1f} {s['observations']:8d} {s['gp_inputs']:10d} "
                     f"{s['gp_fits']:8d} {s['alpha']:6.3f} {s['seconds']:7.1f}")
    lines += ["", f"RSS start {m['rss_start_mb']:.1f} MiB, end {m['rss_end_mb']:.1f} MiB, "
                  f"max {m['rss_max_mb']:.1f} MiB, growth over the second half "
                  f"{m['rss_growth_second_half_mb']:+.1f} MiB; BO history max "
                  f"{m['history_max']} observations (end {m['history_end']}), GP inputs max {m['gp_inputs_max']}",
              f"accuracy {100 * res['accuracy']:.1f} %, {res['passes_per_batch']:.2f} passes/batch, "
              f"{res['ms_per_batch']:.2f} ms/batch, {res['nonfinite_batches']} non-finite batches",
              "", f"alpha per domain (settled: without the first {c['settle']} batches after each shift)",
              f"{'domain':>14} {'a*':>5} {'mean':>6} {'std':>6} {'median':>7} {'|a-a*|<=.05':>12} "
              f"{'settled mean':>13} {'std':>6} {'|a-a*|<=.05':>12}"]
    for name, d in res["alpha"].items():
        a, s = d["all"], d["settled"] or d["all"]
        lines.append(f"{name:>14} {d['alpha_star']:5.2f} {a['mean']:6.3f} {a['std']:6.3f} {a['median']:7.3f} "
                     f"{a['within_0.05']:12.2f} {s['mean']:13.3f} {s['std']:6.3f} {s['within_0.05']:12.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20_000, help="batches in the stream (default 20000)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--segment", type=int, default=500, help="batches per domain visit (default 500)")
    parser.add_argument("--every", type=int, default=1000, help="sample memory every N batches (default 1000)")
    parser.add_argument("--alpha-stars", default=",".join(map(str, DEFAULT_ALPHAS)),
                        help="the entropy-minimising alpha of each domain (default 0.3,0.7,0.5,0.9)")
    parser.add_argument("--settle", type=int, default=10, help="batches after a shift left out of 'settled'")
    parser.add_argument("--preset", default="fast", help="AdaWiSE preset (default fast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--via-run-stream", action="store_true", help="use adawise.run_stream (keeps records)")
    parser.add_argument("--json", help="write the full result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(batches=args.batches, batch_size=args.batch_size, segment=args.segment, every=args.every,
              alpha_stars=[float(a) for a in args.alpha_stars.split(",")], settle=args.settle, preset=args.preset,
              seed=args.seed, via_run_stream=args.via_run_stream, progress=not args.quiet)
    print(report(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"json: {args.json}")
    return res


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
