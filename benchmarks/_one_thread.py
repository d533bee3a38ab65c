"""Imported first by the corruption benchmarks: one BLAS / OpenMP / numba thread (set before numpy or
torch is imported, so that their pools start that way) and the repository, its tests (the reference
transcriptions) and benchmarks on ``sys.path``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "benchmarks", ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
