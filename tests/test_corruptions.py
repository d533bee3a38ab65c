"""Tests of streams.corruptions: the 15 ImageNet-C corruptions x 5 severities as batched torch ops."""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streams import _imageops as ops
from streams.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, corrupt, corruption_grid

EXPECTED_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)


def textured(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Mid-grey image with structure at every scale (bilinear value noise, octaves 2..size/2 cells)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.full((batch, 3, size, size), 0.5)
    cells = 2
    while cells <= size // 2:
        coarse = torch.rand((batch, 3, cells + 1, cells + 1), generator=gen) * 2 - 1
        out += 0.1 * (cells / 2) ** -0.3 * F.interpolate(coarse, size=(size, size), mode="bilinear",
                                                         align_corners=True)
        cells *= 2
    return out.clamp(0.05, 0.95)


BATCHES = {"4x32": textured(4, 32), "2x64": textured(2, 64, seed=1)}


def test_names_in_reference_order():
    assert CORRUPTIONS == EXPECTED_NAMES
    assert RANDOM_CORRUPTIONS <= set(CORRUPTIONS)


#: severities after which the reference itself does not get stronger (mean |corrupted - clean| on the
#: bundled photos, docs/imagenet_c.md): snow 2 -> 3 (0.254 -> 0.253), frost 3 -> 4 (0.309 -> 0.297),
#: elastic_transform 2 -> 3 (rows 1-2 are large smooth warps, rows 3-5 small local jitter); fog: the
#: min-max normalisation of each random plasma map moves the amount of fog from draw to draw by about
#: as much as severities 2-5 differ (0.197, 0.211, 0.210, 0.219), so four small images show 1 < 2 only
REFERENCE_NOT_INCREASING = {"snow": {2}, "frost": {3}, "fog": {2, 3, 4}, "elastic_transform": {2}}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_keeps_shape_range_and_follows_the_reference_order(name):
    for label, x in BATCHES.items():
        distances = []
        for severity in range(1, 6):
            y = corrupt(x, name, severity, seed=0)
            assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
            assert torch.isfinite(y).all()
            assert y.min() >= 0 and y.max() <= 1
            distances.append((y - x).abs().mean().item())
        skip = REFERENCE_NOT_INCREASING.get(name, set())
        assert all(distances[s] > distances[s - 1] for s in range(1, 5) if s not in skip), (label, distances)
        assert distances[0] > 0, (label, distances)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_external_check_uniform_noise_batch(name):
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    distances = []
    for severity in range(1, 6):
        y = corrupt(x, name, severity, seed=0)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        distances.append((y - x).abs().mean().item())
    if name == "elastic_transform":  # as in the reference: severity 1 (a large warp) beats 5 (local jitter)
        assert distances[0] > distances[4] > distances[2]
    else:
        assert distances[4] > distances[0]
    assert torch.equal(corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=0))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_seed_reproducible_and_seed_dependent(name):
    x = BATCHES["4x32"]
    before = x.clone()
    first = corrupt(x, name, 3, seed=0)
    assert torch.equal(first, corrupt(x, name, 3, seed=0))
    assert torch.equal(x, before), "input must not be modified"
    other = corrupt(x, name, 3, seed=1)
    if name in RANDOM_CORRUPTIONS:
        assert not torch.equal(first, other)
    else:
        assert torch.equal(first, other)


