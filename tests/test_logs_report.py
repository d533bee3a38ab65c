"""Run logs (JSONL reading and repair), tables, and `adawise report` over several logs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import adawise
from adawise.apps import report
from adawise.cli import main as cli_main
from adawise.evaluation.logs import JsonlWriter, format_table, read_jsonl, read_run, to_jsonable
from adawise.methods.base import Method
from streams.base import ConcatStream, TensorStream

C = 3


def stream(seed: int = 0) -> ConcatStream:
    """Two domains, 3 batches each; in 'clean' argmax is the label, in 'shift' half of the labels are off."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for domain in ("clean", "shift"):
        labels = torch.randint(0, C, (12,), generator=gen)
        x = 4 * F.one_hot(labels, C).float() + torch.rand(12, C, generator=gen)
        if domain == "shift":
            labels = torch.where(torch.arange(12) % 2 == 0, (labels + 1) % C, labels)
        parts.append(TensorStream(x, labels, domain, 4))
    return ConcatStream(parts)


class Plain(Method):
    """Identity predictions, no alpha."""

    name = "plain"

    def forward(self, x):
        return x


class Mixer(Method):
    """Has an alpha that walks over the stream."""

    name = "mixer"

    def __init__(self) -> None:
        super().__init__()
        self.t = 0

    def forward(self, x):
        return x.flip(-1) if self.t % 3 == 2 else x

    def observe(self, x, logits):
        self.t += 1

    @property
    def alpha(self):
        return (self.t % 5) / 4


def write_lines(path, records, tail: bytes = b"") -> bytes:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail
    path.write_bytes(data)
    return data


# ----------------------------------------------------------------------------- JSONL


def test_read_jsonl_tolerates_and_repairs_a_truncated_last_line(tmp_path) -> None:
    path = tmp_path / "run.jsonl"
    recs = [{"type": "header"}, {"type": "batch", "batch": 0}, {"type": "batch", "batch": 1}]
    complete = write_lines(path, recs)
    path.write_bytes(complete + b'{"type": "batch", "ba')  # killed mid-write
    assert read_jsonl(path) == recs
    assert path.read_bytes() == complete + b'{"type": "batch", "ba'  # read-only by default
    assert read_jsonl(path, repair=True) == recs
    assert path.read_bytes() == complete  # truncated to the last complete line
    with JsonlWriter(path, fsync=False) as writer:  # and appending continues cleanly
        writer.write({"type": "batch", "batch": 2})
    assert [r.get("batch") for r in read_jsonl(path)] == [None, 0, 1, 2]


def test_read_jsonl_unterminated_complete_last_line(tmp_path) -> None:
    """A last line that parses but lost its newline is kept, and repair keeps the file consistent."""
    path = tmp_path / "run.jsonl"
    recs = [{"type": "header"}, {"type": "batch", "batch": 0}]
    data = write_lines(path, recs)
    path.write_bytes(data[:-1])
    assert read_jsonl(path, repair=True) == recs
    assert read_jsonl(path) == recs  # what was returned is what the file holds
    with JsonlWriter(path, fsync=False) as writer:
        writer.write({"type": "batch", "batch": 1})
    assert [r.get("batch") for r in read_jsonl(path)] == [None, 0, 1]


