"""The embedded world's weights shipped as package data: verified, keyed by the code that made them.

A fresh machine would otherwise spend about ten minutes training the default world (``EmbeddedRecipe.full()``,
seed 0, endpoint e2e) before ``adawise demo`` shows anything. Its weights ship under
``adawise/data/embedded/<world key>/`` with a manifest (``manifest.json``) that records, for each shipped
world, the recipe, the cache documents training wrote (``recipe.json``, ``pretrained.json``), the SHA-256
of every shipped file and the weights hashes, plus the hash of the code that decides the weights
(:func:`code_hash` over :data:`WEIGHT_MODULES`) and the versions it was built with.

What ships and what is recomputed (exactly) from it:

- ``clip.safetensors``: the pretrained CLIP, both towers (15.0 MB; 12.6 MB of it is the token embedding
  of open_clip's 49,408-token vocabulary, kept whole so that any prompt still encodes);
- ``zeroshot-head.safetensors``: the zero-shot head only (2.6 kB); the zero-shot classifier's image
  tower *is* the pretrained CLIP's (same tensors), so it is rebuilt from ``clip.safetensors``;
- ``finetuned.safetensors``: the fine-tuned (e2e) classifier (1.9 MB);
- ``zsf.safetensors``: the demo's VRF Zero-Shot-Failure index (1.4 MB), optional, shipped when it was
  in the cache it was exported from; a deterministic function of the two classifiers and the data,
  shipped because building it costs the demo time.

:func:`materialise` turns a shipped world into an ordinary cache entry (``embedded-<key>/`` and, if absent,
``pretrained-<key>/``, each with a ``shipped.json`` marker), after checking that the code hash matches
and that every file's SHA-256 and the rebuilt zero-shot classifier's weights hash are the recorded ones;
anything else is refused with one line saying why, and the caller trains. From then on the cache's own
checks apply, and every other endpoint of the same pretraining (r-adapter, drm) only fine-tunes.

The code hash survives a pure move or merge of modules: it hashes the set of top-level statements of the
modules, each without its import lines, docstrings, comments and blank lines (so moving a function to
another listed module, or renaming a module, leaves it unchanged); any other change to that code changes
it, and then the shipped weights are not used until ``python benchmarks/check_shipped.py --rekey`` (a full
retrain that reproduces the shipped hashes) re-keys them.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adawise.embedded.world import _doc_hash, _remove
from adawise.models.checkpoints import default_mode, load_checkpoint, save_state_dict, weights_hash

__all__ = ["WEIGHT_MODULES", "UNWEIGHTED_IMPORTS", "SHIPPED_ROOT", "MARKER", "code_hash", "source_hash",
           "read_manifest", "ShippedEntry", "shipped_entry", "materialise", "is_materialised", "export_world",
           "write_manifest", "file_sha256", "cpu_capability", "reference_hashes", "add_cpu_reference"]

log = logging.getLogger(__name__)

#: every module whose code decides the embedded world's weights (data loading, model, training, endpoints);
#: tests/test_shipped.py checks that every adawise/streams module the training imports is here or below
WEIGHT_MODULES: tuple[str, ...] = (
    "adawise.embedded.world", "adawise.embedded.recipe", "adawise.embedded.endpoints", "adawise.embedded.stages",
    "adawise.embedded.train", "adawise.embedded.r_adapter", "adawise.embedded.drm", "adawise.models.clip",
    "streams.fashion",
)
#: modules the training imports whose code does not decide the weights, and why
UNWEIGHTED_IMPORTS: dict[str, str] = {
    "adawise.errors": "exception classes only",
    "adawise.models.checkpoints": "file IO and weights hashes (a change there fails the hash checks instead)",
    "adawise.core.weights": "state-dict compatibility checks and test-time interpolation",
    "adawise.embedded.shipped": "this module: loads and checks weights, never computes them",
    "streams.base": "test-time stream classes",
    "streams.imagenet_r": "the ImageNet-R test stream (streams.orders reads its class list)",
    "streams.orders": "test-time stream orders",
    "streams.folders": "test-time image-folder streams (ImageNet-R, vrf-index folders)",
    "streams.imagenet_val": "the ImageNet validation-folder test stream",
    "streams.schedules": "test-time severity schedules",
    "streams.shifts": "test-time distribution shifts (streams.fashion.SHIFT_MODULES keys their own cache)",
    **{m: "a test-time shift's code" for m in (
        "streams.corruptions", "streams._corruption_ops", "streams._imageops", "streams._noise", "streams._rng",
        "streams._poisson", "streams._frost", "streams._jpeg", "streams._levels", "streams._pixelate")},
}
#: the package data folder of shipped worlds
SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "data" / "embedded"
MANIFEST = "manifest.json"
FORMAT = "adawise-shipped/1"
#: the file a materialised cache entry carries (which shipped manifest and code hash it came from)
MARKER = "shipped.json"
_HEAD = "zeroshot-head.safetensors"
_OPTIONAL = ("zsf.safetensors",)


def _statement_texts(source: str) -> set[str]:
    """The top-level statements of ``source``, each without imports, docstrings, comments and blank lines."""
    lines = source.splitlines()
    tree = ast.parse(source)
    drop: set[int] = set()  # 1-based line numbers of import statements and docstrings, at any depth
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            drop.update(range(node.lineno, node.end_lineno + 1))
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            drop.update(range(body[0].lineno, body[0].end_lineno + 1))
    texts = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            continue  # the export list changes when a module is split or merged
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept = [line.rstrip() for n, line in enumerate(lines[start - 1 : node.end_lineno], start)
                if n not in drop and line.strip() and not line.strip().startswith("#")]
        if kept:
            texts.add("\n".join(kept))
    return texts


def code_hash(modules: tuple[str, ...] = WEIGHT_MODULES) -> str:
    """Hash of the code that decides the weights: the sorted set of the modules' normalised top-level statements.

    Import lines, docstrings, comments, blank lines and ``__all__`` are left out, and module names do not
    enter it, so a pure move, rename, split or merge of these modules keeps the hash; any change to a
    statement changes it. Computed on the source text only (line numbers from :mod:`ast`), so the same
    source gives the same hash on any Python >= 3.10.
    """
    sources = []
    for name in modules:
        path = importlib.import_module(name).__file__
        if path is None:
            raise ValueError(f"WEIGHT_MODULES: module {name} has no source file")
        sources.append(Path(path).read_text(encoding="utf-8"))
    return source_hash(sources)


def source_hash(sources: list[str]) -> str:
    """The hash :func:`code_hash` computes, over module source texts (their order and names do not matter)."""
    statements: set[str] = set()
    for source in sources:
        statements |= _statement_texts(source)
    digest = hashlib.sha256()
    for text in sorted(statements):
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(root: Path = SHIPPED_ROOT) -> dict[str, Any] | None:
    """The shipped manifest in ``root``, or ``None`` when there is none; raises ``ValueError`` if it was edited."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} manifest")
    if doc.get("doc_hash") != _doc_hash(doc):
        raise ValueError(f"{path} was edited after it was written (its doc_hash does not match)")
    return doc


