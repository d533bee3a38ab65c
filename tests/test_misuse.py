"""The command-line misuse matrix: every subcommand (demo, run, report, vrf-index, show-corruptions, sweep) and
examples/stream_imagenet_r.py, fed bad values, missing / broken / foreign files and impossible combinations.

Each case runs in-process (``main(argv)``) and must exit with code 2, print no traceback, and say on one
line which flag or file is at fault and what to pass. Every option is checked before expensive work: the
demo's world is never built (the cache stays empty), run's models are never loaded for an option error.
Read-only and unreadable paths are made real by dropping root's capabilities in a subprocess (setpriv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLASSES, TINY_CLIP_CFG, TINY_TEMPLATES, tiny_clip_model
from imagenet_r_fixture import make_imagenet_r_folder
from test_reliability import Evil

import adawise
from adawise.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "stream_imagenet_r.py"
ACTIONABLE = ("pass", "choose", "must", "expected", "needs", "use ", "set ", "remove", "make", "known", "valid",
              "registered", "see ", "copy it", "delete", "rebuild", "wait", "drop")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every file a hostile or careless user might pass."""
    base = tmp_path_factory.mktemp("misuse")
    f = {"base": base}
    f["data"] = make_imagenet_r_folder(base / "imagenet-r", renditions=["art"], per_class=1, extras=False)
    f["arch"] = base / "tiny.json"
    f["arch"].write_text(json.dumps(TINY_CLIP_CFG))
    (base / "bad.json").write_text("{not json")
    (base / "types.json").write_text(json.dumps({**TINY_CLIP_CFG, "embed_dim": "wide"}))
    (base / "nobraces.txt").write_text("a photo of a cat\n")
    (base / "a-file").write_text("not a folder")
    (base / "weights.pt").write_text(json.dumps({"weight": [1, 2]}))  # JSON named .pt
    (base / "random.bin").write_bytes(bytes(range(256)) * 3)
    zs, ft = adawise.load_pair(dict(TINY_CLIP_CFG), list(TINY_CLASSES), templates=list(TINY_TEMPLATES))
    adawise.save_state_dict(ft.state_dict(), base / "ft5.safetensors")  # a 5-class head
    (base / "cut.safetensors").write_bytes((base / "ft5.safetensors").read_bytes()[:30])
    sd = dict(ft.state_dict())
    sd["head.bias"] = sd["head.bias"].clone().fill_(float("nan"))
    adawise.save_state_dict(sd, base / "nan.safetensors")
    torch.save({"state_dict": ft.state_dict(), "x": Evil(str(base / "pwned"))}, base / "evil.pt")
    adawise.save_state_dict(tiny_clip_model().state_dict(), base / "clip.safetensors")
    (base / "unknown.json").write_text(json.dumps({"batch_sise": 8}))
    (base / "badtype.json").write_text(json.dumps({"batch_size": "many"}))
    (base / "bad.toml").write_text("batch_size = = 3\n")
    (base / "recipe-types.json").write_text(json.dumps({"name": "mine", "embed_dim": "wide"}))
    # logs for report
    good = [{"type": "header", "method": "m", "setting": "continual"},
            {"type": "batch", "method": "m", "domain": "d", "batch": 0, "n": 4, "correct": 2},
            {"type": "batch", "method": "m", "domain": "d", "batch": 1, "n": 4, "correct": 3}]

    def log(name, records, raw=None):
        path = base / name
        path.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in records))
        return path

    f["good_log"] = log("good.jsonl", good)
    log("malformed.jsonl", None, json.dumps(good[0]) + "\n{oops\n" + json.dumps(good[1]) + "\n")
    log("list.jsonl", None, json.dumps(good[0]) + "\n[1, 2]\n")
    log("header-only.jsonl", good[:1])
    log("fields.jsonl", [good[0], {"type": "batch", "domain": "d", "batch": 0}])
    log("dup.jsonl", [*good, good[2]])
    log("sum.jsonl", [*good, {"type": "summary", "batches": 2, "n": 8, "correct": 9}])
    log("wrongcount.jsonl", [good[0], {**good[1], "correct": 7}])
    nan_record = '{"type": "batch", "domain": "d", "batch": 0, "n": 4, "correct": NaN}'
    log("nan.jsonl", None, json.dumps(good[0]) + "\n" + nan_record + "\n")
    (base / "binary.jsonl").write_bytes(b"\x00\xff\xfe" * 20 + b"\n" + b"\x89PNG" * 5 + b"\n")
    # sweep configs
    sweep = {"models": {"m": {"kind": "random-clip", "config": TINY_CLIP_CFG, "num_classes": 3}},
             "streams": {"s": {"source": "corruptions", "base": "synthetic", "domains": ["clean"], "batch_size": 4}},
             "methods": ["zeroshot"], "out": str(base / "sweep-out")}

    def sweep_file(name, **change):
        path = base / name
        path.write_text(json.dumps({**sweep, **change}))
        return path

    sweep_file("sw-cpus.json", resources={"num_cpus": "many"})
    sweep_file("sw-key.json", workers=3)
    sweep_file("sw-method.json", methods=["nope"])
    sweep_file("sw-alpha.json", methods=[{"name": "wiseft", "options": {"alpha": 1.5}}])
    sweep_file("sw-option.json", methods=[{"name": "adawise", "options": {"iterations": 5}}])
    sweep_file("sw-settings.json", settings=["sometimes"])
    sweep_file("sw-seeds.json", seeds=["x"])
    sweep_file("sw-outfile.json", out=str(base / "a-file"))
    sweep_file("sw-batch.json", streams={"s": {"source": "corruptions", "base": "synthetic", "batch_size": "many"}})
    sweep_file("sw-kind.json", models={"m": {"kind": "huggingface"}})
    sweep_file("sw-ok.json")
    (base / "sw.toml").write_text("models = {\n")
    return f


