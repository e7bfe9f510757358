"""Serving layer: request streams, placement, queueing theory checks, low-load equality
with the single-request model, sweeps on process pools and Dask, plots."""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import egpt_sim as E
from egpt_sim.traces.schema import TraceError
from egpt_sim.serving import (
    EmpiricalLength,
    FixedLength,
    PlacementError,
    ServingConfig,
    SharedGpu,
    UniformLength,
    arrival_times_ms,
    erlang_c_wait_ms,
    latency_vs_load,
    load_arrival_trace,
    make_length_dist,
    max_rate_under_slo,
    mean_service_ms,
    output_lengths,
    plan_placement,
    plot_latency_vs_load,
    plot_max_rate,
    run_serving,
    run_serving_sweep,
)
from egpt_sim.traces.contention import uniform_model
from egpt_sim.traces import TraceSet

TRACES = "example/seed_calibrated"


@pytest.fixture(scope="module")
def ts(example_traces):
    return example_traces


# --------------------------------------------------------------------------- streams


def test_poisson_and_fixed_arrivals():
    t = arrival_times_ms("poisson", 20000, 2.0, seed=1)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert abs(gaps.mean() - 500.0) < 4 * 500.0 / math.sqrt(len(gaps))
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: CV = 1
    # same pattern, stretched: arrivals at another rate are a scaled copy
    np.testing.assert_allclose(arrival_times_ms("poisson", 100, 4.0, seed=1), t[:100] / 2.0)
    np.testing.assert_array_equal(arrival_times_ms("fixed", 4, 0.5, seed=0), [0.0, 2000.0, 4000.0, 6000.0])


def test_arrival_trace_replay_and_rescale(tmp_path, ts):
    p = tmp_path / "arr.csv"
    pd.DataFrame({"timestamp_s": [10.0, 10.5, 11.0, 13.0]}).to_csv(p, index=False)
    np.testing.assert_allclose(load_arrival_trace(p), [0.0, 500.0, 1000.0, 3000.0])
    np.testing.assert_allclose(arrival_times_ms("trace", 3, None, 0, p), [0.0, 500.0, 1000.0])
    # rescaled to 2 req/s: (n - 1) / span = 2
    np.testing.assert_allclose(arrival_times_ms("trace", 4, 2.0, 0, p), [0.0, 250.0, 500.0, 1500.0])
    res = run_serving(ServingConfig(arrival="trace", arrival_trace=str(p), rate_rps=None, n_requests=4), ts)
    np.testing.assert_allclose(res.requests["arrival_ms"], [0.0, 500.0, 1000.0, 3000.0])
    q = tmp_path / "arr_ms.csv"
    pd.DataFrame({"arrival_ms": [5, 7, 20]}).to_csv(q, index=False)
    np.testing.assert_allclose(load_arrival_trace(q), [0.0, 2.0, 15.0])