@dataclass(frozen=True)
class ShippedEntry:
    """One shipped world: its folder and its manifest entry (``recipe``, ``world_doc``, ``files``, ...)."""

    key: str
    directory: Path
    entry: dict[str, Any]
    code_hash: str


def shipped_entry(key: str, root: Path = SHIPPED_ROOT) -> ShippedEntry | None:
    """The shipped world with cache key ``key``, or ``None`` when none is shipped."""
    manifest = read_manifest(root)
    if manifest is None or key not in manifest.get("worlds", {}):
        return None
    return ShippedEntry(key, Path(root) / key, manifest["worlds"][key], manifest["code_hash"])


def is_materialised(*directories: Path) -> bool:
    """Whether any of these cache entries was copied from shipped weights (carries :data:`MARKER`)."""
    return any((Path(d) / MARKER).is_file() for d in directories)


def _verified(shipped: ShippedEntry) -> dict[str, Path]:
    """The shipped files, each checked against its recorded SHA-256 (raises ``ValueError`` naming the file)."""
    paths = {}
    for name, record in shipped.entry["files"].items():
        path = shipped.directory / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        if file_sha256(path) != record["sha256"]:
            raise ValueError(f"{path} does not match its SHA-256 in {MANIFEST} (damaged or edited)")
        paths[name] = path
    return paths


