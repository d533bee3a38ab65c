"""Ablations: adawise-grid, oracle (the labelled upper bound), DaWin, and their shared α sweep."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import adawise
from adawise.core.alpha_engine import AlphaEvaluator
from adawise.core.objectives import entropy, objective_value
from adawise.core.weights import interpolate
from adawise.methods.ablations import DaWin, GridSearch, Oracle, alpha_grid, sweep_stream
from streams.base import concat, from_tensors

D, C = 12, 5


def models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    zs = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, C)).eval()
    ft = copy.deepcopy(zs)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return zs, ft


def fresh(zs: nn.Module, ft: nn.Module, alpha: float) -> nn.Module:
    model = copy.deepcopy(zs)
    model.load_state_dict(interpolate(zs.state_dict(), ft.state_dict(), alpha))
    return model


def two_domain_stream():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, D, generator=g)
    zs, ft = models()
    with torch.no_grad():  # domain "a" is labelled by the fine-tuned model, "b" by the zero-shot one
        ya, yb = ft(x[:48]).argmax(1), zs(x[48:]).argmax(1)
    return concat(from_tensors(x[:48], ya, "a", 16), from_tensors(x[48:], yb, "b", 16))


def test_alpha_grid() -> None:
    assert alpha_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert alpha_grid([0.5, 0.1, 0.5]) == [0.1, 0.5]
    with pytest.raises(ValueError):
        alpha_grid([1.5])
    with pytest.raises(ValueError):
        alpha_grid(1)


@pytest.mark.parametrize("objective", ["entropy", "infomax", "anchored"])
def test_grid_picks_the_objective_minimum(objective: str) -> None:
    zs, ft = models()
    method = GridSearch(zs, ft, objective=objective, grid=11)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(2))
    out = method(x)
    with torch.no_grad():
        anchor = zs(x)
        values = [objective_value(objective, fresh(zs, ft, a)(x), anchor) for a in method.alphas]
    assert method.alpha == method.alphas[min(range(11), key=values.__getitem__)]
    assert method.info["forward_passes"] == 11.0 and method.info["objectives"] == pytest.approx(values, abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(out, fresh(zs, ft, method.alpha)(x), atol=1e-5)


def test_oracle_is_a_labelled_upper_bound() -> None:
    zs, ft = models()
    oracle = adawise.make_method("oracle", zeroshot=zs, finetuned=ft)
    assert oracle.uses_labels and oracle.options()["upper_bound"]
    with pytest.raises(RuntimeError, match="prepare"):
        oracle(torch.randn(4, D))
    stream = two_domain_stream()
    oracle = Oracle(zs, ft, grid=11)
    oracle.prepare(stream)
    assert oracle.table == {"a": 1.0, "b": 0.0}  # each domain's labels come from one endpoint
    oracle.on_domain("b")
    x = torch.randn(8, D)
    with torch.no_grad():
        assert torch.allclose(oracle(x), zs(x), atol=1e-6)
    oracle.reset()  # the table is knowledge, not adaptation state
    assert oracle.alpha == 0.0 and oracle.info["upper_bound"]
    oracle.on_domain("unseen")
    with pytest.raises(KeyError, match="unseen"):
        oracle(x)
    result = adawise.run_stream(Oracle(zs, ft, grid=11), stream, progress=False)
    assert result.accuracy == 1.0 and result.alphas == [1.0] * 3 + [0.0] * 3


def test_one_sweep_serves_grid_and_oracle() -> None:
    zs, ft = models()
    stream = two_domain_stream()
    sweep = sweep_stream(AlphaEvaluator(zs, ft), stream, alpha_grid(11), ["entropy", "anchored"])
    assert sweep.objectives["entropy"].shape == (6, 11) and sweep.correct.shape == (6, 11)
    assert sweep.oracle_alphas() == {"a": 1.0, "b": 0.0} and sweep.oracle_accuracy() == 1.0
    for objective in ("entropy", "anchored"):
        run = adawise.run_stream(GridSearch(zs, ft, objective=objective, grid=11), stream, progress=False)
        assert run.accuracy == pytest.approx(sweep.grid_accuracy(objective))
        assert run.alphas == [sweep.alphas[i] for i in sweep.grid_choice(objective).tolist()]
    oracle = Oracle(zs, ft, sweep=sweep)  # shares the sweep: no second pass over the stream
    oracle.prepare(None)
    assert oracle.table == sweep.oracle_alphas()


def test_dawin_mixes_outputs_per_sample() -> None:
    zs, ft = models()
    method = adawise.make_method("dawin", zeroshot=zs, finetuned=ft)
    assert isinstance(method, DaWin) and method.alpha is None
    x = torch.randn(16, D)
    out = method(x)
    with torch.no_grad():
        lz, lf = zs(x), ft(x)
    hz, hf = entropy(lz), entropy(lf)
    lam = torch.exp(-hf) / (torch.exp(-hz) + torch.exp(-hf))
    p = (1 - lam[:, None]) * lz.softmax(-1) + lam[:, None] * lf.softmax(-1)
    assert torch.allclose(out.exp(), p, atol=1e-5)
    assert method.info["forward_passes"] == 2.0 and method.info["lambda_mean"] == pytest.approx(float(lam.mean()))
    bad = x.clone()
    bad[0] = math.nan
    assert method(bad).shape == (16, C)


def test_registered_names() -> None:
    zs, ft = models()
    names = adawise.registered_methods()
    for name in ("adawise", "adawise-infomax", "adawise-anchored", "adawise-grid", "oracle", "dawin"):
        assert name in names
        method = adawise.make_method(name, zeroshot=zs, finetuned=ft)
        assert method.name == name
        if name != "oracle":
            assert method(torch.randn(4, D)).shape == (4, C)
