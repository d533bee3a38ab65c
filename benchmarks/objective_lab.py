"""The objective lab: label-free α objectives compared on equal terms, from cached θ(α) logits.

Why: the engine (:class:`adawise.AdaWiSE`) chooses α by a BO search of an objective; when it trails a
static α, is it the objective or the search? Here every objective gets the *exact* per-batch minimum
over an α grid (no search error), on any sample order × schedule × batch size × setting, in seconds,
because the logits of θ(α) at every grid α for every test image of every domain are computed once and
cached (:func:`load_logits`, keyed by the world, the α grid and the shift code hash, so a change to the
corruption code re-caches by itself). Objectives that need past batches see them exactly as an online
method would (windows restart at a domain boundary in the ``reset_each_shift`` setting).

Rows of the table (:data:`CHOOSERS`): the static αs and the best of them in hindsight, the per-domain
oracle (the best static α per domain, from the labels: an upper bound), the per-sample oracle (any
grid α right), and the objectives: ``entropy`` (the paper's), ``infomax``, ``anchored`` (KL to the
zero-shot class proportions of the same batch), ``window`` (both class proportions over the last 16
batches at every α, KL weight 2: what an online method cannot compute directly) and ``windowed
(online)``: ``adawise-windowed`` simulated with only what it computes (:func:`windowed_simulated`:
its proportion window of strided rows interpolated in α, the ramp, the restart at a detected drift,
the per-sample mix with the zero-shot model), the BO search replaced by the grid minimum.

Streams: the embedded world's test images (``--per-domain`` per domain, the same seeded subset as
``adawise demo``), the orders and schedules of :mod:`streams.orders` in the same sample order
:func:`streams.fashion.sample_plan` gives ``embedded_stream``; shift mean = mean accuracy over the
domains after the first (in-distribution) one, per domain even when batches mix domains.

Usage::

    python benchmarks/objective_lab.py                            # the README table (19 shifts, 4 stream types)
    python benchmarks/objective_lab.py --batch-sizes 8,1 --streams shuffled/continual
    python benchmarks/objective_lab.py --seed-world 1 --json runs/lab_s1.json   # another world (trained if absent)
    python benchmarks/objective_lab.py --domains clean,frost,gaussian_noise:3   # shifts not tuned on
    python benchmarks/objective_lab.py --engine adawise,adawise-windowed         # + the real engine, same streams
    python benchmarks/objective_lab.py --summarise runs/lab_s0.json,runs/lab_s1.json,runs/lab_s2.json  # mean ± sd

The first run on a world computes and caches the logits (about 7 minutes on one CPU thread for 20
domains x 2,000 images x 21 αs, the shifted images included); later runs replay in seconds (the real
engine's rows take minutes per stream).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adawise.core.objectives import DIVERGENCES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the 19 shifts of issue 16 (the demo's 11, shot_noise, glass_blur, zoom_blur, fog, pixelate,
#: jpeg_compression, silhouette, upside_down), corruptions in ImageNet-C order, renditions last
LAB_DOMAINS: tuple[str, ...] = (
    "clean", "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "invert", "rotate", "sketch", "silhouette", "upside_down",
)
#: the stream types of the README table: (sample order, schedule)
STREAM_TYPES: tuple[tuple[str, str], ...] = (
    ("shuffled", "continual"), ("class-sorted", "continual"), ("dirichlet:0.1", "continual"), ("shuffled", "mixed"),
)


# ------------------------------------------------------------------------------------------ the cache
@dataclass
class LabLogits:
    """θ(α) logits of every domain: ``logits[name]`` is ``[A, N, C]`` over ``alphas`` and the ``N`` images
    (the same images in every domain, in :func:`streams.fashion.domain_images` order), ``labels`` [N]."""

    alphas: list[float]
    logits: dict[str, Tensor]
    labels: Tensor
    world: str
    shift_hash: str
    seed: int

    @property
    def domains(self) -> list[str]:
        return list(self.logits)


def _world(seed_world: int, recipe: str) -> Any:
    from adawise.embedded.world import EmbeddedRecipe, load_embedded

    base = EmbeddedRecipe.resolve(recipe)
    return load_embedded(dataclasses.replace(base, seed=seed_world) if seed_world != base.seed else base)


def load_logits(domains: Sequence[str], world: Any = None, *, seed_world: int = 0, recipe: str = "full",
                alphas: Sequence[float] | int = 21, per_domain: int = 2000, seed: int = 0,
                cache_dir: str | Path | None = None, progress: bool = True) -> LabLogits:
    """Cached θ(α) logits of each domain (computed and stored on first use, one file per domain).

    The cache key holds the world's key, the shift code hash (:func:`streams.fashion._shift_code_hash`),
    the α grid, ``per_domain`` and the stream ``seed`` (the test subset and the shift draws).
    """
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from adawise.core.alpha_engine import AlphaEvaluator
    from adawise.embedded.world import cache_root
    from adawise.methods.ablations import alpha_grid
    from streams.fashion import _shift_code_hash, _shifted, domain_images

    world = world if world is not None else _world(seed_world, recipe)
    grid = alpha_grid(alphas)
    shift_hash = _shift_code_hash()
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "lab"
    folder = root / f"{world.key}-{shift_hash}-a{len(grid)}-n{per_domain}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    x, y, pick = domain_images(world.test_images, world.test_labels, per_domain, seed)
    out: dict[str, Tensor] = {}
    evaluator = None
    for name in tqdm(list(domains), desc="lab logits", disable=not progress, leave=False):
        path = folder / f"{name.replace(':', '-')}.safetensors"
        if path.is_file():
            try:
                out[name] = load_file(str(path))["logits"]
                continue
            except Exception:  # noqa: BLE001 - a damaged entry is recomputed
                pass
        import zlib

        images = _shifted(x, name, zlib.crc32(f"{seed}:{name}".encode()), world.streams_dir, indices=pick)
        evaluator = evaluator or AlphaEvaluator(world.zeroshot, world.finetuned)
        rows = []
        for a in grid:
            rows.append(torch.cat([evaluator.logits(a, images[i:i + 500].contiguous())
                                   for i in range(0, len(images), 500)]).float())
        out[name] = torch.stack(rows)
        tmp = path.with_suffix(".tmp")
        save_file({"logits": out[name].contiguous()}, str(tmp))
        tmp.replace(path)
    return LabLogits(grid, out, y.clone(), world.key, shift_hash, seed)


def on_grid(cache: LabLogits, alphas: int = 11) -> LabLogits:
    """The cache on a coarser grid of ``alphas`` equally spaced αs (a divisor of its 21 minus one: 11 is 0.1
    steps)."""
    step = 20 // (alphas - 1)
    return LabLogits(cache.alphas[::step], {k: v[::step] for k, v in cache.logits.items()}, cache.labels,
                     cache.world, cache.shift_hash, cache.seed)


# ------------------------------------------------------------------------------------------ streams
@dataclass
class LabStream:
    """A stream assembled from the cache: every sample's θ(α) log-probabilities in stream order.

    ``logp`` [A, M, C]; ``batch`` [M] (batch id), ``domain`` [M] (index into ``names``), ``labels`` [M];
    ``segment`` [nb]: the run of one domain a batch belongs to (a new one at every domain change; in the
    mixed schedule one for the whole stream), which resets state in the ``reset_each_shift`` setting.
    """

    alphas: list[float]
    names: list[str]
    logp: Tensor
    batch: Tensor
    domain: Tensor
    labels: Tensor
    segment: Tensor
    setting: str

    @property
    def nb(self) -> int:
        return int(self.segment.numel())

    @property
    def correct(self) -> Tensor:
        """[A, M]: whether θ(α) classifies each sample right."""
        return self.logp.argmax(-1) == self.labels[None]

    def batch_sum(self, values: Tensor) -> Tensor:
        """Sum of ``values`` [..., M, *rest] over each batch: [..., nb, *rest] (batch axis = dim 1)."""
        shape = list(values.shape)
        shape[1] = self.nb
        return torch.zeros(shape, dtype=values.dtype).index_add_(1, self.batch, values)

    def batch_mean(self, values: Tensor) -> Tensor:
        counts = torch.bincount(self.batch, minlength=self.nb).to(values.dtype)
        view = [1, self.nb] + [1] * (values.ndim - 2)
        return self.batch_sum(values) / counts.view(view)

    def window_sum(self, per_batch: Tensor, window: int) -> Tensor:
        """Sum over the last ``window`` batches, the current included ([.., nb, ...], batch axis dim 1),
        restarting at a segment boundary in the ``reset_each_shift`` setting."""
        cs = torch.cumsum(per_batch, 1)
        zero = torch.zeros_like(cs[:, :1])
        cs = torch.cat([zero, cs], 1)  # cs[:, b] = sum of batches < b
        b = torch.arange(self.nb)
        start = (b - window + 1).clamp_min(0)
        if self.setting == "reset_each_shift":
            first = torch.zeros(self.nb, dtype=torch.long)
            change = torch.nonzero(self.segment[1:] != self.segment[:-1]).flatten() + 1
            for c in change.tolist():
                first[c:] = c
            start = torch.maximum(start, first)
        return cs[:, b + 1] - cs[:, start]


def lab_stream(cache: LabLogits, order: str = "shuffled", schedule: str = "continual", batch_size: int = 64,
               setting: str = "continual", domains: Sequence[str] | None = None) -> LabStream:
    """The stream ``embedded_stream`` would yield for these domains, order, schedule and batch size."""
    from streams.fashion import sample_plan, scheduled_domains
    from streams.orders import resolve

    sched, sample = resolve(order, schedule)
    if sched == "reset_each_shift":
        sched, setting = "continual", "reset_each_shift"
    if sched == "gradual":
        raise ValueError("the lab replays cached domains; gradual needs every severity cached (list them instead)")
    names = scheduled_domains(list(domains or cache.domains), sched)
    pairs = sample_plan(cache.labels, names, sched, sample, cache.seed)
    logits = torch.stack([cache.logits[n] for n in names])  # [D, A, N, C]
    d, r = pairs[:, 0], pairs[:, 1]
    logp = torch.log_softmax(logits[d, :, r].transpose(0, 1), -1)  # [A, M, C]
    batch, segment = [], []
    if sched == "mixed":
        batch = torch.arange(len(pairs)) // batch_size
        segment = torch.zeros(int(batch.max()) + 1 if len(batch) else 0, dtype=torch.long)
    else:
        nb = 0
        for k in range(len(names)):
            m = int((d == k).sum())
            per = -(-m // batch_size)
            batch.append(nb + torch.arange(m) // batch_size)
            segment.append(torch.full((per,), k, dtype=torch.long))
            nb += per
        batch, segment = torch.cat(batch), torch.cat(segment)
    return LabStream(list(cache.alphas), names, logp, batch, d, cache.labels[r], segment, setting)


# ------------------------------------------------------------------------------------------ objectives
def _entropy(logp: Tensor) -> Tensor:
    return -(logp.exp() * logp).sum(-1)


def _plogp(p: Tensor) -> Tensor:
    return torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))


def _kl(p: Tensor, q: Tensor) -> Tensor:
    return (_plogp(p) - p * q.clamp_min(1e-30).log()).sum(-1)


def _js(p: Tensor, q: Tensor) -> Tensor:
    m = 0.5 * (p + q)
    return 0.5 * (_kl(p, m) + _kl(q, m))


def _hellinger(p: Tensor, q: Tensor) -> Tensor:
    return 0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1)


#: the simulated window's divergences D(P_W(α) ‖ P_W(0)): the engine's (:data:`DIVERGENCES`) and two bounded
#: ones it does not offer, to compare (docs/adaptive_alpha.md, "Tried against the shirt gap")
LAB_DIVERGENCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {**DIVERGENCES, "js": _js, "hellinger": _hellinger}


def _argmin(values: Tensor, centre: int) -> Tensor:
    """Per batch the grid index of the lowest value ([A, nb] -> [nb]); ties go to the index nearest
    ``centre`` (the engine's tie rule: stay near the current α)."""
    values = torch.nan_to_num(values, nan=math.inf)
    a = torch.arange(values.shape[0], dtype=values.dtype)[:, None]
    return torch.argmin(values + 1e-12 * (a - centre).abs(), 0)


def entropy_choice(s: LabStream) -> Tensor:
    return _argmin(s.batch_mean(_entropy(s.logp)), len(s.alphas) // 2)


def infomax_choice(s: LabStream) -> Tensor:
    pbar = s.batch_mean(s.logp.exp())
    return _argmin(s.batch_mean(_entropy(s.logp)) + _plogp(pbar).sum(-1), len(s.alphas) // 2)


def anchored_choice(s: LabStream) -> Tensor:
    pbar = s.batch_mean(s.logp.exp())
    return _argmin(s.batch_mean(_entropy(s.logp)) + _kl(pbar, pbar[:1]), len(s.alphas) // 2)


def window_choice(s: LabStream, window: int = 16, weight: float = 2.0) -> Tensor:
    """Mean entropy of the batch + ``weight`` x KL of the class proportions over the last ``window``
    batches at α to those at α = 0 (every α's proportions over past batches: not online)."""
    sums = s.window_sum(s.batch_sum(s.logp.exp()), window)
    pw = sums / sums.sum(-1, keepdim=True)
    return _argmin(s.batch_mean(_entropy(s.logp)) + weight * _kl(pw, pw[:1]), len(s.alphas) // 2)


def _strided(start: int, n: int, k: int) -> Tensor:
    k = max(min(n, k), 1)
    return torch.arange(start, start + n)[:: max(n // k, 1)][:k]


def _interpolated(s: LabStream, rows: Tensor, centre: int, ends: str = "both") -> Tensor:
    """The window's view of θ(α) on ``rows``: logits through (0, centre, 1), quadratic in α (linear when
    the centre is an endpoint), as :class:`adawise.core.objectives.ProportionWindow` computes them; with
    ``ends="zero"``, linear through (0, centre) only (no α = 1 logits): [A, k, C]."""
    a = torch.tensor(s.alphas, dtype=s.logp.dtype).view(-1, 1, 1)
    c = float(s.alphas[centre])
    z0, zc, z1 = s.logp[0, rows], s.logp[centre, rows], s.logp[-1, rows]
    if ends == "zero":
        return z0 + (a / c) * (zc - z0) if c > 1e-3 else z0.expand(len(a), *z0.shape)
    if c <= 1e-3 or c >= 1 - 1e-3:
        return (1 - a) * z0 + a * z1
    return ((a - c) * (a - 1) / c * z0 + a * (a - 1) / (c * (c - 1)) * zc + a * (a - c) / (1 - c) * z1)


def windowed_simulated(s: LabStream, weight: float = 3.0, rows: int = 128, stride: float = 8.0, fill: int = 32,
                       mix_threshold: float | None = 0.3, restart: bool = True, drift_z: float = 4.0,
                       drift_min_rel: float = 0.05, drift_beta: float = 0.2,
                       drift_on: str = "entropy", mix_cap: float | None = 0.5,
                       divergence: str = "kl", ramp: bool = True, ends: str = "both",
                       proportions: str = "soft", coverage: bool = True, entry: int = 16,
                       drift_rows: int = 64, confusion: float = 0.0,
                       keep_at_drift: int = 0, start_fill: int | None = None) -> tuple[Tensor, Tensor]:
    """``adawise-windowed`` simulated online with what it computes, the BO search replaced by the exact
    grid minimum: per batch the mean entropy at each α + ``weight`` x min(1, held/rows) x the window's class
    coverage at α = 0 (``coverage``: exp(H(P_W(0))) / C) x KL of the window's proportions at α to those at
    α = 0; the window holds the last ``rows`` rows (one row per ``stride`` images, evenly strided in each
    batch, entered after its prediction at least ``entry`` at a time, or the whole batch if smaller;
    ``fill`` rows of the batch when empty), their θ(α) logits interpolated through (0, the batch's centre,
    1) (``ends="zero"``: linear through (0, centre), no α = 1 logits); it restarts at a reset and when the
    engine's drift detector fires on the entropy part (``drift_*``, the fast preset's, its values pooled over
    ``drift_rows`` images: smaller batches are tested and learnt from together); rows whose entropy
    at the chosen α exceeds ``mix_threshold`` x log(C) (at most a ``mix_cap`` share of the batch, the most
    uncertain) are mixed with the zero-shot prediction by DaWin's λ. ``proportions="hard"``: the window's
    proportions of argmax predictions (add-½ smoothed) instead of mean probabilities. ``divergence``: a name
    of :data:`LAB_DIVERGENCES`. ``confusion`` (s > 0): both proportions are compared through the zero-shot
    model's own confusion of the classes on the window, P ↦ P·((1 − s)·I + s·K), K[c, d] = Σ_x p0_c p0_d /
    Σ_x p0_c over the held rows (classes the zero-shot model cannot tell apart count as one).
    ``keep_at_drift`` (k > 0): a detected drift keeps the newest k held rows beside the fill rows instead of
    clearing the window (the ramp still restarts from the fill rows). The defaults are ``adawise-windowed``'s.

    Returns per-sample hits [M] and the chosen α index per sample [M].
    """
    from adawise.core.drift import DriftRule, DriftStats

    A, C = len(s.alphas), s.logp.shape[-1]
    ent = s.batch_mean(_entropy(s.logp))
    counts = torch.bincount(s.batch, minlength=s.nb)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    seg = s.segment.tolist()
    held: Tensor | None = None  # [k, A, C] probabilities of the held rows at every grid α
    centre = A // 2
    detector = DriftRule(z=drift_z, min_rel=drift_min_rel, beta=drift_beta, warmup=1, rows=drift_rows)
    drift = DriftStats()  # the engine's detector, on the values the simulation sees
    credit = 0.0
    fresh = 0  # rows entered since the window's last (re)start: what its ramp counts
    hits = torch.zeros(len(s.batch), dtype=torch.bool)
    chosen = torch.zeros(len(s.batch), dtype=torch.long)

    def rows_probs(idx: Tensor, c: int) -> Tensor:
        z = _interpolated(s, idx, c, ends)
        if proportions == "hard":
            return torch.nn.functional.one_hot(z.argmax(-1), C).to(z.dtype).transpose(0, 1)
        return torch.softmax(z, -1).transpose(0, 1)

    def objective(b: int) -> Tensor:
        pw = held.mean(0)
        if proportions == "hard":
            pw = (pw * len(held) + 0.5) / (len(held) + 0.5 * C)
        if confusion:  # compare through the zero-shot model's own confusion of the classes
            p0 = held[:, 0]
            k = (p0.T @ p0) / p0.sum(0).clamp_min(1e-12)[:, None]
            k = (1 - confusion) * torch.eye(C, dtype=k.dtype) + confusion * k
            pw = pw @ k
        div = LAB_DIVERGENCES[divergence](pw, pw[:1].expand_as(pw))
        scale = min(1.0, fresh / rows) if ramp else 1.0
        if coverage:  # the window's class coverage at α = 0: exp(H(P_W(0))) / C
            scale *= float(torch.exp(-_plogp(pw[0]).sum())) / C
        return ent[:, b] + weight * scale * div

    for b in range(s.nb):
        st, n = starts[b], int(counts[b])
        if s.setting == "reset_each_shift" and b > 0 and seg[b] != seg[b - 1]:
            held, centre, credit, drift = None, A // 2, 0.0, DriftStats()
        filled = held is None
        if filled:  # the stream's start or a reset
            held = rows_probs(_strided(st, n, fill if start_fill is None else start_fill), centre)
            fresh = len(held)
        obj = objective(b)
        g = float(obj[centre] if drift_on == "objective" else ent[centre, b])
        drifted = restart and detector.drifted(drift, g, n)
        if drifted:
            new = rows_probs(_strided(st, n, fill), centre)
            held = torch.cat([held[max(len(held) - keep_at_drift, 0):], new])[-rows:] if keep_at_drift else new
            filled, fresh = True, len(new)
            obj = objective(b)
        c = int(_argmin(obj[:, None], centre)[0])
        logp = s.logp[c, st:st + n]
        p = logp.exp()
        if mix_threshold is not None:
            h = _entropy(logp)
            sel = h > mix_threshold * math.log(C)
            cap = None if mix_cap is None else max(int(mix_cap * n), 1)
            if cap is not None and int(sel.sum()) > cap:
                sel &= h >= h[sel].topk(cap).values[-1]
            lp0 = s.logp[0, st:st + n]
            lam = torch.sigmoid(_entropy(lp0) - h)[:, None]
            p = torch.where(sel[:, None], lam * p + (1 - lam) * lp0.exp(), p)
        hits[st:st + n] = p.argmax(-1) == s.labels[st:st + n]
        chosen[st:st + n] = c
        if not filled:
            credit += n / stride
            k = int(credit) if credit >= min(entry, n) else 0
            credit -= k
            if k:
                held = torch.cat([held, rows_probs(_strided(st, n, k), centre)])[-rows:]
                fresh = min(fresh + k, rows)
        detector.update(drift, float(obj[c] if drift_on == "objective" else ent[c, b]), drifted, 0.0, n)
        centre = c
    return hits, chosen


Chooser = Callable[[LabStream], Tensor]
#: label-free choosers: per batch a grid index ([nb]); or (hits [M], grid index [M]) for those that mix outputs
CHOOSERS: dict[str, Chooser] = {
    "entropy": entropy_choice,
    "infomax": infomax_choice,
    "anchored": anchored_choice,
    "window": window_choice,
    "windowed (online)": windowed_simulated,
}


# ------------------------------------------------------------------------------------------ scoring
def per_domain(s: LabStream, hits: Tensor) -> dict[str, float]:
    """Accuracy per domain of per-sample hits [M]."""
    n = torch.bincount(s.domain, minlength=len(s.names)).double()
    c = torch.zeros(len(s.names), dtype=torch.float64).index_add_(0, s.domain, hits.double())
    return {name: float(c[k] / n[k]) for k, name in enumerate(s.names) if n[k] > 0}


def hits_of(s: LabStream, choice: Tensor) -> Tensor:
    """Per-sample hits of a per-batch [nb] or per-sample [M] choice of grid indices."""
    idx = choice[s.batch] if choice.numel() == s.nb and s.nb != len(s.batch) else choice
    return s.correct.gather(0, idx.view(1, -1))[0]


def summarise(acc: dict[str, float], id_domain: str) -> dict[str, float]:
    shifts = [v for d, v in acc.items() if d != id_domain]
    return {"shift_mean": 100 * sum(shifts) / len(shifts), "clean": 100 * acc.get(id_domain, math.nan)}


def evaluate(s: LabStream, choosers: Sequence[str] = tuple(CHOOSERS),
             variants: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every row of the table on one stream: ``{row: {"shift_mean", "clean", "per_domain"}}``; ``variants``
    adds rows of :func:`windowed_simulated` with other options (name -> keyword arguments)."""
    id_domain = s.names[0]
    correct = s.correct
    rows: dict[str, dict[str, Any]] = {}
    statics = {}
    for k, a in enumerate(s.alphas):
        acc = per_domain(s, correct[k])
        statics[a] = {**summarise(acc, id_domain), "per_domain": acc}
    best = max(statics, key=lambda a: statics[a]["shift_mean"])
    rows["zeroshot"], rows["finetuned"] = statics[s.alphas[0]], statics[s.alphas[-1]]
    if 0.5 in statics:
        rows["wiseft 0.5"] = statics[0.5]
    rows["best static α"] = {**statics[best], "alpha": best}
    oracle = {d: max(statics[a]["per_domain"][d] for a in s.alphas) for d in statics[best]["per_domain"]}
    rows["per-domain oracle *"] = {**summarise(oracle, id_domain), "per_domain": oracle}
    rows["per-sample oracle *"] = {**summarise(per_domain(s, correct.any(0)), id_domain)}
    calls = [(name, CHOOSERS[name]) for name in choosers]
    calls += [(f"windowed, {name}", lambda st, kw=kw: windowed_simulated(st, **kw))
              for name, kw in (variants or {}).items()]
    for name, chooser in calls:
        result = chooser(s)
        hits, choice = result if isinstance(result, tuple) else (hits_of(s, result), result)
        acc = per_domain(s, hits)
        alphas = torch.tensor(s.alphas)[choice]
        rows[name] = {**summarise(acc, id_domain), "per_domain": acc, "mean_alpha": float(alphas.mean())}
    return rows


# ------------------------------------------------------------------------------------------ the real engine
def engine_rows(world: Any, domains: Sequence[str], order: str, schedule: str, batch_size: int, setting: str,
                methods: Sequence[str], per_domain: int = 2000, seed: int = 0,
                progress: bool = False, options: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The registered methods run by the real engine (:func:`adawise.run_stream`, BO search, online) on the
    stream the lab replays (same images, shift draws and sample order): one row each, ``"<name> (engine)"``,
    or ``"<name> {options} (engine)"`` with ``options`` (passed to every method, e.g. a candidate setting)."""
    from adawise import make_method, run_stream
    from streams.fashion import embedded_stream

    stream = embedded_stream(world, domains=list(domains), order=order, schedule=schedule, batch_size=batch_size,
                             per_domain=per_domain, seed=seed)
    rows: dict[str, dict[str, Any]] = {}
    for name in methods:
        t = time.perf_counter()
        method = make_method(name, zeroshot=world.zeroshot, finetuned=world.finetuned, **(options or {}))
        result = run_stream(method, stream, setting=setting, seed=seed, progress=progress)
        passes = sum(r.get("forward_passes", 1.0) for r in result.records) / len(result.records)
        alphas = [a for a in result.alphas if a is not None]
        label = f"{name} {json.dumps(options)}" if options else name
        rows[f"{label} (engine)"] = {**summarise(result.per_domain, domains[0]), "per_domain": result.per_domain,
                                    "mean_alpha": sum(alphas) / max(len(alphas), 1), "passes": passes,
                                    "seconds": time.perf_counter() - t}
    return rows


# ------------------------------------------------------------------------------------------ CLI
def _table(results: dict[str, dict[str, dict[str, Any]]], settings: Sequence[str]) -> str:
    cols = list(results)
    names = list(next(iter(results.values())))
    lines = ["| α chosen by | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        cells = []
        for c in cols:
            r = results[c].get(name)
            if r is None:
                cells.append("-")
                continue
            txt = f"{r['shift_mean']:.1f}"
            if name not in ("zeroshot", "finetuned") and not name.startswith("per-sample"):
                txt += f" ({r['clean']:.1f})"
            if "alpha" in r:
                txt += f" α {r['alpha']:g}"
            cells.append(txt)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_table(per_seed: dict[int, dict[str, Any]], key: str) -> str:
    """Mean ± sd over world seeds of each row's shift mean, per stream (one table of ``key``), and the
    smallest margin over the best static α across the seeds."""
    import statistics

    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]["tables"][key]
    cols = list(first)
    names = list(next(iter(first.values())))
    lines = [f"| α chosen by ({len(seeds)} worlds: seeds {', '.join(map(str, seeds))}) | "
             + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        cells = []
        for c in cols:
            vals = [per_seed[sd]["tables"][key][c][name] for sd in seeds
                    if name in per_seed[sd]["tables"][key].get(c, {})]
            if not vals:
                cells.append("-")
                continue
            means = [v["shift_mean"] for v in vals]
            sd = statistics.stdev(means) if len(means) > 1 else 0.0
            margin = min(v["vs_best_static"] for v in vals)
            cells.append(f"{statistics.mean(means):.1f} ± {sd:.1f} (min Δ {margin:+.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _worlds(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The one-world results in a saved run (a run over several worlds keeps them under ``seeds``)."""
    return list(doc["seeds"].values()) if "seeds" in doc else [doc]


def criteria_table(docs: Sequence[dict[str, Any]]) -> str:
    """Issue 16's criteria for every label-free row over every stream of saved runs, per batch size: the
    smallest and the mean margin over the best static α on the single-domain streams (and how many are under
    +1.0), the worst clean accuracy less the fine-tuned model's (and how many are under −1.0), and on mixed
    streams the smallest margin and the worst clean difference."""
    rows: dict[tuple[int, str], dict[str, list[tuple[float, float]]]] = {}
    for doc in docs:
        for world in _worlds(doc):
            for key, streams in world["tables"].items():
                bs = int(key.split(",")[0].split()[1])
                for stream, r in streams.items():
                    ft = r["finetuned"]["clean"]
                    kind = "mixed" if stream.endswith("/ mixed") else "single"
                    for name, v in r.items():
                        if "*" in name or name in ("zeroshot", "finetuned", "best static α") or \
                                name.startswith("wiseft"):
                            continue
                        rows.setdefault((bs, name), {"single": [], "mixed": []})[kind].append(
                            (v["vs_best_static"], v["clean"] - ft))
    lines = ["| batch | α chosen by | streams | min Δ best static | mean Δ | under +1.0 | worst clean − fine-tuned | "
             "under −1.0 | mixed: min Δ | mixed: worst clean |", "|---" * 10 + "|"]
    for (bs, name), kinds in rows.items():
        single, mixed = kinds["single"], kinds["mixed"]
        if not single:
            continue
        d, c = [x[0] for x in single], [x[1] for x in single]
        mix = (f"{min(x[0] for x in mixed):+.2f} | {min(x[1] for x in mixed):+.2f}" if mixed else "- | -")
        lines.append(f"| {bs} | {name} | {len(single)} + {len(mixed)} | {min(d):+.2f} | {sum(d) / len(d):+.2f} | "
                     f"{sum(x < 1.0 for x in d)} | {min(c):+.2f} | {sum(x < -1.0 for x in c)} | {mix} |")
    return "\n".join(lines)


def read_runs(option: str, files: str) -> list[dict[str, Any]]:
    """The saved runs (``--json`` output) named by a comma-separated option value; a missing file is named."""
    paths = [Path(f) for f in files.split(",") if f]
    missing = [str(f) for f in paths if not f.is_file()]
    if missing:
        raise SystemExit(f"{option}: no such run file: {', '.join(missing)} (write one with --json)")
    return [json.loads(f.read_text()) for f in paths]


def run_lab(args: argparse.Namespace, seed_world: int) -> dict[str, Any]:
    """Every table of the command line's grid on one world; printed as it goes."""
    t0 = time.perf_counter()
    domains = [d for d in args.domains.split(",") if d]
    world = _world(seed_world, args.recipe)
    cache = load_logits(domains, world, per_domain=args.per_domain, seed=args.seed)
    engine = [m for m in args.engine.split(",") if m]
    sub = on_grid(cache, int(args.alphas))
    print(f"== objective lab: world {cache.world} (seed {seed_world}), shift code {cache.shift_hash}, "
          f"{len(domains)} domains x {len(cache.labels)} images, α grid {sub.alphas} "
          f"(logits ready in {time.perf_counter() - t0:.0f} s)", flush=True)
    out: dict[str, Any] = {"world": cache.world, "seed_world": seed_world, "shift_hash": cache.shift_hash,
                           "alphas": sub.alphas, "domains": domains, "tables": {}}
    choosers = [c for c in args.choosers.split(",") if c]
    variants = json.loads(args.variants) if args.variants else None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        for setting in args.settings.split(","):
            results = {}
            for pair in args.streams.split(","):
                order, _, schedule = pair.partition("/")
                if schedule == "mixed" and setting == "reset_each_shift":
                    continue  # one domain: nothing to reset
                s = lab_stream(sub, order, schedule or "continual", bs, setting)
                rows = evaluate(s, choosers, variants)
                if engine:
                    rows |= engine_rows(world, domains, order, schedule or "continual", bs, setting, engine,
                                        args.per_domain, args.seed,
                                        options=json.loads(args.engine_options) if args.engine_options else None)
                oracle = rows["per-domain oracle *"]["shift_mean"]
                best = rows["best static α"]["shift_mean"]
                for r in rows.values():
                    r["vs_best_static"], r["vs_oracle"] = r["shift_mean"] - best, r["shift_mean"] - oracle
                results[f"{order} / {schedule or 'continual'}"] = rows
            key = f"batch {bs}, {setting}"
            out["tables"][key] = results
            print(f"\n{key} (shift mean %, clean in brackets; * reads the labels)\n" + _table(results, [setting]),
                  flush=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", default=",".join(LAB_DOMAINS), help="comma-separated, the first in distribution")
    p.add_argument("--streams", default=",".join(f"{o}/{s}" for o, s in STREAM_TYPES),
                   help="comma-separated ORDER/SCHEDULE pairs (default: the README's four)")
    p.add_argument("--settings", default="continual,reset_each_shift")
    p.add_argument("--batch-sizes", default="64")
    p.add_argument("--choosers", default=",".join(CHOOSERS))
    p.add_argument("--alphas", default="11", help="grid: a number of equally spaced αs (a divisor of the cache's "
                   "21 minus one: 11, 6, 5, 3) or 21 (default 11, step 0.1)")
    p.add_argument("--per-domain", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="stream seed (test subset, shift draws, orders)")
    p.add_argument("--seed-worlds", default="0", help="comma-separated EmbeddedRecipe seeds (0: the demo's world; "
                   "others are trained on first use, about 8 minutes each); with several, mean ± sd tables follow")
    p.add_argument("--recipe", default="full")
    p.add_argument("--engine", default="",
                   help="comma-separated registered methods to run with the real engine on the same streams "
                        "(e.g. adawise,adawise-windowed; minutes per stream on a CPU)")
    p.add_argument("--engine-options", default=None,
                   help="JSON: options for every --engine method (a candidate setting), "
                        "e.g. '{\"window_start_fill\": 64}'")
    p.add_argument("--variants", default=None,
                   help='JSON: extra rows of the simulated windowed method with other options, e.g. '
                        '\'{"no mix": {"mix_threshold": null}, "no restart": {"restart": false}}\'')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--summarise", default=None,
                   help="comma-separated JSON files of earlier runs on other worlds (one world each): print their "
                        "mean ± sd tables instead of running")
    p.add_argument("--criteria", default=None,
                   help="comma-separated JSON files of earlier runs: print issue 16's criteria for every label-free "
                        "row over all their streams instead of running")
    args = p.parse_args(argv)
    if args.criteria:
        table = criteria_table(read_runs("--criteria", args.criteria))
        print(table)
        return {"criteria": table}
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.summarise:
        loaded = read_runs("--summarise", args.summarise)
        per_seed = {int(d["seed_world"]): d for d in loaded}
    else:
        per_seed = {sw: run_lab(args, sw) for sw in [int(x) for x in args.seed_worlds.split(",")]}
    out: dict[str, Any] = per_seed[min(per_seed)] if len(per_seed) == 1 else {"seeds": per_seed}
    if len(per_seed) > 1:
        # the tables every world has (a run may cover fewer settings or batch sizes than another)
        for key in [k for k in per_seed[min(per_seed)]["tables"] if all(k in d["tables"] for d in per_seed.values())]:
            print(f"\n{key}: shift mean %, mean ± sd over worlds (min Δ: the smallest margin over the best "
                  "static α of the same world)\n" + _seed_table(per_seed, key), flush=True)
    out["seconds_total"] = time.perf_counter() - t0
    print(f"\ntotal {out['seconds_total']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
