"""Property-based tests (hypothesis) of interpolate / WeightSpace and of the stream builders.

interpolate: for every α in [0, 1] each floating value lies between its endpoints, α = 0 and α = 1 give the
endpoints exactly, interpolate(a, b, α) == interpolate(b, a, 1 − α) to rounding, integer and bool buffers
come from the first state dict, dtypes and shapes are kept, inputs are not modified; WeightSpace agrees with
it over any sequence of α. Streams (from_tensors, concat, the corruption schedules): every sample appears
exactly once per domain and in order where the order is fixed, batches are full except a domain's last,
indices run 0, 1, 2, ..., and the same spec rebuilds the same batches.
"""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from adawise.core.weights import WeightSpace, interpolate
from streams.base import StreamSpec, TensorStream, concat, from_tensors
from streams.schedules import GRADUAL_SEVERITIES, corruption_spec, corruption_stream

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
alphas = st.floats(0.0, 1.0, allow_nan=False)


# ----------------------------------------------------------------------------- state dicts


@st.composite
def state_dict_pairs(draw):
    """Two state dicts with the same keys, shapes and dtypes (floats of four widths, int64 and bool)."""
    n = draw(st.integers(1, 4))
    sd0, sd1 = {}, {}
    for i in range(n):
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
        kind = draw(st.sampled_from(["float32", "float64", "float16", "bfloat16", "int64", "bool"]))
        if kind == "bool":
            a, b = (torch.from_numpy(draw(hnp.arrays(np.bool_, shape))) for _ in range(2))
        elif kind == "int64":
            a, b = (torch.from_numpy(draw(hnp.arrays(np.int64, shape, elements=st.integers(-1000, 1000))))
                    for _ in range(2))
        else:
            elements = st.floats(-1e4, 1e4, allow_nan=False, width=32)
            a, b = (torch.from_numpy(draw(hnp.arrays(np.float32, shape, elements=elements))).to(getattr(torch, kind))
                    for _ in range(2))
        sd0[f"layer{i}.{kind}"], sd1[f"layer{i}.{kind}"] = a, b
    return sd0, sd1


