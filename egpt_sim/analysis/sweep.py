"""Sweeps: many scenarios, one summary row each; any concurrent.futures executor.

``run_sweep(configs, traces_path)`` groups scenarios that share draws (seed,
n_requests, drafter_speed, include_cpu_stages, what-if shape) so each group builds one
:class:`~egpt_sim.sim.draws.DrawBank`, and evaluates them with the vectorised fast path
(``engine="fast"``, tested equal to SimPy on the same draws) or the SimPy reference
(``engine="simpy"``). Pass ``executor=`` any ``concurrent.futures.Executor`` — a local
``ProcessPoolExecutor`` or a Dask ``Client(...).get_executor()`` — to spread groups
over workers; workers load the trace set from its path.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from concurrent.futures import Executor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..sim.config import SimConfig, factorial
from ..sim.runner import draw_bank, simulate
from ..traces.traceset import TraceSet
from .labels import SPEEDUP, summary_row, with_speedup

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
        from ..fast import simulate_fast
    except ImportError:
        if engine == "fast":
            raise
        return simulate
    return simulate_fast


def _bank_key(cfg: SimConfig):
    return (cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages, cfg.scenario_key)


def _run_group(traces_path: str, configs: list[SimConfig], engine: str) -> list[dict]:
    traces = TraceSet.load(traces_path) if isinstance(traces_path, (str, Path)) else traces_path
    fn = _engine_fn(engine)
    bank = draw_bank(configs[0], traces)
    rows = []
    for cfg in configs:
        res = fn(cfg, traces, bank=bank)
        rows.append(cfg.as_dict() | summary_row(res.summary()))
    return rows


def run_sweep(configs: Iterable[SimConfig], traces: str | Path | TraceSet, engine: str = "auto",
              executor: Executor | None = None, progress: bool = True, chunk: int = 64) -> pd.DataFrame:
    """Evaluate every config; returns one row per config (config fields + summary, the
    speed-up under ``speedup``: mean target_only latency / mean latency, same draws)."""
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


def read_sweep(path: str | Path) -> pd.DataFrame:
    """A sweep parquet written by :func:`run_sweep` / ``egpt-sim sweep``; files from before
    the rename (``speedup_of_means``) come back with the column named ``speedup``."""
    return with_speedup(pd.read_parquet(path))


def best_strategy(sweep: pd.DataFrame, by: Sequence[str] = ("n_gpus", "output_tokens", "acceptance"),
                  exclude: Sequence[str] = ("drafter_only",)) -> pd.DataFrame:
    """Best strategy per cell by mean latency, with the runner-up and the ``margin``
    (best speedup - runner-up speedup; NaN when the cell has one strategy).
    ``drafter_only`` is excluded by default: it returns the drafter's answer, not the target's."""
    d = with_speedup(sweep)
    d = d[~d["strategy"].isin(exclude)]
    if d.empty:
        raise ValueError("best_strategy: no rows left after excluding " + ", ".join(exclude))
    rows = []
    for _, cell in d.groupby(list(by), sort=True):
        ranked = cell.sort_values("latency_mean_ms", kind="stable")
        b = ranked.iloc[0]
        second = ranked.iloc[1] if len(ranked) > 1 else None
        rows.append({**{k: b[k] for k in by}, "strategy": b["strategy"], "latency_mean_ms": b["latency_mean_ms"],
                     SPEEDUP: b[SPEEDUP], "runner_up": None if second is None else second["strategy"],
                     "runner_up_speedup": math.nan if second is None else second[SPEEDUP],
                     "margin": math.nan if second is None else b[SPEEDUP] - second[SPEEDUP]})
    return pd.DataFrame(rows)


def paired_speedup_difference(baseline_ms, latency_a_ms, latency_b_ms, z: float = 1.96) -> tuple[float, float]:
    """(speedup_a - speedup_b, half width of its ``z`` interval) from per-request values on
    the same draws. speedup = mean(baseline) / mean(latency); the interval is the delta
    method on the paired per-request triples (baseline, a, b), so common random numbers
    cancel. One request gives an infinite half width (no spread to estimate)."""
    base, a, b = (np.asarray(x, dtype=float) for x in (baseline_ms, latency_a_ms, latency_b_ms))
    if not len(base) == len(a) == len(b) or len(base) == 0:
        raise ValueError("paired_speedup_difference: needs equally many (> 0) per-request values")
    mb, ma, mc = base.mean(), a.mean(), b.mean()
    diff = mb / ma - mb / mc
    if len(base) < 2:
        return float(diff), math.inf
    psi = (1 / ma - 1 / mc) * (base - mb) - mb / ma**2 * (a - ma) + mb / mc**2 * (b - mc)
    return float(diff), float(z * psi.std(ddof=1) / math.sqrt(len(base)))


OPTIONAL_FIELDS = ("window_budget", "target_frames", "drafter_frames", "target_resolution", "target_prompt_tokens",
                   "drafter_prompt_tokens", "drafter_params_b")


def _config_of(row: pd.Series) -> SimConfig:
    names = {f.name for f in dataclasses.fields(SimConfig)}
    kw = {k: row[k] for k in names if k in row.index and k != "label"}
    for k in OPTIONAL_FIELDS:  # None comes back from parquet as NaN / <NA>
        if k in kw and (kw[k] is None or pd.isna(kw[k])):
            kw[k] = None
    for k in ("output_tokens", "gamma", "n_gpus", "n_requests", "seed", "lookahead_blocks"):
        if k in kw:
            kw[k] = int(kw[k])
    return SimConfig(**kw)


TIE_ATOL = 1e-9  # speed-up differences below this are float rounding, not a lead


def best_with_margins(sweep: pd.DataFrame, traces: TraceSet, engine: str = "auto", z: float = 1.96,
                      by: Sequence[str] = ("n_gpus", "output_tokens", "acceptance"), **kw) -> pd.DataFrame:
    """:func:`best_strategy` plus ``margin_ci`` (half width of the ``z`` paired Monte-Carlo
    interval of the margin, from per-request values of the best and the runner-up,
    re-simulated on the same draws) and ``tie`` (the interval contains 0)."""
    best = best_strategy(sweep, by, **kw)
    d = with_speedup(sweep)
    fn, banks, half, tie = _engine_fn(engine), {}, [], []
    for _, b in best.iterrows():
        if b["runner_up"] is None:
            half.append(math.nan)
            tie.append(False)
            continue
        cell = d[np.logical_and.reduce([d[k] == b[k] for k in by])]
        cfgs = [_config_of(cell[cell["strategy"] == s].iloc[0]) for s in (b["strategy"], b["runner_up"])]
        key = _bank_key(cfgs[0])
        bank = banks.setdefault(key, draw_bank(cfgs[0], traces))
        ra, rb = (fn(c, traces, bank=bank).requests for c in cfgs)
        diff, h = paired_speedup_difference(ra["baseline_latency_ms"], ra["latency_ms"], rb["latency_ms"], z)
        if not math.isclose(diff, b["margin"], rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"best_with_margins: re-simulated margin {diff:.6g} differs from the sweep's {b['margin']:.6g} "
                             f"(cell {dict((k, b[k]) for k in by)}): was the sweep run on other traces?")
        half.append(h)
        tie.append(bool(abs(diff) <= h + TIE_ATOL))  # identical latencies differ by float rounding only
    return best.assign(margin_ci=half, tie=tie)


def format_winner(row: pd.Series, tie_mark: str = "≈") -> str:
    """One cell of the winners table: ``strategy 1.012 +0.008``, or for a tie (the margin over
    the runner-up is inside its Monte-Carlo interval) ``≈ strategy / runner-up 1.002 +0.001``."""
    margin = "" if pd.isna(row.get("margin")) else f" +{row['margin']:.3f}"
    if bool(row.get("tie", False)):
        return f"{tie_mark} {row['strategy']} / {row['runner_up']} {row[SPEEDUP]:.3f}{margin}"
    return f"{row['strategy']} {row[SPEEDUP]:.3f}{margin}"
