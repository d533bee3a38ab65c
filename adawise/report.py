"""``adawise report RUN.jsonl [...]``: one table across methods and domains, and plots.

Reads complete and interrupted logs alike (an interrupted one is reported from its batch records
and marked ``(incomplete)``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adawise.logs import domain_counts, format_table, plot_accuracy, plot_alpha, read_run

__all__ = ["collect", "add_arguments", "main"]


def collect(paths: list[str | Path]) -> dict[str, Any]:
    """Accuracy per method and domain, α series and batch domains from run logs."""
    accuracy: dict[str, dict[str, float]] = {}
    alphas: dict[str, list[float | None]] = {}
    domains_per_batch: list[str] = []
    bounds: list[str] = []
    for path in paths:
        run = read_run(path)
        if not run["batches"]:
            raise ValueError(f"{path}: no batch records; is it an adawise run log?")
        name = run["header"]["method"] if run["header"] else Path(path).stem
        if run["header"] and run["header"].get("setting") not in (None, "continual"):
            name += f" [{run['header']['setting']}]"
        if not run["complete"]:
            name += " (incomplete)"
        if name in accuracy:  # the same method twice (e.g. two seeds): keep both, told apart by file
            name += f" ({Path(path).stem})" if f"{name} ({Path(path).stem})" not in accuracy else f" ({path})"
        per = domain_counts(run["batches"])
        accuracy[name] = {d: c / n for d, (n, c) in per.items() if n}
        alphas[name] = [r.get("alpha") for r in run["batches"]]
        if len(run["batches"]) > len(domains_per_batch):
            domains_per_batch = [r["domain"] for r in run["batches"]]
        if run["header"] and run["header"].get("uses_labels"):
            bounds.append(name)
    return {"accuracy": accuracy, "alphas": alphas, "domains_per_batch": domains_per_batch, "upper_bounds": bounds}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adawise report``."""
    parser.add_argument("logs", nargs="+", help="run logs (JSONL) written by run_stream / adawise demo / run")
    parser.add_argument("--out", default=None,
                        help="folder for report.md and PNG plots (default: beside the first log)")
    parser.add_argument("--id-domain", default=None, help="in-distribution domain, excluded from the shift mean")


def main(args: argparse.Namespace) -> int:
    """Print the table; write report.md, accuracy.png and alpha.png."""
    for p in args.logs:
        if not Path(p).is_file():
            raise SystemExit(f"adawise report: no such log file: {p}")
    data = collect(args.logs)
    out = Path(args.out) if args.out else Path(args.logs[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    # stream order of the longest log first, then any domain only other logs have
    domains = list(dict.fromkeys([*data["domains_per_batch"],
                                  *(d for row in data["accuracy"].values() for d in row)]))
    print(format_table(data["accuracy"], domains, args.id_domain, data["upper_bounds"]))
    (out / "report.md").write_text(
        format_table(data["accuracy"], domains, args.id_domain, data["upper_bounds"], fmt="markdown") + "\n")
    plot_accuracy(data["accuracy"], out / "accuracy.png", domains, data["upper_bounds"])
    series = {m: a for m, a in data["alphas"].items() if any(x is not None for x in a)}
    if series:
        plot_alpha(series, data["domains_per_batch"], out / "alpha.png")
    print(f"wrote {out / 'report.md'}, {out / 'accuracy.png'}" + (f", {out / 'alpha.png'}" if series else ""))
    return 0
