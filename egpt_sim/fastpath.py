"""Vectorised fast path: the SimPy model's semantics, numpy over the requests of a scenario.

``simulate_fast(cfg, traces, bank)`` returns the same ``requests`` frame as
:func:`egpt_sim.runner.simulate` (same columns, same values to float rounding, empty
timeline) for every strategy, GPU count and acceptance source, consuming the *same*
draws of the :class:`~egpt_sim.draws.DrawBank` in the same order:

* the j-th target pass after prefill uses ``target_decode[:, j]`` (k = 0) or the
  request's per-sample verify cost ``bank.verify_table(k)[:, k]`` (k > 0); the i-th
  drafter step uses ``drafter_decode[:, i]`` (a discarded in-flight step still consumes
  its index); the n-th drafter synchronisation uses ``acceptance_u[:, n]`` through
  ``source.runs(u, n == 0, sample_u)``.
* Same token bookkeeping as :mod:`egpt_sim.processes` (commit / keep-or-resync rules,
  window budget, ``lookahead_blocks * gamma`` cap after the target prefill, never a draft
  past position N, verify k <= N - committed - 1, d1 == t1 counted as accepted).
* Same rate model as :mod:`egpt_sim.gpu`: while both roles run a GPU stage, each
  progresses at ``1 / contention_factor(role, stage, peer's stage)`` (tables
  ``rt_pair`` / ``rd_pair`` indexed by the two stage codes, filled from the same
  :class:`~egpt_sim.contention.ContentionModel`), else at rate 1; load/preprocess are CPU
  stages; a draft step is a drafter decode_step, as itself and as a peer; the drafter's
  in-flight step keeps running (and contending) after the drafter is stopped. One GPU
  uses the same-GPU model; two GPUs the host model (threads), which is contended exactly
  like one GPU when not all ones, and rate 1 everywhere otherwise.
* Same CPU lane (:mod:`egpt_sim.processes`): in the window strategies the target's first
  CPU stage carries the wait for the drafter's CPU stages.
* ``adaptive_budget`` with a window budget of 0 (decided per scenario from expected
  quantities, :func:`egpt_sim.strategies.window_budget_plan`) is routed to the
  target_only engine; otherwise its budget is a per-scenario constant cap.

How (per strategy):

* ``target_only`` / ``drafter_only``: closed sums (prefix sums of the decode streams).
  The baseline (target_only on the same draws) is cached per (bank, N).
* ``serial_sd``: nothing overlaps, and every target pass re-synchronises the drafter, so
  it is a lock-step loop over target passes (pass j of every request uses column j).
* ``prefill_then_verify`` / ``adaptive_budget`` / ``parallel_sd`` (one engine):

  - phase 1, a lock-step event loop: each request holds at most one target and one
    drafter activity; one iteration advances every request to *its own* next
    completion (processor sharing between the two activities) and applies the
    completion handlers with masks. It covers both prefill phases and the window.
  - phase 2, a lock-step loop over target passes, once a request's target is in a pass
    and its drafter is past its prefill: within one pass nothing re-syncs, so the
    drafter's in-flight step and the m further steps it may take
    (m = min(committed + cap, N) - drafter_pos; 0 once stopped) run back to back at the
    contended rate while the target runs; prefix sums of their works give the pass end
    and the drafter completions before it; the step in flight at the pass end carries
    over (and is discarded if the commit re-syncs the drafter).
  - prefill_then_verify / adaptive_budget leave the loop as soon as the drafter has
    exited and the target is in a decode step; the rest is a closed sum.

Tie rule: when a target activity and a drafter activity of the same request complete
at the same instant, the target's completion is handled first (phase 2: a drafter step
ending exactly at the pass end is booked after the commit). With continuous random
durations this has probability zero (SimPy would order by event insertion).
Float sums are associated differently from SimPy's clock (prefix sums), so times agree
to ~1e-12 relative, not bit for bit.

Batching: ``simulate_many(cfgs, traces, bank)`` stacks scenarios of one strategy, GPU
placement and length (different acceptance, gamma, contention, lookahead...) row-wise
into one engine call, every scenario constant being a per-row array; numpy's per-call
overhead dominates at 500 requests, so this roughly halves the cost of a grid. Each
scenario's result is what a lone :func:`simulate_arrays` call gives.

There is no SimPy fallback: every strategy / GPU count / acceptance source is
vectorised. :func:`run_grid` still routes a strategy missing from ``FAST_STRATEGIES``
(say, one registered later) to SimPy and counts scenarios per engine, so a fallback
would show up in the benchmark output.

``run_grid(configs, traces_path, workers, use_fast=True)`` (this module) runs a list of
scenarios over a process pool (the trace-set path goes to the workers; each builds one
:class:`DrawBank` per draw key and reuses it) and returns one summary row per scenario.

Written against ``egpt_sim.processes`` / ``strategies`` / ``gpu`` / ``runner`` as of the
per-sample replay / peer-activity contention change (d1 == t1 counted in
``accepted_tokens`` and ``window_accepted``, the latter capped at ``window_drafts``; the
CPU lane; adaptive budget fixed at request start); ``tests/test_fastpath.py`` fails if the
reference model changes semantics (example, peer-dependent synthetic and h100/fp16 sets).
"""

from __future__ import annotations

import time
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .acceptance import NEEDS_NO_ACCEPTANCE, source_for
from .config import SimConfig
from .draws import DrawBank
from .runner import (
    REQUEST_COLUMNS,
    TIMELINE_COLUMNS,
    SimResult,
    check_bank_scenario,
    contention_for,
    draw_bank,
    planning_inputs,
    simulate,
    time_source_detail,
)
from .schema import CPU_STAGES
from .traces import PREFILL_PHASE_STAGES, TraceSet
from .whatif import scenario_traces, time_source_of

__all__ = ["simulate_fast", "simulate_arrays", "simulate_many", "run_grid", "summarize_arrays", "engine_for", "FAST_STRATEGIES"]

_EPS_MS = 1e-9  # egpt_sim.gpu._EPS_MS: a GPU activity with no more work than this takes no time
FAST_STRATEGIES = ("target_only", "drafter_only", "serial_sd", "prefill_then_verify",
                   "parallel_sd", "adaptive_budget")
_COUNTERS = ("drafted_tokens", "window_drafts", "wasted_drafts", "accepted_tokens",
             "window_accepted", "verify_passes", "target_passes")
