"""Validation: simulator predictions vs latencies measured by the real executor.

For every cell (strategy x output_tokens x sigma [x n_gpus]) of an executor run, the
simulator replays the stage-timing and acceptance traces recorded *on the same machine*
(acceptance trace of the same drafter perturbation sigma) and predicts the latency
distribution. Per cell we report measured and predicted medians, the error in %, a
two-sample Kolmogorov-Smirnov test and a +-5 % TOST equivalence test on the means, and
the measurement noise (bootstrap SE of the measured median, :func:`median_se_pct`; the SE
of the mean paired speed-up); over all cells the median and p90 of |error| and the share
of cells whose error is within 2 SE of the measured median.

Executor results (``executor_results.parquet``) need the columns
``strategy, output_tokens, gamma, sigma, latency_ms`` (``n_gpus`` optional, default 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ..sim.config import SimConfig
from ..fast import simulate_fast
from ..sim.runner import draw_bank, simulate
from ..traces.harness import factor_summary, without_loop_gaps
from ..traces.schema import PASS_ACTIVITIES, TraceError
from ..traces.traceset import TraceSet
from .executor_rows import executor_stage_rows, span_rows

RESULT_COLUMNS = ("strategy", "output_tokens", "gamma", "sigma", "latency_ms")


def tost_equivalence(measured: np.ndarray, predicted: np.ndarray, margin: float = 0.05,
                     alpha: float = 0.05) -> tuple[bool, float]:
    """Two one-sided Welch t-tests: is |mean(pred) - mean(meas)| < margin x mean(meas)?

    Returns (equivalent at level alpha, TOST p-value = max of the two one-sided p's).
    """
    m, p = np.asarray(measured, float), np.asarray(predicted, float)
    if len(m) < 2 or len(p) < 2:
        raise ValueError("TOST needs at least 2 measured and 2 predicted values")
    vm, vp = m.var(ddof=1) / len(m), p.var(ddof=1) / len(p)
    dof = (vm + vp) ** 2 / (vm**2 / (len(m) - 1) + vp**2 / (len(p) - 1)) if vm + vp > 0 else np.inf
    return _two_one_sided(p.mean() - m.mean(), np.sqrt(vm + vp), dof, margin * m.mean(), alpha)


def _two_one_sided(diff: float, se: float, dof: float, delta: float, alpha: float) -> tuple[bool, float]:
    """TOST of a mean difference ``diff`` (standard error ``se``, ``dof`` degrees of freedom)
    against +-``delta``: (equivalent at level alpha, max of the two one-sided p-values); with
    se = 0 the difference itself decides."""
    if se == 0:
        return bool(abs(diff) < delta), 0.0 if abs(diff) < delta else 1.0
    p_lower = stats.t.sf((diff + delta) / se, dof)  # H0: diff <= -delta
    p_upper = stats.t.cdf((diff - delta) / se, dof)  # H0: diff >= +delta
    p_tost = float(max(p_lower, p_upper))
    return p_tost < alpha, p_tost


def median_se_pct(values: np.ndarray, n_boot: int = 400, seed: int = 0) -> float:
    """Measurement noise of a cell: bootstrap standard error of the median of ``values``, in %
    of that median (NaN for fewer than 2 values). A prediction cannot be scored more finely
    than this: |error| within about 2 SE is indistinguishable from the sampling noise of the
    requests measured."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, len(v), size=(n_boot, len(v)))], axis=1)
    return float(100.0 * meds.std(ddof=1) / np.median(v))


def measured_speedups(results: pd.DataFrame) -> pd.Series:
    """Per request: measured paired speed-up = the ``target_only`` latency of the same sample,
    output length and GPU count divided by this request's latency (NaN without a baseline)."""
    keys = [k for k in ("sample_id", "output_tokens", "n_gpus") if k in results.columns]
    if "sample_id" not in keys:
        return pd.Series(np.nan, index=results.index)
    base = results[results["strategy"] == "target_only"].groupby(keys)["latency_ms"].median()
    idx = pd.MultiIndex.from_frame(results[keys])
    return pd.Series(base.reindex(idx).to_numpy() / results["latency_ms"].to_numpy(), index=results.index)


def unpaired_draw_speedups(pred_rows: pd.DataFrame) -> pd.Series:
    """Per simulated request: the simulated speed-up estimated as :func:`measured_speedups`
    estimates the measured one -- a ``target_only`` latency of *another* request of the same
    sample over this request's latency.

    The executor's baseline and strategy requests are separate requests with independent noise,
    so the mean of their ratio carries E[1/T] > 1/E[T] (about +CV^2 of the strategy's latency:
    +0.03 for eager requests varying 18 %). The simulator's own ``speedup`` divides by the
    baseline on the *same draws* (common random numbers, a different estimand: nearly free of that
    term), so comparing it with the measured mean compared two estimators. Here each request's
    baseline is the next request's of its sample (rolled by one), independent of its own draws."""
    if "baseline_latency_ms" not in pred_rows:
        return pred_rows.get("speedup", pd.Series(np.nan, index=pred_rows.index))
    groups = pred_rows["sample_id"].fillna("") if "sample_id" in pred_rows else pd.Series("", index=pred_rows.index)
    base = pred_rows.groupby(groups, sort=False)["baseline_latency_ms"].transform(lambda b: np.roll(b.to_numpy(), 1))
    return base / pred_rows["latency_ms"]


def _replayed_acceptance(ts: TraceSet):
    """The acceptance source the executor replayed (set by :func:`load_validation_dir`), else
    the trace set's recorded acceptance, else alpha = 0."""
    src = ts.replay_source
    return src if src is not None else ("trace" if ts.acceptance is not None else 0.0)


def _cell_budget(cell: pd.DataFrame) -> int | None:
    """The window budget the executor ran adaptive_budget with (most common value), if recorded."""
    if "window_budget" not in cell.columns or cell["strategy"].iloc[0] != "adaptive_budget":
        return None
    return int(cell["window_budget"].mode().iloc[0])


def budget_shares(cell: pd.DataFrame) -> dict[int | None, float]:
    """Window budgets the executor ran a cell's requests with, and their shares (adaptive_budget
    cells merged from runs that chose different budgets hold several; other cells: {None: 1})."""
    if "window_budget" not in cell.columns or cell["strategy"].iloc[0] != "adaptive_budget":
        return {None: 1.0}
    return {int(b): float(n) / len(cell) for b, n in cell["window_budget"].value_counts(sort=False).items()}


def _cell_configs(cell: pd.DataFrame, ts: TraceSet, n_predicted: int, seed: int, **config) -> list[SimConfig]:
    """The simulated scenarios of one executor cell: one per window budget the cell ran, its
    requests split in the executor's proportions (:func:`budget_shares`)."""
    first = cell.iloc[0]
    return [SimConfig(strategy=first["strategy"], output_tokens=int(first["output_tokens"]),
                      gamma=max(1, int(first["gamma"])), n_gpus=int(first["n_gpus"]),
                      acceptance=_replayed_acceptance(ts), n_requests=max(1, round(n_predicted * share)),
                      seed=seed, window_budget=budget, **config)
            for budget, share in sorted(budget_shares(cell).items(), key=lambda kv: (kv[0] is None, kv[0]))]


def _simulate_cell(cell: pd.DataFrame, ts: TraceSet, n_predicted: int, seed: int, engine=simulate_fast,
                   **config) -> pd.DataFrame:
    """Simulated requests of one executor cell, one draw bank per window budget it ran. ``engine``:
    the fast engine (default; the SimPy model's requests on the same draws, ``tests/test_fastpath.py``)
    or :func:`egpt_sim.sim.runner.simulate`."""
    return pd.concat([engine(cfg, ts, bank=draw_bank(cfg, ts)).requests
                      for cfg in _cell_configs(cell, ts, n_predicted, seed, **config)], ignore_index=True)


def predict_cell(cell: pd.DataFrame, ts: TraceSet, n_predicted: int, seed: int, engine=simulate_fast,
                 **config) -> pd.DataFrame:
    """Simulated requests (latency_ms, speedup) for one executor cell.

    Where the executor replayed per-sample acceptance (a ``replay_source`` with
    ``for_sample``) and the cell names its samples, each measured sample is simulated on its
    own verifications and tail rate (``n_predicted`` split evenly, column ``sample_id``): the
    prediction of a request is then paired with the request (:func:`paired_tost`). Else (or when
    the trace lacks one of the cell's samples) one simulation of the pooled source.
    """
    src = ts.replay_source
    sids = cell["sample_id"].astype(str) if "sample_id" in cell else None
    samples = sorted(set(sids)) if sids is not None else []
    if (not hasattr(src, "for_sample") or cell["strategy"].iloc[0] == "target_only"
            or not samples or not set(samples) <= set(src.sample_ids)):
        return _simulate_cell(cell, ts, n_predicted, seed, engine, **config).assign(sample_id=None)
    per = max(PAIRED_MIN_PER_SAMPLE, -(-n_predicted // len(samples)))
    parts = []
    for i, sid in enumerate(samples):
        own = ts.with_replay_source(src.for_sample(sid))
        parts.append(_simulate_cell(cell[sids == sid], own, per, seed + 7919 * (i + 1), engine, **config)
                     .assign(sample_id=sid))
    return pd.concat(parts, ignore_index=True)


PAIRED_MIN_PER_SAMPLE = 16  # simulated requests per measured sample (per-request predictions)


def paired_request_errors(cell: pd.DataFrame, pred_rows: pd.DataFrame) -> pd.Series:
    """Per measured request: its sample's mean simulated latency minus the measured latency, in
    ms (``target_only`` cells, predicted from the pooled source, pair with the cell's mean)."""
    meas = cell["latency_ms"].to_numpy(float)
    if pred_rows["sample_id"].notna().all() and "sample_id" in cell:
        own = pred_rows.groupby("sample_id")["latency_ms"].mean()
        pred = own.reindex(cell["sample_id"].astype(str)).to_numpy(float)
    else:
        pred = np.full(len(meas), pred_rows["latency_ms"].mean())
    return pd.Series(pred - meas, index=cell.index)


def paired_tost(diff_ms: np.ndarray, measured_mean_ms: float, margin: float = 0.05,
                alpha: float = 0.05) -> tuple[bool, float]:
    """TOST on paired differences (prediction of a request minus the request): is the mean
    difference within +-margin x the measured mean? Sample-to-sample variation (acceptance,
    prompt) cancels in each pair, so 20 requests can show equivalence where the unpaired
    :func:`tost_equivalence` cannot (cells whose requests vary by 25 % have an SE of the mean
    near 5 % by themselves). Returns (equivalent at level alpha, p-value)."""
    d = np.asarray(diff_ms, float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return False, float("nan")
    return _two_one_sided(d.mean(), d.std(ddof=1) / np.sqrt(len(d)), len(d) - 1, margin * measured_mean_ms, alpha)


def compare(results: pd.DataFrame, traces_for_sigma: Callable[[float], TraceSet] | Mapping[float, TraceSet],
            n_predicted: int = 400, seed: int = 0, **config) -> tuple[pd.DataFrame, dict]:
    """Predict every executor cell and compare latency and paired speed-up. Returns (cells, overall).

    ``adaptive_budget`` cells are simulated at the window budget the executor recorded
    (``window_budget`` column): the validation scores the mechanics, not the budget rule.
    """
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise TraceError(f"executor results: column {missing[0]!r} is missing")
    if len(results) == 0:
        raise TraceError("executor results: zero rows (nothing to validate)")
    get = traces_for_sigma.__getitem__ if isinstance(traces_for_sigma, Mapping) else traces_for_sigma
    res = results.copy()
    if "n_gpus" not in res.columns:
        res["n_gpus"] = 1
    res["measured_speedup"] = measured_speedups(res)
    keys = ["n_gpus", "sigma", "strategy", "output_tokens", "gamma"]
    rows = []
    for (n_gpus, sigma, strategy, n_tok, gamma), cell in res.groupby(keys, sort=True):
        pred_rows = predict_cell(cell, get(sigma), n_predicted, seed, **config)
        pred = pred_rows["latency_ms"].to_numpy()
        meas = cell["latency_ms"].to_numpy(dtype=float)
        med_m, med_p = float(np.median(meas)), float(np.median(pred))
        equivalent, p_tost = tost_equivalence(meas, pred) if len(meas) >= 2 else (False, float("nan"))
        spd_m = float(cell["measured_speedup"].mean())
        spd_all = cell["measured_speedup"].dropna().to_numpy(float)
        err_pct, se_pct = 100.0 * (med_p - med_m) / med_m, median_se_pct(meas)
        spd_same = float(pred_rows["speedup"].mean()) if "speedup" in pred_rows else float("nan")
        # a target_only request is its own measured baseline (ratio 1): the same-draws figure is its twin
        spd_p = spd_same if strategy == "target_only" or "speedup" not in pred_rows else \
            float(unpaired_draw_speedups(pred_rows).mean())
        paired_ok, paired_p = paired_tost(paired_request_errors(cell, pred_rows).to_numpy(), float(meas.mean()))
        rows.append({
            "n_gpus": int(n_gpus), "sigma": sigma, "strategy": strategy, "output_tokens": int(n_tok),
            "gamma": int(gamma), "window_budget": _cell_budget(cell), "n_measured": len(meas),
            "measured_median_ms": med_m, "predicted_median_ms": med_p, "error_pct": err_pct,
            "measured_se_pct": se_pct, "within_noise": bool(abs(err_pct) <= 2.0 * se_pct),
            "measured_speedup": spd_m, "predicted_speedup": spd_p, "predicted_speedup_same_draws": spd_same,
            "speedup_error": spd_p - spd_m if strategy != "target_only" else float("nan"),
            "measured_speedup_se": (float(spd_all.std(ddof=1) / np.sqrt(len(spd_all))) if len(spd_all) >= 2
                                    and strategy != "target_only" else float("nan")),
            "ks_pvalue": float(stats.ks_2samp(meas, pred).pvalue) if len(meas) >= 2 else float("nan"),
            "tost_pvalue": p_tost, "tost_equivalent": bool(equivalent),
            "paired_tost_pvalue": paired_p, "paired_tost_equivalent": bool(paired_ok),
        })
    cells = pd.DataFrame(rows)
    return cells, _overall(cells)


def _overall(cells: pd.DataFrame) -> dict:
    abs_err = cells["error_pct"].abs()
    spd = cells["speedup_error"].abs().dropna() if "speedup_error" in cells else pd.Series(dtype=float)
    return {
        "n_cells": int(len(cells)),
        "median_abs_error_pct": float(abs_err.median()),
        "p90_abs_error_pct": float(abs_err.quantile(0.9)),
        "max_abs_error_pct": float(abs_err.max()),
        "median_abs_speedup_error": float(spd.median()) if len(spd) else float("nan"),
        "p90_abs_speedup_error": float(spd.quantile(0.9)) if len(spd) else float("nan"),
        "max_abs_speedup_error": float(spd.max()) if len(spd) else float("nan"),
        "ks_reject_fraction": float((cells["ks_pvalue"] < 0.05).mean()),
        "tost_equivalent_fraction": float(cells["tost_equivalent"].mean()),
        **({"paired_tost_equivalent_fraction": float(cells["paired_tost_equivalent"].mean())}
           if "paired_tost_equivalent" in cells else {}),
        **_noise_floor(cells),
    }


def _noise_floor(cells: pd.DataFrame) -> dict:
    """How finely the measurements can score a prediction: the median standard error of a
    cell's measured median (% of it) and of its mean paired speed-up, and the share of cells
    whose |error| is within 2 of those SEs (folders scored before these columns: empty)."""
    if "measured_se_pct" not in cells:
        return {}
    spd_se = cells["measured_speedup_se"].dropna() if "measured_speedup_se" in cells else pd.Series(dtype=float)
    return {"median_measured_se_pct": float(cells["measured_se_pct"].median()),
            "median_measured_speedup_se": float(spd_se.median()) if len(spd_se) else float("nan"),
            "within_noise_fraction": float(cells["within_noise"].mean()),
            "p90_abs_error_pct_if_exact": exact_model_p90(cells["measured_se_pct"]),
            "p90_abs_speedup_error_if_exact": exact_model_p90(spd_se)}


def exact_model_p90(se, n_draws: int = 4000, seed: int = 0) -> float:
    """The p90 over cells of |error| that a model without any error would score, each cell's
    measured figure off by Normal(0, its SE): the floor under a p90 goal (same units as ``se``).
    With 20 requests per cell a paired speed-up SE of 0.012 alone gives ~0.02."""
    v = np.asarray(se, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    draws = np.abs(np.random.default_rng(seed).normal(0.0, 1.0, (n_draws, len(v))) * v)
    return float(np.median(np.quantile(draws, 0.9, axis=1)))


def activity_residuals(results: pd.DataFrame, timeline: pd.DataFrame,
                       traces_for_sigma: Callable[[float], TraceSet] | Mapping[float, TraceSet],
                       n_predicted: int = 200, seed: int = 0, **config) -> pd.DataFrame:
    """Per (strategy, actor, activity): the executor's median activity duration, its mean count
    per request and its mean time per request vs the simulator's, on every cell pooled -- which
    activity is mispredicted and by how much (``error_pct`` of the median; ``count_error`` in
    activities per request; ``delta_ms_per_request``, what it adds to a request's time).
    ``loop_gap`` rows: host time between two passes of a role (:func:`loop_gap_rows`); the
    simulated pass spans exclude the simulated gap, as the executor's do."""
    get = traces_for_sigma.__getitem__ if isinstance(traces_for_sigma, Mapping) else traces_for_sigma
    res = results.copy()
    res["n_gpus"] = res["n_gpus"] if "n_gpus" in res else 1
    keys = ["n_gpus", "sigma", "strategy", "output_tokens", "gamma"]
    sim_rows = []
    for (_g, sigma, _s, _n, _k), cell in res.groupby(keys, sort=True):
        cfg_cell = predict_cell_timeline(cell, get(sigma), n_predicted, seed, **config)
        sim_rows.append(cfg_cell)
    sim = pd.concat(sim_rows, ignore_index=True)
    tl = timeline.merge(res[["request_id", "strategy"]].drop_duplicates("request_id"), on="request_id",
                        suffixes=("_tl", "")) if "strategy" not in timeline else timeline
    out = []
    for name, frame, n_req in (("measured", tl, res.groupby("strategy").size()),
                               ("predicted", sim, sim.groupby("strategy")["request_id"].nunique())):
        d = loop_gap_rows(frame.assign(duration_ms=frame["end_ms"] - frame["start_ms"]))
        g = d.groupby(["strategy", "actor", "activity"])["duration_ms"]
        per_req = n_req.reindex(g.size().index.get_level_values(0)).to_numpy()
        out.append(pd.DataFrame({f"{name}_median_ms": g.median(), f"{name}_per_request": g.size() / per_req,
                                 f"{name}_ms_per_request": g.sum() / per_req}))
    both = pd.concat(out, axis=1).reset_index()
    both["error_pct"] = 100 * (both["predicted_median_ms"] / both["measured_median_ms"] - 1)
    both["count_error"] = both["predicted_per_request"] - both["measured_per_request"]
    both["delta_ms_per_request"] = both["predicted_ms_per_request"] - both["measured_ms_per_request"]
    return both


def loop_gap_rows(timeline: pd.DataFrame) -> pd.DataFrame:
    """``timeline`` (with ``duration_ms``) plus one ``loop_gap`` row per pass of a role that
    follows another pass of that role in the same request: the host time (ms) from the end of
    the one to the start of the next (bookkeeping, messages, and any wait for drafts or
    lookahead room)."""
    by = [c for c in ("strategy", "request_id", "actor") if c in timeline]  # simulated ids repeat across strategies
    p = timeline[timeline["activity"].isin(PASS_ACTIVITIES)].sort_values(by + ["start_ms"])
    nxt = p.groupby(by)["start_ms"].shift(-1)
    gaps = p.assign(activity="loop_gap", start_ms=p["end_ms"], end_ms=nxt, duration_ms=nxt - p["end_ms"])
    return pd.concat([timeline, gaps.dropna(subset=["duration_ms"])], ignore_index=True)


def predict_cell_timeline(cell: pd.DataFrame, ts: TraceSet, n_predicted: int, seed: int, **config) -> pd.DataFrame:
    """Simulated activity timeline (with a ``strategy`` column) of every simulated request of one
    executor cell, the same scenarios as :func:`predict_cell` (pooled acceptance). A pass span
    holds its GPU work only, as an executor span does: the simulated host gap before it
    (``pass_gap_ms``, :func:`egpt_sim.sim.rules.pass_phases_ms`) lies between spans."""
    first = cell.iloc[0]
    key = f"{first['sigma']}-{first['output_tokens']}-{first['n_gpus']}"
    parts = []
    for cfg in _cell_configs(cell, ts, n_predicted, seed, **config):
        tl = simulate(cfg, ts, bank=draw_bank(cfg, ts), timeline=True, n_timeline_requests=cfg.n_requests).timeline
        parts.append(tl.assign(request_id=f"{key}-b{cfg.window_budget}-" + tl["request_id"].astype(str)))
    return pd.concat(parts, ignore_index=True).assign(strategy=first["strategy"])


def decode_steps_from_executor(stage_timings: pd.DataFrame, timeline: pd.DataFrame) -> pd.DataFrame:
    """Replace the target's ``alone`` rows by what the executor's ``target_only`` requests ran
    (same session, same processes): every activity of each baseline request becomes one
    recorded "sample" (load, preprocess, vision_encode, prefill, decode steps in order).

    Calibrating the target on the baseline and scoring the speculative strategies keeps the
    comparison out of sample: ``target_only`` cells then become calibration cells, the
    speculative cells never lend a number to their own prediction.
    """
    tl = timeline[(timeline["strategy"] == "target_only") & (timeline["actor"] == "target")]
    if tl.empty or not (tl["activity"] == "decode_step").any():
        raise TraceError("executor timeline: no target_only decode steps to calibrate from")
    st = stage_timings
    alone_t = (st["role"] == "target") & (st["placement"] == "alone")
    tl = tl.sort_values(["request_id", "start_ms"])
    sid = tl["sample_id"].astype(str).to_numpy() if "sample_id" in tl else np.full(len(tl), "executor")
    rows = span_rows(tl, sid, st, (tl["end_ms"] - tl["start_ms"]).to_numpy())
    rows = rows.assign(run_id="executor-target_only", placement="alone", concurrency="none", peer_activity="none",
                       peer_busy=False, overlap_frac=np.nan)[list(st.columns)]
    verify = st[alone_t & (st["stage"] == "verify")]  # target_only runs no verify: keep the stage rows
    return pd.concat([st[~alone_t], verify, rows], ignore_index=True)


MODES = ("stages", "executor_target_only", "executor_folds")


def length_folds(lengths) -> list[tuple[int, ...]]:
    """Two folds of the output lengths, alternating in sorted order ({5, 50} and {20, 100})."""
    ls = sorted({int(x) for x in lengths})
    return [f for f in (tuple(ls[0::2]), tuple(ls[1::2])) if f]


def load_validation_dir(path: str | Path, decode_from: str = "stages",
                        calibration_lengths: tuple[int, ...] | None = None
                        ) -> tuple[pd.DataFrame, Callable[[float], TraceSet]]:
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
    stage_timings, metadata = full.stage_timings, full.metadata
    if decode_from == "executor_target_only":
        stage_timings = decode_steps_from_executor(stage_timings, pd.read_parquet(path / "executor_timeline.parquet"))
    elif decode_from == "executor_folds":
        calib = results[results["output_tokens"].isin(calibration_lengths or ())]
        if calib.empty:
            raise TraceError(f"{res_file}: no executor requests of output lengths {calibration_lengths} to calibrate on")
        stage_timings, runs = executor_stage_rows(pd.read_parquet(path / "executor_timeline.parquet"), calib,
                                                  stage_timings, executor_concurrency(results))
        metadata = without_loop_gaps({**metadata, "runs": {**metadata["runs"], **runs}})  # cycles hold the gaps
    elif decode_from != "stages":
        raise ValueError(f"decode_from must be one of {MODES}, got {decode_from!r}")
    cache: dict[float, TraceSet] = {}
    samples = set(results["sample_id"].astype(str)) if "sample_id" in results else None
    tails = _replay_tails(full.metadata, sorted(samples or ()))

    def traces_for(sigma: float) -> TraceSet:
        if sigma not in cache:
            sel = acc[np.isclose(acc["sigma"].astype(float), float(sigma))]
            if sel.empty:
                raise TraceError(f"{path}: no acceptance rows with sigma={sigma}")
            ts = TraceSet.from_frames(stage_timings, sel, metadata, f"{path} (sigma={sigma})")
            ts.serving_factors = full.serving_factors  # applied to these rows when the folder was loaded
            ts.replay_source = _executor_source(sel, samples, tails.get(float(sigma)))
            cache[sigma] = ts
        return cache[sigma]

    return results, traces_for


def _replay_tails(metadata: dict, sample_ids=()) -> dict[float, dict[str, float]]:
    """sigma -> {sample id -> the tail rate the executor's acceptance replay used for it}: run
    metadata ``acceptance_replay`` of each executor run (``executor-<first>-<last>``) over its
    sample range, later-starting runs winning where ranges overlap (a folder merged from calls
    that recorded different acceptance). Empty for folders recorded before it was written."""
    runs = []
    for key, run in metadata.get("runs", {}).items():
        parts = key.split("@")[0].split("-")
        if parts[0] == "executor" and len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            runs.append((int(parts[1]), int(parts[2]), run.get("acceptance_replay") or {}))
        elif run.get("acceptance_replay"):
            runs.append((0, 10 ** 9, run["acceptance_replay"]))
    out: dict[float, dict[str, float]] = {}
    for first, last, replay in sorted(runs, key=lambda r: r[0]):
        for sigma, info in replay.items():
            tails = out.setdefault(float(sigma), {})
            for sid in sample_ids:
                if not str(sid).isdigit() or first <= int(sid) <= last:
                    tails[str(sid)] = float(info["tail_alpha"])
    return out


def _executor_source(acceptance: pd.DataFrame, samples: set[str] | None, tail_alpha: Mapping | float | None):
    """What the executor replayed: the verification blocks of the samples it ran (per-sample
    sources, picked uniformly), continued past censored blocks with the tail rate it used for
    each sample (:func:`_replay_tails`)."""
    from ..traces.acceptance import TraceAcceptance

    blocks = (acceptance.groupby(["run_id", "sample_id", "verify_id"], as_index=False)
              .agg(gamma=("gamma", "first"), accepted_len=("accepted_len", "first")))
    if samples:
        ran = blocks[blocks["sample_id"].astype(str).isin(samples)]
        blocks = ran if len(ran) else blocks
    label = f"replayed {blocks['run_id'].iloc[0]}"
    return TraceAcceptance(blocks, tail_alpha=tail_alpha, label=label)


def executor_concurrency(results: pd.DataFrame) -> str:
    """How the executor ran the two models (``workers`` column): ``processes`` or ``streams``
    (threads on CUDA streams; also every folder recorded before the column existed)."""
    if "workers" in results.columns and (results["workers"].astype(str) == "processes").all():
        return "processes"
    return "streams"


def compare_dir(path: str | Path, n_predicted: int = 400, concurrency: str = "auto",
                decode_from: str = "stages", **config) -> tuple[pd.DataFrame, dict]:
    """``compare`` for a validation folder; contention fitted from the rows of the executor's
    own concurrency (``auto``: its ``workers`` column, see :func:`executor_concurrency`).

    ``decode_from="executor_target_only"`` takes the target's stage rows from the executor's
    baseline requests (:func:`decode_steps_from_executor`); ``target_only`` cells are then
    flagged ``calibration`` and left out of the overall error figures.
    """
    if decode_from == "executor_folds":
        return _compare_folds(path, n_predicted, concurrency, **config)
    results, traces_for = load_validation_dir(path, decode_from)
    if concurrency == "auto":
        concurrency = executor_concurrency(results)
    cells, overall = compare(results, traces_for, n_predicted=n_predicted,
                             contention_concurrency=concurrency, **config)
    cells["calibration"] = (decode_from != "stages") & (cells["strategy"] == "target_only")
    if cells["calibration"].any():
        overall = _overall(cells[~cells["calibration"]]) | {
            "calibrated_on": "the target's stage rows from the executor's target_only requests (other cells)"}
    overall["contention_concurrency"] = concurrency
    serving = factor_summary(traces_for(float(results["sigma"].iloc[0])).serving_factors)
    if serving:
        overall["serving_factors"] = serving
    return cells, overall


def _compare_folds(path: str | Path, n_predicted: int, concurrency: str, **config) -> tuple[pd.DataFrame, dict]:
    """Each fold of output lengths predicted from the executor's spans of the other fold
    (:mod:`egpt_sim.analysis.executor_rows`): every cell is scored, none lends a number to
    its own prediction."""
    results = pd.read_parquet(Path(path) / "executor_results.parquet")
    folds = length_folds(results["output_tokens"])
    if len(folds) < 2:
        raise TraceError(f"{path}: executor_folds needs at least two output lengths, got {folds}")
    parts, conc = [], concurrency
    for i, fold in enumerate(folds):
        other = tuple(x for j, f in enumerate(folds) if j != i for x in f)
        res, traces_for = load_validation_dir(path, "executor_folds", other)
        conc = executor_concurrency(res) if concurrency == "auto" else concurrency
        cells, _ = compare(res[res["output_tokens"].isin(fold)], traces_for, n_predicted=n_predicted,
                           contention_concurrency=conc, **config)
        parts.append(cells.assign(calibration=False, calibrated_on_lengths=",".join(map(str, other))))
    cells = pd.concat(parts, ignore_index=True).sort_values(["n_gpus", "sigma", "strategy", "output_tokens"])
    overall = _overall(cells) | {"calibrated_on": "executor spans of the other output lengths (folds "
                                 + " <-> ".join("{" + ", ".join(map(str, f)) + "}" for f in folds) + ")",
                                 "contention_concurrency": conc}
    return cells.reset_index(drop=True), overall


NEAR_TIE_LOGITS = 1.0 / 64  # 4 fp16 ulps for logits in [4, 8) (ulp 2**-8)


def lossless_summary(results: pd.DataFrame, tol: float = NEAR_TIE_LOGITS) -> dict:
    """Greedy speculative requests that reproduced target_only's tokens, and for the others the
    target's top-1 minus top-2 logit where the two runs first differ (both runs' gaps; recorded
    by ``measure.validation_run`` since the gaps were added). A mismatch is a *near-tie* when
    both gaps are <= ``tol``: a verify pass (k + 1 query tokens) and a decode step (1) use
    different kernels and reduction orders, whose fp16 results may differ by a few ulps."""
    spec = results[results["strategy"] != "target_only"]
    if spec.empty or "lossless" not in spec:
        return {"n_speculative": int(len(spec))}
    bad = spec[~spec["lossless"].astype(bool)]
    gap_cols = [c for c in ("gap_at_mismatch", "reference_gap_at_mismatch") if c in bad]
    gaps = bad[gap_cols].dropna() if gap_cols else pd.DataFrame()
    worst = gaps.max(axis=1) if len(gaps) else pd.Series(dtype=float)
    return {"n_speculative": int(len(spec)), "n_lossless": int(len(spec) - len(bad)),
            "lossless_share": float(1 - len(bad) / len(spec)), "n_mismatch": int(len(bad)),
            "n_mismatch_with_gaps": int(len(gaps)), "max_gap_logits": float(worst.max()) if len(worst) else None,
            "n_above_tolerance": int((worst > tol).sum()), "tolerance_logits": tol}


GOALS = {"processes": (2.0, 5.0, 0.02, 0.8), "streams": (5.0, 10.0, 0.05, None)}
"""Per executor kind: median %, p90 % |latency error|, p90 |speed-up error|, share of cells
+-5 % equivalent by the paired TOST (None: no TOST goal)."""


def verdict(overall: dict) -> str:
    """One line: the figures against the goals of the executor's kind (README, issue 11). The
    TOST goal is checked on the paired test (:func:`paired_tost`); the unpaired share is printed."""
    med, p90, spd, tost = GOALS.get(overall.get("contention_concurrency", "streams"), GOALS["streams"])
    paired = overall.get("paired_tost_equivalent_fraction", float("nan"))
    ok = (overall["median_abs_error_pct"] <= med and overall["p90_abs_error_pct"] <= p90
          and overall.get("p90_abs_speedup_error", float("nan")) <= spd and (tost is None or paired >= tost))
    goal_tost = f", paired TOST in >= {100 * tost:.0f} % of cells" if tost is not None else ""
    return (f"{'MEETS' if ok else 'MISSES'} the goals (median |latency error| <= {med:g} %, p90 <= {p90:g} %, "
            f"p90 |speed-up error| <= {spd:g}{goal_tost}): median {overall['median_abs_error_pct']:.1f} %, "
            f"p90 {overall['p90_abs_error_pct']:.1f} %, p90 |speed-up error| {overall.get('p90_abs_speedup_error', float('nan')):.3f}, "
            f"TOST +-5 % paired {100 * paired:.0f} % / unpaired {100 * overall['tost_equivalent_fraction']:.0f} % of cells"
            + (f"; measurement noise: SE of a cell's median {overall['median_measured_se_pct']:.1f} % (median), "
               f"{100 * overall['within_noise_fraction']:.0f} % of cells within 2 SE"
               if "median_measured_se_pct" in overall else "")
            + (f"; a model without error would score p90 {overall['p90_abs_error_pct_if_exact']:.1f} % / "
               f"{overall['p90_abs_speedup_error_if_exact']:.3f} on this noise"
               if "p90_abs_error_pct_if_exact" in overall else "")
            + _unshowable(overall, p90, spd))


def _unshowable(overall: dict, p90_goal_pct: float, speedup_goal: float) -> str:
    """Which p90 goals lie below what a model without error would score on the grid's noise
    (:func:`exact_model_p90`): no model can be shown to meet them with these requests per cell."""
    floors = (("p90 latency", p90_goal_pct, overall.get("p90_abs_error_pct_if_exact")),
              ("p90 speed-up", speedup_goal, overall.get("p90_abs_speedup_error_if_exact")))
    below = [name for name, goal, floor in floors if floor is not None and np.isfinite(floor) and floor > goal]
    return (f"; the {' and '.join(below)} goal{'s' if len(below) > 1 else ''} cannot be shown on this noise "
            "(more requests per cell)") if below else ""


def scatter(cells: pd.DataFrame, path: Path, title: str) -> Path:
    """Measured vs predicted: median latency per cell (left) and mean paired speed-up (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (m, p, unit) in zip(axes, (("measured_median_ms", "predicted_median_ms", "median latency, ms"),
                                       ("measured_speedup", "predicted_speedup", "paired speed-up vs target_only"))):
        for strategy, g in cells.groupby("strategy"):
            ax.scatter(g[m], g[p], label=strategy, s=22)
        lo, hi = np.nanmin(cells[[m, p]].to_numpy()), np.nanmax(cells[[m, p]].to_numpy())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set(xlabel=f"measured {unit}", ylabel=f"predicted {unit}")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m egpt_sim.validation DIR [--out DIR]``: every mode, tables, verdict, JSON, scatter."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m egpt_sim.validation", description=main.__doc__)
    p.add_argument("folder")
    p.add_argument("--out", default=None, help="where to write validation_cells_*.csv / overall JSON (default: folder)")
    p.add_argument("--predicted", type=int, default=400, help="simulated requests per cell")
    p.add_argument("--residuals", action="store_true", help="also write validation_residuals.csv (per activity)")
    p.add_argument("--pass-gap-ms", type=float, default=None,
                   help="diagnostic: host gap before every pass (ms) instead of the folder's recorded serving-loop "
                        "gaps (0 when none); say where it came from, and write with --out, not over the folder's tables")
    a = p.parse_args(argv)
    out = Path(a.out or a.folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    extra = {} if a.pass_gap_ms is None else {"pass_gap_ms": a.pass_gap_ms}
    for mode in MODES:
        gap = extra if mode != "executor_folds" else {}  # the executor's cycles already hold the gaps there
        cells, overall = compare_dir(a.folder, n_predicted=a.predicted, decode_from=mode, **gap)
        overall |= {"pass_gap_ms": a.pass_gap_ms} if gap else {}
        cells.to_csv(out / f"validation_cells_{mode}.csv", index=False, float_format="%.4g")
        summary[mode] = overall
        print(f"\n== decode steps from {mode}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in overall.items()))
        print(cells[["n_gpus", "sigma", "strategy", "output_tokens", "n_measured", "measured_median_ms",
                     "predicted_median_ms", "error_pct", "measured_se_pct", "measured_speedup", "predicted_speedup", "speedup_error",
                     "ks_pvalue", "tost_equivalent"]].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print(f"verdict ({mode}): {verdict(overall)}")
        if mode == "stages":
            workers = {"streams": "threads", "processes": "processes"}.get(overall.get("contention_concurrency"), "")
            scatter(cells, out / "validation_scatter.png",
                    f"{Path(a.folder).name}: traces-only prediction" + (f" ({workers})" if workers else ""))
    if a.residuals:
        results, traces_for = load_validation_dir(a.folder)
        tl = pd.read_parquet(Path(a.folder) / "executor_timeline.parquet")
        res = activity_residuals(results, tl, traces_for, n_predicted=min(a.predicted, 100),
                                 contention_concurrency=executor_concurrency(results), **extra)
        res.to_csv(out / "validation_residuals.csv", index=False, float_format="%.4g")
    lossless = lossless_summary(pd.read_parquet(Path(a.folder) / "executor_results.parquet"))
    print("lossless: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in lossless.items()))
    (out / "validation_overall.json").write_text(json.dumps(summary | {"lossless": lossless}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
