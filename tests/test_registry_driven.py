"""The applications are driven by the registry: a method registered here, in the test only, shows up in
``adawise demo``'s (tiny recipe) and ``adawise run``'s tables with no other file changed."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP_CFG
from fashion_data import HAVE_DATA
from imagenet_r_fixture import make_imagenet_r_folder
from torch import Tensor, nn

from adawise.cli import main
from adawise.methods import registry
from adawise.methods.base import Method, evaluating

NAME = "throwaway-mean"


class LogitMean(Method):
    """The mean of the two endpoints' logits: a method no application knows by name."""

    family = "ensemble"

    def __init__(self, zeroshot: nn.Module, finetuned: nn.Module) -> None:
        super().__init__()
        self._keep(zeroshot=zeroshot, finetuned=finetuned)

    def forward(self, images: Tensor) -> Tensor:
        zs, ft = self.endpoints()["zeroshot"], self.endpoints()["finetuned"]
        with torch.no_grad(), evaluating(zs, ft):
            return 0.5 * (zs(images) + ft(images))


@pytest.fixture
def throwaway(monkeypatch):
    """``throwaway-mean`` registered for the test, gone afterwards."""
    registry.registered_methods()  # the built-ins first, so the fixture's removal leaves them alone
    monkeypatch.setitem(registry._REGISTRY, NAME, LogitMean)
    LogitMean.name = NAME
    assert NAME in registry.registered_methods() and registry.method_class(NAME) is LogitMean
    yield NAME
    monkeypatch.delitem(registry._REGISTRY, NAME)


def _table_rows(text: str) -> list[str]:
    return [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("|")]


@pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_a_registered_method_shows_in_the_demo_table(throwaway, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAWISE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--recipe", "tiny", "--out", str(out), "--domains", "clean,invert", "--per-domain", "32",
                     "--batch-size", "16", "--no-progress", "--methods", f"zeroshot,finetuned,{throwaway}"])
    assert code == 0
    assert throwaway in _table_rows((out / "table.md").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"][throwaway]) == {"clean", "invert"}
    # what it computes: the mean of the endpoints' logits, scored by the loop like any other method
    records = [json.loads(line) for line in (out / f"{throwaway}.jsonl").read_text().splitlines()]
    assert records[0]["method"] == throwaway and records[-1]["type"] == "summary"
    assert 0.0 <= summary["accuracy"][throwaway]["clean"] <= 1.0
    assert f"  {throwaway}" in buf.getvalue()


def test_a_registered_method_shows_in_the_run_table(throwaway, tmp_path):
    data = make_imagenet_r_folder(tmp_path / "imagenet-r", renditions=["art", "toy"], per_class=1)
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY_CLIP_CFG))
    out = tmp_path / "run"
    code = main(["run", "--data", str(data), "--arch", str(arch), "--pretrained", "none", "--finetuned", "none",
                 "--templates", "simple", "--methods", f"zeroshot,{throwaway}", "--batch-size", "64", "--device", "cpu",
                 "--out", str(out), "--workers", "0", "--head-cache-dir", str(tmp_path / "heads"), "--no-progress"])
    assert code == 0
    assert _table_rows((out / "table.md").read_text())[2:] == ["zeroshot", throwaway]  # after header and rule
    header = json.loads(Path(out / f"{throwaway}.jsonl").read_text().splitlines()[0])
    assert header["method"] == throwaway and header["uses_labels"] is False
