"""Schedules of corruption streams: orders, lazy per-batch corruption, identical batches for every method."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adawise.evaluation.loop import run_stream
from adawise.methods.base import Method
from streams.base import StreamSpec, TensorStream
from streams.corruptions import corrupt
from streams.imagenet_r import IMAGENET_R_WNIDS, IMAGENET_WNIDS, ImageNetRStream
from streams.schedules import (
    GRADUAL_SEVERITIES,
    ORDERS,
    build_stream,
    corruption_spec,
    corruption_stream,
    setting_for,
    tensor_fingerprint,
)

N, S = 10, 16
# brightness and contrast act image by image and ignore the seed, so expected outputs can be recomputed
DETERMINISTIC = ["brightness", "contrast"]


@pytest.fixture(scope="module")
def base():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(N, 3, S, S, generator=gen) * 0.8 + 0.1, torch.arange(N)  # label = base index


def _runs(batches):
    return [b.domain for i, b in enumerate(batches) if i == 0 or batches[i - 1].domain != b.domain]


def test_continual_and_reset_each_shift(base):
    images, labels = base
    spec = corruption_spec(DETERMINISTIC, order="continual", severity=3, batch_size=4, seed=1)
    stream = build_stream(spec, images=images, labels=labels)
    batches = list(stream)
    assert stream.domains == _runs(batches) == DETERMINISTIC and len(stream) == len(batches) == 6
    assert [b.index for b in batches] == list(range(6)) and [len(b.labels) for b in batches] == [4, 4, 2] * 2
    assert setting_for(spec) == "continual"
    for name in DETERMINISTIC:
        seen = torch.cat([b.labels for b in batches if b.domain == name])
        assert sorted(seen.tolist()) == list(range(N)) and seen.tolist() != list(range(N))  # shuffled
        for b in (b for b in batches if b.domain == name):
            assert torch.allclose(b.images, corrupt(images[b.labels], name, 3), atol=1e-6)
    reset = corruption_spec(DETERMINISTIC, order="reset_each_shift", severity=3, batch_size=4, seed=1)
    assert setting_for(reset) == "reset_each_shift"
    again = list(build_stream(reset, images=images, labels=labels))
    assert all(torch.equal(a.images, b.images) and a.domain == b.domain for a, b in zip(batches, again, strict=True))


def test_gradual_severities_up_and_down(base):
    images, labels = base
    spec = corruption_spec(["clean", *DETERMINISTIC, "invert"], order="gradual", batch_size=8, seed=0)
    batches = list(build_stream(spec, images=images, labels=labels))
    expected = ["clean"] + [f"{c}@{s}" for c in DETERMINISTIC for s in GRADUAL_SEVERITIES] + ["invert"]
    assert _runs(batches) == expected and len(batches) == 2 * len(expected)
    for b in batches:
        if b.domain == "clean":
            assert torch.equal(b.images, images[b.labels])
        elif b.domain == "invert":  # a severity-free shift of streams.shifts
            assert torch.allclose(b.images, 1 - images[b.labels])
        else:
            name, sev = b.domain.split("@")
            assert torch.allclose(b.images, corrupt(images[b.labels], name, int(sev)), atol=1e-6)


def test_mixed_covers_every_pair_once(base):
    images, labels = base
    spec = corruption_spec(DETERMINISTIC, order="mixed", batch_size=6, seed=2)
    batches = list(build_stream(spec, images=images, labels=labels))
    assert {b.domain for b in batches} == {"mixed"} and sum(len(b.labels) for b in batches) == 2 * N
    found = {name: [] for name in DETERMINISTIC}
    for b in batches:
        for img, y in zip(b.images, b.labels.tolist(), strict=True):
            hits = [n for n in DETERMINISTIC if torch.allclose(img, corrupt(images[y:y + 1], n, 5)[0], atol=1e-6)]
            assert len(hits) == 1
            found[hits[0]].append(y)
    assert all(sorted(v) == list(range(N)) for v in found.values())
    first = [b.labels.tolist() for b in batches]
    assert first != [b.labels.tolist() for b in build_stream(
        corruption_spec(DETERMINISTIC, order="mixed", batch_size=6, seed=3), images=images, labels=labels)]


class _Recorder(Method):
    """Records what it is shown; predicts uniformly."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images):
        self.seen.append(images.clone())
        return torch.zeros(len(images), N)


def test_two_methods_on_the_same_spec_see_identical_batches(base, tmp_path):
    images, labels = base
    spec = corruption_spec(["gaussian_noise", "impulse_noise", "contrast"], order="continual", batch_size=4, seed=7)
    a, b = _Recorder(), _Recorder()
    ra = run_stream(a, build_stream(spec, images=images, labels=labels), log=tmp_path / "a.jsonl", progress=False)
    rb = run_stream(b, build_stream(spec, images=images, labels=labels), log=tmp_path / "b.jsonl", progress=False)
    assert len(a.seen) == len(b.seen) == 9
    assert all(torch.equal(x, y) for x, y in zip(a.seen, b.seen, strict=True))
    assert [r["domain"] for r in ra.records] == [r["domain"] for r in rb.records]
    other = list(build_stream(corruption_spec(["gaussian_noise"], batch_size=4, seed=8), images=images, labels=labels))
    assert not torch.equal(other[0].images, a.seen[0])  # another seed: other order and noise


