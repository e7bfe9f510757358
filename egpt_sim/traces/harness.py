"""Serving-harness correction of stage rows (torch-free).

A stage run times each activity in its own measuring process. The serving processes (the
executor's workers) can run the same activity at another speed: on H200 leases the target's
graph decode step took 6.9-7.1 ms in ``measure.stages``' interleaved runs and 7.5-7.9 ms in
every standalone process and executor worker (README, validation item 3; cause not found).
``measure.validation_run`` therefore also runs the stage protocol (``alone``) *inside the
executor's workers*, over the stage runs' samples, before any timed request: a run whose
metadata says ``harness="serving_workers"`` and names the call's stage runs in
``harness_of``.

Model: a GPU activity costs the stage run's time x a **serving factor** per (role, activity
[, gamma for verify]) = median duration in the serving workers / median ``alone`` duration
in the stage runs it names. Every row of those stage runs (alone and beside a peer) is
rescaled by it, so the contention factors the stage runs measured are kept and the
per-sample spread too. Only the serving loop's passes (decode steps, verify) are rescaled
(:data:`GPU_ACTIVITIES` says why), and the target's load and decode step by their durations in the
executor's untimed reference requests where recorded (:data:`REFERENCE_ACTIVITIES`: the load holds
the dispatch to the worker; the decode step is timed beside the grid, not before it); other CPU
activities, vision encode and prefill are left as measured. The serving
rows themselves are dropped afterwards (they only set the factors). Nothing in the
executor's timed requests enters.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

HARNESS_SERVING = "serving_workers"
# The serving loop's passes. Prefill and vision encode are left as the stage runs measured them:
# their serving factors were 0.94-1.02 on two GPUs, and on one GPU the serving workers' alone
# drafter prefill read 22-40 ms (stage run 21.5, the executor's own requests 25): the idle peer
# worker perturbs a host-bound eager prefill there, so that factor measures the protocol, not serving.
GPU_ACTIVITIES = ("verify", "decode_step")
# Prefill-phase activities whose serving time comes from the untimed reference requests
# (``serving_reference_stage_ms``, one target_only request per sample, no grid cell): the executor's
# load span opens when the parent hands the request over, so it holds the dispatch to the worker
# (load 13.2-14.4 ms in the executor's requests against 9.8-11.3 in the stage runs and the serving
# workers' own protocol, 1 GPU, validation-graphs-1gpu-cudnn-loopgaps) that no stage row has. The
# target's decode step too: its factor replaces the serving protocol's. That protocol times 20 steps
# per sample at the start of a call; eager steps there read 20.7-29.0 ms (median by call) while the
# executor's own stepped 27-31 ms all grid long (validation-eager-1gpu-serving, four calls).
REFERENCE_ACTIVITIES = ("load", "decode_step")


def serving_runs(metadata: Mapping) -> dict[str, list[str]]:
    """Serving-harness run id -> the stage run ids it corrects (``harness_of``)."""
    runs = (metadata or {}).get("runs", {})
    return {rid: list(m.get("harness_of") or []) for rid, m in runs.items()
            if isinstance(m, Mapping) and m.get("harness") == HARNESS_SERVING}


def _median(rows: pd.DataFrame) -> float:
    return float(np.median(rows["duration_ms"])) if len(rows) else float("nan")


FACTOR_COLUMNS = ["serving_run", "role", "stage", "gamma", "factor", "serving_ms", "stage_ms", "n_serving", "n_stage",
                  "gamma_from"]


def harness_factors(stage_timings: pd.DataFrame, metadata: Mapping) -> pd.DataFrame:
    """One row per (serving run, role, stage, gamma): ``factor`` = serving / stage-run median
    ``duration_ms`` (``gamma`` NaN except for verify; a verify gamma the serving run did not
    time gets the median factor of those it did, ``gamma_from="pooled"``)."""
    ok = stage_timings[stage_timings["status"] == "ok"] if "status" in stage_timings else stage_timings
    out = []
    for rid, of in serving_runs(metadata).items():
        w = ok[ok["run_id"] == rid]
        r = ok[ok["run_id"].isin(of) & (ok["placement"] == "alone")]
        for (role, stage), ws in w[w["stage"].isin(GPU_ACTIVITIES)].groupby(["role", "stage"]):
            rs = r[(r["role"] == role) & (r["stage"] == stage)]
            if rs.empty:
                continue
            if stage != "verify":
                out.append([rid, role, stage, np.nan, _median(ws) / _median(rs), _median(ws), _median(rs),
                            len(ws), len(rs), "own"])
                continue
            per = {}
            for g, rg in rs.groupby("gamma"):
                wg = ws[ws["gamma"] == g]
                if len(wg):
                    per[g] = _median(wg) / _median(rg)
                    out.append([rid, role, stage, float(g), per[g], _median(wg), _median(rg), len(wg), len(rg), "own"])
            pooled = float(np.median(list(per.values()))) if per else _median(ws) / _median(rs)
            for g, rg in rs.groupby("gamma"):
                if g not in per:
                    out.append([rid, role, stage, float(g), pooled, np.nan, _median(rg), 0, len(rg), "pooled"])
    serving, ref = pd.DataFrame(out, columns=FACTOR_COLUMNS), reference_factors(ok, metadata)
    taken = set(zip(ref["serving_run"], ref["role"], ref["stage"]))  # the reference requests' factor wins
    keep = [k not in taken for k in zip(serving["serving_run"], serving["role"], serving["stage"])]
    return pd.concat([serving[np.array(keep, dtype=bool)], ref], ignore_index=True)


def reference_factors(stage_timings: pd.DataFrame, metadata: Mapping) -> pd.DataFrame:
    """Factors of :data:`REFERENCE_ACTIVITIES` (columns of :func:`harness_factors`): median in the
    serving run's reference requests (``serving_reference_stage_ms``) / median ``alone`` row of the
    stage runs it names; none where the run recorded no reference stages (folders before them)."""
    out = []
    for rid, of in serving_runs(metadata).items():
        ref = metadata["runs"][rid].get("serving_reference_stage_ms") or {}
        r = stage_timings[stage_timings["run_id"].isin(of) & (stage_timings["placement"] == "alone")]
        for role, acts in ref.items():
            for stage in REFERENCE_ACTIVITIES:
                ms, rs = list(acts.get(stage) or []), r[(r["role"] == role) & (r["stage"] == stage)]
                if ms and len(rs):
                    ref_ms = float(np.median(ms))
                    out.append([rid, role, stage, np.nan, ref_ms / _median(rs), ref_ms, _median(rs), len(ms), len(rs),
                                "own"])
    return pd.DataFrame(out, columns=FACTOR_COLUMNS)


def apply_serving_harness(stage_timings: pd.DataFrame, metadata: Mapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (stage rows rescaled by :func:`harness_factors`, without the serving runs' rows; the
    factors). Without serving runs the rows come back unchanged and the factors empty."""
    runs = serving_runs(metadata)
    if not runs:
        return stage_timings, harness_factors(stage_timings.iloc[:0], {})
    factors = harness_factors(stage_timings, metadata)
    rows = stage_timings[~stage_timings["run_id"].isin(list(runs))].copy()
    scale = np.ones(len(rows))
    for f in factors.itertuples(index=False):
        m = rows["run_id"].isin(runs[f.serving_run]) & (rows["role"] == f.role) & (rows["stage"] == f.stage)
        if f.stage == "verify":
            m &= rows["gamma"] == f.gamma
        m = m.to_numpy(dtype=bool)
        scale[m] = f.factor
    for col in ("duration_ms", "gpu_ms"):
        if col in rows:
            rows[col] = rows[col].to_numpy(dtype=float) * scale
    return rows.reset_index(drop=True), factors


