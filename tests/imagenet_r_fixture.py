"""Generate a small ImageNet-R-shaped folder for tests (no downloads).

Layout: ``<root>/<wnid>/<rendition>_<n>.jpg`` for all 200 ImageNet-R wnids, plus, in the first wnid
folder, one corrupt JPEG (``cartoon_999.jpg``), one grayscale JPEG and one RGBA PNG, and the last
wnid folder left empty.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from streams.imagenet_r import IMAGENET_R_WNIDS

CORRUPT_BYTES = b"\xff\xd8not a jpeg"


def _pick(renditions: Sequence[str], wanted: str) -> str:
    return wanted if wanted in renditions else renditions[0]


def make_imagenet_r_folder(root: str | os.PathLike[str],
                           renditions: Sequence[str] = ("art", "cartoon", "sketch", "toy"),
                           per_class: int = 1, size: tuple[int, int] = (40, 48), seed: int = 0,
                           extras: bool = True) -> Path:
    """Write the folder at ``root`` and return it.

    Class ``i`` gets ``per_class`` random RGB JPEGs of ``size`` (height, width), file ``j`` named
    ``{renditions[(i * per_class + j) % len(renditions)]}_{i * per_class + j}.jpg``. With ``extras``
    (default): the first wnid folder also gets ``cartoon_999.jpg`` (corrupt bytes), ``sketch_998.jpg``
    (grayscale, 30x30) and ``toy_997.png`` (RGBA, 30x30) (names fall back to ``renditions[0]`` when
    those renditions are not requested), and the last wnid folder is left empty.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    last = len(IMAGENET_R_WNIDS) - 1
    for i, wnid in enumerate(IMAGENET_R_WNIDS):
        folder = root / wnid
        folder.mkdir(exist_ok=True)
        if extras and i == last:
            continue  # one empty class folder
        for j in range(per_class):
            n = i * per_class + j
            arr = (rng.random((h, w, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(folder / f"{renditions[n % len(renditions)]}_{n}.jpg")
    if extras:
        first = root / IMAGENET_R_WNIDS[0]
        (first / f"{_pick(renditions, 'cartoon')}_999.jpg").write_bytes(CORRUPT_BYTES)
        gray = (rng.random((30, 30)) * 255).astype("uint8")
        Image.fromarray(gray, "L").save(first / f"{_pick(renditions, 'sketch')}_998.jpg")
        rgba = (rng.random((30, 30, 4)) * 255).astype("uint8")
        Image.fromarray(rgba, "RGBA").save(first / f"{_pick(renditions, 'toy')}_997.png")
    return root
