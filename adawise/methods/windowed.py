"""``adawise-windowed``: AdaWiSE with the ``windowed`` objective (:class:`~adawise.core.objectives.ProportionWindow`)
and the per-sample zero-shot mix of its unsure rows, in the one configuration registered for every
stream type (objective lab and real-engine runs in ``docs/adaptive_alpha.md``; a probe every third
batch, which pays for its window and mix passes: 2.11x plain inference on CPU with it (2.24x on an earlier
machine), 2.36x there before ``window_move``, 2.54x then with a probe every second batch, the same
accuracy within the engine's stream-to-stream spread)."""

from __future__ import annotations

from typing import Any

from adawise.methods.adawise import variant
from adawise.methods.registry import register

__all__ = ["WINDOWED_DEFAULTS"]

#: the registered configuration of ``adawise-windowed`` (figures behind it: benchmarks/RESULTS.md)
WINDOWED_DEFAULTS: dict[str, Any] = {"mix_threshold": 0.3, "mix_cap": 0.5, "probe_every": 3, "ucb_rows": 64}
register("adawise-windowed")(variant("windowed", **WINDOWED_DEFAULTS))
