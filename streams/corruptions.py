"""ImageNet-C corruptions as batched torch operations (CPU or CUDA), severities 1-5.

Provenance: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (code: hendrycks/robustness,
``ImageNet-C/create_c/make_imagenet_c.py``). The reference per corruption: that file for
``elastic_transform``, ``frost`` and ``pixelate``; for the other twelve ``imagecorruptions-imaug``
1.1.5 (a maintained fork of Michaelis et al.'s ``imagecorruptions``, which ports the ImageMagick
motion blur to numpy). The constants per severity are the reference's, written for 224x224 images;
this is an independent re-implementation in torch, not a copy. ``docs/imagenet_c.md`` has the
measured strength of every corruption and severity against the reference, and how it was measured.

``corrupt(images, name, severity, seed, indices)`` takes ``[B, 3, H, W]`` floats in [0, 1] and returns
the same shape, dtype and device, in [0, 1]. Randomness is per image (:mod:`streams._rng`, a
counter-based generator): with ``indices`` image ``i``'s draws depend only on ``(seed, indices[i])``,
without on ``(seed, its content)``; never on the rest of the batch, and the same on CPU and CUDA. The
work runs as torch ops on the images' device, on whole groups of images (the only Python loops run
over zoom factors, shuffle iterations, octaves, taps or groups of images, never over single images
on a GPU).

Image sizes other than 224 (``s = min(H, W) / 224``):

- pixel lengths scale by ``s``: defocus radius and anti-alias blur, glass-blur sigma, motion-blur
  radius and sigma, elastic smoothing length and affine jitter;
- glass blur: a displacement cannot be shorter than a pixel, so the mean squared displacement is
  matched instead: steps of ``max(1, round(delta * s))`` pixels for the fraction of pixels that gives
  the reference's mean square times ``s^2`` (every pixel at ``s = 1``);
- elastic: the RMS displacement is the reference's at 224 times ``s`` (the amplitude gain of
  smoothing white noise over a shorter length is compensated exactly);
- below 224 the snow layer is rendered at 224 on the short side, and frost crops the reference's
  224-relative window, both then box-downsampled: flakes and crystals keep their relative size and
  the amount of snow and frost does not change with the image size;
- relative constants stay: zoom factors, pixelate factors, the fog plasma (the same relative crop of
  the map, resized); noise, colour and JPEG constants are per pixel or per 8x8 block.

What remains different from the reference at 224 (strengths within 5% at every severity, see the doc):

- random numbers: a counter-based generator instead of numpy's global Mersenne Twister (the same
  distributions, other values; Poisson counts by exact inversion of a tabulated CDF);
- frost: by default five procedural frost images histogram-matched to the five reference
  photographs (:mod:`streams._frost`); ``frost_source="photos"`` crops the photographs themselves,
  read from an installed ``imagecorruptions-imaug``;
- jpeg_compression on CUDA: a batched simulation of baseline JPEG (``streams._jpeg``) within about
  0.003 mean absolute of libjpeg (on the CPU, libjpeg itself);
- pixelate: PIL's BOX filter both ways in floating point (PIL rounds to 8 bits after each pass);
- defocus at other sizes than 224: the disk is supersampled (continuous in the radius); at 224 it is
  the reference's kernel;
- elastic_transform: the affine warp is bilinear in floating point (OpenCV rounds coordinates to
  1/32 pixel).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streams import _imageops as ops
from streams._frost import SOURCES as FROST_SOURCES
from streams._frost import frost_layer
from streams._jpeg import jpeg
from streams._noise import fog_field
from streams._rng import Draws, check_indices, check_seed, image_keys

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
RANDOM_CORRUPTIONS: frozenset[str] = frozenset({
    "gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
    "snow", "frost", "fog", "elastic_transform",
})
"""Corruptions whose output depends on ``seed``; the others are deterministic filters."""

JPEG_FILE_QUALITY = 85
"""The JPEG quality the distributed ImageNet-C files were saved with (see ``jpeg_roundtrip``)."""

_REFERENCE_SIZE = 224
# CPU: images per group so that one float tensor stays near 2 MB (8 MB where per-op overhead dominates)
_GROUP_ELEMENTS = 1 << 19
_GROUP_ELEMENTS_BY_NAME = {"fog": 1 << 21, "frost": 1 << 21, "brightness": 1 << 21, "contrast": 1 << 21}


def _scale(x: Tensor) -> float:
    return min(x.shape[-2:]) / _REFERENCE_SIZE


def _arange(start: float, stop: float, step: float) -> list[float]:
    """``numpy.arange(start, stop, step)`` as Python floats (same length rule, same values)."""
    return [start + i * step for i in range(math.ceil((stop - start) / step))]


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------

def _gaussian_noise(x: Tensor, severity: int, draws: Draws) -> Tensor:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return x + draws.normal("gaussian_noise", x.shape[1:], std=sigma)


def _shot_noise(x: Tensor, severity: int, draws: Draws) -> Tensor:
    photons = (60, 25, 12, 5, 3)[severity - 1]
    return draws.poisson("shot_noise", x * photons, photons) / photons


def _impulse_noise(x: Tensor, severity: int, draws: Draws, out: Tensor | None = None) -> Tensor:
    """skimage's ``random_noise(mode="s&p", amount=a)`` per value: ``u < a / 2`` pepper (0), ``u < a``
    salt (1), compared on the uniforms' integer bits."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    b, n = x.shape[0], x[0].numel()
    result = x.clone() if out is None else out.copy_(x)
    flat = result.view(b, n)
    first, second = draws.uniform_bits("impulse_noise", n)
    for part, bits in ((flat[:, : first.shape[1]], first), (flat[:, first.shape[1]:], second)):
        part.masked_fill_(bits < Draws.bits_below(amount), 1.0).masked_fill_(bits < Draws.bits_below(amount / 2), 0.0)
    return result


