"""``adawise demo``: every method on the embedded world's continual stream, with a table and plots.

Loads the embedded world (:mod:`adawise.embedded.world`; on a first run from the weights the package
ships, :mod:`adawise.embedded.shipped`, or trained, about 10 minutes on 2 CPU cores, with ``--no-shipped``
or when they do not match the code), streams the clean test domain followed by a continual sequence of
shifts (:mod:`streams.shifts`), sweeps the stream once over an α grid, runs each method through
:func:`adawise.run_stream` and writes to ``--out``: ``<method>.jsonl`` logs, ``summary.json``,
``table.md`` and PNG plots (accuracy per domain, α over the stream, objectives and accuracy vs α).

One sweep serves every static-α method. It evaluates θ(α) on each batch at each grid α (the shared
:func:`~adawise.methods.ablations.sweep_stream`) and keeps the logits, so ``zeroshot`` (α = 0),
``finetuned`` (α = 1), ``wiseft`` (α = 0.5), ``oracle`` (the best α per domain, from the labels: an upper
bound) and ``adawise-grid`` (the objective's minimum per batch) are replayed from it through the same
loop, logs and tables as every other method, without a second pass; ``wiseft-0.2`` etc. come from it
too. The output ensembles ``ose`` and ``dawin`` (registered methods, unchanged) read the two endpoints'
logits of each batch from it as well. All of these are the logits the registered methods compute on
their own (same θ(α), same forward), which a test checks; the other methods run their own passes.

``--recipes e2e,r-adapter,drm`` runs all of the above once per fine-tuned endpoint (the ``--recipe`` with
that endpoint, :data:`adawise.embedded.world.ENDPOINTS`; the zero-shot model is the same), on the same
stream: e2e writes into ``--out`` exactly what a run without the option writes, every other endpoint writes
``summary-<endpoint>.json`` into ``--out`` and its logs, table and plots into ``--out/<endpoint>/``. With
several endpoints :mod:`adawise.apps.demo_endpoints` then compares them (``endpoints.md``, ``endpoints.json``,
``endpoints.png``).

Every option is checked before the world is built or loaded (:func:`check_args`: a first run trains for
minutes); a misuse is an :class:`~adawise.errors.AdawiseError` naming the option (exit code 2). The output
folder is locked while the demo writes it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adawise import options as check
from adawise.errors import MissingFileError, UsageError
from adawise.evaluation.loop import SETTINGS
from adawise.methods.base import Method
from adawise.methods.registry import make_method, method_class, registered_methods

__all__ = ["add_arguments", "main", "run_demo", "check_args"]

log = logging.getLogger(__name__)

OBJECTIVES = ("entropy", "infomax", "anchored")
DEFAULT_ALPHAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def _say(*parts: Any) -> None:
    print(*parts, flush=True)  # progress lines must show up in redirected logs as they happen


def _sample_order(text: str) -> str:
    """``--order``: a sample order of :mod:`streams.orders` (``continual`` = ``shuffled``), checked now."""
    from streams.orders import parse_sample_order

    try:
        order = parse_sample_order(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if order.kind == "given":
        raise argparse.ArgumentTypeError("the embedded stream has no given order; choose shuffled, class-sorted or "
                                         "dirichlet[:δ]")
    return order.spelled


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adawise demo``."""
    from streams.orders import ORDER_HELP, SCHEDULE_HELP, SCHEDULES

    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated registry names (default: every registered method; AdaWiSE "
                             "runs its fast preset, see --preset)")
    parser.add_argument("--order", default="shuffled", type=_sample_order,
                        help=ORDER_HELP + "; continual is the old name of shuffled")
    parser.add_argument("--schedule", default=None, choices=SCHEDULES,
                        help=SCHEDULE_HELP + "; reset_each_shift implies --setting reset_each_shift")
    parser.add_argument("--domains", default=None,
                        help="comma-separated shift names, the first one in distribution (default: clean and "
                             "11 shifts, see streams.shifts.DEFAULT_DOMAINS; 'gaussian_noise:3' sets a severity)")
    parser.add_argument("--per-domain", type=int, default=2000, help="test images per domain (default 2000)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                        help="α grid of the shared sweep: comma-separated values or a number of equally spaced "
                             "points (default %(default)s; 11 gives step 0.1 and costs 4 more passes per batch)")
    parser.add_argument("--preset", default="fast", help="AdaWiSE preset: fast (default) or faithful (slow)")
    parser.add_argument("--setting", default="continual", choices=SETTINGS,
                        help="continual (never reset, the default) or reset_each_shift")
    parser.add_argument("--recipe", default="full", help="world recipe: full (default), tiny, or a JSON file")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated fine-tuned endpoints to compare (e2e, r-adapter, drm), each applied to "
                             "--recipe; e2e writes into --out as without this option, every other endpoint writes "
                             "summary-<endpoint>.json into --out and its logs, table and plots into --out/<endpoint>/; "
                             "with several, endpoints.md, endpoints.json and endpoints.png compare them "
                             "(default: --recipe's own endpoint, e2e unless it names another)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST directory (default: the Debian package's)")
    parser.add_argument("--retrain", action="store_true", help="train the world again even if it is cached")
    parser.add_argument("--no-shipped", action="store_true",
                        help="train the world (about 10 minutes) even when the package ships its weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stream and of the runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on 2 cores shared with other work, two threads "
                             "ran up to 10x slower; 0 keeps torch's default)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that run the methods side by side, one torch thread each (default: one per "
                             "CPU core, at most 4; 1 runs them one after the other; figures are identical either way)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class _Recorder:
    """Stands in for the AlphaEvaluator in ``sweep_stream`` and keeps every batch's logits at every α."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator
        self.batches: list[dict[float, Tensor]] = []
        self.sums: list[float] = []  # a fingerprint of each batch, checked on replay

    def prepare_input(self, images: Any) -> Any:
        self.batches.append({})
        self.sums.append(float(images.sum()))
        return self.evaluator.prepare_input(images)

    def logits(self, alpha: float, images: Any, fraction: float = 1.0) -> Tensor:
        out = self.evaluator.logits(alpha, images, fraction)
        self.batches[-1][alpha] = out
        return out

    def replay(self, t: int, images: Tensor, alpha: float, who: str) -> Tensor:
        """The logits of batch ``t`` at ``alpha``, after checking ``images`` is that batch."""
        if t >= len(self.batches) or abs(float(images.sum()) - self.sums[t]) > 1e-3 * max(1.0, abs(self.sums[t])):
            raise RuntimeError(f"{who}: batch {t} is not the batch that was swept; replay the swept stream only")
        return self.batches[t][alpha]


class _Endpoint(nn.Module):
    """One endpoint (α = 0 or 1) as a module that returns the sweep's logits of each batch, in order."""

    def __init__(self, record: _Recorder, alpha: float) -> None:
        super().__init__()
        self.record, self.alpha, self.t = record, alpha, 0

    def forward(self, images: Tensor) -> Tensor:
        self.t += 1
        return self.record.replay(self.t - 1, images, self.alpha, "an endpoint")


class _Replay(Method):
    """A static-α method replayed from the sweep: batch *t* gets the logits the sweep computed at
    ``choose(t, domain)``. Valid only on the swept stream, which is checked batch by batch.

    ``forward_passes`` reports what the method costs on its own (one pass; a pass per grid α for the
    grid search), not the replay's zero.
    """

    def __init__(self, record: _Recorder, choose: Callable[[int, str | None], float], passes: float,
                 options: dict[str, Any], uses_labels: bool = False) -> None:
        super().__init__()
        self.record, self.choose, self.passes, self._options = record, choose, float(passes), options
        self.uses_labels = uses_labels
        self.t, self.domain, self._alpha = 0, None, None

    def on_domain(self, domain: str) -> None:
        self.domain = domain

    def forward(self, images: Any) -> Tensor:
        self.t += 1
        self._alpha = self.choose(self.t - 1, self.domain)
        return self.record.replay(self.t - 1, images, self._alpha, self.name)

    @property
    def alpha(self) -> float | None:
        return self._alpha

    @property
    def info(self) -> dict[str, Any]:
        return {"forward_passes": self.passes, "replayed_from_sweep": True}

    def options(self) -> dict[str, Any]:
        return {**self._options, "replayed_from_sweep": True}


def _replay(name: str, sweep: Any, record: _Recorder) -> _Replay | None:
    """The replayed version of ``name`` (its class's :meth:`~adawise.methods.base.Method.sweep_replay`), or
    ``None`` if it must run on its own."""
    cls = method_class(name)
    plan = cls.sweep_replay(sweep)
    if plan is None:
        return None
    choose, passes, options = plan
    method = _Replay(record, choose, passes, options, uses_labels=cls.uses_labels)
    method.name = name
    return method


def _build(name: str, world: Any, args: argparse.Namespace, record: _Recorder) -> Method:
    """``name`` around the world's models: output ensembles get the endpoints' logits from the sweep; the
    options the method declares (``app_options``) come from the command line or the world."""
    cls = method_class(name)
    supply = {"preset": lambda: args.preset, "seed": lambda: args.seed, "index": lambda: _zsf_index(world, args)}
    options = {k: supply[k]() for k in sorted(cls.app_options) if k in supply}
    if cls.output_ensemble:
        return make_method(name, zeroshot=_Endpoint(record, 0.0), finetuned=_Endpoint(record, 1.0), **options)
    return make_method(name, zeroshot=world.zeroshot, finetuned=world.finetuned, **options)


def _zsf_index(world: Any, args: argparse.Namespace) -> Any:
    """VRF's Zero-Shot-Failure index over the world's fine-tuning data, cached beside the weights."""
    from adawise.methods.vrf import check_index_models
    from adawise.methods.zsf import ZSFIndex, build_zsf_index
    from streams.base import from_tensors

    path = Path(world.cache_dir) / "zsf.safetensors"
    if path.is_file():
        try:
            index = ZSFIndex.load(path)
            check_index_models(index, world.zeroshot, world.finetuned)
            return index
        except Exception as err:  # noqa: BLE001 - a stale or damaged index is rebuilt
            log.warning("rebuilding the ZSF index at %s (%s)", path, err)
    index = build_zsf_index(world.zeroshot, world.finetuned,
                            from_tensors(world.source_images, world.source_labels, "source", 500),
                            holdout=from_tensors(world.holdout_images, world.holdout_labels, "holdout", 500),
                            progress=not args.no_progress, seed=args.seed)
    index.save(path)
    return index


def _alphas(text: Any) -> list[float]:
    from adawise.methods.ablations import alpha_grid

    if not isinstance(text, str):
        raise UsageError(f"--alphas must be comma-separated numbers or a count, got {text!r}")
    try:
        grid = int(text) if text.strip().isdigit() else [float(a) for a in text.split(",") if a.strip()]
        alphas = alpha_grid(grid)
    except ValueError as err:
        raise UsageError(f"--alphas {text!r}: {err}; pass numbers in [0, 1] such as 0,0.5,1, or a count such as 11"
                         ) from None
    if not {0.0, 1.0} <= set(alphas):
        raise UsageError(f"--alphas: the α grid must contain 0 and 1 (the endpoints), got {alphas}")
    return alphas


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Every option checked before any world is built or loaded; returns the parsed ``names``, ``alphas``,
    ``domains`` and ``recipes``."""
    from adawise.methods.adawise import PRESETS
    from streams.fashion import FashionMNISTError, find_root
    from streams.shifts import get_shift

    check.integer(args.per_domain, "--per-domain", minimum=1, maximum=10000)
    check.integer(args.batch_size, "--batch-size", minimum=1)
    check.integer(args.seed, "--seed", minimum=0, maximum=2**63 - 1)
    check.integer(args.threads, "--threads", minimum=0)
    if getattr(args, "workers", None) is not None:
        check.integer(args.workers, "--workers", minimum=1, maximum=64)
    known = registered_methods()
    names = [n.strip() for n in args.methods.split(",") if n.strip()] if args.methods else list(known)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise UsageError(f"--methods: unknown methods {unknown or [args.methods]}; registered: {', '.join(known)}")
    alphas = _alphas(args.alphas)
    if args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r}: choose from {', '.join(PRESETS)}")
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    for d in domains or []:
        try:
            get_shift(d)
        except (KeyError, ValueError) as err:
            raise UsageError(f"--domains: {str(err).strip(chr(39))}; pass shift names of streams.shifts.SHIFTS "
                             "(e.g. clean,gaussian_noise:3,invert)") from None
    if domains is not None and not domains:
        raise UsageError("--domains is empty; pass comma-separated shift names such as clean,gaussian_noise")
    recipes = _endpoints(args, domains)
    if recipes is None:
        from adawise.embedded.world import EmbeddedRecipe

        _resolve_recipe(EmbeddedRecipe, args.recipe)
    if args.data is not None:
        check.input_dir(args.data, "--data", "Fashion-MNIST folder")
    try:
        find_root(args.data)
    except FashionMNISTError as err:
        raise MissingFileError(f"--data: {err}") from None
    check.output_dir(args.out, "--out")
    if getattr(args, "schedule", None) == "reset_each_shift":
        args.setting = "reset_each_shift"  # the schedule names the setting (the same batches as continual)
    return {"names": names, "alphas": alphas, "domains": domains, "recipes": recipes}


def _schedule(args: argparse.Namespace) -> str | None:
    """The schedule of domains (``--schedule``; ``None``: continual, or what an old ``--order`` names)."""
    return getattr(args, "schedule", None)


def _resolve_recipe(cls: Any, recipe: Any) -> Any:
    """``EmbeddedRecipe.resolve`` with every way a recipe can be wrong as a UsageError naming --recipe."""
    try:
        return cls.resolve(recipe)
    except (ValueError, TypeError, KeyError) as err:
        raise UsageError(f"--recipe {recipe}: {err}") from None


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``adawise demo`` does; returns the summary that is written to ``summary.json`` (with
    several ``--recipes``: the combined numbers written to ``endpoints.json``)."""
    from adawise.evaluation.logs import exclusive

    checked = check_args(args)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        with exclusive(Path(args.out)):
            return _run(args, checked)
    finally:
        torch.set_num_threads(threads)


def _endpoints(args: argparse.Namespace, domains: list[str] | None) -> dict[str, Any] | None:
    """``--recipes`` as endpoint name -> recipe (the ``--recipe`` with that endpoint), checked before any work;
    ``None`` without ``--recipes``: the ``--recipe``'s own world, written into ``--out`` as always."""
    from adawise.embedded.world import ENDPOINTS, EmbeddedRecipe

    if getattr(args, "recipes", None) is None:
        return None
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENDPOINTS]
    if unknown or not names or len(set(names)) < len(names):
        problem = f"unknown endpoints {', '.join(unknown)}" if unknown else "endpoints must be distinct and not empty"
        raise UsageError(f"--recipes {args.recipes!r}: {problem}; valid: {', '.join(ENDPOINTS)}")
    if len(names) > 1 and domains is not None and len(domains) < 2:
        raise UsageError("several --recipes are compared on the mean over the shifts: --domains needs "
                         "at least one shift after the first (in-distribution) domain")
    base = _resolve_recipe(EmbeddedRecipe, args.recipe)
    return {name: base.with_endpoint(name) for name in names}