_GPU_STAGE = tuple(s not in ("load", "preprocess") for s in PREFILL_PHASE_STAGES)


# --------------------------------------------------------------------------- caches


class _BankCache:
    """Per-DrawBank derived arrays: streams, prefix sums, run tables, baselines."""

    def __init__(self, bank: DrawBank):
        self._bank = weakref.ref(bank)  # no strong ref: the cache dies with its bank
        self.n = bank.n_requests
        self.rows = np.arange(self.n)
        self._csum: dict[str, np.ndarray] = {}
        self._min: dict[str, tuple[int, float]] = {}
        self.runs: dict[tuple, tuple] = {}
        self.baseline: dict[int, np.ndarray] = {}
        ph_t, ph_d = bank.phase_ms["target"], bank.phase_ms["drafter"]
        # sequential sums, as SimPy's clock accumulates them
        self.phase_sum = {
            "target": ((ph_t[:, 0] + ph_t[:, 1]) + ph_t[:, 2]) + ph_t[:, 3],
            "drafter": ((ph_d[:, 0] + ph_d[:, 1]) + ph_d[:, 2]) + ph_d[:, 3],
        }

    @property
    def bank(self) -> DrawBank:
        return self._bank()

    def stream(self, name: str, n: int) -> np.ndarray:
        """The (n_requests, >= n) draws of ``name`` (extends the bank, prefix-stable)."""
        return self.bank.ensure(name, n)

    def stream_min(self, name: str, n: int) -> float:
        """Smallest draw among the generated columns of ``name`` (at least n of them)."""
        ent = self._min.get(name)
        if ent is None or ent[0] < n:
            arr = self.stream(name, n)
            ent = self._min[name] = (arr.shape[1], float(arr.min()) if arr.size else 0.0)
        return ent[1]

    def csum(self, name: str, n: int) -> np.ndarray:
        """Prefix sums with a leading 0 column: ``out[:, i] = sum(stream[:, :i])``, i <= n."""
        c = self._csum.get(name)
        if c is None or c.shape[1] < n + 1:
            arr = self.stream(name, n)
            c = np.concatenate([np.zeros((self.n, 1)), np.cumsum(arr, axis=1)], axis=1)
            self._csum[name] = c
        return c

    def run_table(self, key, source, width: int) -> np.ndarray:
        """``table[:, n]`` = run length of the n-th synchronisation (same u as SimPy)."""
        ent = self.runs.get(key)
        t = None if ent is None or ent[0] is not source else ent[1]
        if t is None or t.shape[1] < width:
            w = max(width, 64)
            u = self.stream("acceptance_u", w)[:, :w]
            first = np.zeros((self.n, w), dtype=bool)
            first[:, 0] = True
            sample_u = np.repeat(self.bank.sample_u[:, None], w, axis=1)
            # element-wise inverse CDF: one call on flat 1-D arrays (the protocol's shape)
            t = np.asarray(source.runs(u.ravel(), first.ravel(), sample_u.ravel()), dtype=np.int64)
            t = t.reshape(self.n, w)
            self.runs[key] = (source, t)  # the source is kept alive with its table
        return t


_BANK_CACHES: "weakref.WeakKeyDictionary[DrawBank, _BankCache]" = weakref.WeakKeyDictionary()
_TRACE_CACHES: dict[int, tuple] = {}


def _bank_cache(bank: DrawBank) -> _BankCache:
    c = _BANK_CACHES.get(bank)
    if c is None:
        c = _BANK_CACHES[bank] = _BankCache(bank)
    return c


def _trace_cache(traces: TraceSet) -> dict:
    """Per-TraceSet cache (acceptance sources, provenance); dropped with the trace set."""
    key = id(traces)
    ent = _TRACE_CACHES.get(key)
    if ent is None or ent[0]() is not traces:
        ent = (weakref.ref(traces), {})
        _TRACE_CACHES[key] = ent
        weakref.finalize(traces, _drop_trace_cache, key, ent[0])
    return ent[1]


def _drop_trace_cache(key: int, ref) -> None:
    ent = _TRACE_CACHES.get(key)
    if ent is not None and ent[0] is ref:
        del _TRACE_CACHES[key]


def _acc_key(spec):
    return (type(spec).__name__, spec if not isinstance(spec, list) else tuple(spec))


def _source(cfg: SimConfig, traces: TraceSet):
    tc = _trace_cache(traces)
    key = ("source", _acc_key(cfg.acceptance), cfg.strategy in NEEDS_NO_ACCEPTANCE)
    src = tc.get(key)
    if src is None:
        src = tc[key] = source_for(cfg, traces)
    return src


def _provenance(traces: TraceSet) -> str:
    tc = _trace_cache(traces)
    if "provenance" not in tc:
        tc["provenance"] = traces.provenance()
    return tc["provenance"]


# --------------------------------------------------------------------------- batches


class _Batch:
    """Scenarios of one strategy (and one GPU placement) stacked row-wise: S scenarios x
    n requests = R rows; row r is request ``req[r]`` of scenario ``sid[r]``. Stacking
    amortises numpy's per-call overhead; every per-scenario constant is a per-row array."""

    def __init__(self, cfgs: list[SimConfig], traces: TraceSet, bank: DrawBank):
        c0 = cfgs[0]
        self.cfgs = cfgs
        self.strategy = c0.strategy
        self.contention = [contention_for(c, traces) for c in cfgs]
        self.shared = _contended(c0, self.contention[0])  # the two roles can slow each other
        self.bc = _bank_cache(bank)
        self.bank = bank
        self.n = n = bank.n_requests
        self.S = S = len(cfgs)
        self.R = S * n
        self.req = np.tile(np.arange(n), S)
        self.sid = np.repeat(np.arange(S), n)
        self.rows = np.arange(self.R)
        N_s = np.array([int(c.output_tokens) for c in cfgs], dtype=np.int64)
        g_s = np.array([int(c.gamma) for c in cfgs], dtype=np.int64)
        self.N_s, self.g_s = N_s, g_s
        self.Nmax = int(N_s.max())
        self.gmax = int(g_s.max())
        self.Nr = N_s[self.sid]
        self.gr = g_s[self.sid]
        la_s = np.array([int(c.lookahead_blocks) for c in cfgs], dtype=np.int64) * g_s
        self.la_r = la_s[self.sid]
        self.lamax = int(la_s.max())
        self.sources = [_source(c, traces) for c in cfgs]
        # contended rates (1 / factor) by (target stage code, drafter stage code), as
        # gpu.contended_rate computes them: rt[s, tc, dc], rd[s, dc, tc]
        self.rt_pair, self.rd_pair = _rate_tables(self.contention)
        self.vtab = bank.verify_table(max(self.gmax, 1))[self.req]  # (R, >= gmax + 1) per-sample verify ms
        self.phase_t = bank.phase_ms["target"][self.req]
        self.phase_d = bank.phase_ms["drafter"][self.req]
        self.plans = ([_plan(c, traces, src, cm) for c, src, cm in zip(cfgs, self.sources, self.contention)]
                      if self.strategy == "adaptive_budget" else None)

    def runs(self, width: int) -> np.ndarray:
        """Stacked (R, width) run table: row r, column j = the j-th sync of that request."""
        tabs = [self.bc.run_table(_acc_key(c.acceptance), src, width)[:, :width]
                for c, src in zip(self.cfgs, self.sources)]
        return tabs[0] if len(tabs) == 1 else np.concatenate(tabs, axis=0)

    def split(self, out: dict) -> list[dict]:
        n = self.n
        return [{k: v[s * n:(s + 1) * n] for k, v in out.items()} for s in range(self.S)]