def test_read_jsonl_malformed_middle_line_names_it(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{oops\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n\n{"b": 2}\n')  # blank lines are fine
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_to_jsonable() -> None:
    out = to_jsonable({"a": float("nan"), "b": [1.5, float("inf")], "c": torch.tensor(2.5), 3: (True, None)})
    assert out == {"a": None, "b": [1.5, None], "c": 2.5, "3": [True, None]}


# ----------------------------------------------------------------------------- tables


def test_format_table_percentages_and_mean_over_shifts() -> None:
    acc = {"zeroshot": {"clean": 0.9, "fog": 0.5, "snow": 0.25}, "oracle": {"clean": 1.0, "fog": 0.75}}
    text = format_table(acc, ["clean", "fog", "snow"], id_domain="clean", upper_bounds=["oracle"])
    lines = text.splitlines()
    assert lines[0].split() == ["method", "clean", "fog", "snow", "mean", "shifts"]
    assert lines[2].split() == ["zeroshot", "90.0", "50.0", "25.0", "37.5"]  # mean of fog, snow only
    assert lines[3].split() == ["oracle", "*", "100.0", "75.0", "-", "75.0"]  # missing cell; marked bound
    assert "upper bound" in lines[-1]

    plain = format_table({"zeroshot": acc["zeroshot"]})  # no id domain: mean over every domain
    assert plain.splitlines()[2].split() == ["zeroshot", "90.0", "50.0", "25.0", "55.0"]
    assert "upper bound" not in plain
    # no name is a bound by default: the callers pass the methods that read labels (Method.uses_labels)
    assert "*" not in format_table(acc, ["clean", "fog", "snow"], id_domain="clean")

    md = format_table(acc, ["clean", "fog", "snow"], id_domain="clean", fmt="markdown").splitlines()
    assert md[0] == "| method | clean | fog | snow | mean shifts |"
    assert md[1].startswith("|---|")
    assert md[2] == "| zeroshot | 90.0 | 50.0 | 25.0 | 37.5 |"


# ----------------------------------------------------------------------------- report


def two_logs(tmp_path):
    a, b = tmp_path / "logs" / "plain.jsonl", tmp_path / "logs" / "mixer.jsonl"
    ra = adawise.run_stream(Plain(), stream(), log=a, progress=False)
    rb = adawise.run_stream(Mixer(), stream(), log=b, progress=False)
    return a, b, ra, rb


def test_collect_two_logs(tmp_path) -> None:
    a, b, ra, rb = two_logs(tmp_path)
    data = report.collect([a, b])
    assert data["accuracy"] == {"plain": pytest.approx(ra.per_domain), "mixer": pytest.approx(rb.per_domain)}
    assert data["accuracy"]["plain"]["clean"] == 1.0 and data["accuracy"]["plain"]["shift"] == 0.5
    assert data["alphas"]["plain"] == [None] * 6
    assert data["alphas"]["mixer"] == rb.alphas and len(set(rb.alphas)) > 1
    assert data["domains_per_batch"] == ["clean"] * 3 + ["shift"] * 3
    assert data["upper_bounds"] == []


def test_collect_marks_settings_incomplete_runs_and_keeps_same_named_runs(tmp_path) -> None:
    a, _, ra, _ = two_logs(tmp_path)
    reset = tmp_path / "reset.jsonl"
    adawise.run_stream(Plain(), stream(), log=reset, setting="reset_each_shift", progress=False)
    cut = tmp_path / "cut.jsonl"
    adawise.run_stream(Plain(), stream(), log=cut, progress=False)
    lines = cut.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:3]))  # header + 2 batches, no summary
    again = tmp_path / "again.jsonl"
    adawise.run_stream(Plain(), stream(seed=1), log=again, progress=False)

    data = report.collect([a, reset, cut, again])
    names = list(data["accuracy"])
    assert len(names) == 4, names  # a second run of the same method is not silently dropped
    assert names[0] == "plain"
    assert "plain [reset_each_shift]" in names
    assert "plain (incomplete)" in names
    assert "plain (again)" in names  # told apart by the log's file name
    assert data["accuracy"]["plain"] == pytest.approx(ra.per_domain)
    assert data["accuracy"]["plain (incomplete)"] == {"clean": 1.0}
    assert read_run(cut)["complete"] is False


def test_collect_rejects_a_log_without_batches(tmp_path) -> None:
    path = tmp_path / "empty.jsonl"
    write_lines(path, [{"type": "header", "method": "x"}])
    with pytest.raises(ValueError, match="no batch records"):
        report.collect([path])


def test_report_command_writes_markdown_and_plots(tmp_path, capsys) -> None:
    a, b, ra, rb = two_logs(tmp_path)
    out = tmp_path / "report"
    assert cli_main(["report", str(a), str(b), "--out", str(out), "--id-domain", "clean"]) == 0
    md = (out / "report.md").read_text()
    assert "| plain | 100.0 | 50.0 | 50.0 |" in md
    assert "| mixer |" in md and "mean shifts" in md
    for png in ("accuracy.png", "alpha.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    printed = capsys.readouterr().out
    assert "plain" in printed and "mixer" in printed and "report.md" in printed


def test_report_command_missing_log(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.jsonl"
    assert cli_main(["report", str(missing)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_report_table_has_every_domain_of_every_log(tmp_path) -> None:
    a = tmp_path / "a.jsonl"
    adawise.run_stream(Plain(), stream(), log=a, progress=False)  # clean, shift: 6 batches
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, C, (32,), generator=gen)
    other = TensorStream(F.one_hot(labels, C).float(), labels, "sketch", 4)  # 8 batches, another domain
    b = tmp_path / "b.jsonl"
    adawise.run_stream(Mixer(), other, log=b, progress=False)
    out = tmp_path / "rep"
    assert cli_main(["report", str(a), str(b), "--out", str(out)]) == 0
    header = (out / "report.md").read_text().splitlines()[0]
    assert header == "| method | sketch | clean | shift | mean |"