def _run(args: argparse.Namespace, checked: dict[str, Any]) -> dict[str, Any]:
    names, alphas, domains, recipes = (checked[k] for k in ("names", "alphas", "domains", "recipes"))
    out = Path(args.out)
    if recipes is None:
        return _run_world(args, args.recipe, out, out / "summary.json", names, alphas, domains, retrain=args.retrain)
    summaries, files = {}, {}
    for i, (endpoint, recipe) in enumerate(recipes.items()):
        _say(f"\n=== endpoint {endpoint} ===")
        files[endpoint] = "summary.json" if endpoint == "e2e" else f"summary-{endpoint}.json"
        # --retrain: the shared pretraining once (with the first endpoint), then each endpoint's fine-tuning
        retrain = (True if i == 0 else "endpoint") if args.retrain else False
        summaries[endpoint] = _run_world(args, recipe, out if endpoint == "e2e" else out / endpoint,
                                         out / files[endpoint], names, alphas, domains, endpoint=endpoint,
                                         retrain=retrain)
    if len(summaries) == 1:
        return next(iter(summaries.values()))
    from adawise.apps.demo_endpoints import write_endpoints_report

    return write_endpoints_report(out, summaries, files, say=_say)


def _run_world(args: argparse.Namespace, recipe: Any, out: Path, summary_path: Path, names: list[str],
               alphas: list[float], domains: list[str] | None, endpoint: str | None = None,
               retrain: bool | str = False) -> dict[str, Any]:
    """The demo on one world: logs, table and plots into ``out``, the summary into ``summary_path``."""
    from tqdm.auto import tqdm

    from adawise.apps.demo_plots import write_report
    from adawise.core.alpha_engine import AlphaEvaluator
    from adawise.embedded.world import embedded_stream, load_embedded
    from adawise.evaluation.loop import run_stream
    from adawise.methods.ablations import sweep_stream

    progress = not args.no_progress
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = t = time.perf_counter()

    world = load_embedded(recipe, data=args.data, retrain=retrain, progress=progress,
                          shipped=not getattr(args, "no_shipped", False))
    seconds["world"] = time.perf_counter() - t
    how = ("trained" if world.info.get("trained") else
           "loaded from the shipped weights" if world.info.get("shipped") else "loaded from cache")
    _say(f"embedded world {world.key} ({world.recipe.name}, endpoint {world.recipe.endpoint}) {how} in "
         f"{seconds['world']:.1f} s: {world.cache_dir}")

    t = time.perf_counter()
    domains = domains or list(world.domains)
    stream = embedded_stream(world, domains=domains, order=args.order, schedule=_schedule(args),
                             per_domain=args.per_domain, batch_size=args.batch_size, seed=args.seed, progress=progress)
    seconds["stream"] = time.perf_counter() - t
    _say(f"stream: {len(domains)} domains x {args.per_domain} images, {len(stream)} batches of {args.batch_size}, "
         f"order {args.order}, schedule {stream.spec.order}, setting {args.setting} "
         f"(built in {seconds['stream']:.1f} s)")

    t = time.perf_counter()
    record = _Recorder(AlphaEvaluator(world.zeroshot, world.finetuned))
    bar = tqdm(stream, total=len(stream), desc=f"α sweep ({len(alphas)} αs)", leave=False,
               disable=None if progress else True)  # None: off when the output is not a terminal
    sweep = sweep_stream(record, bar, alphas, list(OBJECTIVES))
    seconds["sweep"] = time.perf_counter() - t
    _say(f"α sweep over {len(sweep.alphas)} αs: {seconds['sweep']:.1f} s")

    # the run logs' config: the options (--recipes only when given) and the world, with the endpoint if chosen
    # (--workers changes how the methods are scheduled, never a figure: not part of the config, so a resume
    # with another --workers continues the same logs)
    config = {k: v for k, v in vars(args).items()
              if k not in ("func", "workers") and not (k == "recipes" and v is None)}
    config |= {"world": world.key} | ({"endpoint": endpoint} if endpoint else {})
    results: dict[str, Any] = {}
    replays = {name: _replay(name, sweep, record) for name in names}  # None: the method runs on its own
    own = [name for name in names if replays[name] is None]
    workers = _workers(args, len(own))
    if workers > 1:  # the methods that run on their own, side by side in forked processes (one thread each)
        global _JOB
        _JOB = (world, args, record, stream, config, out)
        context = multiprocessing.get_context("fork")
        with context.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for name, result, spent in pool.imap_unordered(_run_own, own, chunksize=1):
                results[name], seconds[name] = result, spent
                _say(f"  {name:18s} {100 * result.accuracy:5.1f} %  {spent:6.1f} s (worker)")
        _JOB = None
    for name in names:
        if name in results:
            continue
        t = time.perf_counter()
        method = replays[name] or _build(name, world, args, record)
        results[name] = run_stream(method, stream, log=out / f"{name}.jsonl", setting=args.setting, seed=args.seed,
                                   config=config, progress=progress)
        seconds[name] = time.perf_counter() - t
        how = (" (replayed from the sweep)" if isinstance(method, _Replay)
               else " (endpoint logits from the sweep)" if method_class(name).output_ensemble else "")
        _say(f"  {name:18s} {100 * results[name].accuracy:5.1f} %  {seconds[name]:6.1f} s{how}")
    results = {name: results[name] for name in names}
    seconds["total"] = time.perf_counter() - started
    return write_report(out, world, stream, sweep, results, seconds, args, say=_say, summary_path=summary_path)


