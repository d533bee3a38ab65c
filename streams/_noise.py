"""Random fields for :mod:`streams.corruptions`: the fog plasma and multi-octave value noise.

Every random number comes from a :class:`streams._rng.Draws` (one key per image), so each image's
field depends only on its own key, on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from streams._rng import Draws

REFERENCE_SIDE = 224  # the ImageNet-C image side the reference constants were written for


def plasma_fractal(draws: Draws, mapsize: int, decay: float, stream: str = "plasma") -> Tensor:
    """Diamond-square height maps ``[B, mapsize, mapsize]`` in [0, 1], one per image (float32).

    The reference ``plasma_fractal`` (after FLHerne/mapgen), batched: the same square and diamond
    steps, the same ``wibble`` start (100) and per-octave decay, ``wibble^2 * U(-1, 1)`` jitter, and
    min-max normalisation per map.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    batch = len(draws)
    grid = torch.zeros(batch, mapsize, mapsize, device=draws.device)
    octaves = mapsize.bit_length() - 1
    # One draw for every jitter of every octave (3 * (mapsize / step)^2 values per octave), sliced below.
    jitter = draws.uniform(stream, (3 * sum(4**k for k in range(octaves)),), -1.0, 1.0)
    offset, step, wibble = 0, mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        nonlocal offset
        n = total.shape[1] * total.shape[2]
        part = jitter[:, offset : offset + n].view_as(total)
        offset += n
        return total.mul_(0.25).add_(part, alpha=wibble * wibble)

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
    grid -= grid.amin(dim=(1, 2), keepdim=True)
    return grid.div_(grid.amax(dim=(1, 2), keepdim=True))


def fog_field(draws: Draws, height: int, width: int, decay: float) -> Tensor:
    """Plasma fog ``[B, 1, H, W]`` with the reference's relative scale at any image size.

    The reference crops the top-left 224x224 of a 256x256 plasma. Here the map side is the power of
    two at or above ``256/224 * max(H, W)``, the same relative corner (224/256 of the map along the
    long side) is cropped and, if needed, resized to ``H x W`` (anti-aliased bilinear). Diamond-square
    is hierarchical (a 2^k map is the coarse grid of a 2^(k+1) map, same wibble schedule), so a smaller
    map is the reference map without its finest octaves. At 224x224 this is exactly the reference.
    """
    longest = max(height, width)
    mapsize = 1 << math.ceil(math.log2(math.ceil(longest * 256 / 224)))
    span = mapsize * 224 / 256
    crop_h, crop_w = round(span * height / longest), round(span * width / longest)
    field = plasma_fractal(draws, mapsize, decay)[:, None, :crop_h, :crop_w]
    if (crop_h, crop_w) != (height, width):
        field = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return field


def value_noise(draws: Draws, stream: str, height: int, width: int, cells: float, octaves: int = 5,
                persistence: float = 0.55) -> Tensor:
    """Multi-octave value noise ``[B, 1, H, W]`` in [0, 1]: ``cells * 2^k`` bicubic cells along the short side."""
    total = torch.zeros(len(draws), 1, height, width, device=draws.device)
    amplitude = 1.0
    side = min(height, width)
    for octave in range(octaves):
        per_pixel = cells * 2**octave / side
        nh, nw = max(1, round(height * per_pixel)), max(1, round(width * per_pixel))
        coarse = draws.uniform(f"{stream}:{octave}", (1, nh + 1, nw + 1))
        total += amplitude * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        amplitude *= persistence
    total -= total.amin(dim=(2, 3), keepdim=True)
    return total / total.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)
