"""streams.corruptions against the ImageNet-C reference, all 15 corruptions x 5 severities.

The reference (``tests/imagenet_c_reference.py``): ``imagecorruptions-imaug`` 1.1.5 for twelve
corruptions, transcriptions of Hendrycks's ``make_imagenet_c.py`` for elastic_transform, frost and
pixelate; on the ten bundled photos at 224 x 224. Strength = mean |corrupted - clean|: ours must be
within 5% of the reference's at every severity, and the deterministic corruptions within PSNR 35 dB
of the reference's output (pixelate and jpeg_compression: its 8-bit images exactly). Random
corruptions average over draws, as many per corruption as its draw-to-draw spread needs for the 5%
band to be at least three standard errors wide (ours, being batched, takes four times the
reference's draws). Runs when the ``[reference]`` extra and ``imagecorruptions-imaug`` are installed
(``.ci/run`` installs them), is skipped otherwise. The full table with more draws: ``python
benchmarks/imagenet_c_table.py`` (docs/imagenet_c.md).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from imagenet_c_reference import missing_reason

from streams.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, SEVERITIES, corrupt

_MISSING = missing_reason()
pytestmark = [pytest.mark.reference, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

#: reference draws per photo (ours: four times as many); relative spread of one draw in parentheses
REFERENCE_DRAWS = {
    "gaussian_noise": 1, "shot_noise": 1, "impulse_noise": 1, "glass_blur": 1, "snow": 2,  # (< 0.03)
    "motion_blur": 4,  # (0.06: the angle)
    "fog": 12,  # (0.15: the plasma's min-max normalisation)
    "elastic_transform": 8,  # (0.13: the random affine)
    "frost": 40,  # (0.28: which photograph)
}
TOLERANCE = 0.05
MIN_PSNR = 35.0


@functools.lru_cache(maxsize=1)
def _photos() -> np.ndarray:
    from imagenet_c_reference import bundled_photos

    return bundled_photos()


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return _photos()


@functools.cache
def reference_outputs(name: str, severity: int) -> tuple[float, np.ndarray | None]:
    """The reference's strength at ``severity`` and, for a deterministic corruption, its outputs."""
    from imagenet_c_reference import reference_function

    photos = _photos()
    reference = reference_function(name)
    clean = photos.astype(np.float64) / 255
    outputs = [reference(p, severity, 7919 * d + i) / 255 for d in range(REFERENCE_DRAWS.get(name, 1))
               for i, p in enumerate(photos)]
    strength = float(np.mean([np.abs(o - clean[i % len(photos)]).mean() for i, o in enumerate(outputs)]))
    return strength, (None if name in RANDOM_CORRUPTIONS else np.stack(outputs))


def strengths(name: str, photos: np.ndarray, **options: object) -> list[tuple[float, float, float]]:
    """(reference strength, ours, PSNR of ours against the reference or nan) per severity."""
    from imagenet_c_reference import psnr

    clean = photos.astype(np.float64) / 255
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255
    rows = []
    for severity in SEVERITIES:
        ref, outputs = reference_outputs(name, severity)
        if name in RANDOM_CORRUPTIONS:  # 4 x the reference's draws per photo, in batches of 4 x 10 images
            batch = x.repeat(4, 1, 1, 1)
            ours = float(np.mean([
                float((corrupt(batch, name, severity, seed=5, indices=torch.arange(len(batch)) + len(batch) * d,
                               **options) - batch).abs().mean()) for d in range(REFERENCE_DRAWS.get(name, 1))]))
            quality = float("nan")
        else:
            ours_out = corrupt(x, name, severity).permute(0, 2, 3, 1).double().numpy()
            ours, quality = float(np.abs(ours_out - clean).mean()), psnr(ours_out, outputs)
        rows.append((ref, ours, quality))
    return rows


def _check(name: str, rows: list[tuple[float, float, float]]) -> None:
    table = ", ".join(f"s{s}: {o / r:.3f}" + ("" if np.isnan(q) else f" ({q:.1f} dB)")
                      for s, (r, o, q) in zip(SEVERITIES, rows, strict=True))
    for severity, (ref, ours, quality) in zip(SEVERITIES, rows, strict=True):
        assert abs(ours / ref - 1) <= TOLERANCE, f"{name} severity {severity}: strength ratio {table}"
        if name not in RANDOM_CORRUPTIONS:
            assert quality >= MIN_PSNR, f"{name} severity {severity}: PSNR {table}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_strength_within_five_percent_of_the_reference(name, photos):
    _check(name, strengths(name, photos))


def test_frost_from_the_photographs_is_within_the_band_too(photos):
    _check("frost", strengths("frost", photos, frost_source="photos"))


@pytest.mark.parametrize("name", ["pixelate", "jpeg_compression"])
def test_the_8_bit_corruptions_are_the_reference_exactly(name, photos):
    """pixelate (PIL's BOX on 8 bits) and, on the CPU, jpeg_compression (libjpeg) give the reference's
    8-bit images themselves, for a uint8 batch and for its float batch alike."""
    u = torch.from_numpy(photos).permute(0, 3, 1, 2)
    for severity in SEVERITIES:
        _, outputs = reference_outputs(name, severity)
        expected = np.round(outputs * 255).astype(np.uint8)
        assert np.array_equal(corrupt(u, name, severity).permute(0, 2, 3, 1).numpy(), expected), severity
        floats = corrupt(u.float() / 255, name, severity).permute(0, 2, 3, 1).double().numpy()
        assert np.array_equal(np.round(floats * 255).astype(np.uint8), expected), severity
