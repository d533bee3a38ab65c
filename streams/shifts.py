"""The embedded world's distribution shifts: ImageNet-C corruptions and rendition-like shifts.

Every shift maps a batch ``[B, 3, H, W]`` in [0, 1] to the same shape in [0, 1] and is deterministic
given ``seed`` and, per image, its dataset index (``indices``; without, its content): an image's shift
never depends on the other images of its batch (:mod:`streams._rng`). Corruptions wrap
:func:`streams.corruptions.corrupt` (Hendrycks & Dietterich, ICLR 2019) at severity 5 (the online TTA
protocol's); the rendition-like shifts (in the spirit of ImageNet-R's renditions) are:

- ``invert``: the photographic negative, 1 − x;
- ``rotate``: each image rotated by a random angle of 25-45 degrees, either direction;
- ``sketch``: an edge sketch, the Sobel gradient magnitude normalised per image (white lines on black,
  like the dataset's white-on-black garments);
- ``silhouette``: the garment's shape only (pixels above 0.1 become white);
- ``upside_down``: a vertical flip.

``seen`` marks the families the embedded world's pretraining augmentation covers (Gaussian noise,
Gaussian blur, contrast, brightness, inversion; rotation only up to 20 degrees, so ``rotate`` counts as
unseen); the others are new to both models.
A name such as ``"gaussian_noise:5"`` overrides a corruption's severity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from streams._rng import Draws, check_indices, check_seed, image_keys
from streams.corruptions import CORRUPTIONS, corrupt

__all__ = ["Shift", "SHIFTS", "DEFAULT_DOMAINS", "ID_DOMAIN", "get_shift", "apply_shift", "describe"]

ShiftFn = Callable[[Tensor, int, "Tensor | None"], Tensor]
ID_DOMAIN = "clean"


@dataclass(frozen=True)
class Shift:
    """A named shift: ``shift(images, seed, indices)`` -> shifted images (same shape, [0, 1])."""

    name: str
    fn: ShiftFn
    kind: str  # "identity" | "corruption" | "rendition"
    seen: bool  # a family the pretraining augmentation covered
    severity: int | None = None

    def __call__(self, images: Tensor, seed: int = 0, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """Shift ``images``; with ``indices`` (one dataset index per image) image ``i``'s random draws
        depend only on ``(seed, indices[i])``, without on ``(seed, its content)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"shift {self.name!r}: expected [B, 3, H, W] images, got {tuple(images.shape)}")
        seed = check_seed(seed)
        ids = None if indices is None else check_indices(indices, images.shape[0], images.device)
        return self.fn(images, seed, ids).clamp(0, 1)


def _identity(x: Tensor, seed: int, indices: Tensor | None) -> Tensor:
    return x.clone()


def _invert(x: Tensor, seed: int, indices: Tensor | None) -> Tensor:
    return 1 - x


def _rotate(x: Tensor, seed: int, indices: Tensor | None, low: float = 25.0, high: float = 45.0) -> Tensor:
    draws = Draws(image_keys(seed, x, indices))
    angle = draws.uniform("rotate:angle", (), low, high)
    angle = torch.deg2rad(angle * torch.where(draws.uniform("rotate:sign", ()) < 0.5, -1.0, 1.0)).to(x)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def _grey(x: Tensor) -> Tensor:
    return x.mean(1, keepdim=True)


