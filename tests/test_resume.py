"""Runs survive faults, and runs repeat.

- A run killed with SIGKILL mid-stream leaves a log that parses; ``resume=True`` continues from the last
  complete batch and ends with the same batch records (timings aside) as an uninterrupted run, for AdaWiSE
  (stateful: its BO state is rebuilt by replay) and a static method.
- ``adawise run --resume`` (shared with examples/stream_imagenet_r.py) skips complete logs and continues
  an interrupted one, in a fresh process where the stream has not been iterated yet.
- Determinism: the same spec and seed give identical JSONL records (timings aside) on CPU.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLASSES, TINY_CLIP_CFG, TINY_TEMPLATES
from imagenet_r_fixture import make_imagenet_r_folder

import adawise
from adawise.cli import main as cli_main
from adawise.evaluation.logs import read_jsonl, read_run
from streams.base import ConcatStream, TensorStream
from streams.schedules import corruption_spec, corruption_stream

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OPTIONS = {"wiseft": {"alpha": 0.3}, "adawise": {}}


def untimed(record: dict) -> dict:
    """A record without its wall-clock fields (``seconds``, ``seconds_*``, ``started``)."""
    return {k: v for k, v in record.items() if not k.startswith("seconds") and k != "started"}


def batches_of(path) -> list[dict]:
    return [untimed(r) for r in read_jsonl(path) if r["type"] == "batch"]


def pair():
    """Two tiny random CLIP classifiers (seeds 0 and 1: unlike a perturbed copy, α moves between them)."""
    return tuple(adawise.load_pair(copy.deepcopy(TINY_CLIP_CFG), list(TINY_CLASSES), templates=list(TINY_TEMPLATES),
                                   seed=seed)[0] for seed in (0, 1))


def build(name: str):
    """The method ``name`` on :func:`pair`, and a 3-domain stream of 16 batches (identical in every process:
    seeded weights and images)."""
    zs, ft = pair()
    g = torch.Generator().manual_seed(11)
    parts = []
    for domain, scale, n in (("clean", 1.0, 40), ("dark", 0.3, 40), ("noisy", 1.0, 48)):
        images = (scale * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)
        if domain == "noisy":
            images = (images + 0.5 * torch.randn(images.shape, generator=g)).clamp(0, 1)
        parts.append(TensorStream(images, torch.randint(0, len(TINY_CLASSES), (n,), generator=g), domain, 8))
    return adawise.make_method(name, zeroshot=zs, finetuned=ft, **OPTIONS[name]), ConcatStream(parts)


def run(name: str, log, resume: bool = False):
    method, stream = build(name)
    return adawise.run_stream(method, stream, log=log, seed=3, config={"test": "resume"}, progress=False,
                              resume=resume)


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import adawise.evaluation.loop
import test_resume

class SlowWriter(adawise.evaluation.loop.JsonlWriter):  # the run is slowed down, not changed: a sleep after each line
    def write(self, record):
        super().write(record)
        time.sleep(0.15)

adawise.evaluation.loop.JsonlWriter = SlowWriter
test_resume.run({name!r}, {log!r})
"""


@pytest.mark.parametrize("name", ["adawise", "wiseft"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, name) -> None:
    log = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(TESTS), name=name, log=str(log))],
                             cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if log.exists() and log.read_bytes().count(b'"type": "batch"') >= 4:
                break
            time.sleep(0.02)
        assert child.poll() is None, f"the child ended before it was killed: {child.stderr.read().decode()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    killed = read_jsonl(log)  # parses as it is (a half-written last line is tolerated)
    done = [r for r in killed if r["type"] == "batch"]
    assert killed[0]["type"] == "header" and "summary" not in {r["type"] for r in killed}
    assert 4 <= len(done) < 16 and [r["batch"] for r in done] == list(range(len(done)))

    resumed = run(name, log, resume=True)
    full = run(name, tmp_path / "full.jsonl")
    assert [untimed(r) for r in resumed.records] == [untimed(r) for r in full.records]
    assert resumed.accuracy == full.accuracy and resumed.per_domain == full.per_domain
    assert resumed.alphas == full.alphas
    assert batches_of(log) == batches_of(tmp_path / "full.jsonl")  # the killed log now reads as a full one
    assert [r["type"] for r in read_jsonl(log)] == ["header"] + ["batch"] * 16 + ["summary"]
    if name == "adawise":
        assert len(set(full.alphas)) > 1  # the state really carries over (replay had something to rebuild)


