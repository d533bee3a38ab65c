"""The windowed objective (ProportionWindow) and adawise-windowed, on constructed cases with known answers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import adawise
from adawise.core.objectives import ProportionWindow, entropy
from adawise.evaluation.loop import run_stream
from adawise.methods.adawise import AdaWiSE
from streams.base import ConcatStream, TensorStream

C = 10


def linear(weight: torch.Tensor) -> nn.Module:
    model = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        model.weight.copy_(weight)
    return model.eval().requires_grad_(False)


def collapsed_pair() -> tuple[nn.Module, nn.Module]:
    """On images = one-hot class features + noise + a constant feature: a zero-shot model that reads the
    class off the features (right, unsure) and a "fine-tuned" model that has collapsed: it calls every
    image class 0 with probability 0.98, whatever it shows."""
    zs = torch.zeros(C, C + 1)
    zs[:, :C] = 1.5 * torch.eye(C)
    ft = torch.zeros(C, C + 1)
    ft[0, C] = 6.0
    return linear(zs), linear(ft)


def images(labels: torch.Tensor, noise: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.one_hot(labels, C).float() + noise * torch.randn(len(labels), C, generator=g)
    return torch.cat([x, torch.ones(len(labels), 1)], 1)


# ------------------------------------------------------------------------------------------ the window
def test_interpolation_is_exact_for_logits_quadratic_in_alpha():
    g = torch.Generator().manual_seed(0)
    a0, a1, a2 = (torch.randn(5, C, generator=g) for _ in range(3))

    def z(alpha: float) -> torch.Tensor:
        return a0 + alpha * a1 + alpha**2 * a2

    window = ProportionWindow(rows=20)
    window.add(z(0.0), z(0.3), z(1.0), 0.3)
    for alpha in (0.0, 0.1, 0.3, 0.55, 1.0):
        torch.testing.assert_close(window.logits(alpha), z(alpha), atol=1e-5, rtol=1e-5)
    linear_only = ProportionWindow(rows=20)
    linear_only.add(z(0.0), z(0.0), z(1.0), 0.0)  # centre at an endpoint: linear between the endpoints
    torch.testing.assert_close(linear_only.logits(0.4), 0.6 * z(0.0) + 0.4 * z(1.0))


def test_window_keeps_the_last_rows_and_drops_broken_ones():
    window = ProportionWindow(rows=6)
    assert len(window) == 0 and window.penalty(0.7) == 0.0
    for k in range(4):
        z = torch.full((2, C), float(k))
        window.add(z, z, z, 0.5)
    assert len(window) == 6 and torch.equal(window.z0[:, 0], torch.tensor([1.0, 1, 2, 2, 3, 3]))
    bad = torch.zeros(3, C)
    bad[1, 2] = math.nan
    window.add(bad, bad, bad, 0.5)
    assert len(window) == 6 and int(torch.isfinite(window.z0).all(-1).sum()) == 6
    with pytest.raises(ValueError, match="classes"):
        window.add(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), 0.5)


def test_penalty_is_zero_when_the_models_agree_and_grows_with_collapse():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, C, generator=g)
    same = ProportionWindow(rows=40)
    same.add(z, z, z, 0.5)
    assert same.penalty(1.0) == pytest.approx(0.0, abs=1e-6)
    sink = torch.zeros(40, C)
    sink[:, 3] = 9.0  # θ(1) sends every row to class 3
    collapse = ProportionWindow(rows=40)
    collapse.add(z, 0.5 * (z + sink), sink, 0.5)
    values = [collapse.penalty(a) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-6) and all(b > a for a, b in zip(values, values[1:], strict=False))
    half = ProportionWindow(rows=80)  # the same rows in a window half full: the ramp halves the penalty
    half.add(z, 0.5 * (z + sink), sink, 0.5)
    assert half.penalty(1.0) == pytest.approx(0.5 * values[-1], rel=1e-5)


# ------------------------------------------------------------------------------------------ the method
def test_collapsed_fine_tuned_model_is_caught():
    """Entropy follows the collapsed model to α = 1 (10% accuracy); the windowed objective moves to the
    zero-shot end once its window has filled, and keeps the zero-shot model's accuracy."""
    zs, ft = collapsed_pair()
    labels = torch.arange(64 * 40) % C
    x = images(labels)
    results = {}
    for name in ("adawise", "adawise-windowed"):
        method = adawise.make_method(name, zeroshot=zs, finetuned=ft)
        results[name] = run_stream(method, TensorStream(x, labels, "shifted", 64), progress=False)
    assert results["adawise"].accuracy < 0.2 and min(results["adawise"].alphas[1:]) > 0.9
    windowed = results["adawise-windowed"]
    assert max(windowed.alphas[20:]) < 0.2
    assert sum(r["correct"] for r in windowed.records[20:]) / (20 * 64) > 0.9


