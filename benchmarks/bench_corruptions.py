"""Benchmark: throughput of the 15 ImageNet-C corruptions, adawise vs the reference, in one process.

For every corruption and severity, one batch of ``--batch`` (64) photos at 224 x 224 (the ten bundled
photos of ``tests/imagenet_c_reference.py``, tiled): images per second of

- the reference, image by image as ImageNet-C's loader calls it (a PIL image in, its output as an
  array out: ``np.asarray``, which also makes PIL decode the JPEG it returns lazily;
  ``imagecorruptions-imaug`` 1.1.5 for twelve corruptions, the transcription of Hendrycks's
  ``make_imagenet_c.py`` for elastic_transform, frost and pixelate), on one CPU thread;
- ``streams.corruptions.corrupt`` on the whole batch on ``--device``, under each contract of
  ``--contracts``: ``float32`` (a ``[64, 3, 224, 224]`` float32 batch in [0, 1] in, float32 out) and
  ``uint8`` (the same images as a contiguous uint8 ``[64, 3, 224, 224]`` batch, as a DataLoader
  stacks decoded images, in; uint8 out). Each has its own ratio against the same reference figure.

On the CPU everything runs in this process on one thread (torch, OpenCV, BLAS), interleaved repeat
by repeat; the ratio is the median of the process CPU time (steady when other processes share the
machine), wall times are recorded too, and so is the load average before and after. Targets: at
least 1.0x the reference for every corruption, 0.9x where the reference is PIL's C code
(jpeg_compression: libjpeg, which adawise then calls as well; pixelate), for each contract. The CPU
run also times the float32 batch's unavoidable memory traffic (read the input batch, write a fresh
output batch: ``float_io_ms``) and the same for uint8 (``uint8_io_ms``): a float32 contract cannot
be faster than its uint8 time plus the difference of the two. With ``--device cuda`` the reference is
not run: its single-thread CPU throughput is read from ``--reference-json`` (this script's CPU JSON,
e.g. ``benchmarks/results/corruptions_cpu.json``) and the target is 50x.

    python benchmarks/bench_corruptions.py --json benchmarks/results/corruptions_cpu.json
    python benchmarks/bench_corruptions.py --device cuda \\
        --reference-json benchmarks/results/corruptions_cpu.json --json OUT/corruptions_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import _one_thread  # noqa: F401  (first: one BLAS thread before numpy/torch load; the repo on sys.path)
import numpy as np
import torch
from _timing import environment, sync

from streams.corruptions import CORRUPTIONS, SEVERITIES, corrupt

PIL_REFERENCES = frozenset({"jpeg_compression", "pixelate"})


def target_for(name: str, device: str) -> float:
    """The throughput ratio each corruption must reach on ``device``."""
    if device != "cpu":
        return 50.0
    return 0.9 if name in PIL_REFERENCES else 1.0


def test_images(batch: int) -> np.ndarray:
    """``uint8 [batch, 224, 224, 3]``: the bundled photos, tiled; a seeded pattern without them."""
    try:
        from imagenet_c_reference import bundled_photos

        photos = bundled_photos()
    except ImportError:  # a GPU machine without scikit-image: same size, other content
        rng = np.random.default_rng(0)
        photos = (rng.random((10, 224, 224, 3)) * 255).astype(np.uint8)
    return np.concatenate([photos] * (batch // len(photos) + 1))[:batch]


def _timed(fn: Any, device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call (device synchronised at both ends)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


CONTRACTS = ("float32", "uint8")


def _io_floor_ms(batch: torch.Tensor, repeats: int) -> float:
    """Median process-CPU milliseconds to read ``batch`` and write it into a fresh batch (the output
    allocation ``corrupt`` uses): the memory traffic any corruption of this batch costs at least."""
    from streams.corruptions import _empty

    times = []
    for _ in range(max(9, 3 * repeats)):
        _, cpu = _timed(lambda: _empty(tuple(batch.shape), batch.device, batch.dtype).copy_(batch), batch.device)
        times.append(1e3 * cpu)
    return statistics.median(times)


def run(device_name: str, batch: int, severities: list[int], names: list[str], repeats: int,
        reference_json: str | None, contracts: tuple[str, ...] = CONTRACTS) -> dict[str, Any]:
    device = torch.device(device_name)
    images = test_images(batch)
    levels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    inputs = {"float32": (levels.float() / 255).contiguous().to(device), "uint8": levels.to(device)}
    inputs = {contract: inputs[contract] for contract in contracts}
    load_before = os.getloadavg()
    reference: dict[tuple[str, int], float] = {}
    if device.type == "cpu":
        import cv2
        from imagenet_c_reference import raw_function
        from PIL import Image

        cv2.setNumThreads(1)
        pil_images = [Image.fromarray(image) for image in images]
    elif reference_json:
        for row in json.loads(Path(reference_json).read_text())["rows"]:
            reference[(row["corruption"], row["severity"])] = row["reference_img_s"]
    rows = []
    for name in names:
        for severity in severities:
            def ours(contract: str, name: str = name, severity: int = severity) -> None:
                corrupt(inputs[contract], name, severity, seed=1)

            for contract in inputs:
                ours(contract)  # warm-up: caches, the frost bank, kernel compilation
            wall_ours: dict[str, list[float]] = {contract: [] for contract in inputs}
            cpu_ours: dict[str, list[float]] = {contract: [] for contract in inputs}
            wall_ref, cpu_ref = [], []
            for rep in range(repeats):
                if device.type == "cpu":
                    function = raw_function(name)

                    def reference_batch(function: Any = function, severity: int = severity, rep: int = rep) -> None:
                        np.random.seed(rep)
                        for image in pil_images:  # np.asarray: the output in hand (a PIL JPEG decodes lazily)
                            np.asarray(function(image, severity))

                    if rep == 0:
                        function(pil_images[0], severity)  # warm-up (numba compiles glass blur)
                    wall, cpu = _timed(reference_batch, device)
                    wall_ref.append(wall)
                    cpu_ref.append(cpu)
                for contract in inputs:
                    wall, cpu = _timed(lambda contract=contract: ours(contract), device)
                    wall_ours[contract].append(wall)
                    cpu_ours[contract].append(cpu)
            line = f"{name:18s} {severity}"
            for contract in inputs:
                ours_s = statistics.median(cpu_ours[contract] if device.type == "cpu" else wall_ours[contract])
                row = {"corruption": name, "severity": severity, "contract": contract,
                       "adawise_img_s": batch / ours_s, "adawise_wall_s": statistics.median(wall_ours[contract]),
                       "target": target_for(name, device.type)}
                if device.type == "cpu":
                    ref_s = statistics.median(cpu_ref)
                    row.update(reference_img_s=batch / ref_s, reference_wall_s=statistics.median(wall_ref),
                               ratio=ref_s / ours_s)
                elif (name, severity) in reference:
                    row.update(reference_img_s=reference[(name, severity)],
                               ratio=row["adawise_img_s"] / reference[(name, severity)])
                rows.append(row)
                ratio = f"{row['ratio']:6.2f}x" if "ratio" in row else "   n/a"
                if "reference_img_s" in row and contract == next(iter(inputs)):
                    line += f"  reference {row['reference_img_s']:8.1f} img/s"
                line += f"  {contract} {row['adawise_img_s']:8.1f} img/s {ratio}"
            print(line + f"  (target {target_for(name, device.type)}x)", flush=True)
    env = environment(device)
    env["load_average_before"] = [round(v, 2) for v in load_before]
    env["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result = {"benchmark": "bench_corruptions", "device": device_name, "batch": batch, "size": 224,
              "repeats": repeats, "contracts": list(inputs), "environment": env, "rows": rows}
    if device.type == "cpu":
        result.update({f"{contract}_io_ms".replace("float32", "float"): _io_floor_ms(x, repeats)
                       for contract, x in inputs.items()})
    return result


def markdown(result: dict[str, Any]) -> str:
    """Table: one row per corruption; per contract the throughput and ratio at each severity and the
    smallest ratio; the target."""
    severities = sorted({row["severity"] for row in result["rows"]})
    contracts = result.get("contracts", ["float32"])
    cells: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for row in result["rows"]:
        cells.setdefault(row["corruption"], {}).setdefault(row.get("contract", "float32"), {})[row["severity"]] = row
    env = result["environment"]
    span = f"s{severities[0]}-{severities[-1]}" if len(severities) > 1 else f"s{severities[0]}"
    lines = [f"#### {env['device_name']}, batch {result['batch']} at 224x224 ({env['date']})", "",
             f"`{env['command']}`", ""]
    notes = []
    if "load_average_before" in env:
        notes.append("load average (1, 5, 15 min) " + "/".join(f"{v:.1f}" for v in env["load_average_before"])
                     + " before, " + "/".join(f"{v:.1f}" for v in env["load_average_after"]) + " after")
    if "float_io_ms" in result:
        notes.append(f"reading a batch and writing a fresh one takes {result['float_io_ms']:.1f} ms in float32 "
                     f"and {result.get('uint8_io_ms', float('nan')):.1f} ms in uint8")
    if notes:
        text = "; ".join(notes)
        lines += [text[0].upper() + text[1:] + ".", ""]
    header = f"| corruption | reference img/s ({span}) |"
    rule = "|---|---|"
    for contract in contracts:
        label = {"float32": "float32 in/out", "uint8": "uint8 in/out"}.get(contract, contract)
        header += f" {label}: img/s ({span}) | {label}: ratio ({span}) | {label}: min |"
        rule += "---|---|---|"
    lines += [header + " target |", rule + "---|"]
    for name, by_contract in cells.items():
        first = by_contract[contracts[0]]
        reference = "/".join(f"{first[s]['reference_img_s']:.0f}" if "reference_img_s" in first[s] else "n/a"
                             for s in severities)
        line = f"| {name} | {reference} |"
        for contract in contracts:
            row = by_contract[contract]
            ratios = [row[s].get("ratio", float("nan")) for s in severities]
            line += (" " + "/".join(f"{row[s]['adawise_img_s']:.0f}" for s in severities) + " | "
                     + "/".join(f"{r:.2f}" for r in ratios) + f" | {min(ratios):.2f} |")
        lines.append(line + f" {first[severities[0]]['target']} |")
    ceilings = _float_ceilings(result, cells, severities)
    if ceilings:
        lines += ["", "Ceiling of the float32 contract where it is below target: the reference's time over the uint8 "
                  "contract's time plus the extra memory traffic of a float32 batch (float32 minus uint8 I/O above), "
                  "i.e. the ratio the float32 contract would reach if its conversions to and from 8 bits cost no more "
                  "than that traffic: " + "; ".join(f"{name} {text}" for name, text in ceilings.items()) + "."]
    return "\n".join(lines) + "\n"


def _float_ceilings(result: dict[str, Any], cells: dict[str, dict[str, dict[int, dict[str, Any]]]],
                    severities: list[int]) -> dict[str, str]:
    """Per 8-bit corruption whose float32 ratio misses its target: the ceiling ratios (:func:`markdown`)."""
    if "float_io_ms" not in result or "uint8_io_ms" not in result:
        return {}
    extra_s = (result["float_io_ms"] - result["uint8_io_ms"]) / 1e3
    ceilings = {}
    for name, by_contract in cells.items():
        if name not in PIL_REFERENCES or "float32" not in by_contract or "uint8" not in by_contract:
            continue  # only these two run on 8-bit levels: their uint8 time is the computation alone
        floats, levels = by_contract["float32"], by_contract["uint8"]
        if min(floats[s]["ratio"] for s in severities) >= floats[severities[0]]["target"]:
            continue
        batch = result["batch"]
        values = [(batch / floats[s]["reference_img_s"]) / (batch / levels[s]["adawise_img_s"] + extra_s)
                  for s in severities]
        ceilings[name] = "/".join(f"{v:.2f}" for v in values)
    return ceilings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per cell (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the reference runs on one)")
    parser.add_argument("--reference-json", help="CPU results whose reference figures a GPU run divides by")
    parser.add_argument("--contracts", default=",".join(CONTRACTS),
                        help="what corrupt is given and returns: float32 (in [0, 1]) and/or uint8")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    severities = [int(s) for s in args.severities.split(",")]
    names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
    contracts = tuple(c.strip() for c in args.contracts.split(",") if c.strip())
    unknown = (sorted(set(names) - set(CORRUPTIONS)) + [str(s) for s in severities if s not in SEVERITIES]
               + sorted(set(contracts) - set(CONTRACTS)))
    if unknown or not contracts:
        parser.error(f"unknown corruption(s), severities or contracts: {unknown or 'none given'}")
    result = run(args.device, args.batch, severities, names, args.repeats, args.reference_json, contracts)
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
