"""A log never lies: resume repairs what a crash leaves and refuses what a crash cannot leave.

- The header identifies the weights (a content hash per model), the stream and the method's options; every
  batch record names its batch (index, domain, n, a fingerprint of labels and pixels, the config hash).
- Property tests (hypothesis): any truncation of a log is repaired to the uninterrupted result; any
  duplicated, reordered, deleted or foreign record is refused with a ResumeError, or (where it changes
  nothing) repaired to the uninterrupted result.
- A log continued with other weights, a stream whose unreadable files became readable, two writers on one
  log: refused with a clear message; the first writer's log stays intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_loop import Drift, feature_stream

import adawise
from adawise.errors import CheckpointError, ResumeError, RunLockedError
from adawise.evaluation.logs import exclusive, read_jsonl, read_run
from adawise.models.checkpoints import weights_hash

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def untimed(records):
    return [{k: v for k, v in r.items() if not k.startswith("seconds") and k != "started"} for r in records]


def stream():
    return feature_stream(domains=("a", "b", "c"), per_domain=8, batch_size=4)  # 6 batches, 3 domains


def run(log, resume=False, method=None, s=None, seed=3):
    return adawise.run_stream(method or Drift(), s or stream(), log=log, seed=seed, progress=False, resume=resume)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its log's lines and its records; plus a foreign log (another seed)."""
    base = tmp_path_factory.mktemp("reference")
    full = run(base / "full.jsonl")
    run(base / "foreign.jsonl", seed=4)
    lines = (base / "full.jsonl").read_bytes().splitlines(keepends=True)
    foreign = (base / "foreign.jsonl").read_bytes().splitlines(keepends=True)
    return {"lines": lines, "foreign": foreign, "records": untimed(full.records)}


_count = iter(range(10**9))


def resume_mutated(tmp_path, data: bytes, reference) -> str:
    """Resume a log holding ``data``; return "repaired" (and check it equals the uninterrupted run) or
    "refused"."""
    log = tmp_path / f"m{next(_count)}.jsonl"
    log.write_bytes(data)
    try:
        result = run(log, resume=True)
    except ResumeError as err:
        assert str(log) in str(err)
        return "refused"
    assert untimed(result.records) == reference["records"]
    records = read_jsonl(log)
    assert [r["type"] for r in records] == ["header"] + ["batch"] * 6 + ["summary"]
    assert untimed(r for r in records if r["type"] == "batch") == reference["records"]
    return "repaired"


@PROPERTY
@given(cut=st.floats(0, 1))
def test_any_truncation_is_repaired_to_the_uninterrupted_result(tmp_path, reference, cut) -> None:
    data = b"".join(reference["lines"])
    assert resume_mutated(tmp_path, data[: int(cut * len(data))], reference) == "repaired"


@PROPERTY
@given(data=st.data())
def test_any_duplicated_record_is_refused(tmp_path, reference, data) -> None:
    lines = list(reference["lines"])
    i = data.draw(st.integers(0, len(lines) - 1))
    at = data.draw(st.integers(0, len(lines)))
    original = i if i < at else i + 1
    # then maybe cut the tail, as a crash would, keeping both copies
    keep = data.draw(st.integers(max(at, original) + 1, len(lines) + 1))
    lines.insert(at, lines[i])
    assert resume_mutated(tmp_path, b"".join(lines[:keep]), reference) == "refused"


