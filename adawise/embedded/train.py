"""Training loops of the embedded world: contrastive pretraining with captions, then fine-tuning.

Pretraining follows CLIP (Radford et al., 2021; open_clip's ``ClipLoss``): every image is paired with
a caption, images and captions are embedded by the two towers and a symmetric InfoNCE loss pulls each
pair together. Like web data, the pretraining set is broad and noisy: each image goes through a random
mix of augmentations (affine, inversion, blur, contrast, brightness, noise) and its caption describes
one of the styles it received ("a blurry photo of a coat."), is generic ("a photo of a coat.") or
describes the defining features of its class (:data:`CORE_DESCRIPTIONS`, written by hand: "long sleeves,
front zip or buttons, collar.", with or without the class name), and some captions name the wrong class.
Fine-tuning follows wise-ft: the image tower plus a linear head initialised from the zero-shot head,
trained end to end with cross-entropy on clean images (AdamW, cosine schedule with warm-up). Every stage
runs the same loop (:func:`train_epochs`); the robust endpoints (:mod:`adawise.embedded.r_adapter`,
:mod:`adawise.embedded.drm`) reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from streams import fashion

__all__ = ["GENERIC_TEMPLATES", "STYLE_TEMPLATES", "ALL_TEMPLATES", "CORE_DESCRIPTIONS", "description_caption",
           "augment_with_captions", "pretrain", "finetune", "train_epochs", "split_decay", "MEAN", "STD", "Tokenizer",
           "grey3", "normalize", "cached_tokenizer"]

GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}.",
    "a product photo of a {}.", "a photo of a small {}.", "a photo of a large {}.", "a {}.",
)
#: caption templates tied to the augmentation an image received (the styles pretraining has seen)
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "invert": ("a negative photo of a {}.", "an inverted photo of the {}."),
    "blur": ("a blurry photo of a {}.", "a blurred photo of the {}."),
    "contrast": ("a low contrast photo of a {}.", "a faded photo of the {}."),
    "bright": ("a bright photo of a {}.", "an overexposed photo of the {}."),
    "dark": ("a dark photo of a {}.", "an underexposed photo of the {}."),
    "noise": ("a noisy photo of a {}.", "a grainy photo of the {}."),
}
#: the zero-shot head's templates: every caption template pretraining used
ALL_TEMPLATES: tuple[str, ...] = GENERIC_TEMPLATES + tuple(t for ts in STYLE_TEMPLATES.values() for t in ts)
_STYLES = tuple(STYLE_TEMPLATES)
#: the defining ("core") visual features of each Fashion-MNIST class, written by hand for this project (not
#: LLM-generated as in DRM); short enough that "<class>: <description>." fits the 16-token text context.
#: Pretraining captions use them (``p_description_caption``) and DRM's core-feature head is built from them.
CORE_DESCRIPTIONS: dict[str, str] = {
    "t-shirt": "short sleeves, round neck, plain top",
    "trouser": "two long legs and a waistband",
    "pullover": "long knitted sleeves, no buttons",
    "dress": "one piece, fitted top, flared skirt",
    "coat": "long sleeves, front zip or buttons, collar",
    "sandal": "open shoe of thin straps, flat sole",
    "shirt": "collar, buttons down the front, sleeves",
    "sneaker": "low sports shoe, laces, rubber sole",
    "bag": "carrying case with handles or strap",
    "ankle boot": "closed shoe above the ankle, heel",
}

#: Fashion-MNIST pixel statistics, folded into the classifiers (grey replicated to 3 channels)
MEAN, STD = (0.286,) * 3, (0.353,) * 3
Tokenizer = Callable[[list[str]], Tensor]



def description_caption(class_name: str, with_name: bool) -> str:
    """The core-feature caption of a class: ``"<description>."`` or ``"<class>: <description>."``."""
    description = CORE_DESCRIPTIONS[class_name]
    return f"{class_name}: {description}." if with_name else f"{description}."


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample separable Gaussian blur of [B, 1, H, W] (one sigma per sample), reflect padding."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, K]
    b = x.shape[0]
    y = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")  # [1, B, H+2r, W+2r]
    y = F.conv2d(y, kernel.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(y, kernel.view(b, 1, -1, 1), groups=b)
    return y.transpose(0, 1)


def augment_with_captions(images: Tensor, labels: Tensor, class_names: Sequence[str], recipe: Any,
                          gen: torch.Generator) -> tuple[Tensor, list[str]]:
    """A random augmentation per image and a caption that describes it.

    Args:
        images: [B, 1, H, W] in [0, 1]; labels: [B].
        recipe: an :class:`~adawise.embedded.world.EmbeddedRecipe` (augmentation probabilities and
            strengths, ``caption_noise``, ``p_generic_caption``, ``p_description_caption``).
        gen: the CPU generator that makes the whole draw reproducible.

    Returns:
        The augmented images (still in [0, 1]) and one caption per image.
    """
    x = images.clone()
    b = x.shape[0]
    applied = torch.zeros(b, len(_STYLES), dtype=torch.bool)

    def draw(p: float) -> Tensor:
        return torch.rand(b, generator=gen) < p

    m = draw(recipe.p_affine)
    if m.any():
        angle = torch.deg2rad(_uniform(gen, b, -recipe.max_rotate, recipe.max_rotate))
        scale = _uniform(gen, b, *recipe.scale_range)
        shift = _uniform(gen, 2 * b, -1, 1).view(b, 2) * (2 * recipe.max_shift / x.shape[-1])
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.where(m.view(b, 1, 1, 1), F.grid_sample(x, grid, align_corners=False), x)
    m = draw(recipe.p_invert)
    x = torch.where(m.view(b, 1, 1, 1), 1 - x, x)
    applied[:, _STYLES.index("invert")] = m
    m = draw(recipe.p_style)
    if m.any():
        x = torch.where(m.view(b, 1, 1, 1), _gaussian_blur(x, _uniform(gen, b, *recipe.blur_sigma)), x)
    applied[:, _STYLES.index("blur")] = m
    m = draw(recipe.p_style)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = _uniform(gen, b, *recipe.contrast_range).view(b, 1, 1, 1)
    x = torch.where(m.view(b, 1, 1, 1), mean + (x - mean) * factor, x)
    applied[:, _STYLES.index("contrast")] = m
    m = draw(recipe.p_style)
    delta = _uniform(gen, b, *recipe.brightness_range) * torch.where(draw(0.5), 1.0, -1.0)
    x = torch.where(m.view(b, 1, 1, 1), x + delta.view(b, 1, 1, 1), x)
    applied[:, _STYLES.index("bright")] = m & (delta > 0)
    applied[:, _STYLES.index("dark")] = m & (delta < 0)
    m = draw(recipe.p_style)
    sigma = _uniform(gen, b, *recipe.noise_sigma).view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen)
    x = torch.where(m.view(b, 1, 1, 1), x + sigma * noise, x)
    applied[:, _STYLES.index("noise")] = m
    x = x.clamp_(0, 1)

    names = list(labels.tolist())
    wrong = torch.rand(b, generator=gen) < recipe.caption_noise
    other = torch.randint(0, len(class_names) - 1, (b,), generator=gen)
    picks = torch.rand(b, 2, generator=gen)
    captions = []
    for i in range(b):
        label = names[i]
        if wrong[i]:
            label = int(other[i]) + (int(other[i]) >= label)  # a different class, uniformly
        styles = applied[i].nonzero().flatten().tolist()
        if picks[i, 0] < recipe.p_description_caption:  # taken from the generic share (validated <= it)
            captions.append(description_caption(class_names[label], with_name=bool(picks[i, 1] < 0.5)))
            continue
        if styles and picks[i, 0] >= recipe.p_generic_caption:
            pool = STYLE_TEMPLATES[_STYLES[styles[int(picks[i, 1] * len(styles)) % len(styles)]]]
        else:
            pool = GENERIC_TEMPLATES
        template = pool[int(torch.randint(0, len(pool), (1,), generator=gen))]
        captions.append(template.format(class_names[label]))
    return x, captions


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(params: Any, lr: float, weight_decay: float, total: int, warmup: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, total, warmup))
    return opt, sched


def split_decay(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on norms, biases, embeddings' positions, logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "positional" not in name and "embedding" not in name else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_epochs(params: Any, n: int, epochs: int, batch: int, lr: float, weight_decay: float,
                 gen: torch.Generator, step: Callable[[Tensor], Tensor], desc: str, progress: bool = True,
                 after_step: Callable[[], None] | None = None,
                 postfix: Callable[[Tensor], dict[str, str]] | None = None) -> list[float]:
    """The training loop every stage shares: AdamW, cosine schedule with 5% linear warm-up, shuffled epochs.

    Args:
        params: parameters or parameter groups for AdamW (e.g. :func:`split_decay`).
        n: number of training samples; each epoch draws a permutation of ``range(n)`` from ``gen`` and
            runs ``n // batch`` steps (the last partial batch is dropped).
        step: maps the batch's sample indices to the loss (a scalar with a graph).
        after_step: called after each optimiser step (clamping, an EMA update).
        postfix: the progress bar's extra fields from the loss.

    Returns:
        The mean loss of each epoch.
    """
    steps_per_epoch = n // batch
    total = steps_per_epoch * epochs
    opt, sched = _optimizer(params, lr, weight_decay, total, max(1, int(0.05 * total)))
    losses: list[float] = []
    bar = tqdm(total=total, desc=desc, disable=None if progress else True, unit="step")
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for s in range(steps_per_epoch):
            loss = step(order[s * batch : (s + 1) * batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            running += float(loss.detach())
            bar.update(1)
            bar.set_postfix(postfix(loss) if postfix is not None else {"loss": f"{float(loss.detach()):.3f}"})
        losses.append(running / max(1, steps_per_epoch))
    bar.close()
    return losses


def pretrain(clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor], images: Tensor, labels: Tensor,
             class_names: Sequence[str], normalize: Callable[[Tensor], Tensor], recipe: Any,
             progress: bool = True) -> list[float]:
    """Contrastive image-caption pretraining of ``clip_model`` in place; returns the per-epoch mean loss.

    ``images`` [N, 1, H, W] in [0, 1] (grey; replicated to 3 channels before ``normalize``).
    """
    from open_clip import ClipLoss

    gen = torch.Generator().manual_seed(recipe.seed)
    loss_fn = ClipLoss()
    scale_now = [0.0]

    def step(idx: Tensor) -> Tensor:
        x, captions = augment_with_captions(images[idx], labels[idx], class_names, recipe, gen)
        image_features, text_features, scale = clip_model(normalize(x.expand(-1, 3, -1, -1)), tokenizer(captions))
        scale_now[0] = float(scale.detach())
        return loss_fn(image_features, text_features, scale)

    def clamp() -> None:
        with torch.no_grad():
            clip_model.logit_scale.clamp_(0, math.log(100))

    clip_model.train()
    losses = train_epochs(split_decay(clip_model), len(images), recipe.pretrain_epochs, recipe.pretrain_batch,
                          recipe.pretrain_lr, recipe.weight_decay, gen, step, "pretrain (contrastive)", progress,
                          after_step=clamp,
                          postfix=lambda loss: {"loss": f"{float(loss.detach()):.3f}", "scale": f"{scale_now[0]:.1f}"})
    clip_model.eval()
    return losses


def finetune(classifier: nn.Module, images: Tensor, labels: Tensor, recipe: Any, progress: bool = True) -> list[float]:
    """End-to-end cross-entropy fine-tuning of a :class:`CLIPClassifier` in place on clean images.

    Returns the per-epoch mean loss.
    """
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    classifier.train()
    losses = train_epochs(split_decay(classifier), len(images), recipe.finetune_epochs, recipe.finetune_batch,
                          recipe.finetune_lr, recipe.weight_decay, gen,
                          lambda idx: F.cross_entropy(classifier(images[idx]), labels[idx]), "fine-tune (clean)",
                          progress)
    classifier.eval()
    return losses


def grey3(images_u8: Tensor) -> Tensor:
    """uint8 grey images [N, 1, H, W] as float [N, 3, H, W] in [0, 1] (a broadcast view, no copy)."""
    return fashion.to_float(images_u8).expand(-1, 3, -1, -1)


def normalize(x: Tensor) -> Tensor:
    """Images in [0, 1] standardised by :data:`MEAN` / :data:`STD` (the CLIP's own input transform)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cached_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with a memo of the texts it tokenised (captions repeat across epochs)."""
    memo: dict[str, Tensor] = {}

    def tokenize(texts: list[str]) -> Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, tokenizer(missing), strict=True))
        return torch.stack([memo[t] for t in texts])

    return tokenize
