"""adaptive_budget may choose not to draft: budget 0 is target_only, and the rule counts the
CPU lane, contention of the drafter on a shared GPU and the verify pass's overhead."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.sim import closed_form as C
from egpt_sim.fast import simulate_fast
from egpt_sim.fast.cache import _plan, _source
from egpt_sim.sim.rules import contention_for
from egpt_sim.traces import bundled_trace_sets

ALPHAS = (0.0, 0.3, 0.6, 0.9, 1.0)
Z = 3.0  # one-sided Monte-Carlo bound on the paired mean difference (see the test)


def _simulatable() -> list[tuple[str, int]]:
    """(set, GPU count) pairs a bundled set can simulate: a validation folder of one
    placement holds contended rows for its own GPU count only."""
    out = []
    for name in sorted(bundled_trace_sets()):
        try:
            ts = E.load_traces(name)
            ts.check_simulatable()
        except E.TraceError:
            continue
        placements = set(ts.ok_rows["placement"])
        for n_gpus in (1, 2):
            if n_gpus == 1 and "separate_gpu" in placements and "shared_gpu" not in placements:
                continue
            out.append((name, n_gpus))
    return out


def _budget(cfg, ts) -> int:
    return int(_plan(cfg, ts, _source(cfg, ts), contention_for(cfg, ts))["window_budget"])


@pytest.mark.parametrize("name,n_gpus", _simulatable())
def test_adaptive_budget_is_never_slower_than_target_only(name, n_gpus):
    """Every simulatable bundled set, alpha in {0, .3, .6, .9, 1}, 1 and 2 GPUs, 50 tokens.

    Tolerance: the paired differences d = adaptive - target_only (same draws) have Monte-Carlo
    standard error sd(d) / sqrt(n); the budget comes from *expected* latencies, so the
    simulated mean may exceed target_only's only by sampling noise: mean(d) <= 3 se (a
    one-sided 3-sigma bound, 0.13 % false alarms if the true difference were 0; it is 0
    exactly when the budget is 0)."""
    assert len(_simulatable()) >= 4  # fp16, 4bit, validation, example
    ts = E.load_traces(name)
    for alpha in ALPHAS:
        cfg = E.SimConfig(strategy="adaptive_budget", n_gpus=n_gpus, output_tokens=50, gamma=8,
                          acceptance=alpha, n_requests=600, seed=1)
        r = simulate_fast(cfg, ts).requests
        d = r["latency_ms"] - r["baseline_latency_ms"]
        se = d.std(ddof=1) / math.sqrt(len(d))
        assert d.mean() <= Z * se, (name, n_gpus, alpha, d.mean(), se)
        if _budget(cfg, ts) == 0:
            assert (d == 0).all() and (r["drafted_tokens"] == 0).all()
    # at alpha = 0 no draft can pay for the drafter: it is never started
    assert _budget(cfg.replace(acceptance=0.0), ts) == 0


def test_budget_zero_is_exactly_target_only(example_traces):
    cfg = E.SimConfig(strategy="adaptive_budget", n_gpus=1, output_tokens=20, acceptance=0.0, n_requests=6)
    assert _budget(cfg, example_traces) == 0
    res = E.simulate(cfg, example_traces, timeline=True, n_timeline_requests=6)
    base = E.simulate(cfg.replace(strategy="target_only"), example_traces)
    pd.testing.assert_series_equal(res.requests["latency_ms"], base.requests["latency_ms"])
    assert (res.requests["drafted_tokens"] == 0).all() and res.requests["drafter_prefill_end_ms"].isna().all()
    assert (res.timeline["actor"] == "target").all()  # the drafter never ran: no contention
    fast = simulate_fast(cfg, example_traces).requests
    pd.testing.assert_frame_equal(fast, res.requests, check_exact=False, rtol=0, atol=1e-9)


def test_verify_overhead_can_make_drafting_not_worth_it(constant_times):
    """Two GPUs, every draft accepted: worth it when a verify pass costs about a decode step,
    not when it costs far more than the decode steps it saves (V(k) - D > k D)."""
    cheap = C.constant_trace_set(**constant_times, acceptance_alpha=1.0)
    dear = C.constant_trace_set(**(constant_times | {"verify_ms_by_gamma": {1: 400.0, 16: 400.0}}),
                                acceptance_alpha=1.0, label="dear")
    cfg = E.SimConfig(strategy="adaptive_budget", n_gpus=2, gamma=4, output_tokens=30, acceptance=1.0, n_requests=3)
    assert _budget(cfg, cheap) == 4
    assert _budget(cfg, dear) == 0
    r = E.simulate(cfg, dear).requests
    assert (r["latency_ms"] == r["baseline_latency_ms"]).all()


def test_shared_gpu_contention_of_the_drafter_is_counted(constant_times):
    """A drafter prefill of 200 ms overlaps the target's GPU stages (which start at 76 ms,
    after both roles' CPU stages) and slows them x4 on one GPU: at alpha = 0.6 drafting
    pays on two GPUs but not on one."""
    heavy = {("target", "prefill"): 4.0, ("target", "vision_encode"): 4.0,
             ("drafter", "prefill"): 1.0, ("drafter", "decode_step"): 1.0}
    ts = C.constant_trace_set(**(constant_times | {"shared_factors": heavy, "drafter_phase_ms": (2.0, 2.0, 4.0, 200.0)}),
                              acceptance_alpha=0.5)
    cfg = E.SimConfig(strategy="adaptive_budget", gamma=8, output_tokens=40, acceptance=0.6, n_requests=200)
    assert _budget(cfg.replace(n_gpus=2), ts) > 0
    assert _budget(cfg.replace(n_gpus=1), ts) == 0
    one = simulate_fast(cfg.replace(n_gpus=1), ts).requests
    assert (one["latency_ms"] == one["baseline_latency_ms"]).all()
    ptv = simulate_fast(cfg.replace(n_gpus=1, strategy="prefill_then_verify"), ts).requests
    assert ptv["latency_ms"].mean() > ptv["baseline_latency_ms"].mean()  # drafting would have hurt


def test_budget_is_decided_at_request_start(example_traces):
    """One budget per scenario from expected quantities: the same cap for every request, and
    its expected latency is the lowest of all budgets (ties: the smaller budget)."""
    cfg = E.SimConfig(strategy="adaptive_budget", n_gpus=1, output_tokens=40, gamma=8, acceptance=0.9, n_requests=80)
    plan = _plan(cfg, example_traces, _source(cfg, example_traces), contention_for(cfg, example_traces))
    b, exp = plan["window_budget"], plan["expected_latency_ms"]
    assert 0 < b <= 8 and exp[b] == min(exp.values()) and exp[b] < exp[0]
    r = simulate_fast(cfg, example_traces).requests
    assert (r["window_drafts"] <= b).all() and r["window_drafts"].max() == b
    assert np.mean(r["latency_ms"]) == pytest.approx(exp[b], rel=0.02)  # expectation vs simulation


def test_fixed_budget_past_the_output_is_the_executors_window(example_traces):
    """A fixed budget b >= N (validation replays the executor's choice, made for a longer
    output) drafts as the executor does — up to position N, like prefill_then_verify at gamma =
    b — rather than being cut to N - 1 (which simulated one draft step fewer than was run)."""
    cfg = E.SimConfig(strategy="adaptive_budget", n_gpus=1, output_tokens=5, gamma=8, acceptance=0.9,
                      n_requests=40, seed=3, window_budget=8)
    assert _budget(cfg, example_traces) == 8
    ab = E.simulate(cfg, example_traces).requests
    ptv = E.simulate(cfg.replace(strategy="prefill_then_verify", window_budget=None), example_traces).requests
    cols = ["latency_ms", "drafted_tokens", "window_drafts", "accepted_tokens"]
    pd.testing.assert_frame_equal(ab[cols], ptv[cols])
    assert ab["window_drafts"].max() == 5
    pd.testing.assert_frame_equal(simulate_fast(cfg, example_traces).requests, ab, check_exact=False, rtol=0, atol=1e-9)


def test_planner_prices_passes_with_the_serving_loop_gap(example_traces):
    """planning_inputs sees each pass as the draws do: alone time + the host gap (pass_gap_ms)."""
    from egpt_sim.fast.cache import _source
    from egpt_sim.sim.budget import planning_inputs
    from egpt_sim.sim.rules import contention_for

    def plan(gap):
        cfg = E.SimConfig(strategy="adaptive_budget", output_tokens=20, gamma=8, pass_gap_ms=gap)
        return planning_inputs(cfg, example_traces, _source(cfg, example_traces), contention_for(cfg, example_traces))

    p0, p1 = plan(0.0), plan(0.5)
    for s0, s1 in zip(p0["samples"], p1["samples"]):
        assert s1["target_decode_ms"] - s0["target_decode_ms"] == pytest.approx(0.5)
        assert s1["drafter_step_ms"] == s0["drafter_step_ms"] and s1["drafter_gap_ms"] == 0.5
        np.testing.assert_allclose(np.asarray(s1["verify_ms"]) - np.asarray(s0["verify_ms"]), 0.5)
        assert s1["target_prefill_ms"] == s0["target_prefill_ms"]
    assert p1["expected_latency_ms"][0] > p0["expected_latency_ms"][0]  # 19 gaps more for b = 0


def test_planner_window_runs_a_draft_steps_gap_as_host_time_hand_computed():
    """Factor 2 for every GPU pair; target prefill 10 ms, drafter prefill 2 ms, draft steps of
    2 ms GPU work after a 1 ms host gap, b = 3. Drafter: prefill 4 ms wall (target +2), gap 1 ms
    at rate 1 while the target, seeing a draft step, still runs at 1/2 (+0.5), step 4 ms (+2),
    gap (+0.5), step (+2): 14 ms, the target 7 ms along, then 3 ms alone: prefill ends at 17 ms
    with d1 + 2 drafts (the gap charged as contended work would end it at 18 ms)."""
    from egpt_sim.sim.budget import expected_window

    plan = {"factor": lambda role, stage, peer: 2.0, "target_wait_ms": 0.0, "target_lane_load_ms": 0.0,
            "target_lane_preprocess_ms": 0.0, "target_vision_ms": 0.0, "target_prefill_ms": 10.0,
            "drafter_load_ms": 0.0, "drafter_preprocess_ms": 0.0, "drafter_vision_ms": 0.0,
            "drafter_prefill_ms": 2.0, "drafter_step_ms": 2.0, "drafter_gap_ms": 1.0}
    end_ms, drafts, left_ms = expected_window(plan, 3)
    assert end_ms == pytest.approx(17.0) and drafts == 3 and left_ms == 0.0
    # b = 4: a third gap ends at 15 ms, the target 7.5 along. A 9 ms prefill ends at 18 ms, in
    # the step's GPU work (1.5 of 2 done); a 7.25 ms one at 14.5 ms, in the gap (0.5 of 1 done)
    assert expected_window(plan | {"target_prefill_ms": 9.0}, 4) == pytest.approx((18.0, 3, 0.5))
    assert expected_window(plan | {"target_prefill_ms": 7.25}, 4) == pytest.approx((14.5, 3, 2.5))
