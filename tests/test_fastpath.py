"""The vectorised fast path agrees with the SimPy reference model on the same draws.

Per request: latency / ttft / prefill ends / baseline / speedup to 1e-6 ms, every
counter exactly, for random scenarios over strategies x GPU counts x lengths x gammas x
acceptance sources x contention scales x drafter speeds (and the corners: no CPU stages,
no contention, lookahead, a drafter slower than the target, both fast-path engines).
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import egpt_sim as E
from egpt_sim.sim.draws import DrawBank
from egpt_sim.fast import (
    FAST_STRATEGIES,
    run_grid,
    simulate_arrays,
    simulate_fast,
    simulate_many,
    summarize_arrays,
)
from egpt_sim.sim.runner import REQUEST_COLUMNS, summarize

TRACES = "example/seed_calibrated"
FLOAT_COLS = ("latency_ms", "ttft_ms", "target_prefill_end_ms", "drafter_prefill_end_ms",
              "baseline_latency_ms", "speedup")
INT_COLS = ("drafted_tokens", "window_drafts", "wasted_drafts", "accepted_tokens",
            "window_accepted", "verify_passes", "target_passes")
CURVE = (0.9, 0.6, 0.4)
ACCEPTANCE = (0.0, 0.3, 0.8, 1.0, CURVE, "trace")

GRID = {
    "strategy": E.STRATEGY_NAMES,
    "n_gpus": (1, 2, 4),
    "output_tokens": (1, 2, 5, 20, 60),
    "gamma": (1, 3, 8, 16),
    "acceptance": ACCEPTANCE,
    "contention_scale": (0.0, 1.0, 2.0),
    "drafter_speed": (0.5, 1.0, 3.0),
    "pass_gap_ms": (None, 0.0, 0.4, 5.0),  # host phase before each pass (rules.pass_phases_ms)
}


@pytest.fixture(scope="module")
def traces():
    return E.load_traces(TRACES)


_BANKS: dict = {}


def bank_for(cfg: E.SimConfig, traces) -> DrawBank:
    from egpt_sim.sim.runner import pass_gaps_ms

    key = (cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages)
    if (key, cfg.pass_gap_ms) not in _BANKS:
        _BANKS[key, cfg.pass_gap_ms] = DrawBank(traces, *key, pass_gaps_ms(cfg, traces))
    return _BANKS[key, cfg.pass_gap_ms]


def assert_same(cfg: E.SimConfig, traces, aggregate: bool = True, got=None) -> None:
    """SimPy vs fast path on the same bank (``got``: precomputed fast-path columns)."""
    bank = bank_for(cfg, traces)
    ref = E.simulate(cfg, traces, bank=bank).requests
    if got is None:
        got = simulate_fast(cfg, traces, bank=bank, aggregate=aggregate).requests
        assert list(got.columns) == list(REQUEST_COLUMNS)
        for c in ("request_id", "strategy", "n_gpus", "output_tokens", "gamma", "acceptance"):
            assert (ref[c].to_numpy() == got[c].to_numpy()).all(), c
    else:
        got = {c: np.asarray(v) for c, v in got.items()}
    for c in FLOAT_COLS:
        a, b = ref[c].to_numpy(float), np.asarray(got[c], dtype=float)
        same = (np.abs(a - b) <= 1e-6) | (np.isnan(a) & np.isnan(b))
        assert same.all(), f"{c} differs for {cfg}: requests {np.flatnonzero(~same)[:5]}, simpy {a[~same][:3]}, fast {b[~same][:3]}"
    for c in INT_COLS:
        a, b = ref[c].to_numpy(), np.asarray(got[c])
        assert (a == b).all(), f"{c} differs for {cfg}: requests {np.flatnonzero(a != b)[:5]}, simpy {a[a != b][:5]}, fast {b[a != b][:5]}"


def random_configs(n: int, seed: int, n_requests: int = 20) -> list[E.SimConfig]:
    rng = random.Random(seed)
    return [
        E.SimConfig(n_requests=n_requests, seed=rng.randrange(2), **{k: rng.choice(v) for k, v in GRID.items()})
        for _ in range(n)
    ]


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("chunk", range(6))
def test_random_grid_matches_simpy(traces, chunk):
    """300 random combos of the grid (50 per chunk), 20 requests each."""
    for cfg in random_configs(50, seed=1000 + chunk):
        assert_same(cfg, traces)


@pytest.mark.parametrize("strategy", E.STRATEGY_NAMES)
@pytest.mark.parametrize("n_gpus", (1, 2))
def test_every_strategy_and_source(traces, strategy, n_gpus):
    for acc in ACCEPTANCE:
        assert_same(E.SimConfig(strategy=strategy, n_gpus=n_gpus, output_tokens=20, gamma=8,
                                acceptance=acc, n_requests=20), traces)


def test_corners_match_simpy(traces):
    """No CPU stages, no contention, lookahead 1 and 3, a drafter slower than the target
    (its prefill outlives the target's), strong contention, gamma beyond N."""
    rng = random.Random(7)
    for _ in range(80):
        cfg = E.SimConfig(
            strategy=rng.choice(E.STRATEGY_NAMES), n_gpus=rng.choice((1, 2)),
            output_tokens=rng.choice((1, 2, 3, 4, 9, 33)), gamma=rng.choice((1, 2, 5, 16, 40)),
            acceptance=rng.choice(ACCEPTANCE + (0.95,)), contention_scale=rng.choice((0.0, 1.0, 5.0)),
            drafter_speed=rng.choice((0.05, 0.1, 0.3, 1.0, 10.0)), include_cpu_stages=rng.choice((True, False)),
            lookahead_blocks=rng.choice((1, 2, 3)), contention=rng.choice(("fitted", "none")),
            n_requests=12, seed=rng.randrange(3),
        )
        assert_same(cfg, traces)


def test_plain_event_loop_matches_simpy(traces):
    """The window strategies without the per-pass aggregation (phase 1 only)."""
    cfgs = [c for c in random_configs(120, seed=99)
            if c.strategy in ("prefill_then_verify", "parallel_sd", "adaptive_budget")]
    for cfg in cfgs[:40]:
        assert_same(cfg, traces, aggregate=False)


def test_stacked_scenarios_match_simpy(traces):
    """simulate_many stacks scenarios of one strategy / placement / length into one
    engine call (per-row parameters): each must still equal its own SimPy run."""
    rng = random.Random(11)
    for speed, cpu in ((1.0, True), (0.5, False)):
        cfgs = [E.SimConfig(strategy=rng.choice(E.STRATEGY_NAMES), n_gpus=rng.choice((1, 2)),
                            output_tokens=rng.choice((3, 20)), gamma=rng.choice((1, 3, 8, 16)),
                            acceptance=rng.choice(ACCEPTANCE), contention_scale=rng.choice((0.0, 1.0, 2.0)),
                            lookahead_blocks=rng.choice((1, 2)), contention=rng.choice(("fitted", "none")),
                            drafter_speed=speed, include_cpu_stages=cpu, n_requests=15)
                for _ in range(40)]
        outs = simulate_many(cfgs, traces, bank_for(cfgs[0], traces), max_batch=8)
        for cfg, out in zip(cfgs, outs):
            assert_same(cfg, traces, got=out)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    strategy=st.sampled_from(E.STRATEGY_NAMES),
    n_gpus=st.sampled_from((1, 2)),
    output_tokens=st.integers(1, 40),
    gamma=st.integers(1, 12),
    acceptance=st.one_of(st.floats(0.0, 1.0), st.just("trace"),
                         st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).map(tuple)),
    contention_scale=st.floats(0.0, 3.0),
    drafter_speed=st.sampled_from((0.25, 0.5, 1.0, 2.0, 4.0)),
    lookahead_blocks=st.integers(1, 3),
)
def test_hypothesis_matches_simpy(traces, strategy, n_gpus, output_tokens, gamma, acceptance,
                                  contention_scale, drafter_speed, lookahead_blocks):
    cfg = E.SimConfig(strategy=strategy, n_gpus=n_gpus, output_tokens=output_tokens, gamma=gamma,
                      acceptance=acceptance, contention_scale=contention_scale,
                      drafter_speed=drafter_speed, lookahead_blocks=lookahead_blocks, n_requests=8)
    assert_same(cfg, traces)


