"""The random primitives behind streams.corruptions: the counter-based generator, Poisson inversion,
the glass-blur copy sweep and the frost bank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streams import _frost, _poisson
from streams import _imageops as ops
from streams._rng import Draws, image_keys, mix_, mix_int, stream_key


def test_mixer_is_splitmix64():
    # SplitMix64 seeded with 0: the first output is mix(0 + golden gamma) = 0xE220A8397B1DCDAF
    assert mix_int(0x9E3779B97F4A7C15) & (2**64 - 1) == 0xE220A8397B1DCDAF
    values = [0, 1, 2**31, 2**62 + 12345, -(2**63), 2**63 - 1, -7]
    tensor = mix_(torch.tensor(values, dtype=torch.int64))
    assert tensor.tolist() == [mix_int(v) for v in values]  # int64 wrapping = the unsigned arithmetic


def test_draws_have_the_right_distributions():
    draws = Draws(image_keys(3, torch.rand(3, 3, 4, 4)))
    u = draws.uniform("u", (400, 500))
    assert u.shape == (3, 400, 500) and float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.002 and abs(float(u.std()) - 12**-0.5) < 0.002
    shifted = draws.uniform("u", (400, 500), -45.0, 45.0)
    assert torch.allclose(shifted, u * 90 - 45, atol=1e-5)
    z = draws.normal("z", (333, 601))  # an odd count: the cosine and sine halves meet
    assert z.shape == (3, 333, 601)
    assert abs(float(z.mean())) < 0.005 and abs(float(z.std()) - 1) < 0.005
    assert abs(float((z**4).mean()) - 3) < 0.05 and float(z.abs().max()) < 7
    k = draws.integers("k", (200, 200), -4, 4)
    assert set(k.unique().tolist()) == set(range(-4, 4))
    assert abs(float(k.float().mean()) + 0.5) < 0.02  # numpy.random.randint(-4, 4): -4 .. 3
    flat = u.reshape(3, -1)
    assert float(torch.corrcoef(flat).fill_diagonal_(0).abs().max()) < 0.01  # images independent
    assert abs(float(torch.corrcoef(torch.stack([flat[0, :-1], flat[0, 1:]]))[0, 1])) < 0.01  # neighbours too


def test_keys_come_from_the_seed_and_the_index_or_the_content():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    by_index = image_keys(5, images, torch.tensor([7, 8, 9, 7]))
    assert by_index[0] == by_index[3] and len(set(by_index.tolist())) == 3
    assert torch.equal(image_keys(5, torch.zeros(4, 3, 2, 2), torch.tensor([7, 8, 9, 7])), by_index)
    assert not torch.equal(image_keys(6, images, torch.tensor([7, 8, 9, 7])), by_index)
    by_content = image_keys(5, images)
    assert len(set(by_content.tolist())) == 4
    assert torch.equal(image_keys(5, images[[2, 0]]), by_content[[2, 0]])
    nudged = images.clone()
    nudged[1, 2, 7, 7] = torch.nextafter(nudged[1, 2, 7, 7], torch.tensor(2.0))  # one ulp of one value
    assert image_keys(5, nudged)[1] != by_content[1]
    assert stream_key("snow:flakes") != stream_key("snow:angle")


@pytest.mark.parametrize(("rate", "max_rate"), [(0.0, 3), (0.03, 3), (0.5, 3), (2.99, 3), (4.2, 5), (11.97, 12),
                                                (24.5, 25), (59.9, 60)])
def test_poisson_counts_have_the_exact_distribution(rate, max_rate):
    draws = Draws(image_keys(1, torch.rand(4, 3, 2, 2)))
    counts = draws.poisson(f"p{rate}", torch.full((4, 250_000), rate), max_rate)
    n = counts.numel()
    assert abs(float(counts.mean()) - rate) < 4 * math.sqrt(max(rate, 1e-9) / n) + 1e-9
    assert abs(float(counts.var()) - rate) < 0.02 * max(rate, 0.05)
    observed = torch.bincount(counts.long().flatten()).double() / n
    for k in range(min(len(observed), 80)):
        expected = math.exp(k * math.log(rate) - rate - math.lgamma(k + 1)) if rate > 0 else float(k == 0)
        assert abs(float(observed[k]) - expected) < 5 * math.sqrt(expected / n) + 2e-5, k


def test_poisson_guide_path_equals_the_binary_search():
    draws = Draws(image_keys(2, torch.rand(2, 3, 2, 2)))
    for max_rate in (60, 25, 12, 5, 3):
        rate = torch.rand(2, 50_000, generator=torch.Generator().manual_seed(max_rate)) * max_rate
        z = draws.hashes(f"v{max_rate}", 50_000)
        v = ((z >> 40) + 2**23).to(torch.int32)
        counts = _poisson.poisson_counts(rate, v, torch.zeros_like(rate), max_rate)  # u_rest 0: no extra
        thresholds, _, width, stride = _poisson.tables(float(max_rate), "cpu")
        row = torch.floor(rate * 16).clamp_(0, thresholds.numel() // stride - 1).to(torch.int32)
        assert torch.equal(counts, _poisson._binary_search(thresholds, row * stride, v, width).float())


def _reference_sweep(image: np.ndarray, dy: np.ndarray, dx: np.ndarray, reach: int) -> np.ndarray:
    """make_imagenet_c.py's glass-blur loop, run as written on an H x W x C numpy array."""
    x = image.copy()
    height, width = x.shape[:2]
    for h in range(height - reach, reach, -1):
        for w in range(width - reach, reach, -1):
            h_prime, w_prime = h + dy[h, w], w + dx[h, w]
            x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


