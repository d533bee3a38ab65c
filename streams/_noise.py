"""Seeded random textures for :mod:`streams.corruptions`: the fog plasma and a procedural frost.

Every random number comes from the caller's CPU ``torch.Generator`` and is then moved to
``device``, so a seed gives the same fields on CPU and CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from streams._imageops import box_resize, filter2d, gaussian_blur, motion_kernels

REFERENCE_SIDE = 224  # the ImageNet-C image side the reference constants were written for


def uniform(gen: torch.Generator, shape: tuple[int, ...], device: torch.device | str,
            low: float = 0.0, high: float = 1.0) -> Tensor:
    """``U(low, high)`` float32 samples drawn on the CPU generator, returned on ``device``."""
    return (torch.rand(shape, generator=gen) * (high - low) + low).to(device)


def normal(gen: torch.Generator, shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    """Standard normal float32 samples drawn on the CPU generator, returned on ``device``."""
    return torch.randn(shape, generator=gen).to(device)


def plasma_fractal(batch: int, mapsize: int, decay: float, gen: torch.Generator) -> Tensor:
    """Diamond-square height maps ``[B, mapsize, mapsize]`` in [0, 1], one per image (CPU, float64).

    The reference ``plasma_fractal`` (after FLHerne/mapgen), batched: the same square and diamond
    steps, the same ``wibble`` start (100) and per-octave decay, each image with its own draws.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    grid = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        jitter = torch.rand(total.shape, generator=gen, dtype=torch.float64) * 2 - 1
        return total / 4 + wibble * wibble * jitter

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        grid[:, half::step, half::step] = wibbled_mean(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        grid[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        grid[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def fog_field(batch: int, height: int, width: int, decay: float, gen: torch.Generator,
              device: torch.device | str, spread: float | None = None) -> Tensor:
    """Plasma fog ``[B, 1, H, W]`` with the reference's relative scale at any image size.

    The reference crops a 224x224 corner of a 256x256 plasma. Here the map side is the power of two
    at or above ``256/224 * max(H, W)``, the same relative corner (224/256 of the map along the long
    side) is cropped and, if needed, resized to ``H x W`` (anti-aliased bilinear). Diamond-square is
    hierarchical (a 2^k map is the coarse grid of a 2^(k+1) map, same wibble schedule), so a smaller
    map is the reference map without its finest octaves. At 224x224 this is exactly the reference crop.

    With ``spread`` each map is standardised to mean 0.5 and that standard deviation (clamped to
    [0, 1]) instead of keeping the min-max normalisation, whose per-image mean and contrast vary at
    random (mean 0.5 +- 0.1): the amount of fog then follows the severity rather than the draw.
    """
    longest = max(height, width)
    mapsize = 1 << math.ceil(math.log2(math.ceil(longest * 256 / 224)))
    span = mapsize * 224 / 256
    crop_h, crop_w = round(span * height / longest), round(span * width / longest)
    field = plasma_fractal(batch, mapsize, decay, gen)[:, None, :crop_h, :crop_w]
    field = field.to(device=device, dtype=torch.float32)
    if spread is not None:
        mean, std = field.mean(dim=(2, 3), keepdim=True), field.std(dim=(2, 3), keepdim=True)
        field = (0.5 + (field - mean) / std.clamp_min(1e-6) * spread).clamp(0, 1)
    if (crop_h, crop_w) != (height, width):
        field = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return field


def fractal_noise(batch: int, height: int, width: int, gen: torch.Generator, device: torch.device | str,
                  cells: int = 3, octaves: int = 5, persistence: float = 0.55) -> Tensor:
    """Multi-octave value noise ``[B, 1, H, W]`` in [0, 1]: ``cells * 2^k`` bilinear cells per side."""
    total = torch.zeros(batch, 1, height, width, device=device)
    amplitude = 1.0
    for octave in range(octaves):
        n = cells * 2**octave
        coarse = uniform(gen, (batch, 1, n + 1, n + 1), device)
        total = total + amplitude * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        amplitude *= persistence
    total = total - total.amin(dim=(2, 3), keepdim=True)
    return total / total.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)


# Frost tint: white ice with a slight blue cast (the reference photos are bluish white).
_FROST_TINT = (0.86, 0.93, 1.0)
# Ice crystals: (arm length as a fraction of the image side, seeds per pixel at the densest).
_CRYSTALS = ((0.05, 0.0012), (0.02, 0.006))


def _star_kernels(arm: float, angles_deg: Tensor) -> Tensor:
    """Six-armed star kernels ``[B, 1, K, K]`` (arms 60 degrees apart, fading), peak tap 1 per arm."""
    taper = arm / 2
    kernels = sum(motion_kernels(arm, taper, angles_deg + 60 * k) for k in range(6))
    steps = torch.arange(2 * round(arm) + 1, dtype=torch.float32)
    return kernels * torch.exp(-0.5 * (steps / taper) ** 2).sum()


def frost_texture(batch: int, height: int, width: int, gen: torch.Generator,
                  device: torch.device | str) -> Tensor:
    """Procedural frost ``[B, 3, H, W]`` in [0, 1] replacing the reference's six frost photographs.

    A hazy fractal-noise layer, bright vein-like ridges (ridged fractal noise), and ice crystals:
    six-armed stars with fading arms (two sizes, arms 5% and 2% of the image side), seeded more
    densely along the ridges, one random orientation per image and size. Softened slightly and
    tinted bluish white; mean brightness about 0.42. Below 224 pixels the texture is rendered at
    four times the size (at most 224) and box-downsampled, so it looks the same at every size.
    """
    side = min(height, width)
    if side < REFERENCE_SIDE:  # render at 4x (at most 224) and box-downsample: same look, any size
        scale = min(REFERENCE_SIDE, 4 * side) / side
        texture = frost_texture(batch, round(height * scale), round(width * scale), gen, device)
        return box_resize(texture, height, width)
    haze = fractal_noise(batch, height, width, gen, device)
    ridges = (1 - (2 * fractal_noise(batch, height, width, gen, device) - 1).abs()) ** 4
    crystals = torch.zeros_like(haze)
    for arm_fraction, density in _CRYSTALS:  # two crystal sizes (not a per-image loop)
        arm = max(1.0, arm_fraction * side)
        chance = density * (0.25 + ridges) * (REFERENCE_SIDE / side) ** 2 * (arm_fraction * side / arm) ** 2
        seeds = (uniform(gen, (batch, 1, height, width), device) < chance).float()
        seeds = seeds * uniform(gen, (batch, 1, height, width), device, 0.4, 1.0)
        angles = uniform(gen, (batch,), device, 0.0, 60.0)
        crystals = crystals + filter2d(seeds, _star_kernels(arm, angles).to(device), mode="reflect")
    frost = 0.4 * haze + 0.55 * ridges + crystals
    frost = gaussian_blur(frost.clamp(0, 1), 0.4 * side / REFERENCE_SIDE)
    tint = torch.tensor(_FROST_TINT, device=device).view(1, 3, 1, 1)
    return (frost * tint).clamp(0, 1)