# stage codes of the rate tables: target 0..3 prefill phase, 4 verify, 5 decode step;
# drafter 0..3 prefill phase, 4 draft step (measured as decode_step)
_T_CODES = PREFILL_PHASE_STAGES + ("verify", "decode_step")
_D_CODES = PREFILL_PHASE_STAGES + ("draft_step",)


def _rate_tables(models) -> tuple[np.ndarray, np.ndarray]:
    """Per scenario: rate of the target at code tc beside the drafter at code dc, and the
    reverse (1 where either is a CPU stage: CPU stages never share the GPU)."""
    S = len(models)
    rt = np.ones((S, len(_T_CODES), len(_D_CODES)))
    rd = np.ones((S, len(_D_CODES), len(_T_CODES)))
    for s, cm in enumerate(models):
        for i, ts in enumerate(_T_CODES):
            for j, ds in enumerate(_D_CODES):
                if ts in CPU_STAGES or ds in CPU_STAGES:
                    continue
                rt[s, i, j] = 1.0 / cm.contention_factor("target", ts, ds)
                rd[s, j, i] = 1.0 / cm.contention_factor("drafter", ds, ts)
    return rt, rd


def _contended(cfg: SimConfig, model) -> bool:
    """One GPU, or two GPUs whose host contention model is not all ones."""
    return int(cfg.n_gpus) == 1 or not model.is_trivial


def _plan(cfg: SimConfig, traces: TraceSet, source, model) -> dict:
    tc = _trace_cache(traces)
    key = ("plan", cfg.replace(n_requests=1, seed=0, label=""), _acc_key(cfg.acceptance))
    if key not in tc:
        tc[key] = planning_inputs(cfg, traces, source, model)
    return tc[key]


def _empty_counters(n: int) -> dict:
    out = {k: np.zeros(n, dtype=np.int64) for k in _COUNTERS}
    for k in ("ttft_ms", "target_prefill_end_ms", "drafter_prefill_end_ms"):
        out[k] = np.full(n, np.nan)
    return out


# --------------------------------------------------------------------------- closed forms


def _target_only_one(bc: _BankCache, N: int) -> dict:
    out = _empty_counters(bc.n)
    tpe = bc.phase_sum["target"]
    ct = bc.csum("target_decode", N - 1)
    out["latency_ms"] = tpe + ct[:, N - 1]
    out["ttft_ms"] = tpe.copy()
    out["target_prefill_end_ms"] = tpe.copy()
    out["target_passes"][:] = N - 1
    return out


def _drafter_only_one(bc: _BankCache, N: int) -> dict:
    out = _empty_counters(bc.n)
    dpe = bc.phase_sum["drafter"]
    cd = bc.csum("drafter_decode", N - 1)
    out["latency_ms"] = dpe + cd[:, N - 1]
    out["ttft_ms"] = dpe.copy()
    out["drafter_prefill_end_ms"] = dpe.copy()
    return out


def _target_only(b: _Batch) -> list[dict]:
    return [_target_only_one(b.bc, int(N)) for N in b.N_s]


def _drafter_only(b: _Batch) -> list[dict]:
    return [_drafter_only_one(b.bc, int(N)) for N in b.N_s]


def _baseline(bc: _BankCache, N: int) -> np.ndarray:
    """target_only latency on the same draws (cached per bank and N)."""
    base = bc.baseline.get(N)
    if base is None:
        base = bc.baseline[N] = _target_only_one(bc, N)["latency_ms"]
    return base


def _serial_sd(b: _Batch) -> list[dict]:
    """Drafter prefill, target prefill, then {draft want; verify} — nothing overlaps.

    After every target pass the drafter re-synchronises (a pass over k drafts accepts
    L <= k; keeping would need drafter_pos = c + k >= c + L + 1 and run_end >= c + L + 1,
    i.e. L < k and L = k), so each loop iteration starts with no drafts available and
    drafts exactly ``want = min(gamma, N - c - 1)``; pass j of every request is column j.
    """
    bc, R, req, rows = b.bc, b.R, b.req, b.rows
    Nr, gr = b.Nr, b.gr
    out = _empty_counters(R)
    dpe = bc.phase_sum["drafter"][req]
    tpe = dpe + bc.phase_sum["target"][req]
    out["drafter_prefill_end_ms"] = dpe
    out["target_prefill_end_ms"] = tpe.copy()
    out["ttft_ms"] = tpe.copy()
    rt = b.runs(b.Nmax + 2)
    # drafter prefill drafts position 1; target prefill commits it (commit(0))
    r0 = rt[:, 0].astype(np.int64)
    keep = r0 >= 1
    accepted = keep.astype(np.int64)  # d1 == t1 counts as accepted
    window_acc = accepted.copy()
    run_end = np.where(keep, r0, 1 + rt[:, 1])
    runs_used = np.where(keep, 1, 2)
    committed = np.ones(R, dtype=np.int64)  # N >= 1
    out["window_drafts"][:] = 1
    t = tpe.copy()
    steps = np.zeros(R, dtype=np.int64)
    verify_passes = np.zeros(R, dtype=np.int64)
    passes = np.zeros(R, dtype=np.int64)
    if b.Nmax >= 2:
        cd = bc.csum("drafter_decode", b.gmax * (b.Nmax - 1) + 1)
        td = bc.stream("target_decode", b.Nmax - 1)
        vtab = b.vtab
        width = rt.shape[1] - 1
        for j in range(b.Nmax - 1):
            act = committed < Nr
            if not act.any():
                break
            want = np.where(act, np.minimum(gr, Nr - committed - 1), 0)
            t += cd[req, steps + want] - cd[req, steps]
            steps += want
            k = want  # drafts available == want (see docstring); verify_budget = want
            ms = np.where(k > 0, vtab[rows, k], td[req, j])
            t = np.where(act, t + ms, t)
            L = np.maximum(0, np.minimum(run_end - committed, k))
            c2 = np.minimum(committed + L + 1, Nr)
            # window_drafts = 1 (d1 only): window_accepted stays d1 == t1 (min(L, 0) = 0 added)
            accepted += np.where(act, L, 0)
            verify_passes += act & (k > 0)
            passes += act
            # always re-sync after a pass
            run_end = np.where(act, c2 + rt[rows, np.minimum(runs_used, width)], run_end)
            runs_used = runs_used + act
            committed = np.where(act, c2, committed)
    out["latency_ms"] = t
    out["drafted_tokens"] = 1 + steps
    out["accepted_tokens"] = accepted
    out["window_accepted"] = window_acc
    out["verify_passes"] = verify_passes
    out["target_passes"] = passes
    return b.split(out)