@pytest.mark.parametrize("reach", [1, 2, 4])
def test_copy_sweep_matches_the_reference_loop(reach):
    rng = np.random.default_rng(reach)
    image = rng.integers(0, 255, size=(23, 19, 3)).astype(np.uint8)
    dy = rng.integers(-reach, reach, size=(23, 19))
    dx = rng.integers(-reach, reach, size=(23, 19))
    expected = _reference_sweep(image, dy, dx, reach)
    source = ops.copy_chain_sources(torch.from_numpy(dy)[None], torch.from_numpy(dx)[None], reach)
    flat = torch.from_numpy(image).reshape(-1, 3)
    ours = flat[source[0]].reshape(23, 19, 3).numpy()
    assert np.array_equal(ours, expected)
    if reach > 1:  # the copies drift: a pixel's value comes from up and left of it on average
        assert not np.array_equal(expected, image)


def test_glass_blur_drifts_like_the_reference():
    draws = Draws(image_keys(0, torch.rand(2, 3, 4, 4)))
    dy, dx = draws.integers("dy", (224, 224), -4, 4), draws.integers("dx", (224, 224), -4, 4)
    source = ops.copy_chain_sources(dy, dx, 4)
    rows = torch.arange(224).repeat_interleave(224)
    drift = (source // 224 - rows)[:, (rows > 10) & (rows < 214)].float().mean()
    assert -1.0 < float(drift) < -0.7  # a swap would not drift at all (mean 0)


def test_frost_texture_bank_matches_the_photographs_statistics():
    images, sizes, _ = _frost.bank("texture", "cpu")
    assert tuple(images.shape[:2]) == (5, 3) and sizes.tolist() == [list(s) for s in _frost.PHOTO_SIZES]
    for i, (h, w) in enumerate(_frost.PHOTO_SIZES):
        image = (images[i, :, :h, :w].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for ours, reference in zip(_frost.profile_of(image), _frost.PROFILES[i], strict=True):
            assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= 2
    layer = _frost.frost_layer(Draws(image_keys(0, torch.rand(256, 3, 2, 2))), 224, 224)
    means = layer.mean(dim=(1, 2, 3))
    assert 0.58 < float(means.mean()) < 0.68  # the five photographs' crops average about 0.64
    assert float(means.std()) > 0.1  # one photograph per draw: crops differ as much as there


def test_frost_profiles_are_those_of_the_installed_photographs():
    try:
        photos = _frost.read_photos()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    assert tuple(_frost.profile_of(p) for p in photos) == _frost.PROFILES
    assert [p.shape[:2] for p in photos] == list(_frost.PHOTO_SIZES)


def test_frost_layer_at_other_sizes():
    draws = Draws(image_keys(0, torch.rand(3, 3, 2, 2)))
    for h, w in ((28, 28), (64, 96), (300, 300), (224, 500)):
        layer = _frost.frost_layer(draws, h, w)
        assert layer.shape == (3, 3, h, w) and float(layer.min()) >= 0 and float(layer.max()) <= 1
