"""MultiStreamAdaWiSE: per-stream search state over one shared engine, exactly a separate AdaWiSE per stream."""

from __future__ import annotations

import copy

import pytest
import torch

from adawise.evaluation.multistream import MultiStreamAdaWiSE, deep_nbytes
from adawise.methods.adawise import AdaWiSE

#: cheap AdaWiSE options for tests (fast preset, a small acquisition grid)
OPTS = dict(grid_size=41)


def _batches(seed: int, n: int = 4, size: int = 6, shift: float = 0.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 3, 32, 32, generator=gen) * (1 - shift) + shift * (k % 2)).clamp(0, 1)
            for k in range(n)]


def _linear_pair(dim: int = 8, classes: int = 4) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two linear classifiers: the zero-shot one is confident on features [0, dim/2), the fine-tuned
    one on [dim/2, dim), so a stream living on either half prefers a different α."""
    gen = torch.Generator().manual_seed(0)
    zs, ft = torch.nn.Linear(dim, classes), torch.nn.Linear(dim, classes)
    with torch.no_grad():
        half = dim // 2
        for model, lo in ((zs, 0), (ft, half)):
            model.weight.zero_()
            model.bias.zero_()
            model.weight[:, lo:lo + half] = 3 * torch.randn(classes, half, generator=gen)
    return zs.eval(), ft.eval()


def _features(seed: int, half: int, n: int = 4, size: int = 8, dim: int = 8) -> list[torch.Tensor]:
    """Batches whose mass sits on one half of the features (plus a little of the other)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = 0.2 * torch.randn(size, dim, generator=gen)
        x[:, half * dim // 2:(half + 1) * dim // 2] += torch.randn(size, dim // 2, generator=gen)
        out.append(x)
    return out


def _alone(zs, ft, batches):
    engine = AdaWiSE(zs, ft, **OPTS)
    logits, alphas, evaluated = [], [], []
    for b in batches:
        logits.append(engine(b))
        alphas.append(engine.alpha)
        evaluated.append(engine.info["alphas"])
    return logits, alphas, evaluated


def test_one_stream_equals_plain_adawise(tiny_pair):
    zs, ft = tiny_pair
    batches = _batches(0)
    ref_logits, ref_alphas, _ = _alone(zs, ft, batches)
    server = MultiStreamAdaWiSE(zs, ft, **OPTS)
    for b, ref, a in zip(batches, ref_logits, ref_alphas, strict=True):
        out = server("only", b)
        assert torch.equal(out, ref)
        assert server.alpha("only") == a
    assert server.streams() == ["only"]


def test_interleaved_streams_equal_separate_runs():
    zs, ft = _linear_pair()
    a_batches, b_batches = _features(1, half=0, n=6), _features(2, half=1, n=6)
    ref_a = _alone(zs, ft, a_batches)
    ref_b = _alone(zs, ft, b_batches)
    server = MultiStreamAdaWiSE(zs, ft, **OPTS)
    got = {"a": ([], [], []), "b": ([], [], [])}
    for xa, xb in zip(a_batches, b_batches, strict=True):
        for sid, x in (("a", xa), ("b", xb)):
            got[sid][0].append(server(sid, x))
            got[sid][1].append(server.alpha(sid))
            got[sid][2].append(server.info(sid)["alphas"])
    for sid, ref in (("a", ref_a), ("b", ref_b)):
        assert got[sid][1] == ref[1], sid
        assert got[sid][2] == ref[2], sid  # every evaluated α: the BO history was the stream's own
        for out, expected in zip(got[sid][0], ref[0], strict=True):
            assert torch.equal(out, expected)
    assert ref_a[1][-1] < 0.5 < ref_b[1][-1]  # the two streams really took different α paths


def test_reset_one_stream_and_view_for_run_stream(tiny_pair):
    from adawise.evaluation.loop import run_stream
    from streams.base import from_tensors

    zs, ft = tiny_pair
    server = MultiStreamAdaWiSE(zs, ft, **OPTS)
    batches = _batches(3, n=2)
    first = server("x", batches[0])
    server("x", batches[1])
    server("y", batches[0])
    server.reset("x")
    assert server.streams() == ["y"]
    assert torch.equal(server("x", batches[0]), first)  # exact initial state again

    images = torch.cat(batches)
    stream = from_tensors(images, torch.zeros(len(images), dtype=torch.long), batch_size=6, domain="d")
    result = run_stream(server.stream("z"), stream, progress=False)
    assert result.alphas == _alone(zs, ft, batches)[1]
    assert server.num_streams == 3


def test_state_save_and_load(tiny_pair):
    zs, ft = tiny_pair
    batches = _batches(4, n=3)
    server = MultiStreamAdaWiSE(zs, ft, **OPTS)
    server("s", batches[0])
    saved = server.state("s")
    after = server("s", batches[1])
    server.load_state("s", saved)
    assert torch.equal(server("s", batches[1]), after)


def test_memory_per_stream_is_state_not_model(tiny_pair):
    zs, ft = tiny_pair
    server = MultiStreamAdaWiSE(zs, ft, **OPTS)
    engine_bytes = server.engine_bytes()
    model_bytes = sum(t.nbytes for t in ft.state_dict().values())
    assert engine_bytes >= model_bytes * 0.99  # the live model (+ the masters unless shared with the endpoints)
    for k in range(8):
        for b in _batches(10 + k, n=2):
            server(f"s{k}", b)
    per_stream = [server.state_bytes(f"s{k}") for k in range(8)]
    assert max(per_stream) < 64 * 1024  # kilobytes: α, BO history, RNG state
    assert max(per_stream) < model_bytes / 20
    assert server.state_bytes() == sum(per_stream)
    assert server.engine_bytes() == engine_bytes  # the weights exist once, however many streams


def test_deep_nbytes_counts_tensors_once():
    t = torch.zeros(1000)
    obj = {"a": t, "b": [t, t], "c": copy.deepcopy(t)}
    assert 8000 <= deep_nbytes(obj) < 8000 + 2000


@pytest.mark.parametrize("preset", ["faithful"])
def test_faithful_preset_interleaved(preset):
    zs, ft = _linear_pair()
    a_batches, b_batches = _features(5, half=0, n=3), _features(6, half=1, n=3)
    opts = dict(preset=preset, grid_size=41, search_evals=4)
    ref = {}
    for sid, bs in (("a", a_batches), ("b", b_batches)):
        engine = AdaWiSE(zs, ft, **opts)
        ref[sid] = [(engine(b), engine.alpha)[1] for b in bs]
    assert ref["a"] != ref["b"]
    server = MultiStreamAdaWiSE(zs, ft, **opts)
    got = {"a": [], "b": []}
    for xa, xb in zip(a_batches, b_batches, strict=True):
        server("a", xa)
        got["a"].append(server.alpha("a"))
        server("b", xb)
        got["b"].append(server.alpha("b"))
    assert got == ref
