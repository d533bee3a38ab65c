"""The shipped embedded world (adawise.embedded.shipped): code hash, the CI reference, loading and refusing.

The shipped files under adawise/data/embedded/ are only read here; every test that damages or re-keys
shipped weights builds its own shipped folder from the tiny recipe in a temporary directory.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from fashion_data import needs_data  # tests/ is on sys.path under pytest

from adawise.embedded import shipped as ship
from adawise.models.checkpoints import load_checkpoint, weights_hash

# ------------------------------------------------------------------------------------------ code hash


def _imported(module: str) -> set[str]:
    """The adawise / streams modules ``module`` imports (at any depth of its code)."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from streams import fashion` imports the module streams.fashion
                sub = f"{node.module}.{alias.name}"
                out.add(sub if importlib.util.find_spec(node.module) and _is_module(sub) else node.module)
    return {m for m in out if m.split(".")[0] in ("adawise", "streams") and m not in ("adawise", "streams")}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_every_module_the_training_imports_is_classified():
    """WEIGHT_MODULES covers the code that decides the weights: every adawise/streams module reachable from
    it by imports is either in it or in UNWEIGHTED_IMPORTS with a reason (a new import must be decided)."""
    seen, todo = set(), list(ship.WEIGHT_MODULES)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(_imported(module))
    known = set(ship.WEIGHT_MODULES) | set(ship.UNWEIGHTED_IMPORTS)
    assert seen <= known, f"classify these in adawise.embedded.shipped: {sorted(seen - known)}"
    assert not set(ship.WEIGHT_MODULES) & set(ship.UNWEIGHTED_IMPORTS)
    assert {"adawise.embedded.train", "adawise.models.clip", "streams.fashion"} <= seen


_A = '''"""Module a."""
import torch
from b import helper


def train(x):
    """Docstring."""
    # a comment
    from c import other

    return helper(x) * 2
'''
_B = '''"""Module b."""
import math

__all__ = ["helper"]


def helper(x):
    return x + 1
'''


def test_the_code_hash_survives_a_pure_move_and_sees_a_real_change():
    base = ship.source_hash([_A, _B])
    # b's function moved into a (renamed module, new imports, new docstrings, comments, blank lines)
    merged = ('"""The merged module, with a new docstring."""\nimport math\nimport torch\n\n\n'
              + _B.split("\n\n\n", 1)[1].replace("helper(x):", "helper(x):  \n") + "\n\n" + _A.split("\n\n\n", 1)[1]
              .replace("# a comment", "# reworded comment\n    import os"))
    assert ship.source_hash([merged]) == base
    assert ship.source_hash([_B, _A]) == base  # order of the modules does not matter
    assert ship.source_hash([_A, _B.replace("x + 1", "x + 2")]) != base
    assert ship.source_hash([_A.replace("* 2", "* 3"), _B]) != base
    assert ship.source_hash([_A + "\nSCALE = 2\n", _B]) != base


def test_the_shipped_weights_are_keyed_by_this_code():
    """Fails when a module of WEIGHT_MODULES changed since the weights were shipped: then users train."""
    manifest = ship.read_manifest()
    assert manifest is not None, f"no manifest in {ship.SHIPPED_ROOT}"
    assert manifest["code_hash"] == ship.code_hash(), (
        f"the code that decides the embedded world's weights changed (hash {ship.code_hash()}, shipped "
        f"{manifest['code_hash']}): the shipped weights are no longer used. If the weights stay the same, run "
        "`python benchmarks/check_shipped.py --rekey` (retrains, about 10 min); if they change on purpose, "
        "`python benchmarks/check_shipped.py --reship`")


def test_the_shipped_data_stays_under_20_mib_and_is_declared_as_package_data():
    total = sum(p.stat().st_size for p in ship.SHIPPED_ROOT.rglob("*") if p.is_file())
    assert 0 < total < 20 * 2**20, total
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"data/embedded/*.json", "data/embedded/*/*.safetensors"' in text