# --------------------------------------------------------------------------- API


def test_frame_and_summary_identical_shape(traces):
    cfg = E.SimConfig(strategy="parallel_sd", n_gpus=1, output_tokens=30, acceptance=0.6, n_requests=25)
    bank = bank_for(cfg, traces)
    ref = E.simulate(cfg, traces, bank=bank)
    got = simulate_fast(cfg, traces, bank=bank)
    pd.testing.assert_frame_equal(ref.requests, got.requests, check_exact=False, rtol=0, atol=1e-6)
    assert got.timeline.empty and list(got.timeline.columns) == list(ref.timeline.columns)
    assert got.provenance == ref.provenance and got.config == cfg
    s_ref, s_got = ref.summary(), got.summary()
    for k, v in s_ref.items():
        assert s_got[k] == pytest.approx(v, rel=1e-12, abs=1e-9) if isinstance(v, float) else s_got[k] == v
    arr = simulate_arrays(cfg, traces, bank)
    for k, v in summarize(ref.requests).items():  # numbers, and the time_source label
        assert summarize_arrays(arr)[k] == (v if isinstance(v, str) else pytest.approx(v, rel=1e-12, abs=1e-9))


def test_default_bank_and_mismatch(traces):
    cfg = E.SimConfig(strategy="serial_sd", output_tokens=10, n_requests=5)
    pd.testing.assert_frame_equal(E.simulate(cfg, traces).requests, simulate_fast(cfg, traces).requests,
                                  check_exact=False, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="DrawBank"):
        simulate_fast(cfg.replace(n_requests=6), traces, bank=DrawBank(traces, 0, 5))
    with pytest.raises(ValueError, match="timeline"):
        simulate_fast(cfg, traces, timeline=True)


