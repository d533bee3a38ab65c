"""Timing helpers shared by the benchmarks: synchronised clocks, repeated calls, medians, environment.

On a GPU every reading is wall-clock time after ``torch.cuda.synchronize``; on a CPU both wall time
and the process's CPU time are read (the CPU time stays steady when other processes share the
machine; with one torch thread it equals the wall time of an idle machine).
"""

from __future__ import annotations

import datetime
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["sync", "Stopwatch", "time_ms", "median", "environment"]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Stopwatch:
    """Wall and process-CPU seconds of a region, the device synchronised at both ends.

    ``with Stopwatch(device) as sw: ...`` then ``sw.wall``, ``sw.cpu``.
    """

    device: torch.device
    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def time_ms(fn: Callable[[], Any], device: torch.device | str, warmup: int, reps: int) -> list[float]:
    """Wall milliseconds of ``fn`` per call, ``warmup`` calls excluded (CUDA synchronised)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        with Stopwatch(device) as sw:
            fn()
        times.append(1e3 * sw.wall)
    return times


def median(values: Sequence[float]) -> float:
    """The median (NaN for an empty sequence)."""
    return statistics.median(values) if values else float("nan")


def environment(device: torch.device | str) -> dict[str, Any]:
    """Device name, library versions, threads, date and the command line, for a results record."""
    device = torch.device(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available()
            else (platform.processor() or platform.machine()) + f", {torch.get_num_threads()} torch thread(s)")
    return {
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
