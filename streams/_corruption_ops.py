"""The 15 ImageNet-C corruption functions behind :func:`streams.corruptions.corrupt`.

Each takes a group of images ``[B, 3, H, W]`` (float32, in [0, 1]), the severity and the group's
:class:`streams._rng.Draws` (``None`` for the deterministic ones) and returns the corrupted group
(clamped by the caller, except for those in :data:`WRITES_OUT`, which also take ``out=``); those for
which :func:`takes_uint8` holds also take uint8 groups, returning uint8. Constants, references and
the rules for other image sizes: the docstring of :mod:`streams.corruptions`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from streams import _imageops as ops
from streams._frost import frost_layer
from streams._jpeg import jpeg
from streams._noise import fog_field
from streams._pixelate import pixelate
from streams._rng import Draws

_REFERENCE_SIZE = 224


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
    """PIL ``BOX`` down to ``int(side * c)`` and back, on 8 bits (:mod:`streams._pixelate`); ``x`` float in
    [0, 1] or uint8, the result of the same dtype."""
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = x.shape[-2:]
    return pixelate(x, max(1, int(h * factor)), max(1, int(w * factor)), out=out)


def _jpeg_compression(x: Tensor, severity: int, draws: Draws | None, out: Tensor | None = None) -> Tensor:
    """libjpeg round trip (the CPU; ``x`` float in [0, 1] or uint8) or its simulation (CUDA, floats)."""
    quality = (25, 18, 15, 10, 7)[severity - 1]
    return jpeg(x, quality, out)


_CorruptionFn = Callable[[Tensor, int, Draws], Tensor]

FUNCTIONS: dict[str, _CorruptionFn] = {
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
#: corruptions whose function takes ``out=`` and returns values in [0, 1] (no clamp, one pass less)
WRITES_OUT = frozenset({"impulse_noise", "pixelate", "jpeg_compression"})


def takes_uint8(name: str, device: torch.device) -> bool:
    """Whether corruption ``name`` works on 8-bit levels on ``device``: its function then takes a uint8
    group and returns uint8 (uint8 images skip the conversions to float and back)."""
    return name == "pixelate" or (name == "jpeg_compression" and device.type == "cpu")
