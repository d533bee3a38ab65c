"""Image folders: listing (symlink loops and unreadable entries skipped, never a crash), decoding one file
as CLIP's eval crop in [0, 1] (decompression bombs and extreme aspect ratios refused from the header),
batching with failed files dropped, and :class:`FolderStream`, labelled batches of ``root/<class>/<image>``.

:mod:`streams.imagenet_r`, :mod:`streams.imagenet_val` and ``adawise vrf-index`` read their files through here,
so there is one list of image extensions (:data:`IMG_EXTENSIONS`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from streams.base import Batch

__all__ = [
    "IMG_EXTENSIONS", "MAX_PIXELS", "MAX_ASPECT", "FolderStream", "Sample", "collate_drop_failed", "decode_image",
    "files_fingerprint", "list_folders", "list_images",
]


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


#: images with more pixels than this are skipped from their header (PIL's own decompression-bomb limit)
MAX_PIXELS = 89_478_485


#: images whose long side exceeds this many times the short side are skipped from their header (resizing
#: the short side to 224 would blow the long side up: a 1x10000 PNG costs gigabytes)
MAX_ASPECT = 25


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image; alpha is composited on white, 16-bit/float data scaled to 8 bits."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        t = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
        top = 65535.0 if img.mode.startswith("I;16") or float(t.max()) > 255 else 255.0
        t = (t.clamp(0, top) * (255.0 / top)).round().to(torch.uint8)
        img = Image.fromarray(t.numpy(), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def _clip_eval_transform(img: Image.Image, image_size: int) -> Tensor:
    img = TF.resize(img, image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [image_size, image_size])
    return TF.to_tensor(img)


def decode_image(path: str | os.PathLike[str], image_size: int) -> Tensor:
    """One image file as CLIP's eval crop, a [3, S, S] float tensor in [0, 1]; raises on an unreadable or
    truncated file, and (from the header, before decoding) on more than :data:`MAX_PIXELS` pixels or an
    aspect ratio beyond 1::data:`MAX_ASPECT`."""
    with Image.open(path) as img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} pixels, more than the {MAX_PIXELS} an image may have here")
        if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
            raise ValueError(f"extreme aspect ratio {width}x{height} (beyond 1:{MAX_ASPECT}): not a photo to "
                             "centre-crop")
        img.load()  # force a full decode so truncated files fail here
        rgb = _to_rgb(img)
    return _clip_eval_transform(rgb, image_size)


def list_folders(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted names of the visible sub-folders of ``root``, and (path, reason) of entries that cannot be
    checked (a symlink loop, a broken permission): those are skipped, never a crash."""
    names, problems = [], []
    with os.scandir(root) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    names.append(e.name)
            except OSError as err:
                problems.append((str(root / e.name), f"{type(err).__name__}: {err.strerror or err}"))
    return sorted(names), problems


def list_images(folder: Path) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Sorted (file name, size) of the image files in ``folder``, and (path, reason) of what cannot be
    listed: the folder itself (unreadable) or single entries (a symlink loop)."""
    files, problems = [], []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if not e.name.lower().endswith(IMG_EXTENSIONS):
                    continue
                try:
                    if e.is_file():
                        files.append((e.name, e.stat().st_size))
                except OSError as err:
                    problems.append((str(folder / e.name), f"{type(err).__name__}: {err.strerror or err}"))
    except OSError as err:
        problems.append((str(folder), f"unreadable folder ({type(err).__name__}: {err.strerror or err})"))
    return sorted(files), problems


def files_fingerprint(root: Path, files: Sequence[tuple[str, int]]) -> str:
    """A short hash of the files a folder stream reads: paths relative to ``root``, and sizes."""
    digest = hashlib.sha256()
    for path, size in files:
        digest.update(f"{os.path.relpath(path, root)}:{size}\n".encode())
    return digest.hexdigest()[:16]


class Sample(NamedTuple):
    """One decoded file. ``image`` is None when decoding failed; ``error`` then says why."""

    index: int
    path: str
    image: Tensor | None
    label: int
    error: str | None


def collate_drop_failed(items: Sequence[Sample]) -> dict[str, Any]:
    """Stack the decoded samples of a batch; failed ones are dropped and returned under ``skipped``.

    Returns ``{"images": [n,3,S,S] or None, "labels": [n] int64, "indices": [n] int64,
    "skipped": [(path, reason), ...]}``; worker-safe, since the skipped paths travel with the batch.
    """
    ok = [s for s in items if s is not None and s.image is not None]
    skipped = [(s.path, s.error or "unreadable") for s in items if s is not None and s.image is None]
    return {
        "images": torch.stack([s.image for s in ok]) if ok else None,
        "labels": torch.tensor([s.label for s in ok], dtype=torch.long),
        "indices": torch.tensor([s.index for s in ok], dtype=torch.long),
        "skipped": skipped,
    }


class _ImageFiles(Dataset):
    """(path, label) pairs decoded with CLIP's eval transform, without normalisation; a file that cannot be
    decoded comes back as a failed :class:`Sample` (skipped by the collate function)."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int) -> None:
        self.samples, self.image_size = samples, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        path, label = self.samples[i]
        try:
            return Sample(i, path, decode_image(path, self.image_size), label, None)
        except Exception as err:  # noqa: BLE001 - any decode failure skips the file, never the index build
            return Sample(i, path, None, label, f"{type(err).__name__}: {err}")


class FolderStream:
    """Labelled batches of an image folder ``root/<class>/<image>`` (CLIP eval crop, [0, 1] floats).

    Labels are the index of the folder name in ``label_of`` (e.g. ImageNet wnid -> class index), or
    the sorted-folder index when ``label_of`` is None. Files that cannot be decoded, and folder entries
    that cannot be listed, are skipped and listed in ``skipped`` (path, reason). A missing folder raises
    FileNotFoundError, an unlistable one PermissionError, a folder without classes or images ValueError.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, batch_size: int = 128, workers: int = 4,
                 label_of: dict[str, int] | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root} (resolved: {root.resolve()}); pass a folder "
                                   "with one sub-folder per class, e.g. ImageNet's train/<wnid>/*.JPEG")
        try:
            classes, self.scan_skipped = list_folders(root)
        except PermissionError:
            raise PermissionError(f"cannot list the image folder {root}: permission denied") from None
        if not classes:
            raise ValueError(f"{root}: no class sub-folders found; expected {root}/<class>/<image>")
        if label_of is not None:
            unknown = [c for c in classes if c not in label_of]
            if unknown:
                raise ValueError(f"{root}: folders {unknown[:5]} are not known class ids (e.g. ImageNet wnids "
                                "such as n01440764); pass --class-names FILE for other datasets")
        self.samples = []
        for i, c in enumerate(classes):
            files, problems = list_images(root / c)
            self.scan_skipped += problems
            self.samples += [(str(root / c / name), label_of[c] if label_of is not None else i) for name, _ in files]
        if not self.samples:
            raise ValueError(f"{root}: no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
        self.root, self.classes = root, classes
        self.image_size, self.batch_size, self.workers = int(image_size), int(batch_size), int(workers)
        self.skipped: list[tuple[str, str]] = list(self.scan_skipped)

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        self.skipped = list(self.scan_skipped)
        loader = DataLoader(_ImageFiles(self.samples, self.image_size), batch_size=self.batch_size,
                            num_workers=self.workers, collate_fn=collate_drop_failed)
        index = 0
        for out in loader:
            self.skipped += out["skipped"]
            if out["images"] is None:
                continue
            yield Batch(out["images"], out["labels"], "source", index)
            index += 1
