"""TENT and TDA, the reference test-time adaptation baselines (adawise/methods/tent.py, tda.py).

TENT: its step touches only the normalisation layers' affine parameters of its own copy, lowers the batch's
entropy, predicts with the pre-update pass, handles batch norm as TENT does; TDA: its caches fill and evict
as the reference algorithm does (an independent list-based transcription below), keep the lowest-entropy
images per class, respect the negative cache's entropy band, do not depend on the batch size, and with empty
caches return the zero-shot logits exactly. Both: reset() reproduces a run exactly, reset_each_shift resets.
"""

from __future__ import annotations

import copy
import json
import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adawise
from adawise.core.objectives import entropy
from adawise.errors import InputTypeError, ModelMismatchError, UsageError
from adawise.methods.tda import TDA
from adawise.methods.tent import Tent, norm_parameters
from streams.base import ConcatStream, TensorStream


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ TENT
def test_tent_step_changes_only_the_norm_affine_parameters_of_its_own_copy(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    given = [_state(m) for m in (zs, ft)]
    tent = adawise.make_method("tent", zeroshot=zs, finetuned=ft, lr=1e-2)
    before = _state(tent.model)
    norm_names = {name for name, _ in norm_parameters(tent.model)}
    assert norm_names and all(".ln" in n or n.split(".")[-2].startswith("ln") for n in norm_names)
    with torch.no_grad():  # as the loop calls it
        tent(images)
    assert tent.info["updated"] and tent.info["backward_passes"] == 1.0
    after = _state(tent.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= norm_names  # only normalisation scale / shift moved
    assert len(changed) > len(norm_names) // 2
    for model, state in zip((zs, ft), given, strict=True):  # the given models: bit-identical
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert not any(p.requires_grad and p.grad is not None for p in model.parameters())


def test_one_tent_step_lowers_the_entropy_of_its_batch(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    tent = Tent(zs, ft, lr=1e-2, lr_batch=None)
    with torch.no_grad():
        first = tent(images)  # the pre-update prediction
        reference = ft(images)
        again = tent.model(images)  # the same batch after the step
    # the prediction is the fine-tuned model's pass (to rounding: the pass records a graph), not the step's
    torch.testing.assert_close(first, reference, rtol=0, atol=1e-5)
    assert (again - reference).abs().max() > 1e-3
    assert tent.info["loss"] == pytest.approx(float(entropy(reference).mean()), rel=1e-6)
    assert float(entropy(again).mean()) < float(entropy(first).mean()) - 1e-6


def test_tent_learning_rate_scales_with_the_batch(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    tent = Tent(zs, ft)  # 2.5e-4 at 64 images
    with torch.no_grad():
        tent(images)
        assert tent.info["lr"] == pytest.approx(2.5e-4 * len(images) / 64)
        tent(images[:1])  # a batch of one image: a valid step on layer norm
        assert tent.info["updated"] and tent.info["lr"] == pytest.approx(2.5e-4 / 64)
    fixed = Tent(zs, ft, lr=1e-3, lr_batch=None)
    with torch.no_grad():
        fixed(images)
    assert fixed.info["lr"] == 1e-3


def test_tent_from_a_static_alpha_starts_at_those_weights(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    for alpha, reference in ((0.0, zs), (1.0, ft)):
        tent = adawise.make_method("tent", zeroshot=zs, finetuned=ft, alpha=alpha)
        with torch.no_grad():
            torch.testing.assert_close(tent(images), reference(images))
        assert tent.alpha == alpha and tent.options()["alpha"] == alpha
    wise = adawise.make_method("wiseft", zeroshot=zs, finetuned=ft, alpha=0.3)
    tent = adawise.make_method("tent", zeroshot=zs, finetuned=ft, alpha=0.3)
    with torch.no_grad():
        torch.testing.assert_close(tent(images), wise(images))
    assert set(tent.endpoints()) == {"zeroshot", "finetuned"}
    assert set(adawise.make_method("tent", zeroshot=zs, finetuned=ft).endpoints()) == {"finetuned"}


def _stream(images: torch.Tensor, labels: torch.Tensor, batch: int) -> ConcatStream:
    half = len(images) // 2
    return ConcatStream([TensorStream(images[:half], labels[:half], "a", batch),
                         TensorStream(images[half:], labels[half:], "b", batch)])


class _Capture(nn.Module):
    """Calls a method batch by batch and keeps its logits (the online protocol by hand)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def run(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for x in batches:
                logits = self.method(x)
                self.method.observe(x, logits)
                out.append(logits.clone())
        return out


@pytest.mark.parametrize("name", ["tent", "tda"])
def test_reset_reproduces_a_run_exactly(tiny_pair, name) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(5)
    batches = [torch.rand(5, 3, 32, 32, generator=gen) for _ in range(4)]
    method = adawise.make_method(name, zeroshot=zs, finetuned=ft, **({"lr": 1e-2} if name == "tent" else {}))
    first = _Capture(method).run(batches)
    assert not torch.equal(first[0], first[-1])  # it adapted (state carried over)
    method.reset()
    second = _Capture(method).run(batches)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    fresh = adawise.make_method(name, zeroshot=zs, finetuned=ft, **({"lr": 1e-2} if name == "tent" else {}))
    assert all(torch.equal(a, b) for a, b in zip(first, _Capture(fresh).run(batches), strict=True))


def test_tent_reset_restores_the_weights_and_the_optimiser(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    tent = Tent(zs, ft, lr=1e-2)
    initial = _state(tent.model)
    with torch.no_grad():
        tent(images)
        tent(images)
    assert tent.optimizer.state  # momentum buffers exist
    tent.reset()
    assert all(torch.equal(v, initial[k]) for k, v in tent.model.state_dict().items())
    assert not tent.optimizer.state


@pytest.mark.parametrize("name", ["tent", "tda"])
def test_state_carries_over_in_continual_and_resets_each_shift(tiny_pair, name) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 3, 32, 32, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    opts = {"lr": 5e-2} if name == "tent" else {}

    def run(setting, stream):
        method = adawise.make_method(name, zeroshot=zs, finetuned=ft, **opts)
        return adawise.run_stream(method, stream, setting=setting, progress=False).records

    alone = run("continual", TensorStream(x[8:], y[8:], "b", 4))
    reset = run("reset_each_shift", _stream(x, y, 4))
    continual = run("continual", _stream(x, y, 4))
    first_b = [r for r in reset if r["domain"] == "b"]
    assert [r["entropy"] for r in first_b] == [r["entropy"] for r in alone]
    assert [r["entropy"] for r in continual if r["domain"] == "b"][0] != alone[0]["entropy"]


class BN1dNet(nn.Module):
    """Linear -> BatchNorm1d -> Linear, with running statistics unlike any batch's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.bn, self.head = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.head(self.bn(self.fc(x)))


def test_tent_batch_norm_uses_batch_statistics_and_never_updates_its_buffers() -> None:
    net = BN1dNet().eval()
    given = _state(net)
    tent = Tent(finetuned=net, lr=0.0)  # lr 0: the forward alone
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    h = net.fc(x)
    batch_stats = net.head(F.batch_norm(h, None, None, net.bn.weight, net.bn.bias, training=True))
    with torch.no_grad():
        torch.testing.assert_close(tent(x), batch_stats)
        # one value per channel: no batch statistics exist, the source running statistics are used
        torch.testing.assert_close(tent(x[:1]), net(x[:1]))
    buffers = {k for k, _ in net.named_buffers()}
    assert all(torch.equal(tent.model.state_dict()[k], given[k]) for k in buffers)  # running stats untouched
    assert all(torch.equal(v, given[k]) for k, v in net.state_dict().items())
    assert not tent.model.bn.training  # the mode the copy was in, given back after each call
    names = {n for n, _ in norm_parameters(tent.model)}
    assert names == {"bn.weight", "bn.bias"}


def test_tent_refuses_a_model_without_normalisation_layers_and_bad_options() -> None:
    with pytest.raises(ModelMismatchError, match="tent adapts the affine parameters of normalisation layers"):
        Tent(finetuned=nn.Linear(3, 2))
    for bad in ({"lr": -1.0}, {"lr": float("nan")}, {"momentum": 1.0}, {"lr_batch": 0}, {"alpha": 2.0}):
        with pytest.raises(UsageError, match="tent: "):
            Tent(nn.LayerNorm(3), nn.LayerNorm(3), **bad)


def test_tent_under_inference_mode_still_adapts(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    tent = Tent(zs, ft, lr=1e-2)
    before = _state(tent.model)
    with torch.inference_mode():
        tent(images)
    assert tent.info["updated"] and any(not torch.equal(v, before[k]) for k, v in tent.model.state_dict().items())


# ------------------------------------------------------------------------------------------------ TDA
class FeatureModel(nn.Module):
    """``encode``: the input rows normalised (so a test chooses every feature); ``classify``: a linear head."""

    def __init__(self, dim: int = 6, classes: int = 4, scale: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(dim, classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(scale * F.normalize(torch.randn(classes, dim, generator=g), dim=-1))

    def encode(self, x):
        return F.normalize(x, dim=-1)

    def classify(self, f):
        return self.head(f)

    def forward(self, x):
        return self.classify(self.encode(x))


def reference_tda(rows: torch.Tensor, model: nn.Module, pos_k: int, neg_k: int, opts: dict,
                  batch: int | None = None) -> torch.Tensor:
    """The reference algorithm, one image at a time, with its own data structures: per class a list of
    [feature, entropy(, probabilities)] kept sorted by entropy; a new image is appended while the class has
    room, else replaces the last (highest-entropy) entry if its entropy is lower; then the image is
    classified with every entry (weights scaled as TDA does: by the head's logit scale / 100).
    ``batch``: the strict batch order instead: each batch of that many images is classified with the caches
    as they were before it, then its images join them."""
    pos, neg, out = {}, {}, []
    scale = float(model.head.weight.detach().norm(dim=1).mean()) / 100.0

    def update(cache, c, item, k):
        if k == 0:
            return
        if c in cache:
            if len(cache[c]) < k:
                cache[c].append(item)
            elif item[1] < cache[c][-1][1]:
                cache[c][-1] = item
            cache[c] = sorted(cache[c], key=operator.itemgetter(1))
        else:
            cache[c] = [item]

    classes = model.head.out_features
    lo, hi = opts["neg_mask"]

    def positive_label(cls, item):
        return F.one_hot(torch.tensor(cls), classes).double()

    def negative_label(cls, item):
        return ((item[2] > lo) & (item[2] < hi)).double()

    def logits_of(f, cache, beta, values):
        total = torch.zeros(model.head.out_features, dtype=torch.float64)
        for c in sorted(cache):
            for item in cache[c]:
                total += math.exp(-beta * (1 - float(f @ item[0]))) * values(c, item)
        return total

    def insert(f, z):
        h = float(-(z.softmax(0) * z.log_softmax(0)).sum())
        c = int(z.argmax())
        update(pos, c, [f, h], pos_k)
        low, high = opts["neg_entropy"]
        if low < h / math.log2(len(z)) < high:
            update(neg, c, [f, h, z.softmax(0)], neg_k)

    pending = []
    with torch.no_grad():
        for i, x in enumerate(rows):
            f = model.encode(x[None])[0].double()
            z = model.classify(f[None].float())[0].double()
            if batch is None:
                insert(f, z)
            elif i % batch == 0:  # a new batch: the previous one joins the caches now
                for item in pending:
                    insert(*item)
                pending = []
            pending.append((f, z))
            final = z.clone()
            if pos:
                final += opts["pos_alpha"] * scale * logits_of(f, pos, opts["pos_beta"], positive_label)
            if neg:
                final -= opts["neg_alpha"] * scale * logits_of(f, neg, opts["neg_beta"], negative_label)
            out.append(final)
    return torch.stack(out)


#: options that make every part of TDA work on a small stream: small caches (evictions), a wide entropy
#: band (negative entries), a probability band that excludes some classes
TDA_OPTS = {"pos_alpha": 2.0, "pos_beta": 5.0, "neg_alpha": 1.5, "neg_beta": 1.0, "neg_entropy": (0.1, 0.6),
            "neg_mask": (0.05, 0.9)}


def _rows(n: int = 60, dim: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 4, 7, 60])
def test_tda_matches_the_reference_algorithm_at_any_batch_size(batch) -> None:
    model, rows = FeatureModel(), _rows()
    expected = reference_tda(rows, model, 2, 2, TDA_OPTS)
    tda = TDA(model, pos_capacity=2, neg_capacity=2, **TDA_OPTS)
    got = torch.cat(_Capture(tda).run(list(rows.split(batch))))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert tda.negative.size() > 0 and tda.positive.size() == 2 * 4  # both caches at work, all classes full


def test_tda_positive_cache_keeps_the_lowest_entropy_images_of_each_class() -> None:
    model, rows = FeatureModel(), _rows(80)
    tda = TDA(model, pos_capacity=3, neg_capacity=2, **TDA_OPTS)
    _Capture(tda).run(list(rows.split(9)))
    with torch.no_grad():
        z = model(rows)
    ent, pred = entropy(z), z.argmax(-1)
    feats = F.normalize(rows, dim=-1)
    for c in range(4):
        mine = sorted(h for h in tda.positive.entropy[c] if h < math.inf)
        lowest = sorted(ent[pred == c].tolist())[:3]
        assert mine == pytest.approx(lowest, rel=1e-6)  # capacity per class, the K lowest entropies
        held = tda.positive.keys[c][[k for k, h in enumerate(tda.positive.entropy[c]) if h < math.inf]]
        want = feats[pred == c][torch.argsort(ent[pred == c])[:3]]
        assert torch.cdist(held, want).min(1).values.max() < 1e-6  # and exactly their features


def test_tda_negative_cache_takes_only_images_inside_its_entropy_band() -> None:
    model, rows = FeatureModel(), _rows(80)
    band = (0.3, 0.5)
    tda = TDA(model, pos_capacity=3, neg_capacity=2, **{**TDA_OPTS, "neg_entropy": band})
    _Capture(tda).run(list(rows.split(16)))
    with torch.no_grad():
        z = model(rows)
    norm_ent, pred = entropy(z) / math.log2(4), z.argmax(-1)
    inside = (norm_ent > band[0]) & (norm_ent < band[1])
    assert 0 < int(inside.sum()) < len(rows)  # the band selects some images and not others
    for c in range(4):
        mine = sorted(h / math.log2(4) for h in tda.negative.entropy[c] if h < math.inf)
        want = sorted(norm_ent[inside & (pred == c)].tolist())[:2]
        assert mine == pytest.approx(want, rel=1e-6)
        assert all(band[0] < h < band[1] for h in mine)
    # the negative pseudo-labels: classes whose probability lies inside neg_mask
    slot = next((c, k) for c in range(4) for k in range(2) if tda.negative.entropy[c][k] < math.inf)
    key = tda.negative.keys[slot]
    row = int(torch.cdist(key[None], F.normalize(rows, dim=-1)).argmin())
    p = z[row].softmax(0)
    assert torch.equal(tda.negative.values[slot].bool(), (p > 0.05) & (p < 0.9))


def test_tda_eviction_replaces_the_highest_entropy_entry_and_keeps_ties() -> None:
    model = FeatureModel(dim=2, classes=2, scale=4.0)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0]]))
    # class-0 images of decreasing entropy (angles towards class 0), then a tie with the worst entry
    angles = torch.tensor([0.7, 0.5, 0.3, 0.1, 0.3])
    rows = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    tda = TDA(model, pos_capacity=2, neg_capacity=0)
    seen = []
    with torch.no_grad():
        for x in rows:
            tda(x[None])
            seen.append(sorted(round(h, 6) for h in tda.positive.entropy[0] if h < math.inf))
    ent = [round(float(entropy(model(r[None]))), 6) for r in rows]
    assert seen == [[ent[0]], sorted(ent[:2]), sorted(ent[1:3]), sorted(ent[2:4]), sorted(ent[2:4])]
    assert tda.info["pos_writes"] == 0  # an entropy equal to the worst entry's does not replace it


def test_tda_replaces_the_latest_of_tied_highest_entropy_entries() -> None:
    """Two entries of exactly equal entropy (mirror-image features, identical logits): a better image
    replaces the one written last, as the reference's stable sort does."""
    model = FeatureModel(dim=3, classes=2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
    first, second, better = torch.tensor([[0.8, 0.2, 0.5], [0.8, 0.2, -0.5], [0.9, 0.1, 0.0]])
    tda = TDA(model, pos_capacity=2, neg_capacity=0)
    with torch.no_grad():
        for x in (first, second, better):
            tda(x[None])
    held = tda.positive.keys[0]
    assert torch.allclose(held[0], F.normalize(first, dim=0)) and torch.allclose(held[1], F.normalize(better, dim=0))


def test_tda_with_empty_caches_is_the_zero_shot_model_exactly(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    with torch.no_grad():
        reference = zs(images)
        first = adawise.make_method("tda", zeroshot=zs, finetuned=ft, update="batch")
        assert torch.equal(first(images), reference)  # the caches are empty before the first batch
        assert first.info["pos_entries"] > 0  # ... and filled after it
        assert not torch.equal(first(images), reference)
        none = TDA(zs, pos_capacity=0, neg_capacity=0)
        for _ in range(3):
            assert torch.equal(none(images), reference)


@pytest.mark.parametrize("batch", [1, 5, 12])
def test_tda_batch_update_classifies_with_the_caches_before_the_batch(batch) -> None:
    model, rows = FeatureModel(), _rows(36)
    expected = reference_tda(rows, model, 2, 2, TDA_OPTS, batch=batch)
    tda = TDA(model, pos_capacity=2, neg_capacity=2, update="batch", **TDA_OPTS)
    got = torch.cat(_Capture(tda).run(list(rows.split(batch))))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(got[:batch], model(rows[:batch]), rtol=0, atol=0)  # empty before batch 1
    if batch == 1:  # one image per batch: "batch" = "sample" without the image itself in its own caches
        assert not torch.allclose(got, torch.cat(_Capture(TDA(model, pos_capacity=2, neg_capacity=2, **TDA_OPTS)
                                                          ).run(list(rows.split(1)))))


def test_tda_refuses_models_without_features_and_bad_options(tiny_pair) -> None:
    with pytest.raises(InputTypeError, match="tda needs the zero-shot model to expose encode.*lacks encode, classify"):
        adawise.make_method("tda", zeroshot=nn.Linear(3, 2), finetuned=nn.Linear(3, 2))
    zs, ft = tiny_pair
    for bad in ({"pos_capacity": -1}, {"neg_alpha": float("inf")}, {"neg_entropy": (0.5, 0.2)},
                {"update": "later"}, {"alpha": -0.5}, {"weight_scale": 0}):
        with pytest.raises(UsageError, match="tda: "):
            adawise.make_method("tda", zeroshot=zs, finetuned=ft, **bad)


def test_tda_weights_follow_the_models_logit_scale(tiny_pair) -> None:
    zs, ft = tiny_pair
    tda = adawise.make_method("tda", zeroshot=zs, finetuned=ft)
    clip_scale = float(zs.head.weight.norm(dim=1).mean())
    assert tda.weight_scale == pytest.approx(clip_scale) and tda.options()["weight_scale"] == tda.weight_scale
    assert adawise.make_method("tda", zeroshot=zs, finetuned=ft, weight_scale=100).weight_scale == 100.0
    # the same stream at twice the weight scale moves the logits twice as far from the zero-shot ones
    model, rows = FeatureModel(), _rows(20)
    with torch.no_grad():
        z = model(rows)
        one = TDA(model, weight_scale=10.0, **TDA_OPTS)(rows) - z
        two = TDA(model, weight_scale=20.0, **TDA_OPTS)(rows) - z
    torch.testing.assert_close(two, 2 * one)


def test_tda_on_a_static_alpha_and_its_endpoints(tiny_pair, images) -> None:
    zs, ft = tiny_pair
    with torch.no_grad():
        default = adawise.make_method("tda", zeroshot=zs, finetuned=ft)(images)
        at_zero = adawise.make_method("tda", zeroshot=zs, finetuned=ft, alpha=0.0)(images)
        at_half = adawise.make_method("tda", zeroshot=zs, finetuned=ft, alpha=0.5)
        out = at_half(images)
    torch.testing.assert_close(at_zero, default)
    assert at_half.alpha == 0.5 and set(at_half.endpoints()) == {"zeroshot", "finetuned"}
    assert not torch.allclose(out, default)
    assert set(adawise.make_method("tda", zeroshot=zs, finetuned=ft).endpoints()) == {"zeroshot"}


@pytest.mark.parametrize("name", ["tent", "tda"])
def test_single_image_batches_through_the_loop(tiny_pair, name) -> None:
    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(9)
    x, y = torch.rand(6, 3, 32, 32, generator=gen), torch.randint(0, 5, (6,), generator=gen)
    before = [_state(m) for m in (zs, ft)]
    method = adawise.make_method(name, zeroshot=zs, finetuned=ft)
    result = adawise.run_stream(method, _stream(x, y, 1), setting="continual", progress=False)
    assert len(result.records) == 6 and all(r["nonfinite_rows"] == 0 for r in result.records)
    assert result.records[-1]["alpha"] == (1.0 if name == "tent" else 0.0)
    for model, state in zip((zs, ft), before, strict=True):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_both_are_registered_as_adapting_label_free_methods(tiny_pair) -> None:
    zs, ft = tiny_pair
    for name in ("tent", "tda"):
        assert name in adawise.registered_methods()
        method = adawise.make_method(name, zeroshot=zs, finetuned=ft)
        assert method.name == name and method.adapts and not method.uses_labels
        assert copy.deepcopy(method.options()) == method.options()


# ------------------------------------------------------------------------------------------ logs and the CLI
def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("seconds") and k != "started"}


@pytest.mark.parametrize("name", ["tent", "tda"])
def test_a_resumed_log_equals_an_uninterrupted_run(tiny_pair, tmp_path, name) -> None:
    """Resume replays the logged batches through the method, so its adapted state is rebuilt exactly."""
    from adawise.evaluation.logs import read_jsonl

    zs, ft = tiny_pair
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(24, 3, 32, 32, generator=gen), torch.randint(0, 5, (24,), generator=gen)
    opts = {"lr": 1e-2} if name == "tent" else {}

    def run(log, resume=False):
        method = adawise.make_method(name, zeroshot=zs, finetuned=ft, **opts)
        return adawise.run_stream(method, _stream(x, y, 4), log=log, progress=False, resume=resume)

    full = run(tmp_path / "full.jsonl")
    cut = tmp_path / "cut.jsonl"
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:4]))  # the header and three batches: killed there
    resumed = run(cut, resume=True)
    assert [_untimed(r) for r in resumed.records] == [_untimed(r) for r in full.records]
    batches = [[_untimed(r) for r in read_jsonl(log) if r["type"] == "batch"] for log in (cut, tmp_path / "full.jsonl")]
    assert batches[0] == batches[1] and len(batches[0]) == 6


def test_adawise_run_takes_tent_and_tda_with_their_options(tmp_path) -> None:
    from conftest import TINY_CLIP_CFG
    from imagenet_r_fixture import make_imagenet_r_folder

    from adawise.cli import main as cli_main
    from adawise.evaluation.logs import read_run

    root = make_imagenet_r_folder(tmp_path / "imagenet-r", renditions=["art", "cartoon"], per_class=1)
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY_CLIP_CFG))
    out = tmp_path / "out"
    rc = cli_main(["run", "--data", str(root), "--arch", str(arch), "--pretrained", "none", "--finetuned", "none",
                   "--templates", "simple", "--methods", "tent,tda", "--method-option", "tent.lr=0.001",
                   "--method-option", "tda.update=batch", "--batch-size", "16", "--device", "cpu", "--out", str(out),
                   "--workers", "0", "--head-cache-dir", str(tmp_path / "heads"), "--no-progress"])
    assert rc == 0
    tent, tda = read_run(out / "tent.jsonl"), read_run(out / "tda.jsonl")
    assert tent["complete"] and tda["complete"]
    assert tent["header"]["options"]["lr"] == 0.001 and tda["header"]["options"]["update"] == "batch"
    assert all(r["updated"] for r in tent["batches"]) and tda["batches"][-1]["pos_entries"] > 0
    # a bad option value is refused before any model is loaded (exit code 2, one line naming it)
    assert cli_main(["run", "--data", str(root), "--arch", str(arch), "--pretrained", "none", "--finetuned", "none",
                     "--methods", "tent", "--method-option", "tent.lr=-1", "--out", str(tmp_path / "bad")]) == 2
