"""Logs for people and machines: JSON lines per batch, per-domain tables, plots.

A run log is JSON lines, each with ``"type"``: one ``header`` (config, seed, setting, versions,
device, how each model was loaded), one ``batch`` record per batch (flushed and fsynced as it is
written, so a killed run leaves a parseable log), and a final ``summary`` that marks the log complete.
Accuracies are fractions in [0, 1]; tables print percentages. :func:`read_run` checks that a log is one
(a header first, batch records in stream order, each with its domain and counts, a summary last) and
names the file and line of anything else; :func:`exclusive` is the lock a writer holds on a log or an
output folder, so two runs never write into the same files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adawise.errors import AccessError, LogError, MissingFileError, RunLockedError, UsageError

__all__ = [
    "JsonlWriter",
    "read_jsonl",
    "read_run",
    "check_run",
    "table_path",
    "exclusive",
    "library_versions",
    "format_table",
    "plot_accuracy",
    "plot_alpha",
    "save_figure",
    "render_table",
    "to_jsonable",
    "domain_counts",
]


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # torch / numpy scalars
        return to_jsonable(value.item())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


class JsonlWriter:
    """Append JSON lines to ``path``; every line is flushed (and fsynced) as it is written."""

    def __init__(self, path: str | os.PathLike, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fsync = fsync

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record as a line and push it to disk."""
        self._file.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike, repair: bool = False, with_lines: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL log, tolerating a truncated last line (a run killed mid-write).

    With ``repair=True`` the file is truncated to its last complete line, so appending continues
    cleanly. A malformed line anywhere else, or a line that is not a JSON object, is a
    :class:`~adawise.errors.LogError` naming the file and line number. With ``with_lines`` each record
    gets its line number under the key ``"_line"`` (for messages; never written back).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"no such log file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; pass a run log file (.jsonl)") from None
    except PermissionError:
        raise AccessError(f"cannot read the log {path}: permission denied") from None
    records: list[dict[str, Any]] = []
    good_bytes = 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError as err:
                if last or (number == len(lines) - 1 and not lines[-1]):
                    break  # a partial final line: the run died while writing it
                raise LogError(f"{path}:{number}: malformed JSON line ({str(err)[:120]}); this is not an intact "
                               f"adawise run log: {_INTACT}") from None
            if not isinstance(record, dict):
                raise LogError(f"{path}:{number}: a JSON {type(record).__name__}, not a record object; this is not "
                               f"an adawise run log: {_INTACT}")
            if with_lines:
                record["_line"] = number
            records.append(record)
        if not last:
            good_bytes += len(line) + 1
        elif line.strip():  # a complete record that only lost its newline: keep it
            good_bytes += len(line)
    if repair and good_bytes < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    if repair and raw[:good_bytes].strip() and not raw[:good_bytes].endswith(b"\n"):
        with open(path, "ab") as f:  # so that appended lines start on a line of their own
            f.write(b"\n")
    return records


_INTACT = "pass a log as adawise wrote it (delete this one, or run it again)"


def _where(path: Path, record: Mapping[str, Any]) -> str:
    return f"{path}:{record.get('_line', '?')}"