def test_base_formats_limit_and_hash(base):
    images, labels = base
    grey = (images[:, 0] * 255).to(torch.uint8)  # [N, H, W] uint8
    spec = corruption_spec(["clean", "brightness"], batch_size=3, limit_per_domain=4, shuffle=False)
    batches = list(corruption_stream(grey, labels, spec))
    assert [b.domain for b in batches] == ["clean"] * 2 + ["brightness"] * 2
    for b in batches:
        assert b.images.shape[1:] == (3, S, S) and b.images.dtype == torch.float32
        assert torch.equal(b.images[:, 0], b.images[:, 2])
        assert b.labels.tolist() == sorted(b.labels.tolist())  # shuffle=False keeps the base order
    clean = torch.cat([b.images for b in batches if b.domain == "clean"])
    assert len(clean) == 4 and torch.equal(clean[:, 0], grey[torch.cat([b.labels for b in batches[:2]])].float() / 255)
    hashed = corruption_spec(["brightness"], base_hash=tensor_fingerprint(images, labels))
    assert len(build_stream(hashed, images=images, labels=labels)) == 1
    with pytest.raises(ValueError, match="base_hash"):
        build_stream(hashed, images=images.flip(0), labels=labels)


def test_spec_errors_and_dispatch(base):
    images, labels = base
    with pytest.raises(ValueError, match="order"):
        corruption_spec(order="sideways")
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption_spec(["fogg"])
    with pytest.raises(ValueError, match="severity"):
        corruption_spec(severity=6)
    with pytest.raises(ValueError, match="unknown stream source"):
        build_stream(StreamSpec.make("nowhere"))
    assert set(ORDERS) == {"continual", "reset_each_shift", "gradual", "mixed"}
    ts = build_stream(StreamSpec.make("tensors", domains=["clean"], batch_size=4), images=images, labels=labels)
    assert isinstance(ts, TensorStream) and ts.domains == ["clean"] and len(ts) == 3
    spec = corruption_spec(["brightness"])
    assert len(corruption_spec().domains) == 15 and spec.config_hash() == corruption_spec(["brightness"]).config_hash()


def _val_folder(root: Path, wnids=IMAGENET_WNIDS[:3], per_class=3) -> Path:
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(root / w / f"val_{j}.JPEG")
    (root / wnids[1] / "broken.JPEG").write_bytes(b"\xff\xd8not a jpeg")
    return root


def test_imagenet_c_folder_source(tmp_path, caplog):
    root = _val_folder(tmp_path / "val")
    spec = corruption_spec(["brightness", "gaussian_noise"], order="continual", batch_size=4, seed=0,
                           source="imagenet-c", root=str(root), image_size=S)
    with caplog.at_level(logging.WARNING):
        batches = list(build_stream(spec, num_workers=0))
    labels = sorted(y for b in batches if b.domain == "brightness" for y in b.labels.tolist())
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 1000-way ImageNet labels of the three wnids
    assert all(b.images.shape[1:] == (3, S, S) for b in batches)
    stream = build_stream(spec, num_workers=1)
    in_workers = list(stream)
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, in_workers, strict=True))
    assert len(stream.skipped) == 2 and all(p.endswith("broken.JPEG") for p, _ in stream.skipped)
    assert "broken.JPEG" in caplog.text


def test_imagenet_c_folder_errors_say_what_to_pass(tmp_path):
    spec = lambda root: corruption_spec(source="imagenet-c", root=str(root))  # noqa: E731
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_val"):
        build_stream(spec(tmp_path / "missing"))
    (tmp_path / "c" / "fog" / "5").mkdir(parents=True)
    with pytest.raises(ValueError, match="pre-rendered ImageNet-C"):
        build_stream(spec(tmp_path / "c"))


def test_imagenet_r_dispatch_maps_continual_to_rendition(tmp_path):
    from imagenet_r_fixture import make_imagenet_r_folder

    root = make_imagenet_r_folder(tmp_path / "inr", extras=False)
    spec = StreamSpec.make("imagenet-r", order="continual", batch_size=64, root=str(root), image_size=S)
    stream = build_stream(spec, num_workers=0)
    assert isinstance(stream, ImageNetRStream) and stream.order == "rendition"
    assert stream.domains == ["art", "cartoon", "sketch", "toy"] and len(IMAGENET_R_WNIDS) == 200
    assert setting_for(StreamSpec.make("imagenet-r", order="reset_each_shift")) == "reset_each_shift"


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_base_from_the_spec_alone():
    spec = corruption_spec(["clean", "contrast"], order="continual", batch_size=256, seed=0, base="fashion-mnist",
                           limit_per_domain=512)
    stream = build_stream(spec)
    first, again = next(iter(stream)), next(iter(build_stream(spec)))
    assert stream.num_base == 10000 and len(stream) == 4 and stream.domains == ["clean", "contrast"]
    assert first.images.shape == (256, 3, 28, 28) and torch.equal(first.images, again.images)
    assert int(first.labels.max()) <= 9
