"""Core simulator behaviour: strategy ordering, paired speedups, determinism, config checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.sim import closed_form as C
from egpt_sim.sim.runner import REQUEST_COLUMNS, draw_bank

N_REQ = 60


def _run(traces, **cfg):
    return E.simulate(E.SimConfig(**({"n_requests": N_REQ} | cfg)), traces)


# --------------------------------------------------------------------------- strategy ordering


@pytest.mark.parametrize("gamma,N", [(4, 30), (8, 50), (16, 10)])
def test_two_gpus_alpha_1_prefill_then_verify_beats_target_only(example_traces, gamma, N):
    ptv = _run(example_traces, strategy="prefill_then_verify", n_gpus=2, acceptance=1.0, gamma=gamma, output_tokens=N)
    tgt = _run(example_traces, strategy="target_only", n_gpus=2, acceptance=1.0, gamma=gamma, output_tokens=N)
    r = ptv.requests
    assert (r["latency_ms"] < tgt.requests["latency_ms"]).all()
    assert (r["speedup"] > 1.0).all()
    assert (r["verify_passes"] == 1).all() and (r["accepted_tokens"] >= 2).all()
    # TTFT: the target's prefill after the drafter's CPU stages (one CPU lane, drafter
    # first); on its own GPU, drafting costs nothing else
    np.testing.assert_allclose(r["ttft_ms"], tgt.requests["ttft_ms"] + _drafter_cpu_ms(ptv, example_traces), rtol=1e-12)


def _drafter_cpu_ms(res, traces) -> np.ndarray:
    ph = draw_bank(res.config, traces).phase_ms["drafter"]
    return ph[:, 0] + ph[:, 1]


@pytest.mark.parametrize("strategy", ["prefill_then_verify", "adaptive_budget"])
def test_two_gpus_alpha_0_costs_only_the_cpu_lane(example_traces, strategy):
    """d1 always mismatches: no verify pass runs. prefill_then_verify pays exactly the
    drafter's CPU stages ahead of the target's; adaptive_budget never starts the drafter."""
    res = _run(example_traces, strategy=strategy, n_gpus=2, acceptance=0.0)
    r = res.requests
    tgt = _run(example_traces, strategy="target_only", n_gpus=2, acceptance=0.0).requests
    assert (r["verify_passes"] == 0).all() and (r["accepted_tokens"] == 0).all()
    if strategy == "adaptive_budget":
        pd.testing.assert_series_equal(r["latency_ms"], tgt["latency_ms"])
        assert (r["speedup"] == 1.0).all() and (r["drafted_tokens"] == 0).all()
    else:
        np.testing.assert_allclose(r["latency_ms"], tgt["latency_ms"] + _drafter_cpu_ms(res, example_traces), rtol=1e-12)


@pytest.mark.parametrize("strategy", ["prefill_then_verify", "parallel_sd", "adaptive_budget"])
@pytest.mark.parametrize("alpha", [0.0, 0.279, 1.0])
def test_one_gpu_drafting_is_never_free(example_traces, strategy, alpha):
    r = _run(example_traces, strategy=strategy, n_gpus=1, acceptance=alpha).requests
    tgt = _run(example_traces, strategy="target_only", n_gpus=1, acceptance=alpha).requests
    assert (r["ttft_ms"] >= tgt["ttft_ms"]).all()
    if strategy != "adaptive_budget":  # adaptive may keep the drafter off the GPU entirely
        assert (r["ttft_ms"] > tgt["ttft_ms"]).mean() > 0.9
    if alpha == 0.0:  # nothing to gain, contention to pay
        assert (r["latency_ms"] >= tgt["latency_ms"]).all()


def test_serial_sd_with_a_drafter_as_slow_as_the_target_is_slower(example_traces):
    speed = float(np.median(example_traces.decode_pool["drafter"]) / np.median(example_traces.decode_pool["target"]))
    assert speed < 1.0  # i.e. the drafter is slowed down to the target's decode speed
    r = _run(example_traces, strategy="serial_sd", n_gpus=2, acceptance=0.279, gamma=4, drafter_speed=speed).requests
    assert (r["speedup"] < 1.0).all()
    assert r["latency_ms"].mean() > 1.5 * r["baseline_latency_ms"].mean()


@pytest.mark.parametrize("n_gpus", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.279, 0.6, 0.9, 1.0, "trace"])
def test_adaptive_budget_is_never_much_worse_than_target_only(example_traces, n_gpus, alpha):
    for N in (2, 10, 50):
        res = _run(example_traces, strategy="adaptive_budget", n_gpus=n_gpus, acceptance=alpha, output_tokens=N,
                   gamma=8, n_requests=40)
        s = res.summary()
        assert s["speedup_of_means"] >= 0.98, (N, s["speedup_of_means"])
        if res.requests["drafted_tokens"].eq(0).all():  # budget 0: exactly target_only
            assert (res.requests["speedup"] == 1.0).all()


@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_adaptive_budget_does_not_draft_what_can_never_be_verified(example_traces, N):
    """Regression (fixed in f136b1a): the window budget ignored output_tokens, so on a shared
    GPU it drafted positions >= N that can never be verified (k <= N - 2)."""
    r = _run(example_traces, strategy="adaptive_budget", n_gpus=1, acceptance=0.9, output_tokens=N).requests
    assert (r["window_drafts"] <= max(1, N - 1)).all()
    if N == 2:  # no draft after d1 is useful, and d1 comes with the (CPU-overlapped) prefill
        assert r["baseline_latency_ms"].mean() / r["latency_ms"].mean() >= 0.995



def test_drafter_only_latency(constant_traces, constant_times):
    N = 12
    r = _run(constant_traces, strategy="drafter_only", n_gpus=2, output_tokens=N, acceptance=0.5).requests
    T_d = sum(constant_times["drafter_phase_ms"])
    assert (r["latency_ms"] == T_d + (N - 1) * constant_times["drafter_decode_ms"]).all()
    assert (r["ttft_ms"] == T_d).all() and (r["target_passes"] == 0).all()


# --------------------------------------------------------------------------- speedup / baseline


@pytest.mark.parametrize("strategy", ["serial_sd", "prefill_then_verify", "parallel_sd", "adaptive_budget",
                                      "drafter_only"])
@pytest.mark.parametrize("n_gpus", [1, 2])
def test_speedup_is_baseline_over_latency_on_the_same_draws(example_traces, strategy, n_gpus):
    res = _run(example_traces, strategy=strategy, n_gpus=n_gpus, acceptance=0.5, seed=9, n_requests=25)
    r = res.requests
    tgt = _run(example_traces, strategy="target_only", n_gpus=n_gpus, acceptance=0.5, seed=9, n_requests=25).requests
    pd.testing.assert_series_equal(r["baseline_latency_ms"], tgt["latency_ms"], check_names=False)
    np.testing.assert_array_equal(r["speedup"], r["baseline_latency_ms"] / r["latency_ms"])
    s = res.summary()
    assert s["speedup_of_means"] == pytest.approx(r["baseline_latency_ms"].mean() / r["latency_ms"].mean())
    assert s["speedup_median"] == pytest.approx(r["speedup"].median())
    assert s["n_requests"] == 25 and "seed-calibrated" in s["provenance"]


def test_result_frame_columns(example_traces):
    res = _run(example_traces, strategy="parallel_sd", acceptance=(0.8, 0.5), n_requests=3)
    assert tuple(res.requests.columns) == REQUEST_COLUMNS
    assert (res.requests["strategy"] == "parallel_sd").all() and (res.requests["acceptance"] == "curve").all()
    assert res.timeline.empty  # timeline only on request


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("strategy", ["parallel_sd", "adaptive_budget", "serial_sd"])
def test_same_seed_identical_frames(example_traces, strategy):
    cfg = E.SimConfig(strategy=strategy, n_requests=15, seed=123, acceptance="trace")
    a = E.simulate(cfg, example_traces, timeline=True, n_timeline_requests=15)
    b = E.simulate(cfg, example_traces, timeline=True, n_timeline_requests=15)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.timeline, b.timeline)
    c = E.simulate(cfg.replace(seed=124), example_traces)
    assert not np.array_equal(a.requests["latency_ms"], c.requests["latency_ms"])
    assert (a.requests["latency_ms"] != c.requests["latency_ms"]).mean() > 0.9


def test_requests_do_not_depend_on_batch_size(example_traces):
    cfg = E.SimConfig(strategy="parallel_sd", seed=5, acceptance=0.5)
    small = E.simulate(cfg.replace(n_requests=7), example_traces).requests
    big = E.simulate(cfg.replace(n_requests=30), example_traces).requests
    pd.testing.assert_frame_equal(small, big.iloc[:7])


def test_shared_draw_bank_gives_the_same_result(example_traces):
    from egpt_sim.sim.runner import draw_bank
    cfg = E.SimConfig(strategy="prefill_then_verify", n_requests=20, acceptance=0.7, seed=2)
    bank = draw_bank(cfg, example_traces)
    E.simulate(cfg.replace(strategy="serial_sd"), example_traces, bank=bank)  # uses (and extends) the bank
    pd.testing.assert_frame_equal(E.simulate(cfg, example_traces, bank=bank).requests,
                                  E.simulate(cfg, example_traces).requests)


# --------------------------------------------------------------------------- SimConfig


@pytest.mark.parametrize("kwargs", [
    {"strategy": "oracle"}, {"n_requests": 0}, {"acceptance": 1.5}, {"acceptance": -0.1},
    {"acceptance": float("nan")}, {"output_tokens": 0}, {"gamma": 0}, {"n_gpus": 0},
    {"contention": "magic"}, {"contention_scale": -1.0}, {"drafter_speed": 0.0}, {"lookahead_blocks": 0},
])
def test_simconfig_rejects_bad_values(kwargs):
    with pytest.raises(ValueError) as ei:
        E.SimConfig(**kwargs)
    assert next(iter(kwargs)) in str(ei.value)


def test_simconfig_unknown_field_is_type_error():
    with pytest.raises(TypeError):
        E.SimConfig(alpha=0.5)


def test_simconfig_is_frozen_and_list_acceptance_becomes_tuple():
    cfg = E.SimConfig(acceptance=[0.9, 0.5])
    assert cfg.acceptance == (0.9, 0.5) and cfg.acceptance_label == "curve"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gamma = 3  # type: ignore[misc]


@pytest.mark.parametrize("acceptance", ["1.5", "bogus", (0.5, 1.7), (), True, "-0.2"])
def test_simconfig_rejects_bad_acceptance_specs_early(acceptance):
    """Regression (fixed in f136b1a): string rates and curves were only checked in simulate()."""
    with pytest.raises(ValueError) as ei:
        E.SimConfig(acceptance=acceptance)
    assert "acceptance" in str(ei.value)


@pytest.mark.parametrize("acceptance", ["trace", "0.25", 0.25, 0, 1, (0.9, 0.5), [0.9, 0.5]])
def test_simconfig_accepts_good_acceptance_specs(example_traces, acceptance):
    cfg = E.SimConfig(acceptance=acceptance, n_requests=2, output_tokens=5)
    E.simulate(cfg, example_traces)


def test_one_gpu_fitted_contention_needs_shared_rows(constant_times):
    ts = C.constant_trace_set(**(constant_times | {"shared_factors": None}))
    with pytest.raises(E.TraceError) as ei:
        E.simulate(E.SimConfig(n_gpus=1, acceptance=0.5, n_requests=1), ts)
    assert "'placement'" in str(ei.value) and "\n" not in str(ei.value)
    # contention='none' and two GPUs do not need them
    E.simulate(E.SimConfig(n_gpus=1, contention="none", acceptance=0.5, n_requests=1), ts)
    E.simulate(E.SimConfig(n_gpus=2, acceptance=0.5, n_requests=1), ts)


def test_factorial_never_mutates_base():
    base = E.SimConfig(strategy="serial_sd", gamma=4, label="base")
    snapshot = dataclasses.asdict(base)
    grid = E.factorial(base, {"gamma": [2, 8], "n_gpus": [1, 2], "acceptance": [0.3, "trace"]})
    assert dataclasses.asdict(base) == snapshot
    assert len(grid) == 8
    assert {(c.gamma, c.n_gpus, c.acceptance) for c in grid} == {
        (g, n, a) for g in (2, 8) for n in (1, 2) for a in (0.3, "trace")}
    for c in grid:
        assert c.strategy == "serial_sd" and c.label == "base" and c is not base
    with pytest.raises(ValueError):
        E.factorial(base, {"alpha": [0.1]})
    with pytest.raises(ValueError):  # each combination is validated
        E.factorial(base, {"n_requests": [0]})
