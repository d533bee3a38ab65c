"""The fidelity table of docs/imagenet_c.md: adawise's strength over the reference's, 15 x 5.

Strength = mean |corrupted - clean| (in [0, 1] units) on the ten bundled photos at 224 x 224
(``tests/imagenet_c_reference.py``: the reference per corruption, the photos and their crop); random
corruptions average over ``--scale`` times the reference test's draws per photo (adawise: four times
as many again); deterministic ones add the PSNR of adawise's output against the reference's. Frost
is measured with both frost sources, and the frost layers' statistics (mean brightness, spread of the
crop mean from draw to draw, mean |difference| of two draws) are printed for the reference
photographs and for adawise's texture bank. Needs the ``[reference]`` extra.

    python benchmarks/imagenet_c_table.py --json benchmarks/results/imagenet_c_table.json \\
        --markdown benchmarks/results/imagenet_c_table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import _one_thread  # noqa: F401  (first: one BLAS thread before numpy/torch load; the repo on sys.path)
import numpy as np
import torch
from _timing import environment
from imagenet_c_reference import REFERENCE_SOURCE, bundled_photos, psnr, reference_function
from test_corruptions_reference import REFERENCE_DRAWS

from streams.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, SEVERITIES, corrupt


def measure(name: str, photos: np.ndarray, scale: int, **options: Any) -> list[dict[str, float]]:
    reference = reference_function(name)
    clean = photos.astype(np.float64) / 255
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255
    draws = scale * REFERENCE_DRAWS.get(name, 1) if name in RANDOM_CORRUPTIONS else 1
    rows = []
    for severity in SEVERITIES:
        per_draw, outputs = [], []  # the reference's strength per draw (mean over the photos)
        for d in range(draws):
            strengths = []
            for i, photo in enumerate(photos):
                out = reference(photo, severity, 104729 * d + i) / 255
                strengths.append(np.abs(out - clean[i]).mean())
                if draws == 1:
                    outputs.append(out)
            per_draw.append(float(np.mean(strengths)))
        row = {"severity": severity, "reference": float(np.mean(per_draw)), "draws_per_photo": draws}
        if name in RANDOM_CORRUPTIONS:  # adawise: 4 draws per photo per batch of 40
            batch = x.repeat(4, 1, 1, 1)
            ours = [float((corrupt(batch, name, severity, seed=17, indices=torch.arange(40) + 40 * d, **options)
                           - batch).abs().mean()) for d in range(draws)]
            row["adawise"] = float(np.mean(ours))
            # standard error of the ratio from the draw-to-draw spread of both means (same photos)
            variance = np.var(per_draw, ddof=1) / draws / row["reference"] ** 2 + np.var(ours, ddof=1) / draws / row[
                "adawise"] ** 2
            row["ratio_se"] = float(np.sqrt(variance) * row["adawise"] / row["reference"])
        else:
            out = corrupt(x, name, severity).permute(0, 2, 3, 1).double().numpy()
            row["adawise"] = float(np.abs(out - clean).mean())
            row["psnr_db"] = psnr(out, np.stack(outputs))
        row["ratio"] = row["adawise"] / row["reference"]
        rows.append(row)
    return rows


def frost_statistics(draws: int = 400) -> dict[str, dict[str, float]]:
    """Mean brightness, std of the crop mean over draws, mean |a - b| of two draws: photos vs texture."""
    from imagenet_c_reference import hendrycks_frost

    zero = np.zeros((224, 224, 3))
    stats = {}
    np.random.seed(0)
    layers = np.stack([hendrycks_frost(zero, 1) / 255 / 0.4 for _ in range(draws)])  # severity 1: 0.4 * frost
    stats["reference photographs"] = _layer_stats(layers)
    for source in ("texture", "photos"):
        layer = corrupt(torch.zeros(draws, 3, 224, 224), "frost", 1, seed=3, indices=torch.arange(draws),
                        frost_source=source) / 0.4
        stats[f"adawise {source}"] = _layer_stats(layer.permute(0, 2, 3, 1).numpy())
    return stats


def _layer_stats(layers: np.ndarray) -> dict[str, float]:
    means = layers.reshape(len(layers), -1).mean(axis=1)
    half = len(layers) // 2
    return {"mean": float(means.mean()), "crop_mean_std": float(means.std()),
            "mean_abs_diff_two_draws": float(np.abs(layers[:half] - layers[half:2 * half]).mean())}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| corruption | reference | draws/photo | s1 | s2 | s3 | s4 | s5 |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in result["ratios"].items():
        cells = []
        for row in rows:
            cell = f"{row['ratio']:.3f}"
            if "psnr_db" in row:
                cell += f" ({row['psnr_db']:.1f} dB)" if np.isfinite(row["psnr_db"]) else " (exact)"
            else:
                cell += f" ± {row['ratio_se']:.3f}"
            cells.append(cell)
        source = REFERENCE_SOURCE[name.split(" ")[0]]
        lines.append(f"| {name} | {'Hendrycks' if source == 'hendrycks' else 'imagecorruptions-imaug'} | "
                     f"{rows[0]['draws_per_photo']} | " + " | ".join(cells) + " |")
    lines += ["", "| frost layer | mean | std of the crop mean | mean abs. difference of two draws |",
              "|---|---|---|---|"]
    for label, stats in result["frost_layers"].items():
        lines.append(f"| {label} | {stats['mean']:.3f} | {stats['crop_mean_std']:.3f} | "
                     f"{stats['mean_abs_diff_two_draws']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=3, help="draws: this many times the reference test's")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    torch.set_num_threads(1)
    photos = bundled_photos()
    ratios: dict[str, Any] = {}
    for name in args.corruptions.split(","):
        ratios[name] = measure(name, photos, args.scale)
        if name == "frost":
            ratios["frost (photos)"] = measure("frost", photos, args.scale, frost_source="photos")
        print(name, " ".join(f"{row['ratio']:.3f}" for row in ratios[name]), flush=True)
    result = {"benchmark": "imagenet_c_table", "environment": environment("cpu"), "scale": args.scale,
              "ratios": ratios, "frost_layers": frost_statistics()}
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
