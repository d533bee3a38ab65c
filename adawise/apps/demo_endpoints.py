"""``adawise demo --recipes e2e,r-adapter,drm``: one table, one plot and a few sentences over the endpoints.

Each endpoint's world runs the whole demo on its own (:func:`adawise.apps.demo.run_demo`; ``summary.json`` for
e2e, ``summary-<endpoint>.json`` for the others). This module only reads those summaries and writes
``endpoints.md``, ``endpoints.json`` and ``endpoints.png``: per method and endpoint the clean accuracy and
the mean over the shifts, the gain of WiSE-FT 0.5, AdaWiSE and VRF over the endpoint alone (the
fine-tuned model, α = 1) on the shift mean, and sentences computed from those numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from adawise.apps.demo_plots import static_name
from adawise.evaluation.logs import render_table
from adawise.methods.registry import registered_methods

__all__ = ["combine_endpoints", "format_endpoints", "plot_endpoints", "write_endpoints_report", "BEST_STATIC"]

#: the row of the best static α of each endpoint's sweep (its name, e.g. ``wiseft-0.6``, is in ``best_static``)
BEST_STATIC = "best static α"


def _gains(rows: Sequence[str], bounds: Sequence[str]) -> list[str]:
    """Methods whose gain over the endpoint alone is reported: static WiSE-FT at 0.5 and every method that
    ran but the endpoints, the sweep's best static α and the upper bounds."""
    skip = {static_name(0.0), static_name(1.0), BEST_STATIC, *bounds}
    return [m for m in rows if m not in skip]


