"""JPEG encode/decode of image batches for :mod:`streams.corruptions` (``jpeg_compression``, ``jpeg_roundtrip``).

Two paths with one result up to rounding:

- on the CPU, :func:`codec_jpeg` runs libjpeg itself on uint8 images (PIL's encoder or
  ``torchvision.io.encode_jpeg``, whichever takes the images' memory layout without a strided copy,
  and ``decode_jpeg``: libjpeg-turbo, byte-identical to PIL's ``Image.save(..., "JPEG", quality=q)``
  and decode, i.e. the reference's own computation; PIL alone if torchvision's image extension is
  missing), decoding straight into the output (uint8, or float32 levels / 255);
- elsewhere (CUDA), :func:`simulate_jpeg`: the baseline pipeline as batched tensor ops (JFIF YCbCr,
  4:2:0 chroma, 8x8 DCT quantisation with the Annex K tables scaled by libjpeg's rule, fancy chroma
  upsampling), within about 0.003 mean absolute of libjpeg's output, with no host round trip.
"""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streams._levels import to_uint8

_JPEG_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)


def jpeg_table(base: tuple[tuple[int, ...], ...], quality: int, device: torch.device | str) -> Tensor:
    """libjpeg ``jpeg_quality_scaling`` applied to a base table, clamped to the baseline range 1..255 (cached)."""
    return _jpeg_table(base, int(quality), str(device))


@functools.lru_cache(maxsize=32)
def _jpeg_table(base: tuple[tuple[int, ...], ...], quality: int, device: str) -> Tensor:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.float32)
    return torch.floor((table * scale + 50) / 100).clamp(1, 255).to(device)


@functools.lru_cache(maxsize=8)
def _dct_matrix(device: str) -> Tensor:
    """Orthonormal 8-point DCT-II matrix (JPEG's FDCT normalisation), cached per device."""
    k = torch.arange(8, dtype=torch.float32)[:, None]
    n = torch.arange(8, dtype=torch.float32)[None, :]
    basis = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    basis[0] = basis[0] / math.sqrt(2)
    return basis.to(device)


@functools.lru_cache(maxsize=8)
def _colour_matrices(device: str) -> tuple[Tensor, Tensor]:
    return (torch.tensor(_RGB_TO_YCBCR, dtype=torch.float32).to(device),
            torch.tensor(_YCBCR_TO_RGB, dtype=torch.float32).to(device))