def test_single_class_window_is_not_taken_for_a_collapse():
    """Every image is of one class and both models say so, the fine-tuned one more confidently: nothing
    has drifted, and the windowed objective keeps the confident end (entropy's answer, α = 1)."""
    w = torch.cat([1.5 * torch.eye(C), torch.zeros(C, 1)], 1)
    zs, ft = linear(w), linear(4.0 * w)
    labels = torch.full((640,), 7)
    method = adawise.make_method("adawise-windowed", zeroshot=zs, finetuned=ft)
    x = images(labels)
    result = run_stream(method, TensorStream(x, labels, "one class", 64), progress=False)
    assert min(result.alphas) >= 0.9  # the confident end, as entropy alone would choose
    with torch.no_grad():  # both models (and every θ(α)) classify alike here
        assert result.accuracy == pytest.approx(float((zs(x).argmax(-1) == labels).float().mean()))


def test_uncertain_rows_are_mixed_with_the_zero_shot_model():
    zs, ft = collapsed_pair()
    x = images(torch.arange(64) % C)
    engine = AdaWiSE(zs, ft, objective="windowed", mix_threshold=0.0, init_alpha=1.0, drift_z=None,
                     search_on_jump=None, probe_evals=0)
    out = engine(x)  # every row is above a threshold of 0: all mixed
    assert engine.info["mixed_rows"] == 64
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(64))  # log-probabilities
    with torch.no_grad():
        la = (1 - engine.alpha) * zs(x) + engine.alpha * ft(x)  # one linear layer: θ(α)'s logits
        pa, p0 = torch.softmax(la, -1), torch.softmax(zs(x), -1)
        lam = torch.sigmoid(entropy(zs(x)) - entropy(la))[:, None]
    torch.testing.assert_close(out.exp(), lam * pa + (1 - lam) * p0, atol=1e-5, rtol=1e-4)
    plain = AdaWiSE(zs, ft, objective="windowed", mix_threshold=1.0)  # nothing above log(C): none mixed
    plain(x)
    assert plain.info["mixed_rows"] == 0


def test_reset_reproduces_every_choice():
    zs, ft = collapsed_pair()
    labels = torch.arange(1280) % C
    x = images(labels, seed=3)
    parts = [TensorStream(x[:640], labels[:640], "a", 32), TensorStream(x[640:] * 0.3, labels[640:], "b", 32)]
    stream = ConcatStream(parts)
    method = adawise.make_method("adawise-windowed", zeroshot=zs, finetuned=ft)
    first = run_stream(method, stream, progress=False)
    assert method.info["window_rows"] > 0
    method.reset()
    assert method.info == {"forward_passes": 0.0} and len(method._s.window) == 0
    torch.manual_seed(99)
    second = run_stream(method, stream, progress=False)
    fresh = run_stream(adawise.make_method("adawise-windowed", zeroshot=zs, finetuned=ft), stream, progress=False)
    assert first.alphas == second.alphas == fresh.alphas
    assert [r["correct"] for r in first.records] == [r["correct"] for r in second.records]
    reset = run_stream(method, stream, setting="reset_each_shift", progress=False)
    assert reset.records[20]["window_rows"] <= 32  # restarted with the new domain (32 fill rows)


@pytest.mark.parametrize("name", ["adawise", "adawise-infomax", "adawise-anchored", "adawise-windowed"])
def test_batch_of_one_end_to_end(name, tmp_path):
    zs, ft = collapsed_pair()
    labels = torch.arange(30) % C
    stream = TensorStream(images(labels, seed=4), labels, "single", 1)
    method = adawise.make_method(name, zeroshot=zs, finetuned=ft)
    result = run_stream(method, stream, log=tmp_path / f"{name}.jsonl", progress=False)
    assert len(result.records) == 30 and all(r["n"] == 1 for r in result.records)
    assert all(a is not None and 0.0 <= a <= 1.0 for a in result.alphas)
    assert (tmp_path / f"{name}.jsonl").read_text().count('"type": "batch"') == 30


def test_windowed_options_are_checked():
    zs, ft = collapsed_pair()
    with pytest.raises(ValueError, match="divergence"):
        AdaWiSE(zs, ft, objective="windowed", window_divergence="cosine")
    with pytest.raises(ValueError, match="mix_threshold"):
        AdaWiSE(zs, ft, objective="windowed", mix_threshold=2.0)
    with pytest.raises(ValueError, match="window_fill"):
        AdaWiSE(zs, ft, objective="windowed", window_fill=0)
    method = adawise.make_method("adawise-windowed", zeroshot=zs, finetuned=ft)
    assert method.objective == "windowed" and method.options()["mix_threshold"] == 0.3
    assert "adawise-windowed" in adawise.registered_methods()


