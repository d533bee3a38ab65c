"""Stream orders (streams.orders): the sample order and the schedule of domains, and how they combine."""

from __future__ import annotations

import pytest
import torch
from fashion_data import needs_data  # tests/ is on sys.path under pytest

from adawise.evaluation.logs import domain_counts
from adawise.evaluation.loop import run_stream
from adawise.methods.base import Method
from streams.base import PooledStream
from streams.orders import DEFAULT_DELTA, SampleOrder, arrange, dirichlet_order, parse_sample_order, resolve
from streams.schedules import build_stream, corruption_spec

LABELS = torch.arange(2000) % 10  # 200 images per class


def _slot_max_share(order: torch.Tensor, labels: torch.Tensor, slots: int = 10) -> float:
    """Mean over slots of the largest class share within the slot."""
    ys = labels[order]
    bounds = torch.linspace(0, len(ys), slots + 1).round().long()
    shares = [torch.bincount(ys[a:b], minlength=10).max().item() / (b - a)
              for a, b in zip(bounds, bounds[1:], strict=False)]
    return sum(shares) / len(shares)


def test_dirichlet_concentration_falls_with_delta_every_image_once():
    shares = {}
    for delta in (0.01, 0.1, 1.0, 100.0):
        per_seed = []
        for seed in range(5):
            order = dirichlet_order(LABELS, delta, seed)
            assert sorted(order.tolist()) == list(range(len(LABELS)))  # every image exactly once
            per_seed.append(_slot_max_share(order, LABELS))
        shares[delta] = sum(per_seed) / len(per_seed)
    assert shares[0.01] > shares[0.1] > shares[1.0] > shares[100.0]
    assert shares[0.01] > 0.85  # near class-sorted: a slot is almost one class
    assert shares[100.0] < 0.2  # near i.i.d.: about a tenth per class
    # batches of 64 of a δ = 0.1 stream hold few classes, those of an i.i.d. one almost all ten
    def classes_per_batch(order):
        ys = LABELS[order][:1984].view(-1, 64)
        return sum(len(torch.unique(r)) for r in ys) / len(ys)

    assert classes_per_batch(dirichlet_order(LABELS, 0.1, 0)) < 6 < classes_per_batch(torch.randperm(2000))


def test_dirichlet_is_seeded_and_keeps_within_class_order():
    a, b = dirichlet_order(LABELS, 0.1, 3), dirichlet_order(LABELS, 0.1, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, dirichlet_order(LABELS, 0.1, 4))
    for k in range(10):  # each class's images in their given order
        mine = a[LABELS[a] == k]
        assert torch.equal(mine, torch.sort(mine).values)
    uneven = torch.tensor([0] * 50 + [1] * 3 + [2] * 7)  # classes of very different sizes, fewer than slots
    assert sorted(dirichlet_order(uneven, 0.01, 0).tolist()) == list(range(60))
    assert dirichlet_order(torch.zeros(0, dtype=torch.long), 0.1, 0).numel() == 0


def test_arrange_orders():
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    perm = torch.tensor([5, 3, 0, 4, 1, 2])
    assert torch.equal(arrange(labels, perm, SampleOrder("shuffled"), 0), perm)
    assert torch.equal(arrange(labels, perm, SampleOrder("given"), 0), torch.arange(6))
    sorted_ = arrange(labels, perm, SampleOrder("class-sorted"), 0)
    assert labels[sorted_].tolist() == [0, 0, 1, 1, 2, 2] and sorted_.tolist() == [3, 1, 5, 2, 0, 4]  # stable
    assert sorted(arrange(labels, perm, parse_sample_order("dirichlet:0.5"), 1).tolist()) == list(range(6))