# --------------------------------------------------------------------------- event engine

# target program counter: 0..3 prefill-phase stages, 4 = target pass, 5 = done, 6 = parked
# drafter program counter: 0..3 prefill-phase stages, 4 = draft step, 5 = idle (waiting), 6 = exited
_T_PASS, _T_DONE, _T_PARKED = 4, 5, 6
_D_STEP, _D_IDLE, _D_EXIT = 4, 5, 6


def _window_engine(b: _Batch, aggregate: bool = True) -> list[dict]:
    """prefill_then_verify / adaptive_budget / parallel_sd (strategies._window_then).

    ``aggregate=False`` runs the plain event loop to the end (one completion per
    request per iteration); ``True`` switches each request to the per-pass loop once
    its drafter is past its prefill and its target in a pass (same semantics, fewer
    iterations; both are tested against SimPy).
    """
    bc, R, req, sid = b.bc, b.R, b.req, b.sid
    Nr, gr = b.Nr, b.gr
    keep_drafting = b.strategy == "parallel_sd"
    adaptive = b.strategy == "adaptive_budget"
    cap_after = b.la_r if keep_drafting else np.zeros(R, dtype=np.int64)
    shared = b.shared
    inf = np.inf

    phase_t, phase_d = b.phase_t, b.phase_d
    rt_pair, rd_pair = b.rt_pair, b.rd_pair
    vtab = b.vtab
    td = bc.stream("target_decode", max(b.Nmax - 1, 1))
    rt = b.runs(b.Nmax + 2)
    dd_width = [0]
    dd = [None]
    dd_lo = [0.0]  # min over the generated drafter steps (bounds steps per pass)

    def drafter_stream(need):
        if need > dd_width[0]:
            w = max(need, 2 * b.Nmax + 2 * b.lamax + 64)
            dd[0] = bc.stream("drafter_decode", w)
            dd_width[0] = dd[0].shape[1]
            dd_lo[0] = bc.stream_min("drafter_decode", dd_width[0])
        return dd[0]

    drafter_stream(1)

    # ---- state (run_request: initial sync at position 0, then generation reset to 0)
    now = np.zeros(R)
    latency = np.full(R, np.nan)
    tpc = np.zeros(R, dtype=np.int64)
    # CPU lane (processes module docstring): the target's load starts when the drafter's
    # preprocess ends, so its first CPU stage carries that wait
    tw = (phase_d[:, 0] + phase_d[:, 1]) + phase_t[:, 0]
    tgpu = np.full(R, _GPU_STAGE[0])
    kcur = np.zeros(R, dtype=np.int64)
    dpc = np.zeros(R, dtype=np.int64)
    dw = phase_d[:, 0].copy()
    dgpu = np.full(R, _GPU_STAGE[0])
    if _GPU_STAGE[0]:
        tw[tw <= _EPS_MS] = 0.0
        dw[dw <= _EPS_MS] = 0.0

    committed = np.zeros(R, dtype=np.int64)
    dpos = np.zeros(R, dtype=np.int64)
    run_end = rt[:, 0].astype(np.int64)
    runs_used = np.ones(R, dtype=np.int64)
    generation = np.zeros(R, dtype=np.int64)
    step_gen = np.zeros(R, dtype=np.int64)
    stopped = np.zeros(R, dtype=bool)
    tpref = np.zeros(R, dtype=bool)
    dsteps = np.zeros(R, dtype=np.int64)
    tpasses = np.zeros(R, dtype=np.int64)
    drafted = np.zeros(R, dtype=np.int64)
    wasted = np.zeros(R, dtype=np.int64)
    window_drafts = np.zeros(R, dtype=np.int64)
    accepted = np.zeros(R, dtype=np.int64)
    window_acc = np.zeros(R, dtype=np.int64)
    verify_passes = np.zeros(R, dtype=np.int64)
    if adaptive:  # strategies.adaptive_budget: fixed per scenario at request start (b >= 1 here)
        budget = np.array([int(p["window_budget"]) for p in b.plans], dtype=np.int64)[sid]
    else:
        budget = gr.copy()
    tpe = np.full(R, np.nan)
    dpe = np.full(R, np.nan)
    n_done = 0

    def rates(t_sel, d_sel):
        """Contended rates of the target / drafter activities of requests ``t_sel``."""
        tc = np.where(tpc[t_sel] < _T_PASS, tpc[t_sel], np.where(kcur[t_sel] > 0, 4, 5))
        dc = np.minimum(dpc[d_sel], _D_STEP)
        s_ = sid[t_sel]
        return rt_pair[s_, tc, dc], rd_pair[s_, dc, tc]

    # ---- helpers on index arrays
    def sync(s):
        c = committed[s]
        dpos[s] = c
        run_end[s] = c + rt[s, runs_used[s]]
        runs_used[s] += 1
        generation[s] += 1

    def commit(idx, k):
        c = committed[idx]
        L = np.maximum(0, np.minimum(run_end[idx] - c, k))
        c2 = np.minimum(c + L + 1, Nr[idx])
        committed[idx] = c2
        accepted[idx] += L
        bad = (dpos[idx] < c2) | (run_end[idx] < c2)
        if bad.any():
            sync(idx[bad])
        return L

    def start_pass(idx, k):
        j = tpasses[idx]
        ri = req[idx]
        ver = k > 0
        ms = np.where(ver, vtab[idx, k], td[ri, j])
        tpasses[idx] = j + 1
        tw[idx] = ms
        tgpu[idx] = True
        tpc[idx] = _T_PASS
        kcur[idx] = k

    def finish(idx):
        latency[idx] = now[idx]
        tpc[idx] = _T_DONE
        tw[idx] = 0.0
        dpc[idx] = _D_EXIT
        dw[idx] = inf
        dgpu[idx] = False
        tgpu[idx] = False

    def verify_k(idx, limit):
        c = committed[idx]
        avail = np.maximum(0, dpos[idx] - c)
        return np.maximum(0, np.minimum(np.minimum(avail, limit), Nr[idx] - c - 1))

    def drafter_next(idx):
        """The drafter loop's decision after a completion or a wake-up."""
        c = committed[idx]
        n_ = Nr[idx]
        ex = stopped[idx] | (c >= n_)
        cap = np.where(tpref[idx], cap_after[idx], budget[idx])
        p = dpos[idx]
        go = ~ex & (np.maximum(0, p - c) < cap) & (p < n_)
        g = idx[go]
        if g.size:
            i = dsteps[g]
            arr = drafter_stream(int(i.max()) + 1)
            dw[g] = arr[req[g], i]
            dsteps[g] = i + 1
            step_gen[g] = generation[g]
            dpc[g] = _D_STEP
            dgpu[g] = True
        rest = idx[~go]
        if rest.size:
            dpc[rest] = np.where(ex[~go], _D_EXIT, _D_IDLE)
            dw[rest] = inf
            dgpu[rest] = False

    def wake(idx):
        w = idx[dpc[idx] == _D_IDLE]
        if w.size:
            drafter_next(w)

    def pass_end(c):
        """Target pass ends (now): book it, then the next pass starts and the drafter wakes."""
        k = kcur[c]
        first_pass_verify = (k > 0) & (tpasses[c] == 1)
        verify_passes[c] += k > 0
        L = commit(c, k)
        sel = first_pass_verify & (window_acc[c] == 1)
        if sel.any():  # d1 matched: add the window drafts the first verify accepted
            f = c[sel]
            window_acc[f] += np.minimum(L[sel], window_drafts[f] - 1)
        done = committed[c] >= Nr[c]
        nd = 0
        if done.any():
            finish(c[done])
            nd = int(done.sum())
            c = c[~done]
        if c.size:
            start_pass(c, verify_k(c, gr[c]) if keep_drafting else np.zeros(c.size, dtype=np.int64))
            wake(c)
        return nd

    def finalize_ar():
        """prefill_then_verify / adaptive: drafter gone, target in AR decode -> closed sum."""
        f = np.flatnonzero((dpc == _D_EXIT) & (tpc == _T_PASS) & (kcur == 0))
        if f.size:
            rem = Nr[f] - committed[f] - 1  # decode steps after the current one
            j0 = tpasses[f]
            ct = bc.csum("target_decode", int((j0 + rem).max()))
            ri = req[f]
            end = now[f] + tw[f]  # drafter gone: the current step runs at rate 1
            now[f] = end + (ct[ri, j0 + rem] - ct[ri, j0])
            tpasses[f] = j0 + rem
            committed[f] = Nr[f]
            finish(f)
        return int(f.size)

    # ---------------------------------------------------------------- phase 1: events
    # One completion per request per iteration. With ``aggregate``, a request whose
    # target is in a pass while its drafter is past its prefill is parked (frozen in
    # time) and phase 2 takes it over.
    one = np.ones(R)
    parked_tw = np.zeros(R)
    parked_dw = np.full(R, inf)
    n_parked = 0
    while n_done + n_parked < R:
        # -- advance every request to its next completion (processor sharing on one GPU)
        if shared:
            both = tgpu & dgpu
            rt_, rd_ = one.copy(), one.copy()
            bi = np.flatnonzero(both)
            if bi.size:
                rt_[bi], rd_[bi] = rates(bi, bi)
            ttime = tw / rt_
            dtime = dw / rd_
        else:
            ttime = tw
            dtime = dw
        tev = ttime <= dtime  # tie: the target's completion is handled first
        dt = np.where(tev, ttime, dtime)
        now += dt
        if shared:
            tw -= dt * rt_
            dw -= dt * rd_
        else:
            tw -= dt
            dw -= dt

        te = np.flatnonzero(tev)
        de = np.flatnonzero(~tev)
        # -- target completions
        if te.size:
            pc = tpc[te]
            m = pc < 3
            if m.any():  # next prefill-phase stage
                a = te[m]
                npc = pc[m] + 1
                tpc[a] = npc
                w = phase_t[a, npc]
                gpu = npc >= 2
                tw[a] = np.where(gpu & (w <= _EPS_MS), 0.0, w)
                tgpu[a] = gpu
            m = pc == 3
            if m.any():  # target prefill ends: ttft, window drafts, d1 == t1, commit(0)
                a = te[m]
                tpref[a] = True
                tpe[a] = now[a]
                window_drafts[a] = drafted[a]
                d1 = (dpos[a] >= 1) & (run_end[a] >= 1)
                accepted[a] += d1
                window_acc[a] = np.where(d1, 1, window_acc[a])
                commit(a, 0)
                if keep_drafting:
                    k = verify_k(a, gr[a])
                else:
                    stopped[a] = True
                    k = verify_k(a, budget[a])
                done = committed[a] >= Nr[a]
                if done.any():
                    finish(a[done])
                    n_done += int(done.sum())
                    k, a = k[~done], a[~done]
                if a.size:
                    start_pass(a, k)
                    wake(a)
            m = pc == _T_PASS
            if m.any():  # target pass ends
                n_done += pass_end(te[m])
        # -- drafter completions
        if de.size:
            pc = dpc[de]
            m = pc == _D_STEP
            if m.any():
                c = de[m]
                same = step_gen[c] == generation[c]
                dpos[c] += same
                drafted[c] += same
                wasted[c] += ~same
                drafter_next(c)
            m = pc < 3
            if m.any():
                a = de[m]
                npc = pc[m] + 1
                dpc[a] = npc
                w = phase_d[a, npc]
                gpu = npc >= 2
                dw[a] = np.where(gpu & (w <= _EPS_MS), 0.0, w)
                dgpu[a] = gpu
            m = pc == 3
            if m.any():  # drafter prefill ends: its logits draft position 1
                a = de[m]
                dpe[a] = now[a]
                fresh = (generation[a] == 0) & (committed[a] == 0)
                dpos[a] = np.where(fresh, 1, dpos[a])
                drafted[a] += fresh
                drafter_next(a)
        if not keep_drafting:
            n_done += finalize_ar()
        if aggregate:
            pk = np.flatnonzero((tpc == _T_PASS) & (dpc >= _D_STEP))
            if pk.size:
                parked_tw[pk] = tw[pk]
                parked_dw[pk] = dw[pk]
                tpc[pk] = _T_PARKED
                tw[pk] = 0.0  # frozen: next completion "now", ignored (no handler for _T_PARKED)
                dw[pk] = inf
                n_parked += pk.size

    # ---------------------------------------------------------------- phase 2: per pass
    # Every live request: target in a pass (remaining work tw, contended rate trc),
    # drafter in a draft step (remaining dw), idle, or exited. Within a pass nothing
    # re-syncs, so the drafter runs its in-flight step, then up to m more steps back to
    # back (m = P - drafter_pos, P = min(committed + cap, N); 0 once stopped), all at
    # the contended rate while the target runs. The pass ends at T; the drafter
    # completions before T are booked, the step in flight at T carries over.
    if n_parked:
        pk = np.flatnonzero(tpc == _T_PARKED)
        tpc[pk] = _T_PASS
        tw[pk] = parked_tw[pk]
        dw[pk] = parked_dw[pk]
    A = np.flatnonzero(tpc == _T_PASS)
    while n_done < R:
        twA = tw[A]
        T = twA.copy()  # pass end (from now) when the drafter is not on the GPU
        busy = dpc[A] == _D_STEP
        B = A[busy]
        if B.size:
            nb = B.size
            rb = np.arange(nb)
            dwB = dw[B]
            genok = step_gen[B] == generation[B]
            c = committed[B]
            p1 = dpos[B] + genok
            nB = Nr[B]
            m = np.where(stopped[B], 0, np.maximum(0, np.minimum(c + cap_after[B], nB) - p1))
            twB = twA[busy]
            if shared:
                rtc, rdc = rates(B, B)  # target pass beside a draft step
                tmax = twB / rtc  # pass end if the drafter stays busy throughout
            else:
                rdc = 1.0
                tmax = twB
            mmax = int(m.max())
            if mmax:
                # only steps that can finish within the longest pass matter: kb columns
                dd_min = dd_lo[0]
                kb = min(mmax, 1 + int(np.ceil(float((tmax * rdc).max()) / dd_min))) if dd_min > 0 else mmax
                rB = req[B]
                while True:
                    cols = dsteps[B][:, None] + np.arange(kb)
                    arr = drafter_stream(int(cols.max()) + 1)
                    W = arr[rB[:, None], cols]
                    W[np.arange(kb)[None, :] >= m[:, None]] = inf
                    cum = np.empty((nb, kb + 1))
                    cum[:, 0] = dwB
                    np.cumsum(W, axis=1, out=cum[:, 1:])
                    cum[:, 1:] += dwB[:, None]
                    # truncation is exact only if a request with m > kb is still busy at
                    # tmax (then its pass ends at tmax and q <= kb); else widen and redo
                    if kb < mmax and ((m > kb) & (cum[:, kb] <= tmax * rdc)).any():
                        kb = mmax
                        continue
                    break
                busy_work = cum[rb, np.minimum(m, kb)]
            else:
                kb = 0
                cum = dwB[:, None]
                busy_work = dwB
            if shared:
                bw = busy_work / rdc  # wall time the drafter stays on the GPU
                Tb = np.where(tmax <= bw, tmax, bw + (twB - bw * rtc))
                q = (cum / rdc[:, None] < Tb[:, None]).sum(axis=1)
            else:
                Tb = tmax
                q = (cum < Tb[:, None]).sum(axis=1)
            d0 = q >= 1
            v0 = d0 & genok
            wasted[B] += d0 & ~genok
            inc = v0 + np.maximum(q - 1, 0)
            dpos[B] += inc
            drafted[B] += inc
            dsteps[B] += np.minimum(q, m)
            infl = q <= m
            rem = cum[rb, np.minimum(q, kb)] - Tb * rdc
            dw[B] = np.where(infl, rem, inf)
            step_gen[B] = np.where(infl & d0, generation[B], step_gen[B])
            dpc[B] = np.where(infl, _D_STEP, np.where(stopped[B], _D_EXIT, _D_IDLE))
            dgpu[B] = infl
            T[busy] = Tb
        now[A] += T
        nd = pass_end(A)
        if not keep_drafting:
            nd += finalize_ar()
        if nd:
            n_done += nd
            A = np.flatnonzero(tpc == _T_PASS)

    out = {
        "latency_ms": latency, "ttft_ms": tpe.copy(), "target_prefill_end_ms": tpe,
        "drafter_prefill_end_ms": dpe, "drafted_tokens": drafted, "window_drafts": window_drafts,
        "wasted_drafts": wasted, "accepted_tokens": accepted, "window_accepted": window_acc,
        "verify_passes": verify_passes, "target_passes": tpasses,
    }
    return b.split(out)


