"""ImageNet-C corruptions as batched torch operations (CPU or CUDA), severities 1-5.

Provenance: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (code: hendrycks/robustness,
``ImageNet-C/create_c/make_imagenet_c.py``). The reference per corruption: that file for
``elastic_transform``, ``frost`` and ``pixelate``; for the other twelve ``imagecorruptions-imaug``
1.1.5 (a maintained fork of Michaelis et al.'s ``imagecorruptions``, which ports the ImageMagick
motion blur to numpy). The constants per severity are the reference's, written for 224x224 images;
this is an independent re-implementation in torch, not a copy. ``docs/imagenet_c.md`` has the
measured strength of every corruption and severity against the reference, and how it was measured.

``corrupt(images, name, severity, seed, indices)`` takes ``[B, 3, H, W]`` floats in [0, 1] (or uint8) and
returns the same shape, dtype and device, in [0, 1] (uint8: the float result truncated to 8 bits as
ImageNet-C's files were written; pixelate and, on the CPU, jpeg_compression work on the uint8 levels
directly, the others on ``u.float() / 255``). Randomness is per image (:mod:`streams._rng`, a
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
- defocus at other sizes than 224: the disk is supersampled (continuous in the radius); at 224 it is
  the reference's kernel;
- elastic_transform: the affine warp is bilinear in floating point (OpenCV rounds coordinates to
  1/32 pixel).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streams._corruption_ops import FUNCTIONS, WRITES_OUT, takes_uint8
from streams._frost import SOURCES as FROST_SOURCES
from streams._jpeg import codec_jpeg, jpeg
from streams._levels import truncate_to_uint8, unit_from_uint8
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
assert tuple(FUNCTIONS) == CORRUPTIONS

# CPU: images per group so that one float tensor stays near 2 MB (8 MB where per-op or per-call overhead
# dominates; as many bytes of uint8 where pixelate and jpeg_compression work on uint8 groups)
_GROUP_ELEMENTS = 1 << 19
_GROUP_ELEMENTS_BY_NAME = {"fog": 1 << 21, "frost": 1 << 21, "brightness": 1 << 21, "contrast": 1 << 21,
                           "pixelate": 1 << 21, "jpeg_compression": 1 << 21}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _check(images: Tensor, name: str, severity: int) -> None:
    if name not in FUNCTIONS:
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
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise TypeError(
            f"images must be floating point in [0, 1] or uint8 in 0..255, got dtype {images.dtype} "
            "(convert with images.float() / 255 or images.to(torch.uint8))"
        )


_ONE_BITS = 0x3F800000
"""The bit pattern of float32 1.0: as int32, the patterns of +0.0 .. 1.0 are exactly 0 .. this (NaN,
negative values and -0.0 fall outside), so one integer min/max pass checks the range and NaN at once."""


def _check_range(images: Tensor, clamp: bool, indices: Tensor | None = None) -> bool:
    """Refuse NaN, values outside [0, 1] unless ``clamp``, and negative ``indices`` (GPU tensors, which
    :func:`check_indices` leaves to this check): one host sync per call on a GPU. ``images`` is float32.

    Returns whether some value lies outside [+0.0, 1.0] (what ``clamp`` then clips; -0.0 included).
    """
    stats = torch.stack(torch.aminmax(images.view(torch.int32))).to(torch.int64)
    if indices is not None and indices.device.type != "cpu":
        stats = torch.cat([stats, indices.min()[None]])
    values = stats.tolist()
    if len(values) > 2 and values[2] < 0:
        raise ValueError("indices must be non-negative dataset indices")
    if values[0] >= 0 and values[1] <= _ONE_BITS:
        return False
    low, high = (float(v) for v in torch.aminmax(images))
    if math.isnan(low) or math.isnan(high):
        count = int(torch.isnan(images).sum())
        raise ValueError(f"images contain {count} NaN value(s); replace them first (e.g. torch.nan_to_num)")
    if not clamp and (low < 0 or high > 1):
        raise ValueError(
            f"images must be in [0, 1], got values from {low:.4g} to {high:.4g} (normalised images? pass "
            "[0, 1] images, with normalisation inside the model, or clamp=True to clip them to [0, 1])"
        )
    return True


def _check_device_indices(indices: Tensor | None) -> None:
    """Refuse negative GPU ``indices`` (:func:`check_indices` checks CPU ones): uint8 images, which
    need no range check, still need this one (one host sync)."""
    if indices is not None and indices.device.type != "cpu" and int(indices.min()) < 0:
        raise ValueError("indices must be non-negative dataset indices")


def _groups(name: str, batch: int, per_image: int, device: torch.device, itemsize: int = 4) -> list[tuple[int, int]]:
    """Image ranges processed together: the whole batch on a GPU, a few MB per tensor on the CPU
    (``itemsize``: bytes per value of the group the function works on)."""
    elements = _GROUP_ELEMENTS_BY_NAME.get(name, _GROUP_ELEMENTS) * 4 // itemsize
    size = batch if device.type != "cpu" else max(1, elements // max(1, per_image))
    return [(start, min(batch, start + size)) for start in range(0, batch, size)]


def _empty(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """An uninitialised float32 (or uint8) tensor; large CPU ones come from numpy, whose allocator asks
    Linux for transparent huge pages (first touch of a 38 MB batch: about 4 ms instead of 14)."""
    if device.type == "cpu" and math.prod(shape) >= 1 << 20:
        return torch.from_numpy(np.empty(shape, dtype=np.uint8 if dtype == torch.uint8 else np.float32))
    return torch.empty(shape, dtype=dtype, device=device)


def _jpeg_file_roundtrip(result: Tensor, target: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``jpeg_roundtrip``: ``result`` (floats in [0, 1] or uint8 levels) truncated to 8 bits as
    ``np.uint8``, JPEG-encoded and decoded at quality 85; ``dtype`` (float32 or uint8), into ``target``."""
    if result.device.type == "cpu":
        levels = result if result.dtype == torch.uint8 else truncate_to_uint8(result)
        if target is None:
            target = _empty(tuple(result.shape), result.device, dtype)
        return codec_jpeg(levels, JPEG_FILE_QUALITY, target)
    if result.dtype == torch.uint8:
        levels = result.float().div_(255.0)
    else:
        levels = torch.floor(result * 255.0 + 1e-3).div_(255.0)
    if dtype == torch.uint8:
        return truncate_to_uint8(jpeg(levels, JPEG_FILE_QUALITY), target)
    return jpeg(levels, JPEG_FILE_QUALITY, target)