def _quantise_blocks(plane: Tensor, table: Tensor) -> Tensor:
    """DCT each 8x8 block of ``plane [B, C, H, W]``, round to multiples of ``table``, invert."""
    h, w = plane.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    plane = F.pad(plane, (0, pw, 0, ph), mode="replicate") if ph or pw else plane
    b, c, hp, wp = plane.shape
    blocks = plane.view(b, c, hp // 8, 8, wp // 8, 8).transpose(3, 4)
    dct = _dct_matrix(str(plane.device)).to(plane.dtype)
    coeffs = dct @ blocks @ dct.T
    coeffs = torch.round(coeffs / table) * table
    blocks = dct.T @ coeffs @ dct
    return blocks.transpose(3, 4).reshape(b, c, hp, wp)[..., :h, :w]


def simulate_jpeg(x: Tensor, quality: int) -> Tensor:
    """Simulate a baseline JPEG encode/decode of ``x [B, 3, H, W]`` in [0, 1] at ``quality``.

    JFIF YCbCr, 4:2:0 chroma subsampling by 2x2 averaging (PIL's default for these qualities),
    per-block DCT quantisation with the Annex K tables scaled as libjpeg does, and the decoder's
    "fancy" (triangular, = bilinear half-pixel) chroma upsampling. Entropy coding is lossless and
    skipped; the result is not rounded to 8 bits.
    """
    h, w = x.shape[-2:]
    to_ycc, to_rgb = (m.to(x.dtype) for m in _colour_matrices(str(x.device)))
    ycc = torch.einsum("oc,bchw->bohw", to_ycc, x * 255.0)
    luma = ycc[:, :1] - 128.0
    chroma = ycc[:, 1:]
    if h % 2 or w % 2:
        chroma = F.pad(chroma, (0, w % 2, 0, h % 2), mode="replicate")
    chroma = F.avg_pool2d(chroma, 2)
    luma = _quantise_blocks(luma, jpeg_table(_JPEG_LUMA_TABLE, quality, x.device)) + 128.0
    chroma = _quantise_blocks(chroma, jpeg_table(_JPEG_CHROMA_TABLE, quality, x.device))
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    rgb = torch.einsum("oc,bchw->bohw", to_rgb, torch.cat([luma, chroma], dim=1))
    return rgb / 255.0


@functools.lru_cache(maxsize=1)
def _torchvision_codec() -> bool:
    """Whether torchvision's libjpeg encode/decode works here (deprecated there since 0.29: when it
    goes, PIL takes over with the same bytes, only slower)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg

            probe = torch.zeros(3, 8, 8, dtype=torch.uint8)
            decode_jpeg(encode_jpeg(probe, quality=50))
        return True
    except Exception:  # noqa: BLE001 - an image extension that fails to load: fall back to PIL
        return False


def _encode(pixels: Tensor, quality: int) -> list[Tensor]:
    """JPEG files (uint8 byte tensors) of uint8 ``pixels [B, 3, H, W]`` at ``quality``, by libjpeg.

    libjpeg reads interleaved ``H x W x 3`` rows: channels-last images go to torchvision's encoder as
    they are; planar ones to PIL, whose ``Image.merge`` interleaves the three planes in C (faster than
    the strided copy torchvision would make). Both write the same bytes.
    """
    if _torchvision_codec() and pixels.permute(0, 2, 3, 1).is_contiguous():
        from torchvision.io import encode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return encode_jpeg(list(pixels), quality=quality)
    from PIL import Image

    _, _, h, w = pixels.shape
    files = []
    for planes in pixels.contiguous().numpy():
        buffer = io.BytesIO()
        bands = [Image.frombuffer("L", (w, h), plane, "raw", "L", 0, 1) for plane in planes]
        Image.merge("RGB", bands).save(buffer, "JPEG", quality=quality)
        files.append(torch.frombuffer(buffer.getbuffer(), dtype=torch.uint8))
    return files


def _decode_into(files: list[Tensor], out: Tensor) -> None:
    """Decode JPEG ``files`` straight into ``out [B, 3, H, W]`` (uint8, or float32 levels before scaling)."""
    if _torchvision_codec():
        from torchvision.io import decode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = decode_jpeg(files)
        for target, image in zip(out, decoded, strict=True):  # image: a [3, H, W] view of H x W x 3 rows
            target.copy_(image)
        return
    from PIL import Image

    for target, data in zip(out, files, strict=True):
        image = np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))
        target.copy_(torch.from_numpy(image).permute(2, 0, 1))


def codec_jpeg(pixels: Tensor, quality: int, out: Tensor | None = None) -> Tensor:
    """libjpeg encode + decode of each image of uint8 ``pixels [B, 3, H, W]`` (CPU) at ``quality``.

    The decoded images are copied straight into ``out`` (uint8 levels, or float32 levels / 255 when
    ``out`` is float32); without ``out``, a new uint8 tensor.
    """
    out = torch.empty(pixels.shape, dtype=torch.uint8) if out is None else out
    _decode_into(_encode(pixels, quality), out)
    return out if out.dtype == torch.uint8 else out.mul_(1.0 / 255.0)


def jpeg(x: Tensor, quality: int, out: Tensor | None = None) -> Tensor:
    """JPEG round trip of ``x [B, 3, H, W]`` at ``quality``, into ``out`` when given.

    On the CPU :func:`codec_jpeg` (floats in [0, 1] are rounded to 8-bit levels first; the result
    has ``out``'s dtype, else ``x``'s: uint8 levels, or float32 levels / 255); elsewhere (floats only)
    :func:`simulate_jpeg`.
    """
    if x.device.type == "cpu":
        if out is None:
            out = torch.empty(x.shape, dtype=torch.uint8 if x.dtype == torch.uint8 else torch.float32)
        return codec_jpeg(x if x.dtype == torch.uint8 else to_uint8(x), quality, out)
    result = simulate_jpeg(x, quality).clamp_(0, 1)
    return result if out is None else out.copy_(result)