_ENGINES = {
    "target_only": _target_only,
    "drafter_only": _drafter_only,
    "serial_sd": _serial_sd,
    "prefill_then_verify": _window_engine,
    "adaptive_budget": _window_engine,
    "parallel_sd": _window_engine,
}


# --------------------------------------------------------------------------- public API


def _check_bank(cfg: SimConfig, bank: DrawBank) -> None:
    if bank.n_requests != cfg.n_requests or bank.seed != cfg.seed:
        raise ValueError(
            f"simulate_fast: DrawBank(seed={bank.seed}, n_requests={bank.n_requests}) does not match "
            f"the config (seed={cfg.seed}, n_requests={cfg.n_requests})"
        )


def _engine_strategy(cfg: SimConfig, traces: TraceSet) -> str:
    """The engine a scenario needs: adaptive_budget with a window budget of 0 IS target_only."""
    if cfg.strategy == "adaptive_budget":
        plan = _plan(cfg, traces, _source(cfg, traces), contention_for(cfg, traces))
        if int(plan["window_budget"]) == 0:
            return "target_only"
    return cfg.strategy


def simulate_many(cfgs: Iterable[SimConfig], traces: TraceSet, bank: DrawBank | None = None, *,
                  aggregate: bool = True, max_batch: int = 24) -> list[dict]:
    """:func:`simulate_arrays` for many scenarios sharing one :class:`DrawBank`.

    Scenarios of the same strategy, GPU placement and length are stacked (up to
    ``max_batch`` per engine call) to amortise numpy's per-call overhead; results come
    back in input order, each exactly what a lone call would give. The scenarios share
    one what-if shape (they share draws): their trace set is ``scenario_traces``'s.
    """
    cfgs = list(cfgs)
    if not cfgs:
        return []
    keys = {c.scenario_key for c in cfgs}
    if len(keys) > 1:
        raise ValueError(f"simulate_many: scenarios of different what-if shapes share no draws: {sorted(map(str, keys))}")
    traces = scenario_traces(cfgs[0], traces)
    bank = bank if bank is not None else draw_bank(cfgs[0], traces)
    check_bank_scenario(bank, traces)
    for c in cfgs:
        _check_bank(c, bank)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(cfgs):
        groups[(_engine_strategy(c, traces), _contended(c, contention_for(c, traces)), int(c.output_tokens))].append(i)
    results: list = [None] * len(cfgs)
    bc = _bank_cache(bank)
    for (strategy, _, N), idx in groups.items():
        engine = _ENGINES[strategy]
        for s in range(0, len(idx), max(1, int(max_batch))):
            part = idx[s: s + max_batch]
            batch = _Batch([cfgs[i] for i in part], traces, bank)
            outs = engine(batch, aggregate=aggregate) if engine is _window_engine else engine(batch)
            base = _baseline(bc, N)
            for i, out in zip(part, outs):
                out["baseline_latency_ms"] = base.copy()
                out["speedup"] = out["baseline_latency_ms"] / out["latency_ms"]
                out["time_source"] = time_source_of(traces, cfgs[i].strategy)  # trace | model (egpt_sim.whatif)
                results[i] = out
    return results