def test_all_strategies_vectorised():
    assert set(FAST_STRATEGIES) == set(E.STRATEGY_NAMES)


def test_run_grid_inline_and_pool_match_simpy(traces):
    cfgs = [E.SimConfig(strategy=s, n_gpus=g, output_tokens=12, acceptance=a, n_requests=15)
            for s in E.STRATEGY_NAMES for g in (1, 2) for a in (0.3, "trace")]
    fast = run_grid(cfgs, TRACES, workers=1)
    ref = run_grid(cfgs, TRACES, workers=1, use_fast=False)
    pool = run_grid(cfgs[:6], TRACES, workers=2)
    assert fast.attrs["n_fast"] == len(cfgs) and fast.attrs["n_simpy"] == 0
    assert ref.attrs["n_simpy"] == len(cfgs)
    assert fast.attrs["simulated_requests"] == 15 * len(cfgs)
    assert list(fast["strategy"]) == [c.strategy for c in cfgs]
    num = ["latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "ttft_mean_ms", "baseline_mean_ms",
           "speedup_of_means", "speedup_median", "accepted_mean_tokens", "window_drafts_mean_tokens",
           "window_accepted_mean_tokens", "drafted_mean_tokens", "verify_passes_mean"]
    np.testing.assert_allclose(fast[num].to_numpy(float), ref[num].to_numpy(float), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(pool[num].to_numpy(float), fast[num].to_numpy(float)[:6], rtol=0, atol=0)
    with pytest.raises(ValueError):
        run_grid([], TRACES)


# --------------------------------------------------------------------------- contention by peer activity


def _same_on(traces, cfg: E.SimConfig, aggregate: bool = True) -> None:
    bank = DrawBank(traces, cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages)
    ref = E.simulate(cfg, traces, bank=bank).requests
    got = simulate_fast(cfg, traces, bank=bank, aggregate=aggregate).requests
    for c in FLOAT_COLS:
        a, b = ref[c].to_numpy(float), got[c].to_numpy(float)
        same = (np.abs(a - b) <= 1e-6) | (np.isnan(a) & np.isnan(b))
        assert same.all(), f"{c} differs for {cfg}: simpy {a[~same][:3]}, fast {b[~same][:3]}"
    for c in INT_COLS:
        assert (ref[c].to_numpy() == got[c].to_numpy()).all(), f"{c} differs for {cfg}"


@pytest.mark.parametrize("chunk", range(2))
def test_peer_dependent_and_host_contention_match_simpy(peer_traces, chunk):
    """Factors that depend on what the peer does (one GPU) and host contention (two GPUs as
    threads): the fast path's rate tables equal gpu.contended_rate on the same draws."""
    rng = random.Random(300 + chunk)
    for _ in range(30):
        cfg = E.SimConfig(
            strategy=rng.choice(("prefill_then_verify", "parallel_sd", "adaptive_budget", "serial_sd")),
            n_gpus=rng.choice((1, 2)), output_tokens=rng.choice((2, 5, 20, 45)), gamma=rng.choice((1, 3, 8, 16)),
            acceptance=rng.choice(ACCEPTANCE), contention_scale=rng.choice((0.0, 1.0, 2.0)),
            contention_missing=rng.choice(("pooled", "assume:1.0", "assume:1.7")),
            drafter_speed=rng.choice((0.5, 1.0, 3.0)), include_cpu_stages=rng.choice((True, False)),
            lookahead_blocks=rng.choice((1, 2)), n_requests=12, seed=rng.randrange(2))
        _same_on(peer_traces, cfg, aggregate=rng.random() < 0.8)


def test_host_contention_is_applied_on_two_gpus(peer_traces):
    """Sanity of the case above: host contention makes two-GPU parallel_sd slower than with
    host contention assumed away, on the same draws."""
    cfg = E.SimConfig(strategy="parallel_sd", n_gpus=2, output_tokens=30, acceptance=0.6, n_requests=20)
    with_host = simulate_fast(cfg, peer_traces).requests["latency_ms"]
    no_host = simulate_fast(cfg.replace(contention_concurrency="processes"), peer_traces).requests["latency_ms"]
    assert (with_host >= no_host - 1e-9).all() and with_host.mean() > 1.02 * no_host.mean()


def test_inferred_peer_activity_set_matches_simpy():
    """h100/fp16: schema-1.0 rows with peer activity inferred from start_ms (factors below 1
    kept), per-sample replay of measured rows."""
    ts = E.load_traces("h100/fp16")
    rng = random.Random(17)
    for _ in range(24):
        cfg = E.SimConfig(
            strategy=rng.choice(E.STRATEGY_NAMES), n_gpus=rng.choice((1, 2)),
            output_tokens=rng.choice((1, 3, 17, 40)), gamma=rng.choice((2, 8, 16)),
            acceptance=rng.choice((0.0, 0.5, 0.9, 1.0, CURVE)), drafter_speed=rng.choice((1.0, 2.0)),
            n_requests=10, seed=rng.randrange(3))
        _same_on(ts, cfg)


@pytest.mark.parametrize("strategy", E.STRATEGY_NAMES)
@pytest.mark.parametrize("n_gpus", (1, 2))
def test_serving_loop_gap_matches_simpy_and_adds_exactly(traces, strategy, n_gpus):
    """A host gap before every pass (``pass_gap_ms``) is drawn once, in the bank: both engines
    agree, and target_only grows by exactly (N - 1) gaps (one per pass after the prefill)."""
    for gap in (0.0, 0.25, 3.0):
        assert_same(E.SimConfig(strategy=strategy, n_gpus=n_gpus, output_tokens=20, gamma=8, acceptance=0.6,
                                n_requests=15, pass_gap_ms=gap), traces)
    base, gapped = (E.simulate(E.SimConfig(strategy="target_only", output_tokens=20, n_requests=15,
                                           pass_gap_ms=g), traces).requests["latency_ms"] for g in (0.0, 0.5))
    assert np.allclose(gapped - base, 19 * 0.5)


def test_per_pass_loop_carries_a_draft_step_over_in_its_host_phase(traces, monkeypatch):
    """Phase 2 (the per-pass loop) with host phases: a parallel_sd target pass can end while
    the drafter is in a draft step's host gap or in its GPU work; both carry over and match SimPy."""
    from egpt_sim.fast import window

    seen = {"host": 0, "gpu": 0}
    carry = window._Window.carry_step_over

    def spy(self, B, infl, *args):
        carry(self, B, infl, *args)
        seen["host"] += int(self.dhost[B].sum())
        seen["gpu"] += int((infl & ~self.dhost[B]).sum())

    monkeypatch.setattr(window._Window, "carry_step_over", spy)
    for gap in (0.4, 5.0):
        assert_same(E.SimConfig(strategy="parallel_sd", n_gpus=1, output_tokens=60, gamma=8, acceptance=0.8,
                                n_requests=30, seed=2, pass_gap_ms=gap), traces, aggregate=True)
    assert seen["host"] > 0 and seen["gpu"] > 0, seen


def test_pass_gap_draws_and_trace_default(traces):
    from egpt_sim.sim.runner import draw_bank

    cfg0, cfg1 = E.SimConfig(n_requests=5), E.SimConfig(n_requests=5, pass_gap_ms=0.2)
    b0, b1 = draw_bank(cfg0, traces), draw_bank(cfg1, traces)
    assert np.allclose(b1.ensure("target_decode", 10) - b0.ensure("target_decode", 10), 0.2)
    assert np.allclose(b1.ensure("drafter_decode", 10) - b0.ensure("drafter_decode", 10), 0.2)
    assert np.allclose(b1.verify_table(8) - b0.verify_table(8), 0.2)
    assert traces.pass_gap_ms == {"target": 0.0, "drafter": 0.0}  # a set without serving-loop gaps
    with pytest.raises(ValueError, match="pass_gap_ms"):
        E.SimConfig(pass_gap_ms=-1.0)
