"""Deterministic batched image operations behind :mod:`streams.corruptions`.

Every function takes and returns float tensors ``[B, C, H, W]`` (or builds small kernels) on the
device of its input and draws no random numbers: the random fields are drawn by the callers from a
seeded CPU generator. Boundary handling follows the libraries the ImageNet-C reference code called:

- ``"replicate"``: repeat the edge pixel (OpenCV ``BORDER_REPLICATE``, scipy ``nearest``);
- ``"reflect"``: half-sample symmetric, ``d c b a | a b c d`` (scipy ``reflect``);
- ``"mirror"``: whole-sample symmetric, ``d c b | a b c d`` (OpenCV ``BORDER_REFLECT_101``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_MODES = ("replicate", "reflect", "mirror")


def fold_index(index: Tensor, n: int, mode: str) -> Tensor:
    """Map (possibly out-of-range) integer indices into ``[0, n)`` by the boundary rule ``mode``."""
    if mode not in PAD_MODES:
        raise ValueError(f"unknown boundary mode {mode!r}; expected one of {PAD_MODES}")
    if mode == "replicate" or n == 1:
        return index.clamp(0, n - 1)
    period = 2 * n if mode == "reflect" else 2 * n - 2
    folded = index.remainder(period)
    return torch.where(folded >= n, period - 1 - folded if mode == "reflect" else period - folded, folded)


def pad(x: Tensor, ph: int, pw: int, mode: str) -> Tensor:
    """Pad the last two dims by ``ph`` rows and ``pw`` columns on each side (any pad size)."""
    h, w = x.shape[-2:]
    rows = fold_index(torch.arange(-ph, h + ph, device=x.device), h, mode)
    cols = fold_index(torch.arange(-pw, w + pw, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, device: torch.device | str = "cpu") -> Tensor:
    """Normalised 1-D Gaussian taps with radius ``round(truncate * sigma)`` (scipy's rule, at least 1)."""
    if sigma <= 0:
        return torch.ones(1, device=device)
    radius = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    taps = torch.exp(-0.5 * (t / sigma) ** 2)
    return taps / taps.sum()


def blur_matrix(n: int, sigma: float, truncate: float, mode: str, device: torch.device | str) -> Tensor:
    """``[n, n]`` matrix of a 1-D Gaussian filter with the boundary folded in (exact for any sigma)."""
    taps = gaussian_kernel1d(sigma, truncate, device)
    radius = taps.numel() // 2
    rows = torch.arange(n, device=device).unsqueeze(1).expand(n, taps.numel())
    cols = fold_index(rows + torch.arange(-radius, radius + 1, device=device), n, mode)
    matrix = torch.zeros(n, n, device=device)
    matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), taps.repeat(n), accumulate=True)
    return matrix


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """Separable Gaussian blur of the last two dims (skimage ``gaussian``; default mode ``nearest``).

    Applied as two small matrix products, so a sigma larger than the image is handled exactly.
    """
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    rows = blur_matrix(h, sigma, truncate, mode, x.device)
    cols = blur_matrix(w, sigma, truncate, mode, x.device)
    return rows @ x @ cols.T


def filter2d(x: Tensor, kernel: Tensor, mode: str = "mirror") -> Tensor:
    """Correlate ``x [B, C, H, W]`` with an odd-sized kernel (``cv2.filter2D`` semantics) via the FFT.

    ``kernel`` is ``[kh, kw]`` (shared) or ``[B, 1, kh, kw]`` (one per image, shared over channels).
    The FFT keeps large kernels (defocus radius 10, motion blur width 41) cheap on a whole batch.
    """
    kh, kw = kernel.shape[-2:]
    h, w = x.shape[-2:]
    padded = pad(x, kh // 2, kw // 2, mode)
    size = (_fast_length(padded.shape[-2]), _fast_length(padded.shape[-1]))  # zero tail: no wrap-around
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernel.to(x.dtype), s=size).conj()
    return torch.fft.irfft2(spectrum, s=size)[..., :h, :w]


def _fast_length(n: int) -> int:
    """Smallest length >= n with no prime factor above 7 (fast FFT sizes)."""
    while True:
        m = n
        for prime in (2, 3, 5, 7):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


def disk_kernel(radius: float, alias_sigma: float, device: torch.device | str = "cpu") -> Tensor:
    """Normalised defocus disk ``[K, K]`` of a real-valued radius (see :func:`_disk_kernel`), cached."""
    return _disk_kernel(float(radius), float(alias_sigma)).to(device, copy=True)


