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
    """``[n, n]`` matrix of a 1-D Gaussian filter with the boundary folded in (exact for any sigma), cached."""
    return _blur_matrix(n, float(sigma), float(truncate), mode, str(device))


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float, truncate: float, mode: str, device: str) -> Tensor:
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
    The FFT keeps large kernels (defocus radius 10, motion blur width 41) cheap on a whole batch; its
    length has no prime factor above 7 and covers the padded image, so nothing wraps around.
    """
    kh, kw = kernel.shape[-2:]
    h, w = x.shape[-2:]
    padded = pad(x, kh // 2, kw // 2, mode)
    size = (_fast_length(padded.shape[-2]), _fast_length(padded.shape[-1]))
    spectrum = torch.fft.rfft2(padded, s=size)
    spectrum *= torch.fft.rfft2(kernel.to(x.dtype), s=size).conj_physical()
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
    return _cached_on(str(device), _disk_kernel, float(radius), float(alias_sigma))


def reference_disk_kernel(radius: int, alias_sigma: float, device: torch.device | str = "cpu") -> Tensor:
    """The reference's defocus kernel for an integer radius (ImageNet-C ``disk``), cached.

    ``x^2 + y^2 <= r^2`` on the grid ``[-L, L]^2`` (``L = max(8, r)``), normalised, then OpenCV's
    ``GaussianBlur`` with a 3x3 (``r <= 8``) or 5x5 window of sigma ``alias_sigma`` (its kernel
    formula and its default ``BORDER_REFLECT_101`` at the array's edge).
    """
    return _cached_on(str(device), _reference_disk_kernel, int(radius), float(alias_sigma))


@functools.lru_cache(maxsize=64)
def _cached_on(device: str, build, *args) -> Tensor:  # noqa: ANN001 - a cached CPU builder
    """``build(*args)`` moved to ``device`` once (no host-to-device copy per call)."""
    return build(*args).to(device)


@functools.lru_cache(maxsize=16)
def _reference_disk_kernel(radius: int, alias_sigma: float) -> Tensor:
    half = max(8, radius)
    size = 3 if radius <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    disk = (xs**2 + ys**2 <= radius**2).to(torch.float64)
    disk /= disk.sum()
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * alias_sigma**2))
    taps /= taps.sum()
    padded = pad(disk[None, None], size // 2, size // 2, "mirror")
    blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, size, 1)), taps.view(1, 1, 1, size))
    return blurred[0, 0].to(torch.float32)


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


@functools.lru_cache(maxsize=64)
def _box_taps(n_in: int, n_out: int, device: str) -> tuple[Tensor, Tensor, bool]:
    """The rows of :func:`box_resize_matrix` as taps: input index and weight ``[T, n_out]`` on ``device``,
    and whether every weight is 1 (nearest-neighbour upscaling)."""
    matrix = box_resize_matrix(n_in, n_out)
    count = int((matrix > 0).sum(dim=1).max())
    first = (matrix > 0).to(torch.int64).argmax(dim=1)
    tap = torch.arange(count)[:, None]
    index = (first[None, :] + tap).clamp_(max=n_in - 1)
    weight = torch.where(tap < (matrix > 0).sum(dim=1)[None, :], torch.gather(matrix.T, 0, index), 0.0)
    return index.to(device), weight.to(device), bool(torch.all(weight == 1))


def _box_axis(x: Tensor, n_out: int, dim: int, out: Tensor | None = None) -> Tensor:
    n_in = x.shape[dim]
    if n_in == n_out:
        return x if out is None else out.copy_(x)
    index, weight, unit = _box_taps(n_in, n_out, str(x.device))
    shape = [1] * x.dim()
    shape[dim] = n_out
    last = dim == x.dim() - 1
    taps = index.shape[0]
    total = None
    for tap in range(taps):
        into = out if taps == 1 else None
        if last:  # gather with a broadcast index: much faster than index_select along the last dim
            index_shape = (*x.shape[:-1], n_out)
            term = (torch.gather(x, dim, index[tap].expand(index_shape), out=into) if into is not None
                    else x.gather(dim, index[tap].expand(index_shape)))
        else:
            term = (torch.index_select(x, dim, index[tap], out=into) if into is not None
                    else x.index_select(dim, index[tap]))
        if not unit:
            term *= weight[tap].view(shape).to(x.dtype)
        total = term if total is None else total.add_(term)
    if out is not None and taps > 1:
        out.copy_(total)
        return out
    return total


def box_resize(x: Tensor, height: int, width: int, out: Tensor | None = None) -> Tensor:
    """Resize the last two dims with PIL's ``BOX`` filter (separable: a few gathers per axis), into
    ``out`` when given.

    Rows first when they shrink (less data for the slower column gathers), columns first otherwise.
    """
    rows, cols = x.dim() - 2, x.dim() - 1
    if height <= x.shape[rows]:
        return _box_axis(_box_axis(x, height, rows), width, cols, out)
    return _box_axis(_box_axis(x, width, cols), height, rows, out)


_LUMA = (0.299, 0.587, 0.114)


def rgb_to_gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``[B, 1, H, W]`` (OpenCV ``COLOR_RGB2GRAY``)."""
    red, green, blue = _LUMA
    return x[:, 0:1] * red + x[:, 1:2] * green + x[:, 2:3] * blue


def copy_chain_sources(dy: Tensor, dx: Tensor, reach: int, steps: int = 6) -> Tensor:
    """Where each pixel's value comes from after the reference glass blur's sweep of copies.

    ImageNet-C's ``glass_blur`` visits the pixels ``(h, w)`` with ``reach < h <= H - reach`` and
    ``reach < w <= W - reach`` in descending raster order and runs ``x[h, w], x[h', w'] = x[h', w'],
    x[h, w]`` with ``(h', w') = (h + dy, w + dx)``. On an ``H x W x 3`` numpy array both sides are
    views, so this *copies* ``x[h', w']`` into ``x[h, w]`` (the second assignment writes back the
    value just copied). A pixel therefore takes the value its source held when it was visited:
    the original, unless the source was visited before (later in raster order, inside the region),
    in which case it is that source's own result. Following those links is resolved here for all
    pixels at once by pointer doubling (``steps`` rounds resolve chains up to ``2**steps`` long; a
    link continues with probability below 1/2, so 64 is never reached in practice).

    Args:
        dy, dx: integer offsets ``[B, H, W]`` with ``-reach <= d < reach``.
        reach: the sweep's margin (the reference's ``max_delta``).

    Returns:
        int64 ``[B, H * W]``: the flat index of the original pixel each pixel ends up with.
    """
    b, h, w = dy.shape
    device = dy.device
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    position = (rows * w + cols).expand(b, h, w).reshape(b, h * w)
    swept = ((rows > reach) & (rows <= h - reach) & (cols > reach) & (cols <= w - reach)).expand(b, h, w)
    ty, tx = rows + dy, cols + dx
    target = torch.where(swept, ty * w + tx, rows * w + cols).reshape(b, h * w)
    source_swept = (ty > reach) & (ty <= h - reach) & (tx > reach) & (tx <= w - reach)
    linked = (swept & source_swept).reshape(b, h * w) & (target > position)
    result = torch.where(linked, -1, target)
    pointer = torch.where(linked, target, position)
    for _ in range(steps):
        ahead = result.gather(1, pointer)
        result = torch.where((result < 0) & (ahead >= 0), ahead, result)
        pointer = pointer.gather(1, pointer)
    return torch.where(result < 0, pointer, result)