# ---------------------------------------------------------------------------------------------
# Blur
# ---------------------------------------------------------------------------------------------

def _defocus_blur(x: Tensor, severity: int, draws: Draws | None) -> Tensor:
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    s = _scale(x)
    if s == 1:
        kernel = ops.reference_disk_kernel(radius, alias, x.device)
    else:
        kernel = ops.disk_kernel(radius * s, alias * s, x.device)
    return ops.filter2d(x, kernel, mode="mirror")


def _glass_blur(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """Blur, 8-bit truncation (``np.uint8``), ``iterations`` sweeps of local pixel copies, blur.

    The copies follow the reference's actual behaviour (:func:`streams._imageops.copy_chain_sources`):
    offsets ``randint(-delta, delta)`` (so -delta .. delta-1: a drift of about (-1, -1) px per sweep)
    applied as copies in descending raster order. See the module docstring for ``s < 1``.
    """
    sigma, delta, iterations = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))[severity - 1]
    b, c, h, w = x.shape
    s = _scale(x)
    x = torch.floor(ops.gaussian_blur(x, sigma * s) * 255.0) / 255.0
    step = max(1, round(delta * s))
    moved_fraction = min(1.0, (2 * delta**2 + 1) * s**2 / (2 * step**2 + 1))
    source = None
    for sweep in range(iterations):
        dy = draws.integers(f"glass_blur:dy:{sweep}", (h, w), -step, step)
        dx = draws.integers(f"glass_blur:dx:{sweep}", (h, w), -step, step)
        if moved_fraction < 1:
            still = draws.uniform(f"glass_blur:moved:{sweep}", (h, w)) >= moved_fraction
            dy, dx = dy.masked_fill(still, 0), dx.masked_fill(still, 0)
        sweep_source = ops.copy_chain_sources(dy, dx, step)
        source = sweep_source if source is None else source.gather(1, sweep_source)
    x = x.reshape(b, c, h * w).gather(2, source[:, None, :].expand(b, c, h * w)).view(b, c, h, w)
    return ops.gaussian_blur(x, sigma * s)


def _motion_blur(x: Tensor, severity: int, draws: Draws) -> Tensor:
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    s = _scale(x)
    angles = draws.uniform("motion_blur:angle", (), -45.0, 45.0)
    return ops.filter2d(x, ops.motion_kernels(radius * s, sigma * s, angles), mode="replicate")


def _zoom_blur(x: Tensor, severity: int, draws: Draws | None) -> Tensor:
    factors = _arange(*((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03))
                      [severity - 1])
    total = x.clone()
    for factor in factors:  # zoom factors, each on the whole group
        total += ops.clipped_zoom(x, factor)
    return total / (len(factors) + 1)


# ---------------------------------------------------------------------------------------------
# Weather
# ---------------------------------------------------------------------------------------------