@pytest.mark.parametrize("frame, words", [
    ({"t": [1, 2]}, ["'timestamp_s' or 'arrival_ms'", "['t']"]),
    ({"arrival_ms": [1, "x", 3]}, ["'arrival_ms'", "non-numeric"]),
    ({"timestamp_s": [1.0, 3.0, 2.0]}, ["'timestamp_s'", "not sorted", "row 2"]),
])
def test_bad_arrival_trace_one_line_error(tmp_path, frame, words):
    p = tmp_path / "bad.csv"
    pd.DataFrame(frame).to_csv(p, index=False)
    with pytest.raises(TraceError) as e:
        load_arrival_trace(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    for w in words:
        assert w in msg
    with pytest.raises(TraceError, match="does not exist"):
        load_arrival_trace(tmp_path / "missing.csv")
    with pytest.raises(TraceError, match="fewer than n_requests"):
        pd.DataFrame({"arrival_ms": [0, 1]}).to_csv(p, index=False)
        arrival_times_ms("trace", 5, None, 0, p)


def test_output_length_distributions(tmp_path):
    assert make_length_dist(40) == FixedLength(40)
    assert make_length_dist(("uniform", 10, 20)) == UniformLength(10, 20)
    assert make_length_dist([3, 5, 8]) == EmpiricalLength((3, 5, 8))
    u = output_lengths(("uniform", 10, 20), 5000, seed=3)
    assert u.min() == 10 and u.max() == 20 and abs(u.mean() - 15) < 0.3
    e = output_lengths(("empirical", (7, 9)), 1000, seed=3)
    assert set(np.unique(e)) == {7, 9}
    p = tmp_path / "len.csv"
    pd.DataFrame({"output_tokens": [12, 30, 30]}).to_csv(p, index=False)
    assert make_length_dist(str(p)) == EmpiricalLength((12, 30, 30))
    pd.DataFrame({"n": [1]}).to_csv(p, index=False)
    with pytest.raises(TraceError, match="'output_tokens'"):
        make_length_dist(("csv", str(p)))
    with pytest.raises(ValueError, match=">= 1"):
        make_length_dist(("uniform", 0, 3))


def test_config_validation():
    with pytest.raises(ValueError, match="n_gpus"):
        ServingConfig(n_gpus=17)
    with pytest.raises(ValueError, match="drafter_gpus"):
        ServingConfig(policy="split", n_gpus=2, drafter_gpus=2)
    with pytest.raises(ValueError, match="arrival_trace"):
        ServingConfig(arrival="trace")
    with pytest.raises(ValueError, match="strategy"):
        ServingConfig(policy="colocated", strategy="drafter_only")


# --------------------------------------------------------------------------- placement + memory


def test_memory_decides_what_fits(ts):
    fp16 = plan_placement(ServingConfig(policy="colocated", n_gpus=2, replicas_per_gpu="max"), ts)
    assert len(fp16.replicas) == 4  # 2 fp16 pairs of ~29.8 GiB in 72 GiB
    q4 = plan_placement(ServingConfig(policy="colocated", n_gpus=2, replicas_per_gpu="max", weight_bits=4), ts)
    assert len(q4.replicas) == 12 and not any(r.exclusive for r in q4.replicas)
    with pytest.raises(PlacementError) as e:
        plan_placement(ServingConfig(policy="colocated", n_gpus=1, replicas_per_gpu=3), ts)
    assert "GiB" in str(e.value) and "weight_bits=4" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PlacementError, match="one drafter\\+target pair"):
        plan_placement(ServingConfig(policy="colocated", gpu_mem_gib=24.0), ts)
    split = plan_placement(ServingConfig(policy="split", n_gpus=5, drafter_gpus=2), ts)
    assert [r.drafter_gpu for r in split.replicas] == [0, 1, 0]
    assert [r.target_gpu for r in split.replicas] == [2, 3, 4]
    assert split.gpu_roles == ("drafter", "drafter", "target", "target", "target")
    with pytest.raises(PlacementError, match="drafter GPU 0 serving"):
        plan_placement(ServingConfig(policy="split", n_gpus=16, drafter_gpus=1, gpu_mem_gib=20.0), ts)


def test_measured_memory_columns_are_used(ts):
    st = ts.stage_timings.copy()
    pre = st["stage"] == "prefill"
    st["peak_mem_mb"] = np.where(pre, 20 * 1024.0, np.nan)
    st["kv_bytes"] = pd.array(np.where(pre, st["prompt_tokens"] * 1000, pd.NA), dtype="Int64")
    meas = TraceSet.from_frames(st, ts.acceptance, ts.metadata, "measured")
    from egpt_sim.serving import role_memory
    m = role_memory(ServingConfig(), meas, "target")
    assert "measured" in m.source
    assert m.per_request_gib == pytest.approx(1000 * m.kv_tokens / 2**30)
    assert m.static_gib == pytest.approx(20.0 - 1000 * meas.prompt_tokens("target") / 2**30)
    doc = role_memory(ServingConfig(memory_source="documented"), meas, "target")
    assert doc.static_gib == 13.5


# --------------------------------------------------------------------------- GPU sharing


def _run_two(same_role, roles):
    env = simpy.Environment()
    gpu = SharedGpu(env, 0, uniform_model(2.0, "gpu", "test: every factor 2", "test"), same_role)
    ends = []

    def act(role):
        yield from gpu.execute(role, "prefill", 100.0)
        ends.append(env.now)

    for r in roles:
        env.process(act(r))
    env.run()
    return sorted(ends)


