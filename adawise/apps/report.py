"""``adawise report RUN.jsonl [...]``: one table across methods and domains, and plots.

Reads complete and interrupted logs alike (an interrupted one is reported from its batch records
and marked ``(incomplete)``). A file that is not an intact run log (malformed JSON, records without their
fields, duplicated or reordered batches, a summary that does not add up) is refused with a
:class:`~adawise.errors.LogError` naming the file and line: a report never counts what a run did not write.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adawise import options as check
from adawise.errors import LogError, UsageError
from adawise.evaluation.logs import domain_counts, format_table, plot_accuracy, plot_alpha, read_run

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
            raise LogError(f"{path}: no batch records (a run killed before its first batch, or not a run log); pass "
                           "logs with at least one batch")
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
        check.input_file(p, "log", "run log (.jsonl)")
    data = collect(args.logs)
    out = check.output_dir(args.out if args.out else Path(args.logs[0]).parent, "--out")
    present = {d for row in data["accuracy"].values() for d in row}
    if args.id_domain is not None and args.id_domain not in present:
        raise UsageError(f"--id-domain {args.id_domain!r} is not a domain of these logs; they have "
                         f"{', '.join(sorted(present))}; pass one of those or drop --id-domain")
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