def _snow(x: Tensor, severity: int, draws: Draws) -> Tensor:
    loc, spread, zoom, threshold, radius, sigma, keep = (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    )[severity - 1]
    _, _, h, w = x.shape
    s = _scale(x)
    # Below 224 the flake layer is drawn at the reference resolution and box-downsampled, so flakes
    # keep their relative size and the amount of snow is the same at every image size.
    rh, rw, s = (round(h / s), round(w / s), 1.0) if s < 1 else (h, w, s)
    flakes = draws.normal("snow:flakes", (1, rh, rw), mean=loc, std=spread)
    flakes = ops.clipped_zoom(flakes, zoom * s)
    flakes = torch.where(flakes < threshold, 0.0, flakes).clamp_(0, 1)
    angles = draws.uniform("snow:angle", (), -135.0, -45.0)
    flakes = ops.filter2d(flakes, ops.motion_kernels(radius * s, sigma * s, angles), mode="replicate")
    flakes = torch.round(flakes * 255.0) / 255.0  # the reference rounds the layer to 8 bits
    if (rh, rw) != (h, w):
        flakes = ops.box_resize(flakes, h, w)
    whitened = torch.maximum(x, ops.rgb_to_gray(x) * 1.5 + 0.5)
    x = keep * x + (1 - keep) * whitened
    return x + flakes + flakes.flip(-2, -1)


def _frost(x: Tensor, severity: int, draws: Draws, source: str = "texture") -> Tensor:
    image_weight, frost_weight = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[severity - 1]
    _, _, h, w = x.shape
    return frost_layer(draws, h, w, source, scale=frost_weight).add_(x, alpha=image_weight)


def _fog(x: Tensor, severity: int, draws: Draws) -> Tensor:
    strength, decay = ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))[severity - 1]
    _, _, h, w = x.shape
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fog = fog_field(draws, h, w, decay)
    return (x + strength * fog) * (peak / (peak + strength))


# ---------------------------------------------------------------------------------------------
# Digital
# ---------------------------------------------------------------------------------------------

def _brightness(x: Tensor, severity: int, draws: Draws | None) -> Tensor:
    """HSV value + c with hue and saturation kept: every channel scales by V'/V (grey if V = 0)."""
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(0, 1)
    return torch.where(value > 0, x * brighter / value.clamp_min(1e-12), brighter)


def _contrast(x: Tensor, severity: int, draws: Draws | None) -> Tensor:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * factor + means


