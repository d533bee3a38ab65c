"""The ImageNet-C reference that :mod:`streams.corruptions` is compared with (tests and benchmarks).

Used by ``tests/test_corruptions_reference.py`` and ``benchmarks/bench_corruptions.py``; needs the
``[reference]`` extra (scikit-image, scikit-learn, opencv-python-headless, numba) and
``imagecorruptions-imaug==1.1.5`` (installed with ``--no-deps``: it declares ``opencv-python``, which
needs GUI libraries; ``opencv-python-headless`` provides the same ``cv2``).

The reference per corruption:

- twelve corruptions: ``imagecorruptions-imaug`` 1.1.5 (a maintained fork of Michaelis et al.'s
  ``imagecorruptions``, itself a port of Hendrycks & Dietterich's ImageNet-C code), called as is;
- ``elastic_transform``, ``frost`` and ``pixelate``, where the fork departs from the code that made
  ImageNet-C: :func:`hendrycks_elastic_transform`, :func:`hendrycks_frost` and
  :func:`hendrycks_pixelate` below are transcriptions, for comparison only, of those three functions
  of D. Hendrycks's ``ImageNet-C/create_c/make_imagenet_c.py`` (hendrycks/robustness, Apache-2.0):
  the same constants, the same calls, the same order of draws from numpy's global generator. Frost
  reads the six frost photographs the fork ships (byte-identical to those in hendrycks/robustness)
  and, as there, picks one of the first five and crops 224 x 224 at full resolution.

The photographs: ten natural photos that ship inside scikit-image (``skimage.data``) and
scikit-learn (``load_sample_images``), resized to short side 256 (PIL bilinear, as torchvision's
``Resize(256)``) and centre-cropped to 224 x 224, as ImageNet-C was made. Strength of a corruption
= mean |corrupted - clean| in [0, 1] units.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: the reference's function for each corruption: "fork" (imagecorruptions-imaug) or "hendrycks"
REFERENCE_SOURCE: dict[str, str] = {
    "gaussian_noise": "fork", "shot_noise": "fork", "impulse_noise": "fork", "defocus_blur": "fork",
    "glass_blur": "fork", "motion_blur": "fork", "zoom_blur": "fork", "snow": "fork",
    "frost": "hendrycks", "fog": "fork", "brightness": "fork", "contrast": "fork",
    "elastic_transform": "hendrycks", "pixelate": "hendrycks", "jpeg_compression": "fork",
}

#: the bundled photos, as (library, loader) pairs
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"), ("skimage", "camera"), ("skimage", "chelsea"), ("skimage", "coffee"),
    ("skimage", "rocket"), ("skimage", "stereo_motorcycle"), ("skimage", "hubble_deep_field"),
    ("skimage", "immunohistochemistry"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)

INSTALL_HINT = ('pip install -e ".[test,reference]" && pip install --no-deps imagecorruptions-imaug==1.1.5')


def missing_reason() -> str | None:
    """Why the reference cannot run here (a sentence naming the install command), or None."""
    for module in ("imagecorruptions", "cv2", "skimage", "sklearn", "numba", "scipy"):
        if importlib.util.find_spec(module) is None:
            return f"the ImageNet-C reference needs the module {module!r}: {INSTALL_HINT}"
    try:
        import cv2  # noqa: F401
        import imagecorruptions  # noqa: F401
    except ImportError as error:  # e.g. opencv-python without its GUI libraries
        return f"the ImageNet-C reference does not import ({error}): {INSTALL_HINT}"
    return None


def imagenet_crop(image: np.ndarray, short: int = 256, size: int = 224) -> np.ndarray:
    """``Resize(short)`` (PIL bilinear) then ``CenterCrop(size)`` of a uint8 image, as RGB ``[size, size, 3]``."""
    from PIL import Image

    pil = Image.fromarray(image).convert("RGB")
    w, h = pil.size
    if w <= h:
        new = (short, int(short * h / w))
    else:
        new = (int(short * w / h), short)
    pil = pil.resize(new, Image.BILINEAR)
    w, h = pil.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.uint8)


def bundled_photos() -> np.ndarray:
    """The ten photos as ``uint8 [10, 224, 224, 3]`` (see the module docstring)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    samples = dict(zip((Path(f).name for f in load_sample_images().filenames), load_sample_images().images,
                       strict=True))
    out = []
    for library, name in PHOTOS:
        if library == "sklearn":
            image = samples[name]
        else:
            image = getattr(skimage.data, name)()
            image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        out.append(imagenet_crop(image))
    return np.stack(out)


