"""Sweeps of serving scenarios on any ``concurrent.futures.Executor``.

* :func:`run_serving_sweep` — one summary row per :class:`ServingConfig`;
* :func:`latency_vs_load` — latency percentiles vs offered load, per policy and N;
* :func:`max_rate_under_slo` — the largest Poisson rate whose latency percentile meets an
  SLO, per policy and N, by bracketing + bisection (as DistServe/Vidur do).

Executors: pass any ``Executor`` (``submit`` + ``Future.result`` is all we use). Without
one, ``workers=1`` runs inline and any other value starts a local
``ProcessPoolExecutor(workers)`` (``None`` = every CPU). A Dask cluster runs the same
sweep unchanged: ``distributed.Client(...).get_executor()`` (Dask is optional and never
imported here). Tasks carry only a config and the trace-set *path*; each worker process
loads a trace set once. Every config has an explicit seed, so results do not depend on
the executor, the number of workers or the order tasks finish in.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..traces.traceset import TraceSet, resolve_trace_set
from .config import ServingConfig
from .engine import run_serving


@lru_cache(maxsize=8)
def _load(traces_path: str) -> TraceSet:
    return TraceSet.load(resolve_trace_set(traces_path))


def _traces_arg(traces_path) -> str | None:
    return None if traces_path is None else str(traces_path)


def run_config(cfg: ServingConfig, traces_path: str | None = None) -> dict:
    """One sweep task: the summary of one run, with the config's fields (picklable)."""
    res = run_serving(cfg, _load(traces_path))
    return cfg.as_dict() | res.summary()


def map_tasks(fn: Callable, args: Sequence[tuple], executor: Executor | None = None,
              workers: int | None = None) -> list:
    """``[fn(*a) for a in args]`` on ``executor`` / inline (workers=1) / a local process pool."""
    args = list(args)
    if executor is not None:
        futures = [executor.submit(fn, *a) for a in args]
        return [f.result() for f in futures]
    if workers == 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    with ProcessPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, len(args))) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        return [f.result() for f in futures]


def run_serving_sweep(configs: Iterable[ServingConfig], traces_path: str | None = None,
                      executor: Executor | None = None, workers: int | None = None) -> pd.DataFrame:
    """Run every config; one row per config (config fields + summary), in input order.

    ``traces_path``: a trace-set folder or bundled name (None = the default set).
    """
    configs = list(configs)
    rows = map_tasks(run_config, [(c, _traces_arg(traces_path)) for c in configs], executor, workers)
    return pd.DataFrame(rows)


def _grid(base: ServingConfig, variants: Iterable[Any] | None, n_gpus: Iterable[int] | None,
          **extra: Any) -> list[ServingConfig]:
    """Configs for every (variant, n_gpus): a variant is a policy name (``"split"``) or a
    dict of overrides (``{"policy": "colocated", "strategy": "parallel_sd"}``).

    Split variants are skipped where N leaves no target GPU (``n_gpus <= drafter_gpus``);
    every other invalid combination raises.
    """
    out = []
    for v in (variants if variants is not None else [{}]):
        over = {"policy": v} if isinstance(v, str) else dict(v)
        for n in (list(n_gpus) if n_gpus is not None else [base.n_gpus]):
            merged = {**over, "n_gpus": int(n), **extra}
            if merged.get("policy", base.policy) == "split" and n <= merged.get("drafter_gpus", base.drafter_gpus):
                continue
            out.append(base.replace(**merged))
    return out


def latency_vs_load(base: ServingConfig, rates_rps: Iterable[float], variants: Iterable[Any] | None = None,
                    n_gpus: Iterable[int] | None = None, traces_path: str | None = None,
                    executor: Executor | None = None, workers: int | None = None) -> pd.DataFrame:
    """Latency percentiles (and throughput, utilisation) vs offered load.

    One row per (variant, n_gpus, rate_rps); the same seed at every rate (arrivals are
    stretched copies of one pattern, see :mod:`egpt_sim.serving.streams`).
    """
    configs = [c.replace(rate_rps=float(r)) for c in _grid(base, variants, n_gpus) for r in rates_rps]
    return run_serving_sweep(configs, traces_path, executor, workers)


def _percentile_ms(cfg: ServingConfig, traces_path: str | None, metric: str, percentile: float,
                   warmup_frac: float) -> float:
    res = run_serving(cfg, _load(traces_path))
    r = res.requests.sort_values("request_id")
    return float(r[metric].iloc[int(len(r) * warmup_frac):].quantile(percentile / 100.0))


def search_max_rate(cfg: ServingConfig, traces_path: str | None, slo_ms: float, percentile: float = 90.0,
                    metric: str = "latency_ms", rel_tol: float = 0.02, warmup_frac: float = 0.1,
                    max_runs: int = 40) -> dict:
    """Largest rate (req/s) whose ``metric`` p-``percentile`` is <= ``slo_ms`` (one task).

    Bracket: start from the service capacity estimate (replicas x 1000 / mean service
    at very low load), double or halve until the SLO flips, then bisect until the bracket
    is within ``rel_tol``. Returns 0 when even the lightest load misses the SLO.
    """
    runs = 0

    def ok(rate: float) -> bool:
        nonlocal runs
        runs += 1
        return _percentile_ms(cfg.replace(rate_rps=rate), traces_path, metric, percentile, warmup_frac) <= slo_ms

    light = run_serving(cfg.replace(rate_rps=1e-3, arrival="fixed"), _load(traces_path))  # 1 per 1000 s
    service_ms = float(light.requests["service_ms"].mean())
    row = {"variant": cfg.variant, "policy": cfg.policy, "n_gpus": cfg.n_gpus,
           "n_replicas": len(light.placement.replicas), "slo_ms": slo_ms, "percentile": percentile,
           "metric": metric, "service_mean_ms": service_ms}
    if float(light.requests[metric].quantile(percentile / 100.0)) > slo_ms:
        return row | {"max_rate_rps": 0.0, "runs": 1}
    lo, hi = 0.0, len(light.placement.replicas) * 1000.0 / service_ms
    while ok(hi) and runs < max_runs:
        lo, hi = hi, hi * 2.0
    while lo == 0.0 and runs < max_runs:
        if ok(hi / 2.0):
            lo = hi / 2.0
        else:
            hi = hi / 2.0
    while (hi - lo) > rel_tol * hi and runs < max_runs:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return row | {"max_rate_rps": lo, "runs": runs + 1}


def max_rate_under_slo(base: ServingConfig, slo_ms: float, variants: Iterable[Any] | None = None,
                       n_gpus: Iterable[int] | None = None, percentile: float = 90.0,
                       metric: str = "latency_ms", rel_tol: float = 0.02, traces_path: str | None = None,
                       executor: Executor | None = None, workers: int | None = None) -> pd.DataFrame:
    """Max rate meeting the SLO, one row per (variant, n_gpus); each search is one task."""
    cfgs = _grid(base, variants, n_gpus)
    args = [(c, _traces_arg(traces_path), float(slo_ms), float(percentile), metric, float(rel_tol))
            for c in cfgs]
    return pd.DataFrame(map_tasks(search_max_rate, args, executor, workers))


def rate_grid(max_rps: float, n: int = 8, low_frac: float = 0.1) -> np.ndarray:
    """``n`` rates from ``low_frac x max_rps`` to ``max_rps`` (for latency-vs-load curves)."""
    return np.linspace(low_frac * max_rps, max_rps, n)
