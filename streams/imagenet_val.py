"""Clean ImageNet validation images, the base of the ImageNet-C streams (:mod:`streams.schedules`); the
image libraries load on first use, so importing :mod:`streams.schedules` stays light."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMAGENET_VAL_HELP", "ImageNetValFolder"]


IMAGENET_VAL_HELP = (
    "The imagenet-c stream corrupts clean ImageNet validation images on the fly. Download "
    "ILSVRC2012_img_val.tar from https://image-net.org/download-images (free registration), extract it and "
    "sort the 50,000 images into one folder per class (<wnid>/ILSVRC2012_val_*.JPEG, e.g. with valprep.sh "
    "from https://github.com/soumith/imagenetloader.torch), then pass that folder: --data path/val."
)


class ImageNetValFolder(Dataset):
    """Clean ImageNet validation images ``<root>/<wnid>/<file>``; label = index of the wnid in the
    1000 sorted ImageNet wnids. Decoding as in :class:`streams.imagenet_r.ImageNetRFolder` (CLIP eval
    crop without normalisation, RGB conversion); ``dataset[i]`` never raises on a bad file."""

    def __init__(self, root: str | os.PathLike[str], image_size: int = 224) -> None:
        from streams.corruptions import CORRUPTIONS
        from streams.folders import list_folders, list_images
        from streams.imagenet_r import IMAGENET_WNIDS

        self.root, self.image_size = Path(root).expanduser(), int(image_size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageNet validation folder not found: looked at {self.root}. "
                                    + IMAGENET_VAL_HELP)
        folders, self.scan_skipped = list_folders(self.root)  # symlink loops, unreadable entries: skipped
        if set(folders) & set(CORRUPTIONS):
            raise ValueError(
                f"{self.root} looks like a pre-rendered ImageNet-C folder (<corruption>/<severity>/<wnid>); "
                "this stream corrupts clean images itself, so pass the clean ImageNet validation folder instead. "
                + IMAGENET_VAL_HELP)
        index = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise ValueError(f"{self.root} contains folder(s) that are not ImageNet wnids: {unknown[:5]}. "
                             + IMAGENET_VAL_HELP)
        self.samples: list[tuple[str, int]] = []
        self.files: list[tuple[str, int]] = []
        for wnid in folders:
            names, problems = list_images(self.root / wnid)
            self.scan_skipped += problems
            self.samples += [(str(self.root / wnid / n), index[wnid]) for n, _ in names]
            self.files += [(str(self.root / wnid / n), size) for n, size in names]
        if not self.samples:
            raise FileNotFoundError(f"no images under {self.root}/<wnid>/. " + IMAGENET_VAL_HELP)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str, str | None]:
        """(image [3, S, S] or None, label, path, error or None)."""
        from streams.folders import decode_image

        path, label = self.samples[i]
        try:
            return decode_image(path, self.image_size), label, path, None
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, never the run
            return None, label, path, f"{type(exc).__name__}: {exc}"
