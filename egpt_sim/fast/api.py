"""Entry points of the fast engine: :func:`simulate_many`, :func:`simulate_arrays`,
:func:`simulate_fast` (the SimPy runner's results on the same draws) and :func:`summarize_arrays`."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import pandas as pd

from ..sim.config import SimConfig
from ..sim.draws import DrawBank
from ..sim.rules import contention_for, cpu_lane_for
from ..sim.runner import (
    REQUEST_COLUMNS,
    TIMELINE_COLUMNS,
    SimResult,
    check_bank_scenario,
    draw_bank,
    time_source_detail,
)
from ..traces.traceset import TraceSet
from ..whatif.shapes import scenario_traces, time_source_of
from .batch import _Batch, _contended
from .cache import _bank_cache, _plan, _provenance, _source
from .sequential import _baseline, _drafter_only, _serial_sd, _target_only
from .window import _window_engine


FAST_STRATEGIES = ("target_only", "drafter_only", "serial_sd", "prefill_then_verify",
                   "parallel_sd", "adaptive_budget")

_ENGINES = {
    "target_only": _target_only,
    "drafter_only": _drafter_only,
    "serial_sd": _serial_sd,
    "prefill_then_verify": _window_engine,
    "adaptive_budget": _window_engine,
    "parallel_sd": _window_engine,
}


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
    """Vectorised equivalent of :func:`egpt_sim.sim.runner.simulate` (no timeline).

    Same ``requests`` columns and values (to float rounding) as the SimPy model on the
    same :class:`DrawBank`. ``timeline=True`` is refused: use the SimPy model for Gantt
    charts.
    """
    if timeline:
        raise ValueError("simulate_fast has no timeline; use egpt_sim.simulate(..., timeline=True)")
    traces = scenario_traces(cfg, traces)
    arr = simulate_arrays(cfg, traces, bank, aggregate=aggregate)
    return SimResult(cfg, _frame(cfg, arr), pd.DataFrame(columns=list(TIMELINE_COLUMNS)),
                     _provenance(traces), contention_for(cfg, traces), time_source_detail(traces),
                     cpu_lane_for(cfg, traces).describe())


def summarize_arrays(a: dict) -> dict:
    """:func:`egpt_sim.sim.runner.summarize` computed on :func:`simulate_arrays` output."""
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
