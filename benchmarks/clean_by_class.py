r"""Per-class accuracy on the in-distribution domain: the zero-shot and fine-tuned models against the lab's
simulated ``adawise-windowed`` (``windowed (online)``), from the objective lab's cached logits.

    python benchmarks/clean_by_class.py --seed-worlds 0,1,2 \
        --streams class-sorted/continual,dirichlet:0.1/continual,shuffled/mixed
    python benchmarks/clean_by_class.py --seed-worlds 2 --zero-shot-shares clean,gaussian_noise,contrast

The second form prints the zero-shot model's mean probability and argmax share of every class per domain (and
over all the lab's domains): whether a class it misses on clean images is missed over the whole stream too.

Shows where the method's clean accuracy goes (``docs/adaptive_alpha.md``, "the shirt class").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import objective_lab as lab  # noqa: E402


def class_recall(hits: torch.Tensor, labels: torch.Tensor, classes: int) -> list[float]:
    """Accuracy % per class of per-sample hits (``nan`` for a class with no sample)."""
    out = []
    for c in range(classes):
        sel = labels == c
        out.append(100 * float(hits[sel].double().mean()) if bool(sel.any()) else float("nan"))
    return out


def print_zero_shot_shares(cache: lab.LabLogits, domains: list[str], seed_world: int) -> None:
    """Per class, the zero-shot model's mean probability and argmax share on each domain and on all of them."""
    probs = {d: torch.softmax(cache.logits[d][0], -1) for d in cache.logits}
    classes = next(iter(probs.values())).shape[-1]
    print(f"\n## world seed {seed_world} ({cache.world}): zero-shot mean probability (argmax share) per class\n")
    print("| domain | " + " | ".join(f"{c}" for c in range(classes)) + " |")
    print("|---|" + "---|" * classes)
    for name, p in [(d, probs[d]) for d in domains] + [("all domains", torch.cat(list(probs.values())))]:
        share = torch.bincount(p.argmax(-1), minlength=classes).double() / len(p)
        cells = [f"{float(m):.3f} ({float(a):.3f})" for m, a in zip(p.mean(0), share, strict=True)]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed-worlds", default="0")
    p.add_argument("--streams", default="class-sorted/continual,dirichlet:0.1/continual,shuffled/mixed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--zero-shot-shares", default="", help="comma-separated domains: print the zero-shot shares")
    args = p.parse_args(argv)
    for seed_world in [int(s) for s in args.seed_worlds.split(",")]:
        cache = lab.load_logits(list(lab.LAB_DOMAINS), seed_world=seed_world)
        if args.zero_shot_shares:
            print_zero_shot_shares(cache, [d for d in args.zero_shot_shares.split(",") if d], seed_world)
            continue
        sub = lab.on_grid(cache)
        classes = next(iter(sub.logits.values())).shape[-1]
        header = " | ".join(f"{c}" for c in range(classes))
        print(f"\n## world seed {seed_world} ({cache.world}): clean accuracy % per class\n")
        print(f"| stream | row | {header} | clean |")
        print("|---|---|" + "---|" * (classes + 1))
        for spec in args.streams.split(","):
            order, _, schedule = spec.partition("/")
            s = lab.lab_stream(sub, order, schedule or "continual", args.batch_size)
            clean = s.domain == 0
            rows = {"zeroshot": s.correct[0], "finetuned": s.correct[-1],
                    "windowed (online)": lab.windowed_simulated(s)[0]}
            for name, hits in rows.items():
                recall = class_recall(hits[clean], s.labels[clean], classes)
                acc = 100 * float(hits[clean].double().mean())
                print(f"| {spec} | {name} | " + " | ".join(f"{r:.1f}" for r in recall) + f" | {acc:.2f} |")


if __name__ == "__main__":
    main()