def _sketch(x: Tensor, seed: int, indices: Tensor | None) -> Tensor:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    g = F.pad(_grey(x), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(g, kx.view(1, 1, 3, 3))
    gy = F.conv2d(g, kx.t().contiguous().view(1, 1, 3, 3))
    mag = torch.sqrt(gx**2 + gy**2)
    mag = mag / mag.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return mag.expand_as(x).clone()


def _silhouette(x: Tensor, seed: int, indices: Tensor | None) -> Tensor:
    return (_grey(x) > 0.1).to(x.dtype).expand_as(x).clone()


def _upside_down(x: Tensor, seed: int, indices: Tensor | None) -> Tensor:
    return x.flip(-2)


def _corruption(name: str, severity: int) -> ShiftFn:
    def fn(x: Tensor, seed: int, indices: Tensor | None) -> Tensor:
        return corrupt(x, name, severity, seed=seed, indices=indices)

    fn.__name__ = f"{name}_{severity}"
    return fn


#: corruptions seen in pretraining (as Gaussian noise, Gaussian blur, brightness and contrast augmentation)
_SEEN = frozenset({"gaussian_noise", "defocus_blur", "brightness", "contrast"})
#: severity of every corruption domain: 5, as in the online TTA protocol on ImageNet-C
SEVERITY = 5

SHIFTS: dict[str, Shift] = {ID_DOMAIN: Shift(ID_DOMAIN, _identity, "identity", True)}
SHIFTS.update({n: Shift(n, _corruption(n, SEVERITY), "corruption", n in _SEEN, SEVERITY) for n in CORRUPTIONS})
SHIFTS.update({
    "invert": Shift("invert", _invert, "rendition", True),
    "rotate": Shift("rotate", _rotate, "rendition", False),
    "sketch": Shift("sketch", _sketch, "rendition", False),
    "silhouette": Shift("silhouette", _silhouette, "rendition", False),
    "upside_down": Shift("upside_down", _upside_down, "rendition", False),
})

#: the demo's stream: the clean domain, then a continual sequence of 11 shifts, corruptions in ImageNet-C
#: order (every family: noise, blur, weather, digital), renditions last; 5 of the 11 are families
#: pretraining saw (gaussian_noise, defocus_blur, brightness, contrast, invert). The other corruptions
#: stay available by name; 11 shifts x 2,000 images keep the demo near 2 minutes on 2 cores.
DEFAULT_DOMAINS: tuple[str, ...] = (
    ID_DOMAIN, "gaussian_noise", "impulse_noise", "defocus_blur", "motion_blur", "snow", "brightness", "contrast",
    "elastic_transform", "invert", "rotate", "sketch",
)


def get_shift(name: str) -> Shift:
    """The shift called ``name`` (``"corruption:severity"`` overrides a corruption's severity)."""
    base, _, sev = name.partition(":")
    if base not in SHIFTS:
        raise KeyError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)} (corruptions take ':1'..':5')")
    shift = SHIFTS[base]
    if not sev:
        return shift
    if shift.kind != "corruption" or not sev.isdigit() or not 1 <= int(sev) <= 5:
        raise ValueError(f"shift {name!r}: only corruptions take a severity, an integer from 1 to 5")
    return Shift(name, _corruption(base, int(sev)), "corruption", shift.seen, int(sev))


def apply_shift(images: Tensor, name: str, seed: int = 0, indices: Sequence[int] | Tensor | None = None,
                chunk: int = 512) -> Tensor:
    """Apply shift ``name`` to a whole set in chunks of ``chunk`` images.

    Image ``i`` is shifted with ``seed`` and its dataset index ``indices[i]`` (default: its position
    ``i`` in ``images``), so the result does not depend on ``chunk``.
    """
    shift = get_shift(name)
    if len(images) == 0:
        return images.clone()
    ids = torch.arange(len(images)) if indices is None else check_indices(indices, len(images), torch.device("cpu"))
    parts = [shift(images[i : i + chunk].contiguous(), seed, ids[i : i + chunk]) for i in range(0, len(images), chunk)]
    return torch.cat(parts)


def describe(names: Sequence[str]) -> list[dict[str, object]]:
    """Name, kind, severity and whether pretraining saw the family, per domain (for logs and docs)."""
    out = []
    for n in names:
        s = get_shift(n)
        out.append({"name": n, "kind": s.kind, "severity": s.severity, "seen_in_pretraining": s.seen})
    return out