def serving_gap_ms(metadata: Mapping) -> dict[str, float]:
    """role -> median host time (ms) between two consecutive passes of that role in the serving
    loop (``serving_loop_gaps_ms`` of the serving runs: the executor's untimed reference requests,
    ``measure.validation_run``), pooled over runs; empty when none were recorded. The stage
    loops leave 0.02-0.05 ms between steps, the executor 0.18-0.24 ms (README, validation item 2)."""
    pooled: dict[str, list[float]] = {}
    for m in (metadata or {}).get("runs", {}).values():
        if isinstance(m, Mapping) and m.get("harness") == HARNESS_SERVING:
            for role, gaps in (m.get("serving_loop_gaps_ms") or {}).items():
                pooled.setdefault(role, []).extend(float(g) for g in gaps)
    return {role: float(np.median(g)) for role, g in pooled.items() if g}


def without_loop_gaps(metadata: Mapping) -> dict:
    """``metadata`` without the serving-loop gaps: for stage rows that already hold them (the
    executor's own cycles, start to next start, ``egpt_sim.analysis.executor_rows``)."""
    runs = {k: ({kk: vv for kk, vv in v.items() if kk != "serving_loop_gaps_ms"} if isinstance(v, Mapping) else v)
            for k, v in (metadata or {}).get("runs", {}).items()}
    return {**dict(metadata or {}), "runs": runs}


def factor_summary(factors: pd.DataFrame) -> dict[str, float]:
    """``role/stage`` -> median serving factor over runs (and verify gammas timed), rounded."""
    if factors.empty:
        return {}
    own = factors[factors["gamma_from"] == "own"]
    return {f"{r}/{s}": round(float(g["factor"].median()), 4) for (r, s), g in own.groupby(["role", "stage"])}
