"""The executor's own spans as stage rows: what a calibration on *other* cells feeds the simulator.

A validation folder holds, besides the stage runs, every span the real executor ran
(``executor_timeline.parquet``). :func:`executor_stage_rows` turns the spans of chosen
requests into schema stage rows, so the simulator can be fed what the executor did in
some cells and scored on the others (``egpt_sim.validation``'s ``executor_folds`` mode):

* ``target_only`` requests -> run ``executor-alone`` (placement ``alone``): the target's
  stage times and decode steps with no peer; each request is one recorded "sample".
* speculative requests -> run ``executor-concurrent`` (the executor's placement and
  concurrency, ``cpu_stages="overlap"``: both roles start stage 1 together), each span with
  the peer activity overlapping it most and its overlap fraction, as ``measure.stages``
  records them; a draft step is a drafter ``decode_step``.
* A GPU span beside a mix of peer activities (none covering 90 % of its overlap) is left
  out: it cannot tell one (role, stage, peer activity) factor.
* A token pass (decode step, draft step, verify) lasts from its start to the start of the
  same actor's next span: the per-step host work between passes (reading the token,
  messages, waiting for a time slice on a shared GPU) is part of the step's cost, so the
  simulator charges it there (and no separate loop gap: the folder's recorded gaps are
  dropped in that mode, ``without_loop_gaps``). Other spans keep their duration.
* The drafter's ``alone`` rows and the target's ``alone`` verify rows (target_only runs
  none) stay those of the stage runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..traces.contention import measured_stage
from ..traces.schema import CPU_STAGES, PASS_ACTIVITIES, TraceError

MIN_DOMINANCE = 0.9  # a concurrent GPU span is kept when one peer activity covers this share of its overlap
ALONE_RUN, CONCURRENT_RUN = "executor-alone", "executor-concurrent"


def with_cycles(tl: pd.DataFrame) -> pd.DataFrame:
    """Spans with ``cycle_ms``: start to the start of the same actor's next span for token
    passes (their duration for the last one and for every other activity), ms."""
    tl = tl.sort_values(["request_id", "actor", "start_ms"])
    nxt = tl.groupby(["request_id", "actor"])["start_ms"].shift(-1)
    dur = tl["end_ms"] - tl["start_ms"]
    step = tl["activity"].isin(PASS_ACTIVITIES) & nxt.notna()
    return tl.assign(duration_ms=dur, cycle_ms=np.where(step, nxt - tl["start_ms"], dur))


def peer_overlap(tl: pd.DataFrame) -> pd.DataFrame:
    """Per span: the other actor's activity overlapping it most (``none`` without overlap,
    as a measured stage name) and the overlapped fraction of its duration. Spans with a
    ``cycle_ms`` (:func:`with_cycles`) count as lasting that long, on both sides: the
    simulator charges a token pass its cycle, so a peer is busy for the whole cycle too."""
    peer = np.full(len(tl), "none", dtype=object)
    frac, dominance = np.zeros(len(tl)), np.ones(len(tl))
    pos = {ix: i for i, ix in enumerate(tl.index)}
    end = tl["start_ms"] + tl["cycle_ms"] if "cycle_ms" in tl else tl["end_ms"]
    for _, g in tl.assign(_end=end).groupby("request_id", sort=False):
        s, e = g["start_ms"].to_numpy(float), g["_end"].to_numpy(float)
        actor, act = g["actor"].to_numpy(object), g["activity"].to_numpy(object)
        for j, ix in enumerate(g.index):
            other = actor != actor[j]
            if not other.any():
                continue
            ov = np.clip(np.minimum(e[other], e[j]) - np.maximum(s[other], s[j]), 0.0, None)
            if ov.sum() > 0:
                names = np.array([measured_stage(str(a)) for a in act[other]], dtype=object)
                by_name = {n: ov[names == n].sum() for n in set(names)}
                top = max(by_name, key=by_name.get)
                peer[pos[ix]], dominance[pos[ix]] = top, by_name[top] / ov.sum()
                frac[pos[ix]] = min(1.0, ov.sum() / max(e[j] - s[j], 1e-9))
    return tl.assign(peer_activity=peer, overlap_frac=frac, peer_dominance=dominance)


def span_rows(tl: pd.DataFrame, sample_ids: np.ndarray, stage_timings: pd.DataFrame,
              duration_ms: np.ndarray) -> pd.DataFrame:
    """Executor spans ``tl`` as stage rows with the columns of ``stage_timings``: ``sample_id``
    = the request's sample + ``-r<request>`` (each request one recorded sample), steps counted
    per (sample, role, stage), token counts from the span's ``tokens`` (verify: gamma + 1) and
    the role's prompt; other columns as the stage runs recorded them for that role (device
    time and memory NaN). Placement, concurrency, run and peer columns are the caller's."""
    prompt = (stage_timings[stage_timings["stage"] == "prefill"].groupby("role")["prompt_tokens"].median()
              .astype(int).to_dict())
    rows = pd.DataFrame({
        "sample_id": np.asarray(sample_ids, dtype=str) + "-r" + tl["request_id"].astype(str).to_numpy(),
        "role": tl["actor"].to_numpy(), "stage": [measured_stage(a) for a in tl["activity"]],
        "duration_ms": np.asarray(duration_ms, dtype=float), "start_ms": tl["start_ms"].to_numpy(float),
        "tokens": tl["tokens"].to_numpy() if "tokens" in tl else 1,
    })
    rows["step"] = rows.groupby(["sample_id", "role", "stage"]).cumcount()
    rows["prompt_tokens"] = rows["role"].map(prompt).fillna(0).astype(int)
    verify = rows["stage"] == "verify"
    rows["gamma"] = np.where(verify, rows["tokens"] - 1, 0)
    rows["query_tokens"] = np.where(verify, rows["tokens"], np.where(rows["stage"] == "prefill", rows["prompt_tokens"], 1))
    rows["kv_tokens"] = np.where(rows["stage"].isin(["decode_step", "verify"]), rows["prompt_tokens"] + rows["step"], 0)
    rows["status"] = "ok"
    per_role = stage_timings.groupby("role").first()
    for col in stage_timings.columns:  # every other column as the stage runs recorded it for that role
        if col not in rows:
            rows[col] = rows["role"].map(per_role[col]) if col in per_role else np.nan
    for col in ("gpu_ms", "peak_mem_mb", "peak_extra_mb", "kv_bytes", "peak_reserved_mb", "error"):
        if col in rows:
            rows[col] = np.nan
    return rows


