"""Reliability: bad input gets a clear error or is skipped and counted, never a crash mid-stream and never a
silent wrong answer. Corrupt / truncated images, empty class folders, a checkpoint for another architecture
or another head, labels outside the head, a batch of one, a partial last batch, images of mixed sizes,
NaN / Inf pixels through AdaWiSE, and untrusted pickles (library and command line)."""

from __future__ import annotations

import copy
import io
import json
import math
import os

import pytest
import torch
from conftest import TINY_CLASSES, TINY_CLIP_CFG, TINY_TEMPLATES
from imagenet_r_fixture import make_imagenet_r_folder
from PIL import Image

import adawise
from adawise.cli import main as cli_main
from adawise.core.weights import StateDictMismatchError
from adawise.evaluation.logs import read_jsonl, read_run
from adawise.methods.base import Method
from adawise.models.checkpoints import UntrustedPickleError
from streams.base import ConcatStream, TensorStream
from streams.imagenet_r import IMAGENET_R_CLASSNAMES, IMAGENET_R_WNIDS, imagenet_r_stream

S = 32  # the tiny model's resolution
RENDITIONS = ["art", "cartoon"]


def _tiny_pair(classes=TINY_CLASSES, **kw):
    return adawise.load_pair(copy.deepcopy(TINY_CLIP_CFG), list(classes), templates=list(TINY_TEMPLATES), **kw)


def _rand(n: int, seed: int, size: int = S) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, len(TINY_CLASSES), (n,), generator=g)