def test_spellings_and_resolve():
    assert parse_sample_order("dirichlet").delta == DEFAULT_DELTA == 0.1
    assert parse_sample_order("dirichlet:0.01").spelled == "dirichlet:0.01"
    assert parse_sample_order("continual").kind == "shuffled"  # the embedded stream's old name
    for bad, match in (("dirichlet:-1", "positive"), ("dirichlet:x", "number"), ("random", "unknown order"),
                       ("shuffled:2", "only dirichlet")):
        with pytest.raises(ValueError, match=match):
            parse_sample_order(bad)
    assert resolve("class-sorted", "mixed") == ("mixed", SampleOrder("class-sorted"))
    assert resolve("mixed") == ("mixed", SampleOrder("shuffled"))  # the old spelling of the schedule
    assert resolve("reset_each_shift") == ("reset_each_shift", SampleOrder("shuffled"))
    assert resolve(None, "gradual", default="given") == ("gradual", SampleOrder("given"))
    with pytest.raises(ValueError, match="names a schedule"):
        resolve("mixed", "gradual")
    with pytest.raises(ValueError, match="not available"):
        resolve("shuffled", "gradual", schedules=("continual", "mixed"))


# ------------------------------------------------------------------------------------------ corruption streams
N, S = 40, 8
DOMAINS = ["clean", "brightness", "contrast"]


@pytest.fixture(scope="module")
def base():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(N, 3, S, S, generator=gen) * 0.8 + 0.1, torch.arange(N) % 4


def _batches(spec, base):
    images, labels = base
    return list(build_stream(spec, images=images, labels=labels))


@pytest.mark.parametrize("order", ["class-sorted", "dirichlet", "dirichlet:0.01", "given"])
def test_corruption_orders_combine_with_schedules(base, order):
    for schedule in ("continual", "gradual", "mixed"):
        spec = corruption_spec(DOMAINS, order=order, schedule=schedule, batch_size=8, seed=1, severity=2)
        assert spec.order == schedule
        batches = _batches(spec, base)
        assert all(torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)  # rebuilt: the same batches
                   for a, b in zip(batches, _batches(spec, base), strict=True))
        n_domains = len(DOMAINS) if schedule != "gradual" else 1 + 2 * 9
        assert sum(len(b.labels) for b in batches) == n_domains * N
        if schedule == "mixed":
            assert {b.domain for b in batches} == {"mixed"}
            names = [d for b in batches for d in b.sample_domains]
            assert {d: names.count(d) for d in DOMAINS} == dict.fromkeys(DOMAINS, N)  # every domain, every image
        else:
            assert all(b.sample_domains is None for b in batches)
        ys = torch.cat([b.labels for b in batches])
        if order == "class-sorted" and schedule != "mixed":
            for d in range(n_domains):
                chunk = ys[d * N:(d + 1) * N]
                assert torch.equal(chunk, torch.sort(chunk).values)
        if order == "class-sorted" and schedule == "mixed":
            assert torch.equal(ys, torch.sort(ys).values)


