"""interpolate (the pure state-dict lerp) and WeightSpace (in-place flat-buffer lerp into a live model)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adawise.core.weights import StateDictMismatchError, WeightSpace, check_compatible, interpolate


class Toy(nn.Module):
    """Conv + BatchNorm + Linear, with an integer buffer (num_batches_tracked) and a bool buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.register_buffer("flag", torch.tensor([True, False, True]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.fc(h) + self.flag.float().sum()


class Tied(nn.Module):
    """Embedding and output projection sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(tokens).mean(1))


def endpoints(seed: int = 0) -> tuple[dict, dict]:
    """Two Toy state dicts that differ in every floating entry, in the integer and the bool buffer."""
    torch.manual_seed(seed)
    sd0 = {k: v.clone() for k, v in Toy().state_dict().items()}
    sd1 = {}
    for k, v in sd0.items():
        if v.is_floating_point():
            sd1[k] = v + torch.randn_like(v) + 0.5
        elif v.dtype == torch.bool:
            sd1[k] = ~v
        else:
            sd1[k] = v + 7
    sd0["bn.num_batches_tracked"] = torch.tensor(3)
    sd0["bn.running_mean"] = torch.randn(4)
    return sd0, sd1


def clone_sd(sd: dict) -> dict:
    return {k: v.clone() for k, v in sd.items()}


def assert_sd_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- interpolate


def test_interpolate_endpoints_exact() -> None:
    sd0, sd1 = endpoints()
    assert_sd_equal(interpolate(sd0, sd1, 0.0), sd0)
    at1 = interpolate(sd0, sd1, 1.0)
    for k in sd0:
        expected = sd1[k] if sd0[k].is_floating_point() else sd0[k]
        assert torch.equal(at1[k], expected), k


def test_interpolate_half_is_mean() -> None:
    sd0, sd1 = endpoints()
    mid = interpolate(sd0, sd1, 0.5)
    for k in sd0:
        if sd0[k].is_floating_point():
            torch.testing.assert_close(mid[k], (sd0[k] + sd1[k]) / 2, rtol=1e-6, atol=1e-6)


def test_interpolate_general_alpha_matches_formula() -> None:
    sd0, sd1 = endpoints()
    for alpha in (0.1, 0.37, 0.9, -0.5, 1.5):  # extrapolation is allowed and linear
        out = interpolate(sd0, sd1, alpha)
        torch.testing.assert_close(out["conv.weight"], (1 - alpha) * sd0["conv.weight"] + alpha * sd1["conv.weight"])


def test_interpolate_integer_and_bool_buffers_come_from_sd0() -> None:
    sd0, sd1 = endpoints()
    for alpha in (0.0, 0.3, 1.0):
        out = interpolate(sd0, sd1, alpha)
        assert out["bn.num_batches_tracked"].dtype == torch.int64
        assert torch.equal(out["bn.num_batches_tracked"], torch.tensor(3))
        assert out["flag"].dtype == torch.bool
        assert torch.equal(out["flag"], sd0["flag"])
        # and they are copies, not aliases of sd0's tensors
        assert out["flag"].data_ptr() != sd0["flag"].data_ptr()


def test_interpolate_keeps_dtypes_and_exact_endpoints_for_other_float_types() -> None:
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        sd0 = {"w": torch.randn(17, generator=gen, dtype=torch.float64).to(dtype)}
        sd1 = {"w": torch.randn(17, generator=gen, dtype=torch.float64).to(dtype)}
        assert interpolate(sd0, sd1, 0.5)["w"].dtype == dtype
        assert torch.equal(interpolate(sd0, sd1, 0.0)["w"], sd0["w"]), dtype
        assert torch.equal(interpolate(sd0, sd1, 1.0)["w"], sd1["w"]), dtype


def test_interpolate_does_not_modify_inputs() -> None:
    sd0, sd1 = endpoints()
    before0, before1 = clone_sd(sd0), clone_sd(sd1)
    out = interpolate(sd0, sd1, 0.0)
    out["fc.weight"].add_(1.0)  # the result must not alias the inputs either
    out["bn.num_batches_tracked"].add_(1)
    interpolate(sd0, sd1, 0.4)
    assert_sd_equal(sd0, before0)
    assert_sd_equal(sd1, before1)


def test_interpolate_key_mismatch_lists_keys() -> None:
    sd0, sd1 = endpoints()
    del sd1["fc.bias"]
    sd1["extra.weight"] = torch.zeros(2)
    with pytest.raises(StateDictMismatchError) as err:
        interpolate(sd0, sd1, 0.5)
    msg = str(err.value)
    assert "fc.bias" in msg and "extra.weight" in msg
    assert "conv.weight" not in msg  # only the offending keys


def test_interpolate_shape_mismatch_lists_keys() -> None:
    sd0, sd1 = endpoints()
    sd1["fc.weight"] = torch.zeros(6, 4)
    with pytest.raises(StateDictMismatchError) as err:
        interpolate(sd0, sd1, 0.5)
    msg = str(err.value)
    assert "fc.weight" in msg and "(5, 4)" in msg and "(6, 4)" in msg
    assert "fc.bias" not in msg
    assert isinstance(err.value, ValueError)  # callers may catch ValueError


def test_interpolate_rejects_non_finite_alpha() -> None:
    sd0, sd1 = endpoints()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            interpolate(sd0, sd1, bad)


def test_check_compatible_passes_for_same_architecture() -> None:
    sd0, sd1 = endpoints()
    check_compatible(sd0, sd1)  # no exception


# ----------------------------------------------------------------------------- WeightSpace


def live_toy(sd0: dict) -> Toy:
    model = Toy().eval()
    model.load_state_dict(sd0)
    return model


def test_weightspace_matches_fresh_interpolate_over_a_sequence() -> None:
    sd0, sd1 = endpoints()
    model = live_toy(sd0)
    ws = WeightSpace(model, sd0, sd1)
    for alpha in (0.7, 0.1, 1.0, 0.0, 0.45, 0.45, 0.999):
        ws.set_alpha(alpha)
        assert ws.alpha == alpha
        live = model.state_dict()
        ref = interpolate(sd0, sd1, alpha)
        for k in ref:
            torch.testing.assert_close(live[k], ref[k], rtol=0, atol=1e-6, msg=f"{k} at alpha {alpha}")
    ws.set_alpha(0.0)
    assert_sd_equal(model.state_dict(), interpolate(sd0, sd1, 0.0))
    ws.set_alpha(1.0)
    assert_sd_equal(model.state_dict(), interpolate(sd0, sd1, 1.0))


def test_weightspace_interpolates_floating_buffers_and_keeps_integer_ones() -> None:
    sd0, sd1 = endpoints()
    model = live_toy(sd0)
    model.bn.num_batches_tracked.fill_(99)  # set from theta0 on construction
    ws = WeightSpace(model, sd0, sd1)
    ws.set_alpha(0.25)
    expected = 0.75 * sd0["bn.running_mean"] + 0.25 * sd1["bn.running_mean"]
    torch.testing.assert_close(model.bn.running_mean, expected)
    torch.testing.assert_close(model.bn.running_var, 0.75 * sd0["bn.running_var"] + 0.25 * sd1["bn.running_var"])
    assert int(model.bn.num_batches_tracked) == 3
    assert torch.equal(model.flag, sd0["flag"])


def test_weightspace_keeps_storage_and_allocates_nothing_per_call() -> None:
    sd0, sd1 = endpoints()
    model = live_toy(sd0)
    ws = WeightSpace(model, sd0, sd1)

    def pointers() -> list[int]:
        ptrs = [t.data_ptr() for t in model.state_dict(keep_vars=True).values()]
        for g in ws.groups:
            ptrs += [g.live.data_ptr(), g.master0.data_ptr(), g.master1.data_ptr()]
            ptrs += [g.scratch.data_ptr()] if g.scratch is not None else []
        return ptrs

    params = list(model.parameters())
    before = pointers()
    for alpha in (0.2, 0.9, 0.5):
        ws.set_alpha(alpha)
        assert pointers() == before
    assert list(model.parameters()) == params  # the same Parameter objects (optimisers may hold them)
    # every floating parameter and buffer lives inside the group's flat buffer
    (group,) = ws.groups
    lo, hi = group.live.data_ptr(), group.live.data_ptr() + group.live.nbytes
    for name, t in model.state_dict(keep_vars=True).items():
        if t.is_floating_point():
            assert lo <= t.data_ptr() < hi, name
    assert ws.num_elements == sum(v.numel() for v in sd0.values() if v.is_floating_point())


def test_weightspace_does_not_modify_endpoints() -> None:
    sd0, sd1 = endpoints()
    before0, before1 = clone_sd(sd0), clone_sd(sd1)
    model = live_toy(sd0)
    ws = WeightSpace(model, sd0, sd1)
    ws.set_alpha(0.6)
    with torch.no_grad():
        model.fc.weight.add_(5.0)  # writing to the live model must not reach the masters or endpoints
    ws.set_alpha(0.0)
    assert_sd_equal(sd0, before0)
    assert_sd_equal(sd1, before1)
    assert torch.equal(model.fc.weight, sd0["fc.weight"])


def test_weightspace_bf16_live_with_fp32_masters() -> None:
    sd0, sd1 = endpoints()
    model = live_toy(sd0).to(torch.bfloat16)
    ws = WeightSpace(model, sd0, sd1)
    (group,) = ws.groups
    assert group.live.dtype == torch.bfloat16
    assert group.master0.dtype == torch.float32 and group.scratch is not None
    for alpha in (0.3, 0.8):
        ws.set_alpha(alpha)
        live = model.state_dict()
        ref = interpolate(sd0, sd1, alpha)
        for k, v in ref.items():
            expected = v.to(torch.bfloat16) if v.is_floating_point() else v
            assert live[k].dtype == expected.dtype, k
            assert torch.equal(live[k], expected), k
    x = torch.rand(2, 3, 8, 8)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_weightspace_mixed_dtypes_make_one_group_each() -> None:
    sd0, sd1 = endpoints()
    model = live_toy(sd0)
    model.fc.to(torch.float64)
    ws = WeightSpace(model, sd0, sd1)
    assert sorted(str(g.live.dtype) for g in ws.groups) == ["torch.float32", "torch.float64"]
    ws.set_alpha(0.5)
    ref = interpolate(sd0, sd1, 0.5)
    assert model.fc.weight.dtype == torch.float64
    torch.testing.assert_close(model.fc.weight, ref["fc.weight"].double())
    torch.testing.assert_close(model.conv.weight, ref["conv.weight"], rtol=0, atol=1e-6)


def test_weightspace_tied_weights() -> None:
    torch.manual_seed(1)
    a, b = Tied(), Tied()
    sd0, sd1 = clone_sd(a.state_dict()), clone_sd(b.state_dict())
    assert set(sd0) == {"emb.weight", "out.weight"}
    live = Tied()
    live.load_state_dict(sd0)
    ws = WeightSpace(live, sd0, sd1)
    assert ws.num_elements == 60  # one slot for the shared weight
    ws.set_alpha(0.4)
    assert live.out.weight is live.emb.weight
    expected = interpolate(sd0, sd1, 0.4)["emb.weight"]
    torch.testing.assert_close(live.emb.weight, expected, rtol=0, atol=1e-6)
    assert live.out.weight.data_ptr() == live.emb.weight.data_ptr()
    tokens = torch.randint(0, 10, (3, 4))
    fresh = Tied()
    fresh.load_state_dict(interpolate(sd0, sd1, 0.4))
    torch.testing.assert_close(live(tokens), fresh(tokens), rtol=0, atol=1e-6)


def test_weightspace_buffer_shared_by_two_modules() -> None:
    model = nn.Module()
    model.a, model.b = nn.Module(), nn.Module()
    shared = torch.zeros(3)
    model.a.register_buffer("stat", shared)
    model.b.register_buffer("stat", shared)
    sd0 = {"a.stat": torch.zeros(3), "b.stat": torch.zeros(3)}
    sd1 = {"a.stat": torch.full((3,), 2.0), "b.stat": torch.full((3,), 2.0)}
    ws = WeightSpace(model, sd0, sd1)
    ws.set_alpha(0.25)
    assert torch.equal(model.a.stat, torch.full((3,), 0.5))
    assert torch.equal(model.b.stat, torch.full((3,), 0.5))  # not a stale copy in the second module
    assert model.a.stat.data_ptr() == model.b.stat.data_ptr()


def test_weightspace_live_output_equals_fresh_model(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    sd0, sd1 = zs.state_dict(), ft.state_dict()
    before0, before1 = clone_sd(sd0), clone_sd(sd1)
    live = copy.deepcopy(zs)
    ws = WeightSpace(live, sd0, sd1)
    for alpha in (0.3, 0.8):
        ws.set_alpha(alpha)
        fresh = copy.deepcopy(zs)
        fresh.load_state_dict(interpolate(sd0, sd1, alpha))
        with torch.no_grad():
            torch.testing.assert_close(live(images), fresh(images), rtol=1e-5, atol=1e-5)
    # the endpoint models are untouched and still give their own outputs
    assert_sd_equal(zs.state_dict(), before0)
    assert_sd_equal(ft.state_dict(), before1)
    with torch.no_grad():
        assert not torch.allclose(zs(images), ft(images))


def test_weightspace_rejects_mismatched_model_and_bad_alpha() -> None:
    sd0, sd1 = endpoints()
    wrong = nn.Linear(3, 3)
    with pytest.raises(StateDictMismatchError, match="conv.weight"):
        WeightSpace(wrong, sd0, sd1)
    bad1 = clone_sd(sd1)
    bad1["fc.bias"] = torch.zeros(7)
    with pytest.raises(StateDictMismatchError, match="fc.bias"):
        WeightSpace(live_toy(sd0), sd0, bad1)
    ws = WeightSpace(live_toy(sd0), sd0, sd1)
    with pytest.raises(ValueError, match="alpha"):
        ws.set_alpha(float("nan"))
