"""ImageNet-R label data, the 1000->200 mask, and the folder stream (generated folder, CPU, no downloads)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from streams.base import Batch, Stream
from streams.imagenet_r import (
    IMAGENET_CLASSNAMES,
    IMAGENET_R_CLASSNAMES,
    IMAGENET_R_MASK,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
    RENDITIONS,
    ImageNetRFolder,
    from_spec,
    imagenet_r_stream,
    project_logits,
)

try:
    from imagenet_r_fixture import make_imagenet_r_folder
except ImportError:  # tests imported as a package
    from tests.imagenet_r_fixture import make_imagenet_r_folder

# imagenet_r_indices from the dataset authors' eval.py (hendrycks/imagenet-r), a comment there.
AUTHORS_INDICES = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99,
    100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163,
    171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251,
    254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299, 301, 308,
    309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355,
    361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435,
    437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570,
    579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768,
    774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907,
    928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967,
    980, 981, 983, 988
]
CONTRACT = Path("/work/shared/contract/imagenet_r_indices.json")
S = 32  # small image size keeps decoding fast


def test_mask_selects_the_authors_200_indices():
    assert IMAGENET_R_MASK.dtype == torch.bool and IMAGENET_R_MASK.shape == (1000,)
    assert int(IMAGENET_R_MASK.sum()) == 200
    assert IMAGENET_R_MASK.nonzero().flatten().tolist() == AUTHORS_INDICES
    if CONTRACT.exists():
        assert AUTHORS_INDICES == json.loads(CONTRACT.read_text())["indices"]


def test_label_lists():
    assert len(IMAGENET_WNIDS) == 1000 == len(set(IMAGENET_WNIDS)) == len(IMAGENET_CLASSNAMES)
    assert list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert (IMAGENET_WNIDS[0], IMAGENET_CLASSNAMES[0]) == ("n01440764", "tench")
    assert (IMAGENET_WNIDS[999], IMAGENET_CLASSNAMES[999]) == ("n15075141", "toilet paper")
    assert len(IMAGENET_R_WNIDS) == 200 and list(IMAGENET_R_WNIDS) == sorted(IMAGENET_R_WNIDS)
    assert IMAGENET_R_WNIDS[0] == "n01443537" and set(IMAGENET_R_WNIDS) <= set(IMAGENET_WNIDS)
    assert IMAGENET_R_CLASSNAMES[0] == "goldfish" and len(IMAGENET_R_CLASSNAMES) == 200
    assert len(RENDITIONS) == 15


def test_project_logits_keeps_label_order():
    logits = torch.arange(1000.0).repeat(2, 1)
    out = project_logits(logits)
    assert out.shape == (2, 200) and out[0].tolist() == [float(i) for i in AUTHORS_INDICES]
    with pytest.raises(ValueError, match="1000"):
        project_logits(torch.zeros(2, 200))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_imagenet_r_folder(tmp_path_factory.mktemp("inr") / "imagenet-r")


def _collect(stream):
    return [(b.domain, b.index, b.labels.tolist(), b.images) for b in stream]


def test_folder_scan_labels_domains_and_empty_class(folder, caplog):
    with caplog.at_level(logging.WARNING):
        ds = ImageNetRFolder(folder, image_size=S)
    assert ds.domains == ["art", "cartoon", "sketch", "toy"]
    assert ds.empty_classes == [IMAGENET_R_WNIDS[-1]]
    assert IMAGENET_R_WNIDS[-1] in caplog.text and "empty" in caplog.text
    assert len(ds) == 199 + 3
    for path, label, domain in ds.samples:
        p = Path(path)
        assert label == IMAGENET_R_WNIDS.index(p.parent.name)
        assert domain == p.name.split("_")[0]
    assert [s[1] for s in ds.samples] == sorted(s[1] for s in ds.samples)


def test_stream_skips_corrupt_file_and_yields_valid_images(folder, caplog):
    stream = imagenet_r_stream(folder, batch_size=16, image_size=S, num_workers=0)
    assert isinstance(stream, Stream)
    with caplog.at_level(logging.WARNING):
        batches = list(stream)
    assert all(isinstance(b, Batch) for b in batches)
    assert [b.index for b in batches] == list(range(len(batches))) and len(batches) == len(stream)
    assert len(stream.skipped) == 1
    path, reason = stream.skipped[0]
    assert path.endswith("cartoon_999.jpg") and reason
    assert "cartoon_999.jpg" in caplog.text
    n = 0
    for b in batches:
        assert b.images.dtype == torch.float32 and b.images.shape[1:] == (3, S, S)
        assert float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0
        assert b.labels.dtype == torch.int64 and len(b.labels) == len(b.images) <= 16
        n += len(b.labels)
    assert n == 199 + 2  # everything but the corrupt file
    # grouped by rendition, in RENDITIONS order, each domain one contiguous run
    runs = [d for i, d in enumerate(b.domain for b in batches) if i == 0 or batches[i - 1].domain != d]
    assert runs == stream.domains == ["art", "cartoon", "sketch", "toy"]
    per_domain = {d: sum(len(b.labels) for b in batches if b.domain == d) for d in runs}
    expected = {d: sum(1 for _, _, dd in stream.dataset.samples if dd == d) for d in runs}
    expected["cartoon"] -= 1
    assert per_domain == expected
    for d in runs:  # within a domain, files are class-sorted
        labels = [y for b in batches if b.domain == d for y in b.labels.tolist()]
        assert labels == sorted(labels)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    root = tmp_path / "inr"
    (root / IMAGENET_R_WNIDS[0]).mkdir(parents=True)
    Image.new("RGBA", (20, 30), (10, 20, 30, 0)).save(root / IMAGENET_R_WNIDS[0] / "toy_0.png")
    Image.new("L", (30, 20), 128).save(root / IMAGENET_R_WNIDS[0] / "sketch_0.jpg")
    Image.new("CMYK", (25, 25), (0, 0, 0, 0)).save(root / IMAGENET_R_WNIDS[0] / "art_0.jpg")
    Image.new("P", (25, 25), 3).save(root / IMAGENET_R_WNIDS[0] / "graphic_0.png")
    ds = ImageNetRFolder(root, image_size=S)
    out = {Path(ds[i].path).name: ds[i] for i in range(len(ds))}
    assert all(s.error is None and s.image.shape == (3, S, S) for s in out.values())
    assert torch.allclose(out["toy_0.png"].image, torch.ones(3, S, S))  # transparent -> white
    gray = out["sketch_0.jpg"].image
    assert torch.allclose(gray[0], gray[1]) and abs(float(gray.mean()) - 128 / 255) < 0.02


def test_truncated_file_skipped_and_all_failed_batch_dropped(tmp_path, caplog):
    import io

    root = tmp_path / "inr"
    for w in IMAGENET_R_WNIDS[:2]:
        (root / w).mkdir(parents=True)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, "JPEG")
    (root / IMAGENET_R_WNIDS[0] / "art_0.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / IMAGENET_R_WNIDS[1] / "toy_0.jpg").write_bytes(buf.getvalue())
    stream = imagenet_r_stream(root, image_size=S, num_workers=0)
    with caplog.at_level(logging.WARNING):
        batches = list(stream)
    assert len(stream) == 2 and [(b.domain, b.index, b.labels.tolist()) for b in batches] == [("toy", 0, [1])]
    assert len(stream.skipped) == 1 and stream.skipped[0][0].endswith("art_0.jpg")
    assert "truncated" in stream.skipped[0][1] and "art_0.jpg" in caplog.text


def test_order_is_deterministic_across_workers(folder):
    kw = dict(batch_size=16, image_size=S, order="shuffled", seed=3)
    a = _collect(imagenet_r_stream(folder, num_workers=0, **kw))
    s2 = imagenet_r_stream(folder, num_workers=2, **kw)
    b = _collect(s2)
    assert [x[:3] for x in a] == [x[:3] for x in b]
    assert all(torch.equal(x[3], y[3]) for x, y in zip(a, b, strict=True))
    assert len(s2.skipped) == 1 and s2.skipped[0][0].endswith("cartoon_999.jpg")  # from a worker
    plain = _collect(imagenet_r_stream(folder, num_workers=0, batch_size=16, image_size=S))
    assert [x[2] for x in a] != [x[2] for x in plain]  # shuffled within domains
    assert [x[0] for x in a] == [x[0] for x in plain]  # same domain grouping


def test_mixed_and_class_sorted_orders(folder):
    kw = dict(batch_size=32, image_size=S, num_workers=0)
    mixed = list(imagenet_r_stream(folder, order="mixed", seed=1, **kw))
    again = list(imagenet_r_stream(folder, order="mixed", seed=1, **kw))
    other = list(imagenet_r_stream(folder, order="mixed", seed=2, **kw))
    cls = list(imagenet_r_stream(folder, order="class-sorted", **kw))
    lab = lambda bs: [y for b in bs for y in b.labels.tolist()]  # noqa: E731
    assert {b.domain for b in mixed} == {b.domain for b in cls} == {"mixed"}
    assert lab(mixed) == lab(again) != lab(other)
    assert sorted(lab(mixed)) == lab(cls) and len(lab(cls)) == 201


def test_limit_renditions_and_spec(folder):
    s = imagenet_r_stream(folder, batch_size=8, image_size=S, num_workers=0, renditions=["art", "toy"],
                          limit_per_domain=10, seed=5)
    batches = list(s)
    assert s.domains == ["art", "toy"]
    counts = {d: sum(len(b.labels) for b in batches if b.domain == d) for d in s.domains}
    assert counts == {"art": 10, "toy": 10}
    assert max(y for b in batches for y in b.labels.tolist()) > 50  # a subset spread over classes
    rebuilt = from_spec(s.spec, num_workers=0)
    assert [b.labels.tolist() for b in rebuilt] == [b.labels.tolist() for b in batches]


def test_clear_errors(tmp_path, folder):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        imagenet_r_stream(missing)
    msg = str(e.value)
    assert str(missing) in msg and "imagenet-r.tar" in msg and "--data" in msg
    (tmp_path / "n01443537").mkdir()
    (tmp_path / "not_a_wnid").mkdir()
    with pytest.raises(ValueError, match="not_a_wnid"):
        ImageNetRFolder(tmp_path)
    with pytest.raises(ValueError, match="rendition"):
        ImageNetRFolder(folder, renditions=["watercolour"])
    with pytest.raises(ValueError, match="order"):
        imagenet_r_stream(folder, order="random")
