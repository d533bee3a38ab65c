"""Probe: how fast could the float32 contract of pixelate and jpeg_compression be with fused conversions?

``corrupt`` on a float32 batch of these two 8-bit corruptions does the uint8 work plus conversions
(range check, rounding to 8-bit levels, levels back to float32), each one or more torch/numpy passes.
This probe replaces them by single-pass compiled loops (numba, from the ``[reference]`` extra; not
used by adawise itself) with the same results, bit for bit, and times, in one process on one thread,
interleaved: the reference, ``corrupt`` float32, the fused variant, ``corrupt`` uint8, and the
float32 batch's bare memory traffic (read it, write a fresh one). It answers whether 0.9x the
reference is out of reach for the float32 contract even with ideal conversions.

    python benchmarks/probe_fused_8bit.py --severity 3 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Any

import _one_thread  # noqa: F401  (first: one BLAS thread before numpy/torch load; the repo on sys.path)
import numba
import numpy as np
import torch
from bench_corruptions import test_images

from streams import _jpeg, _pixelate
from streams.corruptions import _empty, corrupt

GROUP = 13  # images per group, as corrupt uses for these two on float32 batches


@numba.njit(nogil=True)
def _check_and_round(x: np.ndarray, bits: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """One pass: uint8 ``floor(255 x + 0.5)`` into ``out`` and the min / max of the float32 bit patterns
    (the range check of ``corrupt``)."""
    low, high = np.int32(2147483647), np.int32(-2147483648)
    for i in range(x.size):
        low, high = min(low, bits[i]), max(high, bits[i])
        out[i] = np.uint8(np.int32(x[i] * np.float32(255.0) + np.float32(0.5)))
    return low, high


@numba.njit(nogil=True)
def _interleaved_to_unit(src: np.ndarray, dst: np.ndarray) -> None:
    """One pass: uint8 ``[H, W, 3]`` levels into float32 ``[3, H, W]`` times float32(1 / 255)."""
    scale = np.float32(1.0 / 255.0)
    h, w, _ = src.shape
    for c in range(3):
        for y in range(h):
            for x in range(w):
                dst[c, y, x] = np.float32(src[y, x, c]) * scale


@numba.njit(nogil=True)
def _replicate_to_unit(small: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """One pass: the BOX upscale (a replication) of uint8 ``small`` into float32 ``out`` / 255."""
    scale = np.float32(1.0 / 255.0)
    for i in range(small.shape[0]):
        for c in range(small.shape[1]):
            for y in range(rows.size):
                source, target = small[i, c, rows[y]], out[i, c, y]
                for x in range(cols.size):
                    target[x] = np.float32(source[cols[x]]) * scale


def fused(name: str, severity: int, x: torch.Tensor) -> torch.Tensor:
    """``corrupt(x, name, severity)`` for float32 ``x``, with the conversions as the loops above."""
    out = _empty(tuple(x.shape), x.device)
    values, bits, target = x.numpy(), x.view(torch.int32).numpy(), out.numpy()
    levels = np.empty((GROUP, *x.shape[1:]), dtype=np.uint8)
    h, w = x.shape[-2:]
    for start in range(0, len(x), GROUP):
        n = min(GROUP, len(x) - start)
        low, high = _check_and_round(values[start:start + n].reshape(-1), bits[start:start + n].reshape(-1),
                                     levels[:n].reshape(-1))
        if low < 0 or high > 0x3F800000:
            raise ValueError("images must be in [0, 1]")
        if name == "pixelate":
            factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
            small = _pixelate._downscale_pil(torch.from_numpy(levels[:n]), int(h * factor), int(w * factor))
            rows = _pixelate.replication_index(small.shape[-2], h).numpy()
            cols = _pixelate.replication_index(small.shape[-1], w).numpy()
            _replicate_to_unit(small.numpy(), rows, cols, target[start:start + n])
        else:
            from torchvision.io import decode_jpeg

            files = _jpeg._encode(torch.from_numpy(levels[:n]), (25, 18, 15, 10, 7)[severity - 1])
            for i, image in enumerate(decode_jpeg(files)):
                _interleaved_to_unit(image.permute(1, 2, 0).numpy(), target[start + i])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DeprecationWarning)
    from imagenet_c_reference import raw_function
    from PIL import Image

    images = test_images(64)
    u = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    x = (u.float() / 255).contiguous()
    pil_images = [Image.fromarray(image) for image in images]
    print(f"load average before: {os.getloadavg()}")
    for name in ("pixelate", "jpeg_compression"):
        if not torch.equal(fused(name, args.severity, x), corrupt(x, name, args.severity)):
            raise SystemExit(f"{name}: the fused variant differs from corrupt")
        function = raw_function(name)
        cases: dict[str, Any] = {
            "reference": lambda function=function: [np.asarray(function(image, args.severity)) for image in pil_images],
            "corrupt float32": lambda name=name: corrupt(x, name, args.severity),
            "fused float32": lambda name=name: fused(name, args.severity, x),
            "corrupt uint8": lambda name=name: corrupt(u, name, args.severity),
            "float32 traffic": lambda: _empty(tuple(x.shape), x.device).copy_(x),
        }
        times: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(args.repeats):
            for label, case in cases.items():
                start = time.process_time()
                case()
                times[label].append(time.process_time() - start)
        reference = statistics.median(times["reference"])
        for label in cases:
            median = statistics.median(times[label])
            ratio = f"ratio {reference / median:5.2f}" if label != "float32 traffic" else ""
            print(f"{name:17s} s{args.severity} {label:16s} {1e3 * median:7.2f} ms per batch of 64  {ratio}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
