"""AdaWiSE: choose the WiSE-FT coefficient α per test batch by Bayesian optimisation of a label-free
objective, with one live interpolated model updated in place.

Provenance: Döbler et al., "AdaWiSE", ECCV Workshops 2024 (only the abstract is public; everything it
does not say is this project's reconstruction); θ(α) = (1 − α)·θ_zs + α·θ_ft is
WiSE-FT (Wortsman et al., CVPR 2022); objectives: entropy (the paper's), infomax (SHOT, Liang et al.
2020; TIM, Boudiaf et al. 2020), anchored (this project). The 1-D search is :class:`BayesOpt1D`.

Online contract: ``forward(images)`` searches α on the batch itself (label-free) and returns the
logits of the evaluated α with the lowest objective, always from a full-batch pass at that α; the
search state (current α, GP observations and hyperparameters, drift statistics) carries over from
batch to batch; ``observe`` does nothing more; ``reset()`` restores the exact initial state.

Two presets share one code path and differ only in options (:data:`PRESETS`):

- ``faithful``, a straightforward reading of the paper: a cold BO on every batch (initial design
  {0, 0.5, 1}, then LogEI proposals up to 10 full-batch evaluations, GP hyperparameters refitted
  before every proposal, BoTorch's own posterior). About 10 passes and 7 GP fits per batch.
- ``fast`` (default): the centre α (the last confirmed choice) is evaluated on the full batch first;
  that pass is the prediction unless something better turns up. On every warm batch (every second
  one on CUDA, where a small pass costs more, see ``probe_every``) one BO
  proposal (LogEI and UCB in turn: exploit, then explore) is probed on 16 evenly strided rows and
  compared with the centre on the same rows (paired, so batch-to-batch noise cancels); only a probe that
  wins by ``switch_margin`` costs a full pass, and the better of the two full passes is returned.
  The GP keeps the recent batches' observations relative to the centre (weights decaying 0.7 per
  batch, full-batch values weighing 1/fraction, noise estimated online from the GP's one-step
  residuals); hyperparameters are refitted every 500 observations only; the posterior is computed
  in closed form. The centre moves only when that pooled GP agrees, so one batch's noise does not
  drag the next batches along. A cold search (the centre, {0, 1} and three LogEI proposals, on the
  full batch) runs on the first batch, when the objective at the centre drifts (a domain change)
  and after a probe moved the centre by 0.2 or more (passes per batch measured:
  ``benchmarks/RESULTS.md``); ``probe_backoff`` spaces the probes out while they keep losing (fewer
  passes, slower tracking).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from adawise.core.bayesopt import BayesOpt1D
from adawise.core.drift import DriftRule
from adawise.core.objectives import NEEDS_ANCHOR, NEEDS_WINDOW, OBJECTIVES, ProportionWindow, entropy, finite_objective
from adawise.errors import UsageError
from adawise.methods.adawise_config import PRESETS, AdaWiSEConfig
from adawise.methods.adawise_state import SearchState, _Batch, _key, _State
from adawise.methods.registry import register
from adawise.methods.weight_space import WeightSpaceMethod

__all__ = ["AdaWiSE", "AdaWiSEConfig", "PRESETS", "SearchState"]


#: options the log header records only for an objective with a proportion window
_WINDOW_ONLY = ("window_coverage", "window_entry", "window_exact", "window_move")
#: options added later that the log header records only when set (earlier log headers and config hashes unchanged)
_ADDED_OFF = ("ucb_rows", "window_start_fill")


@register("adawise", default_run=True)
class AdaWiSE(WeightSpaceMethod):
    """Test-time weight-space ensemble: per batch, BO over α of a label-free objective.

    ``engine = AdaWiSE(zs, ft); logits = engine(images)`` predicts the batch at the α the search
    chose on it (then the state carries over); ``engine.alpha``, ``engine.info``, ``engine.reset()``.

    Options (keyword-only): ``preset`` (``"fast"``, the default, or ``"faithful"``: module docstring),
    ``objective`` (``"entropy"``, the paper's and the default, ``"infomax"``, ``"anchored"`` or
    ``"windowed"``, :mod:`adawise.core.objectives`), ``seed``, ``device``, ``amp_dtype``, ``share_masters``,
    ``cuda_graphs``, and any field of :class:`~adawise.methods.adawise_config.AdaWiSEConfig`, which replaces
    the preset's value (:data:`PRESETS`); each is documented there. An unknown option, a value of the
    wrong type or out of range fails here, naming the option and its valid values. Engine options:

        seed: seed of the optimizer's private generator (runs never read the global RNG).
        device: where the live model runs (default: ``finetuned``'s device).
        amp_dtype: autocast dtype of the forward passes (e.g. ``torch.bfloat16`` on CUDA).
        share_masters, cuda_graphs: engine options of :class:`~adawise.core.alpha_engine.AlphaEvaluator` (masters in the
            endpoints' own storage; forward passes replayed from CUDA graphs on a CUDA device).


    ``info`` after a call: ``alpha``, ``center``, ``objective`` (full batch, at ``alpha``),
    ``alphas``, ``objectives`` and ``fractions`` (one entry per forward pass, in order; 1.0 = full
    batch), ``forward_passes``, ``merges``, ``seconds`` = ``seconds_forward`` + ``seconds_merge`` +
    ``seconds_bo`` (all the rest: objectives, GP, bookkeeping), ``mode`` (``search``, ``probe``,
    ``track`` or ``skip``), ``reason`` of a search (``first``, ``drift``, ``jump``, ``domain``,
    ``periodic``, ``cold``), ``switched``, ``nonfinite``, ``dropped_rows``, ``gp_fits``, ``fit_failures``.
    """

    adapts = True
    app_options = frozenset({"preset", "seed"})
    family = "adaptive"

    def __init__(
        self,
        zeroshot: nn.Module,
        finetuned: nn.Module,
        *,
        preset: str = "fast",
        objective: str = "entropy",
        seed: int = 0,
        device: Any = None,
        amp_dtype: torch.dtype | None = None,
        share_masters: bool = True,
        cuda_graphs: bool | None = None,
        **overrides: Any,
    ) -> None:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        if objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
        opts = PRESETS[preset].replace(**overrides)  # unknown, ill-typed or out-of-range options fail here
        super().__init__(zeroshot, finetuned, device=device, amp_dtype=amp_dtype, share_masters=share_masters,
                         cuda_graphs=cuda_graphs)
        self.preset, self.objective, self.seed = preset, objective, int(seed)
        self.opts: AdaWiSEConfig = opts
        self.drift = DriftRule(z=opts.drift_z, min_rel=opts.drift_min_rel, beta=opts.drift_beta,
                               warmup=opts.drift_warmup, rows=opts.drift_rows)
        self.bo = BayesOpt1D(
            grid_size=opts.grid_size, acquisition=opts.acquisition, ucb_beta=opts.ucb_beta,
            incumbent=opts.incumbent,
            acq_optimizer=opts.acq_optimizer, posterior=opts.posterior, refit=opts.refit,
            fit_maxiter=opts.fit_maxiter, min_distance=opts.min_distance, memory=opts.memory,
            window=opts.window, decay=opts.decay, min_fit_points=opts.min_fit_points,
            noise=opts.noise, seed=self.seed,
        )
        self._initial = _State(alpha=float(opts.init_alpha), center=float(opts.init_alpha))
        # the window's term enters the search exactly only where the GP posterior is the closed-form grid one
        self._exact_ok = opts.posterior == "closed_form" and opts.acq_optimizer == "grid"
        if objective in NEEDS_WINDOW:
            self._initial.window = ProportionWindow(rows=opts.window_rows, weight=opts.window_weight,
                                                    divergence=opts.window_divergence,
                                                    coverage=opts.window_coverage)
        self._s = copy.deepcopy(self._initial)

    # ------------------------------------------------------------------ Method API
    @property
    def alpha(self) -> float:
        """The α whose logits the last call returned (``init_alpha`` before the first call)."""
        return self._s.alpha

    @property
    def info(self) -> dict[str, Any]:
        return self._s.info

    def options(self) -> dict[str, Any]:
        out = {"preset": self.preset, "objective": self.objective, "seed": self.seed,
               "amp_dtype": str(self.evaluator.amp_dtype) if self.evaluator.amp_dtype else None}
        out.update(self.opts.as_dict())
        if self.objective not in NEEDS_WINDOW:  # options added with the window's coverage: where it is used only
            for key in _WINDOW_ONLY:            # (the other objectives' log headers and config hashes unchanged)
                out.pop(key)
        for key in _ADDED_OFF:
            if out[key] is None:
                out.pop(key)
        return out

    def reset(self) -> None:
        """Restore the exact initial state: α, BO history and hyperparameters, RNG, drift statistics."""
        self._s = copy.deepcopy(self._initial)
        self.bo.reset()

    def probe_every(self) -> int:
        """Warm batches between probes (``probe_every``; ``"auto"``: 1 on CPU, 2 on an accelerator)."""
        every = self.opts.probe_every
        if every == "auto":
            return 1 if self.evaluator.device.type == "cpu" else 2
        return int(every)

    def search_state(self) -> SearchState:
        """The search state in force (live objects, not copies: the next call changes them)."""
        bo, rng = self.bo.export_state()
        return SearchState(self._s, bo, rng)

    def load_search_state(self, state: SearchState) -> None:
        """Continue from ``state`` (used as is, not copied): the next call picks up where it left off."""
        self._s = state.search
        self.bo.import_state(state.bo, state.rng)

    def initial_search_state(self) -> SearchState:
        """A fresh copy of the initial search state (what :meth:`reset` restores)."""
        bo, rng = self.bo.initial_state()
        return SearchState(copy.deepcopy(self._initial), bo, rng)

    def on_domain(self, domain: str) -> None:
        if self.opts.search_on_domain and self._s.batches > 0:
            self._s.pending = "domain"

    # ------------------------------------------------------------------ evaluation helpers
    def _objective(self, b: _Batch, logits: Tensor, anchor: Tensor | None, count: bool, alpha: float) -> float:
        value, dropped = finite_objective(self.objective, logits, anchor)
        if self._s.window is not None:
            value += self._s.window.penalty(alpha)
        if count:
            b.dropped = max(b.dropped, dropped)
        b.nonfinite |= dropped > 0 or not math.isfinite(value)
        return value

    def _sub(self, t: Any) -> Any:
        return t[:: self._step][: self._m]

    def _full(self, b: _Batch, alpha: float) -> tuple[Tensor, float]:
        """Full-batch logits and objective at α (a pass unless already made on this batch)."""
        k = _key(alpha)
        if k not in b.full:
            logits = self.evaluator.logits(k, b.images)
            if b.anchor is None and self.objective in NEEDS_ANCHOR:
                b.anchor = logits  # forward() asks for α = 0 first
            if b.window_ends is not None:  # the first full pass: its rows complete the window's new entry
                self._s.window.add(b.window_ends[0], logits[b.window_rows], b.window_ends[1], k)
                b.window_ends = None
            value = self._objective(b, logits, b.anchor, count=True, alpha=k)
            b.full[k] = (logits, value)
            b.log.append((k, value, 1.0))
        return b.full[k]

    def _known(self, b: _Batch, on: str) -> dict[float, float]:
        """Objective values known on the ``full`` batch or on the ``sub`` rows (a full pass gives
        its sub rows' value for free; it is computed when first asked for)."""
        if on == "sub" and b.split:
            for k, (logits, _) in b.full.items():
                if k not in b.sub:
                    anchor = None if b.anchor is None else self._sub(b.anchor)
                    b.sub[k] = self._objective(b, self._sub(logits), anchor, count=False, alpha=k)
            return b.sub
        return {k: v for k, (_, v) in b.full.items()}

    def _value(self, b: _Batch, alpha: float, on: str) -> float:
        """Objective at α on the ``full`` batch or the ``sub`` rows (a pass unless already known)."""
        k = _key(alpha)
        if on == "full" or not b.split:
            return self._full(b, k)[1]
        if k not in self._known(b, "sub"):
            logits = self.evaluator.logits(k, b.sub_images, b.fraction)
            anchor = None if b.anchor is None else self._sub(b.anchor)
            b.sub[k] = self._objective(b, logits, anchor, count=False, alpha=k)
            b.log.append((k, b.sub[k], b.fraction))
        return b.sub[k]

    @staticmethod
    def _strided(n: int, k: int, device: Any) -> Tensor:
        """``min(n, k)`` evenly strided row indices of a batch of ``n``."""
        k = max(min(n, int(k)), 1)
        return torch.arange(0, n, max(n // k, 1), device=device)[:k]

    def _window_fill(self, b: _Batch, count: int) -> None:
        """(Re)fill the empty proportion window from this batch: ``count`` rows at α = 0 and α = 1
        (two passes on a few rows); their logits at the centre come from the batch's first full pass
        (``_full``), or from a pass made now if there was one already."""
        rows = self._strided(len(b.images), count, b.images.device)
        part, fraction = b.images[rows], len(rows) / len(b.images)
        ends = (self.evaluator.logits(0.0, part, fraction), self.evaluator.logits(1.0, part, fraction))
        b.window_filled = True
        if b.full:  # a restart after the centre pass: its logits are there
            k = next(iter(b.full))
            self._s.window.add(ends[0], b.full[k][0][rows], ends[1], k)
            for a, (logits, _) in list(b.full.items()):  # the values change with the window
                b.full[a] = (logits, self._objective(b, logits, b.anchor, count=False, alpha=a))
            b.sub.clear()
        else:
            b.window_rows, b.window_ends = rows, ends

    def _rows_at(self, b: _Batch, alpha: float, rows: Tensor) -> Tensor:
        """Logits of these rows of the batch at α: from a full pass already made there (a cold search
        evaluates α = 0 and 1 on the full batch), else from a pass over the rows alone."""
        if alpha in b.full:
            return b.full[alpha][0][rows.to(b.full[alpha][0].device)]
        return self.evaluator.logits(alpha, b.images[rows], len(rows) / len(b.images))

    def _after(self, b: _Batch, logits: Tensor, centre: float) -> tuple[Tensor, int]:
        """After the prediction's α is chosen: rows enter the proportion window (their logits at α = 0
        and 1: small passes), and the rows θ(α) is unsure about (entropy above ``mix_threshold`` x
        log(classes), the most uncertain ``mix_cap``) are mixed with the zero-shot model per sample,
        p = λ·p_α + (1 − λ)·p_0 with DaWin's λ = sigmoid(H_0 − H_α) (Oh et al., ICLR 2025), one
        zero-shot pass over both sets of rows. Returns the log-probabilities and the mixed row count."""
        n, device, o = len(b.images), b.images.device, self.opts
        window = self._s.window
        k = 0
        if window is not None and not b.window_filled:  # one row per window_stride images, whatever the batch size
            self._s.window_credit += n / float(o.window_stride)
            k = int(self._s.window_credit) if self._s.window_credit >= min(o.window_entry, n) else 0
            self._s.window_credit -= k
        wrows = self._strided(n, k, device) if k else torch.zeros(0, dtype=torch.long, device=device)
        h = entropy(logits)
        sel = torch.zeros(n, dtype=torch.bool, device=logits.device)
        if o.mix_threshold is not None and logits.shape[-1] > 1:
            sel = h > float(o.mix_threshold) * math.log(logits.shape[-1])
            cap = None if o.mix_cap is None else max(int(float(o.mix_cap) * n), 1)
            if cap is not None and int(sel.sum()) > cap:
                sel &= h >= h[sel].topk(cap).values[-1]
        mixed = torch.nonzero(sel).flatten().to(device)
        need = torch.unique(torch.cat([mixed, wrows]))
        out = torch.log_softmax(logits.float(), -1)
        if len(need) == 0:
            return out, 0
        z0 = self._rows_at(b, 0.0, need)
        where = {int(r): i for i, r in enumerate(need.tolist())}
        if len(wrows):
            z1 = self._rows_at(b, 1.0, wrows)
            zc = b.full[_key(centre)][0][wrows]
            window.add(z0[[where[int(r)] for r in wrows.tolist()]], zc, z1, centre)
        if len(mixed):
            zm = z0[[where[int(r)] for r in mixed.tolist()]].float()
            lam = torch.sigmoid(torch.nan_to_num(entropy(zm) - h[mixed.to(h.device)], nan=0.0))[:, None]
            p = lam * torch.softmax(logits[mixed].float(), -1) + (1.0 - lam) * torch.softmax(zm, -1)
            out[mixed] = p.clamp_min(1e-30).log()
        return out, len(mixed)

    # ------------------------------------------------------------------ the search
    def _exact_on(self) -> bool:
        return self._s.window is not None and bool(self.opts.window_exact) and self._exact_ok

    def _exact_delta(self, alpha: float, ref: float) -> float:
        """The window term at α less at ``ref`` where the search adds it exactly (:meth:`_exact_term`), else 0."""
        if not self._exact_on():
            return 0.0
        return self._s.window.penalty(_key(alpha)) - self._s.window.penalty(_key(ref))

    def _exact_term(self) -> Any:
        """The part of the objective the search knows exactly, relative to the centre, as a function of a
        tensor of αs: the proportion window's term (``window_exact``; no forward pass computes it), or
        ``None``. The GP then models the batch term alone, so its pooled observations of past batches stay
        valid while the window changes (rows entering, a restart), and every search step sees the window's
        current term at every α."""
        window = self._s.window
        if not self._exact_on():
            return None
        at_centre = window.penalty(_key(self._s.center))
        return lambda xs: window.penalties(xs) - at_centre

    def _observe(self, b: _Batch, k: float, y: float, on: str, predicted: Any = None) -> None:
        """Tell the GP y at α (relative to the centre; less the known window term's share, where the
        search adds that term exactly: :meth:`_exact_term`); a full-batch value of a split batch weighs
        ``1 / fraction`` sub values. The centre's own value (0 by construction) does not teach the
        noise estimate."""
        y -= self._exact_delta(k, self._s.center)
        self.bo.observe(k, y, weight=1.0 / b.fraction if (on == "full" and b.split) else 1.0,
                        learn_noise=k != _key(self._s.center), predicted=predicted)

    def _observe_known(self, b: _Batch, on: str, ref: float) -> None:
        have = {_key(x) for x, _ in self.bo.current()}
        for k, v in self._known(b, on).items():
            if k not in have:
                self._observe(b, k, v - ref, on)

    def _cold_search(self, b: _Batch, on: str, ref: float, clear: bool) -> None:
        """Initial design, then BO proposals, until ``search_evals`` αs are known on the rows."""
        if clear:
            self.bo.clear()
        self._observe_known(b, on, ref)
        budget = int(self.opts.search_evals)
        for a in self.opts.init_design:
            if len(self._known(b, on)) >= budget:
                break
            if _key(a) not in self._known(b, on):
                self._observe(b, _key(a), self._value(b, a, on) - ref, on)
        if not any(math.isfinite(v) for v in self._known(b, on).values()):
            return  # nothing is finite on this batch: searching further cannot help
        while len(self._known(b, on)) < budget:
            s = self.bo.suggest(known=self._exact_term())
            if s is None:
                break
            self._observe(b, _key(s.x), self._value(b, s.x, on) - ref, on, predicted=s)

    def _probe_beta(self, b: _Batch) -> float:
        """A probe's UCB trade-off: ``ucb_beta`` x min(1, the batch's rows / ``ucb_rows``)."""
        rows = self.opts.ucb_rows
        beta = float(self.opts.ucb_beta)
        return beta if rows is None else beta * min(1.0, len(b.images) / rows)

    def _probe(self, b: _Batch, ref: float) -> None:
        """Probe BO-proposed αs on the sub-batch rows, unless the GP expects too little from them."""
        self._observe_known(b, "sub", ref)
        floor = float(self.opts.probe_min_ei) * max(abs(ref), 1e-8)
        cycle = self.opts.probe_acquisitions
        for _ in range(int(self.opts.probe_evals)):
            acquisition = cycle[self._s.probes % len(cycle)]
            self._s.probes += 1
            s = self.bo.suggest(acquisition=acquisition, known=self._exact_term(), ucb_beta=self._probe_beta(b))
            if s is None or s.ei < floor:
                break
            self._observe(b, _key(s.x), self._value(b, s.x, "sub") - ref, "sub", predicted=s)

    def _select(self, b: _Batch, current: float, on: str, margin: float | None) -> float:
        """The α to predict with: the best on the rows searched, confirmed on the full batch.

        ``margin`` (probe mode): the relative improvement on the sub rows a challenger needs before a
        full pass at it is spent; ``None``: always confirm. Ties stay close to the current α.
        """
        cur = _key(current)
        rows = {k: v for k, v in self._known(b, on).items() if math.isfinite(v)}
        if not rows:
            return current
        winner = min(rows, key=lambda k: (rows[k], abs(k - cur)))
        if winner not in b.full:
            if margin is not None and cur in rows and not rows[winner] < rows[cur] - margin * abs(rows[cur]):
                return current
            self._full(b, winner)
        full = {k: v for k, v in self._known(b, "full").items() if math.isfinite(v)}
        if not full:
            return current
        return min(full, key=lambda k: (full[k], abs(k - cur)))

    def _window_move(self, center: float, ref: float) -> float:
        """After rows entered the proportion window (its exact term changed at every α, with no pass):
        the centre moves by up to ``window_move`` towards the α where the GP's pessimistic estimate of the
        batch term (mean + one posterior sd) plus the window's new term is lowest, if that is below the
        centre's estimate (mean) by the switch margin; the next batch's first pass is then made there.
        Where the GP knows little (far from its observations) the sd keeps the centre where it is. The GP's
        data and the drift statistics are re-expressed relative to the new centre."""
        grid, step = self.bo.grid, float(self.opts.window_move)
        g = len(grid)
        # one posterior over the grid, the centre and the two steps of most window_move from it
        ends = [_key(center), _key(center - step), _key(center + step)]
        post = self.bo.posterior_mean_sd(torch.cat([grid, torch.tensor(ends, dtype=grid.dtype)]))
        if post is None:
            return center
        mean, sd = post
        known = self._exact_term()(torch.cat([grid, grid.new_tensor(ends[:1])])).to(mean)
        score = mean[:g] + sd[:g] + known[:g]
        i = int(torch.argmin(score))
        if not float(score[i]) < float(mean[g] + known[g]) - float(self.opts.switch_margin) * max(abs(ref), 1e-8):
            return center
        target = float(grid[i])
        if abs(target - center) <= step:
            new, at_new = _key(target), float(mean[i])
        else:
            j = 1 if target < center else 2
            new, at_new = ends[j], float(mean[g + j])
        delta = at_new - float(mean[g])  # the GP's batch term at the new centre less at the old
        self.bo.shift(delta)
        self.drift.shift(self._s.drift, delta)
        return new

    # ------------------------------------------------------------------ drift
    def _drift_value(self, value: float, alpha: float) -> float:
        """What the drift detector watches: the objective, without the proportion window's term (the
        window changes as rows enter; a domain change shows in the batch's own entropy)."""
        window = self._s.window
        return value - window.penalty(alpha) if window is not None and math.isfinite(value) else value

    # ------------------------------------------------------------------ forward
    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        ev, s, o = self.evaluator, self._s, self.opts
        ev.reset_counters()
        images = ev.prepare_input(images)
        n, m = len(images), o.sub_batch
        if m is None or not torch.is_tensor(images) or n <= int(m):
            self._step, self._m = 1, n
            b = _Batch(images, images, 1.0)
        else:
            self._step, self._m = n // int(m), int(m)
            b = _Batch(images, self._sub(images), int(m) / n)
        current = s.center
        if self.objective in NEEDS_ANCHOR:
            self._full(b, 0.0)  # the anchor: the zero-shot prediction on the same batch
        window = s.window if torch.is_tensor(images) else None
        if window is not None and len(window) == 0:  # the stream's start or a reset
            start = o.window_start_fill
            self._window_fill(b, int(o.window_fill if start is None else start))

        reason = s.pending or ("first" if s.batches == 0 else None)
        if reason is None and o.search_every and s.since_search + 1 >= int(o.search_every):
            reason = "periodic"
        search_on = o.search_on
        g_cur = math.nan
        if o.track:
            g_cur = self._full(b, current)[1]
            if (reason is None and math.isfinite(g_cur)
                    and self.drift.drifted(s.drift, self._drift_value(g_cur, current), n)):
                reason = "drift"
                if window is not None and o.window_restart:  # a new domain: its own proportions
                    window.clear()
                    self._window_fill(b, int(o.window_fill))
        elif reason is None:
            reason = "cold"
        on = search_on if reason else "sub"
        ref = self._known(b, on)[_key(current)] if o.track else 0.0
        if not math.isfinite(ref):
            mode = "skip"  # nothing comparable on this batch: keep α, leave the search state alone
            final = current
        elif reason:
            mode = "search"
            self._cold_search(b, on, ref, clear=reason != "periodic")
            final = self._select(b, current, on, None)
        else:
            s.since_probe += 1
            if s.probe_interval is None:
                s.probe_interval = float(self.probe_every())
            mode = "probe" if s.since_probe >= s.probe_interval else "track"
            if mode == "probe":
                s.since_probe = 0
                self._probe(b, ref)
            if mode == "track" and len(b.full) == 1:
                final = current  # only the centre was evaluated: what _select returns, without its work
            else:
                final = self._select(b, current, "sub", float(o.switch_margin))
        logits, g_final = self._full(b, final)  # reused: the search already made this pass
        version = window.version if window is not None else None
        mixed = 0
        if torch.is_tensor(images) and (window is not None or o.mix_threshold is not None):
            first = _key(current) if _key(current) in b.full else next(iter(b.full))
            logits, mixed = self._after(b, logits, first)

        center = current
        if mode == "search":
            center = final
        elif mode == "probe" and _key(final) != _key(current):
            # the batch's winner predicts this batch; the centre moves only if the GP, which pools the
            # recent batches, agrees (one batch's noise must not drag the next batches along)
            self._observe(b, _key(final), g_final - g_cur, "full")
            means = self.bo.posterior_mean([current, final], known=self._exact_term())
            center = final if means is None or means[1] < means[0] else current
        if mode != "skip":
            g_center = b.full[_key(center)][1]
            if o.track and _key(center) != _key(current):
                means = self.bo.posterior_mean([current, center])  # re-express the GP data vs the centre
                delta = g_center - g_cur - self._exact_delta(center, current)  # the GP's part of the change
                self.bo.shift(means[1] - means[0] if means is not None else delta)
            restart = mode == "search" and reason != "periodic"
            d_center = self._drift_value(g_center, center)
            self.drift.update(s.drift, d_center, restart,
                              d_center - self._drift_value(g_cur, current) if math.isfinite(g_cur) else 0.0, n)
            s.since_search = 0 if mode == "search" else s.since_search + 1
        if mode == "search" or (mode == "probe" and _key(final) != _key(current)):
            s.probe_interval = float(self.probe_every())  # the landscape moved: look again soon
        elif mode == "probe":  # the probe lost: the search is stable, probe less often
            s.probe_interval = min(s.probe_interval * float(o.probe_backoff),
                                   max(float(o.probe_every_max), float(self.probe_every())))
        if (o.window_move and mode in ("track", "probe") and _key(center) == _key(current)
                and window is not None and window.version != version and self._exact_on()):
            center = self._window_move(center, ref)  # rows entered the window: its term moved
        self.bo.next_batch()
        s.alpha, s.center, s.pending, s.batches = float(final), float(center), None, s.batches + 1
        jump = o.search_on_jump
        if mode == "probe" and jump is not None and abs(center - current) >= float(jump):
            s.pending = "jump"  # the landscape moved under a steady objective level: re-localise
        seconds = time.perf_counter() - t0
        s.info = {
            "alpha": s.alpha,
            "center": s.center,
            "objective": g_final,
            "alphas": [a for a, _, _ in b.log],
            "objectives": [v for _, v, _ in b.log],
            "fractions": [f for _, _, f in b.log],
            "forward_passes": ev.passes,
            "merges": ev.merges,
            "seconds": seconds,
            "seconds_forward": ev.seconds_forward,
            "seconds_merge": ev.seconds_merge,
            "seconds_bo": max(seconds - ev.seconds_forward - ev.seconds_merge, 0.0),
            "mode": mode,
            "reason": reason,
            "switched": _key(final) != _key(current),
            "nonfinite": b.nonfinite,
            "dropped_rows": b.dropped,
            "gp_fits": self.bo.n_fits,
            **({"window_rows": len(s.window)} if s.window is not None else {}),
            **({"mixed_rows": mixed} if o.mix_threshold is not None else {}),
            "fit_failures": self.bo.fit_failures,
        }
        return logits


def variant(objective: str, **defaults: Any) -> Any:
    """A registry factory: :class:`AdaWiSE` with ``objective`` fixed and ``defaults`` under the caller's options."""
    def factory(zeroshot: nn.Module, finetuned: nn.Module, **options: Any) -> AdaWiSE:
        if options.get("objective", objective) != objective:
            raise UsageError(f"adawise-{objective} fixes objective={objective!r}; use 'adawise' to choose")
        options = {**defaults, **options, "objective": objective}
        return AdaWiSE(zeroshot, finetuned, **options)

    factory.__name__ = factory.__qualname__ = f"adawise_{objective}"
    factory.method_class = AdaWiSE  # type: ignore[attr-defined]
    factory.__doc__ = f"AdaWiSE with the ``{objective}`` objective (same options as :class:`AdaWiSE`)."
    return factory


register("adawise-infomax")(variant("infomax"))
register("adawise-anchored")(variant("anchored"))
