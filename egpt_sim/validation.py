"""Validation: simulator predictions vs latencies measured by the real executor.

For every cell (strategy x output_tokens x sigma [x n_gpus]) of an executor run, the
simulator replays the stage-timing and acceptance traces recorded *on the same machine*
(acceptance trace of the same drafter perturbation sigma) and predicts the latency
distribution. Per cell we report measured and predicted medians, the error in %, a
two-sample Kolmogorov-Smirnov test and a +-5 % TOST equivalence test on the means;
over all cells the median and p90 of |error|.

Executor results (``executor_results.parquet``) need the columns
``strategy, output_tokens, gamma, sigma, latency_ms`` (``n_gpus`` optional, default 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from .config import SimConfig
from .runner import draw_bank, simulate
from .schema import TraceError
from .traces import TraceSet

RESULT_COLUMNS = ("strategy", "output_tokens", "gamma", "sigma", "latency_ms")


def tost_equivalence(measured: np.ndarray, predicted: np.ndarray, margin: float = 0.05,
                     alpha: float = 0.05) -> tuple[bool, float]:
    """Two one-sided Welch t-tests: is |mean(pred) - mean(meas)| < margin x mean(meas)?

    Returns (equivalent at level alpha, TOST p-value = max of the two one-sided p's).
    """
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    if len(m) < 2 or len(p) < 2:
        raise ValueError("TOST needs at least 2 measured and 2 predicted values")
    delta = margin * m.mean()
    diff = p.mean() - m.mean()
    vm, vp = m.var(ddof=1) / len(m), p.var(ddof=1) / len(p)
    se = np.sqrt(vm + vp)
    if se == 0:
        return bool(abs(diff) < delta), 0.0 if abs(diff) < delta else 1.0
    dof = (vm + vp) ** 2 / (vm**2 / (len(m) - 1) + vp**2 / (len(p) - 1))
    p_lower = stats.t.sf((diff + delta) / se, dof)  # H0: diff <= -delta
    p_upper = stats.t.cdf((diff - delta) / se, dof)  # H0: diff >= +delta
    p_tost = float(max(p_lower, p_upper))
    return p_tost < alpha, p_tost


def compare(results: pd.DataFrame, traces_for_sigma: Callable[[float], TraceSet] | Mapping[float, TraceSet],
            n_predicted: int = 400, seed: int = 0, **config) -> tuple[pd.DataFrame, dict]:
    """Predict every executor cell and compare. Returns (cells, overall)."""
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise TraceError(f"executor results: column {missing[0]!r} is missing")
    if len(results) == 0:
        raise TraceError("executor results: zero rows (nothing to validate)")
    get = traces_for_sigma.__getitem__ if isinstance(traces_for_sigma, Mapping) else traces_for_sigma
    res = results.copy()
    if "n_gpus" not in res.columns:
        res["n_gpus"] = 1
    keys = ["n_gpus", "sigma", "strategy", "output_tokens", "gamma"]
    rows = []
    for (n_gpus, sigma, strategy, n_tok, gamma), cell in res.groupby(keys, sort=True):
        ts = get(sigma)
        cfg = SimConfig(strategy=strategy, output_tokens=int(n_tok), gamma=max(1, int(gamma)), n_gpus=int(n_gpus),
                        acceptance="trace" if ts.acceptance is not None else 0.0,
                        n_requests=n_predicted, seed=seed, **config)
        pred = simulate(cfg, ts, bank=draw_bank(cfg, ts)).requests["latency_ms"].to_numpy()
        meas = cell["latency_ms"].to_numpy(dtype=float)
        med_m, med_p = float(np.median(meas)), float(np.median(pred))
        equivalent, p_tost = tost_equivalence(meas, pred) if len(meas) >= 2 else (False, float("nan"))
        rows.append({
            "n_gpus": int(n_gpus), "sigma": sigma, "strategy": strategy, "output_tokens": int(n_tok),
            "gamma": int(gamma), "n_measured": len(meas), "measured_median_ms": med_m,
            "predicted_median_ms": med_p, "error_pct": 100.0 * (med_p - med_m) / med_m,
            "ks_pvalue": float(stats.ks_2samp(meas, pred).pvalue) if len(meas) >= 2 else float("nan"),
            "tost_pvalue": p_tost, "tost_equivalent": bool(equivalent),
        })
    cells = pd.DataFrame(rows)
    abs_err = cells["error_pct"].abs()
    overall = {
        "n_cells": int(len(cells)),
        "median_abs_error_pct": float(abs_err.median()),
        "p90_abs_error_pct": float(abs_err.quantile(0.9)),
        "max_abs_error_pct": float(abs_err.max()),
        "ks_reject_fraction": float((cells["ks_pvalue"] < 0.05).mean()),
        "tost_equivalent_fraction": float(cells["tost_equivalent"].mean()),
    }
    return cells, overall


def load_validation_dir(path: str | Path) -> tuple[pd.DataFrame, Callable[[float], TraceSet]]:
    """Read a validation folder written by ``measure.validation_run``.

    Returns the executor results (``n_gpus`` derived from ``placement``) and a function
    sigma -> TraceSet holding the folder's stage timings with the acceptance rows of
    that drafter perturbation (adapter ``none``). ``target_only`` rows carry no sigma
    (they need no acceptance) and are predicted with the first sigma's trace set.
    """
    path = Path(path)
    res_file = path / "executor_results.parquet"
    if not res_file.exists():
        raise TraceError(f"{res_file}: executor results file is missing")
    results = pd.read_parquet(res_file)
    if len(results) == 0:
        raise TraceError(f"{res_file}: zero rows (nothing to validate)")
    if "placement" in results.columns:
        results["n_gpus"] = np.where(results["placement"] == "separate_gpu", 2, 1)
    full = TraceSet.load(path)
    if full.acceptance is None or "sigma" not in full.acceptance.columns:
        raise TraceError(f"{path}: acceptance table with a 'sigma' column is required for validation")
    acc = full.acceptance
    if "adapter" in acc.columns:
        acc = acc[acc["adapter"].astype(str) == "none"]
    sigmas = sorted(s for s in results["sigma"].dropna().unique())
    if not sigmas:
        raise TraceError(f"{res_file}: column 'sigma' has no values (no speculative requests)")
    results["sigma"] = results["sigma"].fillna(sigmas[0])
    cache: dict[float, TraceSet] = {}

    def traces_for(sigma: float) -> TraceSet:
        if sigma not in cache:
            sel = acc[np.isclose(acc["sigma"].astype(float), float(sigma))]
            if sel.empty:
                raise TraceError(f"{path}: no acceptance rows with sigma={sigma}")
            cache[sigma] = TraceSet.from_frames(full.stage_timings, sel, full.metadata, f"{path} (sigma={sigma})")
        return cache[sigma]

    return results, traces_for


def compare_dir(path: str | Path, n_predicted: int = 400, concurrency: str = "streams",
                **config) -> tuple[pd.DataFrame, dict]:
    """``compare`` for a validation folder; contention fitted from ``concurrency`` rows
    (the executor runs the two models as two threads: ``streams``)."""
    results, traces_for = load_validation_dir(path)
    return compare(results, traces_for, n_predicted=n_predicted, contention_concurrency=concurrency, **config)