def _finish(result: Tensor, group: Tensor, target: Tensor | None, dtype: torch.dtype, jpeg_roundtrip: bool) -> Tensor:
    """A function's raw ``result`` as :func:`corrupt` returns it: floats clipped to [0, 1] (never in the
    input ``group`` itself), then the JPEG file round trip, or converted to ``dtype`` (uint8: truncated
    as ``np.uint8``); into ``target`` when given."""
    if result.dtype != torch.uint8:
        into = target if target is not None and dtype == torch.float32 and not jpeg_roundtrip else None
        if into is None and result.data_ptr() == group.data_ptr():
            result = result.clone()  # e.g. a 1-pixel side that a resize leaves as it is
        result = result.clamp_(0, 1) if into is None else torch.clamp(result, 0, 1, out=into)
    if jpeg_roundtrip:
        return _jpeg_file_roundtrip(result, target, dtype)
    if result.dtype != dtype:  # the floats of a uint8 batch
        return truncate_to_uint8(result, target)
    if target is not None and result.data_ptr() != target.data_ptr():
        target.copy_(result)
    return result


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0,
            indices: Sequence[int] | Tensor | None = None, *, clamp: bool = False,
            jpeg_roundtrip: bool = False, frost_source: str = "texture") -> Tensor:
    """Apply ImageNet-C corruption ``name`` at ``severity`` (1-5) to a batch.

    Args:
        images: ``[B, 3, H, W]`` RGB on any device: floating point in [0, 1], or uint8 (0..255, as
            ImageNet-C's files and most image decoders hold them; see Returns).
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
        A new contiguous tensor of the same shape, dtype and device, in [0, 1] (uint8: 0..255). The
        same arguments give the same output on CPU and CUDA alike, up to float rounding. A uint8
        batch ``u`` gives exactly ``np.uint8``-style truncation of the float result,
        ``floor(255 * corrupt(u.float() / 255, ...) + 1e-3)``, as ImageNet-C's files were written;
        pixelate (and jpeg_compression on the CPU) then run on the 8-bit levels directly.
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
    function = FUNCTIONS[name]
    options = {"source": frost_source} if name == "frost" else {}
    uint8 = images.dtype == torch.uint8
    on_levels = uint8 and takes_uint8(name, x.device)  # the function takes the uint8 group itself
    dtype = torch.uint8 if uint8 else torch.float32
    groups = _groups(name, b, x[0].numel(), x.device, 1 if on_levels else 4)
    out = _empty(tuple(x.shape), x.device, dtype) if len(groups) > 1 else None
    with torch.no_grad():
        for start, stop in groups:
            ids = None if index_tensor is None else index_tensor[start:stop]
            group = x[start:stop]
            if uint8:
                _check_device_indices(ids)
                if not on_levels:
                    group = unit_from_uint8(group)  # exactly u.float() / 255
            else:  # contiguous: the functions' views need it (a channels-last batch is copied)
                group = group.float().contiguous()
                if _check_range(group, clamp, ids) and clamp:
                    group = group.clamp(0, 1)
            draws = Draws(image_keys(seed, group, ids)) if name in RANDOM_CORRUPTIONS else None
            target = None if out is None else out[start:stop]
            if name in WRITES_OUT and not jpeg_roundtrip and (on_levels or not uint8):
                result = function(group, int(severity), draws, out=target)  # in range, of the output dtype
            else:
                result = _finish(function(group, int(severity), draws, **options), group, target, dtype,
                                 jpeg_roundtrip)
            if out is None:
                out = result.contiguous()
    return out if images.dtype in (torch.float32, torch.uint8) else out.to(images.dtype)


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
