"""The objective lab's simulation of ``adawise-windowed`` (benchmarks/objective_lab.py) on constructed
cached logits: its divergences, its window options and the criteria summary of saved runs."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
lab = importlib.import_module("objective_lab")

C, N = 5, 320


def _cache(collapse: bool = True) -> lab.LabLogits:
    """Two domains of N images, C classes, an 11-point α grid with logits linear in α: the zero-shot model
    (α = 0) right on 70% of each domain with soft logits; the fine-tuned one (α = 1) right on 95% of the clean
    domain, confident, and (``collapse``) calling every shifted image class 0."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % C
    alphas = [i / 10 for i in range(11)]

    def logits(acc: float, scale: float, always: int | None = None) -> torch.Tensor:
        z = torch.randn(N, C, generator=g) * 0.3
        right = torch.rand(N, generator=g) < acc
        target = torch.where(right, labels, (labels + 1) % C) if always is None else torch.full_like(labels, always)
        z[torch.arange(N), target] += 1.0
        return z * scale

    out = {}
    for name in ("clean", "noise"):
        zs = logits(0.7, 2.0)
        ft = logits(0.95, 6.0) if name == "clean" or not collapse else logits(0.0, 6.0, always=0)
        out[name] = torch.stack([(1 - a) * zs + a * ft for a in alphas])
    return lab.LabLogits(alphas, out, labels, "test", "test", 0)


@pytest.mark.parametrize("name", sorted(lab.LAB_DIVERGENCES))
def test_lab_divergences_vanish_on_equal_proportions_and_grow_with_a_collapse(name: str) -> None:
    d = lab.LAB_DIVERGENCES[name]
    q = torch.full((C,), 1.0 / C)
    mild = torch.tensor([0.3, 0.2, 0.2, 0.15, 0.15])
    collapsed = torch.tensor([0.96, 0.01, 0.01, 0.01, 0.01])
    assert float(d(q, q)) == pytest.approx(0.0, abs=1e-7)
    assert 0.0 < float(d(mild, q)) < float(d(collapsed, q))
    if name != "kl":  # the bounded ones: a class the reference never predicts costs at most its mass
        never = torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25])
        assert float(d(q, never)) <= (math.log(2) if name == "js" else 1.0) + 1e-6
    batched = d(torch.stack([q, collapsed]), q.expand(2, C))
    assert batched.shape == (2,)


def test_simulated_window_pulls_alpha_down_where_the_fine_tuned_model_collapses() -> None:
    s = lab.lab_stream(_cache(), "shuffled", "continual", 32, "continual")
    hits, chosen = lab.windowed_simulated(s, mix_threshold=None)
    alpha = torch.tensor(s.alphas)[chosen]
    clean, noise = s.domain == 0, s.domain == 1
    assert float(alpha[clean].mean()) > 0.5  # in distribution: the confident, accurate fine-tuned model
    last = noise & (s.batch >= int(s.batch[noise].max()) - 3)  # once the window has seen the collapse
    assert float(alpha[last].mean()) < 0.5
    assert float(hits[last].float().mean()) > 0.5  # the zero-shot side keeps ~70% there (the collapse: 20%)


def test_keeping_rows_at_a_drift_and_the_confusion_option_change_the_choice_only_when_set() -> None:
    s = lab.lab_stream(_cache(), "class-sorted", "continual", 32, "continual")
    base = lab.windowed_simulated(s)
    for same in ({"keep_at_drift": 0}, {"confusion": 0.0}):
        hits, chosen = lab.windowed_simulated(s, **same)
        assert torch.equal(hits, base[0]) and torch.equal(chosen, base[1])
    # with no drift detector (no restart) the kept rows cannot matter either
    assert torch.equal(lab.windowed_simulated(s, restart=False, keep_at_drift=64)[1],
                       lab.windowed_simulated(s, restart=False)[1])
    # comparing through the zero-shot model's confusion can only soften the anchor: α never lower on clean
    soft = lab.windowed_simulated(s, confusion=1.0, mix_threshold=None)[1]
    hard = lab.windowed_simulated(s, mix_threshold=None)[1]
    clean = s.domain == 0
    assert float(soft[clean].float().mean()) >= float(hard[clean].float().mean())


def _row(shift: float, clean: float, best: float = 60.0) -> dict[str, float]:
    return {"shift_mean": shift, "clean": clean, "vs_best_static": shift - best}


def test_criteria_table_counts_the_issue_criteria_of_saved_runs() -> None:
    def stream(shift: float, clean: float) -> dict[str, dict[str, float]]:
        return {"finetuned": _row(58.0, 87.0), "best static α": _row(60.0, 83.0), "per-domain oracle *": _row(65, 87),
                "wiseft 0.5": _row(60.0, 83.0), "mine": _row(shift, clean)}

    world = {"seed_world": 0, "tables": {"batch 64, continual": {
        "shuffled / continual": stream(61.5, 86.5), "class-sorted / continual": stream(60.5, 85.5),
        "shuffled / mixed": stream(59.8, 84.0)}}}
    table = lab.criteria_table([{"seeds": {"0": world}}])
    line = next(x for x in table.splitlines() if "| mine |" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["64", "mine", "2 + 1", "+0.50", "+1.00", "1", "-1.50", "1", "-0.20", "-3.00"]
    assert "best static α" not in table and "oracle" not in table and "wiseft" not in table
