"""Frost layers for :mod:`streams.corruptions`: random crops of frost images, as ImageNet-C makes them.

ImageNet-C's ``frost`` (``make_imagenet_c.py``) picks one of five frost photographs
(``frost1..frost5``: ``randint(5)``, so ``frost6`` is never used) and crops a random 224 x 224 window
at full resolution. Here the same draw (photo, then window) crops one of five images from a *bank*:

- ``"photos"``: the photographs themselves, read from the installed ``imagecorruptions-imaug``
  package, which ships the six under Apache-2.0 (byte-identical to those in hendrycks/robustness;
  ``pip install --no-deps imagecorruptions-imaug==1.1.5``, nothing of it is imported);
- ``"texture"`` (the default; nothing to install): five procedural frost images of the same sizes
  (fractal haze, ridged ice veins, six-armed crystals), generated once per process from fixed keys
  and histogram-matched per channel to the photograph they stand for: :data:`PROFILES` holds 65
  quantiles per channel of each photograph, weighted by how often the reference's random crops cover
  each pixel. A random crop then has the reference's distribution of frost values, which is what the
  corruption's strength depends on (the frost is independent of the image).

Other image sizes: the window is the reference's relative window (short side 224 at ``s = min(H, W) /
224``, i.e. ``round(H / s) x round(W / s)``), resized to ``H x W`` (PIL-style box filter down,
bilinear up), so crystals keep their relative size and the amount of frost does not change.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streams._imageops import box_resize, filter2d, gaussian_blur, motion_kernels
from streams._noise import value_noise
from streams._rng import Draws, mix_int

SOURCES = ("texture", "photos")
PHOTO_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
PHOTO_SIZES = ((600, 900), (315, 560), (315, 560), (350, 527), (495, 660))  # (height, width)
CROP = 224
INSTALL_PHOTOS = "pip install --no-deps imagecorruptions-imaug==1.1.5 (it ships the frost photographs)"

# Per photograph (frost1..frost5) and channel (R, G, B): the pixel values (0-255) at the quantiles
# 0, 1/64, ..., 1 of the photograph, each pixel weighted by the number of the reference's 224 x 224
# crops that contain it. Regenerate with `python -m streams._frost` (needs INSTALL_PHOTOS).
PROFILES: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # frost1
        (15, 31, 35, 38, 40, 42, 43, 45, 46, 48, 49, 50, 51, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66,
         67, 68, 69, 70, 71, 72, 73, 75, 76, 77, 78, 79, 81, 82, 84, 85, 87, 88, 90, 91, 93, 95, 96, 98, 100, 102,
         104, 107, 109, 112, 115, 118, 122, 127, 132, 139, 149, 201),
        (99, 118, 120, 122, 124, 125, 127, 128, 129, 130, 131, 132, 132, 133, 134, 135, 136, 136, 137, 138, 138, 139,
         140, 140, 141, 142, 142, 143, 144, 144, 145, 146, 146, 147, 148, 148, 149, 150, 150, 151, 152, 153, 153,
         154, 155, 156, 157, 158, 158, 159, 160, 161, 163, 164, 165, 166, 168, 169, 171, 173, 175, 178, 181, 186, 230),
        (115, 136, 139, 141, 142, 143, 144, 146, 147, 148, 148, 149, 150, 151, 152, 152, 153, 154, 155, 155, 156,
         157, 157, 158, 159, 159, 160, 161, 161, 162, 162, 163, 164, 164, 165, 165, 166, 167, 167, 168, 169, 169,
         170, 171, 171, 172, 173, 174, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 185, 186, 188, 190, 192,
         197, 235),
    ),
    (  # frost2
        (55, 142, 153, 159, 163, 167, 170, 172, 175, 177, 179, 180, 182, 183, 185, 186, 187, 188, 189, 190, 191, 192,
         193, 194, 195, 196, 197, 197, 198, 199, 200, 200, 201, 202, 203, 203, 204, 205, 205, 206, 207, 207, 208,
         209, 209, 210, 211, 211, 212, 213, 214, 214, 215, 216, 217, 218, 219, 220, 221, 222, 224, 225, 228, 231, 253),
        (56, 145, 155, 162, 166, 170, 173, 176, 178, 180, 182, 184, 185, 187, 188, 190, 191, 192, 193, 194, 195, 196,
         197, 198, 199, 200, 201, 202, 202, 203, 204, 205, 206, 206, 207, 208, 209, 209, 210, 211, 211, 212, 213,
         214, 214, 215, 216, 216, 217, 218, 219, 220, 220, 221, 222, 223, 224, 225, 226, 228, 229, 231, 233, 235, 255),
        (60, 152, 162, 169, 174, 178, 181, 184, 186, 188, 190, 192, 194, 195, 197, 198, 200, 201, 202, 203, 204, 205,
         206, 207, 208, 209, 210, 211, 212, 213, 214, 214, 215, 216, 217, 218, 218, 219, 220, 221, 221, 222, 223,
         224, 224, 225, 226, 227, 227, 228, 229, 230, 231, 231, 232, 233, 234, 235, 236, 237, 239, 240, 242, 245, 255),
    ),
    (  # frost3
        (55, 142, 153, 159, 163, 167, 170, 172, 175, 177, 179, 180, 182, 183, 185, 186, 187, 188, 189, 190, 191, 192,
         193, 194, 195, 196, 197, 197, 198, 199, 200, 200, 201, 202, 203, 203, 204, 205, 205, 206, 207, 207, 208,
         209, 209, 210, 211, 211, 212, 213, 214, 214, 215, 216, 217, 218, 219, 220, 221, 222, 224, 225, 228, 231, 253),
        (56, 145, 155, 162, 166, 170, 173, 176, 178, 180, 182, 184, 185, 187, 188, 190, 191, 192, 193, 194, 195, 196,
         197, 198, 199, 200, 201, 202, 202, 203, 204, 205, 206, 206, 207, 208, 209, 209, 210, 211, 211, 212, 213,
         214, 214, 215, 216, 216, 217, 218, 219, 220, 220, 221, 222, 223, 224, 225, 226, 228, 229, 231, 233, 235, 255),
        (60, 152, 162, 169, 174, 178, 181, 184, 186, 188, 190, 192, 194, 195, 197, 198, 200, 201, 202, 203, 204, 205,
         206, 207, 208, 209, 210, 211, 212, 213, 214, 214, 215, 216, 217, 218, 218, 219, 220, 221, 221, 222, 223,
         224, 224, 225, 226, 227, 227, 228, 229, 230, 231, 231, 232, 233, 234, 235, 236, 237, 239, 240, 242, 245, 255),
    ),
    (  # frost4
        (15, 80, 91, 98, 103, 107, 110, 113, 116, 118, 120, 122, 123, 125, 126, 128, 129, 130, 132, 133, 134, 135,
         136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 151, 152, 153, 154, 155,
         156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 171, 172, 174, 177, 179, 183, 188, 194, 207, 251),
        (24, 94, 106, 113, 118, 122, 125, 128, 131, 133, 135, 137, 138, 140, 141, 143, 144, 145, 147, 148, 149, 150,
         151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 163, 164, 165, 166, 167, 168, 169, 170,
         171, 172, 173, 174, 175, 176, 177, 178, 180, 181, 182, 184, 185, 187, 189, 192, 194, 198, 203, 209, 222, 255),
        (31, 104, 116, 123, 129, 133, 136, 139, 142, 144, 146, 148, 150, 151, 153, 154, 156, 157, 158, 160, 161, 162,
         163, 164, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 180, 182, 182, 183,
         184, 185, 187, 188, 189, 190, 191, 192, 194, 195, 197, 198, 200, 202, 204, 207, 210, 213, 218, 226, 238, 255),
    ),
    (  # frost5
        (14, 36, 41, 45, 48, 51, 54, 56, 58, 60, 62, 64, 66, 68, 69, 71, 73, 74, 76, 77, 79, 80, 82, 83, 85, 86, 88,
         89, 91, 92, 93, 95, 96, 98, 99, 101, 103, 104, 106, 108, 109, 111, 113, 115, 117, 119, 121, 123, 125, 127,
         129, 132, 134, 137, 140, 143, 146, 150, 154, 159, 165, 173, 182, 198, 255),
        (25, 48, 53, 56, 60, 63, 66, 68, 70, 72, 74, 76, 78, 79, 81, 83, 84, 86, 87, 89, 90, 92, 93, 95, 96, 98, 99,
         101, 102, 104, 105, 107, 108, 110, 111, 113, 114, 116, 118, 119, 121, 123, 124, 126, 128, 130, 132, 134,
         136, 138, 141, 143, 145, 148, 151, 154, 157, 161, 165, 170, 176, 183, 192, 206, 255),
        (36, 59, 65, 69, 72, 76, 78, 81, 83, 85, 87, 89, 90, 92, 94, 96, 97, 99, 100, 102, 103, 105, 106, 108, 109,
         111, 112, 113, 115, 116, 118, 119, 120, 122, 123, 125, 126, 128, 130, 131, 133, 134, 136, 138, 140, 142,
         144, 146, 148, 150, 152, 154, 156, 159, 162, 165, 168, 171, 175, 180, 186, 192, 201, 215, 255),
    ),
)


def crop_weights(size: int, crop: int = CROP) -> np.ndarray:
    """How many of the reference's crop starts (``randint(0, size - crop)``) cover each position."""
    starts = np.arange(max(1, size - crop))
    position = np.arange(size)[:, None]
    return ((position >= starts) & (position < starts + crop)).sum(axis=1).astype(np.float64)


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    ranks = (cumulative - weights[order] / 2) / cumulative[-1]
    return np.interp(levels, ranks, values[order])