def check_run(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`~adawise.errors.LogError` unless ``records`` are an adawise run log: at most one
    header, first; batch records with a domain, ``n`` and ``correct`` (0 <= correct <= n), batch indices
    strictly increasing (no duplicated or reordered batch); at most one summary, last, whose counts match
    the batch records."""
    path = Path(path)
    batches = []
    for i, r in enumerate(records):
        kind = r.get("type")
        if kind == "header":
            if i != 0:
                raise LogError(f"{_where(path, r)}: a second header (or one after the first record); a log holds "
                               f"one run, header first: {_INTACT}")
        elif kind == "batch":
            domain, n, correct, index = r.get("domain"), r.get("n"), r.get("correct"), r.get("batch")
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (n, correct, index))
            if not isinstance(domain, str) or not ints or not 0 <= correct <= n:
                raise LogError(f"{_where(path, r)}: a batch record needs a domain (string), batch, n and correct "
                               f"(integers, 0 <= correct <= n); got domain={domain!r} batch={index!r} n={n!r} "
                               f"correct={correct!r}; {_INTACT}")
            if batches and index <= batches[-1]["batch"]:
                first = next(b for b in batches if b["batch"] >= index)
                what = "appears twice" if first["batch"] == index else "comes after a later batch"
                raise LogError(f"{_where(path, r)}: batch {index} {what} (see line {first.get('_line', '?')}); a run "
                               f"writes each batch once, in stream order, so this log was edited or merged: {_INTACT}")
            batches.append(r)
        elif kind == "summary":
            if i != len(records) - 1:
                raise LogError(f"{_where(path, r)}: a summary before the end of the log; a summary closes a run: "
                               f"{_INTACT}")
            counted = (len(batches), sum(b["n"] for b in batches), sum(b["correct"] for b in batches))
            claimed = (r.get("batches"), r.get("n"), r.get("correct"))
            if claimed != counted:
                raise LogError(f"{_where(path, r)}: the summary counts (batches, n, correct) = {claimed} but the "
                               f"batch records add up to {counted}; the log was edited or merged: {_INTACT}")
        else:
            raise LogError(f"{_where(path, r)}: a record of type {kind!r}; a run log holds a header, batch records "
                           f"and a summary: {_INTACT}")


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check (:func:`check_run`) a run log into ``{"header", "batches", "summary" (or None),
    "complete"}``."""
    records = read_jsonl(path, with_lines=True)
    check_run(path, records)
    for r in records:
        del r["_line"]
    header = next((r for r in records if r.get("type") == "header"), None)
    summary = next((r for r in records if r.get("type") == "summary"), None)
    batches = [r for r in records if r.get("type") == "batch"]
    return {"header": header, "batches": batches, "summary": summary, "complete": summary is not None}


def domain_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Images and correct predictions per domain, ``{domain: [n, correct]}``, over batch records.

    A record of a batch that mixes domains (the ``mixed`` schedule) carries ``by_domain``
    (``{domain: [n, correct]}``, written by the loop from ``Batch.sample_domains``) and counts there;
    any other counts under its ``domain``.
    """
    out: dict[str, list[int]] = {}
    for r in records:
        parts = r.get("by_domain") or {r["domain"]: [r["n"], r["correct"]]}
        for d, (n, c) in parts.items():
            n_c = out.setdefault(d, [0, 0])
            n_c[0] += int(n)
            n_c[1] += int(c)
    return out
def table_path(log: str | os.PathLike) -> Path:
    """Where the readable table of the log ``log`` goes: ``x.txt`` beside ``x.jsonl`` (``x.table.txt``
    when the log itself is called ``x.txt``, which must not be overwritten)."""
    log = Path(log)
    table = log.with_suffix(".txt")
    return table if table != log else log.with_suffix(".table.txt")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of a log file or an output folder (``filelock``, released when the process dies):
    a second writer gets :class:`~adawise.errors.RunLockedError` at once, naming the target."""
    from filelock import FileLock, Timeout

    target = Path(target)
    lock_file = target / ".adawise.lock" if target.is_dir() else target.parent / f".{target.name}.lock"
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AccessError(f"cannot create {lock_file.parent} for {target} ({err.strerror}); pass a writable "
                          "folder") from None
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(f"{target} is in use by another run (an adawise process holds {lock_file}); wait for "
                             "it to finish, or pass another output") from None
    except OSError as err:
        raise AccessError(f"cannot lock {target} ({err.strerror or err}); pass a writable folder") from None
    try:
        yield lock_file
    finally:
        lock.release()


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results, for log headers."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("adawise", "torch", "open_clip_torch", "botorch", "gpytorch", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def format_table(accuracy: Mapping[str, Mapping[str, float]], domains: Sequence[str] | None = None,
                 id_domain: str | None = None, upper_bounds: Iterable[str] = (),
                 fmt: str = "text") -> str:
    """A method x domain accuracy table in percent, with the mean over shift domains.

    Args:
        accuracy: method -> domain -> accuracy in [0, 1].
        domains: column order (default: order of first appearance).
        id_domain: the in-distribution domain; "mean shifts" averages every other domain.
        upper_bounds: methods that read labels; marked with ``*`` and a footnote.
        fmt: ``"text"`` (aligned columns) or ``"markdown"``.
    """
    if domains is None:
        domains = list(dict.fromkeys(d for row in accuracy.values() for d in row))
    shifts = [d for d in domains if d != id_domain]
    bounds = set(upper_bounds)
    header = ["method", *domains, "mean shifts" if id_domain else "mean"]
    rows = []
    for method, row in accuracy.items():
        name = method + (" *" if method in bounds else "")
        cells = [row.get(d) for d in domains]
        mean = _mean(row.get(d) for d in shifts)
        rows.append([name] + [f"{100 * c:.1f}" if c is not None else "-" for c in cells] + [f"{100 * mean:.1f}"])
    note = "* upper bound: reads the labels" if bounds & set(accuracy) else ""
    return render_table(header, rows, fmt) + ("\n" + note if note else "")


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "text") -> str:
    """Rows of cells under a header: ``"markdown"`` or ``"text"`` (first column left-aligned, the others
    right-aligned, a rule under the header)."""
    if fmt == "markdown":
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(r: Sequence[str]) -> str:
        cells = enumerate(zip(r, widths, strict=True))
        return "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in cells)

    return "\n".join([line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(line, rows)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


#: colour map per method family (``Method.family``): one hue per family, one shade per member
FAMILY_COLOURS = {"static": "Blues", "adaptive": "Oranges", "ensemble": "Greens", "tta": "Purples",
                  "bound": "Greys", "other": "YlOrBr"}


def series_colours(methods: Sequence[str], families: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A distinct colour per method: shades of its family's hue (:data:`FAMILY_COLOURS`; methods without a
    family count as ``static`` rows of the α sweep), or 20 distinct colours (``tab20``) without families."""
    plt = _pyplot()
    if families is None:
        cmap = plt.get_cmap("tab20")
        return {m: cmap(i % 20) for i, m in enumerate(methods)}
    groups: dict[str, list[str]] = {}
    for m in methods:
        groups.setdefault(families.get(m, "static"), []).append(m)
    out = {}
    for family, members in groups.items():
        cmap = plt.get_cmap(FAMILY_COLOURS.get(family, "YlOrBr"))
        for k, m in enumerate(members):
            out[m] = cmap(0.45 + 0.5 * (k / max(len(members) - 1, 1)) if len(members) > 1 else 0.7)
    return out


def plot_accuracy(accuracy: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                  domains: Sequence[str] | None = None, upper_bounds: Iterable[str] = (),
                  title: str = "Accuracy per domain", families: Mapping[str, str] | None = None) -> Path:
    """Grouped bar chart: accuracy (%) per domain for each method, each in its own colour (shades of its
    family's hue with ``families``, :func:`series_colours`); upper bounds hatched."""
    plt = _pyplot()
    if domains is None:
        domains = list(dict.fromkeys(d for row in accuracy.values() for d in row))
    methods = list(accuracy)
    bounds = set(upper_bounds)
    colours = series_colours(methods, families)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(domains) + 2), 4.5))
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(domains))]
        ys = [100 * (accuracy[method].get(d) or 0.0) for d in domains]
        label = method + (" (upper bound)" if method in bounds else "")
        ax.bar(xs, ys, width, label=label, color=colours[method], edgecolor="black", linewidth=0.3,
               hatch="//" if method in bounds else None)
    ax.set_xticks(range(len(domains)), domains, rotation=35, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_alpha(series: Mapping[str, Sequence[float | None]], domains_per_batch: Sequence[str],
               path: str | os.PathLike, oracle_alpha: Mapping[str, float] | None = None,
               title: str = "alpha over the stream") -> Path:
    """α per batch for each method (a step per batch: α holds for the whole batch), domain boundaries as
    vertical lines, the oracle's α per domain as one dashed step line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    colours = series_colours(list(series))
    for method, alphas in series.items():
        xs = [i for i, a in enumerate(alphas) if a is not None]
        ax.step(xs, [alphas[i] for i in xs], where="post", lw=1, label=method, color=colours[method])
    starts = [i for i, d in enumerate(domains_per_batch) if i == 0 or d != domains_per_batch[i - 1]]
    steps_x: list[float] = []
    steps_y: list[float] = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(domains_per_batch)
        domain = domains_per_batch[start]
        ax.axvline(start, color="grey", lw=0.5)
        ax.text(start + 0.5, 1.02, domain, fontsize=6, rotation=30, transform=ax.get_xaxis_transform())
        if oracle_alpha and domain in oracle_alpha:
            steps_x += [start, end]
            steps_y += [oracle_alpha[domain]] * 2
    if steps_x:  # vertical jumps at the domain boundaries, never a ramp between two domains' αs
        ax.step(steps_x, steps_y, where="post", color="black", linestyle="--", lw=1.5, label="oracle α (upper bound)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("batch")
    ax.set_ylabel("α")
    ax.set_title(title, pad=28)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)