def test_probe_ucb_trade_off_shrinks_with_the_batch_rows():
    """``ucb_rows``: a probe on a batch of 8 rows explores with 8/64 of ``ucb_beta``, a batch of 64 or more
    with all of it; off (plain ``adawise``), every batch gets ``ucb_beta`` and the log header omits it."""
    from adawise.methods.adawise_state import _Batch

    zs, ft = collapsed_pair()
    method = adawise.make_method("adawise-windowed", zeroshot=zs, finetuned=ft)
    assert method.options()["ucb_rows"] == 64

    def batch(n: int) -> _Batch:
        x = images(torch.zeros(n, dtype=torch.long))
        return _Batch(images=x, sub_images=x, fraction=1.0)

    assert method._probe_beta(batch(8)) == pytest.approx(9.0 * 8 / 64)
    assert method._probe_beta(batch(64)) == method._probe_beta(batch(200)) == 9.0
    plain = AdaWiSE(zs, ft)
    assert plain._probe_beta(batch(8)) == 9.0 and "ucb_rows" not in plain.options()
    with pytest.raises(ValueError, match="ucb_rows"):
        AdaWiSE(zs, ft, ucb_rows=0)


def test_class_coverage_scales_the_anchor_down_on_few_classes():
    """The anchor is scaled by exp(H(P_W(0))) / C: 1 on a window covering every class evenly, about 1/C on
    one holding a single class, and the unscaled penalty times that share in between."""
    g = torch.Generator().manual_seed(2)
    sink = torch.zeros(40, C)
    sink[:, 3] = 9.0
    spread = 8.0 * nn.functional.one_hot(torch.arange(40) % C, C).float()  # θ(0): every class, evenly
    one = 8.0 * nn.functional.one_hot(torch.full((40,), 5), C).float()  # θ(0): a single class
    for z0, share in ((spread, 1.0), (one, 1.0 / C)):
        z0 = z0 + 0.01 * torch.randn(40, C, generator=g)
        scaled, unscaled = ProportionWindow(rows=40), ProportionWindow(rows=40, coverage=False)
        for w in (scaled, unscaled):
            w.add(z0, 0.5 * (z0 + sink), sink, 0.5)
        assert scaled.class_coverage() == pytest.approx(share, rel=0.05, abs=0.01)
        assert scaled.penalty(1.0) == pytest.approx(scaled.class_coverage() * unscaled.penalty(1.0), rel=1e-6)
    assert ProportionWindow().class_coverage() == 1.0  # empty


def test_rows_enter_the_window_in_entries_of_window_entry_rows():
    """One row per 8 images, 16 at a time: with batches of 64 the window grows by 16 every second batch
    (after the 32 rows of its fill), so its small passes come half as often; batches smaller than the
    entry enter whole."""
    zs, ft = collapsed_pair()
    labels = torch.arange(64 * 8) % C
    x = images(labels, seed=5)
    opts = {"objective": "windowed", "drift_z": None, "search_on_jump": None}
    engine = AdaWiSE(zs, ft, **opts)
    held = []
    for k in range(8):
        engine(x[64 * k:64 * (k + 1)])
        held.append(engine.info["window_rows"])
    assert held == [32, 32, 48, 48, 64, 64, 80, 80]
    small = AdaWiSE(zs, ft, window_entry=16, **opts)
    held = []
    for k in range(20):
        small(x[4 * k:4 * (k + 1)])
        held.append(small.info["window_rows"])
    assert held == [4] * 8 + [8] * 8 + [12] * 4  # a whole batch of 4 every 8 batches (one row per 8 images)


def test_the_gp_sees_the_batch_term_alone_when_the_window_term_is_exact():
    """With ``window_exact`` the search's observations are the objective less the window's term (relative to
    the centre), so they stay valid as the window changes; without it they hold the whole objective."""
    zs, ft = collapsed_pair()
    x = images(torch.arange(64) % C, seed=6)
    seen = {}
    for exact in (True, False):
        engine = AdaWiSE(zs, ft, objective="windowed", window_exact=exact, window_weight=50.0)
        told = seen[exact] = {}
        observe = engine.bo.observe

        def recording(x_, y_, *args, _told=told, _observe=observe, **kwargs):
            _told.setdefault(round(float(x_), 6), float(y_))
            return _observe(x_, y_, *args, **kwargs)

        engine.bo.observe = recording
        engine(x)  # the first batch: a cold search from the centre 0.5, with α = 0 and 1 on the full batch
        window, centre = engine._s.window, 0.5
    for a in (0.0, 1.0):
        term = window.penalty(a) - window.penalty(centre)
        assert abs(term) > 1e-3  # the window term differs between the αs compared
        assert seen[True][a] == pytest.approx(seen[False][a] - term, abs=1e-9)


