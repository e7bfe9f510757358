"""Sweeps over what-if shapes: every strategy at every (target frames, drafter size, GPU
count) on the fast engine, and where speculative decoding pays (:mod:`egpt_sim.whatif`)."""

from __future__ import annotations

import numpy as np

from ..traces.traceset import TraceSet
from ..whatif.shapes import scenario_traces


def shape_sweep(traces: TraceSet, target_frames, drafter_params_b, n_gpus=(1, 2),
                strategies=("prefill_then_verify", "parallel_sd"), **config) -> "pd.DataFrame":
    """Every strategy (and ``target_only``) at every (target frames, drafter size, GPU
    count), on the same draws per shape (fast path). ``config``: other SimConfig fields.

    One row per scenario: ``time_source``, ``target_prompt_tokens``, ``drafter_step_ms``
    (median draft step), ``window_ms`` (mean target prefill end - drafter prefill end: the
    time the drafter drafts in while the target prefills), ``window_capacity_drafts``
    (window_ms / drafter_step_ms: drafts that would fit), ``window_drafts`` (drafted in
    the window: hidden behind the target's prefill, at most gamma), ``window_accepted``,
    ``latency_mean_ms`` and ``speedup`` (mean target_only latency / mean latency).
    """
    import pandas as pd

    from ..sim.config import SimConfig
    from ..fast import simulate_many, summarize_arrays
    from ..sim.runner import draw_bank

    rows = []
    for f in target_frames:
        for p in drafter_params_b:
            base = SimConfig(target_frames=int(f), drafter_params_b=float(p), **config)
            sc = scenario_traces(base, traces)
            cfgs = [base.replace(strategy=s, n_gpus=int(g)) for g in n_gpus for s in ("target_only", *strategies)]
            outs = simulate_many(cfgs, traces, draw_bank(base, traces))
            step = float(np.nanmedian(sc.sample_tables["drafter"].decode_ms)) / base.drafter_speed
            for c, o in zip(cfgs, outs):
                s = summarize_arrays(o)
                window = float(np.nanmean(o["target_prefill_end_ms"] - o["drafter_prefill_end_ms"]))
                rows.append({"target_frames": int(f), "drafter_params_b": float(p), "n_gpus": c.n_gpus,
                             "strategy": c.strategy, "time_source": s["time_source"],
                             "target_prompt_tokens": sc.prompt_tokens("target"), "drafter_step_ms": step,
                             "window_ms": window, "window_capacity_drafts": window / step,
                             "window_drafts": s["window_drafts_mean_tokens"],
                             "window_accepted": s["window_accepted_mean_tokens"],
                             "latency_mean_ms": s["latency_mean_ms"], "speedup": s["speedup_of_means"]})
    return pd.DataFrame(rows)


def pays_table(sweep: "pd.DataFrame") -> "pd.DataFrame":
    """Per (GPU count, target frames, drafter size): the best speculative strategy and its
    speed-up, and ``pays`` (speed-up > 1: faster than target_only on the same draws)."""
    d = sweep[sweep["strategy"] != "target_only"]
    best = d.loc[d.groupby(["n_gpus", "target_frames", "drafter_params_b"])["speedup"].idxmax()]
    out = best[["n_gpus", "target_frames", "drafter_params_b", "strategy", "speedup", "time_source"]]
    return out.assign(pays=out["speedup"] > 1.0).reset_index(drop=True)