#: what a forked worker runs on (the world, the options, the sweep, the stream, the log config, the folder),
#: set by the parent just before it forks and inherited by the workers
_JOB: tuple[Any, ...] | None = None


def _workers(args: argparse.Namespace, jobs: int) -> int:
    """How many worker processes run the methods: ``--workers``, else one per CPU core (at most 4); 1 when
    there is one job or fewer, or when torch runs on several threads or has initialised CUDA (no fork then)."""
    wanted = getattr(args, "workers", None)
    if wanted is None:
        wanted = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if jobs <= 1 or torch.get_num_threads() != 1 or torch.cuda.is_initialized():
        return 1
    return max(1, min(int(wanted), jobs))


def _run_own(name: str) -> tuple[str, Any, float]:
    """In a worker: run ``name`` on the demo's stream (as the parent would, without a progress bar)."""
    from adawise.evaluation.loop import run_stream

    assert _JOB is not None, "_run_own runs in a worker forked by _run_world"
    world, args, record, stream, config, out = _JOB
    t = time.perf_counter()
    result = run_stream(_build(name, world, args, record), stream, log=out / f"{name}.jsonl", setting=args.setting,
                        seed=args.seed, config=config, progress=False)
    return name, result, time.perf_counter() - t


def main(args: argparse.Namespace) -> int:
    """Entry point of ``adawise demo``."""
    run_demo(args)
    return 0
