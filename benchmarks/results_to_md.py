"""Turn benchmark JSON files (bench_step, bench_knn, bench_presets) into the Markdown of RESULTS.md.

    python benchmarks/results_to_md.py runs/step_vitb16.json runs/step_vitl14.json runs/knn_gpu.json
    python benchmarks/results_to_md.py --into benchmarks/RESULTS.md --marker gpu OUT/*.json

Without ``--into`` the Markdown goes to stdout. With it, the text between the lines
``<!-- MARKER:begin -->`` and ``<!-- MARKER:end -->`` of that file is replaced (the markers stay).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}"
    return str(v)


def step_markdown(r: dict[str, Any]) -> str:
    """Tables of one bench_step record: ratios, AdaWiSE breakdown, micro-timings, targets."""
    env = r.get("env", {})
    st = r.get("stream", {})
    lines = [
        f"#### {r['model']}",
        "",
        f"- device: {r['device']}; torch {env.get('torch', '?')}; amp {r.get('amp')}; batch {r['batch_size']}; "
        f"clock: {r.get('clock')}",
        f"- date: {env.get('date', '?')}; command: `{env.get('command', '?')}`",
        f"- stream: {st.get('batches')} batches ({len(st.get('domains', []))} domains x "
        f"{st.get('batches_per_domain')}, {st.get('images')}); faithful timed on {st.get('faithful_batches')} "
        f"batches; median of {st.get('repeats')} interleaved repeats; model fp32 {_f(r.get('model_fp32_mb'), 1)} MiB",
        "",
    ]
    cpu = r.get("cpu_ms", {})
    show_cpu = r["device"].startswith("cpu")
    head = "| method | ms/batch | ratio |" + (" CPU ms | ratio (CPU time) |" if show_cpu else "") + " peak MiB |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    rows = [(n, r["ms"][n], r["ratio"].get(n), r.get("peak_mem_mb", {}).get(n)) for n in r["ms"]]
    extra = r.get("extra", {})
    rows += [(f"*{n}*", extra["ms"][n], extra["ratio"].get(n), extra.get("peak_mem_mb", {}).get(n))
             for n in extra.get("ms", {})]
    for name, ms, ratio, peak in rows:
        key = name.strip("*")
        cells = [name, _f(ms), _f(ratio)]
        if show_cpu:
            cells += [_f(cpu.get(key)), _f(r.get("ratio_cpu", {}).get(key))]
        cells.append(_f(peak, 0))
        lines.append("| " + " | ".join(cells) + " |")
    parts = r.get("adawise", {})
    if parts:
        lines += ["", "AdaWiSE per batch (its own records; BO bookkeeping = all but passes and merges):", "",
                  "| method | passes | merges | forward ms | merge ms | BO ms | forward % | merge % | BO % | modes |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for n, b in parts.items():
            modes = ", ".join(f"{k} {v}" for k, v in sorted(b.get("modes", {}).items()))
            lines.append(f"| {n} | {_f(b['passes'])} | {_f(b['merges'])} | {_f(b['forward_ms'])} | "
                         f"{_f(b['merge_ms'], 3)} | {_f(b['bo_ms'])} | {_f(100 * b['forward_share'], 1)} | "
                         f"{_f(100 * b['merge_share'], 1)} | {_f(100 * b['bo_share'], 1)} | {modes} |")
    micro = r.get("micro_ms", {})
    if micro:
        lines += ["", "Micro-timings (ms, median): " + "; ".join(f"{k} {_f(v, 3)}" for k, v in micro.items())]
    graphs = r.get("cuda_graphs", {})
    if graphs:
        lines += ["", "CUDA graphs per input shape: " + "; ".join(
            f"{n}: " + ", ".join(f"{s} {v}" for s, v in g.items()) for n, g in graphs.items() if g)]
    targets = r.get("targets", {})
    if targets:
        lines += ["", "Targets: " + "; ".join(f"{k}: {_f(v, 0)}" for k, v in targets.items())]
    return "\n".join(lines) + "\n"


def presets_markdown(r: dict[str, Any]) -> str:
    """bench_presets' quality tables (fast vs faithful per objective) and cost rows."""
    lines = []
    for q in r.get("quality", []):
        lines += [f"#### quality: {q['world']} ({q['batches']} batches)", "",
                  "| method | accuracy % | fast - faithful (points) | mean abs(d alpha) | within 2% of grid min "
                  "| passes |", "|---|---|---|---|---|---|"]
        for name, m in q["methods"].items():
            lines.append(f"| {name} | {_f(100 * m['accuracy'])} | {_f(m.get('dacc_points'))} | "
                         f"{_f(m.get('dalpha_mean'), 3)} | {_f(m.get('within2'))} | {_f(m.get('passes'))} |")
        lines.append("")
    for c in r.get("cost", []):
        lines += [f"#### cost: {c['world']} ({c['batches']} batches; plain {_f(c['plain_ms'])} ms)", "",
                  "| method | ms/batch | ratio | passes | BO % |", "|---|---|---|---|---|"]
        for name, m in c["methods"].items():
            lines.append(f"| {name} | {_f(m['ms'])} | {_f(m['ratio'])} | {_f(m['passes'])} | "
                         f"{_f(100 * m['bo_share'], 1)} |")
        lines.append("")
    return "\n".join(lines)


def knn_markdown(r: dict[str, Any]) -> str:
    """bench_knn's own table, with the environment line."""
    from bench_knn import markdown

    env = r.get("env", {})
    extra = f"- date: {env.get('date', '?')}; command: `{env.get('command', '?')}`\n\n" if "date" in env else ""
    return "#### kNN against the ZSF index\n\n" + extra + markdown(r)


def render(paths: list[str]) -> str:
    """Markdown for every JSON file, in order (unknown or unreadable files are reported, not fatal)."""
    out = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            out.append(f"*{path}: not readable ({err})*\n")
            continue
        if "ratio" in record and "ms" in record:
            out.append(step_markdown(record))
        elif record.get("benchmark") == "vrf_knn":
            out.append(knn_markdown(record))
        elif "quality" in record:
            out.append(presets_markdown(record))
        else:
            out.append(f"*{path}: not a bench_step, bench_knn or bench_presets record*\n")
    return "\n".join(out)


def replace_section(text: str, marker: str, body: str) -> str:
    """``text`` with the lines between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` replaced."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"markers {begin} ... {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.rstrip()}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="bench_step / bench_knn JSON files")
    p.add_argument("--into", help="a Markdown file whose marked section is replaced")
    p.add_argument("--marker", default="gpu", help="section marker name (default gpu)")
    args = p.parse_args(argv)
    body = render(args.files)
    if args.into:
        path = Path(args.into)
        path.write_text(replace_section(path.read_text(), args.marker, body))
    else:
        sys.stdout.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
