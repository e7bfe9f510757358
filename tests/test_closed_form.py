"""The SimPy model equals the closed forms of egpt_sim.sim.closed_form (fixed times, no contention)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.traces import acceptance, schema
from egpt_sim.sim import closed_form as C

Z = 4.5  # Monte-Carlo tolerance in standard errors


def _cf_kwargs(times: dict) -> dict:
    keys = ("target_phase_ms", "drafter_phase_ms", "target_decode_ms", "drafter_decode_ms", "verify_ms_by_gamma")
    return {k: times[k] for k in keys}


def _sim(traces, **cfg) -> pd.DataFrame:
    return E.simulate(E.SimConfig(**cfg), traces).requests


def _assert_mean(x: pd.Series, expected: float, what: str):
    se = float(x.std(ddof=1) / np.sqrt(len(x)))
    tol = Z * se + 1e-9 * abs(expected)
    assert abs(float(x.mean()) - expected) <= tol, f"{what}: sim {x.mean():.4f} vs closed form {expected:.4f} (se {se:.3g})"


# --------------------------------------------------------------------------- the closed forms themselves


def test_reexport_is_the_acceptance_function():
    assert C.expected_tokens_per_verify is acceptance.expected_tokens_per_verify
    assert C.expected_tokens_per_verify(1.0, 8) == 9
    assert C.expected_tokens_per_verify(0.0, 8) == 1
    assert C.expected_tokens_per_verify(0.5, 2) == pytest.approx(1.75)


def test_target_only_formula():
    assert C.target_only_latency_ms((1, 2, 3, 4), 5, 1) == 10
    assert C.target_only_latency_ms((1, 2, 3, 4), 5, 11) == 60
    assert C.target_only_latency_ms((1, 2, 3, 4), 5, 11, include_cpu_stages=False) == 57
    assert C.target_only_latency_ms(100.0, 5, 3) == 110
    with pytest.raises(ValueError):
        C.target_only_latency_ms(100.0, 5, 0)


@pytest.mark.parametrize("T_t,T_d,S,gamma,N,W", [
    (600, 60, 20, 8, 50, 8),     # window longer than gamma steps
    (600, 60, 100, 8, 50, 6),    # 540 / 100 = 5.4 -> d1 + 5 steps
    (600, 60, 90, 8, 50, 6),     # 540 / 90 = 6 exactly -> the 6th step ends AT T_t: late
    (600, 60, 100, 8, 4, 4),     # never drafts past position N
    (600, 700, 10, 8, 50, 0),    # drafter prefill slower than the target's
    (600, 600, 10, 8, 50, 1),    # tie of the prefills: d1 counts (k = 0 either way)
])
def test_window_drafts(T_t, T_d, S, gamma, N, W):
    assert C.window_drafts(T_t, T_d, S, gamma, N) == W
    assert C.prefill_then_verify_verified_drafts(T_t, T_d, S, gamma, N) == max(0, min(W - 1, gamma, N - 2))


def test_verify_interp_matches_trace_set(constant_traces, constant_times):
    V, D = constant_times["verify_ms_by_gamma"], constant_times["target_decode_ms"]
    for k in range(0, 20):
        assert C.verify_ms_interp(k, V, D) == pytest.approx(float(constant_traces.verify_median_ms(k)), abs=0)
    assert C.verify_ms_interp(3, V, D) == 27.0 and C.verify_ms_interp(0, V, D) == D
    assert C.verify_ms_interp(5, None, D) == D


def test_ptv_closed_form_limits(constant_times):
    kw = _cf_kwargs(constant_times)
    T_t, D = 612.0, 32.0  # the target's stages 1-4 (608 ms) after the drafter's CPU stages (4 ms)
    assert C.lane_target_phase_ms(constant_times["target_phase_ms"], constant_times["drafter_phase_ms"]) == T_t
    assert C.lane_target_phase_ms(constant_times["target_phase_ms"], constant_times["drafter_phase_ms"], False) == 536.0
    for N in (1, 2, 3, 20):
        assert C.prefill_then_verify_latency_ms(0.0, 8, N, **kw) == T_t + (N - 1) * D
    # alpha = 1: one pass over k = min(gamma, N - 2) drafts (W = gamma here) accepting all
    for N, gamma in ((20, 8), (20, 4), (5, 8)):
        k = min(gamma - 1, N - 2)
        V = C.verify_ms_interp(k, kw["verify_ms_by_gamma"], D)
        assert C.prefill_then_verify_latency_ms(1.0, gamma, N, **kw) == T_t + V + (N - 2 - k) * D
    # alpha in between is strictly between, and the survival argument agrees with alpha
    mid = C.prefill_then_verify_latency_ms(0.5, 8, 20, **kw)
    assert C.prefill_then_verify_latency_ms(1.0, 8, 20, **kw) < mid < C.prefill_then_verify_latency_ms(0.0, 8, 20, **kw)
    assert C.prefill_then_verify_latency_ms(None, 8, 20, survival=0.5 ** np.arange(10), **kw) == pytest.approx(mid)


def test_serial_closed_form_limits(constant_times):
    kw = _cf_kwargs(constant_times)
    T_d, T_t, D, S = 60.0, 608.0, 32.0, 20.0
    V = lambda w: C.verify_ms_interp(w, kw["verify_ms_by_gamma"], D)  # noqa: E731
    for gamma in (1, 3, 8):
        for N in (1, 2, 3, 17, 40):
            # alpha = 0: N - 2 rounds of w_c = min(gamma, N - c - 1) drafts for c = 1..N-2, last token by decode
            rounds = sum(min(gamma, N - c - 1) * S + V(min(gamma, N - c - 1)) for c in range(1, N - 1))
            exp0 = T_d + T_t + rounds + (D if N >= 2 else 0.0)
            assert C.serial_sd_latency_ms(0.0, gamma, N, **kw) == pytest.approx(exp0, rel=1e-12)
            # alpha = 1: each round commits w + 1 tokens
            c, t = 1, T_d + T_t
            while c < N:
                w = min(gamma, N - c - 1)
                t += (w * S + V(w)) if w else D
                c += w + 1
            assert C.serial_sd_latency_ms(1.0, gamma, N, **kw) == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("alpha,gamma", [(0.279, 4), (0.5, 3), (0.8, 8), (0.95, 5)])
def test_serial_dp_tends_to_leviathan(alpha, gamma):
    lev = C.serial_sd_tokens_per_verify(alpha, gamma)
    errs = [abs(C.serial_sd_expectations(alpha, gamma, N)["tokens_per_verify"] - lev) for N in (50, 400, 3000)]
    assert errs[2] < errs[0] and errs[2] < 2e-3 * lev
    e = C.serial_sd_expectations(alpha, gamma, 3000)
    # N - 1 tokens after prefill = accepted + one per target pass
    assert e["verify_accepted_tokens"] + e["target_passes"] == pytest.approx(2999, rel=1e-12)
    assert e["accepted_tokens"] == pytest.approx(e["verify_accepted_tokens"] + alpha)  # + d1


def test_serial_expectations_extremes():
    e0 = C.serial_sd_expectations(0.0, 4, 10)
    assert (e0["verify_passes"], e0["decode_passes"], e0["accepted_tokens"], e0["tokens_per_verify"]) == (8, 1, 0, 1)
    e1 = C.serial_sd_expectations(1.0, 4, 11)  # 10 tokens after prefill = 2 passes of 5
    assert (e1["verify_passes"], e1["decode_passes"], e1["verify_accepted_tokens"], e1["tokens_per_verify"]) == (2, 0, 8, 5)
    assert e1["accepted_tokens"] == 9 and e1["draft_steps"] == 8


# --------------------------------------------------------------------------- constant trace sets


def test_constant_trace_set_is_constant_and_complete(constant_traces, constant_times):
    st = constant_traces.stage_timings
    assert set(c.name for c in schema.STAGE_TIMINGS) <= set(st.columns)
    for role, key in (("target", "target_phase_ms"), ("drafter", "drafter_phase_ms")):
        tab = constant_traces.prefill_phase_table[role]
        assert tab.shape[1] == 4 and (tab == np.array(constant_times[key])).all()
    assert (constant_traces.decode_pool["target"] == constant_times["target_decode_ms"]).all()
    assert (constant_traces.decode_pool["drafter"] == constant_times["drafter_decode_ms"]).all()
    gam, med, ratios = constant_traces.verify_curve
    assert (ratios == 1.0).all()
    factors = constant_traces.contention("shared_gpu")
    pooled = factors.table(by_peer=False).set_index(["role", "stage"])
    for key, f in constant_times["shared_factors"].items():
        assert factors.factor(*key) == pytest.approx(f, rel=1e-12)
        assert pooled.loc[key, "measured"]  # start_ms unknown: measured for any peer activity
    by_peer = factors.table()
    assert (by_peer.loc[by_peer["measured"], "basis"] == "measured (any peer)").all()
    assert constant_traces.acceptance is not None
    assert "synthetic" in constant_traces.provenance()


def test_constant_trace_set_input_checks():
    with pytest.raises(ValueError):
        C.constant_trace_set(shared_factors={("target", "load"): 2.0})
    with pytest.raises(ValueError):
        C.constant_trace_set(target_phase_ms=(1.0, 2.0, 3.0))
    with pytest.raises(E.TraceError):
        C.constant_trace_set(target_decode_ms=-1.0)
    assert C.constant_trace_set().acceptance is None


# --------------------------------------------------------------------------- SimPy == closed form


@pytest.mark.parametrize("n_gpus,contention", [(2, "fitted"), (1, "none")])
@pytest.mark.parametrize("include_cpu", [True, False])
def test_target_only_exact(constant_traces, constant_times, n_gpus, contention, include_cpu):
    for N in (1, 2, 37):
        r = _sim(constant_traces, strategy="target_only", n_gpus=n_gpus, contention=contention, output_tokens=N,
                 n_requests=5, include_cpu_stages=include_cpu, acceptance=0.5)
        exp = C.target_only_latency_ms(constant_times["target_phase_ms"], constant_times["target_decode_ms"], N,
                                       include_cpu_stages=include_cpu)
        assert (r["latency_ms"] == exp).all()
        assert (r["ttft_ms"] == C.phase_total_ms(constant_times["target_phase_ms"], include_cpu)).all()
        assert (r["target_passes"] == N - 1).all() and (r["speedup"] == 1.0).all()


@pytest.fixture(scope="module")
def slow_drafter_traces(constant_times):
    """Drafter steps of 100 ms: the window (608 - 60 = 548 ms) holds d1 + 5 drafts < gamma."""
    return C.constant_trace_set(**(constant_times | {"drafter_decode_ms": 100.0}))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("which", ["default", "slow_drafter"])
@pytest.mark.parametrize("n_gpus,contention", [(2, "fitted"), (1, "none")])
def test_prefill_then_verify_exact_at_alpha_0_and_1(constant_traces, slow_drafter_traces, constant_times, alpha,
                                                    which, n_gpus, contention):
    traces = constant_traces if which == "default" else slow_drafter_traces
    times = constant_times | ({"drafter_decode_ms": 100.0} if which == "slow_drafter" else {})
    for gamma in (1, 2, 8):
        for N in (1, 2, 3, 30):
            r = _sim(traces, strategy="prefill_then_verify", n_gpus=n_gpus, contention=contention, gamma=gamma,
                     output_tokens=N, n_requests=3, acceptance=alpha)
            exp = C.prefill_then_verify_latency_ms(alpha, gamma, N, **_cf_kwargs(times))
            assert (r["latency_ms"] == exp).all(), (gamma, N, r["latency_ms"].tolist(), exp)
            e = C.prefill_then_verify_expectations(alpha, gamma, N, times["target_phase_ms"],
                                                   times["drafter_phase_ms"], times["drafter_decode_ms"])
            k = e["verified_drafts"]
            assert (r["window_drafts"] == e["window_drafts"]).all()
            assert (r["verify_passes"] == (1 if (alpha == 1.0 and k > 0) else 0)).all()
            assert (r["verify_passes"] == e["verify_passes"]).all()
            # alpha = 1: d1 (counted as accepted) + all k verified drafts
            assert (r["accepted_tokens"] == ((1 + k) if alpha == 1.0 else 0)).all()
            assert (r["accepted_tokens"] == e["accepted_tokens"]).all()
            assert (r["window_accepted"] == e["window_accepted"]).all()
            assert (r["ttft_ms"] == 612.0).all()  # CPU lane: 4 ms of drafter CPU stages first


@pytest.mark.parametrize("alpha", [0.279, 0.5, 0.8])
@pytest.mark.parametrize("which", ["default", "slow_drafter"])
def test_prefill_then_verify_mean_latency(constant_traces, slow_drafter_traces, constant_times, alpha, which):
    traces = constant_traces if which == "default" else slow_drafter_traces
    times = constant_times | ({"drafter_decode_ms": 100.0} if which == "slow_drafter" else {})
    gamma, N = 8, 24
    r = _sim(traces, strategy="prefill_then_verify", n_gpus=2, gamma=gamma, output_tokens=N, n_requests=1000,
             acceptance=alpha, seed=3)
    _assert_mean(r["latency_ms"], C.prefill_then_verify_latency_ms(alpha, gamma, N, **_cf_kwargs(times)), "latency")
    # a verify pass runs iff d1 == t1: probability alpha
    _assert_mean(r["verify_passes"].astype(float), alpha, "P(verify)")
    e = C.prefill_then_verify_expectations(alpha, gamma, N, times["target_phase_ms"], times["drafter_phase_ms"],
                                           times["drafter_decode_ms"])
    k = e["verified_drafts"]
    assert e["verify_accepted_tokens"] == pytest.approx(sum(alpha ** (j + 1) for j in range(1, k + 1)))
    _assert_mean(r["accepted_tokens"].astype(float), e["accepted_tokens"], "E[accepted]")
    # the latency takes only the values of the derivation: L = tokens committed by the verify pass - 1
    D, V = 32.0, C.verify_ms_interp(k, times["verify_ms_by_gamma"], 32.0)
    no_verify = r["verify_passes"] == 0
    assert (r.loc[no_verify, "latency_ms"] == 612.0 + (N - 1) * D).all()
    assert (r.loc[no_verify, "target_passes"] == N - 1).all()
    v = r.loc[~no_verify]
    L = (N - 1) - v["target_passes"]  # N - 1 tokens after prefill, one per pass plus L
    assert (L >= 0).all() and (L <= k).all()
    assert (v["latency_ms"] == 612.0 + V + (N - 2 - L) * D).all()
    assert (v["accepted_tokens"] == 1 + L).all()  # d1 + L


def test_prefill_then_verify_curve_acceptance(constant_traces, constant_times):
    curve = (0.9, 0.7, 0.5, 0.3)
    gamma, N = 8, 24
    r = _sim(constant_traces, strategy="prefill_then_verify", n_gpus=2, gamma=gamma, output_tokens=N,
             n_requests=1000, acceptance=curve, seed=5)
    surv = acceptance.CurveAcceptance(curve).survival(gamma + 1)
    exp = C.prefill_then_verify_latency_ms(None, gamma, N, survival=surv, **_cf_kwargs(constant_times))
    _assert_mean(r["latency_ms"], exp, "latency (curve)")


def test_adaptive_budget_on_separate_gpus_reduces_to_prefill_then_verify(slow_drafter_traces):
    # no GPU contention (host contention assumed 1.0): when drafting pays, adaptive drafts
    # all that fits the window (d1 + 5 drafts < gamma), which is prefill_then_verify;
    # at alpha = 0 nothing can pay for the drafter's CPU stages: it never starts
    for alpha in (0.0, 0.5, 1.0):
        cfg = E.SimConfig(strategy="prefill_then_verify", n_gpus=2, gamma=8, output_tokens=20, n_requests=30,
                          acceptance=alpha)
        a = E.simulate(cfg.replace(strategy="adaptive_budget"), slow_drafter_traces).requests
        b = E.simulate(cfg if alpha > 0 else cfg.replace(strategy="target_only"), slow_drafter_traces).requests
        pd.testing.assert_series_equal(a["latency_ms"], b["latency_ms"])
        pd.testing.assert_series_equal(a["window_drafts"], b["window_drafts"])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("n_gpus,contention", [(2, "fitted"), (1, "none"), (1, "fitted")])
def test_serial_sd_exact_at_alpha_0_and_1(constant_traces, constant_times, alpha, n_gpus, contention):
    # serial SD never overlaps drafter and target: even fitted contention cannot apply
    for gamma in (1, 3, 8):
        for N in (1, 2, 3, 28):
            r = _sim(constant_traces, strategy="serial_sd", n_gpus=n_gpus, contention=contention, gamma=gamma,
                     output_tokens=N, n_requests=2, acceptance=alpha)
            assert (r["latency_ms"] == C.serial_sd_latency_ms(alpha, gamma, N, **_cf_kwargs(constant_times))).all()
            assert (r["ttft_ms"] == 60.0 + 608.0).all()
            e = C.serial_sd_expectations(alpha, gamma, N)
            assert (r["verify_passes"] == e["verify_passes"]).all()
            assert (r["accepted_tokens"] == e["accepted_tokens"]).all()  # d1 counts when it equals t1
            assert (r["target_passes"] == e["target_passes"]).all()
            assert e["verify_accepted_tokens"] + e["target_passes"] == N - 1


def test_serial_sd_every_pass_emits_gamma_plus_one_at_alpha_1(constant_traces):
    gamma, N = 4, 1 + 5 * 7  # 35 tokens after prefill = 7 full passes of gamma + 1
    res = E.simulate(E.SimConfig(strategy="serial_sd", n_gpus=2, gamma=gamma, output_tokens=N, n_requests=3,
                                 acceptance=1.0), constant_traces, timeline=True, n_timeline_requests=3)
    r, tl = res.requests, res.timeline
    assert (r["verify_passes"] == 7).all() and (r["target_passes"] == 7).all()
    assert (r["accepted_tokens"] == 1 + 7 * gamma).all()  # d1 == t1 counts as accepted
    verify = tl[(tl["actor"] == "target") & (tl["activity"] == "verify")]
    assert (verify["tokens"] == gamma + 1).all() and len(verify) == 3 * 7


def test_serial_sd_every_pass_emits_one_at_alpha_0(constant_traces):
    gamma, N = 4, 20
    res = E.simulate(E.SimConfig(strategy="serial_sd", n_gpus=2, gamma=gamma, output_tokens=N, n_requests=3,
                                 acceptance=0.0), constant_traces, timeline=True, n_timeline_requests=3)
    r = res.requests
    assert (r["accepted_tokens"] == 0).all() and (r["window_accepted"] == 0).all()
    assert (r["target_passes"] == N - 1).all()  # one token per pass
    assert (r["verify_passes"] == N - 2).all()  # the last token needs no drafts
    # every draft but d1 of each verify round was wasted effort: drafted = 1 + sum of rounds' w
    assert (r["drafted_tokens"] == 1 + sum(min(gamma, N - c - 1) for c in range(1, N - 1))).all()


@pytest.mark.parametrize("alpha,gamma", [(0.279, 4), (0.6, 3), (0.85, 6)])
def test_serial_sd_tokens_per_verify_and_latency(constant_traces, constant_times, alpha, gamma):
    N = 300
    r = _sim(constant_traces, strategy="serial_sd", n_gpus=2, gamma=gamma, output_tokens=N, n_requests=160,
             acceptance=alpha, seed=11)
    decode_passes = r["target_passes"] - r["verify_passes"]
    a = (N - 1 - decode_passes).to_numpy(float)  # tokens committed by verify passes
    b = r["verify_passes"].to_numpy(float)
    ratio = a.sum() / b.sum()
    se = np.sqrt(np.var(a - ratio * b, ddof=1) / len(a)) / b.mean()  # delta method
    exact = C.serial_sd_expectations(alpha, gamma, N)["tokens_per_verify"]
    lev = C.expected_tokens_per_verify(alpha, gamma)
    assert abs(ratio - exact) <= Z * se, (ratio, exact, se)
    assert abs(ratio - lev) <= Z * se + abs(exact - lev), (ratio, lev, se)
    _assert_mean(r["latency_ms"], C.serial_sd_latency_ms(alpha, gamma, N, **_cf_kwargs(constant_times)), "latency")
    _assert_mean(r["verify_passes"].astype(float), C.serial_sd_expectations(alpha, gamma, N)["verify_passes"],
                 "verify passes")