def simulate_arrays(cfg: SimConfig, traces: TraceSet, bank: DrawBank | None = None, *,
                    aggregate: bool = True) -> dict:
    """Per-request result columns as numpy arrays (latency, counters, baseline, speedup)
    and ``time_source`` (a string: ``trace`` | ``model``).

    ``aggregate=False`` keeps the window strategies on the plain event loop (for tests).
    """
    return simulate_many([cfg], traces, bank, aggregate=aggregate)[0]


def _frame(cfg: SimConfig, arr: dict) -> pd.DataFrame:
    data = {"request_id": np.arange(cfg.n_requests)}
    data.update({k: arr[k] for k in REQUEST_COLUMNS if k in arr and k != "time_source"})
    req = pd.DataFrame(data)
    for k in ("strategy", "n_gpus", "output_tokens", "gamma"):
        req[k] = getattr(cfg, k)
    req["acceptance"] = cfg.acceptance_label
    req["time_source"] = arr.get("time_source", "trace")
    return req[list(REQUEST_COLUMNS)]


def simulate_fast(cfg: SimConfig, traces: TraceSet, bank: DrawBank | None = None,
                  timeline: bool = False, *, aggregate: bool = True) -> SimResult:
    """Vectorised equivalent of :func:`egpt_sim.runner.simulate` (no timeline).

    Same ``requests`` columns and values (to float rounding) as the SimPy model on the
    same :class:`DrawBank`. ``timeline=True`` is refused: use the SimPy model for Gantt
    charts.
    """
    if timeline:
        raise ValueError("simulate_fast has no timeline; use egpt_sim.simulate(..., timeline=True)")
    traces = scenario_traces(cfg, traces)
    arr = simulate_arrays(cfg, traces, bank, aggregate=aggregate)
    return SimResult(cfg, _frame(cfg, arr), pd.DataFrame(columns=list(TIMELINE_COLUMNS)),
                     _provenance(traces), contention_for(cfg, traces), time_source_detail(traces))