def profile_of(photo: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The :data:`PROFILES` row of a uint8 RGB photograph ``[H, W, 3]``."""
    h, w = photo.shape[:2]
    weights = np.outer(crop_weights(h), crop_weights(w)).ravel()
    levels = np.linspace(0, 1, 65)
    return tuple(tuple(int(round(v)) for v in _weighted_quantiles(photo[..., c].ravel().astype(np.float64),
                                                                     weights, levels)) for c in range(3))


def photo_dir() -> Path:
    """The frost photographs' folder inside the installed ``imagecorruptions`` package."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"frost_source='photos' needs the frost photographs: {INSTALL_PHOTOS}")
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


def read_photos() -> list[np.ndarray]:
    """The five photographs ImageNet-C draws from, as uint8 RGB arrays."""
    from PIL import Image

    folder = photo_dir()
    photos = []
    for name in PHOTO_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"frost photograph {path} is missing: {INSTALL_PHOTOS}")
        with Image.open(path) as image:
            photos.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return photos


# Crystal sizes: (arm length as a fraction of the crop side, seeds per pixel at the densest).
_CRYSTALS = ((0.05, 0.0012), (0.02, 0.006))


def _star_kernels(arm: float, angles_deg: Tensor) -> Tensor:
    """Six-armed star kernels ``[B, 1, K, K]`` (arms 60 degrees apart, fading), peak tap 1 per arm."""
    taper = arm / 2
    kernels = sum(motion_kernels(arm, taper, angles_deg + 60 * k) for k in range(6))
    steps = torch.arange(2 * round(arm) + 1, dtype=torch.float32, device=angles_deg.device)
    return kernels * torch.exp(-0.5 * (steps / taper) ** 2).sum()


