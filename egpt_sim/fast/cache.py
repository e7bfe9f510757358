"""Caches of the fast engine: per-DrawBank derived arrays (streams, prefix sums, run tables,
target_only baselines) and per-TraceSet acceptance sources, adaptive_budget plans and provenance."""

from __future__ import annotations

import weakref

import numpy as np

from ..sim.budget import planning_inputs
from ..sim.config import SimConfig
from ..sim.draws import DrawBank
from ..traces.acceptance import NEEDS_NO_ACCEPTANCE, source_for
from ..traces.traceset import TraceSet


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


def _plan(cfg: SimConfig, traces: TraceSet, source, model) -> dict:
    tc = _trace_cache(traces)
    key = ("plan", cfg.replace(n_requests=1, seed=0, label=""), _acc_key(cfg.acceptance))
    if key not in tc:
        tc[key] = planning_inputs(cfg, traces, source, model)
    return tc[key]