def _tolerance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rounding allowance of an fp32 (fp64) lerp, plus one step of the output dtype for half types."""
    work = torch.promote_types(a.dtype, torch.float32)
    scale = torch.maximum(a.double().abs(), b.double().abs())
    # relative rounding, plus one subnormal step (below smallest_normal the spacing is absolute)
    tol = 4 * torch.finfo(work).eps * scale + torch.finfo(work).smallest_normal * torch.finfo(work).eps
    if a.dtype in (torch.float16, torch.bfloat16):
        tol = tol + torch.finfo(a.dtype).eps * scale + 2 * torch.finfo(a.dtype).smallest_normal
    return tol


@FAST
@given(state_dict_pairs(), alphas)
def test_interpolate_stays_between_the_endpoints(pair, alpha) -> None:
    sd0, sd1 = pair
    before = copy.deepcopy(pair)
    out = interpolate(sd0, sd1, alpha)
    assert list(out) == list(sd0)
    for key, t0 in sd0.items():
        t1, mixed = sd1[key], out[key]
        assert mixed.dtype == t0.dtype and mixed.shape == t0.shape
        if not t0.is_floating_point():
            assert torch.equal(mixed, t0)  # integer and bool buffers: from sd0, untouched
            continue
        lo, hi = torch.minimum(t0.double(), t1.double()), torch.maximum(t0.double(), t1.double())
        m = mixed.double()
        assert bool((m >= lo).all() and (m <= hi).all()), (key, alpha)  # rounding never leaves [lo, hi]
        exact = t0.double() + alpha * (t1.double() - t0.double())
        assert bool(((m - exact).abs() <= _tolerance(t0, t1)).all()), (key, alpha)
    for sd, old in zip(pair, before, strict=True):  # inputs not modified
        assert all(torch.equal(sd[k], old[k]) for k in sd)


@FAST
@given(state_dict_pairs())
def test_interpolate_endpoints_are_exact(pair) -> None:
    sd0, sd1 = pair
    zero, one = interpolate(sd0, sd1, 0.0), interpolate(sd0, sd1, 1.0)
    for key, t0 in sd0.items():
        assert torch.equal(zero[key], t0)
        assert torch.equal(one[key], sd1[key] if t0.is_floating_point() else t0)


@FAST
@given(state_dict_pairs(), alphas)
def test_interpolate_is_symmetric(pair, alpha) -> None:
    sd0, sd1 = pair
    ab, ba = interpolate(sd0, sd1, alpha), interpolate(sd1, sd0, 1.0 - alpha)
    for key, t0 in sd0.items():
        if t0.is_floating_point():
            tol = 2 * _tolerance(t0, sd1[key])
            assert bool(((ab[key].double() - ba[key].double()).abs() <= tol).all()), (key, alpha)
        else:  # integer buffers come from the first argument, whichever it is
            assert torch.equal(ab[key], t0) and torch.equal(ba[key], sd1[key])


@FAST
@given(state_dict_pairs(), alphas, alphas)
def test_interpolate_is_monotone_in_alpha(pair, a1, a2) -> None:
    sd0, sd1 = pair
    lo, hi = sorted((a1, a2))
    first, second = interpolate(sd0, sd1, lo), interpolate(sd0, sd1, hi)
    for key, t0 in sd0.items():
        if t0.is_floating_point():
            step = (second[key].double() - first[key].double()) * torch.sign(sd1[key].double() - t0.double())
            assert bool((step >= -_tolerance(t0, sd1[key])).all()), (key, lo, hi)


def _module(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].num_batches_tracked.fill_(seed + 3)
    return model.eval()


@settings(max_examples=25, deadline=None)
@given(st.lists(alphas, min_size=1, max_size=6))
def test_weightspace_agrees_with_interpolate_over_any_sequence(sequence) -> None:
    sd0, sd1 = _module(0).state_dict(), _module(1).state_dict()
    live = _module(2)
    space = WeightSpace(live, sd0, sd1)
    for alpha in sequence:
        space.set_alpha(alpha)
        ref = interpolate(sd0, sd1, alpha)
        for key, value in live.state_dict().items():
            assert torch.allclose(value, ref[key], rtol=0, atol=1e-6) if value.is_floating_point() else torch.equal(
                value, ref[key])


# ----------------------------------------------------------------------------- streams


def _labelled(n: int, size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images whose label is their position (so a batch says which samples it holds)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n)


def _runs(batches) -> list[tuple[str, list]]:
    """Contiguous stretches of one domain: (domain, its batches)."""
    runs: list[tuple[str, list]] = []
    for b in batches:
        if not runs or runs[-1][0] != b.domain:
            runs.append((b.domain, []))
        runs[-1][1].append(b)
    return runs


def _check_batches(batches, expected: list[tuple[str, int]], batch_size: int) -> None:
    """Indices 0, 1, ...; domains in the expected stretches of the expected sizes; a stretch's batches are
    full except its last (a batch never straddles two domains); never empty."""
    assert [b.index for b in batches] == list(range(len(batches)))
    runs = _runs(batches)
    assert [(d, sum(len(b.labels) for b in run)) for d, run in runs] == expected
    for _, run in runs:
        sizes = [len(b.labels) for b in run]
        assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    assert all(len(b.images) == len(b.labels) for b in batches)


@FAST
@given(st.integers(1, 40), st.integers(1, 12))
def test_from_tensors_yields_every_sample_once_in_order(n, batch_size) -> None:
    images, labels = _labelled(n)
    stream = from_tensors(images, labels, "d", batch_size)
    batches = list(stream)
    assert len(batches) == len(stream) == math.ceil(n / batch_size)
    assert torch.equal(torch.cat([b.labels for b in batches]), labels)
    assert torch.equal(torch.cat([b.images for b in batches]), images)
    _check_batches(batches, [("d", n)], batch_size)
    again = list(stream)  # iterating twice gives the identical sequence
    assert all(torch.equal(a.images, b.images) and a.index == b.index for a, b in zip(batches, again, strict=True))


@FAST
@given(st.lists(st.integers(1, 15), min_size=1, max_size=5), st.integers(1, 6))
def test_concat_keeps_order_and_numbers_batches_across_parts(lengths, batch_size) -> None:
    images, labels = _labelled(sum(lengths))
    parts, start = [], 0
    for i, n in enumerate(lengths):
        parts.append(TensorStream(images[start:start + n], labels[start:start + n], f"d{i}", batch_size))
        start += n
    stream = concat(*parts)
    batches = list(stream)
    assert len(batches) == len(stream) == sum(math.ceil(n / batch_size) for n in lengths)
    assert torch.equal(torch.cat([b.labels for b in batches]), labels)  # every sample once, in order
    assert stream.domains == [f"d{i}" for i in range(len(lengths))]
    _check_batches(batches, [(f"d{i}", n) for i, n in enumerate(lengths)], batch_size)
    for b in batches:  # a batch never straddles two parts
        assert len({int(y) for y in b.labels} & set(range(sum(lengths)))) == len(b.labels)


CHEAP = ["clean", "gaussian_noise", "brightness", "contrast", "pixelate", "invert", "motion_blur"]


@st.composite
def schedules(draw):
    domains = draw(st.lists(st.sampled_from(CHEAP), min_size=1, max_size=3, unique=True))
    order = draw(st.sampled_from(["continual", "reset_each_shift", "gradual", "mixed"]))
    if order == "gradual":
        domains = domains[:2]
    return dict(corruptions=domains, order=order, severity=draw(st.integers(1, 5)),
                batch_size=draw(st.integers(1, 9)), seed=draw(st.integers(0, 2**31)),
                shuffle=draw(st.booleans()), limit_per_domain=draw(st.none() | st.integers(1, 12)))


@SLOW
@given(schedules(), st.integers(1, 14))
def test_corruption_schedules_cover_every_sample_once_and_repeat(kw, n) -> None:
    images, labels = _labelled(n, size=8)
    spec = corruption_spec(**kw)
    batches = list(corruption_stream(images, labels, spec))
    again = list(corruption_stream(images, labels, corruption_spec(**kw)))  # the spec alone rebuilds it
    assert len(batches) == len(again) == len(corruption_stream(images, labels, spec))
    for a, b in zip(batches, again, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert (a.domain, a.index) == (b.domain, b.index)
    for b in batches:
        assert b.images.shape[1:] == (3, 8, 8) and bool(torch.isfinite(b.images).all())
        assert float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0

    per_domain = min(n, kw["limit_per_domain"] or n)
    if kw["order"] == "gradual":
        names = [f"{c}@{s}" if c not in ("clean", "invert") else c for c in kw["corruptions"]
                 for s in (GRADUAL_SEVERITIES if c not in ("clean", "invert") else (0,))]
    elif kw["order"] == "mixed":
        names = ["mixed"]
    else:
        names = list(kw["corruptions"])
    if kw["order"] == "mixed":
        counts = Counter(int(y) for b in batches for y in b.labels)
        assert sum(counts.values()) == per_domain * len(kw["corruptions"])
        if kw["limit_per_domain"] is None:  # every (corruption, image) pair once
            assert counts == Counter({i: len(kw["corruptions"]) for i in range(n)})
        _check_batches(batches, [("mixed", per_domain * len(kw["corruptions"]))], kw["batch_size"])
        return
    # each domain (a severity of the gradual schedule once per visit) one contiguous stretch, in order
    _check_batches(batches, [(name, per_domain) for name in names], kw["batch_size"])
    for _, run in _runs(batches):
        seen = [int(y) for b in run for y in b.labels]
        assert len(seen) == len(set(seen)) == per_domain  # each sample at most once per stretch
        if not kw["shuffle"]:
            assert seen == sorted(seen)  # the base order is kept
        if kw["limit_per_domain"] is None:
            assert sorted(seen) == list(range(n))


@FAST
@given(st.dictionaries(st.sampled_from(["root", "severity", "image_size", "shuffle"]),
                       st.integers(0, 9) | st.booleans(), max_size=4), st.integers(0, 99))
def test_spec_hash_depends_on_content_not_on_option_order(options, seed) -> None:
    a = StreamSpec.make("corruptions", ("fog",), batch_size=4, seed=seed, **options)
    b = StreamSpec.make("corruptions", ("fog",), batch_size=4, seed=seed, **dict(reversed(list(options.items()))))
    assert a == b and a.config_hash() == b.config_hash()
    other = StreamSpec.make("corruptions", ("fog",), batch_size=4, seed=seed + 1, **options)
    assert other.config_hash() != a.config_hash()


@pytest.mark.parametrize("bad", [0, -3])
def test_batch_size_below_one_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        from_tensors(*_labelled(4), batch_size=bad)
