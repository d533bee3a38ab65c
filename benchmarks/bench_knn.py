"""Benchmark: VRF's k-th nearest-neighbour distance per test batch against a large ZSF index.

VRF: Zhu et al., NeurIPS 2024, "Enhancing Robust Fine-Tuning of Vision-Language Models via Variance
Reduction". At test time every batch needs, per sample, the distance to its k-th nearest neighbour in
the Zero-Shot-Failure set (for ImageNet about 10^5 x 512 features). This measures
:meth:`adawise.ZSFIndex.kth_distance` (flat chunked matmul + running top-k) for one batch of 64 unit
queries against a 100k x 512 index, on the CPU and on CUDA when available, and faiss ``IndexFlatL2``
when faiss is installed. Not a test: run it by hand.

    python benchmarks/bench_knn.py --json runs/bench_knn.json [--markdown runs/bench_knn.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adawise.methods.zsf import ZSFIndex  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import environment  # noqa: E402
from _timing import time_ms as _time  # noqa: E402


def run(n: int, dim: int, batch: int, ks: list[int], devices: list[str], reps: int, warmup: int,
        chunk: int, seed: int) -> dict[str, Any]:
    """Time every (backend, device, k) combination; returns a JSON-friendly record."""
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    queries = F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        if device.type == "cuda" and not torch.cuda.is_available():
            print(f"skipping {dev_name}: CUDA is not available")
            continue
        backends = ["torch"] + (["faiss"] if has_faiss and device.type == "cpu" else [])
        for backend in backends:
            for k in ks:
                idx = ZSFIndex(bank, k=k, chunk_size=chunk, backend=backend)
                q = queries.to(device)
                idx.kth_distance(q)  # moves the index to the device once (cached), builds faiss
                times = _time(lambda idx=idx, q=q: idx.kth_distance(q), device, warmup, reps)
                rows.append({"backend": backend, "device": dev_name, "k": k, "median_ms": statistics.median(times),
                             "min_ms": min(times), "mean_ms": statistics.fmean(times), "reps": reps})
                r = rows[-1]
                print(f"{backend:6s} {dev_name:6s} k={k:<4d} median {r['median_ms']:8.2f} ms  "
                      f"min {r['min_ms']:8.2f} ms  ({n} x {dim} index, batch {batch})", flush=True)
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or
           platform.machine(), "torch_threads": torch.get_num_threads(), "faiss": has_faiss,
           "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           **{k: v for k, v in environment("cpu").items() if k in ("date", "command")}}
    return {"benchmark": "vrf_knn", "index_rows": n, "dim": dim, "batch": batch, "chunk_size": chunk,
            "distance": "squared L2", "env": env, "results": rows}


def markdown(record: dict[str, Any]) -> str:
    """A Markdown table of the record."""
    lines = [f"kNN per batch of {record['batch']} against a {record['index_rows']} x {record['dim']} index "
             f"(torch {record['env']['torch']}, {record['env']['torch_threads']} CPU threads, "
             f"GPU: {record['env']['cuda_device'] or 'none'})", "",
             "| backend | device | k | median ms | min ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['device']} | {r['k']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} |"
              for r in record["results"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="index rows (default 100000)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension (default 512)")
    p.add_argument("--batch", type=int, default=64, help="queries per batch (default 64)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 200], help="neighbour ranks (default 10 200)")
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="devices (cuda skipped when absent)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--chunk", type=int, default=65536, help="index rows per matmul")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the record here")
    p.add_argument("--markdown", help="write a Markdown table here")
    args = p.parse_args(argv)
    record = run(args.n, args.dim, args.batch, args.k, args.devices, args.reps, args.warmup, args.chunk, args.seed)
    print(markdown(record))
    for path, text in ((args.json, json.dumps(record, indent=2)), (args.markdown, markdown(record))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
