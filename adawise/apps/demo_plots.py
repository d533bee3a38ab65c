"""What ``adawise demo`` writes: the per-domain table, ``summary.json``, ``table.md`` and the plots.

Accuracy per domain and α over the stream are :mod:`adawise.evaluation.logs`' plots; the demo adds one of its
own, :func:`plot_objectives_vs_alpha`: label-free objectives and accuracy as functions of α per domain.
It shows *why* an objective-driven α can trail the best static α: where the objective's minimum and
the accuracy's maximum sit at different α, minimising the objective picks the wrong model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from adawise.methods.registry import method_class, registered_methods

__all__ = ["plot_objectives_vs_alpha", "write_report", "check_phenomenon", "static_name"]

def _static_methods() -> dict[float, str]:
    """Registered methods with a static α, by that α (``zeroshot`` 0, ``finetuned`` 1, ``wiseft`` 0.5)."""
    out: dict[float, str] = {}
    for name in registered_methods():
        a = method_class(name).static_alpha
        if a is not None:
            out.setdefault(float(a), name)
    return out


def _tunable_static() -> str:
    """The registered static method whose α is an option (WiSE-FT): static rows at other αs are named after it."""
    import inspect

    for name in registered_methods():
        cls = method_class(name)
        if cls.static_alpha is not None and "alpha" in inspect.signature(cls).parameters:
            return name
    return "alpha"


def static_name(alpha: float) -> str:
    """Registry-style name of static WiSE-FT at ``alpha``: the registered method with that static α
    (``zeroshot``, ``finetuned``, ``wiseft``), else ``wiseft-<alpha>``."""
    return _static_methods().get(float(alpha)) or f"{_tunable_static()}-{alpha:g}"


def _mean(row: Mapping[str, float], domains: Sequence[str]) -> float:
    return sum(row[d] for d in domains) / len(domains)


def check_phenomenon(acc: Mapping[str, Mapping[str, float]], oracle_alpha: Mapping[str, float], id_domain: str,
                     shifts: Sequence[str]) -> dict[str, Any]:
    """The four properties the world must show (the same tests as the project's external check)."""
    zs_name, ft_name, mid_name = static_name(0.0), static_name(1.0), static_name(0.5)
    zs, ft = acc[zs_name], acc[ft_name]
    gap = ft[id_domain] - zs[id_domain]
    wins = [d for d in shifts if zs[d] > ft[d]]
    means = {m: _mean(acc[m], shifts) for m in (zs_name, ft_name, mid_name)}
    span = max(oracle_alpha.values()) - min(oracle_alpha.values())
    return {
        "finetuned_minus_zeroshot_id": {"value": gap, "pass": gap >= 0.10},
        "zeroshot_wins_on_shifts": {"value": wins, "pass": len(wins) >= 3},
        "wiseft_beats_endpoints_on_shift_mean": {
            "value": means, "pass": means[mid_name] > max(means[zs_name], means[ft_name])},
        "oracle_alpha_span": {"value": span, "pass": span >= 0.4},
    }


def _domain_means(sweep: Any, objective: str, domain: str) -> list[float]:
    mask = torch.tensor([d == domain for d in sweep.domains])
    return sweep.objectives[objective][mask].mean(0).tolist()


def _telling_domains(static: Mapping[str, list[float]], entropy: Mapping[str, list[float]],
                     domains: Sequence[str], k: int = 6) -> list[str]:
    """The ID domain and the shifts where the entropy minimum costs the most accuracy."""
    def loss(d: str) -> float:
        return max(static[d]) - static[d][min(range(len(entropy[d])), key=entropy[d].__getitem__)]

    return [domains[0]] + sorted(domains[1:], key=loss, reverse=True)[: k - 1]


def write_report(out: Path, world: Any, stream: Any, sweep: Any, results: Mapping[str, Any],
                 seconds: dict[str, float], args: Any, say: Callable[..., None] = print,
                 summary_path: Path | None = None) -> dict[str, Any]:
    """Print the table and checks; write ``table.md`` and the PNG plots into ``out``, the summary into
    ``summary_path`` (default ``out/summary.json``)."""
    from adawise.evaluation.logs import format_table, plot_accuracy, plot_alpha

    t0 = time.perf_counter()
    # a stream whose batches mix domains is reported per sample domain (its batches are all "mixed")
    domains = list(getattr(stream, "sample_domain_names", None) or stream.domains)
    id_domain, shifts = domains[0], domains[1:]
    static = {d: acc.tolist() for d, acc in sweep.accuracy_per_domain().items()}
    # the best static α of each (sample) domain; the oracle method follows sweep.oracle_alphas() per batch domain
    oracle_alpha = {d: sweep.alphas[max(range(len(v)), key=v.__getitem__)] for d, v in static.items()}
    accuracy = {name: dict(r.per_domain) for name, r in results.items()}
    for i, a in enumerate(sweep.alphas):  # static WiSE-FT from the sweep (endpoints too, unless run)
        accuracy.setdefault(static_name(a), {d: static[d][i] for d in domains})
    # rows: the methods in the order they ran (the registry's), then the sweep's other static αs
    listed = list(results) + [static_name(a) for a in sweep.alphas if static_name(a) not in results]
    best_static = max((static_name(a) for a in sweep.alphas), key=lambda m: _mean(accuracy[m], shifts)) \
        if shifts else None
    rows = {m: accuracy[m] for m in listed}
    bounds = [m for m in results if method_class(m).uses_labels]
    objectives = {n: {d: _domain_means(sweep, n, d) for d in dict.fromkeys(sweep.domains)} for n in sweep.objectives}

    say()
    say(format_table(rows, domains, id_domain=id_domain, upper_bounds=bounds))
    say("oracle α per domain (upper bound): " + ", ".join(f"{d} {a:g}" for d, a in oracle_alpha.items()))
    if best_static:
        say(f"best static α on the shift mean: {best_static} ({100 * _mean(accuracy[best_static], shifts):.1f} %)")
    needed = {static_name(0.0), static_name(1.0), static_name(0.5)} <= set(accuracy)
    checks = check_phenomenon(accuracy, oracle_alpha, id_domain, shifts) if shifts and needed else {}
    for key, res in checks.items():
        say(f"  [{'PASS' if res['pass'] else 'FAIL'}] {key}: {res['value']}")

    summary = {
        "id_domain": id_domain,
        "accuracy": accuracy,
        "oracle_alpha": oracle_alpha,
        "domains": domains,
        "mean_shifts": {m: _mean(row, shifts) for m, row in accuracy.items()} if shifts else {},
        "alphas": list(sweep.alphas),
        "static_accuracy": static,
        "objectives_vs_alpha": objectives,
        "best_static": best_static,
        "phenomenon": checks,
        "upper_bounds": bounds,
        "order": stream.spec.order,
        "setting": args.setting,
        "per_domain": args.per_domain,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "stream_spec": stream.spec.to_dict(),
        "world": {"key": world.key, "recipe": world.recipe.to_dict(), "cache_dir": str(world.cache_dir),
                  "info": world.info},
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    (out / "table.md").write_text(
        format_table(rows, domains, id_domain=id_domain, upper_bounds=bounds, fmt="markdown") + "\n\n"
        + "oracle α per domain (upper bound): " + ", ".join(f"{d} {a:g}" for d, a in oracle_alpha.items()) + "\n")
    plot_accuracy(rows, out / "accuracy.png", domains=domains, upper_bounds=bounds,
                  families={m: method_class(m).family for m in results})
    # adaptive α only: static αs are flat lines, a label-using bound is drawn as the oracle's steps
    series = {n: r.alphas for n, r in results.items() if any(a is not None for a in r.alphas)
              and method_class(n).static_alpha is None and n not in bounds}
    if series:
        plot_alpha(series, sweep.domains, out / "alpha.png", oracle_alpha=sweep.oracle_alphas())
    batch_static = {d: acc.tolist() for d, acc in sweep.accuracy_per_domain(per_sample=False).items()}
    batch_domains = list(batch_static)
    plot_objectives_vs_alpha(list(sweep.alphas), batch_static, objectives, out / "objectives_vs_alpha.png",
                             domains=_telling_domains(batch_static, objectives["entropy"], batch_domains)
                             if "entropy" in objectives and len(batch_domains) > 1 else None)
    seconds["report"] = time.perf_counter() - t0
    seconds["total"] = seconds.get("total", 0.0) + seconds["report"]
    summary_path = Path(summary_path or out / "summary.json")
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    say("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    say(f"wrote {summary_path}" + (f", {out}/" if summary_path.parent != out else ", ")
        + "table.md, <method>.jsonl and PNG plots")
    return summary


def plot_objectives_vs_alpha(alphas: Sequence[float], accuracy: Mapping[str, Sequence[float]],
                             objectives: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                             domains: Sequence[str] | None = None, columns: int = 3) -> Path:
    """One panel per domain: accuracy (%) on the left axis, each objective on the right axis.

    Args:
        alphas: the α grid (x axis).
        accuracy: domain -> accuracy in [0, 1] per α (the whole domain, static α).
        objectives: objective name -> domain -> mean of the per-batch objective per α (lower is
            better; the arg-min is marked with a dot).
        path: PNG file to write.
        domains: panels to draw (default: every domain of ``accuracy``).
    """
    from adawise.evaluation.logs import _pyplot

    plt = _pyplot()
    domains = list(domains or accuracy)
    rows = -(-len(domains) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    handles: list = []
    for ax, domain in zip(axes.flat, domains, strict=False):
        acc = [100 * a for a in accuracy[domain]]
        lines = ax.plot(alphas, acc, color="tab:blue", marker="o", ms=3, label="accuracy (%)")
        best = max(range(len(acc)), key=acc.__getitem__)
        ax.axvline(alphas[best], color="tab:blue", ls=":", lw=1)
        ax.set_ylabel("accuracy (%)", color="tab:blue", fontsize=8)
        ax.set_title(domain, fontsize=9)
        ax.set_xlabel("α", fontsize=8)
        twin = ax.twinx()
        for colour, (name, per_domain) in zip(colours, objectives.items(), strict=False):
            values = list(per_domain[domain])
            lines += twin.plot(alphas, values, color=colour, lw=1, label=name)
            low = min(range(len(values)), key=values.__getitem__)
            twin.plot([alphas[low]], [values[low]], "o", color=colour, ms=5)
        twin.set_ylabel("objective (lower = chosen)", fontsize=8)
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
        handles = handles or lines
    for ax in list(axes.flat)[len(domains):]:
        ax.axis("off")
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("accuracy (blue, dotted line: best α) and label-free objectives (dot: their minimum) vs α",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