@pytest.mark.parametrize("shape", [(2, 3, 33, 45), (1, 3, 28, 28), (1, 3, 9, 16)])
def test_odd_and_non_square_sizes(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    for name in CORRUPTIONS:
        y = corrupt(x, name, 5, seed=2)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name


UINT8_BATCHES = {
    "5x28": torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
    "2x37x50": (textured(2, 50, seed=3)[..., :37, :] * 255).round().to(torch.uint8),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_uint8_images_give_the_truncated_float_result(name):
    """uint8 in, uint8 out: exactly np.uint8(255 * result) (+ 1e-3) of the float batch u.float() / 255, at
    every severity, with and without indices, for any memory layout, also with jpeg_roundtrip."""
    for label, u in UINT8_BATCHES.items():
        ids = torch.arange(len(u)) * 7 + 3
        for severity in range(1, 6):
            y = corrupt(u, name, severity, seed=4, indices=ids)
            assert y.dtype == torch.uint8 and y.shape == u.shape and y.is_contiguous(), (label, severity)
            expected = torch.floor(corrupt(u.float() / 255, name, severity, seed=4, indices=ids) * 255.0 + 1e-3)
            assert torch.equal(y, expected.to(torch.uint8)), (label, severity)
        channels_last = u.contiguous(memory_format=torch.channels_last)
        assert torch.equal(corrupt(channels_last, name, 3, seed=4), corrupt(u, name, 3, seed=4)), label
        rounded = corrupt(u, name, 2, seed=1, jpeg_roundtrip=True)
        expected = torch.floor(corrupt(u.float() / 255, name, 2, seed=1, jpeg_roundtrip=True) * 255.0 + 1e-3)
        assert torch.equal(rounded, expected.to(torch.uint8)), label
    dot = torch.full((2, 3, 1, 1), 200, dtype=torch.uint8)
    assert corrupt(dot, name, 5).data_ptr() != dot.data_ptr()
    assert corrupt(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), name, 1).dtype == torch.uint8


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_channels_last_and_strided_float_batches_give_the_same_output(name):
    x = BATCHES["4x32"]
    expected = corrupt(x, name, 3, seed=6)
    assert torch.equal(corrupt(x.contiguous(memory_format=torch.channels_last), name, 3, seed=6), expected)
    wide = torch.cat([x, x], dim=-1)[..., ::2]  # a strided view of other values
    assert torch.equal(corrupt(wide, name, 3, seed=6), corrupt(wide.contiguous(), name, 3, seed=6))


def test_uint8_input_draws_match_the_float_input_without_indices():
    """Without indices the image key hashes the content as u.float() / 255, so uint8 and float batches of
    the same images get the same draws (a noise corruption is where that shows)."""
    u = UINT8_BATCHES["5x28"]
    noisy = corrupt(u, "gaussian_noise", 3, seed=9)
    assert torch.equal(noisy, torch.floor(corrupt(u.float() / 255, "gaussian_noise", 3, seed=9) * 255.0 + 1e-3).byte())
    assert not torch.equal(noisy, corrupt(u, "gaussian_noise", 3, seed=10))


def test_dtype_int_like_severity_tiny_and_empty_batch():
    x = textured(1, 32).double()
    assert corrupt(x, "fog", 2).dtype == torch.float64
    assert corrupt(x.half(), "contrast", 2).dtype == torch.float16
    assert torch.equal(corrupt(x, "fog", np.int64(2)), corrupt(x, "fog", 2))
    tiny = torch.rand(1, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    assert all(corrupt(tiny, name, 5).shape == tiny.shape for name in CORRUPTIONS)
    dot = torch.rand(2, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    for name in CORRUPTIONS:  # a new tensor, never the input (a 1-pixel resize is the identity)
        assert corrupt(dot, name, 5).data_ptr() != dot.data_ptr(), name
    empty = torch.zeros(0, 3, 16, 16)
    assert corrupt(empty, "snow", 4).shape == (0, 3, 16, 16)


def test_clear_errors():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="valid names: gaussian_noise, shot_noise"):
        corrupt(x, "speckle_noise", 1)
    for severity in (0, 6, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
            corrupt(x, "fog", severity)
    for shape in [(3, 16, 16), (2, 1, 16, 16), (2, 4, 16, 16), (1, 2, 3, 16, 16)]:
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*3 channels"):
            corrupt(torch.rand(shape), "fog", 1)
    for dtype in (torch.int64, torch.int16, torch.bool):
        with pytest.raises(TypeError, match=r"floating point in \[0, 1\] or uint8.*images.float\(\) / 255"):
            corrupt(torch.zeros(1, 3, 8, 8, dtype=dtype), "fog", 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        corrupt(np.zeros((1, 3, 8, 8)), "fog", 1)
    with pytest.raises(ValueError, match="frost_source"):
        corrupt(x, "frost", 1, frost_source="paint")


@pytest.mark.parametrize("seed", [1.5, True, "3", None, np.float64(2.0)])
def test_seed_must_be_an_integer(seed):
    with pytest.raises(TypeError, match=r"seed must be a non-negative integer.*int\(seed\)"):
        corrupt(torch.rand(1, 3, 8, 8), "gaussian_noise", 1, seed=seed)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70])
def test_seed_must_be_in_range(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 2\*\*63 - 1.*seed % 2\*\*63"):
        corrupt(torch.rand(1, 3, 8, 8), "gaussian_noise", 1, seed=seed)


def test_large_and_numpy_seeds_work():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupt(x, "fog", 1, seed=np.int64(7)), corrupt(x, "fog", 1, seed=7))
    assert not torch.equal(corrupt(x, "fog", 1, seed=2**63 - 1), corrupt(x, "fog", 1, seed=7))


def test_values_outside_unit_range_are_refused_unless_clamped():
    normalised = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.45) / 0.27
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*from -1\.\d+ to 2\.\d+.*normalised.*clamp=True"):
        corrupt(normalised, "contrast", 1)
    clipped = normalised.clamp(0, 1)
    assert torch.equal(corrupt(normalised, "contrast", 1, clamp=True), corrupt(clipped, "contrast", 1))
    nan = clipped.clone()
    nan[0, 1, 2, 3] = float("nan")
    for clamp in (False, True):
        with pytest.raises(ValueError, match="1 NaN value.*nan_to_num"):
            corrupt(nan, "gaussian_noise", 1, clamp=clamp)


def test_indices_are_checked():
    x = torch.rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"one index per image: shape \(3,\)"):
        corrupt(x, "gaussian_noise", 1, indices=[0, 1])
    with pytest.raises(ValueError, match="non-negative"):
        corrupt(x, "gaussian_noise", 1, indices=torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="from 0 to 2"):
        corrupt(x, "gaussian_noise", 1, indices=[0, -1, 2])
    with pytest.raises(TypeError, match="indices must be integers"):
        corrupt(x, "gaussian_noise", 1, indices=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="indices must be integers"):
        corrupt(x, "gaussian_noise", 1, indices=[0, 1.5, 2])
    assert torch.equal(corrupt(x, "fog", 2, indices=np.array([4, 5, 6])), corrupt(x, "fog", 2, indices=[4, 5, 6]))