def frost_photo_dir() -> Path:
    """The folder of the six frost photographs inside the installed imagecorruptions package."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"imagecorruptions is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


# ---------------------------------------------------------------------------------------------
# Transcriptions of hendrycks/robustness ImageNet-C/create_c/make_imagenet_c.py (for comparison)
# ---------------------------------------------------------------------------------------------

def hendrycks_elastic_transform(image: np.ndarray, severity: int = 1) -> np.ndarray:
    """``elastic_transform`` of make_imagenet_c.py: random affine (cv2) then a smoothed random field."""
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    c = [(244 * 2, 244 * 0.7, 244 * 0.1),   # 244 should have been 224, but ultimately nothing is incorrect
         (244 * 2, 244 * 0.08, 244 * 0.2),
         (244 * 0.05, 244 * 0.01, 244 * 0.02),
         (244 * 0.07, 244 * 0.01, 244 * 0.02),
         (244 * 0.12, 244 * 0.01, 244 * 0.02)][severity - 1]

    image = np.array(image, dtype=np.float32) / 255.
    shape = image.shape
    shape_size = shape[:2]

    # random affine
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])
    pts2 = pts1 + np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, M, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)

    dx = (gaussian(np.random.uniform(-1, 1, size=shape[:2]),
                   c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(np.random.uniform(-1, 1, size=shape[:2]),
                   c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]

    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return np.clip(map_coordinates(image, indices, order=1, mode='reflect').reshape(shape), 0, 1) * 255


_FROST_CACHE: dict[str, np.ndarray] = {}


def hendrycks_frost(x: np.ndarray, severity: int = 1) -> np.ndarray:
    """``frost`` of make_imagenet_c.py: one of frost1..frost5 (``randint(5)``), a random 224 crop."""
    import cv2

    c = [(1, 0.4),
         (0.8, 0.6),
         (0.7, 0.7),
         (0.65, 0.7),
         (0.6, 0.75)][severity - 1]
    idx = np.random.randint(5)
    filename = ['frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg'][idx]
    if filename not in _FROST_CACHE:
        _FROST_CACHE[filename] = cv2.imread(str(frost_photo_dir() / filename))
    frost = _FROST_CACHE[filename]
    # randomly crop and convert to rgb
    x_start, y_start = np.random.randint(0, frost.shape[0] - 224), np.random.randint(0, frost.shape[1] - 224)
    frost = frost[x_start:x_start + 224, y_start:y_start + 224][..., [2, 1, 0]]

    return np.clip(c[0] * np.array(x) + c[1] * frost, 0, 255)


def hendrycks_pixelate(x: np.ndarray, severity: int = 1) -> np.ndarray:
    """``pixelate`` of make_imagenet_c.py: PIL ``BOX`` down to ``int(224 * c)``, ``BOX`` back up."""
    from PIL import Image as PILImage

    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]

    x = PILImage.fromarray(np.asarray(x, dtype=np.uint8))
    x = x.resize((int(224 * c), int(224 * c)), PILImage.BOX)
    x = x.resize((224, 224), PILImage.BOX)

    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# One entry point for all fifteen
# ---------------------------------------------------------------------------------------------

def reference_function(name: str) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """``f(image_uint8 [224, 224, 3], severity, seed) -> float [224, 224, 3] in [0, 255]``, the reference.

    ``seed`` seeds numpy's global generator (and the fork's ``seed=`` argument where it has one), so a
    seed gives one draw of a random corruption.
    """
    if REFERENCE_SOURCE[name] == "hendrycks":
        oracle = {"elastic_transform": hendrycks_elastic_transform, "frost": hendrycks_frost,
                  "pixelate": hendrycks_pixelate}[name]

        def run_oracle(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
            np.random.seed(seed)
            return np.asarray(oracle(image, severity), dtype=np.float64)

        return run_oracle
    from imagecorruptions import corruptions as fork
    from PIL import Image

    function = getattr(fork, name)

    def run_fork(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
        np.random.seed(seed)
        if name == "jpeg_compression":
            return np.asarray(function(Image.fromarray(image), severity), dtype=np.float64)
        if name in ("glass_blur", "impulse_noise"):
            return np.asarray(function(image, severity, seed=seed), dtype=np.float64)
        return np.asarray(function(image, severity), dtype=np.float64)

    return run_fork


def raw_function(name: str) -> Callable[..., object]:
    """The reference function itself, ``f(pil_image, severity)``, as ImageNet-C's loader calls it
    (a PIL image in, the function's own return value out; random draws from numpy's global state)."""
    if REFERENCE_SOURCE[name] == "hendrycks":
        return {"elastic_transform": hendrycks_elastic_transform, "frost": hendrycks_frost,
                "pixelate": _pixelate_pil}[name]
    from imagecorruptions import corruptions as fork

    if name in ("glass_blur", "impulse_noise", "jpeg_compression"):
        return getattr(fork, name)
    function = getattr(fork, name)
    return lambda image, severity: function(np.array(image), severity)


def _pixelate_pil(x: object, severity: int = 1) -> object:
    """``pixelate`` of make_imagenet_c.py on a PIL image, returning the PIL image as there."""
    from PIL import Image as PILImage

    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    x = x.resize((int(224 * c), int(224 * c)), PILImage.BOX)
    return x.resize((224, 224), PILImage.BOX)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] units (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def jpeg_file_roundtrip(image: np.ndarray, quality: int = 85) -> np.ndarray:
    """``np.uint8`` then a PIL JPEG save/load at ``quality``: how the distributed ImageNet-C files were saved."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.uint8(image)).save(buffer, "JPEG", quality=quality, optimize=True)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float64)