def test_same_role_sharing_models():
    assert _run_two("ps", ["target", "target"]) == pytest.approx([200.0, 200.0])  # each at 1/2
    assert _run_two("serial", ["target", "target"]) == pytest.approx([100.0, 200.0])
    assert _run_two("ps", ["target", "drafter"]) == pytest.approx([200.0, 200.0])  # fitted factor 2
    assert _run_two("ps", ["target"]) == pytest.approx([100.0])


# --------------------------------------------------------------------------- single-request equality


@pytest.mark.parametrize("policy, strategy", [
    ("target_only", "target_only"),
    ("colocated", "prefill_then_verify"),
    ("colocated", "parallel_sd"),
    ("colocated", "adaptive_budget"),
])
def test_low_load_equals_single_request_model_exactly(ts, policy, strategy):
    n = 25
    cfg = ServingConfig(policy=policy, strategy=strategy, n_gpus=2, arrival="fixed", rate_rps=1e-4,
                        n_requests=n, output_len=40, acceptance=0.6, seed=7)
    served = run_serving(cfg, ts).requests
    ref = E.simulate(E.SimConfig(strategy=strategy, n_gpus=1, output_tokens=40, acceptance=0.6,
                                 n_requests=n, seed=7), ts).requests
    assert (served["queue_delay_ms"] == 0.0).all()
    np.testing.assert_array_equal(served["latency_ms"].to_numpy(), ref["latency_ms"].to_numpy())
    np.testing.assert_array_equal(served["ttft_ms"].to_numpy(), ref["ttft_ms"].to_numpy())
    np.testing.assert_array_equal(served["accepted_tokens"].to_numpy(), ref["accepted_tokens"].to_numpy())


