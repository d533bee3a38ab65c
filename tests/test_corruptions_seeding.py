"""The per-image seeding contract of streams.corruptions.corrupt and the streams that call it.

With ``indices`` image i's corruption depends only on (seed, indices[i]); without, on (seed, its
content); never on the batch size, the order or the other images of the batch.
"""

from __future__ import annotations

import pytest
import torch

from streams.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, corrupt

RANDOM = sorted(RANDOM_CORRUPTIONS)


def photos_like(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    """n different smooth-ish images in [0.05, 0.95]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return (0.8 * smooth + 0.2 * torch.rand(n, 3, size, size, generator=gen)).clamp(0.05, 0.95)


ATOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same corruption up to float rounding: at most 0.05% of the values differ by more than 1e-5.

    The random draws are the same integers whatever the batch; torch's vectorised CPU kernels may
    round a value differently by one ulp depending on its position in the tensor, and where that
    value sits on a threshold (snow's flake cut-off, its 8-bit rounding) a few pixels change. A draw
    that depended on the batch would change nearly every value.
    """
    return bool(((a - b).abs() > ATOL).float().mean() < 5e-4)


@pytest.mark.parametrize("name", RANDOM)
def test_with_indices_an_image_is_corrupted_the_same_at_any_batch_size_and_order(name):
    x = photos_like(64)
    ids = torch.arange(1000, 1064)
    full = corrupt(x, name, 3, seed=11, indices=ids)
    for size in (1, 4, 8):
        parts = torch.cat([corrupt(x[i : i + size], name, 3, seed=11, indices=ids[i : i + size])
                           for i in range(0, 16, size)])
        assert _close(parts, full[:16]), size
    reverse = torch.arange(63, -1, -1)
    assert _close(corrupt(x[reverse], name, 3, seed=11, indices=ids[reverse]), full[reverse])
    shuffle = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    assert _close(corrupt(x[shuffle], name, 3, seed=11, indices=ids[shuffle]), full[shuffle])
    # another image next to it changes nothing; another index or seed changes the draw
    mixed = torch.cat([x[:1], photos_like(3, seed=9)])
    assert _close(corrupt(mixed, name, 3, seed=11, indices=[1000, 7, 8, 9])[0], full[0])
    assert not torch.equal(corrupt(x[:1], name, 3, seed=11, indices=[1001]), full[:1])
    assert not torch.equal(corrupt(x[:1], name, 3, seed=12, indices=[1000]), full[:1])


@pytest.mark.parametrize("name", RANDOM)
def test_without_indices_the_draw_follows_the_content(name):
    x = photos_like(8, seed=2)
    full = corrupt(x, name, 4, seed=3)
    assert _close(torch.cat([corrupt(x[i : i + 1], name, 4, seed=3) for i in range(8)]), full)
    assert _close(corrupt(x.flip(0), name, 4, seed=3), full.flip(0))
    twice = corrupt(torch.cat([x[:1], x[:1]]), name, 4, seed=3)
    assert torch.equal(twice[0], twice[1])  # equal content, no indices: the same corruption
    nudged = x[:1].clone()
    nudged[0, 0, 0, 0] += 1e-3
    assert not torch.equal(corrupt(nudged, name, 4, seed=3)[0, :, 1:, 1:], full[0, :, 1:, 1:])


@pytest.mark.parametrize("name", RANDOM)
def test_duplicated_content_with_different_indices_gets_different_draws(name):
    x = photos_like(1, seed=4).expand(4, -1, -1, -1).contiguous()
    out = corrupt(x, name, 5, seed=0, indices=[0, 1, 2, 0])
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])
    assert torch.equal(out[0], out[3])  # the same index: the same draw


def test_two_images_of_a_batch_never_share_a_noise_field():
    grey = torch.full((6, 3, 32, 32), 0.5)
    grey[:, :, 0, 0] = torch.linspace(0.1, 0.6, 6)[:, None]  # six different images
    noise = (corrupt(grey, "gaussian_noise", 5, seed=0) - grey)[:, :, 1:, 1:].reshape(6, -1)
    correlation = torch.corrcoef(noise)
    off_diagonal = correlation[~torch.eye(6, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.05


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - RANDOM_CORRUPTIONS))
def test_deterministic_corruptions_ignore_seed_and_indices(name):
    x = photos_like(3)
    assert torch.equal(corrupt(x, name, 2, seed=0), corrupt(x, name, 2, seed=9, indices=[5, 6, 7]))


def test_shifts_and_apply_shift_seed_per_image():
    from streams.shifts import apply_shift, get_shift

    x = photos_like(10, size=28)
    for name in ("rotate", "gaussian_noise", "elastic_transform", "snow"):
        whole = apply_shift(x, name, seed=4, indices=torch.arange(100, 110))
        assert _close(apply_shift(x, name, seed=4, indices=torch.arange(100, 110), chunk=3), whole), name
        assert _close(get_shift(name)(x[5:7], seed=4, indices=[105, 106]), whole[5:7]), name
        default = apply_shift(x, name, seed=4)  # default indices: positions in the set
        assert _close(apply_shift(x, name, seed=4, chunk=4), default), name


def test_corruption_stream_corrupts_a_base_image_the_same_at_any_batch_size():
    from streams.schedules import build_stream, corruption_spec

    gen = torch.Generator().manual_seed(0)
    images = photos_like(20, size=24)
    labels = torch.arange(20)  # label = base index, to find each image again
    seen: dict[int, dict[int, torch.Tensor]] = {}
    for batch_size in (3, 8, 20):
        spec = corruption_spec(["glass_blur", "fog"], order="continual", severity=4, batch_size=batch_size, seed=6)
        for batch in build_stream(spec, images=images, labels=labels):
            for image, label in zip(batch.images, batch.labels.tolist(), strict=True):
                seen.setdefault(batch_size, {})[(batch.domain, label)] = image
    for key, image in seen[20].items():
        assert _close(seen[3][key], image) and _close(seen[8][key], image), key
    assert gen is not None