# ----- fidelity of the pieces against the libraries the reference called -------------------------

def test_noise_statistics():
    grey = torch.full((2, 3, 64, 64), 0.5)
    noisy = corrupt(grey, "gaussian_noise", 1)
    assert abs((noisy - grey).std().item() - 0.08) < 0.005
    impulse = corrupt(grey, "impulse_noise", 5)
    assert abs((impulse != grey).float().mean().item() - 0.27) < 0.02
    assert set(impulse[impulse != grey].unique().tolist()) == {0.0, 1.0}
    shot = corrupt(grey, "shot_noise", 5)  # min(Poisson(1.5) / 3, 1)
    expected = sum(min(k / 3, 1.0) * math.exp(-1.5) * 1.5**k / math.factorial(k) for k in range(40))
    assert abs(shot.mean().item() - expected) < 0.01
    assert set((shot * 3).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_colour_corruptions_match_reference_formulas():
    x = textured(2, 32)
    contrast = corrupt(x, "contrast", 1)
    means = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(contrast, (x - means) * 0.4 + means, atol=1e-6)
    grey = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(corrupt(grey, "brightness", 2), torch.full_like(grey, 0.5))
    colour = torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    bright = corrupt(colour, "brightness", 1)  # HSV: V 0.8 -> 0.9, hue and saturation kept
    assert torch.allclose(bright[0, :, 0, 0], torch.tensor([0.225, 0.45, 0.9]), atol=1e-6)


def _pil_pixelate(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """make_imagenet_c.py's pixelate on a uint8 ``H x W x 3`` array: PIL BOX down, BOX back up."""
    from PIL import Image

    image = Image.fromarray(array)
    return np.asarray(image.resize((width, height), Image.BOX).resize(image.size, Image.BOX))


def test_pixelate_is_pil_box_on_8_bits_on_every_path():
    """Both implementations (PIL's downscale + one gather on the CPU; the fixed-point int32 emulation
    the other devices run, here on the CPU) give PIL's bytes exactly, at odd and non-square sizes, with
    both orders of the passes (Pillow 13 starts with the vertical one when the height shrinks most)."""
    from streams import _pixelate

    rng = np.random.default_rng(0)
    shapes = [(50, 50, 30, 30), (37, 53, 14, 21), (53, 37, 21, 14), (64, 20, 16, 18), (90, 12, 22, 11),
              (9, 31, 3, 29), (5, 7, 1, 1), (1, 1, 1, 1), (28, 28, 11, 11), (224, 224, 67, 67), (30, 30, 30, 12)]
    for h, w, height, width in shapes:
        images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        expected = np.stack([_pil_pixelate(image, height, width) for image in images])
        levels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        ours = _pixelate.pixelate(levels, height, width).permute(0, 2, 3, 1).numpy()
        emulated = _pixelate._upscale(_pixelate._downscale_torch(levels, height, width), h, w, None, False)
        assert np.array_equal(ours, expected), (h, w, height, width)
        assert np.array_equal(emulated.permute(0, 2, 3, 1).numpy(), expected), (h, w, height, width)
    # floats are rounded to 8-bit levels first (half up), the result is levels / 255
    x = torch.rand(2, 3, 40, 44, generator=torch.Generator().manual_seed(0))
    levels = (x * 255 + 0.5).floor().to(torch.uint8)
    assert torch.equal(_pixelate.pixelate(x, 16, 17), _pixelate.pixelate(levels, 16, 17).float() * np.float32(1 / 255))


def test_pixelate_through_corrupt_is_the_reference_exactly():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 60, 45, 3), dtype=np.uint8)
    u = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    for severity, factor in enumerate((0.6, 0.5, 0.4, 0.3, 0.25), start=1):
        expected = np.stack([_pil_pixelate(image, int(60 * factor), int(45 * factor)) for image in images])
        assert np.array_equal(corrupt(u, "pixelate", severity).permute(0, 2, 3, 1).numpy(), expected), severity
        floats = corrupt(u.float() / 255, "pixelate", severity)
        assert torch.equal(_levels(floats).to(torch.uint8), torch.from_numpy(expected).permute(0, 3, 1, 2)), severity


