"""Methods never change the modules they are given, whatever mode those are in; endpoints that cannot be
combined are refused with a clear error (other dtypes, other class counts, the same keys with another
forward); wiseft's alpha lies in [0, 1]; empty batches, fp32 images into a bf16 engine."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adawise
from adawise.errors import ModelMismatchError, StateDictMismatchError, UsageError
from streams.base import ConcatStream, TensorStream

C = 5


class BNNet(nn.Module):
    """Conv + BatchNorm + pooling + linear head, with encode/classify (so VRF can use it too)."""

    def __init__(self, seed: int, pool: str = "avg") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.drop, self.head = nn.Dropout(0.5), nn.Linear(8, C)
        self.pool = pool
        with torch.no_grad():  # running statistics that differ from any batch's
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def encode(self, x):
        f = self.drop(F.relu(self.bn(self.conv(x))))
        f = f.mean((2, 3)) if self.pool == "avg" else f.amax((2, 3))
        return F.normalize(f, dim=-1)

    def classify(self, f):
        return self.head(f)

    def forward(self, x):
        return self.classify(self.encode(x))


def stream(n: int = 24, seed: int = 0) -> ConcatStream:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, 12, 12, generator=g), torch.randint(0, C, (n,), generator=g)
    return ConcatStream([TensorStream(x[: n // 2], y[: n // 2], "a", 6), TensorStream(x[n // 2:], y[n // 2:], "b", 6)])


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def options(name, zs, ft):
    if name == "vrf":
        from adawise.methods.zsf import ZSFIndex

        return {"index": ZSFIndex(F.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=-1),
                                  k=3)}
    if name in ("oracle", "adawise-grid"):
        return {"grid": 5}
    return {}


@pytest.mark.parametrize("name", sorted(n for n in adawise.registered_methods() if "faithful" not in n))
def test_models_left_in_train_mode_are_unchanged_by_run_stream(name) -> None:
    zs, ft = BNNet(0).train(), BNNet(1).train()
    ft.drop.eval()  # mixed modes must come back exactly as they were
    opts = options(name, zs, ft)
    before = [snapshot(m) for m in (zs, ft)]
    method = adawise.make_method(name, zeroshot=zs, finetuned=ft, **opts)
    result = adawise.run_stream(method, stream(), progress=False)
    method.train()
    method.eval()
    for model, (state, modes) in zip((zs, ft), before, strict=True):
        assert [m.training for m in model.modules()] == modes  # the mode of every submodule
        for key, value in model.state_dict().items():  # batch-norm buffers included
            assert torch.equal(value, state[key]), (name, key)
    assert all(r["nonfinite_rows"] == 0 for r in result.records)
    if name == "zeroshot":  # it predicted in eval mode: running statistics, no dropout
        reference = copy.deepcopy(zs).eval()
        first = next(iter(stream()))
        with torch.no_grad():
            assert result.records[0]["correct"] == int((reference(first.images).argmax(1) == first.labels).sum())


def test_the_same_keys_with_another_forward_are_refused_at_the_first_batch() -> None:
    zs, ft = BNNet(0, pool="max").eval(), BNNet(1, pool="avg").eval()  # identical keys and shapes
    images = next(iter(stream())).images
    for name in ("adawise", "adawise-grid"):
        engine = adawise.make_method(name, zeroshot=zs, finetuned=ft, **({"grid": 5} if name != "adawise" else {}))
        with pytest.raises(ModelMismatchError, match="do not compute alike: at alpha = 0"):
            engine(images)
    same = adawise.make_method("adawise", zeroshot=BNNet(0, pool="avg").eval(), finetuned=ft)
    out = same(images)  # the same forward: accepted, and the check costs nothing the info shows
    assert out.shape == (len(images), C) and same.info["forward_passes"] >= 1


def test_endpoints_in_other_dtypes_are_refused() -> None:
    zs, ft = BNNet(0).eval(), BNNet(1).eval().to(torch.bfloat16)
    for name in ("adawise", "wiseft"):
        with pytest.raises(StateDictMismatchError, match="different dtypes .*float32 vs torch.bfloat16"):
            adawise.make_method(name, zeroshot=zs, finetuned=ft)


def test_fp32_images_into_a_bf16_engine() -> None:
    torch.manual_seed(0)
    zs = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.Linear(8, C)).to(torch.bfloat16)
    ft = copy.deepcopy(zs)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.1)
    engine = adawise.AdaWiSE(zs, ft)
    out = engine(torch.rand(6, 3, 4, 4))  # float32 images: cast to the engine's dtype, no dtype error
    assert out.shape == (6, C) and out.dtype == torch.bfloat16 and 0.0 <= engine.alpha <= 1.0


def test_output_ensembles_with_other_class_counts_name_both_shapes() -> None:
    zs, ft = nn.Linear(12, 3), nn.Linear(12, 4)
    x = torch.randn(5, 12)
    for name in ("ose", "dawin"):
        with pytest.raises(ModelMismatchError, match=r"shape \(5, 3\) but the fine-tuned model \(5, 4\)"):
            adawise.make_method(name, zeroshot=zs, finetuned=ft)(x)


def test_classifiers_with_other_class_counts_are_refused_at_construction(tiny_cfg) -> None:
    zs, _ = adawise.load_pair(tiny_cfg, ["a", "b", "c"], templates="simple")
    _, ft = adawise.load_pair(copy.deepcopy(tiny_cfg), ["a", "b", "c", "d"], templates="simple")
    for name in ("ose", "dawin"):
        with pytest.raises(ModelMismatchError, match="predicts 3 classes but the fine-tuned model 4"):
            adawise.make_method(name, zeroshot=zs, finetuned=ft)


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan"), "half"])
def test_wiseft_alpha_outside_zero_one_is_refused(alpha) -> None:
    with pytest.raises(UsageError, match=r"wiseft: alpha must be a number in \[0, 1\]"):
        adawise.make_method("wiseft", zeroshot=nn.Linear(3, 2), finetuned=nn.Linear(3, 2), alpha=alpha)


def test_an_empty_batch_gives_empty_logits(tiny_pair) -> None:
    zs, ft = tiny_pair
    empty = torch.empty(0, 3, 32, 32)
    with torch.no_grad():
        assert zs(empty).shape == (0, C)
        for name in ("zeroshot", "wiseft", "ose", "dawin", "adawise", "tent", "tda"):
            assert adawise.make_method(name, zeroshot=zs, finetuned=ft)(empty).shape == (0, C), name