class Evil:
    """A pickle payload: unpickling it creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """ImageNet-R-shaped folder: 200 wnids, a corrupt JPEG, a truncated JPEG, grey and RGBA files of other
    sizes, one empty class folder; plus a tiny arch file for the command line."""
    base = tmp_path_factory.mktemp("reliability")
    root = make_imagenet_r_folder(base / "imagenet-r", renditions=RENDITIONS, per_class=1, size=(40, 48))
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, "JPEG")
    (root / IMAGENET_R_WNIDS[1] / "art_777.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    arch = base / "tiny.json"
    arch.write_text(json.dumps(TINY_CLIP_CFG))
    return {"base": base, "data": root, "arch": arch, "cache": base / "heads"}


def _cli_args(world, out, *extra):
    return ["run", "--data", str(world["data"]), "--arch", str(world["arch"]), "--pretrained", "none",
            "--templates", "simple", "--batch-size", "32", "--device", "cpu", "--out", str(out), "--workers", "0",
            "--head-cache-dir", str(world["cache"]), "--no-progress", *extra]


# ----------------------------------------------------------------------------- files


def test_corrupt_truncated_and_empty_are_skipped_and_counted(world, tmp_path) -> None:
    zs, ft = _tiny_pair(IMAGENET_R_CLASSNAMES)  # a 200-way head: the stream's label space
    stream = imagenet_r_stream(world["data"], batch_size=32, image_size=S, num_workers=0)
    log = tmp_path / "zs.jsonl"
    result = adawise.run_stream(adawise.make_method("zeroshot", zs, ft), stream, log=log, progress=False)
    run = read_run(log)
    assert run["complete"]
    skipped = {os.path.basename(p): reason for p, reason in run["summary"]["skipped"]}
    assert set(skipped) == {"cartoon_999.jpg", "art_777.jpg"}  # corrupt and truncated: skipped, with reasons
    assert "truncated" in skipped["art_777.jpg"] and all(skipped.values())
    assert run["summary"]["n"] == 199 + 2 == sum(r["n"] for r in result.records)  # 199 + grey + RGBA
    assert run["header"]["stream"]["empty_classes"] == [IMAGENET_R_WNIDS[-1]]
    assert "skipped 2 unreadable inputs" in log.with_suffix(".txt").read_text()
    # grey 30x30, RGBA 30x30 and RGB 40x48 files all arrive as one [B, 3, S, S] size
    assert all(b.images.shape[1:] == (3, S, S) for b in stream)


def test_a_folder_of_empty_classes_is_a_clear_error(tmp_path) -> None:
    for wnid in IMAGENET_R_WNIDS[:3]:
        (tmp_path / wnid).mkdir()
    with pytest.raises(FileNotFoundError, match="no images found under"):
        imagenet_r_stream(tmp_path, image_size=S, num_workers=0)


# ----------------------------------------------------------------------------- checkpoints and heads


def test_checkpoint_for_another_architecture_lists_missing_unexpected_and_misshaped(tmp_path) -> None:
    zs, ft = _tiny_pair()
    sd = dict(ft.state_dict())
    del sd["visual.proj"]  # missing
    sd["visual.extra.weight"] = torch.zeros(2)  # unexpected
    sd["visual.ln_post.weight"] = torch.zeros(65)  # mis-shaped
    path = tmp_path / "other.safetensors"
    adawise.save_state_dict(sd, path)
    with pytest.raises(StateDictMismatchError) as err:
        _tiny_pair(finetuned=path)
    msg = str(err.value)
    assert "keys only in the" in msg and "visual.proj" in msg
    assert f"keys only in {path}" in msg and "visual.extra.weight" in msg
    assert "visual.ln_post.weight (64,) vs (65,)" in msg


def test_finetuned_head_for_another_class_list_names_both_numbers(tmp_path) -> None:
    _, ft7 = _tiny_pair(TINY_CLASSES + ("car", "tree"))
    path = tmp_path / "ft7.safetensors"
    adawise.save_state_dict(ft7.state_dict(), path)
    with pytest.raises(StateDictMismatchError, match="head has 7 classes but the zero-shot head was built from 5"):
        _tiny_pair(finetuned=path)


def test_class_mask_of_the_wrong_length_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\) but the head has 5 classes"):
        _tiny_pair(class_mask=torch.ones(4, dtype=torch.bool))


def test_labels_outside_the_head_are_an_error_naming_both_numbers() -> None:
    zs, ft = _tiny_pair()
    images, labels = _rand(8, 0)
    labels[5] = 9
    stream = TensorStream(images, labels, "d", 4)
    with pytest.raises(ValueError, match=r"batch 1 \(domain 'd'\): labels range from \d to 9 but the method "
                                         r"predicts 5 classes"):
        adawise.run_stream(adawise.make_method("zeroshot", zs, ft), stream, progress=False)


class Thousand(Method):
    """A 1000-way classifier that forgot the ImageNet-R class mask."""

    name = "thousand"

    def forward(self, images):
        return torch.zeros(len(images), 1000)


def test_a_stream_that_knows_its_classes_refuses_an_unprojected_head(world) -> None:
    stream = imagenet_r_stream(world["data"], batch_size=64, image_size=S, num_workers=0)
    assert stream.num_classes == 200 and ConcatStream([stream]).num_classes == 200
    # every ImageNet-R label is < 1000, so only the stream's class count reveals the missing mask
    with pytest.raises(ValueError, match="predicts 1000 classes but the stream has 200.*IMAGENET_R_MASK"):
        adawise.run_stream(Thousand(), stream, progress=False)


# ----------------------------------------------------------------------------- batch shapes


def test_batch_of_one_and_partial_last_batch_through_adawise() -> None:
    zs, ft = _tiny_pair()
    images, labels = _rand(7, 1)
    result = adawise.run_stream(adawise.make_method("adawise", zs, ft), TensorStream(images, labels, "d", 3),
                                progress=False)
    assert [r["n"] for r in result.records] == [3, 3, 1]
    ones = adawise.run_stream(adawise.make_method("adawise", zs, ft), TensorStream(images[:4], labels[:4], "d", 1),
                              progress=False)
    assert [r["n"] for r in ones.records] == [1, 1, 1, 1]
    for r in result.records + ones.records:
        assert 0.0 <= r["alpha"] <= 1.0 and r["entropy"] is not None and not r["nonfinite"]
        assert r["nonfinite_rows"] == 0 and r["forward_passes"] >= 1.0


def test_mixed_sizes_are_refused_clearly_and_one_size_is_resized() -> None:
    """Validation lives in the models and streams; methods pass on whatever their models accept."""
    zs, ft = _tiny_pair()
    mixed = [torch.rand(3, 32, 32), torch.rand(3, 40, 48)]
    with pytest.raises(TypeError, match="got list of tensors shaped .*torch.stack"):
        TensorStream(mixed, torch.zeros(2, dtype=torch.long), "d", 2)
    for name in ("zeroshot", "wiseft", "ose", "adawise"):
        method = adawise.make_method(name, zs, ft)
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*got list.*torch.stack"):
            method(mixed)
    engine = adawise.make_method("adawise", zs, ft)
    with pytest.raises(ValueError):
        engine(mixed)
    images, _ = _rand(4, 2, size=48)
    out = engine(images)  # the failed call left the engine usable
    assert out.shape == (4, 5) and torch.isfinite(out).all() and engine.info["mode"] == "search"
    # a stacked batch of another size (even non-square) is resized by the model, exactly as by hand
    odd = torch.rand(2, 3, 40, 56)
    resized = torch.nn.functional.interpolate(odd, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        assert torch.allclose(zs(odd), zs(resized), atol=1e-6)


# ----------------------------------------------------------------------------- NaN / Inf pixels


def test_nan_and_inf_pixels_through_adawise(tmp_path) -> None:
    zs, ft = _tiny_pair()
    good, labels = _rand(24, 3)
    broken = good[:8].clone().fill_(math.nan)  # a whole batch of NaN pixels
    one_inf = good[8:16].clone()
    one_inf[2, 1, 5, 5] = math.inf  # one image with one Inf pixel
    parts = [TensorStream(good[:16], labels[:16], "clean", 8), TensorStream(broken, labels[:8], "broken", 8),
             TensorStream(one_inf, labels[8:16], "one-inf", 8), TensorStream(good[16:], labels[16:], "after", 8)]
    engine = adawise.make_method("adawise", zs, ft)
    log = tmp_path / "ada.jsonl"
    result = adawise.run_stream(engine, ConcatStream(parts), log=log, progress=False)
    clean, _, nan_batch, inf_batch, after = result.records

    assert clean["entropy"] is not None and not clean["nonfinite"] and clean["nonfinite_rows"] == 0
    # the all-NaN batch is scored (every row wrong: no prediction), recorded, and alpha does not move
    assert nan_batch["n"] == 8 and nan_batch["correct"] == 0 and nan_batch["nonfinite_rows"] == 8
    assert nan_batch["entropy"] is None and nan_batch["nonfinite"] is True and nan_batch["mode"] == "skip"
    assert nan_batch["alpha"] == clean["alpha"]
    # one broken image: its row is wrong, the other seven drive the search
    assert inf_batch["nonfinite"] is True and inf_batch["dropped_rows"] == 1 and inf_batch["nonfinite_rows"] == 1
    assert inf_batch["entropy"] is None and inf_batch["objective"] is not None and 0 <= inf_batch["alpha"] <= 1
    # the next good batch works as before
    assert not after["nonfinite"] and after["entropy"] is not None and after["nonfinite_rows"] == 0
    # the optimizer never stored a non-finite value
    assert engine.bo._s.obs and all(math.isfinite(y) for _, y, _, _ in engine.bo._s.obs)

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    text = log.read_text()
    assert [json.loads(line, parse_constant=refuse)["type"] for line in text.splitlines()] == (
        ["header"] + ["batch"] * 5 + ["summary"])
    assert read_jsonl(log)[3]["nonfinite"] is True


# ----------------------------------------------------------------------------- untrusted files on the command line


def test_cli_refuses_a_malicious_pickle_without_trust(world, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}, "payload": Evil(str(marker))}, evil)
    with pytest.raises(UntrustedPickleError):
        adawise.load_checkpoint(evil)
    rc = cli_main(_cli_args(world, tmp_path / "out", "--finetuned", str(evil), "--methods", "zeroshot"))
    assert rc == 2 and not marker.exists(), "the pickle's code ran without --trust-pickle"
    err = capsys.readouterr().err
    assert str(evil) in err and "--trust-pickle" in err and "Traceback" not in err


def test_cli_reports_a_checkpoint_for_another_head(world, tmp_path, capsys) -> None:
    _, ft = _tiny_pair()  # a 5-class head; the command builds 1000 ImageNet classes
    path = tmp_path / "ft5.safetensors"
    adawise.save_state_dict(ft.state_dict(), path)
    rc = cli_main(_cli_args(world, tmp_path / "out", "--finetuned", str(path), "--methods", "zeroshot"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "head has 5 classes but the zero-shot head was built from 1000 class names" in err


# ----------------------------------------------------------------------------- hostile image folders

UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]  # root without its capabilities:
# file permissions apply to it as to anyone (chmod alone does not stop root)


def _small_folder(root, renditions=("art",)):
    return make_imagenet_r_folder(root, renditions=list(renditions), per_class=1, size=(40, 48), extras=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_extreme_aspect_ratio_and_pixel_count_are_skipped_from_the_header(tmp_path, monkeypatch, workers) -> None:
    from streams import folders

    root = _small_folder(tmp_path / "r")
    Image.new("RGB", (10000, 1)).save(root / IMAGENET_R_WNIDS[0] / "art_9000.png")  # 111 bytes, 1x10000
    opened = []
    real_load = Image.Image.load

    def load(self):
        opened.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", load)
    stream = imagenet_r_stream(root, batch_size=64, image_size=S, num_workers=workers)
    n = sum(len(b.labels) for b in stream)
    reasons = {os.path.basename(p): r for p, r in stream.skipped}
    assert n == 200 and list(reasons) == ["art_9000.png"] and "extreme aspect ratio 10000x1" in reasons["art_9000.png"]
    if workers == 0:
        assert (10000, 1) not in opened  # refused from the header, never decoded
    monkeypatch.setattr(folders, "MAX_PIXELS", 40 * 48 - 1)  # now every 40x48 file is "too many pixels"
    with pytest.raises(adawise.DataError, match="all 201 inputs of the stream were unreadable"):
        adawise.run_stream(adawise.make_method("zeroshot", *_tiny_pair(IMAGENET_R_CLASSNAMES)),
                           imagenet_r_stream(root, image_size=S, num_workers=0), progress=False)


def test_symlink_loops_in_an_image_folder_are_skipped_and_reported(tmp_path) -> None:
    root = _small_folder(tmp_path / "r")
    first = root / IMAGENET_R_WNIDS[0]
    (first / "art_loop.jpg").symlink_to(first / "art_loop.jpg")  # a file entry that loops
    (root / "n99999999").symlink_to(root / "n99999999")  # a folder entry that loops
    stream = imagenet_r_stream(root, batch_size=64, image_size=S, num_workers=0)
    assert sum(len(b.labels) for b in stream) == 200
    skipped = {os.path.basename(p): r for p, r in stream.skipped}
    assert set(skipped) == {"art_loop.jpg", "n99999999"} and all("Too many levels" in r for r in skipped.values())
    assert len(stream.describe()["unlisted"]) == 2


UNREADABLE = """
import json, sys
sys.path.insert(0, {tests!r})
from streams.imagenet_r import imagenet_r_stream
stream = imagenet_r_stream({root!r}, batch_size=64, image_size=32, num_workers=0)
n = sum(len(b.labels) for b in stream)
print(json.dumps({{"n": n, "skipped": stream.skipped}}))
"""


def test_an_unreadable_class_folder_is_skipped_not_a_crash(tmp_path) -> None:
    import subprocess
    import sys

    root = _small_folder(tmp_path / "r")
    locked = root / IMAGENET_R_WNIDS[3]
    locked.chmod(0)
    try:
        code = UNREADABLE.format(tests=os.path.dirname(__file__), root=str(root))
        proc = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 199 and [os.path.basename(p) for p, _ in out["skipped"]] == [IMAGENET_R_WNIDS[3]]
    assert "unreadable folder (PermissionError" in out["skipped"][0][1]


def test_resume_refuses_a_folder_whose_unreadable_files_became_readable(tmp_path, monkeypatch) -> None:
    from streams import imagenet_r

    root = _small_folder(tmp_path / "r")
    zs, ft = _tiny_pair(IMAGENET_R_CLASSNAMES)
    hidden = {str(root / IMAGENET_R_WNIDS[i] / f"art_{i}.jpg") for i in (1, 2)}  # in the first batch
    real = imagenet_r.ImageNetRFolder.load

    def flaky(self, index):  # unreadable at first (as if a permission were missing), same bytes and size
        if self.samples[index][0] in hidden:
            raise PermissionError(13, "Permission denied")
        return real(self, index)

    monkeypatch.setattr(imagenet_r.ImageNetRFolder, "load", flaky)
    log = tmp_path / "zs.jsonl"
    adawise.run_stream(adawise.make_method("zeroshot", zs, ft), imagenet_r_stream(root, batch_size=64, image_size=S,
                                                                               num_workers=0), log=log, progress=False)
    lines = log.read_text().splitlines(keepends=True)
    assert read_run(log)["batches"][0]["skipped_inputs"] == 2 and read_run(log)["batches"][0]["n"] == 62
    log.write_text("".join(lines[:3]))  # killed after two batches
    monkeypatch.undo()  # the files are readable now: the first batches would differ from the logged ones
    with pytest.raises(adawise.ResumeError, match=r"batch 0 \(domain 'art', 64 images.*not the batch logged as batch 0 "
                                                  r"\(domain 'art', 62 images"):
        adawise.run_stream(adawise.make_method("zeroshot", zs, ft), imagenet_r_stream(root, batch_size=64,
                           image_size=S, num_workers=0), log=log, resume=True, progress=False)
