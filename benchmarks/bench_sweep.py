"""Benchmark: scaling out. (1) Wall time of one small sweep of tiny-model runs on a local Ray cluster
with 1 vs 2 workers (each task asks for 1 CPU and runs torch on 1 thread), with the sequential in-process
executor as reference. (2) Memory of :class:`adawise.evaluation.multistream.MultiStreamAdaWiSE` serving 1, 8 and 64
streams: bytes of the per-stream state, process RSS growth, against separate AdaWiSE engines (one model
copy each). Not a test: run it by hand (needs ``pip install 'adawise[ray]'`` for part 1).

    python benchmarks/bench_sweep.py --json runs/bench_sweep.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adawise.apps.sweep import SweepConfig, run_sweep  # noqa: E402

#: a tiny open_clip config (32x32 images), as in the tests
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
#: a larger one for the memory part (so that a model copy is visibly larger than a stream's state)
SMALL = {"embed_dim": 128,
         "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 256, "layers": 6, "head_width": 64},
         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


def _grid(out: Path, runs: int, base_size: int) -> dict[str, Any]:
    return {
        "models": {"tiny": {"kind": "random-clip", "config": TINY, "num_classes": 10, "seed": 0}},
        "streams": {"synth": {"source": "corruptions", "base": "synthetic", "base_size": base_size, "image_size": 32,
                              "num_classes": 10, "domains": ["clean", "gaussian_noise", "fog"], "batch_size": 16,
                              "severity": 3}},
        "methods": [{"name": "adawise", "options": {"preset": "fast"}}],
        "seeds": list(range(runs)),
        "resources": {"num_cpus": 1},
        "out": str(out),
    }


def _warm_workers(ray: Any, n: int) -> None:
    """Start the worker processes and import the stack once, so both timings exclude it."""

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import adawise.apps.sweep  # noqa: F401
        import adawise.methods.adawise  # noqa: F401

        return os.getpid()

    ray.get([warm.remote() for _ in range(n)])


def _usage(result: Any) -> dict[str, Any]:
    """Worker processes used, most runs in flight at once, and CPU seconds per wall second of the runs."""
    spans = [(t["started_at"], t["started_at"] + t["seconds"]) for t in result.tasks.values()]
    overlap = max(sum(a <= s < b for a, b in spans) for s, _ in spans) if spans else 0
    wall = max(b for _, b in spans) - min(a for a, _ in spans) if spans else 0.0
    cpu = sum(t["cpu_seconds"] for t in result.tasks.values())
    return {"worker_pids": len({t["pid"] for t in result.tasks.values()}), "max_in_flight": overlap,
            "cpu_per_wall": cpu / wall if wall else None}


def bench_sweep(runs: int, workers: list[int], tmp: Path, base_size: int) -> list[dict[str, Any]]:
    """Sweep wall time per executor (fresh output folder each time, identical grid)."""
    rows = []
    cfg = SweepConfig.from_dict(_grid(tmp / "local", runs, base_size))
    t0 = time.perf_counter()
    result = run_sweep(cfg, executor="local", progress=False)
    rows.append({"executor": "local (sequential)", "workers": 1, "runs": len(result.executed),
                 "seconds": time.perf_counter() - t0, "ok": result.ok, **_usage(result)})
    reference = result.merged["groups"]
    try:
        import ray
    except ImportError:
        print("ray is not installed: skipping the Ray timings (pip install 'adawise[ray]')")
        return rows
    for n in workers:
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        try:
            _warm_workers(ray, n)
            cfg = SweepConfig.from_dict(_grid(tmp / f"ray{n}", runs, base_size))
            t0 = time.perf_counter()
            result = run_sweep(cfg, executor="ray", progress=False)
            rows.append({"executor": "ray", "workers": n, "runs": len(result.executed),
                         "seconds": time.perf_counter() - t0, "ok": result.ok,
                         "same_results_as_local": result.merged["groups"] == reference, **_usage(result)})
        finally:
            ray.shutdown()
    return rows


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pair() -> tuple[Any, Any]:
    import adawise

    torch.manual_seed(0)
    return adawise.load_pair(SMALL, [f"class {i}" for i in range(10)], pretrained=None, templates=["a {}."])


def _memory_one(count: int, batches: int, batch_size: int, separate: bool) -> dict[str, Any]:
    """One measurement in a fresh process (so memory freed by another measurement cannot be reused)."""
    from adawise.evaluation.multistream import MultiStreamAdaWiSE
    from adawise.methods.adawise import AdaWiSE

    torch.set_num_threads(1)
    zs, ft = _pair()
    size = SMALL["vision_cfg"]["image_size"]
    gen = torch.Generator().manual_seed(0)
    data = [torch.rand(batch_size, 3, size, size, generator=gen) for _ in range(batches)]
    if separate:  # the alternative: one AdaWiSE engine (its own live model) per stream
        warm = AdaWiSE(zs, ft)  # kept alive, so the engines measured below cannot reuse its memory
        for x in data:  # first calls allocate workspaces and import lazily: not per engine
            warm(x)
        gc.collect()
        base = _rss()
        engines = [AdaWiSE(zs, ft) for _ in range(count)]
        for k in range(batches):
            for s, engine in enumerate(engines):
                engine(data[(k + s) % batches])
        gc.collect()
        return {"streams": count, "rss_separate_engines": _rss() - base}
    server = MultiStreamAdaWiSE(zs, ft)
    for x in data:  # first calls allocate workspaces and import lazily: not per stream
        server("warm-up", x)
    server.reset()
    gc.collect()
    base = _rss()
    t0 = time.perf_counter()
    for k in range(batches):
        for s in range(count):
            server(f"stream-{s}", data[(k + s) % batches])
    seconds = time.perf_counter() - t0
    gc.collect()
    grown = _rss() - base
    return {"streams": count, "engine_bytes": server.engine_bytes(), "state_bytes_total": server.state_bytes(),
            "state_bytes_per_stream": server.state_bytes() / count, "rss_streams": grown,
            "rss_per_stream": grown / count, "ms_per_stream_batch": 1e3 * seconds / (count * batches)}


def bench_memory(counts: list[int], batches: int, batch_size: int, separate_max: int) -> dict[str, Any]:
    """Per-stream memory of the multi-stream adapter vs separate engines, each count in a fresh process."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    # a fixed glibc mmap threshold: large tensors are mapped and unmapped, so RSS shows what is held
    # (otherwise freed model-sized blocks stay in the heap and mask the next allocations)
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    rows = []
    try:
        for count in counts:
            with ctx.Pool(1) as pool:
                row = pool.apply(_memory_one, (count, batches, batch_size, False))
            if count <= separate_max:
                with ctx.Pool(1) as pool:
                    row.update(pool.apply(_memory_one, (count, batches, batch_size, True)))
            rows.append(row)
    finally:
        if previous is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
    model_bytes = sum(t.nbytes for t in _pair()[1].state_dict().values())
    return {"model_bytes": model_bytes, "batches_per_stream": batches, "batch_size": batch_size, "rows": rows}


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="runs in the sweep (seeds of one adawise run)")
    parser.add_argument("--workers", default="1,2", help="Ray cluster sizes to time")
    parser.add_argument("--base-size", type=int, default=480,
                        help="images per domain of the sweep's stream (3 domains, batches of 16)")
    parser.add_argument("--streams", default="1,8,64", help="stream counts of the memory part")
    parser.add_argument("--batches", type=int, default=3, help="batches per stream in the memory part")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--separate-max", type=int, default=8,
                        help="measure separate engines up to this many streams (each holds 3 model copies)")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "torch": torch.__version__, "platform": platform.platform(),
                                          "load_average_at_start": os.getloadavg()}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        if not args.skip_sweep:
            record["sweep"] = bench_sweep(args.runs, [int(w) for w in args.workers.split(",")], tmp, args.base_size)
            batches = 3 * -(-args.base_size // 16)
            print(f"\nSweep of {args.runs} AdaWiSE runs (tiny random CLIP, {batches} batches of 16 each; "
                  "1 CPU per task)")
            print(f"{'executor':20s} {'workers':>7s} {'runs':>5s} {'seconds':>8s} {'speed-up':>8s} {'in flight':>9s} "
                  f"{'CPU s/s':>7s}  same results")
            base = next((r["seconds"] for r in record["sweep"] if r["executor"] == "ray" and r["workers"] == 1), None)
            for r in record["sweep"]:
                speed = f"{base / r['seconds']:.2f}x" if base and r["executor"] == "ray" else "-"
                print(f"{r['executor']:20s} {r['workers']:7d} {r['runs']:5d} {r['seconds']:8.2f} {speed:>8s} "
                      f"{r['max_in_flight']:9d} {r['cpu_per_wall']:7.2f}  {r.get('same_results_as_local', '-')}")
        if not args.skip_memory:
            counts = [int(s) for s in args.streams.split(",")]
            mem = bench_memory(counts, args.batches, args.batch_size, args.separate_max)
            record["multistream"] = mem
            print(f"\nMulti-stream adapter (model copy {_mb(mem['model_bytes'])} MiB; {args.batches} batches of "
                  f"{args.batch_size} per stream)")
            print(f"{'streams':>7s} {'engine MiB':>10s} {'state/stream KiB':>16s} {'RSS all streams KiB':>19s} "
                  f"{'RSS/stream KiB':>14s} {'separate engines RSS MiB':>24s} {'ms/batch':>8s}")
            for r in mem["rows"]:
                print(f"{r['streams']:7d} {_mb(r['engine_bytes']):>10s} {r['state_bytes_per_stream'] / 1024:16.1f} "
                      f"{r['rss_streams'] / 1024:19.0f} {r['rss_per_stream'] / 1024:14.1f} "
                      f"{_mb(r.get('rss_separate_engines')):>24s} {r['ms_per_stream_batch']:8.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"load average (1 min) at start {record['machine']['load_average_at_start'][0]:.1f}, at end "
          f"{record['machine']['load_average_at_end'][0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