def _levels(x: torch.Tensor) -> torch.Tensor:
    """8-bit levels of an image in [0, 1] (equal levels: the same 8-bit image)."""
    return (x.double() * 255).round()


def _pil_jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32) / 255


def test_jpeg_is_libjpeg_on_the_cpu_and_close_to_it_elsewhere():
    from streams._jpeg import simulate_jpeg

    x = textured(2, 48)
    x = (x * 255).round() / 255
    arrays = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for severity, quality in enumerate((25, 18, 15, 10, 7), start=1):
        reference = torch.from_numpy(np.stack([_pil_jpeg(a, quality) for a in arrays])).permute(0, 3, 1, 2)
        assert torch.equal(_levels(corrupt(x, "jpeg_compression", severity)), _levels(reference)), quality
        assert (simulate_jpeg(x, quality) - reference).abs().mean() < 0.006, quality  # the CUDA path
        u = torch.from_numpy(arrays).permute(0, 3, 1, 2)  # channels-last uint8, as decoders produce it
        for images in (u, u.contiguous()):
            assert torch.equal(corrupt(images, "jpeg_compression", severity), _levels(reference).to(torch.uint8))


def test_jpeg_roundtrip_matches_how_the_imagenet_c_files_were_saved():
    x = textured(2, 40, seed=4)
    for name in ("fog", "contrast"):
        plain = corrupt(x, name, 3, seed=2)
        saved = corrupt(x, name, 3, seed=2, jpeg_roundtrip=True)
        # make_imagenet_c.py: Image.fromarray(np.uint8(img)).save(path, quality=85, optimize=True)
        truncated = np.uint8(plain.permute(0, 2, 3, 1).double().numpy() * 255 + 1e-3)
        expected = torch.from_numpy(np.stack([_pil_jpeg(a, 85) for a in truncated])).permute(0, 3, 1, 2)
        assert saved.shape == x.shape and saved.dtype == x.dtype
        assert torch.equal(_levels(saved), _levels(expected)), name
        assert 0 < (saved - plain).abs().mean() < 0.02


