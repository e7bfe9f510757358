"""Serving-harness correction (egpt_sim.traces.harness): hand-computed factors on a synthetic set."""

import numpy as np
import pandas as pd
import pytest

from egpt_sim.traces import schema
from egpt_sim.traces.examples import stage_rows
from egpt_sim.traces.harness import (apply_serving_harness, factor_summary, harness_factors,
                                     serving_runs)
from egpt_sim.traces.traceset import TraceSet

PHASE = {"target": {"load": 40.0, "preprocess": 40.0, "vision_encode": 10.0, "prefill": 140.0},
         "drafter": {"load": 3.0, "preprocess": 3.0, "vision_encode": 9.0, "prefill": 22.0}}
PROMPT, FRAMES = {"target": 4630, "drafter": 636}, {"target": 8, "drafter": 1}


def _rows(run_id, decode, verify, shared: bool, phase=PHASE, samples=("s0", "s1")):
    def keep(role, stage, sh):
        return sh is False or (shared and stage not in schema.CPU_STAGES and stage != "verify")

    def duration(role, stage, sh, ms):
        return ms * (2.0 if sh else 1.0)  # a shared-GPU factor of 2 on every GPU row

    return pd.DataFrame(stage_rows(run_id, list(samples), PROMPT, FRAMES, phase, decode, verify, 4, keep, duration))


def _set(serving_decode_t=7.7, serving_verify=None):
    stage = _rows("fp16-graphs-alone-none-f8", {"target": 7.0, "drafter": 6.5}, {1: 10.0, 8: 11.0, 16: 12.0}, True)
    phase = {r: {**v, "load": v["load"] * 3} for r, v in PHASE.items()}  # CPU rows differ: never rescaled
    serving = _rows("fp16-graphs-alone-serving-f8", {"target": serving_decode_t, "drafter": 7.15},
                    serving_verify or {1: 11.0, 8: 12.1}, False, phase=phase)
    meta = {"runs": {"fp16-graphs-alone-none-f8": {"placement": "alone"},
                     "fp16-graphs-alone-serving-f8": {"harness": "serving_workers",
                                                      "harness_of": ["fp16-graphs-alone-none-f8"]}}}
    return pd.concat([stage, serving], ignore_index=True), meta


def test_factors_hand_computed():
    st, meta = _set()
    assert serving_runs(meta) == {"fp16-graphs-alone-serving-f8": ["fp16-graphs-alone-none-f8"]}
    f = harness_factors(st, meta)
    assert f[(f.role == "target") & (f.stage == "decode_step")]["factor"].item() == pytest.approx(1.1)
    assert f[(f.role == "drafter") & (f.stage == "decode_step")]["factor"].item() == pytest.approx(1.1)
    ver = f[(f.role == "target") & (f.stage == "verify")].set_index("gamma")
    assert ver.loc[1.0, "factor"] == pytest.approx(1.1) and ver.loc[8.0, "factor"] == pytest.approx(1.1)
    assert ver.loc[16.0, "gamma_from"] == "pooled" and ver.loc[16.0, "factor"] == pytest.approx(1.1)
    assert set(f["stage"]) == {"decode_step", "verify"}  # only the serving loop's passes are rescaled
    assert set(factor_summary(f)) == {"target/decode_step", "drafter/decode_step", "target/verify"}


def test_apply_rescales_alone_and_shared_rows_and_drops_serving_rows():
    st, meta = _set()
    rows, factors = apply_serving_harness(st, meta)
    assert not rows["run_id"].str.contains("serving").any()
    t = rows[(rows.role == "target") & (rows.stage == "decode_step")]
    assert t[t.placement == "alone"]["duration_ms"].tolist() == pytest.approx([7.7] * 8)
    assert t[t.placement == "shared_gpu"]["duration_ms"].tolist() == pytest.approx([15.4] * 8)  # factor 2 kept
    v16 = rows[(rows.stage == "verify") & (rows.gamma == 16)]["duration_ms"]
    assert v16.tolist() == pytest.approx([13.2, 13.2])
    load = rows[rows.stage == "load"]["duration_ms"]
    assert load.tolist() == pytest.approx(st[(st.stage == "load") & ~st.run_id.str.contains("serving")]["duration_ms"].tolist())


def test_no_serving_runs_is_the_identity():
    st, meta = _set()
    st = st[~st.run_id.str.contains("serving")]
    rows, factors = apply_serving_harness(st, {"runs": {}})
    assert rows is st and factors.empty


def test_traceset_applies_it_at_load(tmp_path):
    st, meta = _set(serving_decode_t=8.4)
    schema.write_table(st, tmp_path / "stage_timings.parquet", schema.STAGE_TIMINGS_FILE)
    schema.write_metadata(tmp_path, meta["runs"])
    ts = TraceSet.load(tmp_path)
    assert np.median(ts.durations_ms("target", "decode_step")) == pytest.approx(8.4)
    assert factor_summary(ts.serving_factors)["target/decode_step"] == pytest.approx(1.2)
    again = TraceSet.from_frames(ts.stage_timings, None, ts.metadata)  # idempotent: serving rows are gone
    assert np.median(again.durations_ms("target", "decode_step")) == pytest.approx(8.4)