def test_shared_clock_engine_and_split_match_single_request_model(ts):
    n = 20
    base = ServingConfig(policy="colocated", strategy="parallel_sd", n_gpus=2, arrival="fixed", rate_rps=1e-4,
                         n_requests=n, output_len=40, acceptance=0.6, seed=3)
    ref1 = E.simulate(E.SimConfig(strategy="parallel_sd", n_gpus=1, output_tokens=40, acceptance=0.6,
                                  n_requests=n, seed=3), ts).requests
    shared = run_serving(base.replace(engine="shared_clock"), ts).requests
    np.testing.assert_allclose(shared["latency_ms"], ref1["latency_ms"], rtol=0, atol=1e-6)
    # split with one drafter GPU per target replica = the 2-GPU single-request model
    ref2 = E.simulate(E.SimConfig(strategy="parallel_sd", n_gpus=2, output_tokens=40, acceptance=0.6,
                                  n_requests=n, seed=3), ts).requests
    for engine in ("auto", "shared_clock"):
        split = run_serving(base.replace(policy="split", n_gpus=2, engine=engine), ts).requests
        np.testing.assert_allclose(split["latency_ms"], ref2["latency_ms"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(split["ttft_ms"], ref2["ttft_ms"], rtol=0, atol=1e-6)


def test_shared_clock_matches_private_clock_under_load(ts):
    cfg = ServingConfig(policy="colocated", n_gpus=3, rate_rps=1.2, n_requests=300, acceptance=0.6,
                        output_len=("uniform", 20, 60), seed=5)
    a = run_serving(cfg, ts)
    b = run_serving(cfg.replace(engine="shared_clock"), ts)
    for col in ("latency_ms", "queue_delay_ms", "ttft_ms", "service_ms"):
        np.testing.assert_allclose(a.requests[col], b.requests[col], rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(a.requests["replica"], b.requests["replica"])
    np.testing.assert_allclose(a.gpus["busy_ms"], b.gpus["busy_ms"], rtol=1e-9)


# --------------------------------------------------------------------------- queueing


def test_queue_invariants(ts):
    cfg = ServingConfig(policy="split", n_gpus=4, drafter_gpus=1, rate_rps=1.0, n_requests=400,
                        acceptance=0.6, output_len=("uniform", 10, 80), seed=2)
    res = run_serving(cfg, ts)
    r = res.requests
    assert len(r) == 400 and (r["start_ms"] >= r["arrival_ms"]).all()
    assert np.all(np.diff(r["start_ms"].to_numpy()) >= 0)  # central FIFO: served in arrival order
    np.testing.assert_allclose(r["latency_ms"], r["queue_delay_ms"] + r["service_ms"])
    np.testing.assert_allclose(r["finish_ms"] - r["arrival_ms"], r["latency_ms"], rtol=1e-9)
    assert ((r["ttft_ms"] > r["queue_delay_ms"]) & (r["ttft_ms"] < r["latency_ms"])).all()
    assert (res.gpus["busy_frac"] <= 1.0 + 1e-9).all() and (res.gpus["busy_frac"] > 0).all()
    # a drafter GPU serving 3 targets: its draft steps overlap, so it is shared
    assert res.gpus.loc[0, "gpu_role"] == "drafter"
    s = res.summary()
    assert s["n_replicas"] == 3 and 0.8 < s["throughput_rps"] < 1.1


def test_deterministic_queue_with_constant_times(constant_traces):
    """D/D/c on constant stage times: start_i = max(arrival_i, finish_{i-c}), exactly."""
    service_ms = 40.0 + 32.0 + 24.0 + 512.0 + 9 * 32.0  # target_only, 10 tokens: 896 ms
    cfg = ServingConfig(policy="target_only", n_gpus=2, arrival="fixed", rate_rps=1000.0 / 256.0,
                        n_requests=40, output_len=10)
    r = run_serving(cfg, constant_traces).requests
    assert (r["service_ms"] == service_ms).all()
    arrival = np.arange(40) * 256.0
    start = arrival.copy()
    for i in range(2, 40):
        start[i] = max(arrival[i], start[i - 2] + service_ms)
    np.testing.assert_array_equal(r["start_ms"], start)
    np.testing.assert_array_equal(r["replica"], np.arange(40) % 2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.sampled_from(["target_only", "colocated", "split"]), n_gpus=st.integers(2, 6),
       rate_rps=st.floats(0.2, 4.0), low=st.integers(1, 40), seed=st.integers(0, 10**6),
       same_role=st.sampled_from(["ps", "serial"]))
def test_invariants_hold_for_any_small_config(ts, policy, n_gpus, rate_rps, low, seed, same_role):
    cfg = ServingConfig(policy=policy, n_gpus=n_gpus, rate_rps=rate_rps, n_requests=40, seed=seed,
                        output_len=("uniform", low, low + 20), acceptance=0.5, same_role=same_role,
                        strategy="parallel_sd", drafter_gpus=1)
    res = run_serving(cfg, ts)
    r = res.requests
    assert len(r) == 40 and (r["queue_delay_ms"] >= 0).all() and (r["service_ms"] > 0).all()
    assert np.all(np.diff(r["start_ms"].to_numpy()) >= 0)
    np.testing.assert_allclose(r["latency_ms"], r["queue_delay_ms"] + r["service_ms"])
    assert (res.gpus["busy_frac"] <= 1.0 + 1e-9).all()


@pytest.mark.parametrize("servers, rho", [(1, 0.7), (4, 0.8), (8, 0.85)])
def test_target_only_exponential_matches_erlang_c(ts, servers, rho):
    """M/M/c: mean wait within 4 batch-means standard errors of Erlang C."""
    base = ServingConfig(policy="target_only", n_gpus=servers, service_time="exponential",
                         n_requests=60_000, seed=11)
    m = mean_service_ms(base, ts)
    rate = rho * servers / m * 1000.0
    r = run_serving(base.replace(rate_rps=rate), ts).requests
    w = r["queue_delay_ms"].to_numpy()[3000:]
    batches = w[: len(w) // 30 * 30].reshape(30, -1).mean(axis=1)
    se = batches.std(ddof=1) / math.sqrt(len(batches))
    theory = erlang_c_wait_ms(rate, m, servers)
    assert abs(w.mean() - theory) < 4 * se, (w.mean(), theory, se)
    assert abs(r["service_ms"].mean() - m) < 4 * m / math.sqrt(len(r))


def test_erlang_c_known_values():
    # M/M/1: Wq = rho / (mu - lambda) -> rho * m / (1 - rho)
    assert erlang_c_wait_ms(0.5, 1000.0, 1) == pytest.approx(1000.0)
    # M/M/2, a = 1 Erlang: C = 1/3, Wq = C * m / (c - a) = m / 3
    assert erlang_c_wait_ms(1.0, 1000.0, 2) == pytest.approx(1000.0 / 3)
    assert erlang_c_wait_ms(3.0, 1000.0, 2) == math.inf


def test_exponential_mean_is_the_trace_mean(ts):
    cfg = ServingConfig(policy="target_only", n_requests=400, output_len=30)
    sim = E.simulate(E.SimConfig(strategy="target_only", output_tokens=30, n_requests=400), ts).requests
    assert mean_service_ms(cfg, ts) == pytest.approx(sim["latency_ms"].mean(), rel=0.01)


# --------------------------------------------------------------------------- curves, SLO, sweeps


def test_latency_vs_load_and_plot(ts):
    base = ServingConfig(n_requests=200, acceptance=0.6, seed=1)
    df = latency_vs_load(base, [0.3, 0.9, 1.5], variants=["target_only", "colocated"], n_gpus=[2, 4],
                         traces_path=TRACES, workers=1)
    assert len(df) == 12 and {"latency_p90_ms", "throughput_rps", "gpu_busy_mean_frac"} <= set(df.columns)
    for _, g in df.groupby(["variant", "n_gpus"]):
        assert np.all(np.diff(g.sort_values("rate_rps")["latency_p90_ms"]) > 0)
    fig = plot_latency_vs_load(df, slo_ms=5000)
    assert len(fig.axes[0].get_lines()) == 4 + 1  # 2 variants x 2 N, + SLO line


def test_max_rate_under_slo_and_plot(ts):
    base = ServingConfig(n_requests=150, acceptance=0.6, seed=1, arrival="poisson")
    df = max_rate_under_slo(base, slo_ms=4000, variants=["target_only", "split"], n_gpus=[1, 2, 3],
                            traces_path=TRACES, rel_tol=0.05, workers=1)
    assert len(df) == 3 + 2  # split needs >= 2 GPUs
    to = df[df["policy"] == "target_only"].sort_values("n_gpus")["max_rate_rps"].to_numpy()
    assert np.all(np.diff(to) > 0) and to[0] > 0
    row = df[(df["policy"] == "target_only") & (df["n_gpus"] == 2)].iloc[0]
    cfg = base.replace(n_gpus=2)
    lat = run_serving(cfg.replace(rate_rps=row["max_rate_rps"]), ts).requests["latency_ms"].iloc[15:]
    assert lat.quantile(0.9) <= 4000
    lat = run_serving(cfg.replace(rate_rps=row["max_rate_rps"] * 1.15), ts).requests["latency_ms"].iloc[15:]
    assert lat.quantile(0.9) > 4000
    assert (df.loc[df["n_gpus"] == 1, "max_rate_rps"] > 0).all()
    assert df[df["policy"] == "target_only"]["max_rate_rps"].iloc[0] < 1000.0 / row["service_mean_ms"]
    fig = plot_max_rate(df)
    assert len(fig.axes[0].get_lines()) == 2


def _sweep_configs():
    base = ServingConfig(n_requests=60, acceptance=0.6, rate_rps=1.0)
    return [base.replace(policy="colocated", n_gpus=2, seed=1),
            base.replace(policy="target_only", n_gpus=2, seed=2),
            base.replace(policy="split", n_gpus=3, seed=3, strategy="parallel_sd")]


def test_sweep_same_on_process_pool_as_inline():
    inline = run_serving_sweep(_sweep_configs(), TRACES, workers=1)
    with ProcessPoolExecutor(2) as pool:
        pooled = run_serving_sweep(_sweep_configs(), TRACES, executor=pool)
    pd.testing.assert_frame_equal(inline, pooled)
    assert list(inline["variant"]) == ["colocated/prefill_then_verify", "target_only", "split[1d]/parallel_sd"]


def test_sweep_on_local_dask_cluster_matches_local_run():
    distributed = pytest.importorskip("distributed")
    local = run_serving_sweep(_sweep_configs(), TRACES, workers=1)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = run_serving_sweep(_sweep_configs(), TRACES, executor=client.get_executor())
    pd.testing.assert_frame_equal(local, remote)
