"""AdaWiSE: finds a known entropy minimum, returns honest logits, resets exactly, survives bad batches."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import adawise
from adawise.core.objectives import entropy
from adawise.core.weights import interpolate
from adawise.methods.adawise import PRESETS, AdaWiSE

D, C = 16, 10


def pair(alpha_star: float, k: float = 8.0, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Two-layer linear models whose logits are s(α)·M x with s peaking at α* (the entropy minimum).

    Layer 1 goes from 0 to k·I and layer 2 from M to (1 − 1/(2a))·M, so s(α) = kα(1 − α/(2a)) peaks
    at α = a; the models are swapped (α -> 1 − α) for α* < 0.5.
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(C, D, generator=g) / D**0.5
    mirror = alpha_star < 0.5
    a = 1 - alpha_star if mirror else alpha_star

    def net(w1: torch.Tensor, w2: torch.Tensor) -> nn.Module:
        model = nn.Sequential(nn.Linear(D, D, bias=False), nn.Linear(D, C, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(w1)
            model[1].weight.copy_(w2)
        return model

    low, high = net(torch.zeros(D, D), m), net(k * torch.eye(D), (1 - 1 / (2 * a)) * m)
    return (high, low) if mirror else (low, high)


def batches(n: int, b: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, D, generator=g) for _ in range(n)]


def fresh(zs: nn.Module, ft: nn.Module, alpha: float) -> nn.Module:
    model = copy.deepcopy(zs)
    model.load_state_dict(interpolate(zs.state_dict(), ft.state_dict(), alpha))
    return model


def mean_entropy(logits: torch.Tensor) -> float:
    return float(entropy(logits).mean())


@pytest.mark.parametrize("alpha_star", [0.7, 0.3])
def test_finds_the_entropy_minimum(alpha_star: float) -> None:
    zs, ft = pair(alpha_star)
    engine = adawise.AdaWiSE(zs, ft)
    for x in batches(12):
        engine(x)
    assert abs(engine.alpha - alpha_star) <= 0.05


@pytest.mark.parametrize("preset", ["fast", "faithful"])
def test_returned_logits_are_a_fresh_forward_at_alpha(preset: str) -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft, preset=preset)
    for x in batches(6 if preset == "fast" else 2):
        out = engine(x)
        with torch.no_grad():
            ref = fresh(zs, ft, engine.alpha)(x)
        assert torch.allclose(out, ref, atol=1e-5)
        assert engine.alpha in engine.info["alphas"]
        i = engine.info["alphas"].index(engine.alpha)
        assert engine.info["fractions"][i] == 1.0  # the prediction is a full-batch pass


def test_entropy_within_two_percent_of_the_grid_minimum() -> None:
    zs, ft = pair(0.7, seed=3)
    engine = AdaWiSE(zs, ft)
    grid = [fresh(zs, ft, i / 100) for i in range(101)]
    ok, xs = 0, batches(20, seed=4)
    with torch.no_grad():
        for x in xs:
            got = mean_entropy(engine(x))
            ok += got <= 1.02 * min(mean_entropy(m(x)) for m in grid) + 1e-6
    assert ok >= 0.9 * len(xs)


def test_selects_the_lowest_evaluated_objective() -> None:
    zs, ft = pair(0.6)
    for preset in ("fast", "faithful"):
        engine = AdaWiSE(zs, ft, preset=preset)
        engine(batches(1)[0])
        info = engine.info
        full = [v for v, f in zip(info["objectives"], info["fractions"], strict=True) if f == 1.0]
        assert info["objective"] == min(full)
        assert info["forward_passes"] == pytest.approx(sum(info["fractions"]))


def test_faithful_preset_is_a_cold_bo_per_batch() -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft, preset="faithful")
    for x in batches(2):
        engine(x)
        info = engine.info
        assert info["mode"] == "search" and info["forward_passes"] == 10.0
        assert info["alphas"][:3] == [0.0, 0.5, 1.0] and set(info["fractions"]) == {1.0}
    assert engine.bo.n_fits >= 7  # hyperparameters refitted every iteration


def test_fast_preset_is_cheap_on_a_stable_stream() -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft)
    xs = batches(20, b=64)
    passes = []
    for x in xs:
        engine(x)
        passes.append(engine.info["forward_passes"])
    assert engine.info["gp_fits"] == 0  # refits are rare (every 500 observations)
    assert sum(passes[1:]) / len(passes[1:]) <= 1.3  # the full pass at the current α plus probes


def test_reset_reproduces_the_same_alphas_and_ignores_the_global_rng() -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft, preset="fast")
    initial = engine.alpha

    def run() -> list[float]:
        out = []
        for x in batches(8, seed=5):
            engine(x)
            out.append(engine.alpha)
        return out

    torch.manual_seed(0)
    first = run()
    engine.reset()
    assert engine.alpha == initial and engine.bo.data()[0].numel() == 0
    assert engine.info == {"forward_passes": 0.0}
    torch.manual_seed(123)  # a different global seed changes nothing
    assert run() == first


@pytest.mark.parametrize("objective", ["entropy", "infomax", "anchored"])
def test_bad_batches_do_not_crash(objective: str) -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft, objective=objective)
    engine(batches(1)[0])
    x = batches(1, seed=9)[0]
    x[0, 0] = math.nan
    out = engine(x)
    assert engine.info["nonfinite"] and engine.info["dropped_rows"] == 1 and torch.isfinite(out[1:]).all()
    for bad in (torch.zeros(8, D), torch.full((8, D), math.nan), torch.randn(1, D)):
        out = engine(bad)
        assert out.shape == (len(bad), C)
        assert math.isfinite(engine.alpha) and 0.0 <= engine.alpha <= 1.0
    x = batches(1)[0]
    x[3] = math.inf
    assert engine(x).shape == (32, C)
    assert 0.0 <= engine.alpha <= 1.0


def test_constant_objective_keeps_alpha() -> None:
    zs, ft = pair(0.7)
    for preset in ("fast", "faithful"):
        engine = AdaWiSE(zs, ft, preset=preset, init_alpha=0.4)
        engine(torch.zeros(16, D))  # uniform predictions at every α
        assert engine.alpha == 0.4 if preset == "fast" else 0.0 <= engine.alpha <= 1.0
        assert math.isfinite(engine.info["objective"])


def test_the_given_models_are_never_changed() -> None:
    zs, ft = pair(0.7)
    zs.train()
    ft.eval()
    before = [copy.deepcopy(m.state_dict()) for m in (zs, ft)]
    engine = AdaWiSE(zs, ft)
    for x in batches(4):
        engine(x)
    engine.train()
    engine.to(torch.float64)  # rebuilds the live copy, leaves the endpoints alone
    engine(batches(1)[0].double())
    engine.reset()
    for m, sd in zip((zs, ft), before, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, sd[k]) and v.dtype == torch.float32
    assert zs.training and not ft.training
    assert all(p.requires_grad for p in zs.parameters())


def test_one_live_model_updated_in_place() -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft)
    live = engine.evaluator.model
    pointers = [g.live.data_ptr() for g in engine.evaluator.space.groups]
    for x in batches(5):
        engine(x)
    assert engine.evaluator.model is live
    assert [g.live.data_ptr() for g in engine.evaluator.space.groups] == pointers
    assert list(engine.parameters()) == []  # the live copy is not a submodule


def test_info_records_the_cost() -> None:
    zs, ft = pair(0.7)
    engine = AdaWiSE(zs, ft, objective="anchored")
    for x in batches(3, b=64):
        engine(x)
        info = engine.info
        for key in ("alphas", "objectives", "fractions", "forward_passes", "seconds", "seconds_forward",
                    "seconds_merge", "seconds_bo", "nonfinite", "mode", "center", "merges"):
            assert key in info
        assert len(info["alphas"]) == len(info["objectives"]) == len(info["fractions"])
        assert info["alphas"][0] == 0.0 and info["fractions"][0] == 1.0  # the anchor pass
        assert info["seconds"] == pytest.approx(
            info["seconds_forward"] + info["seconds_merge"] + info["seconds_bo"], abs=1e-9)
        assert any(f == 0.25 for f in info["fractions"]) or info["mode"] in ("search", "track")


def test_options_presets_and_registry() -> None:
    zs, ft = pair(0.7)
    assert set(PRESETS) == {"fast", "faithful"} and set(PRESETS["fast"]) == set(PRESETS["faithful"])
    engine = AdaWiSE(zs, ft)
    assert engine.options()["preset"] == "fast" and engine.options()["objective"] == "entropy"
    with pytest.raises(TypeError, match="unknown options"):
        AdaWiSE(zs, ft, sub_bach=8)
    with pytest.raises(ValueError, match="preset"):
        AdaWiSE(zs, ft, preset="quick")
    with pytest.raises(ValueError, match="objective"):
        AdaWiSE(zs, ft, objective="confidence")
    for name, objective in (("adawise", "entropy"), ("adawise-infomax", "infomax"),
                            ("adawise-anchored", "anchored")):
        method = adawise.make_method(name, zeroshot=zs, finetuned=ft)
        assert isinstance(method, AdaWiSE) and method.objective == objective and method.name == name
        assert method.adapts and not method.uses_labels
    with pytest.raises(ValueError, match="fixes objective"):
        adawise.make_method("adawise-infomax", zeroshot=zs, finetuned=ft, objective="entropy")
    assert adawise.AdaWiSE is AdaWiSE


def test_drift_triggers_a_new_search() -> None:
    zs_a, ft_a = pair(0.7)
    engine = AdaWiSE(zs_a, ft_a, drift_rows=32)  # every batch of 32 is one value of the detector
    for x in batches(6):
        engine(x)
    engine(10 * batches(1, seed=7)[0])  # a much more confident batch: the level moves
    assert engine.info["mode"] == "search" and engine.info["reason"] == "drift"
    engine = AdaWiSE(zs_a, ft_a)  # the default pools 64 images: two batches of 32 make one value
    for x in batches(6):
        engine(x)
    reasons = []
    for x in batches(2, seed=7):
        engine(10 * x)
        reasons.append(engine.info["reason"])
    assert reasons == [None, "drift"]
    engine.on_domain("next")  # off by default
    engine(batches(1, seed=8)[0])
    assert engine.info["reason"] != "domain"
    engine = AdaWiSE(zs_a, ft_a, search_on_domain=True)
    engine(batches(1)[0])
    engine.on_domain("next")
    engine(batches(1, seed=8)[0])
    assert engine.info["reason"] == "domain"


def test_runs_in_the_online_loop() -> None:
    from streams.base import concat, from_tensors

    zs, ft = pair(0.7)
    xs = torch.cat(batches(4))
    labels = torch.randint(0, C, (len(xs),), generator=torch.Generator().manual_seed(0))
    stream = concat(from_tensors(xs[:64], labels[:64], "a", 32), from_tensors(xs[64:], labels[64:], "b", 32))
    result = adawise.run_stream(adawise.make_method("adawise", zeroshot=zs, finetuned=ft), stream, progress=False)
    assert len(result.alphas) == 4 and all(0.0 <= a <= 1.0 for a in result.alphas)
    assert all("seconds_bo" in r and "forward_passes" in r for r in result.records)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast() -> None:
    zs, ft = (m.cuda() for m in pair(0.7))
    engine = AdaWiSE(zs, ft, amp_dtype=torch.bfloat16)
    live = engine.evaluator.model
    for x in batches(4):
        out = engine(x.cuda())
        assert out.device.type == "cuda" and out.dtype == torch.bfloat16
    assert engine.evaluator.model is live and abs(engine.alpha - 0.7) <= 0.05
    moved = AdaWiSE(*pair(0.7)).to("cuda")  # built on the CPU, rebuilt once on the GPU
    assert moved.evaluator.device.type == "cuda" and moved._device_tag.device.type == "cuda"
    x = batches(1)[0]
    out = moved(x)  # a CPU batch is moved to the live model
    zs, ft = pair(0.7)
    with torch.no_grad():
        assert torch.allclose(out.cpu(), fresh(zs, ft, moved.alpha)(x), atol=1e-4)


def test_options_are_a_frozen_typed_config_checked_at_construction() -> None:
    """An unknown, ill-typed or out-of-range option fails at construction naming itself and what is valid;
    the header records the same options as the untyped dicts of earlier versions."""
    import dataclasses

    from adawise.errors import InputTypeError, UsageError
    from adawise.methods.adawise_config import AdaWiSEConfig

    zs, ft = pair(0.7)
    with pytest.raises(InputTypeError, match=r"unknown options \['probe_evry'\]; known: .*probe_every"):
        AdaWiSE(zs, ft, probe_evry=2)
    with pytest.raises(InputTypeError, match=r"sub_batch='16': must be None or an integer >= 1"):
        AdaWiSE(zs, ft, sub_batch="16")
    with pytest.raises(InputTypeError, match=r"track=1: must be True or False"):
        AdaWiSE(zs, ft, track=1)
    with pytest.raises(UsageError, match=r"refit='sometimes': must be 'every', 'never' or an integer >= 1"):
        AdaWiSE(zs, ft, refit="sometimes")
    with pytest.raises(UsageError, match=r"posterior='exact': must be one of 'botorch', 'closed_form'"):
        AdaWiSE(zs, ft, posterior="exact")
    with pytest.raises(UsageError, match=r"probe_acquisitions=\('logei', 'pi'\): must be a non-empty sequence of "):
        AdaWiSE(zs, ft, probe_acquisitions=("logei", "pi"))
    cfg = AdaWiSE(zs, ft, probe_every=3).opts
    assert isinstance(cfg, AdaWiSEConfig) and cfg.probe_every == 3 and cfg["probe_every"] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.probe_every = 4  # type: ignore[misc]
    # the log header's options: the same keys and values as the earlier dict presets (config hashes unchanged)
    old_fast = {"init_alpha": 0.5, "grid_size": 201, "acquisition": "logei", "acq_optimizer": "grid",
                "probe_every": "auto", "probe_backoff": 1.0, "probe_every_max": 8, "ucb_beta": 9.0,
                "min_distance": 0.01, "fit_maxiter": None, "window": 8, "search_every": None,
                "search_on_domain": False, "min_fit_points": 3, "noise": "online", "window_rows": 128,
                "window_stride": 8.0, "window_fill": 32, "window_weight": 3.0, "window_divergence": "kl",
                "window_restart": True, "mix_threshold": None, "mix_cap": None, "track": True,
                "init_design": [0.0, 1.0], "search_evals": 6, "search_on": "full", "sub_batch": 16, "probe_evals": 1,
                "probe_acquisitions": ["logei", "ucb"], "probe_min_ei": 0.0, "switch_margin": 2e-3, "drift_z": 4.0,
                "drift_min_rel": 0.05, "drift_beta": 0.2, "drift_warmup": 1, "search_on_jump": 0.2,
                "memory": "decay", "decay": 0.7, "refit": 500, "posterior": "closed_form", "incumbent": "model"}
    options = AdaWiSE(zs, ft).options()
    # drift_rows came later (the detector pools small batches): it changed results, so the hashes too
    assert {k: options[k] for k in old_fast} == old_fast and set(options) == set(old_fast) | {
        "preset", "objective", "seed", "amp_dtype", "drift_rows"} and options["drift_rows"] == 64
    faithful = PRESETS["faithful"].as_dict()
    assert (faithful["track"], faithful["init_design"], faithful["refit"], faithful["noise"]) == (
        False, [0.0, 0.5, 1.0], "every", "fit")