def frost_base(draws: Draws, height: int, width: int) -> Tensor:
    """Grey procedural frost ``[B, 1, H, W]``, features sized relative to a 224-pixel crop.

    Fractal value noise (haze), ridged fractal noise (bright veins) and ice crystals: six-armed stars
    with fading arms (arms 5% and 2% of the crop side), seeded more densely along the ridges.
    """
    cells = 3 * min(height, width) / CROP
    haze = value_noise(draws, "frost:haze", height, width, cells)
    ridges = (1 - (2 * value_noise(draws, "frost:ridges", height, width, cells) - 1).abs()) ** 4
    crystals = torch.zeros_like(haze)
    for size, (arm_fraction, density) in enumerate(_CRYSTALS):
        arm = arm_fraction * CROP
        seeds = (draws.uniform(f"frost:seed:{size}", (1, height, width)) < density * (0.25 + ridges)).float()
        seeds *= draws.uniform(f"frost:weight:{size}", (1, height, width), 0.4, 1.0)
        angles = draws.uniform(f"frost:angle:{size}", (), 0.0, 60.0)
        crystals += filter2d(seeds, _star_kernels(arm, angles), mode="reflect")
    return gaussian_blur((0.4 * haze + 0.55 * ridges + crystals).clamp(0, 1), 0.4)