def test_the_centre_follows_the_window_term_only_where_the_gp_is_sure_of_the_batch_term():
    """``window_move``: rows entering the window change its term at every α with no pass; the centre then
    steps (by at most 0.1) towards the α where the GP's mean + sd of the batch term plus the new window term
    is lowest, and stays where the GP's batch term says the window's gain is not worth it, or knows nothing."""
    zs, ft = collapsed_pair()
    engine = AdaWiSE(zs, ft, objective="windowed")
    engine(images(torch.arange(64) % C, seed=1))  # fills the window with rows of a collapsed fine-tuned model
    window = engine._s.window
    assert window.penalty(0.3) < window.penalty(0.5) < window.penalty(0.7)  # the window prefers lower α
    engine._s.center = 0.5

    def gp_knows(batch_term) -> None:
        engine.bo.clear()
        for _ in range(3):
            for a in (0.3, 0.4, 0.5, 0.6, 0.7):
                engine.bo.observe(a, batch_term(a))

    gp_knows(lambda a: 0.0)  # a flat batch term around the centre: the window decides
    assert engine._window_move(0.5, ref=1.0) == pytest.approx(0.4)
    gp_knows(lambda a: 20.0 * max(0.5 - a, 0.0))  # the batch term rises steeply below the centre
    assert engine._window_move(0.5, ref=1.0) == 0.5
    engine.bo.clear()  # no observations: no model to move by
    assert engine._window_move(0.5, ref=1.0) == 0.5
    with pytest.raises(ValueError, match="window_move"):
        AdaWiSE(zs, ft, objective="windowed", window_move=1.5)


def test_the_centre_moves_between_passes_only_after_rows_entered_the_window():
    """In the online loop: with ``window_move`` the centre changes on some batches that ran no search and whose
    prediction stayed at the old centre (rows had just entered); without it, never."""
    zs, ft = collapsed_pair()
    labels = torch.arange(64 * 16) % C
    x = images(labels, seed=2)
    quiet_moves = {}
    for move in (0.1, None):
        engine = AdaWiSE(zs, ft, objective="windowed", window_move=move)
        moves, centre = 0, engine._s.center
        for batch in x.split(64):
            rows_before = len(engine._s.window)
            engine(batch)
            info = engine.info
            if info["mode"] in ("track", "probe") and not info["switched"] and info["center"] != centre:
                assert info["window_rows"] != rows_before or rows_before == engine.opts.window_rows
                moves += 1
            centre = info["center"]
        quiet_moves[move] = moves
    assert quiet_moves[0.1] > 0 and quiet_moves[None] == 0


def test_window_start_fill_sets_the_rows_of_a_start_and_a_reset_but_not_of_a_drift_restart():
    """``window_start_fill`` rows fill the window at the first batch and after ``reset()``; a detected drift
    restarts it with ``window_fill`` rows."""
    zs, ft = collapsed_pair()
    labels = torch.arange(64 * 6) % C
    x = images(labels, seed=5)
    engine = AdaWiSE(zs, ft, objective="windowed", window_start_fill=48, drift_z=None, search_on_jump=None)
    engine(x[:64])
    assert engine.info["window_rows"] == 48
    engine(x[64:128])
    engine.reset()
    engine(x[128:192])
    assert engine.info["window_rows"] == 48
    default = AdaWiSE(zs, ft, objective="windowed", drift_z=None, search_on_jump=None)
    default(x[:64])
    assert default.info["window_rows"] == 32
    # a drift restart (forced here: the engine's detector says a new domain) uses window_fill
    drifting = AdaWiSE(zs, ft, objective="windowed", window_start_fill=48, window_fill=24)
    drifting(x[:64])
    rule = type(drifting.drift)

    class AlwaysDrifted(rule):  # type: ignore[misc, valid-type]
        def drifted(self, *args: object, **kwargs: object) -> bool:
            return True

    drifting.drift = AlwaysDrifted(**{f.name: getattr(drifting.drift, f.name)
                                      for f in dataclasses.fields(drifting.drift)})
    drifting(x[64:128])
    assert drifting.info["window_rows"] == 24
    with pytest.raises(ValueError, match="window_start_fill"):
        AdaWiSE(zs, ft, objective="windowed", window_start_fill=0)
