"""Sweeps: many scenarios, one summary row each; any concurrent.futures executor.

``run_sweep(configs, traces_path)`` groups scenarios that share draws (seed,
n_requests, drafter_speed, include_cpu_stages) so each group builds one
:class:`~egpt_sim.draws.DrawBank`, and evaluates them with the vectorised fast path
(``engine="fast"``, tested equal to SimPy on the same draws) or the SimPy reference
(``engine="simpy"``). Pass ``executor=`` any ``concurrent.futures.Executor`` — a local
``ProcessPoolExecutor`` or a Dask ``Client(...).get_executor()`` — to spread groups
over workers; workers load the trace set from its path.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import Executor
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .config import SimConfig, factorial
from .runner import draw_bank, simulate
from .traces import TraceSet

DEFAULT_GRID = {
    "strategy": ["target_only", "serial_sd", "prefill_then_verify", "parallel_sd", "adaptive_budget", "drafter_only"],
    "output_tokens": [5, 10, 20, 30, 50, 75, 100, 150, 200, 300],
    "acceptance": [round(i / 20, 2) for i in range(21)],
    "n_gpus": [1, 2],
}


def default_grid(base: SimConfig | None = None, **overrides: Sequence) -> list[SimConfig]:
    """The default what-if grid: 6 strategies x 10 lengths x 21 alphas x 2 GPU counts =
    2,520 scenarios at the base config's gamma (the benchmark adds gamma {4, 8}: 5,040)."""
    grid = dict(DEFAULT_GRID) | overrides
    return factorial(base or SimConfig(n_requests=500), grid)


def _engine_fn(engine: str):
    if engine == "simpy":
        return simulate
    try:
        from .fastpath import simulate_fast
    except ImportError:
        if engine == "fast":
            raise
        return simulate
    return simulate_fast


def _bank_key(cfg: SimConfig):
    return (cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages)


def _run_group(traces_path: str, configs: list[SimConfig], engine: str) -> list[dict]:
    traces = TraceSet.load(traces_path) if isinstance(traces_path, (str, Path)) else traces_path
    fn = _engine_fn(engine)
    bank = draw_bank(configs[0], traces)
    rows = []
    for cfg in configs:
        res = fn(cfg, traces, bank=bank)
        rows.append(cfg.as_dict() | res.summary())
    return rows


def run_sweep(configs: Iterable[SimConfig], traces: str | Path | TraceSet, engine: str = "auto",
              executor: Executor | None = None, progress: bool = True, chunk: int = 64) -> pd.DataFrame:
    """Evaluate every config; returns one row per config (config fields + summary)."""
    configs = list(configs)
    if not configs:
        raise ValueError("run_sweep: no scenarios to run")
    groups: dict[tuple, list[SimConfig]] = defaultdict(list)
    for cfg in configs:
        groups[_bank_key(cfg)].append(cfg)
    jobs = [g[i : i + chunk] for g in groups.values() for i in range(0, len(g), chunk)]
    # workers load the trace set from its path; inline runs reuse the loaded object
    target = traces.path if (executor is not None and isinstance(traces, TraceSet)) else traces
    rows: list[dict] = []
    bar = _progress(len(configs), progress)
    if executor is None:
        for job in jobs:
            rows += _run_group(target, job, engine)
            bar.update(len(job))
    else:
        futures = [executor.submit(_run_group, str(target), job, engine) for job in jobs]
        for fut, job in zip(futures, jobs):
            rows += fut.result()
            bar.update(len(job))
    bar.close()
    return pd.DataFrame(rows)


class _NoProgress:
    def update(self, n): ...

    def close(self): ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scenarios", unit="scn")


def best_strategy(sweep: pd.DataFrame, by: Sequence[str] = ("n_gpus", "output_tokens", "acceptance"),
                  exclude: Sequence[str] = ("drafter_only",)) -> pd.DataFrame:
    """Best strategy per cell by mean latency (``drafter_only`` is excluded by default:
    it returns the drafter's answer, not the target's)."""
    d = sweep[~sweep["strategy"].isin(exclude)]
    if d.empty:
        raise ValueError("best_strategy: no rows left after excluding " + ", ".join(exclude))
    idx = d.groupby(list(by))["latency_mean_ms"].idxmin()
    return d.loc[idx, list(by) + ["strategy", "latency_mean_ms", "speedup_of_means"]].reset_index(drop=True)
