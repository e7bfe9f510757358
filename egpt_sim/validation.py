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
    return cells, _overall(cells)


def _overall(cells: pd.DataFrame) -> dict:
    abs_err = cells["error_pct"].abs()
    return {
        "n_cells": int(len(cells)),
        "median_abs_error_pct": float(abs_err.median()),
        "p90_abs_error_pct": float(abs_err.quantile(0.9)),
        "max_abs_error_pct": float(abs_err.max()),
        "ks_reject_fraction": float((cells["ks_pvalue"] < 0.05).mean()),
        "tost_equivalent_fraction": float(cells["tost_equivalent"].mean()),
    }


def decode_steps_from_executor(stage_timings: pd.DataFrame, timeline: pd.DataFrame) -> pd.DataFrame:
    """Replace the target's ``alone`` decode-step rows by the decode steps the executor
    ran in its ``target_only`` requests (same session, same process, long decodes).

    Calibrating on the baseline and validating the speculative strategies keeps the
    comparison honest: ``target_only`` cells then become calibration cells.
    """
    tl = timeline[(timeline["strategy"] == "target_only") & (timeline["actor"] == "target")
                  & (timeline["activity"] == "decode_step")]
    if tl.empty:
        raise TraceError("executor timeline: no target_only decode steps to calibrate from")
    st = stage_timings
    alone_dec = (st["role"] == "target") & (st["stage"] == "decode_step") & (st["placement"] == "alone")
    template = st[alone_dec].iloc[0]
    rows = pd.DataFrame([template] * len(tl)).reset_index(drop=True)
    rows["duration_ms"] = (tl["end_ms"] - tl["start_ms"]).to_numpy()
    rows["step"] = np.arange(len(tl))
    rows["sample_id"] = tl["sample_id"].astype(str).to_numpy() if "sample_id" in tl else "executor"
    rows["run_id"] = "executor-target_only-decode"
    return pd.concat([st[~alone_dec], rows], ignore_index=True)


def load_validation_dir(path: str | Path, decode_from: str = "stages") -> tuple[pd.DataFrame, Callable[[float], TraceSet]]:
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
    stage_timings = full.stage_timings
    if decode_from == "executor_target_only":
        stage_timings = decode_steps_from_executor(stage_timings, pd.read_parquet(path / "executor_timeline.parquet"))
    elif decode_from != "stages":
        raise ValueError(f"decode_from must be 'stages' or 'executor_target_only', got {decode_from!r}")
    cache: dict[float, TraceSet] = {}

    def traces_for(sigma: float) -> TraceSet:
        if sigma not in cache:
            sel = acc[np.isclose(acc["sigma"].astype(float), float(sigma))]
            if sel.empty:
                raise TraceError(f"{path}: no acceptance rows with sigma={sigma}")
            cache[sigma] = TraceSet.from_frames(stage_timings, sel, full.metadata, f"{path} (sigma={sigma})")
        return cache[sigma]

    return results, traces_for


def compare_dir(path: str | Path, n_predicted: int = 400, concurrency: str = "streams",
                decode_from: str = "stages", **config) -> tuple[pd.DataFrame, dict]:
    """``compare`` for a validation folder; contention fitted from ``concurrency`` rows
    (the executor runs the two models as two threads: ``streams``).

    ``decode_from="executor_target_only"`` calibrates the target's decode-step pool on
    the executor's baseline requests; ``target_only`` cells are then flagged
    ``calibration`` and left out of the overall error figures.
    """
    results, traces_for = load_validation_dir(path, decode_from)
    cells, overall = compare(results, traces_for, n_predicted=n_predicted,
                             contention_concurrency=concurrency, **config)
    cells["calibration"] = (decode_from != "stages") & (cells["strategy"] == "target_only")
    if cells["calibration"].any():
        overall = _overall(cells[~cells["calibration"]]) | {"calibrated_on": "target_only decode steps"}
    return cells, overall


def main(argv: list[str] | None = None) -> int:
    """``python -m egpt_sim.validation DIR [--out DIR]``: both calibration modes, tables + JSON."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m egpt_sim.validation", description=main.__doc__)
    p.add_argument("folder")
    p.add_argument("--out", default=None, help="where to write validation_cells_*.csv / overall JSON (default: folder)")
    p.add_argument("--predicted", type=int, default=400, help="simulated requests per cell")
    a = p.parse_args(argv)
    out = Path(a.out or a.folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for mode in ("stages", "executor_target_only"):
        cells, overall = compare_dir(a.folder, n_predicted=a.predicted, decode_from=mode)
        cells.to_csv(out / f"validation_cells_{mode}.csv", index=False, float_format="%.4g")
        summary[mode] = overall
        print(f"\n== decode steps from {mode}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in overall.items()))
        print(cells[["sigma", "strategy", "output_tokens", "n_measured", "measured_median_ms", "predicted_median_ms",
                     "error_pct", "ks_pvalue", "tost_equivalent"]].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    (out / "validation_overall.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