def test_filters_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    image = rng.random((37, 45)).astype(np.float32)
    x = torch.from_numpy(image)[None, None]
    for sigma, mode, scipy_mode, truncate in ((0.7, "replicate", "nearest", 4.0), (2.4, "reflect", "reflect", 3.0),
                                              (60.0, "reflect", "reflect", 3.0)):
        ours = ops.gaussian_blur(x, sigma, truncate=truncate, mode=mode)[0, 0].numpy()
        assert np.abs(ours - ndimage.gaussian_filter(image, sigma, mode=scipy_mode, truncate=truncate)).max() < 1e-5
    kernel = rng.random((7, 5)).astype(np.float32)
    for mode, scipy_mode in (("mirror", "mirror"), ("replicate", "nearest"), ("reflect", "reflect")):
        ours = ops.filter2d(x, torch.from_numpy(kernel), mode=mode)[0, 0].numpy()
        assert np.abs(ours - ndimage.correlate(image, kernel, mode=scipy_mode)).max() < 1e-4
    square = image[:37, :37]
    for zoom in (1.04, 1.16, 1.3, 2.5):  # reference clipped_zoom: centre crop, scipy zoom(order=1), trim
        crop = math.ceil(37 / zoom)
        top = (37 - crop) // 2
        zoomed = ndimage.zoom(square[top : top + crop, top : top + crop], zoom, order=1)
        trim = (zoomed.shape[0] - 37) // 2
        reference = zoomed[trim : trim + 37, trim : trim + 37]
        ours = ops.clipped_zoom(torch.from_numpy(square)[None, None], zoom)[0, 0].numpy()
        assert np.abs(ours - reference).max() < 1e-5


