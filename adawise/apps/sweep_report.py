"""Merging a sweep's logs: mean ± std over seeds per model/stream/setting, method and domain, written as
``sweep.md``, ``sweep.json`` and ``sweep.png`` (see :mod:`adawise.apps.sweep`, which calls :func:`merge` at the
end of every sweep)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adawise.evaluation.logs import domain_counts, render_table

if TYPE_CHECKING:
    from adawise.apps.sweep_config import Run

__all__ = ["merge", "format_merged", "plot_merged"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def merge(runs: Sequence[Run], out: str | os.PathLike, id_domain: str | None = None,
          write: bool = True) -> dict[str, Any]:
    """Read every run's log; mean ± std over seeds per model/stream/setting, method and domain.

    Returns ``{"runs": [...], "groups": [...], "missing": [...]}`` (no timings, so two executions of the
    same sweep merge to equal dicts) plus ``"paths"``; with ``write`` also ``sweep.md``, ``sweep.json``
    (with timings) and ``sweep.png`` under ``out``.
    """
    from adawise.evaluation.logs import read_run

    rows, missing, timing = [], [], {}
    for run in runs:
        path = Path(run.log)
        rec = read_run(path) if path.is_file() else None
        if rec is None or not rec["complete"]:
            missing.append({"run_id": run.run_id, "log": str(path), "state": "partial" if rec else "absent"})
            continue
        per = domain_counts(rec["batches"])
        alphas = [r["alpha"] for r in rec["batches"] if r.get("alpha") is not None]
        passes = [r.get("forward_passes", 1.0) for r in rec["batches"]]
        rows.append({
            "run_id": run.run_id, "model": run.model, "stream": run.stream, "method": run.method,
            "setting": run.setting, "seed": run.seed, "log": str(path),
            "accuracy": sum(c for _, c in per.values()) / max(sum(n for n, _ in per.values()), 1),
            "per_domain": {d: c / n for d, (n, c) in per.items() if n},
            "batches": len(rec["batches"]),
            "mean_alpha": sum(alphas) / len(alphas) if alphas else None,
            "forward_passes": sum(passes) / len(passes) if passes else None,
            "uses_labels": bool((rec["header"] or {}).get("uses_labels")),
        })
        timing[run.run_id] = rec["summary"].get("seconds")
    groups = _groups(rows, id_domain)
    merged: dict[str, Any] = {"runs": rows, "groups": groups, "missing": missing}
    out = Path(out)
    paths = {"table": out / "sweep.md", "json": out / "sweep.json", "plot": out / "sweep.png"}
    if write:
        out.mkdir(parents=True, exist_ok=True)
        paths["table"].write_text(format_merged(merged, id_domain))
        paths["json"].write_text(json.dumps({**merged, "timing": timing}, indent=1, allow_nan=False,
                                            default=str) + "\n")
        if groups:
            plot_merged(groups, paths["plot"])
        else:
            paths.pop("plot")
    merged["paths"] = paths
    return merged


def _groups(rows: Sequence[Mapping[str, Any]], id_domain: str | None) -> list[dict[str, Any]]:
    by_group: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_group.setdefault((row["model"], row["stream"], row["setting"]), []).append(row)
    groups = []
    for (model, stream, setting), members in by_group.items():
        domains = list(dict.fromkeys(d for r in members for d in r["per_domain"]))
        shifts = [d for d in domains if d != id_domain]
        methods: dict[str, dict[str, Any]] = {}
        for method in dict.fromkeys(r["method"] for r in members):
            seeds = [r for r in members if r["method"] == method]
            cells = {d: _mean_std([r["per_domain"].get(d) for r in seeds]) for d in domains}
            mean_over = [_mean_std([r["per_domain"].get(d) for d in shifts])[0] for r in seeds]
            methods[method] = {
                "seeds": sorted(r["seed"] for r in seeds),
                "per_domain": {d: {"mean": m, "std": s} for d, (m, s) in cells.items()},
                "mean": dict(zip(("mean", "std"), _mean_std(mean_over), strict=True)),
                "all": dict(zip(("mean", "std"), _mean_std([r["accuracy"] for r in seeds]), strict=True)),
                "uses_labels": any(r["uses_labels"] for r in seeds),
            }
        groups.append({"model": model, "stream": stream, "setting": setting, "domains": domains,
                       "methods": methods})
    return groups


def _cell(stat: Mapping[str, float], n: int) -> str:
    if stat["mean"] is None or not math.isfinite(stat["mean"]):
        return "-"
    return f"{100 * stat['mean']:.1f}" + (f" ± {100 * stat['std']:.1f}" if n > 1 else "")


def format_merged(merged: Mapping[str, Any], id_domain: str | None = None) -> str:
    """``sweep.md``: one markdown table per model/stream/setting (accuracy %, mean ± std over seeds)."""
    runs, missing = merged["runs"], merged["missing"]
    lines = ["# Sweep results", "",
             f"{len(runs)} of {len(runs) + len(missing)} runs complete. Accuracy (%), mean ± standard deviation "
             "over seeds; 'mean' averages the domains" + (f" except {id_domain}" if id_domain else "")
             + ", 'all' is the accuracy over every image. * reads the labels (an upper bound).", ""]
    for g in merged["groups"]:
        lines += [f"## model `{g['model']}` · stream `{g['stream']}` · setting {g['setting']}", ""]
        header = ["method", "seeds", *g["domains"], "mean", "all"]
        rows = []
        for method, m in g["methods"].items():
            n = len(m["seeds"])
            cells = [method + (" *" if m["uses_labels"] else ""), str(n)]
            cells += [_cell(m["per_domain"][d], n) for d in g["domains"]]
            rows.append(cells + [_cell(m["mean"], n), _cell(m["all"], n)])
        lines += [render_table(header, rows, "markdown"), ""]
    if missing:
        lines += [f"Missing ({len(missing)}): run `adawise sweep` again to finish them.", ""]
        lines += [f"- {m['log']} ({m['state']})" for m in missing] + [""]
    return "\n".join(lines)


def plot_merged(groups: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """``sweep.png``: per model/stream/setting, accuracy per domain and method, error bars over seeds."""
    from adawise.evaluation.logs import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.4 * len(groups)), squeeze=False)
    for ax, g in zip(axes[:, 0], groups, strict=True):
        cols = [*g["domains"], "mean"]
        methods = list(g["methods"])
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            m = g["methods"][method]
            stats = [m["per_domain"][d] for d in g["domains"]] + [m["mean"]]
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(cols))]
            ys = [100 * (s["mean"] if s["mean"] is not None and math.isfinite(s["mean"]) else 0.0) for s in stats]
            err = [100 * (s["std"] if s["std"] is not None and math.isfinite(s["std"]) else 0.0) for s in stats]
            ax.bar(xs, ys, width, yerr=err if len(m["seeds"]) > 1 else None, capsize=2, label=method,
                   hatch="//" if m["uses_labels"] else None)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{g['model']} · {g['stream']} · {g['setting']}", fontsize=9)
        ax.legend(fontsize=6, ncol=4)
    return save_figure(fig, path, dpi=110)