def _elastic_transform(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """Hendrycks's elastic transform: a random affine warp of three control points, then a
    Gaussian-smoothed random displacement field, as two bilinear resamplings.

    (alpha, sigma, affine) in pixels at 224 (the reference writes 244 * k). The affine warp reflects
    about the edge pixels (OpenCV ``BORDER_REFLECT_101``), the displacement about the image border
    (scipy ``map_coordinates(mode="reflect")``), as there.
    """
    alpha, sigma, affine = tuple(244 * k for k in (
        (2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02),
    )[severity - 1])
    b, _, h, w = x.shape
    s = _scale(x)
    pts1, points, scale_xy = _elastic_geometry(h, w, str(x.device))
    # Affine: OpenCV warps with M: pts1 -> pts2 by sampling the source at M^-1(p); solve M^-1 = A.
    pts2 = pts1 + draws.uniform("elastic:affine", (3, 2), -affine * s, affine * s)
    homogeneous = torch.cat([pts2, torch.ones_like(pts2[..., :1])], dim=2)
    transform = torch.linalg.solve_ex(homogeneous, pts1.expand(b, 3, 2)).result  # [B, 3, 2]: p -> A p
    source = torch.bmm(points.expand(b, h * w, 3), transform).view(b, h, w, 2)  # (x, y) pixels
    x = F.grid_sample(x, source * scale_xy - 1, mode="bilinear", padding_mode="reflection", align_corners=True)
    xs, ys = points[0, :, 0].view(h, w), points[0, :, 1].view(h, w)
    # Elastic field: Gaussian-smoothed U(-1, 1) noise, RMS scaled from the reference's at 224 by s.
    gain = alpha * s * _smoothing_gain(sigma) / _smoothing_gain(sigma * s)
    dx = ops.gaussian_blur(draws.uniform("elastic:dx", (1, h, w), -1.0, 1.0), sigma * s, truncate=3.0, mode="reflect")
    dy = ops.gaussian_blur(draws.uniform("elastic:dy", (1, h, w), -1.0, 1.0), sigma * s, truncate=3.0, mode="reflect")
    grid = torch.stack([(xs + gain * dx[:, 0] + 0.5) * (2.0 / w) - 1, (ys + gain * dy[:, 0] + 0.5) * (2.0 / h) - 1],
                       dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@functools.lru_cache(maxsize=16)
def _elastic_geometry(h: int, w: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's three control points ``[3, 2]`` (its (x, y) order: ``centre = (H // 2, W // 2)``),
    the pixel grid as homogeneous (x, y, 1) rows ``[1, H * W, 3]`` and the align-corners scale, cached."""
    half = float(min(h, w) // 3)
    centre = torch.tensor([float(h // 2), float(w // 2)])
    pts1 = centre + torch.tensor([[half, half], [half, -half], [-half, -half]])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, h * w, 3)
    scale_xy = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    return pts1.to(device), points.to(device), scale_xy.to(device)


def _smoothing_gain(sigma: float) -> float:
    """Standard-deviation factor of 2-D Gaussian smoothing (truncate 3) applied to white noise."""
    taps = ops.gaussian_kernel1d(sigma, 3.0)
    return float((taps**2).sum())


def _pixelate(x: Tensor, severity: int, draws: Draws | None, out: Tensor | None = None) -> Tensor:
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[-2:]
    small = ops.box_resize(x, max(1, int(h * factor)), max(1, int(w * factor))).clamp_(0, 1)
    return ops.box_resize(small, h, w, out=out)  # BOX upscaling only selects: in [0, 1]


def _jpeg_compression(x: Tensor, severity: int, draws: Draws | None, out: Tensor | None = None) -> Tensor:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    return jpeg(x, quality, out)


_CorruptionFn = Callable[[Tensor, int, Draws], Tensor]

_FUNCTIONS: dict[str, _CorruptionFn] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
assert tuple(_FUNCTIONS) == CORRUPTIONS
#: corruptions whose function takes ``out=`` and returns values in [0, 1] (no clamp, one pass less)
_WRITES_OUT = frozenset({"impulse_noise", "pixelate", "jpeg_compression"})


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _check(images: Tensor, name: str, severity: int) -> None:
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be a [B, 3, H, W] RGB batch (3 channels; replicate grey images first), "
            f"got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")


def _check_range(images: Tensor, clamp: bool, indices: Tensor | None = None) -> None:
    """Refuse NaN, values outside [0, 1] unless ``clamp``, and negative ``indices`` (GPU tensors, which
    :func:`check_indices` leaves to this check): one host sync per call on a GPU."""
    stats = torch.stack(torch.aminmax(images))
    if indices is not None and indices.device.type != "cpu":
        stats = torch.cat([stats, indices.min().to(stats.dtype)[None]])
    values = stats.tolist()
    if len(values) > 2 and values[2] < 0:
        raise ValueError("indices must be non-negative dataset indices")
    low, high = (float(v) for v in values[:2])
    if math.isnan(low) or math.isnan(high):
        count = int(torch.isnan(images).sum())
        raise ValueError(f"images contain {count} NaN value(s); replace them first (e.g. torch.nan_to_num)")
    if not clamp and (low < 0 or high > 1):
        raise ValueError(
            f"images must be in [0, 1], got values from {low:.4g} to {high:.4g} (normalised images? pass "
            "[0, 1] images, with normalisation inside the model, or clamp=True to clip them to [0, 1])"
        )


def _groups(name: str, batch: int, per_image: int, device: torch.device) -> list[tuple[int, int]]:
    """Image ranges processed together: the whole batch on a GPU, a few MB per tensor on the CPU."""
    elements = _GROUP_ELEMENTS_BY_NAME.get(name, _GROUP_ELEMENTS)
    size = batch if device.type != "cpu" else max(1, elements // max(1, per_image))
    return [(start, min(batch, start + size)) for start in range(0, batch, size)]


def _empty(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """An uninitialised float32 tensor; large CPU ones come from numpy, whose allocator asks Linux for
    transparent huge pages (first touch of a 38 MB batch: about 4 ms instead of 14)."""
    if device.type == "cpu" and math.prod(shape) >= 1 << 20:
        return torch.from_numpy(np.empty(shape, dtype=np.float32))
    return torch.empty(shape, dtype=torch.float32, device=device)


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0,
            indices: Sequence[int] | Tensor | None = None, *, clamp: bool = False,
            jpeg_roundtrip: bool = False, frost_source: str = "texture") -> Tensor:
    """Apply ImageNet-C corruption ``name`` at ``severity`` (1-5) to a batch.

    Args:
        images: ``[B, 3, H, W]`` floating-point RGB in [0, 1], on any device.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mildest) to 5.
        seed: a non-negative integer below 2**63; with the image's key it fixes every random draw.
        indices: one non-negative dataset index per image. Given, image ``i``'s draws depend only on
            ``(seed, indices[i])`` (a dataset corrupted batch by batch is the same at any batch size
            or order); omitted, only on ``(seed, the image's content)``. Never on the other images.
        clamp: clip values outside [0, 1] instead of refusing them (NaN is always refused).
        jpeg_roundtrip: then truncate to 8 bits (``np.uint8``) and JPEG-encode and decode at
            quality 85, as the distributed ImageNet-C files were saved, for comparisons with them.
        frost_source: ``"texture"`` (procedural frost images matched to the reference photographs)
            or ``"photos"`` (the photographs, from an installed ``imagecorruptions-imaug``).

    Returns:
        A new tensor of the same shape, dtype and device, in [0, 1]. The same arguments give the same
        output on CPU and CUDA alike, up to float rounding.
    """
    _check(images, name, severity)
    seed = check_seed(seed)
    if frost_source not in FROST_SOURCES:
        raise ValueError(f"frost_source must be one of {FROST_SOURCES}, got {frost_source!r}")
    b = images.shape[0]
    index_tensor = None if indices is None else check_indices(indices, b, images.device)
    if b == 0:
        return images.clone()
    x = images.detach()
    function = _FUNCTIONS[name]
    options = {"source": frost_source} if name == "frost" else {}
    groups = _groups(name, b, x[0].numel(), x.device)
    out = _empty(tuple(x.shape), x.device) if len(groups) > 1 else None
    with torch.no_grad():
        for start, stop in groups:
            group = x[start:stop].float()
            _check_range(group, clamp, None if index_tensor is None else index_tensor[start:stop])
            if clamp:
                group = group.clamp(0, 1)
            draws = None
            if name in RANDOM_CORRUPTIONS:
                ids = None if index_tensor is None else index_tensor[start:stop]
                draws = Draws(image_keys(seed, group, ids))
            target = None if out is None else out[start:stop]
            if jpeg_roundtrip:
                result = function(group, int(severity), draws, **options).clamp_(0, 1)
                result = jpeg(torch.floor(result * 255.0 + 1e-3).div_(255.0), JPEG_FILE_QUALITY, target)
            elif name in _WRITES_OUT:
                result = function(group, int(severity), draws, out=target)
            else:
                result = function(group, int(severity), draws, **options)
                result = result.clamp_(0, 1) if target is None else torch.clamp(result, 0, 1, out=target)
            if out is None:
                out = result.contiguous()
    return out if images.dtype == torch.float32 else out.to(images.dtype)


def corruption_grid(image: Tensor, path: str | os.PathLike, names: Sequence[str] = CORRUPTIONS,
                    seed: int = 0) -> str:
    """Write a PNG grid of ``image [3, H, W]``: one row per corruption, clean + severities 1-5.

    The tiles are assembled into one mosaic drawn on a single matplotlib Agg axes (no display
    needed), labelled with the corruption names and severities. Returns the path written (``str``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a [3, H, W] tensor, got {shape}")
    names = list(names)
    batch = image[None].detach().float().cpu()
    for name in names:
        _check(batch, name, 1)
    rows = [torch.cat([batch] + [corrupt(batch, name, severity, seed) for severity in SEVERITIES]) for name in names]
    _, _, h, w = batch.shape
    gap = max(1, min(h, w) // 16)
    tiles = F.pad(torch.stack(rows), (0, gap, 0, gap), value=1.0)  # [rows, 6, 3, H+gap, W+gap]
    mosaic = tiles.permute(0, 3, 1, 4, 2).reshape(len(names) * (h + gap), 6 * (w + gap), 3)[:-gap, :-gap]
    figure = Figure(figsize=(6 * 1.5 + 1.6, len(names) * 1.5 * h / w + 0.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.imshow(mosaic.numpy(), interpolation="nearest" if max(h, w) < 96 else "antialiased")
    ax.set_xticks([(w + gap) * col + w / 2 for col in range(6)], ["clean"] + [f"severity {s}" for s in SEVERITIES])
    ax.set_yticks([(h + gap) * row + h / 2 for row in range(len(names))], names)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, labelsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight", pad_inches=0.1)
    return path