def summarize_arrays(a: dict) -> dict:
    """:func:`egpt_sim.runner.summarize` computed on :func:`simulate_arrays` output."""
    lat = a["latency_ms"]
    base_mean = float(np.mean(a["baseline_latency_ms"]))
    lat_mean = float(np.mean(lat))
    return {
        "n_requests": int(lat.size),
        "latency_mean_ms": lat_mean,
        "latency_p50_ms": float(np.median(lat)),
        "latency_p90_ms": float(np.quantile(lat, 0.9)),
        "ttft_mean_ms": float(np.mean(a["ttft_ms"])),
        "baseline_mean_ms": base_mean,
        "speedup_of_means": base_mean / lat_mean,
        "speedup_median": float(np.median(a["speedup"])),
        "accepted_mean_tokens": float(np.mean(a["accepted_tokens"])),
        "window_drafts_mean_tokens": float(np.mean(a["window_drafts"])),
        "window_accepted_mean_tokens": float(np.mean(a["window_accepted"])),
        "drafted_mean_tokens": float(np.mean(a["drafted_tokens"])),
        "verify_passes_mean": float(np.mean(a["verify_passes"])),
        "time_source": str(a.get("time_source", "trace")),
    }


# --------------------------------------------------------------------------- grids over processes

_WORKER_STATE: dict = {"traces": {}, "banks": {}}


def _bank_key(cfg: SimConfig) -> tuple:
    return (cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages, cfg.scenario_key)


def _worker_traces(path) -> TraceSet:
    if isinstance(path, TraceSet):  # inline run with an in-memory trace set
        return path
    ts = _WORKER_STATE["traces"].get(path)
    if ts is None:
        _WORKER_STATE["traces"].clear()
        _WORKER_STATE["banks"].clear()
        ts = _WORKER_STATE["traces"][path] = TraceSet.load(path)
    return ts


_MAX_WORKER_BANKS = 4  # a 500-request bank of a long sweep holds tens of MB


def _worker_bank(path: str, traces: TraceSet, cfg: SimConfig) -> DrawBank:
    banks = _WORKER_STATE["banks"]
    key = (path,) + _bank_key(cfg)
    bank = banks.pop(key, None)
    if bank is None:
        bank = draw_bank(cfg, traces)
        while len(banks) >= _MAX_WORKER_BANKS:
            banks.pop(next(iter(banks)))
    banks[key] = bank  # most recently used last
    return bank


