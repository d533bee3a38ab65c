"""AdaWiSE's options: one frozen, typed, validated :class:`AdaWiSEConfig` per preset.

``AdaWiSE(zs, ft, preset="fast", **overrides)`` starts from :data:`PRESETS` ``[preset]`` and replaces the
options passed (:meth:`AdaWiSEConfig.replace`); an unknown option, a value of the wrong type or out of
range fails at construction with an error naming the option and its valid values. The engine serialises
the configuration into the log header (:meth:`AdaWiSEConfig.as_dict`: the same keys and values as the
untyped dict of earlier versions, so a run's ``config_hash`` is unchanged for the same options).

A configuration reads like a mapping too (``config["probe_every"]``, ``set(config)``), for code written
against the earlier dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from adawise.core.bayesopt import ACQUISITIONS
from adawise.core.objectives import DIVERGENCES
from adawise.errors import InputTypeError, UsageError

__all__ = ["AdaWiSEConfig", "PRESETS"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: option -> (type test, what it must be, range test or None); a failing type test is an InputTypeError,
#: a failing range test a UsageError, both naming the option and the valid values
_Rule = tuple[Callable[[Any], bool], str, Callable[[Any], bool] | None]


def _choice(*choices: str) -> _Rule:
    return (lambda v: isinstance(v, str), f"one of {', '.join(map(repr, choices))}", lambda v: v in choices)


def _optional(rule: _Rule) -> _Rule:
    test, text, ok = rule
    return (lambda v: v is None or test(v), f"None or {text}", None if ok is None else lambda v: v is None or ok(v))


_FRACTION: _Rule = (_number, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
_POSITIVE_INT: _Rule = (_integer, "an integer >= 1", lambda v: v >= 1)
_NON_NEGATIVE: _Rule = (_number, "a number >= 0", lambda v: v >= 0)
_BOOL: _Rule = (lambda v: isinstance(v, bool), "True or False", None)
_ALPHAS: _Rule = (lambda v: isinstance(v, (tuple, list)) and all(_number(a) for a in v),
                  "a sequence of αs in [0, 1]", lambda v: all(0.0 <= a <= 1.0 for a in v))

_RULES: dict[str, _Rule] = {
    "init_alpha": _FRACTION,
    "grid_size": (_integer, "an integer >= 3", lambda v: v >= 3),
    "acquisition": _choice(*ACQUISITIONS),
    "acq_optimizer": _choice("grid", "optimize_acqf"),
    "probe_every": (lambda v: isinstance(v, str) or _integer(v), "'auto' or an integer >= 1",
                    lambda v: v == "auto" or (_integer(v) and v >= 1)),
    "probe_backoff": (_number, "a number >= 1", lambda v: v >= 1.0),
    "probe_every_max": _POSITIVE_INT,
    "ucb_beta": _NON_NEGATIVE,
    "ucb_rows": _optional(_POSITIVE_INT),
    "min_distance": _NON_NEGATIVE,
    "fit_maxiter": _optional(_POSITIVE_INT),
    "window": _POSITIVE_INT,
    "search_every": _optional(_POSITIVE_INT),
    "search_on_domain": _BOOL,
    "min_fit_points": _POSITIVE_INT,
    "noise": _choice("fit", "online"),
    "window_rows": _POSITIVE_INT,
    "window_stride": (_number, "a number >= 1 (images per window row)", lambda v: v >= 1.0),
    "window_fill": _POSITIVE_INT,
    "window_start_fill": _optional(_POSITIVE_INT),
    "window_weight": _NON_NEGATIVE,
    "window_divergence": _choice(*DIVERGENCES),
    "window_restart": _BOOL,
    "window_coverage": _BOOL,
    "window_entry": _POSITIVE_INT,
    "window_exact": _BOOL,
    "window_move": _optional((_number, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)),
    "mix_threshold": _optional((_number, "a fraction of log(classes) in [0, 1]", lambda v: 0.0 <= v <= 1.0)),
    "mix_cap": _optional((_number, "a share of the batch in (0, 1]", lambda v: 0.0 < v <= 1.0)),
    "track": _BOOL,
    "init_design": _ALPHAS,
    "search_evals": _POSITIVE_INT,
    "search_on": _choice("full", "sub"),
    "sub_batch": _optional(_POSITIVE_INT),
    "probe_evals": (_integer, "an integer >= 0", lambda v: v >= 0),
    "probe_acquisitions": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(a, str) for a in v),
                           f"a non-empty sequence of {', '.join(map(repr, ACQUISITIONS))}",
                           lambda v: all(a in ACQUISITIONS for a in v)),
    "probe_min_ei": _NON_NEGATIVE,
    "switch_margin": _NON_NEGATIVE,
    "drift_z": _optional((_number, "a number > 0", lambda v: v > 0)),
    "drift_min_rel": _NON_NEGATIVE,
    "drift_beta": (_number, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "drift_warmup": (_integer, "an integer >= 0", lambda v: v >= 0),
    "drift_rows": _POSITIVE_INT,
    "search_on_jump": _optional(_NON_NEGATIVE),
    "memory": _choice("none", "window", "decay"),
    "decay": (_number, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "refit": (lambda v: isinstance(v, str) or _integer(v), "'every', 'never' or an integer >= 1",
              lambda v: v in ("every", "never") or (_integer(v) and v >= 1)),
    "posterior": _choice("botorch", "closed_form"),
    "incumbent": _choice("observed", "model"),
}


@dataclass(frozen=True)
class AdaWiSEConfig(Mapping):
    """Every option of one AdaWiSE engine (the defaults are the ``fast`` preset's), checked at construction.

    Options:
        init_alpha: α in force before the first batch (0.5).
        track: evaluate the centre α on the full batch first and search warm (fast), or run a cold
            search on every batch (faithful).
        init_design: αs evaluated at the start of a cold search (besides αs already evaluated).
        search_evals: αs known on the search rows when a cold search stops, reused ones included
            (faithful 10; fast 6 = centre + {0, 1} + 3 proposals).
        search_on: rows of a cold search, ``"full"`` or ``"sub"`` (the sub-batch, then the winner
            confirmed on the full batch).
        sub_batch: rows of a probe (evenly strided through the batch; a pass on them counts
            ``sub_batch / B`` in ``forward_passes``); ``None`` or a batch no larger: the full batch.
        probe_every: probe on every N-th warm batch (the others cost one pass). ``"auto"`` (both
            presets): every batch on CPU, every second batch on CUDA. A probe is a pass on the
            sub-batch: on CPU it costs its share of rows (16 of 64: a quarter of a pass), on a GPU a
            small pass is launch-bound and costs a larger share (measurements behind the default:
            ``benchmarks/RESULTS.md``, "Figures behind AdaWiSE's defaults").
        probe_backoff, probe_every_max: after a probe that did not change the prediction, the
            interval between probes is multiplied by ``probe_backoff``, up to ``probe_every_max``
            batches (e.g. 2.0: 2, 4, 8); a probe that wins or a cold search resets it to
            ``probe_every``. Both presets: 1.0, a fixed interval (``benchmarks/RESULTS.md``).
        probe_evals: BO proposals probed on a probing batch (fast 1).
        probe_acquisitions: acquisitions the probes take in turn (fast: ``("logei", "ucb")``).
        probe_min_ei: skip a probe when the GP's expected improvement is below this fraction of
            the objective at the centre (0: never skip).
        switch_margin: a probe must beat the centre on the sub rows by this fraction of its
            objective before a full pass at the probe is spent.
        drift_z, drift_min_rel, drift_beta, drift_warmup: drift detector on the full-batch objective
            at the centre (exponentially weighted mean/variance with weight ``drift_beta``): a cold
            search runs when it moves more than ``drift_z`` standard deviations, the deviation
            floored at ``drift_min_rel`` of the mean, after ``drift_warmup`` batches; ``None``
            disables it (:mod:`adawise.core.drift`). Fast: warm-up 1, so a jump right after a search (a
            domain change two batches after the last one) is caught at once by the
            ``drift_z * drift_min_rel`` (20%) floor (``benchmarks/RESULTS.md``).
        drift_rows: images the detector pools into one value (64): batches of 64 or more are each one
            value; smaller ones are pooled until 64 images were seen, so a batch of 8 is not mistaken
            for a drift by the noise of its mean entropy (warm-up and statistics count pooled values).
        search_on_jump: run a cold search on the next batch when a probe moved the centre by at
            least this much (the landscape moved although the objective's level did not; None: never).
        search_every: also run a cold search (memory kept) every N batches (None: never).
        search_on_domain: run a cold search at each ``on_domain`` call (uses the loop's domain
            boundary signal; off by default so the method needs no boundaries).
        memory, window, decay: which earlier batches' observations the GP keeps (``"none"``,
            ``"window"``, ``"decay"``); fast keeps them relative to the centre.
        refit, min_fit_points, fit_maxiter: GP hyperparameter refit policy (``"every"``,
            ``"never"`` or every N observations) and its limits.
        noise: GP observation noise ``"fit"`` (hyperparameter) or ``"online"`` (residual estimate).
        posterior: ``"botorch"`` or ``"closed_form"`` (same GP, less overhead: ``benchmarks/RESULTS.md``).
        grid_size, acquisition, ucb_beta, incumbent, acq_optimizer, min_distance: options of
            :class:`~adawise.core.bayesopt.BayesOpt1D`.
        ucb_rows: a probe's UCB trade-off shrinks with the rows it is measured on: ``ucb_beta`` x
            min(1, rows / ``ucb_rows``) (``None``: ``ucb_beta`` always; ``adawise-windowed``: 64). A small
            batch's probes are noisy and 8 times as many per image at batch 8 as at batch 64; with the full
            trade-off every second one goes to an end of [0, 1] and the search spends its images there.
        window_rows, window_stride, window_entry, window_fill, window_weight, window_divergence,
        window_coverage, window_restart: the ``windowed`` objective's
            :class:`~adawise.core.objectives.ProportionWindow`: it holds ``window_rows`` rows (128), one per
            ``window_stride`` images (8: evenly strided rows of a batch, entered after the prediction, with
            their logits at α = 0 and α = 1 from small passes and at the centre from the batch's full pass),
            at least ``window_entry`` rows at a time (16, or the whole batch if smaller: with batches of 64,
            16 rows every second batch, so the small passes come half as often), ``window_fill`` rows of the
            batch when a detected drift restarts it (32) and ``window_start_fill`` when it starts, at the first
            batch and after a reset (``None``: ``window_fill``); its term is ``window_weight`` (3) x KL
            (``window_divergence``) ramped by how full it is and scaled by its class coverage
            (``window_coverage``); it restarts at a detected drift (``window_restart``; the detector then
            watches the entropy part only). With ``window_exact`` (and the closed-form grid posterior) the
            search adds the window's term exactly at every α and its GP models the batch's entropy alone.
        window_move: when rows entered the window on a batch that ran no search, the centre moves by up
            to this much (0.1) towards the α where the GP's mean + one sd of the batch term plus the window's
            new term is lowest, if that beats the centre's estimate by ``switch_margin`` (no pass: the window
            term is known at every α; the next batch's first pass is made there). ``None``: off. Needs
            ``window_exact``.
        mix_threshold, mix_cap: after the prediction's α is chosen, rows whose entropy there exceeds
            ``mix_threshold`` x log(classes) (at most a ``mix_cap`` share of the batch, the most uncertain) are mixed
            per sample with the zero-shot model by DaWin's weight (one zero-shot pass over those rows; the
            call then returns log-probabilities). ``None``: off (``adawise-windowed``: 0.3).
    """

    init_alpha: float = 0.5
    grid_size: int = 201
    acquisition: str = "logei"
    acq_optimizer: str = "grid"
    probe_every: str | int = "auto"
    probe_backoff: float = 1.0
    probe_every_max: int = 8
    ucb_beta: float = 9.0
    ucb_rows: int | None = None
    min_distance: float = 0.01
    fit_maxiter: int | None = None
    window: int = 8
    search_every: int | None = None
    search_on_domain: bool = False
    min_fit_points: int = 3
    noise: str = "online"
    window_rows: int = 128
    window_stride: float = 8.0
    window_fill: int = 32
    window_start_fill: int | None = None
    window_weight: float = 3.0
    window_divergence: str = "kl"
    window_restart: bool = True
    window_coverage: bool = True
    window_entry: int = 16
    window_exact: bool = True
    window_move: float | None = 0.1
    mix_threshold: float | None = None
    mix_cap: float | None = None
    track: bool = True
    init_design: tuple[float, ...] = (0.0, 1.0)
    search_evals: int = 6
    search_on: str = "full"
    sub_batch: int | None = 16
    probe_evals: int = 1
    probe_acquisitions: tuple[str, ...] = ("logei", "ucb")
    probe_min_ei: float = 0.0
    switch_margin: float = 2e-3
    drift_z: float | None = 4.0
    drift_min_rel: float = 0.05
    drift_beta: float = 0.2
    drift_warmup: int = 1
    drift_rows: int = 64
    search_on_jump: float | None = 0.2
    memory: str = "decay"
    decay: float = 0.7
    refit: str | int = 500
    posterior: str = "closed_form"
    incumbent: str = "model"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            test, text, ok = _RULES[f.name]
            if not test(value):
                raise InputTypeError(f"AdaWiSE option {f.name}={value!r}: must be {text}")
            if ok is not None and not ok(value):
                raise UsageError(f"AdaWiSE option {f.name}={value!r}: must be {text}")

    def replace(self, **options: Any) -> AdaWiSEConfig:
        """This configuration with ``options`` replaced; an unknown name fails naming the known ones."""
        unknown = sorted(set(options) - set(_RULES))
        if unknown:
            raise InputTypeError(f"AdaWiSE got unknown options {unknown}; known: {', '.join(sorted(_RULES))}")
        return dataclasses.replace(self, **options)

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON values (tuples as lists): what the log header records."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    # read-only mapping view (for code written against the earlier dicts)
    def __getitem__(self, name: str) -> Any:
        if name not in _RULES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self))

    def __len__(self) -> int:
        return len(_RULES)


#: the two presets (module docstring of :mod:`adawise.methods.adawise`); options passed to AdaWiSE replace theirs
PRESETS: dict[str, AdaWiSEConfig] = {
    "faithful": AdaWiSEConfig(
        noise="fit", track=False, init_design=(0.0, 0.5, 1.0), search_evals=10, sub_batch=None,
        probe_evals=0, probe_acquisitions=("logei",), switch_margin=0.0, drift_z=None, drift_warmup=3,
        search_on_jump=None, memory="none", decay=0.8, refit="every", posterior="botorch", incumbent="observed",
    ),
    "fast": AdaWiSEConfig(),
}