@functools.lru_cache(maxsize=1)
def _synthetic_images() -> tuple[Tensor, ...]:
    """The five procedural frost images ``[3, H, W]`` in [0, 1] (CPU), matched to :data:`PROFILES`."""
    images = []
    for i, ((h, w), profile) in enumerate(zip(PHOTO_SIZES, PROFILES, strict=True)):
        draws = Draws(torch.tensor([mix_int(0xF2057 + i)], dtype=torch.int64))
        base = frost_base(draws, h, w)[0, 0].double().numpy()
        weights = np.outer(crop_weights(h), crop_weights(w)).ravel()
        order = np.argsort(base.ravel(), kind="stable")
        cumulative = np.cumsum(weights[order])
        ranks = np.empty(h * w)
        ranks[order] = (cumulative - weights[order] / 2) / cumulative[-1]
        levels = np.linspace(0, 1, 65)
        channels = [np.interp(ranks, levels, np.asarray(q, dtype=np.float64)).reshape(h, w) for q in profile]
        images.append(torch.from_numpy(np.stack(channels) / 255.0).float())
    return tuple(images)


@functools.lru_cache(maxsize=1)
def _photo_images() -> tuple[Tensor, ...]:
    return tuple(torch.from_numpy(p.copy()).permute(2, 0, 1).float().div_(255.0) for p in read_photos())


@functools.lru_cache(maxsize=8)
def bank(source: str, device: str) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """The five frost images of ``source``, zero-padded into one ``[5, 3, Hmax, Wmax]`` tensor on
    ``device``, their sizes ``[5, 2]`` (int64, on ``device``) and the smallest (height, width)."""
    if source not in SOURCES:
        raise ValueError(f"unknown frost source {source!r}; choose from {SOURCES}")
    images = _synthetic_images() if source == "texture" else _photo_images()
    sizes = torch.tensor([tuple(image.shape[1:]) for image in images], dtype=torch.int64)
    height, width = (int(v) for v in sizes.max(dim=0).values)
    stacked = torch.stack([F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1]))
                           for image in images])
    smallest = (int(sizes[:, 0].min()), int(sizes[:, 1].min()))
    return stacked.to(device), sizes.to(device), smallest


def frost_layer(draws: Draws, height: int, width: int, source: str = "texture", scale: float = 1.0) -> Tensor:
    """One random frost crop per image times ``scale``, ``[B, 3, H, W]`` (see the module docstring)."""
    images, sizes, (min_h, min_w) = bank(source, str(draws.device))
    size_ratio = min(height, width) / CROP
    win_h, win_w = round(height / size_ratio), round(width / size_ratio)
    fit = min(1.0, (min_h - 1) / win_h, (min_w - 1) / win_w)
    win_h, win_w = max(1, int(win_h * fit)), max(1, int(win_w * fit))
    photo = draws.integers("frost:photo", (), 0, len(PHOTO_FILES))
    top = torch.floor(draws.uniform("frost:top", ()) * (sizes[photo, 0] - win_h)).long()
    left = torch.floor(draws.uniform("frost:left", ()) * (sizes[photo, 1] - win_w)).long()
    if images.device.type == "cpu":  # slices, scaled while copied: cheaper than a gather on the CPU
        crops = torch.empty(len(draws), 3, win_h, win_w)
        for i, (p, t, s) in enumerate(zip(photo.tolist(), top.tolist(), left.tolist(), strict=True)):
            torch.mul(images[p, :, t : t + win_h, s : s + win_w], scale, out=crops[i])
    else:
        rows = (top[:, None] + torch.arange(win_h, device=images.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(win_w, device=images.device))[:, None, None, :]
        channels = torch.arange(3, device=images.device)[None, :, None, None]
        crops = images[photo[:, None, None, None], channels, rows, cols] * scale
    if (win_h, win_w) == (height, width):
        return crops
    if win_h >= height and win_w >= width:
        return box_resize(crops, height, width)
    return F.interpolate(crops, size=(height, width), mode="bilinear", align_corners=False)


if __name__ == "__main__":  # print PROFILES from the installed photographs
    print("PROFILES = (")
    for photo in read_photos():
        print("    (")
        for channel in profile_of(photo):
            print(f"        {channel},")
        print("    ),")
    print(")")