@pytest.mark.parametrize("keep", ["", "half a header"])
def test_resume_of_a_log_killed_before_its_header_was_written_starts_afresh(tmp_path, keep) -> None:
    full = run("wiseft", tmp_path / "full.jsonl")
    log = tmp_path / "early.jsonl"
    header = (tmp_path / "full.jsonl").read_text().splitlines()[0]
    log.write_text(header[: len(header) // 2] if keep else "")
    resumed = run("wiseft", log, resume=True)
    assert [untimed(r) for r in resumed.records] == [untimed(r) for r in full.records]
    assert [r["type"] for r in read_jsonl(log)] == ["header"] + ["batch"] * 16 + ["summary"]


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume-cli")
    root = make_imagenet_r_folder(base / "imagenet-r", renditions=["art", "cartoon"], per_class=1)
    arch = base / "tiny.json"
    arch.write_text(json.dumps(TINY_CLIP_CFG))
    return {"base": base, "data": root, "arch": arch}


def _cli(world, out, *extra) -> int:
    return cli_main(["run", "--data", str(world["data"]), "--arch", str(world["arch"]), "--pretrained", "none",
                     "--finetuned", "none", "--templates", "simple", "--methods", "wiseft,adawise",
                     "--batch-size", "32", "--device", "cpu", "--out", str(out), "--workers", "0",
                     "--head-cache-dir", str(world["base"] / "heads"), "--no-progress", *extra])


def test_cli_resume_skips_complete_logs_and_continues_an_interrupted_one(world, capsys) -> None:
    full, cut = world["base"] / "full", world["base"] / "cut"
    assert _cli(world, full) == 0
    shutil.copytree(full, cut)
    # as if killed during adawise: wiseft complete, adawise with a header, 2 batches and half a line
    lines = (cut / "adawise.jsonl").read_text().splitlines(keepends=True)
    (cut / "adawise.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    wiseft_before = (cut / "wiseft.jsonl").read_bytes()

    assert _cli(world, cut, "--resume") == 0
    assert (cut / "wiseft.jsonl").read_bytes() == wiseft_before  # complete: not run again
    resumed = read_run(cut / "adawise.jsonl")
    assert resumed["complete"] and resumed["summary"]["skipped"]  # the stream skipped the corrupt file
    assert batches_of(cut / "adawise.jsonl") == batches_of(full / "adawise.jsonl")
    assert resumed["summary"]["accuracy"] == read_run(full / "adawise.jsonl")["summary"]["accuracy"]

    # without --resume the logs are rewritten from scratch, with the same records
    assert _cli(world, cut) == 0
    assert batches_of(cut / "adawise.jsonl") == batches_of(full / "adawise.jsonl")
    # --resume with other options refuses to mix two configurations in one log
    lines = (cut / "adawise.jsonl").read_text().splitlines(keepends=True)
    (cut / "adawise.jsonl").write_text("".join(lines[:3]))
    capsys.readouterr()
    assert _cli(world, cut, "--resume", "--seed", "1") == 2
    assert "another configuration" in capsys.readouterr().err


# ----------------------------------------------------------------------------- determinism


def _spec_run(name: str, log) -> None:
    zs, ft = pair()
    g = torch.Generator().manual_seed(5)
    base, labels = torch.rand(20, 3, 32, 32, generator=g), torch.randint(0, len(TINY_CLASSES), (20,), generator=g)
    spec = corruption_spec(["clean", "gaussian_noise", "contrast"], severity=3, batch_size=8, seed=4)
    method = adawise.make_method(name, zeroshot=zs, finetuned=ft, **{"wiseft": {"alpha": 0.6}}.get(name, {}))
    adawise.run_stream(method, corruption_stream(base, labels, spec), log=log, seed=9, progress=False)


@pytest.mark.parametrize("name", ["adawise", "zeroshot", "finetuned", "wiseft", "ose"])
def test_same_spec_and_seed_give_identical_records(tmp_path, name) -> None:
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for log in logs:
        torch.manual_seed(len(str(log)))  # whatever the global RNG held before, the run reseeds it
        _spec_run(name, log)
    a, b = ([untimed(r) for r in read_jsonl(log)] for log in logs)
    assert len(a) == 1 + 9 + 1 and a == b  # header (config hash included), batches and summary
    if name == "adawise":  # the BO ran (searches and probes), and its evaluated alphas and objectives match
        assert {"search", "probe"} <= {r["mode"] for r in a if r["type"] == "batch"}


def test_cli_resume_refuses_a_checkpoint_replaced_at_the_same_path(world, capsys) -> None:
    """The header hashes the weights, not the file name: another checkpoint under the same path is refused."""
    from streams.imagenet_r import IMAGENET_CLASSNAMES

    _, ft = adawise.load_pair(copy.deepcopy(TINY_CLIP_CFG), list(IMAGENET_CLASSNAMES), templates="simple")
    path = world["base"] / "ft.safetensors"
    adawise.save_state_dict(ft.state_dict(), path)
    out = world["base"] / "replaced"
    argv = ["--finetuned", str(path), "--methods", "wiseft"]

    def cli(*extra):
        args = ["run", "--data", str(world["data"]), "--arch", str(world["arch"]), "--pretrained", "none",
                "--templates", "simple", "--batch-size", "32", "--device", "cpu", "--out", str(out), "--workers", "0",
                "--head-cache-dir", str(world["base"] / "heads"), "--no-progress", *argv, *extra]
        return cli_main(args)

    assert cli() == 0
    log = out / "wiseft.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:3]))  # killed after two batches
    with torch.no_grad():
        ft.head.bias.add_(0.5)
    adawise.save_state_dict(ft.state_dict(), path)  # other weights, same file name
    capsys.readouterr()
    assert cli("--resume") == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "weights" in err and "finetuned" in err