def _run(f, *extra, methods="zeroshot"):
    return ["run", "--data", str(f["data"]), "--arch", str(f["arch"]), "--pretrained", "none", "--finetuned", "none",
            "--templates", "simple", "--batch-size", "32", "--device", "cpu", "--workers", "0", "--no-progress",
            "--out", str(f["base"] / "out"), "--head-cache-dir", str(f["base"] / "heads"), "--methods", methods,
            *extra]


def _override(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def _b(f, name):
    return str(f["base"] / name)


RUN = [  # (case id, argv builder, needles that must appear in the one line)
    ("batch-size-0", lambda f: _run(f, "--batch-size", "0"), ["--batch-size", "0"]),
    ("batch-size-word", lambda f: _run(f, "--batch-size", "abc"), ["--batch-size", "abc"]),
    ("severity-9", lambda f: _run(f, "--stream", "imagenet-c", "--severity", "9"), ["--severity", "9"]),
    ("limit-0", lambda f: _run(f, "--limit-per-domain", "0"), ["--limit-per-domain"]),
    ("workers-negative", lambda f: _run(f, "--workers", "-1"), ["--workers", "-1"]),
    ("alpha-1.5", lambda f: _run(f, "--alpha", "1.5"), ["--alpha", "1.5"]),
    ("ose-w-2", lambda f: _run(f, "--ose-w", "2"), ["--ose-w", "2"]),
    ("seed-negative", lambda f: _run(f, "--seed", "-3"), ["--seed", "-3"]),
    ("option-unknown-key", lambda f: _run(f, "--method-option", "adawise.iterations=5", methods="adawise"),
     ["adawise.iterations=5", "iterations", "known"]),
    ("option-unknown-method", lambda f: _run(f, "--method-option", "nope.x=1"), ["nope.x=1", "registered"]),
    ("option-bad-value", lambda f: _run(f, "--method-option", "wiseft.alpha=3", methods="wiseft"),
     ["wiseft.alpha=3", "[0, 1]"]),
    ("option-preset", lambda f: _run(f, "--method-option", "adawise.preset=slow", methods="adawise"),
     ["adawise.preset=slow", "choose"]),
    ("option-syntax", lambda f: _run(f, "--method-option", "alpha"), ["--method-option", "NAME.KEY=VALUE"]),
    ("methods-unknown", lambda f: _run(f, methods="zeroshot,bogus"), ["--methods", "bogus"]),
    ("device-bogus", lambda f: _override(_run(f), "--device", "bogus"), ["--device", "bogus"]),
    ("device-cuda-7", lambda f: _override(_run(f), "--device", "cuda:7"), ["--device", "cuda:7"]),
    ("arch-unknown", lambda f: _override(_run(f), "--arch", "ViT-Q-99"), ["--arch", "ViT-Q-99"]),
    ("arch-missing-json", lambda f: _override(_run(f), "--arch", _b(f, "nope.json")), ["--arch", "nope.json"]),
    ("arch-invalid-json", lambda f: _override(_run(f), "--arch", _b(f, "bad.json")), ["--arch", "bad.json"]),
    ("arch-bad-types", lambda f: _override(_run(f), "--arch", _b(f, "types.json")), ["--arch", "embed_dim"]),
    ("templates-missing", lambda f: _override(_run(f), "--templates", _b(f, "nope.txt")), ["--templates", "nope.txt"]),
    ("templates-no-braces", lambda f: _override(_run(f), "--templates", _b(f, "nobraces.txt")),
     ["nobraces.txt", "{}"]),
    ("pretrained-missing", lambda f: _override(_run(f), "--pretrained", _b(f, "clip.bin")),
     ["--pretrained", "clip.bin"]),
    ("pretrained-json", lambda f: _override(_run(f), "--pretrained", _b(f, "weights.pt")), ["weights.pt", "text file"]),
    ("pretrained-other-width", lambda f: _override(_override(_run(f), "--pretrained", _b(f, "clip.safetensors")),
                                                   "--arch", "ViT-B-32"), ["clip.safetensors", "ViT-B-32"]),
    ("finetuned-json", lambda f: _override(_run(f), "--finetuned", _b(f, "weights.pt")), ["weights.pt", "text file"]),
    ("finetuned-random", lambda f: _override(_run(f), "--finetuned", _b(f, "random.bin")), ["random.bin"]),
    ("finetuned-cut", lambda f: _override(_run(f), "--finetuned", _b(f, "cut.safetensors")),
     ["cut.safetensors", "damaged safetensors"]),
    ("finetuned-pickle", lambda f: _override(_run(f), "--finetuned", _b(f, "evil.pt")), ["evil.pt", "--trust-pickle"]),
    ("finetuned-nan", lambda f: _override(_run(f), "--finetuned", _b(f, "nan.safetensors")),
     ["nan.safetensors", "head.bias", "NaN"]),
    ("finetuned-other-head", lambda f: _override(_run(f), "--finetuned", _b(f, "ft5.safetensors")),
     ["ft5.safetensors", "5 classes"]),
    ("finetuned-folder", lambda f: _override(_run(f), "--finetuned", str(f["base"])), ["--finetuned", "folder"]),
    ("data-missing", lambda f: _override(_run(f), "--data", _b(f, "nowhere")), ["--data", "nowhere"]),
    ("data-a-file", lambda f: _override(_run(f), "--data", _b(f, "a-file")), ["--data", "a-file"]),
    ("data-not-imagenet-r", lambda f: _override(_run(f), "--data", str(f["base"])), ["not ImageNet-R classes"]),
    ("out-a-file", lambda f: _override(_run(f), "--out", _b(f, "a-file")), ["--out", "a-file"]),
    ("order-unknown", lambda f: _run(f, "--order", "backwards"), ["--order", "backwards"]),
    ("renditions-unknown", lambda f: _run(f, "--renditions", "art,oil"), ["--renditions", "oil"]),
    ("corruptions-unknown", lambda f: _run(f, "--stream", "imagenet-c", "--corruptions", "fog,glitter"),
     ["glitter", "choose"]),
    ("config-missing", lambda f: _run(f, "--config", _b(f, "none.json")), ["--config", "none.json"]),
    ("config-invalid", lambda f: _run(f, "--config", _b(f, "bad.json")), ["--config", "bad.json", "JSON"]),
    ("config-bad-type", lambda f: _run(f, "--config", _b(f, "badtype.json")), ["badtype.json", "batch_size", "many"]),
    ("config-unknown-key", lambda f: _run(f, "--config", _b(f, "unknown.json")), ["batch_sise", "known"]),
    ("config-invalid-toml", lambda f: _run(f, "--config", _b(f, "bad.toml")), ["bad.toml", "TOML"]),
    ("vrf-index-missing", lambda f: _run(f, "--vrf-index", _b(f, "zsf.safetensors"), methods="vrf"),
     ["--vrf-index", "zsf.safetensors"]),
    ("setting-unknown", lambda f: _run(f, "--setting", "episodic"), ["--setting", "episodic"]),
    ("head-cache-a-file", lambda f: _override(_run(f), "--head-cache-dir", _b(f, "a-file")),
     ["--head-cache-dir", "a-file"]),
    ("reset-order-continual-setting", lambda f: _run(f, "--stream", "imagenet-c", "--order", "reset_each_shift",
                                                     "--setting", "continual", "--data", str(f["base"] / "val")),
     ["reset_each_shift", "--setting"]),
    ("missing-inputs", lambda f: ["run", "--out", str(f["base"] / "out")], ["--data", "--pretrained", "--finetuned"]),
    ("stream-unknown", lambda f: _run(f, "--stream", "imagenet-a"), ["--stream", "imagenet-a"]),
    ("workers-absurd", lambda f: _run(f, "--workers", "100000"), ["--workers", "100000"]),
    ("batch-too-large-for-memory", lambda f: _run(f, "--batch-size", "100000000"), ["--batch-size", "GiB"]),
    ("device-negative-index", lambda f: _override(_run(f), "--device", "cuda:-1"), ["--device", "cuda:-1"]),
    ("finetuned-a-device", lambda f: _override(_run(f), "--finetuned", "/dev/zero"), ["/dev/zero", "regular file"]),
    ("alpha-nan", lambda f: _run(f, "--alpha", "nan"), ["--alpha", "nan"]),
]

EXAMPLE_CASES = [
    ("example-batch-size-0", lambda f: _run(f, "--batch-size", "0")[1:], ["--batch-size"]),
    ("example-alpha-2", lambda f: _run(f, "--alpha", "2")[1:], ["--alpha", "2"]),
    ("example-data-missing", lambda f: _override(_run(f), "--data", _b(f, "nowhere"))[1:], ["--data", "nowhere"]),
    ("example-finetuned-json", lambda f: _override(_run(f), "--finetuned", _b(f, "weights.pt"))[1:], ["weights.pt"]),
    ("example-no-stream-option", lambda f: _run(f, "--stream", "imagenet-c")[1:], ["--stream"]),
    ("example-config-imagenet-c", lambda f: _run(f, "--config", _b(f, "c.json"))[1:], ["c.json", "stream"]),
    ("example-workers", lambda f: _run(f, "--workers", "-2")[1:], ["--workers", "-2"]),
]


def _demo(f, *extra):
    return ["demo", "--recipe", "tiny", "--out", str(f["base"] / "demo"), "--domains", "clean", "--per-domain", "8",
            "--no-progress", *extra]


DEMO = [
    ("per-domain-0", lambda f: _demo(f, "--per-domain", "0"), ["--per-domain", "0"]),
    ("batch-size-0", lambda f: _demo(f, "--batch-size", "0"), ["--batch-size", "0"]),
    ("alphas-word", lambda f: _demo(f, "--alphas", "abc"), ["--alphas", "abc"]),
    ("alphas-no-endpoints", lambda f: _demo(f, "--alphas", "0.5"), ["--alphas", "0 and 1"]),
    ("alphas-out-of-range", lambda f: _demo(f, "--alphas", "0,1,1.5"), ["--alphas", "[0, 1]"]),
    ("methods-unknown", lambda f: _demo(f, "--methods", "zeroshot,magic"), ["--methods", "magic"]),
    ("preset-unknown", lambda f: _demo(f, "--preset", "turbo"), ["--preset", "turbo"]),
    ("recipe-missing", lambda f: _override(_demo(f), "--recipe", _b(f, "nope-recipe.json")),
     ["--recipe", "nope-recipe"]),
    ("recipe-invalid-json", lambda f: _override(_demo(f), "--recipe", _b(f, "bad.json")), ["--recipe", "bad.json"]),
    ("recipe-unknown-field", lambda f: _override(_demo(f), "--recipe", _b(f, "unknown.json")),
     ["--recipe", "batch_sise"]),
    ("recipes-unknown", lambda f: _demo(f, "--recipes", "e2e,lora"), ["--recipes", "lora", "valid"]),
    ("domains-unknown", lambda f: _demo(f, "--domains", "clean,glitter"), ["--domains", "glitter"]),
    ("domains-severity", lambda f: _demo(f, "--domains", "clean,gaussian_noise:9"), ["gaussian_noise:9", "1 to 5"]),
    ("data-missing", lambda f: _demo(f, "--data", _b(f, "no-fashion")), ["--data", "no-fashion"]),
    ("threads-negative", lambda f: _demo(f, "--threads", "-1"), ["--threads", "-1"]),
    ("out-a-file", lambda f: _override(_demo(f), "--out", _b(f, "a-file")), ["--out", "a-file"]),
    ("order-unknown", lambda f: _demo(f, "--order", "random"), ["--order", "random"]),
    ("seed-word", lambda f: _demo(f, "--seed", "x"), ["--seed"]),
    ("alphas-nan", lambda f: _demo(f, "--alphas", "0,1,nan"), ["--alphas"]),
    ("recipe-field-type", lambda f: _override(_demo(f), "--recipe", _b(f, "recipe-types.json")),
     ["--recipe", "embed_dim", "int"]),
]

REPORT = [
    ("missing", lambda f: ["report", _b(f, "none.jsonl")], ["none.jsonl", "not found"]),
    ("folder", lambda f: ["report", str(f["base"])], ["folder"]),
    ("malformed-line", lambda f: ["report", _b(f, "malformed.jsonl")], ["malformed.jsonl:2", "malformed JSON"]),
    ("json-list", lambda f: ["report", _b(f, "list.jsonl")], ["list.jsonl:2", "not a record"]),
    ("header-only", lambda f: ["report", _b(f, "header-only.jsonl")], ["header-only.jsonl", "no batch records"]),
    ("missing-fields", lambda f: ["report", _b(f, "fields.jsonl")], ["fields.jsonl:2", "n and correct"]),
    ("duplicated-batch", lambda f: ["report", _b(f, "dup.jsonl")], ["dup.jsonl:4", "batch 1 appears twice"]),
    ("summary-mismatch", lambda f: ["report", _b(f, "sum.jsonl")], ["sum.jsonl:4", "summary"]),
    ("correct-above-n", lambda f: ["report", _b(f, "wrongcount.jsonl")], ["wrongcount.jsonl:2", "correct"]),
    ("binary", lambda f: ["report", _b(f, "binary.jsonl")], ["binary.jsonl:1"]),
    ("nan-count", lambda f: ["report", _b(f, "nan.jsonl")], ["nan.jsonl:2", "correct"]),
    ("out-a-file", lambda f: ["report", str(f["good_log"]), "--out", _b(f, "a-file")], ["--out", "a-file"]),
    ("id-domain-unknown", lambda f: ["report", str(f["good_log"]), "--id-domain", "clean"], ["--id-domain", "clean"]),
]


def _vrf(f, *extra):
    return ["vrf-index", "--arch", str(f["arch"]), "--pretrained", _b(f, "clip.safetensors"), "--finetuned",
            _b(f, "ft5.safetensors"), "--source-data", str(f["data"]), "--out", _b(f, "zsf.safetensors"),
            "--workers", "0", "--no-progress", "--templates", "simple", *extra]


VRF = [
    ("nothing", lambda f: ["vrf-index", "--out", _b(f, "zsf.safetensors")], ["--embedded", "--source-data"]),
    ("embedded-and-files", lambda f: _vrf(f, "--embedded"), ["--embedded", "cannot be combined"]),
    ("pretrained-missing", lambda f: _override(_vrf(f), "--pretrained", _b(f, "clip.bin")),
     ["--pretrained", "clip.bin"]),
    ("finetuned-json", lambda f: _override(_vrf(f), "--finetuned", _b(f, "weights.pt")), ["weights.pt", "text file"]),
    ("finetuned-cut", lambda f: _override(_vrf(f), "--finetuned", _b(f, "cut.safetensors")),
     ["cut.safetensors", "damaged safetensors"]),
    ("finetuned-pickle", lambda f: _override(_vrf(f), "--finetuned", _b(f, "evil.pt")), ["evil.pt", "--trust-pickle"]),
    ("source-missing", lambda f: _override(_vrf(f), "--source-data", _b(f, "no-train")), ["--source-data", "no-train"]),
    ("k-0", lambda f: _vrf(f, "--k", "0"), ["--k", "0"]),
    ("b-0", lambda f: _vrf(f, "--b", "0"), ["--b"]),
    ("holdout-fraction", lambda f: _vrf(f, "--holdout-fraction", "1.5"), ["--holdout-fraction", "1.5"]),
    ("out-folder", lambda f: _override(_vrf(f), "--out", str(f["base"])), ["--out", "folder"]),
    ("out-not-safetensors", lambda f: _override(_vrf(f), "--out", _b(f, "zsf.txt")), ["--out", ".safetensors"]),
    ("device-bogus", lambda f: _vrf(f, "--device", "tpu"), ["--device", "tpu"]),
    ("class-names-missing", lambda f: _vrf(f, "--class-names", _b(f, "names.txt")), ["--class-names", "names.txt"]),
    ("arch-invalid-json", lambda f: _override(_vrf(f), "--arch", _b(f, "bad.json")), ["--arch", "bad.json"]),
]

CORRUPTIONS = [
    ("size-small", lambda f: ["show-corruptions", "--size", "4", "--out", _b(f, "c.png")], ["--size", "4"]),
    ("size-word", lambda f: ["show-corruptions", "--size", "big"], ["--size", "big"]),
    ("image-missing", lambda f: ["show-corruptions", "--image", _b(f, "nope.png"), "--out", _b(f, "c.png")],
     ["nope.png"]),
    ("image-not-an-image", lambda f: ["show-corruptions", "--image", _b(f, "random.bin"), "--out", _b(f, "c.png")],
     ["random.bin"]),
    ("corruptions-unknown", lambda f: ["show-corruptions", "--corruptions", "fog,glitter", "--size", "16", "--out",
                                       _b(f, "c.png")], ["glitter"]),
    ("out-a-folder", lambda f: ["show-corruptions", "--size", "16", "--corruptions", "fog", "--out", str(f["base"])],
     ["--out", "folder"]),
]

SWEEP = [
    ("config-missing", lambda f: ["sweep", _b(f, "nope-sweep.json")], ["nope-sweep.json", "not found"]),
    ("config-invalid-json", lambda f: ["sweep", _b(f, "bad.json")], ["bad.json", "JSON"]),
    ("config-invalid-toml", lambda f: ["sweep", _b(f, "sw.toml")], ["sw.toml", "TOML"]),
    ("num-cpus-word", lambda f: ["sweep", _b(f, "sw-cpus.json")], ["resources.num_cpus", "many"]),
    ("unknown-key", lambda f: ["sweep", _b(f, "sw-key.json")], ["workers", "known"]),
    ("unknown-method", lambda f: ["sweep", _b(f, "sw-method.json")], ["nope", "registered"]),
    ("wiseft-alpha", lambda f: ["sweep", _b(f, "sw-alpha.json")], ["wiseft", "alpha", "[0, 1]"]),
    ("adawise-option", lambda f: ["sweep", _b(f, "sw-option.json")], ["iterations", "known"]),
    ("settings", lambda f: ["sweep", _b(f, "sw-settings.json")], ["settings", "sometimes"]),
    ("seeds", lambda f: ["sweep", _b(f, "sw-seeds.json")], ["seeds"]),
    ("out-a-file", lambda f: ["sweep", _b(f, "sw-outfile.json")], ["a-file", "file"]),
    ("cli-out-a-file", lambda f: ["sweep", _b(f, "sw-ok.json"), "--out", _b(f, "a-file"), "--local"], ["a-file"]),
    ("num-cpus-0", lambda f: ["sweep", _b(f, "sw-ok.json"), "--num-cpus", "0"], ["--num-cpus", "0"]),
    ("stream-batch-size", lambda f: ["sweep", _b(f, "sw-batch.json")], ["batch_size", "many"]),
    ("model-kind", lambda f: ["sweep", _b(f, "sw-kind.json")], ["huggingface", "kind"]),
]

CASES = ([("run", *c) for c in RUN] + [("example", *c) for c in EXAMPLE_CASES] + [("demo", *c) for c in DEMO]
         + [("report", *c) for c in REPORT] + [("vrf-index", *c) for c in VRF]
         + [("show-corruptions", *c) for c in CORRUPTIONS] + [("sweep", *c) for c in SWEEP])


def _example_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stream_imagenet_r_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def call(argv, example: bool = False) -> int:
    main = _example_main() if example else cli_main
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


@pytest.mark.parametrize("command,case,build,needles", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_misuse_exits_2_with_one_clear_line(files, tmp_path, monkeypatch, capsys, command, case, build, needles):
    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    (files["base"] / "c.json").write_text(json.dumps({"stream": "imagenet-c"}))
    argv = build(files)
    code = call(argv, example=command == "example")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    assert code == 2, f"exit {code}; stderr: {err[-1500:]}"
    assert "Traceback" not in err and "\x1b[" not in err
    assert len(lines) == 1, err
    line = lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert any(word in line.lower() for word in ACTIONABLE), f"no hint of what to pass in {line!r}"
    if command == "demo":
        assert not (tmp_path / "cache").exists()  # refused before the world was built
    assert not (files["base"] / "pwned").exists()


def test_the_matrix_covers_every_command_with_60_cases() -> None:
    assert len(CASES) >= 60
    assert {c[0] for c in CASES} == {"run", "example", "demo", "report", "vrf-index", "show-corruptions", "sweep"}


def test_option_errors_are_found_before_models_are_loaded(files, monkeypatch, capsys) -> None:
    import adawise.apps.experiment as experiment
    import streams.schedules as schedules

    def never(*args, **kwargs):
        raise AssertionError("loaded before the options were checked")

    monkeypatch.setattr(experiment, "load_models", never)
    monkeypatch.setattr(schedules, "build_stream", never)
    for extra in (["--method-option", "adawise.iterations=5"], ["--ose-w", "2"], ["--alpha", "1.5"],
                  ["--templates", str(files["base"] / "nobraces.txt")], ["--device", "bogus"]):
        assert call(_run(files, *extra, methods="adawise,ose,wiseft")) == 2, extra
    assert "Traceback" not in capsys.readouterr().err


def test_help_examples_name_options_that_exist(capsys) -> None:
    """Every --flag in a command's --help (epilog examples included) exists, and NAME.KEY=VALUE examples work."""
    import argparse
    import importlib
    import re

    import adawise.cli as cli
    from adawise.apps.experiment import check_method_options

    for name, (module_name, _) in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        parser = cli.ArgumentParser(prog=f"adawise {name}", epilog=getattr(module, "EPILOG", None),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("-v", "--verbose", action="store_true")
        module.add_arguments(parser)
        known = {flag for action in parser._actions for flag in action.option_strings}
        text = re.sub(r"`[^`]*`", "", parser.format_help())  # `ray start --head` etc. name other tools' flags
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
        assert named <= known, (name, sorted(named - known))
        for method, key, value in re.findall(r"\b([a-z][a-z-]*)\.([a-z_]+)=([\w.]+)", text):
            check_method_options([method], {method: {key: json.loads(value) if value[0].isdigit() else value}})
    assert "adawise.probe_every=2" in cli_help("run", capsys) and "examples:" in cli_help("run", capsys)


def cli_help(name, capsys) -> str:
    with pytest.raises(SystemExit):
        cli_main([name, "--help"])
    return capsys.readouterr().out


def test_a_refused_resume_leaves_config_json_alone(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = _override(_run(files), "--out", str(out))
    assert call(argv) == 0
    before = (out / "config.json").read_text()
    assert call([*argv, "--resume", "--seed", "7"]) == 2  # another configuration: refused
    assert "another configuration" in capsys.readouterr().err
    assert (out / "config.json").read_text() == before


UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]  # root subject to file permissions

READ_ONLY = """
import json, sys
from adawise.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps(codes))
"""


def test_read_only_and_unreadable_paths(files, tmp_path) -> None:
    """Made real by dropping root's capabilities (chmod alone does not stop root)."""
    ro, secret = tmp_path / "read-only", tmp_path / "secret.safetensors"
    ro.mkdir()
    secret.write_bytes((files["base"] / "ft5.safetensors").read_bytes())
    ro.chmod(0o555)
    secret.chmod(0)
    cases = [
        _override(_run(files), "--out", str(ro / "out")),
        _override(_run(files), "--finetuned", str(secret)),
        _override(_demo(files), "--out", str(ro / "demo")),
        ["report", str(files["good_log"]), "--out", str(ro)],
        _override(_vrf(files), "--out", str(ro / "zsf.safetensors")),
        ["sweep", str(files["base"] / "sw-ok.json"), "--out", str(ro / "sweep"), "--local"],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ADAWISE_CACHE": str(tmp_path / "cache")}
    try:
        proc = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", READ_ONLY, json.dumps(cases)], capture_output=True,
                              text=True, timeout=300, env=env, cwd=ROOT)
    finally:
        ro.chmod(0o755)
        secret.chmod(0o644)
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [2] * len(cases), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == len(cases)
    assert all("not writable" in e or "permission denied" in e for e in errors), errors


@pytest.mark.parametrize("command", ["run", "example", "demo", "sweep"])
def test_a_second_run_into_a_locked_output_is_refused(files, tmp_path, monkeypatch, capsys, command) -> None:
    """Another process holds the output folder (as a run does while it writes): refused at once, exit 2."""
    from adawise.evaluation.logs import exclusive

    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "busy"
    out.mkdir()
    argv = {"run": _override(_run(files), "--out", str(out)), "example": _override(_run(files), "--out", str(out))[1:],
            "demo": _override(_demo(files), "--out", str(out)),
            "sweep": ["sweep", str(files["base"] / "sw-ok.json"), "--out", str(out), "--local"]}[command]
    with exclusive(out):
        assert call(argv, example=command == "example") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out} is in use by another run" in err and "wait for it to finish" in err
    assert sorted(p.name for p in out.iterdir()) == [".adawise.lock"]  # nothing was written
