"""A long stream in short: about 1,000 batches of a tiny model through AdaWiSE (default preset) on a continual
stream with ten domain shifts. The BO history stays bounded (the optimizer keeps a decaying memory of the
last few batches, never the whole stream), resident memory does not grow from one run to the next, and α
settles on each domain's entropy minimum. The 20,000-batch version is benchmarks/bench_long_stream.py."""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_long_stream.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_long_stream", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_stream_keeps_history_bounded_memory_flat_and_alpha_stable(bench) -> None:
    kw = dict(batches=1000, batch_size=8, segment=100, every=100)
    first = bench.run(**kw)  # warms the process up: imports, the first GP fit, allocator pools
    second = bench.run(**kw)

    # the BO history: bounded by the memory's reach (a few recent batches), whatever the stream's length
    engine_opts = __import__("adawise").methods.adawise.PRESETS["fast"]
    reach = math.floor(math.log(0.05) / math.log(engine_opts["decay"])) + 1  # ages whose weight >= min_weight
    bound = reach * (engine_opts["search_evals"] + 2)  # at most a cold search and a confirmation per batch
    for res in (first, second):
        sizes = [s["observations"] for s in res["samples"]]
        assert max(sizes) <= bound, sizes
        # no drift upwards: a history that grew with the stream would lift the later samples' median (a single
        # sample one observation above the rest is a batch's extra evaluation, not growth: it differs in the
        # last bits between CPU kernel sets)
        later, earlier = sizes[len(sizes) // 2:], [n for n in sizes[: len(sizes) // 2 + 1] if n > 0]
        assert statistics.median(later) <= statistics.median(earlier), sizes
        assert res["memory"]["gp_inputs_max"] <= bound

    # resident memory: a second run of the same length in the same process needs (almost) nothing new
    growth = second["memory"]["rss_end_mb"] - first["memory"]["rss_end_mb"]
    assert growth < 16.0, f"RSS grew by {growth:.1f} MiB over a repeated 1,000-batch run"
    assert second["memory"]["rss_growth_second_half_mb"] < 8.0

    # the runs repeat exactly, and α settles on every domain's entropy minimum
    assert [s["alpha"] for s in first["samples"]] == [s["alpha"] for s in second["samples"]]
    assert first["nonfinite_batches"] == 0 and first["passes_per_batch"] < 3.0
    for name, d in first["alpha"].items():
        settled = d["settled"]
        assert abs(settled["median"] - d["alpha_star"]) <= 0.05, (name, settled)
        assert settled["std"] <= 0.05 and settled["within_0.10"] >= 0.9, (name, settled)
    assert "RSS start" in bench.report(first) and "alpha per domain" in bench.report(first)