def combine_endpoints(summaries: Mapping[str, Mapping[str, Any]], files: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
    """The combined numbers (``endpoints.json``) from each endpoint's demo summary, in endpoint order."""
    first = next(iter(summaries.values()))
    id_domain = first["id_domain"]
    shifts = [d for d in first["domains"] if d != id_domain]
    bounds = list(dict.fromkeys(b for s in summaries.values() for b in s.get("upper_bounds", [])))
    known = set(registered_methods())  # the sweep's other static rows (wiseft-0.2, ...) are not methods
    ran = [m for s in summaries.values() for m in s["accuracy"] if m in known]
    # rows: the endpoints and WiSE-FT 0.5, the best static α, the other methods in the order they ran, the bounds
    statics = [static_name(a) for a in (0.0, 1.0, 0.5)]
    rows = [m for m in statics if m in ran] + [BEST_STATIC]
    rows += [m for m in dict.fromkeys(ran) if m not in rows and m not in bounds] + [b for b in bounds if b in ran]
    best = {e: s["best_static"] for e, s in summaries.items()}
    best_alpha = {e: next(a for a in s["alphas"] if static_name(a) == s["best_static"]) for e, s in summaries.items()}
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    for endpoint, s in summaries.items():
        def cell(m: str, s: Mapping[str, Any] = s) -> dict[str, float] | None:
            name = s["best_static"] if m == BEST_STATIC else m
            if name not in s["accuracy"]:
                return None
            return {"clean": s["accuracy"][name][id_domain], "mean_shifts": s["mean_shifts"][name]}
        accuracy[endpoint] = {m: c for m in rows if (c := cell(m)) is not None}
    alone = {e: a[static_name(1.0)]["mean_shifts"] for e, a in accuracy.items()}
    gains = {e: {m: a[m]["mean_shifts"] - alone[e] for m in _gains(rows, bounds) if m in a}
             for e, a in accuracy.items()}
    combined = {
        "endpoints": list(summaries), "id_domain": id_domain, "shifts": shifts, "methods": rows,
        "upper_bounds": bounds, "best_static": best, "best_static_alpha": best_alpha, "accuracy": accuracy,
        "gain_over_endpoint": gains,
        "most_robust_alone": max(alone, key=alone.__getitem__),
        "worlds": {e: s["world"]["key"] for e, s in summaries.items()},
        "summaries": dict(files or {}),
    }
    combined["sentences"] = _sentences(combined)
    return combined


def _label(method: str, bounds: Sequence[str]) -> str:
    return method + (" (upper bound)" if method in bounds else "")


def _sentences(c: Mapping[str, Any]) -> list[str]:
    acc, gains = c["accuracy"], c["gain_over_endpoint"]
    alone = {e: acc[e][static_name(1.0)]["mean_shifts"] for e in c["endpoints"]}
    zs_name = static_name(0.0)
    top = c["most_robust_alone"]
    others = ", ".join(f"{e} {100 * v:.1f} %" for e, v in alone.items() if e != top)
    zs = acc[top][zs_name]["mean_shifts"] if zs_name in acc[top] else None
    out = [f"Most robust endpoint alone (fine-tuned model, mean over the shifts): {top}, {100 * alone[top]:.1f} %"
           + (f" ({others})" if others else "") + (f"; zero-shot {100 * zs:.1f} %." if zs is not None else ".")]
    if "e2e" in alone:
        for e, v in alone.items():
            if e != "e2e":
                out.append(f"{e}'s fine-tuned model alone {'beats' if v > alone['e2e'] else 'does not beat'} the "
                           f"e2e fine-tuned model on the shift mean ({100 * v:.1f} % vs {100 * alone['e2e']:.1f} %).")
    for e in c["endpoints"]:
        if gains[e]:
            added = ", ".join(f"{m} {100 * g:+.1f}" for m, g in gains[e].items())
            out.append(f"On top of {e} alone ({100 * alone[e]:.1f} %), on the shift mean: {added} points.")
    fair = [(e, m) for e in c["endpoints"] for m in acc[e] if m not in (*c["upper_bounds"], BEST_STATIC)]
    if fair:
        e, m = max(fair, key=lambda em: acc[em[0]][em[1]]["mean_shifts"])
        bound = next((b for b in c["upper_bounds"] if b in acc[e]), None)
        out.append(f"Best shift mean without test labels: {m} on {e}, {100 * acc[e][m]['mean_shifts']:.1f} %"
                   + (f" ({bound}, an upper bound: {100 * acc[e][bound]['mean_shifts']:.1f} %)." if bound else "."))
    return out


def format_endpoints(c: Mapping[str, Any], fmt: str = "text") -> str:
    """The combined table (accuracy %, clean and shift mean per endpoint), the gains and the best static α."""
    endpoints, bounds = c["endpoints"], c["upper_bounds"]
    header = ["method"] + [f"{e} {col}" for e in endpoints for col in (c["id_domain"], "shifts")]
    rows = [[m + (" *" if m in bounds else "")]
            + [f"{100 * c['accuracy'][e][m][k]:.1f}" if m in c["accuracy"][e] else "-"
               for e in endpoints for k in ("clean", "mean_shifts")] for m in c["methods"]]
    gain_header = ["gain over the endpoint alone (shift mean, points)", *endpoints]
    gain_rows = [[m] + [f"{100 * c['gain_over_endpoint'][e][m]:+.1f}" if m in c["gain_over_endpoint"][e]
                               else "-" for e in endpoints]
                 for m in dict.fromkeys(m for g in c["gain_over_endpoint"].values() for m in g)]
    notes = [f"{BEST_STATIC}: the grid α with the best shift mean, chosen in hindsight: "
             + ", ".join(f"{e} α {c['best_static_alpha'][e]:g} ({n})" for e, n in c["best_static"].items())]
    if bounds:
        notes.append("* upper bound: reads the labels")
    return "\n\n".join([render_table(header, rows, fmt), render_table(gain_header, gain_rows, fmt), "\n".join(notes)])


def plot_endpoints(c: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: shift-mean accuracy (%) per method, one bar per endpoint; zero-shot as a line."""
    from adawise.evaluation.logs import _pyplot, save_figure

    plt = _pyplot()
    endpoints, bounds = c["endpoints"], c["upper_bounds"]
    zs_name = static_name(0.0)
    methods = [m for m in c["methods"] if m != zs_name]
    width = 0.8 / len(endpoints)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.8 * len(methods) * max(1.0, len(endpoints) / 3) + 2), 4.5))
    for i, e in enumerate(endpoints):
        for j, m in enumerate(methods):
            if m not in c["accuracy"][e]:
                continue
            x, y = j + (i - (len(endpoints) - 1) / 2) * width, 100 * c["accuracy"][e][m]["mean_shifts"]
            ax.bar(x, y, width, color=f"C{i}", label=e if j == 0 else None, hatch="//" if m in bounds else None,
                   edgecolor="black" if m in bounds else None, linewidth=0.5)
            if m == BEST_STATIC:
                ax.text(x, y, f"α {c['best_static_alpha'][e]:g}", ha="center", va="bottom", fontsize=6)
    zs = [c["accuracy"][e][zs_name]["mean_shifts"] for e in endpoints if zs_name in c["accuracy"][e]]
    if zs:  # the same model for every endpoint (shared pretraining)
        ax.axhline(100 * zs[0], color="grey", ls="--", lw=1, label="zero-shot")
    ax.set_xticks(range(len(methods)), [_label(m, bounds) for m in methods], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean accuracy over the shifts (%)")
    ax.set_title(f"Shift mean ({len(c['shifts'])} shifts) per method and fine-tuned endpoint; hatched: upper bound")
    ax.legend(fontsize=8, title="endpoint", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def write_endpoints_report(out: Path, summaries: Mapping[str, Mapping[str, Any]], files: Mapping[str, str],
                           say: Callable[..., None] = print) -> dict[str, Any]:
    """Print the combined table and sentences; write ``endpoints.md``, ``endpoints.json``, ``endpoints.png``."""
    c = combine_endpoints(summaries, files)
    say()
    say(format_endpoints(c))
    say()
    for sentence in c["sentences"]:
        say(sentence)
    (out / "endpoints.md").write_text(format_endpoints(c, fmt="markdown") + "\n\n" + "\n".join(c["sentences"]) + "\n")
    (out / "endpoints.json").write_text(json.dumps(c, indent=1) + "\n")
    plot_endpoints(c, out / "endpoints.png")
    say(f"wrote {out}/endpoints.md, endpoints.json and endpoints.png")
    return c
