"""The CPU lane (egpt_sim.traces.contention.CpuLane): serial (drafter first) vs overlapping CPU
stages, fitted from concurrent runs recorded with cpu_stages="overlap", hand-computed times,
and the SimPy model and the fast engine agreeing on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.fast import simulate_fast
from egpt_sim.sim import closed_form as C
from egpt_sim.sim.rules import cpu_lane_for
from egpt_sim.sim.runner import draw_bank

TARGET = (40.0, 32.0, 24.0, 512.0)   # load, preprocess, vision_encode, prefill (ms)
DRAFTER = (2.0, 4.0, 4.0, 56.0)
LANE = {("target", "load"): 1.5, ("target", "preprocess"): 1.25, ("drafter", "load"): 2.0,
        ("drafter", "preprocess"): 0.75}


def _with_overlap_run(ts: E.TraceSet, factors=LANE, cpu_stages="overlap", concurrency="streams") -> E.TraceSet:
    """``ts`` plus a concurrent run whose CPU rows took ``factor x`` the alone time, recorded
    with ``cpu_stages`` and interleaved with the alone run."""
    st = ts.stage_timings
    alone_run = str(st["run_id"].iloc[0])
    cpu = st[(st["placement"] == "alone") & st["stage"].isin(["load", "preprocess"])].copy()
    cpu["run_id"], cpu["placement"], cpu["concurrency"] = "lane-run", "shared_gpu", concurrency
    cpu["duration_ms"] = [ms * factors[(r, s)] for r, s, ms in zip(cpu["role"], cpu["stage"], cpu["duration_ms"])]
    cpu["peer_activity"] = np.where(cpu["stage"] == "load", "preprocess", "load")
    cpu["overlap_frac"], cpu["peer_busy"] = 0.5, True
    meta = {**ts.metadata, "runs": {**ts.metadata["runs"], "lane-run": {
        "source": "synthetic", "cpu_stages": cpu_stages, "interleaved_with": [alone_run, "lane-run"]}}}
    return E.TraceSet.from_frames(pd.concat([st, cpu], ignore_index=True), ts.acceptance, meta, "<lane>")


@pytest.fixture(scope="module")
def lane_traces():
    base = C.constant_trace_set(TARGET, DRAFTER, target_decode_ms=32.0, drafter_decode_ms=16.0,
                                acceptance_alpha=0.5, peer_factors={("target", "prefill", "prefill"): 1.5,
                                                                    ("drafter", "prefill", "prefill"): 2.0})
    return _with_overlap_run(base)


def test_lane_factors_are_hand_computed_ratios_and_never_below_one(lane_traces):
    lane = lane_traces.cpu_lane("shared_gpu", "streams")
    assert lane.mode == "overlap"
    assert lane.factor("target", "load") == pytest.approx(1.5)
    assert lane.factor("target", "preprocess") == pytest.approx(1.25)
    assert lane.factor("drafter", "load") == pytest.approx(2.0)
    assert lane.factor("drafter", "preprocess") == 1.0  # measured 0.75: a peer cannot speed a CPU stage up
    assert "0.75" in lane.factors[("drafter", "preprocess")].note
    assert lane.factor("target", "prefill") == 1.0  # GPU stages are the contention model's, not the lane's
    assert "target load x1.50" in lane.describe()


def test_serial_when_no_run_recorded_overlapping_cpu_stages():
    ts = _with_overlap_run(C.constant_trace_set(TARGET, DRAFTER, acceptance_alpha=0.5), cpu_stages="serial")
    assert ts.cpu_lane("shared_gpu", "streams").mode == "serial"
    cfg = E.SimConfig(strategy="prefill_then_verify", acceptance=0.5, n_requests=4)
    assert cpu_lane_for(cfg, ts).mode == "serial"
    forced = cpu_lane_for(cfg.replace(cpu_lane="overlap"), ts)
    assert forced.mode == "overlap" and forced.factor("target", "load") == 1.0 and "assumed 1" in forced.source
    with pytest.raises(ValueError, match="cpu_lane"):
        E.SimConfig(cpu_lane="parallel")


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_time_to_first_token_on_each_lane(lane_traces, engine):
    """No GPU contention: the target's prefill ends after its own CPU stages x the lane's
    factors (overlap), or after the drafter's CPU stages and then its own (serial)."""
    run = E.simulate if engine == "simpy" else simulate_fast
    cfg = E.SimConfig(strategy="prefill_then_verify", output_tokens=4, acceptance=0.0, n_requests=3,
                      contention="none", contention_concurrency="streams")
    gpu = TARGET[2] + TARGET[3]
    overlap = run(cfg, lane_traces).requests["ttft_ms"]
    assert np.allclose(overlap, TARGET[0] * 1.5 + TARGET[1] * 1.25 + gpu)
    serial = run(cfg.replace(cpu_lane="serial"), lane_traces).requests["ttft_ms"]
    assert np.allclose(serial, DRAFTER[0] + DRAFTER[1] + TARGET[0] + TARGET[1] + gpu)
    base = run(cfg.replace(strategy="target_only", acceptance=None), lane_traces).requests["ttft_ms"]
    assert np.allclose(base, sum(TARGET))  # one prefill phase: no lane at all
    summary = run(cfg, lane_traces).summary()
    assert summary["cpu_lane_model"].startswith("overlap")


@pytest.mark.parametrize("strategy", ["prefill_then_verify", "adaptive_budget", "parallel_sd"])
@pytest.mark.parametrize("n_gpus", [1, 2])
def test_engines_agree_on_an_overlapping_lane(lane_traces, strategy, n_gpus):
    cfg = E.SimConfig(strategy=strategy, n_gpus=n_gpus, output_tokens=24, gamma=4, acceptance=0.6,
                      n_requests=40, seed=3, contention_concurrency="streams", contention_missing="assume:1.0")
    assert cpu_lane_for(cfg, lane_traces).mode == ("overlap" if n_gpus == 1 else "serial")
    bank = draw_bank(cfg, lane_traces)  # the same draws for both engines
    a = E.simulate(cfg, lane_traces, bank=bank).requests
    b = simulate_fast(cfg, lane_traces, bank=bank).requests
    cols = ["latency_ms", "ttft_ms", "drafted_tokens", "accepted_tokens", "verify_passes", "target_passes"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True),
                                  check_dtype=False, rtol=1e-9, atol=1e-6)