def _write_entry(directory: Path, files: Mapping[str, Path | Mapping[str, Any]], doc_name: str,
                 doc: Mapping[str, Any], marker: Mapping[str, Any]) -> None:
    """Write a cache entry atomically: files copied (a path) or saved (a state dict), its document, the marker."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    os.chmod(tmp, default_mode(directory=True))
    for name, source in files.items():
        if isinstance(source, Path):
            shutil.copyfile(source, tmp / name)
        else:
            save_state_dict(source, tmp / name, {"adawise_embedded_key": doc["key"]})
    (tmp / doc_name).write_text(json.dumps(doc, indent=2) + "\n")
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _remove(directory)
    os.replace(tmp, directory)


def materialise(key: str, world_dir: Path, pretrained_dir: Path, root: Path = SHIPPED_ROOT) -> bool:
    """Copy the shipped world ``key`` into the cache (``world_dir``; ``pretrained_dir`` when it is absent).

    Returns ``False`` (after one log line saying why, unless simply nothing is shipped for ``key``) when the
    shipped weights must not be used: the code hash differs, a file is missing or damaged, or the rebuilt
    zero-shot classifier does not hash as recorded. The caller holds the build locks of both folders.
    """
    try:
        shipped = shipped_entry(key, root)
    except (ValueError, OSError) as err:
        log.warning("shipped weights unusable (%s): training the embedded world instead", err)
        return False
    if shipped is None:
        return False
    current = code_hash()
    if current != shipped.code_hash:
        log.warning("shipped weights for world %s were made by code %s but this code hashes to %s (a module of "
                    "adawise.embedded.shipped.WEIGHT_MODULES changed): training instead; if the change keeps the "
                    "weights, re-key with `python benchmarks/check_shipped.py --rekey`", key, shipped.code_hash,
                    current)
        return False
    try:
        paths = _verified(shipped)
        clip_sd = load_checkpoint(paths["clip.safetensors"])
        zeroshot_sd = {**{k: v for k, v in clip_sd.items() if k.startswith("visual.")}, **load_checkpoint(paths[_HEAD])}
        world_doc, pre_doc = shipped.entry["world_doc"], shipped.entry["pretrained_doc"]
        if weights_hash(zeroshot_sd) != world_doc["weights_hash"]["zeroshot"]:
            raise ValueError(f"the zero-shot classifier rebuilt from {paths[_HEAD]} and clip.safetensors does not "
                             "match its recorded weights hash")
    except (ValueError, OSError, KeyError) as err:
        log.warning("shipped weights for world %s refused (%s): training instead", key, err)
        return False
    marker = {"manifest": str(Path(root) / MANIFEST), "world": key, "code_hash": shipped.code_hash,
              "copied": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    files: dict[str, Path | Mapping[str, Any]] = {"clip.safetensors": paths["clip.safetensors"],
                                                  "zeroshot.safetensors": zeroshot_sd,
                                                  "finetuned.safetensors": paths["finetuned.safetensors"]}
    files.update({name: paths[name] for name in _OPTIONAL if name in paths})
    _write_entry(world_dir, files, "recipe.json", world_doc, marker)
    if not (pretrained_dir / "pretrained.json").is_file():
        _write_entry(pretrained_dir, {"clip.safetensors": paths["clip.safetensors"],
                                      "zeroshot.safetensors": zeroshot_sd}, "pretrained.json", pre_doc, marker)
    log.info("embedded world %s copied from the shipped weights in %s to %s", key, shipped.directory, world_dir)
    return True


def export_world(world_dir: Path, pretrained_dir: Path, dest: Path) -> dict[str, Any]:
    """Write a trained world's shipped files into ``dest/<key>/``; returns its manifest entry.

    ``world_dir`` is a cache entry ``embedded-<key>/`` and ``pretrained_dir`` its ``pretrained-<key>/``;
    their documents are kept verbatim. Raises ``ValueError`` if the zero-shot classifier's image tower is
    not the pretrained CLIP's (then it could not be rebuilt from it).
    """
    world_dir, pretrained_dir = Path(world_dir), Path(pretrained_dir)
    world_doc = json.loads((world_dir / "recipe.json").read_text())
    pre_doc = json.loads((pretrained_dir / "pretrained.json").read_text())
    key = world_doc["key"]
    if world_doc["info"].get("pretrained_key") != pre_doc["key"]:
        raise ValueError(f"{world_dir} was fine-tuned from pretraining {world_doc['info'].get('pretrained_key')}, "
                         f"not {pre_doc['key']} ({pretrained_dir})")
    clip_sd = load_checkpoint(world_dir / "clip.safetensors")
    zeroshot_sd = load_checkpoint(world_dir / "zeroshot.safetensors")
    shared = [k for k in zeroshot_sd if k.startswith("visual.")]
    if any(not clip_sd[k].equal(zeroshot_sd[k]) for k in shared):
        raise ValueError(f"{world_dir}: the zero-shot image tower differs from the pretrained CLIP's")
    out = Path(dest) / key
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(world_dir / "clip.safetensors", out / "clip.safetensors")
    shutil.copyfile(world_dir / "finetuned.safetensors", out / "finetuned.safetensors")
    save_state_dict({k: v for k, v in zeroshot_sd.items() if k not in shared}, out / _HEAD,
                    {"adawise_embedded_key": key})
    for name in _OPTIONAL:
        if (world_dir / name).is_file():
            shutil.copyfile(world_dir / name, out / name)
    files = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in sorted(out.iterdir())}
    return {"recipe": world_doc["recipe"], "world_doc": world_doc, "pretrained_doc": pre_doc, "files": files}


def cpu_capability() -> str:
    """The CPU kernel set torch dispatches to here (``"AVX2"``, ``"AVX512"``, ...): one torch version trains
    bit-identical weights only within one kernel set (the same recipe differs in the last bits elsewhere)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def reference_hashes(manifest: Mapping[str, Any], key: str, cpu: str | None = None) -> dict[str, str] | None:
    """The tiny reference's expected weights hashes for CPU kernel set ``cpu`` (default: this machine's): the
    hashes recorded for that kernel set, else those of the machine that wrote the manifest when its kernel set
    is that one or was not recorded; ``None`` when nothing applies (another kernel set, no reference)."""
    reference = manifest.get("references", {}).get(key)
    if reference is None:
        return None
    cpu = cpu or cpu_capability()
    by_cpu = reference.get("weights_hash_by_cpu", {})
    if cpu in by_cpu:
        return dict(by_cpu[cpu])
    if manifest.get("built_with", {}).get("cpu_capability") in (None, cpu):
        return dict(reference["weights_hash"])
    return None