def test_corruption_default_order_is_unchanged(base):
    """No sample order given: the spec and the batches of the shuffled stream as before."""
    spec = corruption_spec(DOMAINS, order="continual", batch_size=8, seed=1)
    assert "sample_order" not in spec.opts and "shuffle" not in spec.opts
    dirichlet = corruption_spec(DOMAINS, order="dirichlet", batch_size=8, seed=1)
    assert dirichlet.opts["sample_order"] == "dirichlet:0.1" and dirichlet.order == "continual"
    assert spec.config_hash() != dirichlet.config_hash()
    a, b = _batches(spec, base), _batches(dirichlet, base)
    assert [x.domain for x in a] == [x.domain for x in b]
    assert not all(torch.equal(x.labels, y.labels) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------ pooled streams and scoring
class _FirstClass(Method):
    """Predicts class 0 for every image."""

    def forward(self, images):
        out = torch.zeros(len(images), 4)
        out[:, 0] = 1.0
        return out


def test_mixed_batches_are_scored_per_sample_domain(tmp_path):
    parts = [torch.zeros(6, 1, 2, 2), torch.ones(6, 1, 2, 2)]
    labels = [torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 1, 1])]
    plan = [torch.tensor([[0, 0], [1, 0], [0, 3], [1, 1]]), torch.tensor([[1, 2], [0, 1], [0, 2], [1, 3]]),
            torch.tensor([[0, 4], [0, 5], [1, 4], [1, 5]])]
    stream = PooledStream(parts, labels, ["a", "b"], plan)
    batches = list(stream)
    assert len(stream) == 3 and stream.domains == ["mixed"]
    assert batches[0].sample_domains == ("a", "b", "a", "b")
    assert torch.equal(batches[0].images[:, 0, 0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert batches[0].labels.tolist() == [0, 0, 1, 1]
    result = run_stream(_FirstClass(), stream, log=tmp_path / "m.jsonl", progress=False)
    # class 0 is right for a's rows 0-2 and b's row 0: a 3 of 6, b 1 of 6
    assert result.per_domain == {"a": 0.5, "b": 1 / 6}
    assert domain_counts(result.records) == {"a": [6, 3], "b": [6, 1]}
    from adawise.apps.report import collect

    assert collect([tmp_path / "m.jsonl"])["accuracy"]["method"] == {"a": 0.5, "b": 1 / 6}


@needs_data
def test_embedded_orders_and_schedules():
    from streams.fashion import embedded_stream

    kw = dict(domains=["clean", "invert", "brightness:2"], per_domain=120, batch_size=16, seed=2)
    shuffled = list(embedded_stream(None, **kw))
    assert embedded_stream(None, **kw).spec.order == "continual"
    for order in ("class-sorted", "dirichlet", "dirichlet:0.01"):
        stream = embedded_stream(None, order=order, **kw)
        assert stream.spec.opts["sample_order"] == parse_sample_order(order).spelled
        batches = list(stream)
        assert [b.domain for b in batches] == [b.domain for b in shuffled]
        for d in kw["domains"]:  # the same images per domain, in another order
            mine = torch.cat([b.images.flatten(1).sum(1) for b in batches if b.domain == d]).sort().values
            theirs = torch.cat([b.images.flatten(1).sum(1) for b in shuffled if b.domain == d]).sort().values
            torch.testing.assert_close(mine, theirs)
        rebuilt = list(embedded_stream(stream.spec))
        assert all(torch.equal(a.labels, b.labels) for a, b in zip(batches, rebuilt, strict=True))
    mixed = embedded_stream(None, order="dirichlet", schedule="mixed", **kw)
    batches = list(mixed)
    names = [d for b in batches for d in b.sample_domains]
    assert {d: names.count(d) for d in kw["domains"]} == dict.fromkeys(kw["domains"], 120)
    assert sum(len(set(b.sample_domains)) > 1 for b in batches) > len(batches) // 2  # batches mix domains
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(batches, embedded_stream(mixed.spec), strict=True))
    gradual = embedded_stream(None, schedule="gradual", **kw)
    assert gradual.domains == ["clean", "invert"] + [f"brightness:{s}" for s in (1, 2, 3, 4, 5)]
    one = list(embedded_stream(None, batch_size=1, **{k: v for k, v in kw.items() if k != "batch_size"}))
    assert len(one) == 360 and all(len(b.labels) == 1 for b in one)


# ------------------------------------------------------------------------------------------ one vocabulary
def test_spec_fields_keep_old_specs_and_name_new_orders():
    from streams.orders import spec_fields

    assert spec_fields("corruptions", "mixed", None) == ("mixed", {})  # the old spelling: the spec as before
    assert spec_fields("imagenet-c", None, None) == ("continual", {})
    assert spec_fields("corruptions", "dirichlet", "mixed") == ("mixed", {"sample_order": "dirichlet:0.1"})
    assert spec_fields("corruptions", "given", "gradual") == ("gradual", {"shuffle": False})
    assert spec_fields("imagenet-r", None, None) == ("rendition", {})
    assert spec_fields("imagenet-r", "class-sorted", None) == ("class-sorted", {})  # old: every file in class order
    assert spec_fields("imagenet-r", "shuffled", "continual") == ("shuffled", {})  # has an old name
    assert spec_fields("imagenet-r", "dirichlet:0.01", "continual") == ("continual", {"sample_order": "dirichlet:0.01"})
    with pytest.raises(ValueError, match="not available"):
        spec_fields("imagenet-r", "shuffled", "gradual")


def test_imagenet_r_dirichlet_and_mixed_name_each_file_rendition(tmp_path):
    from imagenet_r_fixture import make_imagenet_r_folder

    from streams.imagenet_r import imagenet_r_stream

    root = make_imagenet_r_folder(tmp_path / "inr", per_class=2, size=(16, 16), extras=False)
    kw = dict(batch_size=50, image_size=16, num_workers=0)
    dirichlet = imagenet_r_stream(root, order="dirichlet", **kw)
    assert dirichlet.spec.order == "continual" and dirichlet.spec.opts["sample_order"] == "dirichlet:0.1"
    batches = list(dirichlet)
    assert [b.domain for b in batches] == sorted(b.domain for b in batches)  # renditions one after another
    assert sum(len(b.labels) for b in batches) == 400
    rebuilt = build_stream(dirichlet.spec, num_workers=0)
    assert [b.labels.tolist() for b in rebuilt] == [b.labels.tolist() for b in batches]
    mixed = list(imagenet_r_stream(root, order="shuffled", schedule="mixed", **kw))
    assert {b.domain for b in mixed} == {"mixed"}
    names = [d for b in mixed for d in b.sample_domains]
    assert {d: names.count(d) for d in ("art", "cartoon", "sketch", "toy")} == dict.fromkeys(
        ("art", "cartoon", "sketch", "toy"), 100)
    with pytest.raises(ValueError, match="gradual"):
        imagenet_r_stream(root, order="shuffled", schedule="gradual", **kw)


def test_sweep_streams_take_order_and_schedule():
    from adawise.apps.sweep import build_stream as sweep_stream

    synth = {"source": "corruptions", "base": "synthetic", "base_size": 24, "image_size": 8, "num_classes": 4,
             "domains": ["clean", "contrast"], "batch_size": 8}
    old = sweep_stream({**synth, "order": "mixed"}, seed=0)
    new = sweep_stream({**synth, "order": "class-sorted", "schedule": "mixed"}, seed=0)
    assert old.spec.order == new.spec.order == "mixed" and "sample_order" not in old.spec.opts
    assert new.spec.opts["sample_order"] == "class-sorted"
    ys = torch.cat([b.labels for b in new])
    assert torch.equal(ys, torch.sort(ys).values) and all(b.sample_domains is not None for b in new)


def test_run_and_demo_options():
    import argparse

    from adawise.apps.demo import _sample_order
    from adawise.apps.experiment import _make_spec

    args = argparse.Namespace(data="/tmp", stream="imagenet-c", order="dirichlet:0.01", schedule="mixed",
                              corruptions="fog,snow", severity=3, batch_size=16, seed=0, limit_per_domain=None)
    spec = _make_spec(args, 32)
    assert spec.order == "mixed" and spec.opts["sample_order"] == "dirichlet:0.01" and spec.domains == ("fog", "snow")
    args.order, args.schedule = "gradual", None  # the old spelling
    assert _make_spec(args, 32).order == "gradual" and "sample_order" not in _make_spec(args, 32).opts
    args.order, args.schedule = "random", None
    with pytest.raises(Exception, match="unknown order"):
        _make_spec(args, 32)
    args = argparse.Namespace(data="/tmp", stream="imagenet-r", order="dirichlet", schedule="mixed", renditions=None,
                              batch_size=16, seed=0, limit_per_domain=None)
    spec = _make_spec(args, 32)
    assert spec.order == "mixed" and spec.opts["sample_order"] == "dirichlet:0.1"
    assert _sample_order("continual") == "shuffled" and _sample_order("dirichlet:0.01") == "dirichlet:0.01"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown order"):
        _sample_order("random")