def test_serving_loop_gap_is_the_pooled_median_of_the_serving_runs():
    from egpt_sim.traces.harness import serving_gap_ms

    st, meta = _set()
    runs = dict(meta["runs"])
    runs["fp16-graphs-alone-serving-f8"] = {**runs["fp16-graphs-alone-serving-f8"],
                                           "serving_loop_gaps_ms": {"target": [0.1, 0.2, 0.9], "drafter": [0.3]}}
    runs["b-serving"] = {"harness": "serving_workers", "harness_of": [], "serving_loop_gaps_ms": {"target": [0.25]}}
    meta = {"runs": runs}
    assert serving_gap_ms(meta) == pytest.approx({"target": 0.225, "drafter": 0.3})
    assert serving_gap_ms({"runs": {"x": {"serving_loop_gaps_ms": {"target": [5.0]}}}}) == {}  # not a serving run
    ts = TraceSet.from_frames(st, None, meta)
    assert ts.pass_gap_ms == pytest.approx({"target": 0.225, "drafter": 0.3})
    del runs["fp16-graphs-alone-serving-f8"]["serving_loop_gaps_ms"]  # the target's only: the drafter takes it
    assert TraceSet.from_frames(st, None, {"runs": runs}).pass_gap_ms == pytest.approx({"target": 0.25, "drafter": 0.25})


def test_without_loop_gaps_keeps_everything_else():
    from egpt_sim.traces.harness import serving_gap_ms, without_loop_gaps

    meta = {"label": "x", "runs": {"s": {"harness": "serving_workers", "harness_of": ["a"],
                                         "serving_loop_gaps_ms": {"target": [0.2]}}, "a": {"placement": "alone"}}}
    out = without_loop_gaps(meta)
    assert serving_gap_ms(out) == {} and serving_gap_ms(meta) == {"target": 0.2}
    assert out["label"] == "x" and out["runs"]["s"]["harness_of"] == ["a"] and out["runs"]["a"] == {"placement": "alone"}


def test_target_load_takes_the_reference_requests_dispatch():
    """The executor's load span holds the dispatch to the worker: with the reference requests'
    loads recorded (median 52 ms against the stage run's 40) every target load row of the named
    stage runs scales by 1.3 — CPU rows of the serving protocol (load x 3 here) still set nothing —
    and the drafter's, with no reference, stays as measured."""
    st, meta = _set()
    meta["runs"]["fp16-graphs-alone-serving-f8"]["serving_reference_stage_ms"] = {
        "target": {"load": [50.0, 52.0, 60.0], "preprocess": [90.0]}}
    f = harness_factors(st, meta)
    load = f[f.stage == "load"]
    assert load["role"].tolist() == ["target"] and load["factor"].item() == pytest.approx(1.3)
    assert factor_summary(f)["target/load"] == pytest.approx(1.3) and "target/preprocess" not in factor_summary(f)
    rows, _ = apply_serving_harness(st, meta)
    base = st[~st.run_id.str.contains("serving")]
    for role, scale in (("target", 1.3), ("drafter", 1.0)):
        want = base[(base.role == role) & (base.stage == "load")]["duration_ms"] * scale
        assert rows[(rows.role == role) & (rows.stage == "load")]["duration_ms"].tolist() == pytest.approx(want.tolist())
    pre = rows[rows.stage == "preprocess"]["duration_ms"].tolist()
    assert pre == pytest.approx(base[base.stage == "preprocess"]["duration_ms"].tolist())


def test_target_decode_takes_the_reference_requests_steps_over_the_serving_protocol():
    """The reference requests' decode steps (median 8.4 ms against the stage run's 7.0) replace the
    serving protocol's factor (7.7 / 7.0 = 1.1) for the target, alone and beside a peer (the shared
    factor of 2 kept); the drafter, with no reference, keeps the serving factor, and verify too."""
    st, meta = _set()
    meta["runs"]["fp16-graphs-alone-serving-f8"]["serving_reference_stage_ms"] = {
        "target": {"decode_step": [8.0, 8.4, 9.0]}}
    f = harness_factors(st, meta)
    dec = f[(f.role == "target") & (f.stage == "decode_step")]
    assert len(dec) == 1 and dec["factor"].item() == pytest.approx(1.2) and dec["n_serving"].item() == 3
    assert factor_summary(f)["drafter/decode_step"] == pytest.approx(1.1)
    assert factor_summary(f)["target/verify"] == pytest.approx(1.1)
    rows, _ = apply_serving_harness(st, meta)
    t = rows[(rows.role == "target") & (rows.stage == "decode_step")]
    assert t[t.placement == "alone"]["duration_ms"].tolist() == pytest.approx([8.4] * 8)
    assert t[t.placement == "shared_gpu"]["duration_ms"].tolist() == pytest.approx([16.8] * 8)
    d = rows[(rows.role == "drafter") & (rows.stage == "decode_step") & (rows.placement == "alone")]
    assert d["duration_ms"].tolist() == pytest.approx([7.15] * len(d))