def add_cpu_reference(root: Path, key: str, hashes: Mapping[str, str], cpu: str | None = None) -> dict[str, Any]:
    """Record the tiny reference's weights hashes as trained on CPU kernel set ``cpu`` (default: this
    machine's) in ``root/manifest.json``, leaving every other entry (and ``built_with``) as it is."""
    manifest = read_manifest(root)
    if manifest is None or key not in manifest.get("references", {}):
        raise ValueError(f"{Path(root) / MANIFEST}: no tiny reference {key!r} to add a CPU entry to; reship first")
    manifest["references"][key].setdefault("weights_hash_by_cpu", {})[cpu or cpu_capability()] = dict(hashes)
    return _write_manifest_doc(root, manifest)


def _write_manifest_doc(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Seal ``doc`` with its ``doc_hash`` and write it as ``root/manifest.json``."""
    doc["doc_hash"] = _doc_hash(doc)
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def write_manifest(root: Path, worlds: Mapping[str, Any], references: Mapping[str, Any],
                   code: str | None = None) -> dict[str, Any]:
    """Write ``root/manifest.json``: the shipped worlds, the hash-only references, the code hash and versions."""
    import open_clip
    import torch

    doc = {"format": FORMAT, "code_hash": code or code_hash(), "weight_modules": list(WEIGHT_MODULES),
           "built_with": {"torch": torch.__version__, "open_clip": open_clip.__version__,
                          "python": sys.version.split()[0], "cpu_capability": cpu_capability()},
           "worlds": dict(worlds), "references": dict(references),
           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return _write_manifest_doc(root, doc)