@functools.lru_cache(maxsize=64)
def _disk_kernel(radius: float, alias_sigma: float) -> Tensor:
    """Normalised defocus disk of a real-valued radius, then the reference's anti-alias Gaussian.

    The reference thresholds ``x^2 + y^2 <= r^2`` on the pixel grid (a hard, aliased disk). Here the
    disk is sampled 16x16 times per pixel and the samples are splatted bilinearly onto the grid, so
    the blur grows continuously with the radius, also for the sub-pixel radii of small images.
    """
    sub = 16
    reach = int(math.ceil(radius)) + 1
    t = torch.arange(-radius * sub, radius * sub + 1, dtype=torch.float32) / sub
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    inside = ys**2 + xs**2 <= radius**2
    ys, xs = ys[inside] + reach, xs[inside] + reach
    y0, x0 = ys.floor(), xs.floor()
    fy, fx = ys - y0, xs - x0
    size = 2 * reach + 1
    disk = torch.zeros(size * size)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            disk.index_add_(0, ((y0 + dy) * size + x0 + dx).long(), wy * wx)
    disk = disk.view(size, size)
    taps = gaussian_kernel1d(alias_sigma, 3.0)
    if taps.numel() > 1:
        disk = F.conv2d(disk[None, None], (taps[:, None] * taps[None, :])[None, None], padding=taps.numel() // 2)[0, 0]
    return disk / disk.sum()


def motion_kernels(radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """One-sided motion-blur kernels ``[B, 1, K, K]``, one per angle (ImageMagick ``MotionBlurImage``).

    As in the ``imagecorruptions`` port: ``2 * radius + 1`` taps at integer offsets
    ``ceil(i * (sin a, cos a) - 0.5)``, weighted by a half Gaussian ``exp(-i^2 / (2 sigma^2))``.
    """
    width = 2 * max(0, int(round(radius))) + 1
    device = angles_deg.device
    steps = torch.arange(width, device=device, dtype=torch.float32)
    weights = torch.exp(-0.5 * (steps / max(sigma, 1e-6)) ** 2)
    weights = weights / weights.sum()
    theta = torch.deg2rad(angles_deg.float())[:, None]
    dy = torch.ceil(steps * torch.sin(theta) - 0.5).long()
    dx = torch.ceil(steps * torch.cos(theta) - 0.5).long()
    size, centre = 2 * width - 1, width - 1
    flat = torch.zeros(angles_deg.numel(), size * size, device=device)
    flat.scatter_add_(1, (dy + centre) * size + (dx + centre), weights.expand_as(dy).contiguous())
    return flat.view(-1, 1, size, size)


def clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """Zoom into the centre by ``zoom >= 1`` and crop back to the input size (reference ``clipped_zoom``).

    Bilinear with ``align_corners=True``, the sampling of ``scipy.ndimage.zoom(order=1)``.
    """
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    zh, zw = max(h, round(ch * zoom)), max(w, round(cw * zoom))
    out = F.interpolate(crop, size=(zh, zw), mode="bilinear", align_corners=True)
    trim_h, trim_w = (zh - h) // 2, (zw - w) // 2
    return out[..., trim_h : trim_h + h, trim_w : trim_w + w]


def box_resize_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu") -> Tensor:
    """``[n_out, n_in]`` matrix of PIL's ``BOX`` resampling along one axis.

    Output pixel ``i`` averages the input pixels whose centres fall in its footprint
    ``(i, i + 1] * n_in / n_out`` (widened to one input pixel when upscaling, i.e. nearest neighbour).
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (torch.arange(n_out, device=device, dtype=torch.float64)[:, None] + 0.5) * scale
    index = torch.arange(n_in, device=device, dtype=torch.float64)[None, :]
    offsets = (index + 0.5 - centres) / support
    window = (index >= torch.floor(centres - support / 2 + 0.5)) & (index < torch.floor(centres + support / 2 + 0.5))
    weights = (window & (offsets > -0.5) & (offsets <= 0.5)).to(torch.float32)
    return weights / weights.sum(dim=1, keepdim=True)


def box_resize(x: Tensor, height: int, width: int) -> Tensor:
    """Resize the last two dims with PIL's ``BOX`` filter (separable, as two matrix products)."""
    rows = box_resize_matrix(x.shape[-2], height, x.device)
    cols = box_resize_matrix(x.shape[-1], width, x.device)
    return rows @ x @ cols.T


_LUMA = (0.299, 0.587, 0.114)


def rgb_to_gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``[B, 1, H, W]`` (OpenCV ``COLOR_RGB2GRAY``)."""
    weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# JPEG: baseline DCT quantisation, batched (libjpeg's tables and quality scaling, 4:2:0 chroma).
# ----------------------------------------------------------------------------------------------

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
    """libjpeg ``jpeg_quality_scaling`` applied to a base table, clamped to the baseline range 1..255."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.float32, device=device)
    return torch.floor((table * scale + 50) / 100).clamp(1, 255)


def _dct_matrix(device: torch.device | str) -> Tensor:
    """Orthonormal 8-point DCT-II matrix (JPEG's FDCT normalisation)."""
    k = torch.arange(8, dtype=torch.float32, device=device)[:, None]
    n = torch.arange(8, dtype=torch.float32, device=device)[None, :]
    basis = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    basis[0] = basis[0] / math.sqrt(2)
    return basis


def _quantise_blocks(plane: Tensor, table: Tensor) -> Tensor:
    """DCT each 8x8 block of ``plane [B, C, H, W]``, round to multiples of ``table``, invert."""
    h, w = plane.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    plane = F.pad(plane, (0, pw, 0, ph), mode="replicate") if ph or pw else plane
    b, c, hp, wp = plane.shape
    blocks = plane.view(b, c, hp // 8, 8, wp // 8, 8).transpose(3, 4)
    dct = _dct_matrix(plane.device)
    coeffs = dct @ blocks @ dct.T
    coeffs = torch.round(coeffs / table) * table
    blocks = dct.T @ coeffs @ dct
    return blocks.transpose(3, 4).reshape(b, c, hp, wp)[..., :h, :w]


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Simulate a baseline JPEG encode/decode of ``x [B, 3, H, W]`` in [0, 1] at ``quality``.

    JFIF YCbCr, 4:2:0 chroma subsampling by 2x2 averaging (PIL's default for these qualities),
    per-block DCT quantisation with the Annex K tables scaled as libjpeg does, and the decoder's
    "fancy" (triangular, = bilinear half-pixel) chroma upsampling. Entropy coding is lossless and
    skipped; the result is not rounded to 8 bits.
    """
    h, w = x.shape[-2:]
    to_ycc = torch.tensor(_RGB_TO_YCBCR, device=x.device, dtype=x.dtype)
    to_rgb = torch.tensor(_YCBCR_TO_RGB, device=x.device, dtype=x.dtype)
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