def executor_stage_rows(timeline: pd.DataFrame, results: pd.DataFrame, stage_timings: pd.DataFrame,
                        concurrency: str) -> tuple[pd.DataFrame, dict]:
    """Stage rows (schema columns of ``stage_timings``) of the executor requests in ``results``,
    plus the run metadata they need; see the module docstring."""
    req = results.drop_duplicates("request_id").set_index("request_id")
    if "placement" not in req:
        req["placement"] = np.where(req.get("n_gpus", 1) == 1, "shared_gpu", "separate_gpu")
    tl = timeline[timeline["request_id"].isin(req.index)]
    if tl.empty:
        raise TraceError("executor timeline: no spans of the calibration requests")
    tl = peer_overlap(with_cycles(tl))
    # a GPU span beside a mix of peer activities tells no single factor: left out (CPU spans stay)
    mixed = (tl["peer_dominance"] < MIN_DOMINANCE) & ~tl["activity"].isin(CPU_STAGES)
    tl = tl[~mixed]
    of = req.loc[tl["request_id"]]
    alone = of["strategy"].to_numpy() == "target_only"
    rows = span_rows(tl, of["sample_id"].astype(str).to_numpy(), stage_timings, tl["cycle_ms"].to_numpy())
    rows["run_id"] = np.where(alone, ALONE_RUN, CONCURRENT_RUN)
    rows["placement"] = np.where(alone, "alone", of["placement"].to_numpy())
    rows["concurrency"] = np.where(alone, "none", concurrency)
    rows["peer_activity"] = np.where(alone, "none", tl["peer_activity"].to_numpy())
    rows["overlap_frac"] = np.where(alone, 0.0, tl["overlap_frac"].to_numpy())
    rows["peer_busy"] = rows["peer_activity"] != "none"
    keep = stage_timings[(stage_timings["placement"] == "alone")
                         & ((stage_timings["role"] == "drafter") | (stage_timings["stage"] == "verify"))]
    meta = {ALONE_RUN: {"source": "measured", "kind": "executor spans (target_only requests)"},
            CONCURRENT_RUN: {"source": "measured", "kind": "executor spans (speculative requests)",
                             "cpu_stages": "overlap", "interleaved_with": [ALONE_RUN]}}
    return pd.concat([keep, rows[list(stage_timings.columns)]], ignore_index=True), meta