# ------------------------------------------------------------------------------------------ tiny world


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny world trained into a temporary cache (never from shipped weights), and its folders."""
    from adawise.embedded.world import cache_root, load_embedded

    mp = pytest.MonkeyPatch()
    mp.setenv("ADAWISE_CACHE", str(tmp_path_factory.mktemp("trained")))
    try:
        world = load_embedded("tiny", progress=False, shipped=False)
        pre = cache_root() / f"pretrained-{world.info['pretrained_key']}"
        yield world, world.cache_dir, pre
    finally:
        mp.undo()


@pytest.fixture
def shipped_tiny(trained, tmp_path):
    """A shipped folder holding the tiny world (exported from the trained cache), for tests that damage it."""
    world, world_dir, pre_dir = trained
    root = tmp_path / "shipped"
    ship.write_manifest(root, {world.key: ship.export_world(world_dir, pre_dir, root)}, {})
    return root


def _hashes(world) -> dict[str, str]:
    return {name: weights_hash(getattr(world, name)) for name in ("clip", "zeroshot", "finetuned")}


def _load_logged(root: Path, cache: Path, monkeypatch, caplog):
    """``load_embedded("tiny", shipped=root)`` into the empty cache ``cache``, and what the shipped module logged."""
    from adawise.embedded.world import load_embedded

    monkeypatch.setenv("ADAWISE_CACHE", str(cache))
    with caplog.at_level(logging.WARNING, logger="adawise.embedded.shipped"):
        world = load_embedded("tiny", progress=False, shipped=root)
    return world, [r.getMessage() for r in caplog.records if r.name == "adawise.embedded.shipped"]


@needs_data
def test_ci_the_tiny_recipe_reproduces_the_shipped_reference(trained):
    """CI's check that the training code still makes the weights it made: the tiny recipe (seconds) against
    the reference hashes shipped beside the full world. Bit-exact on the torch version that wrote them."""
    world = trained[0]
    manifest = ship.read_manifest()
    built = manifest["built_with"]["torch"]
    if built != torch.__version__:
        pytest.skip(f"the shipped reference was trained with torch {built}, this is {torch.__version__}: bit-exact "
                    "weights are only expected on the same torch version (see docs/shipped_weights.md)")
    reference = manifest["references"].get(world.key)
    assert reference is not None, (f"no tiny reference for world {world.key} (shipped: "
                                   f"{list(manifest['references'])}): the tiny recipe's key changed; reship with "
                                   "benchmarks/check_shipped.py --reship")
    want = ship.reference_hashes(manifest, world.key)
    if want is None:
        pytest.skip(f"no tiny reference for CPU kernel set {ship.cpu_capability()} (recorded: "
                    f"{sorted(reference.get('weights_hash_by_cpu', {}))}, built on "
                    f"{manifest['built_with'].get('cpu_capability')}): bit-exact weights are only expected within one "
                    "kernel set; record one with `python benchmarks/check_shipped.py --add-cpu-reference`")
    assert _hashes(world) == want, (
        "the training code now makes other weights than the shipped ones: if intended, retrain and ship them "
        "with `python benchmarks/check_shipped.py --reship`")


def test_reference_hashes_are_chosen_by_cpu_kernel_set():
    """A kernel set's own entry wins; the builder's hashes serve its kernel set (or any, when it was not
    recorded); another kernel set without an entry gets none (the caller skips: bits differ there)."""
    ref = {"weights_hash": {"clip": "built"}, "weights_hash_by_cpu": {"AVX2": {"clip": "avx2"}}}
    unrecorded = {"built_with": {"torch": "x"}, "references": {"k": ref}}
    assert ship.reference_hashes(unrecorded, "k", "AVX2") == {"clip": "avx2"}
    assert ship.reference_hashes(unrecorded, "k", "AVX512") == {"clip": "built"}
    recorded = {"built_with": {"cpu_capability": "AVX512"}, "references": {"k": ref}}
    assert ship.reference_hashes(recorded, "k", "AVX512") == {"clip": "built"}
    assert ship.reference_hashes(recorded, "k", "DEFAULT") is None
    assert ship.reference_hashes(recorded, "missing", "AVX2") is None


@needs_data
def test_shipped_weights_load_equal_to_the_trained_ones_and_fill_the_cache(trained, shipped_tiny, tmp_path,
                                                                            monkeypatch):
    from adawise.embedded.world import cache_root, load_embedded

    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    world = load_embedded("tiny", progress=False, shipped=shipped_tiny)
    assert world.info["shipped"] is True and world.info["trained"] is False
    assert world.data_root == trained[0].data_root  # the Fashion-MNIST folder, not the shipped one
    assert _hashes(world) == _hashes(trained[0])
    assert torch.equal(world.finetuned.head.weight, trained[0].finetuned.head.weight)
    pre = cache_root() / f"pretrained-{world.info['pretrained_key']}"
    assert ship.is_materialised(world.cache_dir) and ship.is_materialised(pre)
    again = load_embedded("tiny", progress=False, shipped=shipped_tiny)  # now an ordinary cache entry
    assert again.info["trained"] is False and "shipped" not in again.info
    assert load_embedded("tiny", progress=False, train=False).key == world.key  # train=False reads it too
    # the copied pretraining serves another endpoint: only its fine-tuning runs
    other = load_embedded("tiny:drm", progress=False, shipped=shipped_tiny)  # drm is not shipped
    assert other.info["trained"] is True and other.info["pretrained_trained"] is False


@needs_data
def test_a_shipped_file_with_one_byte_flipped_is_refused_and_the_world_trained(trained, shipped_tiny, tmp_path,
                                                                               monkeypatch, caplog):
    world_files = shipped_tiny / trained[0].key
    data = bytearray((world_files / "finetuned.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (world_files / "finetuned.safetensors").write_bytes(bytes(data))
    world, (line,) = _load_logged(shipped_tiny, tmp_path / "cache", monkeypatch, caplog)
    assert "refused" in line and "finetuned.safetensors does not match its SHA-256" in line and "\n" not in line
    assert world.info["trained"] is True and _hashes(world) == _hashes(trained[0])
    assert not ship.is_materialised(world.cache_dir)


@needs_data
def test_a_head_that_does_not_rebuild_the_zero_shot_model_is_refused(trained, shipped_tiny, tmp_path, monkeypatch,
                                                                     caplog):
    """The head file's own SHA-256 is right, but the manifest's zero-shot hash is not what it rebuilds."""
    manifest = json.loads((shipped_tiny / ship.MANIFEST).read_text())
    manifest["worlds"][trained[0].key]["world_doc"]["weights_hash"]["zeroshot"] = "0" * 16
    ship.write_manifest(shipped_tiny, manifest["worlds"], {})
    world, (line,) = _load_logged(shipped_tiny, tmp_path / "cache", monkeypatch, caplog)
    assert "zero-shot classifier rebuilt" in line and world.info["trained"] is True


@needs_data
def test_an_edited_manifest_is_refused(trained, shipped_tiny, tmp_path, monkeypatch, caplog):
    path = shipped_tiny / ship.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["worlds"][trained[0].key]["world_doc"]["info"]["clean_accuracy"]["finetuned"] = 0.99  # flattering
    path.write_text(json.dumps(manifest))
    world, (line,) = _load_logged(shipped_tiny, tmp_path / "cache", monkeypatch, caplog)
    assert "was edited after it was written" in line and world.info["trained"] is True


@needs_data
def test_weights_shipped_by_other_code_are_not_used_and_the_log_says_why(trained, shipped_tiny, tmp_path,
                                                                         monkeypatch, caplog):
    manifest = json.loads((shipped_tiny / ship.MANIFEST).read_text())
    ship.write_manifest(shipped_tiny, manifest["worlds"], {}, code="0123456789abcdef")
    world, (line,) = _load_logged(shipped_tiny, tmp_path / "cache", monkeypatch, caplog)
    assert f"made by code 0123456789abcdef but this code hashes to {ship.code_hash()}" in line
    assert "training instead" in line and "--rekey" in line and "\n" not in line
    assert world.info["trained"] is True and not ship.is_materialised(world.cache_dir)


@needs_data
def test_no_shipped_trains_even_when_shipped_weights_exist_or_were_copied(trained, shipped_tiny, tmp_path,
                                                                          monkeypatch, caplog):
    from adawise.embedded.world import load_embedded

    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    assert load_embedded("tiny", progress=False, shipped=False).info["trained"] is True  # nothing read from shipped
    shutil.rmtree(tmp_path / "cache")
    copied = load_embedded("tiny", progress=False, shipped=shipped_tiny)
    assert copied.info["shipped"] is True
    with caplog.at_level(logging.WARNING, logger="adawise.embedded.world"):
        retrained = load_embedded("tiny", progress=False, shipped=False)
    assert any("holds a copy of them, training it" in r.getMessage() for r in caplog.records)
    assert retrained.info["trained"] is True and retrained.info["pretrained_trained"] is True
    assert not ship.is_materialised(retrained.cache_dir) and _hashes(retrained) == _hashes(trained[0])
    assert load_embedded("tiny", progress=False, shipped=False).info["trained"] is False  # a trained cache is used


def test_the_demo_has_no_shipped_and_passes_it_on(monkeypatch, tmp_path):
    """``adawise demo --no-shipped`` reaches load_embedded as shipped=False (the default: True)."""
    from adawise import cli
    from adawise.embedded import world as embedded

    seen = []

    def fake_load(*args, **kwargs):
        seen.append(kwargs.get("shipped"))
        raise RuntimeError("stop after the load call")

    monkeypatch.setattr(embedded, "load_embedded", fake_load)
    for argv, want in ((["--no-shipped"], False), ([], True)):
        with pytest.raises(RuntimeError, match="stop after the load call"):
            cli.main(["demo", "--recipe", "tiny", "--out", str(tmp_path / "out"), "--no-progress", *argv])
        assert seen[-1] is want


# ------------------------------------------------------------------------------------------ the full world


@needs_data
def test_the_shipped_full_world_verifies_and_equals_its_recorded_training(tmp_path):
    """The real shipped files: every SHA-256 and the rebuilt zero-shot classifier check out, and the copy is
    the world training recorded (weights hashes of recipe.json, and those of the shared cache where present)."""
    from adawise.embedded.world import EmbeddedRecipe, cache_root

    manifest = ship.read_manifest()
    (key,) = manifest["worlds"]
    entry = manifest["worlds"][key]
    assert entry["recipe"] == EmbeddedRecipe.full().to_dict()
    world_dir, pre_dir = tmp_path / f"embedded-{key}", tmp_path / "pretrained"
    assert ship.materialise(key, world_dir, pre_dir)
    for name in ("clip", "zeroshot", "finetuned"):
        sd = load_checkpoint(world_dir / f"{name}.safetensors")
        assert weights_hash(sd) == entry["world_doc"]["weights_hash"][name]
    cached = cache_root() / f"embedded-{key}" / "recipe.json"
    if cached.is_file() and not ship.is_materialised(cached.parent):
        assert json.loads(cached.read_text())["weights_hash"] == entry["world_doc"]["weights_hash"]