def test_motion_kernel_matches_imagecorruptions_shifts():
    rng = np.random.default_rng(2)
    image = rng.random((30, 34)).astype(np.float32)
    radius, sigma = 10, 3
    for angle in (-40.0, 0.0, 23.0):
        width = 2 * radius + 1
        weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
        weights /= weights.sum()
        reference = np.zeros_like(image)
        for i in range(width):  # imagecorruptions._motion_blur: edge-replicated integer shifts
            dy = math.ceil(i * math.sin(math.radians(angle)) - 0.5)
            dx = math.ceil(i * math.cos(math.radians(angle)) - 0.5)
            rows = np.clip(np.arange(30) + dy, 0, 29)
            cols = np.clip(np.arange(34) + dx, 0, 33)
            reference += weights[i] * image[rows][:, cols]
        kernels = ops.motion_kernels(radius, sigma, torch.tensor([angle]))
        ours = ops.filter2d(torch.from_numpy(image)[None, None], kernels, mode="replicate")[0, 0].numpy()
        assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    from streams._rng import Draws, image_keys

    x = textured(2, 64)
    keys = image_keys(4, x)
    assert torch.equal(image_keys(4, x.cuda()).cpu(), keys)  # the same integers on both devices
    assert torch.equal(Draws(keys.cuda()).hashes("s", 1000).cpu(), Draws(keys).hashes("s", 1000))
    for name in CORRUPTIONS:
        for severity in (1, 5):
            cpu = corrupt(x, name, severity, seed=4)
            gpu = corrupt(x.cuda(), name, severity, seed=4)
            assert gpu.device.type == "cuda"
            difference = (gpu.cpu() - cpu).abs()
            # Same random draws; float rounding may flip a rare threshold (snow flakes, 8-bit steps).
            # jpeg_compression: libjpeg on the CPU, the batched simulation on CUDA (about 0.003 apart).
            limit = 0.006 if name == "jpeg_compression" else 1e-3
            assert difference.mean() < limit and (difference > 1e-3).float().mean() < 2e-2, (name, severity)
            if name == "pixelate":  # PIL's 8-bit arithmetic on both devices
                assert torch.equal(gpu.cpu(), cpu), severity
            u = (x * 255).round().to(torch.uint8).cuda()  # uint8 on the GPU: the truncated float result
            expected = torch.floor(corrupt(u.float() / 255, name, severity, seed=4) * 255.0 + 1e-3).to(torch.uint8)
            assert torch.equal(corrupt(u, name, severity, seed=4), expected), (name, severity)
    indices = torch.tensor([3, 9])
    assert torch.allclose(corrupt(x.cuda(), "fog", 3, seed=1, indices=indices.cuda()).cpu(),
                          corrupt(x, "fog", 3, seed=1, indices=indices), atol=1e-4)


# ----- grid and command --------------------------------------------------------------------------

def test_corruption_grid_writes_png(tmp_path):
    from PIL import Image

    path = corruption_grid(textured(1, 32)[0], tmp_path / "sub" / "grid.png", seed=1)
    assert path == str(tmp_path / "sub" / "grid.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[1] > png.size[0] > 0
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        corruption_grid(torch.rand(1, 3, 8, 8), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="valid names"):
        corruption_grid(torch.rand(3, 8, 8), tmp_path / "bad.png", names=["fog", "rain"])


def test_show_corruptions_command(tmp_path, capsys):
    from PIL import Image

    from streams import corruptions_cli

    source = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(source)
    parser = argparse.ArgumentParser()
    corruptions_cli.add_arguments(parser)
    out = tmp_path / "grid.png"
    args = parser.parse_args(["--image", str(source), "--size", "24", "--out", str(out),
                              "--corruptions", "fog,pixelate"])
    assert corruptions_cli.main(args) == 0
    assert out.exists() and str(out) in capsys.readouterr().out
    bad = parser.parse_args(["--image", str(tmp_path / "missing.png"), "--out", str(out)])
    assert corruptions_cli.main(bad) == 2
    assert "show-corruptions:" in capsys.readouterr().err
    unknown = parser.parse_args(["--size", "16", "--out", str(out), "--corruptions", "rain"])
    assert corruptions_cli.main(unknown) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--image", "a.png", "--fashion-index", "1"])
    pattern = corruptions_cli.pattern_image(20)
    assert pattern.shape == (3, 20, 20) and 0 <= pattern.min() and pattern.max() <= 1


@pytest.mark.skipif(not __import__("os").path.exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
                    reason="Fashion-MNIST not installed")
def test_fashion_image_reader():
    from streams import corruptions_cli

    image = corruptions_cli.read_idx_image(corruptions_cli.FASHION_TEST_IMAGES, 9999)
    assert image.shape == (28, 28) and image.dtype == np.uint8 and image.max() > 0
    with pytest.raises(ValueError, match="0..9999"):
        corruptions_cli.read_idx_image(corruptions_cli.FASHION_TEST_IMAGES, 10000)
