"""Grids of scenarios over a process pool: :func:`run_grid` (one summary row per scenario;
workers load the trace set and reuse one DrawBank per draw key)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..sim.config import SimConfig
from ..sim.draws import DrawBank
from ..sim.runner import draw_bank, simulate
from ..traces.traceset import TraceSet
from .api import FAST_STRATEGIES, simulate_many, summarize_arrays


_WORKER_STATE: dict = {"traces": {}, "banks": {}}


def _bank_key(cfg: SimConfig) -> tuple:
    return (cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages, cfg.pass_gap_ms, cfg.scenario_key)


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
            summ.pop("cpu_lane_model", None)
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
    carry the config fields, the :func:`~egpt_sim.sim.runner.summarize` numbers (no
    provenance) and ``engine`` ("fast" or "simpy": the fast path falls back to SimPy only
    for strategies it does not cover). ``result.attrs`` holds ``wall_s``,
    ``worker_cpu_s`` (CPU seconds summed over tasks), ``n_fast``, ``n_simpy``,
    ``simulated_requests`` and ``workers``. ``workers <= 1`` runs in this process.
    """
    from concurrent.futures import ProcessPoolExecutor

    from ..traces.traceset import resolve_trace_set

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
