"""``adawise show-corruptions``: write a PNG grid of the 15 corruptions x 5 severities of one image.

The image is, in order of preference: ``--image PATH`` (any file PIL opens, centre-cropped to a
square), ``--fashion-index N`` of the Fashion-MNIST test set (upscaled, grey to RGB), the first
Fashion-MNIST test image when the Debian dataset is installed, else a procedural test pattern.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streams.corruptions import CORRUPTIONS, corruption_grid

FASHION_TEST_IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``show-corruptions`` options to ``parser``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", metavar="PATH", help="image file to corrupt (centre-cropped to a square)")
    source.add_argument("--fashion-index", type=int, metavar="N",
                        help=f"index into the Fashion-MNIST test set ({FASHION_TEST_IMAGES})")
    parser.add_argument("--size", type=int, default=224, help="side of the square image in pixels (default 224)")
    parser.add_argument("--out", default="corruptions.png", help="PNG file to write (default corruptions.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (default 0)")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS), metavar="NAMES",
                        help="comma-separated subset of the corruptions, in row order (default: all 15)")


def read_idx_image(path: str, index: int) -> np.ndarray:
    """Image ``index`` of a gzipped IDX3 file (MNIST format) as a ``uint8 [rows, cols]`` array."""
    with gzip.open(path, "rb") as handle:
        header = handle.read(16)
        if len(header) < 16 or int.from_bytes(header[:4], "big") != 2051:
            raise ValueError(f"{path} is not an IDX3 image file")
        count, rows, cols = (int.from_bytes(header[i : i + 4], "big") for i in (4, 8, 12))
        if not 0 <= index < count:
            raise ValueError(f"--fashion-index must be in 0..{count - 1}, got {index}")
        handle.seek(16 + index * rows * cols)
        data = handle.read(rows * cols)
    return np.frombuffer(data, dtype=np.uint8).reshape(rows, cols)


def pattern_image(size: int) -> Tensor:
    """Procedural ``[3, size, size]`` image: colour gradients, a checkerboard, rings and a bar chart."""
    t = torch.linspace(0, 1, size)
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    red, green, blue = xs, ys, 1 - 0.5 * (xs + ys)
    checker = ((xs * 8).floor() + (ys * 8).floor()) % 2
    rings = 0.5 + 0.5 * torch.cos(2 * math.pi * 6 * torch.sqrt((xs - 0.5) ** 2 + (ys - 0.5) ** 2))
    image = torch.stack([red, green, blue]) * 0.6 + 0.25 * checker + 0.15 * rings
    bars = (ys > 0.8) & ((xs * 16).floor() % 2 == 0)
    image = torch.where(bars, torch.stack([xs, xs, xs]), image)
    return image.clamp(0, 1)


def _resize(image: Tensor, size: int) -> Tensor:
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def load_image(args: argparse.Namespace) -> Tensor:
    """The ``[3, size, size]`` image in [0, 1] selected by ``args`` (see the module docstring)."""
    if args.image:
        from PIL import Image

        with Image.open(args.image) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        image = torch.from_numpy(array).permute(2, 0, 1)
        side = min(image.shape[1:])
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        return _resize(image[:, top : top + side, left : left + side], args.size)
    if args.fashion_index is not None or os.path.exists(FASHION_TEST_IMAGES):
        index = 0 if args.fashion_index is None else args.fashion_index
        grey = torch.from_numpy(read_idx_image(FASHION_TEST_IMAGES, index).astype(np.float32) / 255.0)
        return _resize(grey[None].expand(3, -1, -1), args.size)
    return pattern_image(args.size)


def main(args: argparse.Namespace) -> int:
    """Write the grid; print its path. Returns 0, or 2 with a message on stderr for bad input."""
    names = [name.strip() for name in args.corruptions.split(",") if name.strip()]
    try:
        if args.size < 8:
            raise ValueError(f"--size must be at least 8, got {args.size}")
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out} is a folder; pass the path of the PNG file to write")
        try:
            image = load_image(args)
        except OSError as error:
            if not args.image:
                raise
            reason = error.strerror or str(error)
            raise ValueError(f"--image {args.image}: {reason}; pass an image file PIL can read (PNG, JPEG, ...)"
                             ) from None
        path = corruption_grid(image, args.out, names=names, seed=args.seed)
    except (OSError, ValueError) as error:
        print(f"show-corruptions: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="show-corruptions", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