def engine_for(cfg: SimConfig, use_fast: bool = True) -> str:
    """``"fast"`` where the fast path covers the scenario, else ``"simpy"`` (the fallback)."""
    return "fast" if use_fast and cfg.strategy in FAST_STRATEGIES else "simpy"


def _run_chunk(traces_path, items: list, use_fast: bool) -> list[dict]:
    """Worker task: ``items`` = [(index, cfg)]; one summary row per scenario."""
    cpu0 = time.process_time()
    traces = _worker_traces(traces_path)
    key = traces_path if isinstance(traces_path, str) else f"<memory {id(traces_path)}>"
    by_bank: dict[tuple, list] = defaultdict(list)
    for idx, cfg in items:
        by_bank[_bank_key(cfg)].append((idx, cfg))
    rows = []
    for group in by_bank.values():
        bank = _worker_bank(key, traces, group[0][1])
        fast = [(i, c) for i, c in group if engine_for(c, use_fast) == "fast"]
        slow = [(i, c) for i, c in group if engine_for(c, use_fast) != "fast"]
        if fast:
            outs = simulate_many([c for _, c in fast], traces, bank)
            for (idx, cfg), arr in zip(fast, outs):
                rows.append({"_index": idx} | cfg.as_dict() | summarize_arrays(arr) | {"engine": "fast"})
        for idx, cfg in slow:
            summ = simulate(cfg, traces, bank=bank).summary()
            summ.pop("provenance", None)
            summ.pop("contention_factors", None)
            summ.pop("time_source_detail", None)
            rows.append({"_index": idx} | cfg.as_dict() | summ | {"engine": "simpy"})
    if rows:  # CPU seconds of this task (a busy machine shows up as wall >> cpu / workers)
        rows[0]["_cpu_s"] = time.process_time() - cpu0
    return rows


_COST_WEIGHT = {"parallel_sd": 1.0, "serial_sd": 0.4, "prefill_then_verify": 0.1,
                "adaptive_budget": 0.1, "target_only": 0.01, "drafter_only": 0.01}


def _plan_tasks(configs: list[SimConfig], n_tasks: int, max_batch: int = 24) -> list[list]:
    """Units = scenarios the fast path stacks into one engine call (same draws, strategy,
    placement, length; <= max_batch); units go to ``n_tasks`` tasks, heaviest first, each
    to the least loaded task (the pool then hands tasks to whichever worker is free)."""
    groups: dict[tuple, list] = defaultdict(list)
    for i, c in enumerate(configs):
        groups[_bank_key(c) + (c.strategy, int(c.n_gpus) == 1, int(c.output_tokens))].append((i, c))
    units = [g[s: s + max_batch] for g in groups.values() for s in range(0, len(g), max_batch)]

    def cost(u):
        c = u[0][1]
        return (0.2 + len(u)) * (c.n_requests / 500) * (1 + c.output_tokens * _COST_WEIGHT.get(c.strategy, 1.0))

    units.sort(key=cost, reverse=True)
    n_tasks = max(1, min(n_tasks, len(units)))
    tasks: list[list] = [[] for _ in range(n_tasks)]
    load = [0.0] * n_tasks
    for u in units:
        k = min(range(n_tasks), key=load.__getitem__)
        tasks[k] += u
        load[k] += cost(u)
    order = sorted(range(n_tasks), key=load.__getitem__, reverse=True)
    return [tasks[k] for k in order if tasks[k]]


def run_grid(configs: Iterable[SimConfig], traces_path: str | Path | TraceSet | None = None,
             workers: int = 2, use_fast: bool = True, chunks_per_worker: int = 6) -> pd.DataFrame:
    """Run scenarios over ``workers`` processes; one summary row per config, in input order.

    ``traces_path``: a trace-set folder or bundled name (None = default bundled set), or
    a loaded :class:`TraceSet` (its ``path`` is sent to workers; an in-memory set only
    runs with ``workers <= 1``). Workers load the trace set themselves and build one
    :class:`DrawBank` per draw key (seed, n_requests, drafter_speed, include_cpu_stages),
    reused across scenarios. ``use_fast=False`` runs the SimPy reference instead. Rows
    carry the config fields, the :func:`~egpt_sim.runner.summarize` numbers (no
    provenance) and ``engine`` ("fast" or "simpy": the fast path falls back to SimPy only
    for strategies it does not cover). ``result.attrs`` holds ``wall_s``,
    ``worker_cpu_s`` (CPU seconds summed over tasks), ``n_fast``, ``n_simpy``,
    ``simulated_requests`` and ``workers``. ``workers <= 1`` runs in this process.
    """
    from concurrent.futures import ProcessPoolExecutor

    from .traces import resolve_trace_set

    configs = list(configs)
    if not configs:
        raise ValueError("run_grid: no scenarios")
    t0 = time.perf_counter()
    if isinstance(traces_path, TraceSet):
        if workers <= 1:
            path = traces_path
        elif Path(traces_path.path).is_dir():
            path = str(traces_path.path)
        else:
            raise ValueError("run_grid: an in-memory TraceSet cannot be sent to workers; "
                             "pass a trace-set folder or use workers=1")
    else:
        path = str(resolve_trace_set(traces_path))
    tasks = _plan_tasks(configs, max(1, int(workers)) * max(1, int(chunks_per_worker)))
    rows: list[dict] = []
    if workers <= 1:
        for t in tasks:
            rows += _run_chunk(path, t, use_fast)
    else:
        with ProcessPoolExecutor(max_workers=int(workers)) as ex:
            for r in ex.map(_run_chunk, [path] * len(tasks), tasks, [use_fast] * len(tasks)):
                rows += r
    wall = time.perf_counter() - t0
    df = pd.DataFrame(rows).sort_values("_index").drop(columns="_index").reset_index(drop=True)
    cpu = float(df.pop("_cpu_s").sum()) if "_cpu_s" in df else float("nan")
    df.attrs.update({
        "wall_s": wall,
        "worker_cpu_s": cpu,
        "n_fast": int((df["engine"] == "fast").sum()),
        "n_simpy": int((df["engine"] == "simpy").sum()),
        "simulated_requests": int(df["n_requests"].sum()),
        "workers": int(workers),
    })
    return df
