"""The fast paths: shared masters, the bf16 merge (cast on store / staged chunks), no reallocation,
CUDA graphs (CPU fallback here; capture, replay and capture failure on CUDA), the probe back-off,
and the step benchmark's JSON."""

from __future__ import annotations

import copy
import importlib
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from adawise.core import weights as weights_mod
from adawise.core.alpha_engine import AlphaEvaluator
from adawise.core.weights import WeightSpace, interpolate
from adawise.methods.adawise import AdaWiSE

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    zs = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 5))
    ft = copy.deepcopy(zs)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return zs.eval(), ft.eval()


def _in_flat(tensor: torch.Tensor, flat: torch.Tensor) -> bool:
    lo = flat.data_ptr()
    return lo <= tensor.data_ptr() < lo + flat.nbytes


def _fresh(zs: nn.Module, ft: nn.Module, alpha: float) -> nn.Module:
    model = copy.deepcopy(zs)
    model.load_state_dict(interpolate(zs.state_dict(), ft.state_dict(), alpha))
    return model


# ------------------------------------------------------------------------------------ shared masters
def test_shared_masters_are_the_endpoints_storage_and_change_nothing_they_compute(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    zs.train()  # its mode and requires_grad must survive
    before = [copy.deepcopy(m.state_dict()) for m in (zs, ft)]
    params = [list(m.parameters()) for m in (zs, ft)]
    with torch.no_grad():
        outputs = [zs.eval()(images), ft(images)]
    zs.train()
    live = copy.deepcopy(ft)
    ws = WeightSpace(live, zs.state_dict(), ft.state_dict(), share=(zs, ft))
    assert ws.shared == (True, True) and ws.master_bytes == 0
    (group,) = ws.groups
    for m, flat, sd, ps in zip((zs, ft), (group.master0, group.master1), before, params, strict=True):
        assert list(m.parameters()) == ps  # the same Parameter objects, now views into the master
        for name, t in m.state_dict(keep_vars=True).items():
            assert torch.equal(t, sd[name]) and t.dtype == sd[name].dtype, name
            if t.is_floating_point():
                assert _in_flat(t, flat), name
    assert zs.training and all(p.requires_grad for p in zs.parameters())
    with torch.no_grad():
        assert torch.equal(zs.eval()(images), outputs[0]) and torch.equal(ft(images), outputs[1])
        for alpha in (0.0, 1.0, 0.3):
            ws.set_alpha(alpha)
            ref = interpolate(before[0], before[1], alpha)
            for k, v in live.state_dict().items():
                assert torch.equal(v, ref[k]), (alpha, k)


def test_a_second_space_reuses_the_flat_masters() -> None:
    zs, ft = _pair()
    first = AlphaEvaluator(zs, ft)
    ptrs = [p.data_ptr() for p in zs.parameters()]
    second = AlphaEvaluator(zs, ft)
    for a, b in zip(first.space.groups, second.space.groups, strict=True):
        assert a.master0.data_ptr() == b.master0.data_ptr() and a.master1.data_ptr() == b.master1.data_ptr()
    assert [p.data_ptr() for p in zs.parameters()] == ptrs  # not rebound a second time
    x = torch.randn(4, 6)
    with torch.no_grad():
        for alpha in (0.2, 0.7):
            torch.testing.assert_close(second.logits(alpha, x), _fresh(zs, ft, alpha)(x), rtol=0, atol=1e-6)


def test_endpoint_passes_run_the_endpoints_themselves_and_compute_what_a_merge_would(tiny_pair, images) -> None:
    """At α = 0 and 1 the evaluator runs the endpoint module (its weights are the masters): no merge, the
    live model keeps its α, and the logits are bit for bit those of the live model merged to that α."""
    zs, ft = tiny_pair
    zs.train()  # a user's mode survives the pass
    ev = AlphaEvaluator(zs, ft)
    with torch.no_grad():
        ev.logits(0.4, images)
        merges = ev.merges
        direct = {a: ev.logits(a, images) for a in (0.0, 1.0)}
        assert ev.merges == merges and ev.space.alpha == 0.4 and zs.training
        for a in (0.0, 1.0):
            ev.space.set_alpha(a)
            assert torch.equal(direct[a], ev.model(images)), a
    private = AlphaEvaluator(zs, ft, share_masters=False)  # masters are copies: the live model is merged
    assert private._endpoint(0.0) is None and private._endpoint(1.0) is None and ev._endpoint(0.5) is None


def test_endpoints_that_do_not_qualify_get_private_copies() -> None:
    zs, ft = _pair()
    ft64 = copy.deepcopy(ft).double()  # another dtype than the masters
    ptrs = [p.data_ptr() for p in ft64.parameters()]
    live = copy.deepcopy(zs)
    ws = WeightSpace(live, zs.state_dict(), ft64.state_dict(), share=(zs, ft64))
    assert ws.shared == (True, False)
    assert [p.data_ptr() for p in ft64.parameters()] == ptrs
    assert ws.master_bytes == ws.groups[0].master1.nbytes
    # a state dict that is not the module's own state: never shared
    other = {k: v.clone() for k, v in zs.state_dict().items()}
    ws2 = WeightSpace(copy.deepcopy(zs), other, ft.state_dict(), share=(zs, None))
    assert ws2.shared == (False, False)


def test_endpoint_ties_the_live_model_lacks_are_not_shared() -> None:
    class Pair(nn.Module):
        def __init__(self, tie: bool) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
            if tie:
                self.b.weight = self.a.weight

    torch.manual_seed(0)
    tied, live = Pair(True), Pair(False)
    sd0 = tied.state_dict()
    sd1 = {k: v + 1.0 for k, v in sd0.items()}
    ws = WeightSpace(live, sd0, sd1, share=(tied, None))
    assert ws.shared == (False, False)
    ws.set_alpha(0.5)
    assert torch.equal(live.a.weight, live.b.weight)
    torch.testing.assert_close(live.a.weight, sd0["a.weight"] + 0.5)
    assert torch.equal(tied.a.weight, sd0["a.weight"]) and tied.b.weight is tied.a.weight


def test_share_masters_false_leaves_the_endpoints_storage_alone() -> None:
    zs, ft = _pair()
    ptrs = [p.data_ptr() for m in (zs, ft) for p in m.parameters()]
    engine = AdaWiSE(zs, ft, share_masters=False)
    engine(torch.randn(8, 6))
    assert [p.data_ptr() for m in (zs, ft) for p in m.parameters()] == ptrs
    assert engine.evaluator.space.shared == (False, False)
    assert AdaWiSE(zs, ft).evaluator.space.shared == (True, True)  # the default


# ------------------------------------------------------------------------------------ bf16 merge
@pytest.mark.parametrize("staged", [False, True, None])
def test_bf16_live_merge_is_exact_without_a_full_size_scratch(staged: bool | None) -> None:
    zs, ft = _pair()
    live = copy.deepcopy(zs).to(torch.bfloat16)
    ws = WeightSpace(live, zs.state_dict(), ft.state_dict(), chunk=7, staged=staged)
    staged = staged is not False  # the default stages on a CPU
    (group,) = ws.groups
    assert group.scratch is not None and group.scratch.dtype == torch.float32
    assert group.scratch.numel() == (7 if staged else 0) < group.live.numel()
    for alpha in (0.0, 0.35, 1.0, 0.8):
        ws.set_alpha(alpha)
        ref = interpolate(zs.state_dict(), ft.state_dict(), alpha)
        for k, v in live.state_dict().items():
            assert torch.equal(v, ref[k].to(torch.bfloat16)), (staged, alpha, k)


def test_no_reallocation_across_alphas_and_batches() -> None:
    zs, ft = _pair()
    engine = AdaWiSE(zs, ft)
    ev = engine.evaluator

    def pointers() -> list[int]:
        ptrs = [t.data_ptr() for t in ev.model.state_dict(keep_vars=True).values()]
        for g in ev.space.groups:
            ptrs += [g.live.data_ptr(), g.master0.data_ptr(), g.master1.data_ptr()]
        return ptrs

    before = pointers()
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        engine(torch.randn(32, 6, generator=gen))
        assert pointers() == before
    assert ev.space.master_bytes == 0  # the masters are the endpoints' storage


def test_weightspace_rejects_a_bad_chunk_and_an_impossible_fused_merge(monkeypatch) -> None:
    zs, ft = _pair()
    with pytest.raises(ValueError, match="chunk"):
        WeightSpace(copy.deepcopy(zs), zs.state_dict(), ft.state_dict(), chunk=0)
    monkeypatch.setattr(weights_mod, "_casts_on_store", lambda master, dtype: False)  # e.g. an old device
    with pytest.raises(RuntimeError, match="staged=None"):
        WeightSpace(copy.deepcopy(zs).to(torch.bfloat16), zs.state_dict(), ft.state_dict(), staged=False)
    ws = WeightSpace(copy.deepcopy(zs).to(torch.bfloat16), zs.state_dict(), ft.state_dict())
    assert ws.groups[0].scratch.numel() > 0


# ------------------------------------------------------------------------------------ CUDA graphs
def test_cuda_graph_option_falls_back_to_eager_on_cpu() -> None:
    zs, ft = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no capture is attempted, so nothing to warn about
        ev = AlphaEvaluator(zs, ft, cuda_graphs=True)
        assert ev.cuda_graphs is False and ev.graph_status() == {}
        x = torch.randn(5, 6)
        torch.testing.assert_close(ev.logits(0.4, x), _fresh(zs, ft, 0.4)(x).detach(), rtol=0, atol=1e-6)
    assert AdaWiSE(zs, ft).evaluator.cuda_graphs is False  # default: only on a CUDA device


@cuda
def test_cuda_graph_replay_matches_eager_across_alphas_and_shapes(tiny_pair) -> None:
    zs, ft = (m.cuda() for m in tiny_pair)
    graphed = AlphaEvaluator(zs, ft, amp_dtype=torch.bfloat16)
    eager = AlphaEvaluator(zs, ft, amp_dtype=torch.bfloat16, cuda_graphs=False)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(24, 3, 32, 32, generator=gen, device="cuda")
    for alpha in (0.0, 0.6, 1.0, 0.25):
        for rows in (x, x[::3][:8], x[:5]):
            out = graphed.logits(alpha, rows)
            torch.testing.assert_close(out, eager.logits(alpha, rows), rtol=1e-2, atol=1e-2)
    assert set(graphed.graph_status().values()) == {"graph"} and len(graphed.graph_status()) == 3
    first = graphed.logits(0.3, x)
    second = graphed.logits(0.9, x)  # the same graph, another α: the first output is not overwritten
    assert not torch.equal(first, second)
    torch.testing.assert_close(first, eager.logits(0.3, x), rtol=1e-2, atol=1e-2)


@cuda
def test_cuda_graph_capture_failure_runs_eagerly() -> None:
    class Syncing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = float(x.abs().max())  # a host synchronisation: not capturable
            return self.fc(x) * scale

    torch.manual_seed(0)
    zs = Syncing().cuda()
    ft = copy.deepcopy(zs)
    ev = AlphaEvaluator(zs, ft)
    x = torch.randn(8, 6, device="cuda")
    with pytest.warns(UserWarning, match="capture failed"):
        out = ev.logits(0.5, x)
    assert ev.graph_status() == {"8x6": "eager"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per shape
        torch.testing.assert_close(ev.logits(0.5, x), out)
    with torch.no_grad():
        torch.testing.assert_close(out, zs(x))


@cuda
def test_cuda_merge_casts_on_store_and_allocates_nothing() -> None:
    zs, ft = (m.cuda() for m in _pair())
    ev = AlphaEvaluator(zs, ft)
    ev.move(lambda t: t.to(torch.bfloat16))
    (group,) = ev.space.groups
    assert group.live.dtype == torch.bfloat16 and group.scratch is not None and group.scratch.numel() == 0
    assert ev.space.shared == (True, True)
    ev.space.set_alpha(0.1)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for alpha in (0.3, 0.7):
        ev.space.set_alpha(alpha)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() == before  # not even a temporary
    for alpha in (0.3, 0.7, 1.0):
        ev.space.set_alpha(alpha)
        ref = interpolate(zs.state_dict(), ft.state_dict(), alpha)
        for k, v in ev.model.state_dict().items():
            assert torch.equal(v, ref[k].to(torch.bfloat16)), k


@cuda
def test_cuda_adawise_fast_with_graphs_matches_a_fresh_model() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_adawise import batches, fresh, pair

    zs, ft = (m.cuda() for m in pair(0.7))
    engine = AdaWiSE(zs, ft)
    for x in batches(8, b=64):
        out = engine(x.cuda())
    assert abs(engine.alpha - 0.7) <= 0.05
    assert "graph" in engine.evaluator.graph_status().values()
    with torch.no_grad():
        torch.testing.assert_close(out, fresh(zs, ft, engine.alpha)(x.cuda()), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ probe back-off
def test_probes_back_off_while_they_lose_and_reset_on_a_search() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_adawise import batches, pair

    zs, ft = pair(0.7)
    xs = batches(40, b=64)
    engine = AdaWiSE(zs, ft, probe_backoff=2.0, probe_every=2)
    modes = []
    for x in xs:
        engine(x)
        modes.append(engine.info["mode"])
    fixed = AdaWiSE(zs, ft, probe_every=2)  # both presets: a fixed interval
    fixed_modes = []
    for x in xs:
        fixed(x)
        fixed_modes.append(fixed.info["mode"])
    assert fixed_modes.count("probe") >= 18  # every second warm batch
    assert modes.count("probe") < fixed_modes.count("probe") / 2
    assert engine._s.probe_interval <= 8.0
    # the level moves (64 images: one drift value): a cold search resets the interval
    engine(10 * batches(1, b=64, seed=7)[0])
    assert engine.info["mode"] == "search" and engine._s.probe_interval == 2.0
    with pytest.raises(ValueError, match="probe_backoff"):
        AdaWiSE(zs, ft, probe_backoff=0.5)


def test_probe_every_auto_probes_every_batch_on_cpu_and_every_second_on_cuda(monkeypatch) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_adawise import batches, pair

    zs, ft = pair(0.7)
    xs = batches(12, b=64)
    engine = AdaWiSE(zs, ft)
    assert engine.opts.probe_every == "auto" and engine.probe_every() == 1
    modes = []
    for x in xs:
        engine(x)
        modes.append(engine.info["mode"])
    warm = [m for m in modes if m != "search"]
    assert warm and all(m == "probe" for m in warm)  # CPU: every warm batch probes
    monkeypatch.setattr(engine.evaluator, "device", torch.device("cuda", 0))  # only read by probe_every()
    assert engine.probe_every() == 2
    assert AdaWiSE(zs, ft, probe_every=3).probe_every() == 3
    with pytest.raises(ValueError, match="probe_every"):
        AdaWiSE(zs, ft, probe_every=0)


# ------------------------------------------------------------------------------------ benchmark JSON
def test_bench_step_writes_the_ratio_json(tmp_path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_step")
    out = tmp_path / "step.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--device", "cpu", "--weights", "random", "--domains", "2", "--batches-per-domain", "3",
                    "--repeats", "1", "--faithful-batches", "1", "--batch-size", "16", "--micro-reps", "2",
                    "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    record = json.loads(out.read_text())
    assert set(record["ratio"]) == set(bench.METHODS) and record["ratio"]["finetuned"] == 1.0
    assert {"device", "model", "batch_size", "ms", "peak_mem_mb"} <= set(record)
    assert record["batch_size"] == 16 and record["device"].startswith("cpu")
    fast = record["adawise"]["adawise-fast"]
    assert fast["forward_share"] + fast["merge_share"] + fast["bo_share"] == pytest.approx(1.0, abs=1e-6)
    assert all(v > 0 for v in record["ms"].values())