@PROPERTY
@given(data=st.data())
def test_any_reordered_or_deleted_record_is_refused(tmp_path, reference, data) -> None:
    lines = list(reference["lines"])
    i = data.draw(st.integers(0, len(lines) - 2))
    if data.draw(st.booleans()):
        j = data.draw(st.integers(i + 1, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        keep = data.draw(st.integers(j + 1, len(lines)))
    else:  # a record lost from the middle (the last one may go: that is a crash)
        del lines[i]
        keep = len(lines)
    assert resume_mutated(tmp_path, b"".join(lines[:keep]), reference) == "refused"


@PROPERTY
@given(data=st.data())
def test_any_foreign_record_is_refused_or_repaired(tmp_path, reference, data) -> None:
    lines = list(reference["lines"])
    foreign = data.draw(st.sampled_from(reference["foreign"]))
    at = data.draw(st.integers(0, len(lines)))
    how = data.draw(st.sampled_from(["insert", "replace", "torn tail"]))
    if how == "torn tail":  # a crash while appending half of any line: cut off, the rest repaired
        cut = data.draw(st.integers(1, len(foreign) - 2))
        outcome = resume_mutated(tmp_path, b"".join(lines[:at]) + foreign[:cut].rstrip(b"\n"), reference)
        assert outcome == "repaired"
        return
    if how == "insert":
        lines.insert(at, foreign)
    else:
        lines[min(at, len(lines) - 1)] = foreign
    assert resume_mutated(tmp_path, b"".join(lines), reference) == "refused"


def test_a_duplicated_batch_is_named(tmp_path, reference) -> None:
    lines = list(reference["lines"])
    log = tmp_path / "dup.jsonl"
    log.write_bytes(b"".join(lines[:5] + [lines[4]] + lines[5:7]))  # batches 0,1,2,3,3,4,5 (no summary)
    with pytest.raises(ResumeError, match=r"dup.jsonl:6: batch 3 appears twice \(see line 5\)"):
        run(log, resume=True)


# ----------------------------------------------------------------------------- what the header identifies


def image_stream():
    from streams.base import TensorStream

    gen = torch.Generator().manual_seed(0)
    return TensorStream(torch.rand(12, 3, 32, 32, generator=gen), torch.randint(0, 5, (12,), generator=gen), "d", 4)


def test_header_identifies_weights_and_records_name_their_batch(tmp_path, tiny_pair) -> None:
    zs, ft = tiny_pair
    log = tmp_path / "w.jsonl"
    adawise.run_stream(adawise.make_method("wiseft", zs, ft, alpha=0.3), image_stream(), log=log, progress=False)
    run_ = read_run(log)
    assert run_["header"]["weights"] == {"zeroshot": weights_hash(zs), "finetuned": weights_hash(ft)}
    prints = [r["fingerprint"] for r in run_["batches"]]
    assert len(set(prints)) == 3 and all(r["config_hash"] == run_["header"]["config_hash"] for r in run_["batches"])
    assert [r["batch"] for r in run_["batches"]] == [0, 1, 2] and [r["domain"] for r in run_["batches"]] == ["d"] * 3


def test_resume_with_other_weights_is_refused(tmp_path, tiny_pair) -> None:
    zs, ft = tiny_pair
    s = image_stream()
    log = tmp_path / "w.jsonl"
    adawise.run_stream(adawise.make_method("adawise", zs, ft), s, log=log, progress=False)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]))  # killed after batch 0
    with torch.no_grad():
        ft.head.bias.add_(0.01)  # the same architecture, other weights
    with pytest.raises(ResumeError, match=r"another configuration .*weights: \{'zeroshot': '\w+', 'finetuned'"):
        adawise.run_stream(adawise.make_method("adawise", zs, ft), s, log=log, resume=True, progress=False)
    assert log.read_text() == "".join(lines[:2])  # a refused resume leaves the log as it was


def test_nan_weights_given_through_the_api_are_refused(tiny_pair) -> None:
    zs, ft = tiny_pair
    with torch.no_grad():
        ft.head.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="the finetuned model: key 'head.weight' holds 1 NaN/Inf"):
        adawise.run_stream(adawise.make_method("adawise", zs, ft), image_stream(), progress=False)


# ----------------------------------------------------------------------------- two writers


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import adawise.evaluation.logs
import test_resume_integrity as t

class Slow(adawise.evaluation.logs.JsonlWriter):
    def write(self, record):
        super().write(record)
        time.sleep(0.2)

import adawise.evaluation.loop
adawise.evaluation.loop.JsonlWriter = Slow
t.run({log!r})
"""


def test_two_writers_on_one_log_the_second_is_refused_and_the_first_stays_intact(tmp_path, reference) -> None:
    log = tmp_path / "shared.jsonl"
    with exclusive(log):  # in one process: the lock is per open file, so a second holder is refused too
        with pytest.raises(RunLockedError, match="in use by another run"):
            run(log)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(TESTS), log=str(log))], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and b'"batch"' in log.read_bytes()):
            time.sleep(0.02)
        assert child.poll() is None, "the first run ended too early"
        for resume in (False, True):  # neither a fresh run nor a resume may touch it
            with pytest.raises(RunLockedError, match=f"{log.name} is in use by another run"):
                run(log, resume=resume)
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert untimed(read_run(log)["batches"]) == reference["records"] and read_run(log)["complete"]
    assert json.loads(log.read_text().splitlines()[0])["type"] == "header"


def test_a_foreign_summary_is_refused(tmp_path, reference) -> None:
    """The summary closes a run and carries its config hash: another run's summary in its place is refused
    (hypothesis found this: a summary without the hash passed for this run's)."""
    lines = list(reference["lines"])
    lines[-1] = reference["foreign"][-1]
    assert resume_mutated(tmp_path, b"".join(lines), reference) == "refused"
