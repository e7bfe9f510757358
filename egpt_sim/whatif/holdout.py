"""Held-out shapes: how well the cost model predicts a frame count it was not fitted on.

:func:`holdout_cells` fits the cost model on some frame counts of a frames sweep, predicts
the others as a what-if does (:mod:`egpt_sim.whatif.shapes`) and compares with the measured
samples; :func:`holdout_summary` condenses the cells against the goal.
"""

from __future__ import annotations

import numpy as np

from ..traces.traceset import TraceSet
from . import costmodel as C
from .shapes import RoleShape, _moved_sample, _nearest_shape


HOLDOUT_STAGES = ("preprocess", "vision_encode", "prefill", "decode_step")


def _pct_err(pred: np.ndarray, meas: np.ndarray, q: float) -> tuple[float, float, float]:
    p, m = float(np.quantile(pred, q)), float(np.quantile(meas, q))
    return p, m, 100.0 * (p / m - 1.0)


def _cell(scheme, f, stage, gamma, pred, meas, law: str, near: int) -> dict:
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    pred, meas = pred[np.isfinite(pred)], meas[np.isfinite(meas)]
    p50, m50, e50 = _pct_err(pred, meas, 0.5)
    p90, m90, e90 = _pct_err(pred, meas, 0.9)
    return {"scheme": scheme, "held_out_frames": int(f), "stage": stage, "gamma": int(gamma), "n_predicted": len(pred),
            "n_measured": len(meas), "measured_median_ms": m50, "predicted_median_ms": p50, "err_median_pct": e50,
            "measured_p90_ms": m90, "predicted_p90_ms": p90, "err_p90_pct": e90, "law": law, "nearest_frames": near}


def holdout_cells(traces: TraceSet, train_frames, test_frames, scheme: str = "", role: str = "target",
                  output_tokens: int = 17) -> "pd.DataFrame":
    """Fit the cost model on the ``train_frames`` rows of ``traces`` (one role's frame
    sweep, e.g. ``h200/graphs-frames``), predict every ``test_frames`` shape as a what-if
    does (nearest measured shape's samples moved along the laws; prompt = the training
    text tokens + frames × tokens per frame) and compare with the measured samples.

    One row per (held-out frames, stage; verify per gamma; ``e2e_target_only``: load +
    preprocess + vision + prefill + the first ``output_tokens - 1`` decode steps of a
    sample, the sum ``target_only`` simulates for ``output_tokens`` tokens): medians and
    p90s of predicted vs measured, signed errors in %.
    """
    import pandas as pd

    train = C.filter_rows(traces, lambda st: st["frames"].isin(list(train_frames)))
    test = C.filter_rows(traces, lambda st: st["frames"].isin(list(test_frames)))
    cm = C.fit_cost_model([train])
    data, meas_all = cm.data[role], C.fit_cost_model([test]).data[role]
    text = float(np.median(data.prompt_tokens - data.frames * C.llm_tokens_per_frame(role, int(data.resolution[0]))))
    rows = []
    for f in test_frames:
        res = int(data.resolution[0])
        shape = RoleShape(role, int(f), res, int(round(text + f * C.llm_tokens_per_frame(role, res))), source="model")
        near = _nearest_shape(data, shape.prompt_tokens, "")
        moved = [_moved_sample(data, d, shape, cm, data.phase_ms[d, 0]) for d in near]
        meas = np.flatnonzero(meas_all.frames == f)
        nf = int(data.frames[near[0]])
        for k, stage in enumerate(PHASE_STAGES, start=1):
            rows.append(_cell(scheme, f, stage, 0, [m["phase"][k] for m in moved], meas_all.phase_ms[meas, k],
                              cm.law(role, stage).describe(), nf))
        rows.append(_cell(scheme, f, "decode_step", 0, np.concatenate([m["decode"] for m in moved]),
                          meas_all.decode_ms[meas].ravel(), cm.law(role, "decode_step").describe(), nf))
        for j, g in enumerate(meas_all.gammas):
            rows.append(_cell(scheme, f, "verify", g, [m["verify"].get(int(g), np.nan) for m in moved],
                              meas_all.verify_ms[meas, j], cm.law(role, "verify", int(g)).describe(), nf))
        n = output_tokens - 1
        pred_e2e = [m["phase"].sum() + m["decode"][:n].sum() for m in moved]
        meas_e2e = np.nansum(meas_all.phase_ms[meas], axis=1) + np.nansum(meas_all.decode_ms[meas, :n], axis=1)
        rows.append(_cell(scheme, f, "e2e_target_only", 0, pred_e2e, meas_e2e, f"{output_tokens} tokens", nf))
    return pd.DataFrame(rows)


PHASE_STAGES = ("preprocess", "vision_encode", "prefill")


def holdout_summary(cells: "pd.DataFrame") -> "pd.DataFrame":
    """Per (scheme, stage, gamma): held-out cells, median and p90 of |error of the median|
    (%), and the median |error of the p90| (%), against the goal (median <= 5 %, p90 <= 10 %)."""
    g = cells.assign(abs_med=cells["err_median_pct"].abs(), abs_p90=cells["err_p90_pct"].abs())
    out = g.groupby(["scheme", "stage", "gamma"], sort=False).agg(
        cells=("abs_med", "size"), median_abs_err_pct=("abs_med", "median"),
        p90_abs_err_pct=("abs_med", lambda x: float(np.quantile(x, 0.9))),
        median_abs_err_of_p90_pct=("abs_p90", "median")).reset_index()
    out["goal_met"] = (out["median_abs_err_pct"] <= 5.0) & (out["p90_abs_err_pct"] <= 10.0)
    return out
