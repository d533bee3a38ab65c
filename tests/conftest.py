"""Shared fixtures: a tiny random open_clip CLIP (no downloads, CPU) and classifiers built from it."""

from __future__ import annotations

import copy

import pytest
import torch

#: a tiny open_clip config: ViT over a 4x4 grid of 8x8 patches (32x32 images), one-layer text tower
TINY_CLIP_CFG: dict = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
)
# Tests use tiny tensors: one intra-op thread is faster than several (and fair on shared CPUs).
torch.set_num_threads(1)

TINY_CLASSES = ("cat", "dog", "truck", "apple", "shoe")
TINY_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a blurry photo of the {}.")


def tiny_clip_model(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised tiny open_clip.CLIP in eval mode (same weights for the same seed)."""
    import open_clip

    torch.manual_seed(seed)
    cfg = TINY_CLIP_CFG
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"]).eval()


@pytest.fixture
def tiny_cfg() -> dict:
    """A copy of the tiny open_clip config (a custom config dict for ``load_pair`` / ``create_clip``)."""
    return copy.deepcopy(TINY_CLIP_CFG)


@pytest.fixture
def make_tiny_clip():
    """``make_tiny_clip(seed)``: a fresh tiny CLIP; the same seed gives the same weights."""
    return tiny_clip_model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The CLIP BPE tokenizer with the tiny model's context length."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32", context_length=TINY_CLIP_CFG["text_cfg"]["context_length"])


@pytest.fixture
def tiny_clip() -> torch.nn.Module:
    """A tiny random open_clip CLIP (fresh per test, so tests may modify it)."""
    return tiny_clip_model(seed=0)


@pytest.fixture
def tiny_pair():
    """(zero-shot, fine-tuned) classifiers from :func:`adawise.load_pair` on the tiny config."""
    import adawise

    return adawise.load_pair(copy.deepcopy(TINY_CLIP_CFG), list(TINY_CLASSES), pretrained=None,
                             templates=list(TINY_TEMPLATES))


@pytest.fixture
def tiny_classes() -> list[str]:
    """Class names of the tiny classifiers."""
    return list(TINY_CLASSES)


@pytest.fixture
def tiny_templates() -> list[str]:
    """Templates of the tiny classifiers."""
    return list(TINY_TEMPLATES)


@pytest.fixture
def images() -> torch.Tensor:
    """A batch of 6 random images in [0, 1] at the tiny model's resolution."""
    gen = torch.Generator().manual_seed(123)
    return torch.rand(6, 3, 32, 32, generator=gen)
