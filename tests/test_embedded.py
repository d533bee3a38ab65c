"""The embedded world: Fashion-MNIST reader, shifts, the tiny recipe's training, cache and fields.

Uses the real Fashion-MNIST files (Debian ``dataset-fashion-mnist``); skipped where they are absent.
The tiny recipe trains in about a second; the full world's figures are in docs/embedded_world.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest
import torch
import torch.nn.functional as F
from fashion_data import needs_data  # tests/ is on sys.path under pytest

from streams import fashion
from streams.shifts import DEFAULT_DOMAINS, SHIFTS, apply_shift, get_shift


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world, trained once into a temporary cache."""
    from adawise.embedded.world import load_embedded

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ADAWISE_CACHE", str(cache))
    try:
        yield load_embedded("tiny", progress=False)
    finally:
        mp.undo()


# ------------------------------------------------------------------------------------------ reader


def _write_idx(path, array, gz=True):
    import struct

    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(header + array.astype("uint8").tobytes())


def _fake_dir(tmp_path, n=6, gz=True):
    import numpy as np

    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        ext = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, (n,)), gz)
    return tmp_path


def test_the_shift_cache_key_hashes_every_module_a_shift_imports():
    """A cached shifted set is keyed by the source of SHIFT_MODULES: every streams module that
    streams.shifts imports, directly or through another, must be in it (else an edit there would
    leave stale cached domains)."""
    import ast
    import importlib
    from pathlib import Path

    seen, todo = set(), ["streams.shifts"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
        for node in ast.walk(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            todo += [name for name in names if name.startswith("streams.")]
    assert seen <= set(fashion.SHIFT_MODULES), sorted(seen - set(fashion.SHIFT_MODULES))


@pytest.mark.parametrize("gz", [True, False])
def test_reader_reads_a_generated_directory(tmp_path, gz):
    _fake_dir(tmp_path, gz=gz)
    x, y = fashion.load_split("test", tmp_path)
    assert x.shape == (6, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (6,) and y.dtype == torch.int64
    f = fashion.to_float(x)
    assert f.shape == (6, 1, 28, 28) and 0 <= float(f.min()) and float(f.max()) <= 1


def test_reader_errors_name_the_path_and_the_package(tmp_path):
    with pytest.raises(fashion.FashionMNISTError, match="apt-get install -y dataset-fashion-mnist") as err:
        fashion.load_split("train", tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    _fake_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(fashion.FashionMNISTError, match="t10k-labels-idx1-ubyte"):
        fashion.load_split("test", tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(fashion.FashionMNISTError, match="train-images-idx3-ubyte.gz"):
        fashion.load_split("train", tmp_path)


@needs_data
def test_real_dataset_sizes():
    x, y = fashion.load_split("test")
    assert x.shape == (10000, 28, 28) and int(y.max()) == 9 and len(fashion.CLASS_NAMES) == 10


# ------------------------------------------------------------------------------------------ shifts


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shifts_keep_shape_and_range_and_are_seeded(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=gen).expand(-1, 3, -1, -1).contiguous()
    a, b = SHIFTS[name](x, seed=3), SHIFTS[name](x, seed=3)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    if name != "clean":
        assert not torch.equal(a, x)


def test_shift_names_and_severity_override():
    assert DEFAULT_DOMAINS[0] == "clean" and set(DEFAULT_DOMAINS) <= set(SHIFTS)
    assert get_shift("gaussian_noise:5").severity == 5
    with pytest.raises(KeyError, match="unknown shift"):
        get_shift("nope")
    with pytest.raises(ValueError, match="severity"):
        get_shift("invert:2")
    x = torch.rand(5, 3, 28, 28)
    assert apply_shift(x, "invert", chunk=2).shape == x.shape


# ------------------------------------------------------------------------------------------- world


@needs_data
def test_world_fields_and_shapes(world):
    from adawise.models.clip import CLIPClassifier

    assert isinstance(world.zeroshot, CLIPClassifier) and isinstance(world.finetuned, CLIPClassifier)
    assert world.class_names == list(fashion.CLASS_NAMES)
    assert world.test_images.shape == (10000, 3, 28, 28) and world.test_labels.shape == (10000,)
    r = world.recipe
    assert world.source_images.shape == (r.finetune_size, 3, 28, 28) and len(world.source_labels) == r.finetune_size
    assert world.holdout_images.shape == (r.holdout_size, 3, 28, 28) and len(world.holdout_labels) == r.holdout_size
    assert set(world.domains) <= set(world.shifts) and world.id_domain == "clean"
    x = world.test_images[:5]
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    for model in (world.zeroshot, world.finetuned):
        assert model(x).shape == (5, 10)
        assert model(x[:, :1]).shape == (5, 10)  # one grey channel is replicated
    assert world.zeroshot.state_dict().keys() == world.finetuned.state_dict().keys()
    assert not torch.equal(world.zeroshot.head.weight, world.finetuned.head.weight)


@needs_data
def test_zeroshot_head_comes_from_the_text_tower(world):
    from adawise.models.clip import zeroshot_head

    head = zeroshot_head(world.clip, world.tokenizer, world.class_names, world.templates)
    torch.testing.assert_close(world.zeroshot.head.weight, head)
    # and any other prompt set can be encoded by the same tower
    other = zeroshot_head(world.clip, world.tokenizer, ["a long woollen winter coat"], ["{}"])
    assert other.shape == (1, world.recipe.embed_dim)
    # the zero-shot image tower is the CLIP's
    torch.testing.assert_close(world.zeroshot.visual.conv1.weight, world.clip.visual.conv1.weight)


@needs_data
def test_cache_reloads_identical_weights_and_is_keyed_by_recipe(world, monkeypatch):
    from adawise.embedded.world import EmbeddedRecipe, load_embedded
    from adawise.models.checkpoints import weights_hash

    monkeypatch.setenv("ADAWISE_CACHE", str(world.cache_dir.parent))
    files = {p.name for p in world.cache_dir.iterdir()}
    assert {"clip.safetensors", "zeroshot.safetensors", "finetuned.safetensors", "recipe.json"} <= files
    assert world.cache_dir.name == f"embedded-{world.key}"
    doc = json.loads((world.cache_dir / "recipe.json").read_text())
    assert doc["recipe"]["name"] == "tiny" and doc["key"] == world.key

    again = load_embedded("tiny", progress=False)
    assert again.info["trained"] is False and again.cache_dir == world.cache_dir
    for role in ("zeroshot", "finetuned", "clip"):
        assert weights_hash(getattr(again, role)) == weights_hash(getattr(world, role))
    x = world.test_images[:8]
    torch.testing.assert_close(again.finetuned(x), world.finetuned(x))

    other = dataclasses.replace(EmbeddedRecipe.tiny(), seed=1)
    from adawise.embedded.world import _data_fingerprint, world_key  # noqa: F401 - key function is public

    assert world_key(other, doc["data_fingerprint"]) != world.key


@needs_data
def test_corrupt_cache_is_rebuilt_with_a_warning(world, tmp_path):
    import shutil

    from adawise.embedded.world import load_embedded

    target = tmp_path / "copy"
    shutil.copytree(world.cache_dir, target)
    (target / "finetuned.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = load_embedded("tiny", cache_dir=target, progress=False)
    assert rebuilt.info["trained"] is True
    torch.testing.assert_close(rebuilt.finetuned.head.weight, world.finetuned.head.weight)  # same recipe, same seed


@needs_data
def test_shifted_domains_are_cached_once_for_every_endpoint(world, monkeypatch):
    from adawise.embedded.world import cache_root

    monkeypatch.setenv("ADAWISE_CACHE", str(world.cache_dir.parent))
    assert world.streams_dir == cache_root() / "streams"  # not inside one world's directory
    before = set(world.streams_dir.glob("*.safetensors")) if world.streams_dir.exists() else set()
    stream = world.stream(domains=["clean", "invert"], per_domain=16, batch_size=8)
    written = set(world.streams_dir.glob("*.safetensors")) - before
    assert len(stream) == 4 and all(p.name.split("-")[0] in ("clean", "invert") for p in written)


@needs_data
def test_load_only_never_trains(world, tmp_path, monkeypatch):
    from adawise.embedded.world import load_embedded

    monkeypatch.setenv("ADAWISE_CACHE", str(world.cache_dir.parent))
    loaded = load_embedded("tiny", progress=False, train=False)  # cached: loads
    assert loaded.info["trained"] is False and loaded.key == world.key
    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not cached.*adawise demo"):
        load_embedded("tiny", progress=False, train=False)
    assert not list((tmp_path / "empty").glob("pretrained-*"))  # nothing was trained


@needs_data
def test_retrain_forces_training(world):
    from adawise.embedded.world import load_embedded

    again = load_embedded("tiny", cache_dir=world.cache_dir, retrain=True, progress=False)
    assert again.info["trained"] is True and again.info["pretrained_trained"] is True
    endpoint_only = load_embedded("tiny", cache_dir=world.cache_dir, retrain="endpoint", progress=False)
    assert endpoint_only.info["trained"] is True and endpoint_only.info["pretrained_trained"] is False
    torch.testing.assert_close(endpoint_only.finetuned.head.weight, world.finetuned.head.weight)  # same recipe
    with pytest.raises(ValueError, match="retrain"):
        load_embedded("tiny", cache_dir=world.cache_dir, retrain="everything", progress=False)


def test_recipe_resolution_and_validation(tmp_path):
    from adawise.embedded.world import EmbeddedRecipe

    assert EmbeddedRecipe.resolve("tiny") == EmbeddedRecipe.tiny()
    assert EmbeddedRecipe.resolve(None) == EmbeddedRecipe.full()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dataclasses.replace(EmbeddedRecipe.tiny(), seed=5).to_dict()))
    assert EmbeddedRecipe.resolve(path).seed == 5
    path.write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ValueError, match="unknown recipe fields"):
        EmbeddedRecipe.resolve(path)
    with pytest.raises(ValueError, match="60,000"):
        EmbeddedRecipe(pretrain_size=50000, finetune_size=20000)


def test_endpoint_names_resolve_and_bad_names_list_the_valid_ones():
    from adawise.embedded.world import ENDPOINTS, EmbeddedRecipe

    assert ENDPOINTS == ("e2e", "r-adapter", "drm")
    assert EmbeddedRecipe.full().endpoint == "e2e" and EmbeddedRecipe.resolve("full").endpoint == "e2e"
    for name in ENDPOINTS:
        assert EmbeddedRecipe.resolve(name) == EmbeddedRecipe.full().with_endpoint(name)
        assert EmbeddedRecipe.resolve(f"tiny:{name}") == EmbeddedRecipe.tiny().with_endpoint(name)
        assert EmbeddedRecipe.resolve(f"full:{name}").endpoint == name
    with pytest.raises(ValueError, match="e2e, r-adapter, drm"):
        EmbeddedRecipe.resolve("tiny:lora")
    with pytest.raises(ValueError, match="e2e, r-adapter, drm"):
        EmbeddedRecipe.full().with_endpoint("lora")
    with pytest.raises(ValueError, match="endpoint"):
        EmbeddedRecipe.resolve("lora")
    with pytest.raises(ValueError, match="p_description_caption"):
        EmbeddedRecipe(p_description_caption=0.5)


def test_pretraining_augmentation_and_captions():
    from adawise.embedded.train import ALL_TEMPLATES, augment_with_captions, description_caption
    from adawise.embedded.world import EmbeddedRecipe

    x = torch.rand(64, 1, 28, 28)
    y = torch.arange(64) % 10
    gen = torch.Generator().manual_seed(0)
    out, captions = augment_with_captions(x, y, fashion.CLASS_NAMES, EmbeddedRecipe.full(), gen)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert len(captions) == 64 and all(isinstance(c, str) for c in captions)
    fills = {t.format(n) for t in ALL_TEMPLATES for n in fashion.CLASS_NAMES}
    descriptions = {description_caption(n, w) for n in fashion.CLASS_NAMES for w in (False, True)}
    assert set(captions) <= fills | descriptions
    assert set(captions) & descriptions and set(captions) & fills
    assert any(c.startswith(("a blurry", "a noisy", "a negative", "a low contrast", "a dark", "a bright"))
               for c in captions)
    again = augment_with_captions(x, y, fashion.CLASS_NAMES, EmbeddedRecipe.full(), torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out) and again[1] == captions


# ------------------------------------------------------------------------------------------ stream


@needs_data
def test_stream_is_rebuilt_identically_from_its_spec(world):
    from adawise.embedded.world import embedded_stream

    stream = embedded_stream(world, domains=["clean", "invert", "gaussian_noise"], per_domain=70, batch_size=32)
    assert stream.domains == ["clean", "invert", "gaussian_noise"] and len(stream) == 9
    batches = list(stream)
    assert [b.index for b in batches] == list(range(9))
    assert stream.spec.opts["per_domain"] == 70 and stream.spec.opts["world"] == world.key
    rebuilt = list(embedded_stream(stream.spec))
    assert len(rebuilt) == len(batches)
    for a, b in zip(batches, rebuilt, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # same images in every domain; invert is exactly 1 - clean (up to order)
    clean = torch.cat([b.images for b in batches[:3]])
    inv = torch.cat([b.images for b in batches[3:6]])
    assert torch.allclose(torch.sort((1 - clean).flatten())[0], torch.sort(inv.flatten())[0])


@needs_data
def test_class_sorted_order_holds_the_same_images_sorted_by_label(world):
    from adawise.embedded.world import embedded_stream

    kw = dict(domains=["clean", "gaussian_noise"], per_domain=100, batch_size=50)
    shuffled = list(embedded_stream(world, **kw))
    ordered = list(embedded_stream(world, order="class-sorted", **kw))
    for d in range(2):
        ys = torch.cat([b.labels for b in ordered[2 * d : 2 * d + 2]])
        assert torch.equal(ys, torch.sort(ys)[0])
        xs_sorted = torch.cat([b.images for b in ordered[2 * d : 2 * d + 2]]).flatten(1).sum(1).sort()[0]
        xs_shuffled = torch.cat([b.images for b in shuffled[2 * d : 2 * d + 2]]).flatten(1).sum(1).sort()[0]
        torch.testing.assert_close(xs_sorted, xs_shuffled)
    with pytest.raises(ValueError, match="unknown order"):
        embedded_stream(world, order="random", **kw)


@needs_data
def test_normalisation_is_folded_into_the_models(world):
    x = world.test_images[:4]
    feats = world.zeroshot.encode(x)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4))
    assert torch.equal(world.zeroshot(x), world.zeroshot.classify(F.normalize(world.zeroshot.visual(
        world.zeroshot._prepare(x)), dim=-1)))


# ------------------------------------------------------------------------------------------ a cache others share


def test_cache_keys_do_not_change() -> None:
    """The keys name cached (and shipped) worlds: a change would leave every cache stale."""
    from adawise.embedded.world import EmbeddedRecipe, pretrain_key, world_key

    assert world_key(EmbeddedRecipe.tiny(), "0" * 16) == "a1e407e9f13d"
    assert pretrain_key(EmbeddedRecipe.tiny(), "0" * 16) == "89d785549881"
    assert world_key(EmbeddedRecipe.full(), "5b22a816b4ddd488") == "3b422065c5c4"  # the demo's world on t10k
    assert pretrain_key(EmbeddedRecipe.full(), "5b22a816b4ddd488") == "afa42b4c7e67"  # shared by its endpoints
    assert world_key(EmbeddedRecipe.tiny(), "5b22a816b4ddd488") == "7f84cc127a4b"  # the tiny demo's world
    # each endpoint's key covers its own fields only (the endpoint table's prefixes)
    assert [world_key(EmbeddedRecipe.full().with_endpoint(e), "5b22a816b4ddd488") for e in ("r-adapter", "drm")] == [
        "97295380cfc2", "70e05ed7b5b5"]
    assert world_key(dataclasses.replace(EmbeddedRecipe.full(), drm_beta=0.25), "5b22a816b4ddd488") == "3b422065c5c4"


@needs_data
def test_cache_folders_are_readable_by_others_and_the_doc_is_hashed(world):
    import os

    mask = os.umask(0)
    os.umask(mask)
    for folder in (world.cache_dir, world.cache_dir.parent / f"pretrained-{world.info['pretrained_key']}"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~mask, folder  # not mkdtemp's private 0700
    doc = json.loads((world.cache_dir / "recipe.json").read_text())
    assert doc["doc_hash"] and "clean_accuracy" in doc["info"]


def _copy(world, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(world.cache_dir, target)
    return target


@needs_data
def test_an_edited_info_is_noticed_and_a_legacy_doc_is_read(world, tmp_path):
    from adawise.embedded.world import load_embedded

    target = _copy(world, tmp_path)
    doc = json.loads((target / "recipe.json").read_text())
    doc["info"]["clean_accuracy"]["finetuned"] = 0.99  # a flattering edit
    (target / "recipe.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="recipe.json was edited after it was written"):
        assert load_embedded("tiny", cache_dir=target, progress=False).info["trained"] is True
    legacy = json.loads((target / "recipe.json").read_text())
    del legacy["doc_hash"]  # written before doc_hash existed: read as it is
    (target / "recipe.json").write_text(json.dumps(legacy))
    assert load_embedded("tiny", cache_dir=target, progress=False).info["trained"] is False


@needs_data
@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_file_or_symlink_where_the_world_folder_belongs_is_replaced(world, tmp_path, kind):
    from adawise.embedded.world import load_embedded

    target = tmp_path / "world"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the cache's")
    if kind == "file":
        target.write_text("in the way")
    else:
        target.symlink_to(elsewhere)
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = load_embedded("tiny", cache_dir=target, progress=False)
    assert rebuilt.info["trained"] and target.is_dir() and not target.is_symlink()
    assert (elsewhere / "keep.txt").read_text() == "not the cache's"  # the link went, not what it pointed to
    torch.testing.assert_close(rebuilt.finetuned.head.weight, world.finetuned.head.weight)


@needs_data
def test_a_cache_root_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    from adawise.embedded.world import load_embedded
    from adawise.errors import AccessError

    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AccessError, match="cache folder .*cache.* is a file; remove it or set ADAWISE_CACHE"):
        load_embedded("tiny", progress=False)


@needs_data
def test_a_streams_cache_that_is_a_file_is_skipped_with_a_warning(world, tmp_path):
    import dataclasses as dc

    blocked = tmp_path / "streams"
    blocked.write_text("a file")
    with pytest.warns(UserWarning, match="cannot cache the shifted domain"):
        stream = dc.replace(world, streams_dir=blocked).stream(domains=["clean", "invert"], per_domain=16, batch_size=8)
    assert len(stream) == 4
