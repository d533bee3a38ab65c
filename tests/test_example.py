"""examples/stream_imagenet_r.py and `adawise run` end to end on CPU: generated folders, a tiny random CLIP."""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP_CFG
from imagenet_r_fixture import make_imagenet_r_folder
from PIL import Image

from adawise.apps import experiment
from adawise.cli import main as cli_main
from streams.imagenet_r import (
    IMAGENET_CLASSNAMES,
    IMAGENET_R_CLASSNAMES,
    IMAGENET_R_MASK,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
    imagenet_r_stream,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "stream_imagenet_r.py"
RENDITIONS = ["art", "cartoon", "sketch", "toy"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An ImageNet-R-shaped folder (200 wnids, corrupt / grey / RGBA extras), a tiny arch file, a head cache."""
    base = tmp_path_factory.mktemp("example")
    root = make_imagenet_r_folder(base / "imagenet-r", renditions=RENDITIONS, per_class=1)
    arch = base / "tiny.json"
    arch.write_text(json.dumps(TINY_CLIP_CFG))
    return {"base": base, "data": root, "arch": arch, "cache": base / "heads"}


def _args(world, out, methods="zeroshot,finetuned,wiseft", *extra):
    return ["--data", str(world["data"]), "--arch", str(world["arch"]), "--pretrained", "none",
            "--finetuned", "none", "--templates", "simple", "--methods", methods, "--batch-size", "64",
            "--device", "cpu", "--out", str(out), "--workers", "0", "--head-cache-dir", str(world["cache"]),
            "--no-progress", *extra]


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_example_end_to_end(world):
    out = world["base"] / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as in conftest: tiny ops on shared CPUs
    p = subprocess.run([sys.executable, str(EXAMPLE), *_args(world, out)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "cartoon_999" in p.stderr  # the corrupt file is reported with its path
    for name in ("table.md", "accuracy.png", "alpha.png", "config.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    for method in ("zeroshot", "finetuned", "wiseft"):
        recs = _records(out / f"{method}.jsonl")
        header, batches, summary = recs[0], [r for r in recs if r["type"] == "batch"], recs[-1]
        assert header["type"] == "header" and header["setting"] == "continual"
        assert '"class_mask": 200' in json.dumps(header["models"])  # model provenance: logits projected to 200
        assert summary["type"] == "summary" and [Path(p).name for p, _ in summary["skipped"]] == ["cartoon_999.jpg"]
        assert list(dict.fromkeys(r["domain"] for r in batches)) == RENDITIONS  # the renditions present
        assert summary["n"] == 199 + 2  # every image but the corrupt one (grey and RGBA decoded)
    table = (out / "table.md").read_text()
    assert all(r in table for r in RENDITIONS) and "cartoon_999" in table
    assert "| wiseft |" in table and "cartoon_999" in p.stdout


def test_heads_cover_1000_classes_and_logits_are_projected(world, caplog):
    from adawise.models.clip import create_clip, zeroshot_head

    with caplog.at_level(logging.INFO):
        zs, ft = experiment.load_models(str(world["arch"]), "none", "none", class_names=IMAGENET_CLASSNAMES,
                                        class_mask=IMAGENET_R_MASK, templates="simple",
                                        head_cache_dir=world["cache"])
    assert "loaded from cache" in caplog.text  # the example run cached this head
    for model in (zs, ft):
        assert model.head.out_features == 1000 and int(model.class_mask.sum()) == 200
    torch.manual_seed(0)
    clip, tokenizer = create_clip(TINY_CLIP_CFG)
    head_200 = zeroshot_head(clip, tokenizer, IMAGENET_R_CLASSNAMES, ["a photo of a {}."])
    assert torch.allclose(zs.head.weight[IMAGENET_R_MASK], head_200, atol=1e-4)  # column j = ImageNet-R label j
    batch = next(iter(imagenet_r_stream(world["data"], image_size=zs.image_size, num_workers=0, batch_size=8)))
    with torch.no_grad():
        logits = zs(batch.images)
        full = zs.head(zs.encode(batch.images))
    assert logits.shape == (8, 200) and torch.allclose(logits, full[:, IMAGENET_R_MASK])
    folder = IMAGENET_R_WNIDS[int(batch.labels[0])]  # labels in sorted-wnid order
    assert IMAGENET_CLASSNAMES[IMAGENET_WNIDS.index(folder)] == IMAGENET_R_CLASSNAMES[int(batch.labels[0])]


def test_missing_data_or_weights_say_what_to_pass(world, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stream_imagenet_r.py"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert e.value.code == 2
    err = capsys.readouterr().err
    for needle in ("imagenet-r.tar", "--data", "--pretrained", "--finetuned", "--trust-pickle", "adawise demo"):
        assert needle in err
    args = _args(world, world["base"] / "x")
    args[args.index("--pretrained") + 1] = str(world["base"] / "clip.bin")
    assert cli_main(["run", *args]) == 2
    assert "clip.bin" in capsys.readouterr().err


def _val_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for w in IMAGENET_WNIDS[:4]:
        (root / w).mkdir(parents=True)
        for j in range(2):
            Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(root / w / f"v_{j}.JPEG")
    return root


def test_adawise_run_imagenet_c_from_config(world, caplog):
    data = _val_folder(world["base"] / "val")
    config = world["base"] / "run.json"
    config.write_text(json.dumps({
        "stream": "imagenet-c", "data": str(data), "arch": str(world["arch"]), "pretrained": "none",
        "finetuned": "none", "templates": "simple", "corruptions": ["clean", "brightness", "gaussian_noise"],
        "order": "reset_each_shift", "batch_size": 4, "methods": ["zeroshot", "wiseft", "vrf"],
        "method_option": {"wiseft": {"alpha": 0.3}}, "workers": 0, "head_cache_dir": str(world["cache"]),
    }))
    out = world["base"] / "out-c"
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["run", "--config", str(config), "--out", str(out), "--no-progress", "--severity", "2"])
    assert rc == 0
    assert "skipping vrf" in caplog.text and "adawise vrf-index" in caplog.text
    recs = _records(out / "wiseft.jsonl")
    header = recs[0]
    assert header["setting"] == "reset_each_shift" and header["options"] == {"alpha": 0.3}
    assert header["stream"]["spec"]["options"]["severity"] == 2
    domains = [r["domain"] for r in recs if r["type"] == "batch"]
    assert domains == ["clean"] * 2 + ["brightness"] * 2 + ["gaussian_noise"] * 2
    assert "mean shifts" in (out / "table.md").read_text()  # 'clean' is the in-distribution column
    assert not (out / "vrf.jsonl").exists()
    repeat = json.loads((out / "config.json").read_text())
    assert repeat["stream"] == "imagenet-c" and repeat["severity"] == 2
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    again = experiment.apply_config(parser.parse_args(["--config", str(out / "config.json"), "--seed", "3"]))
    assert (again.data, again.order, again.severity, again.seed) == (str(data), "reset_each_shift", 2, 3)


def test_example_runs_adawise(world):
    example = runpy.run_path(str(EXAMPLE))
    out = world["base"] / "out-ada"
    assert example["main"](_args(world, out, "adawise", "--limit-per-domain", "8")) == 0
    batches = [r for r in _records(out / "adawise.jsonl") if r["type"] == "batch"]
    assert batches and all(r["alpha"] is not None and 0 <= r["alpha"] <= 1 for r in batches)


def test_quickstart_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert "alpha" in capsys.readouterr().out
