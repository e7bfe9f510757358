"""Validation statistics and the simulator-vs-executor comparison."""

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.traces.schema import TraceError
from egpt_sim.analysis.validation import compare, median_se_pct, tost_equivalence, verdict


def test_tost_accepts_equal_and_rejects_shifted_distributions():
    rng = np.random.default_rng(0)
    m = rng.normal(1000, 10, 50)
    assert tost_equivalence(m, rng.normal(1000, 10, 400))[0]
    assert not tost_equivalence(m, rng.normal(1100, 10, 400))[0]  # 10 % off > 5 % margin
    with pytest.raises(ValueError):
        tost_equivalence(m[:1], m)


def test_compare_recovers_its_own_predictions():
    ts = E.load_traces("example/seed_calibrated")
    # "measured" = simulator output under another seed: errors must be small, TOST equivalent
    rows = []
    for strat in ("target_only", "prefill_then_verify"):
        cfg = E.SimConfig(strategy=strat, output_tokens=20, gamma=8, n_gpus=1, n_requests=40, seed=123)
        r = E.simulate(cfg, ts).requests
        rows.append(r.assign(sigma=0.0)[["strategy", "output_tokens", "gamma", "latency_ms"]].assign(sigma=0.0))
    cells, overall = compare(pd.concat(rows), {0.0: ts}, n_predicted=300)
    assert len(cells) == 2 and overall["n_cells"] == 2
    assert overall["median_abs_error_pct"] < 2.0
    assert cells["tost_equivalent"].all()
    # the truth is the simulator itself: every cell within its measurement noise
    assert cells["within_noise"].all() and overall["within_noise_fraction"] == 1.0
    assert (cells["measured_se_pct"] > 0).all()


def test_median_se_matches_the_normal_theory_and_flags_a_biased_prediction():
    rng = np.random.default_rng(1)
    v = rng.normal(1000.0, 100.0, 400)
    theory = 100.0 * 1.2533 * 100.0 / np.sqrt(400) / 1000.0  # SE of a normal median, % of 1000
    assert median_se_pct(v) == pytest.approx(theory, rel=0.25)
    assert np.isnan(median_se_pct(v[:1]))
    ts = E.load_traces("example/seed_calibrated")
    cfg = E.SimConfig(strategy="target_only", output_tokens=20, n_requests=40, seed=5)
    r = E.simulate(cfg, ts).requests[["strategy", "output_tokens", "gamma", "latency_ms"]].assign(sigma=0.0)
    slow = r.assign(latency_ms=r["latency_ms"] * 1.2)  # measured 20 % slower than the model
    cells, overall = compare(slow, {0.0: ts}, n_predicted=300)
    assert not cells["within_noise"].any() and overall["within_noise_fraction"] == 0.0
    assert "0 % of cells within 2 SE" in verdict(overall | {"contention_concurrency": "processes"})


def test_compare_rejects_bad_results():
    ts = E.load_traces("example/seed_calibrated")
    with pytest.raises(TraceError, match="latency_ms"):
        compare(pd.DataFrame({"strategy": ["target_only"], "output_tokens": [5], "gamma": [8], "sigma": [0.0]}), {0.0: ts})
    empty = pd.DataFrame({c: [] for c in ("strategy", "output_tokens", "gamma", "sigma", "latency_ms")})
    with pytest.raises(TraceError, match="zero rows"):
        compare(empty, {0.0: ts})
