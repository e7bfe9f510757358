"""Validation statistics and the simulator-vs-executor comparison."""

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.traces.schema import TraceError
from egpt_sim.analysis.validation import (compare, measured_speedups, median_se_pct, tost_equivalence,
                                         unpaired_draw_speedups, verdict)


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
    # target_only is its own baseline: its predicted speed-up is the same-draws ratio, exactly 1
    assert (cells.loc[cells["strategy"] == "target_only", "predicted_speedup"] == 1.0).all()


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


def _two_sample_source(tail_a: float = 0.95):
    """Replayed acceptance of two samples: "a" accepts every draft, "b" none (gamma 8)."""
    from egpt_sim.traces.acceptance import TraceAcceptance

    blocks = pd.DataFrame({"run_id": "acc", "sample_id": ["a"] * 3 + ["b"] * 3, "verify_id": [0, 1, 2] * 2,
                           "gamma": 8, "accepted_len": [8, 8, 8, 0, 0, 0]})
    return TraceAcceptance(blocks, tail_alpha={"a": tail_a, "b": 0.0}, label="acc")


def test_for_sample_keeps_one_samples_verifications_and_tail():
    src = _two_sample_source(tail_a=0.9)
    a = src.for_sample("a")
    assert a.n_samples == 1 and a.sample_ids == ["a"] and a.tail_alpha == pytest.approx(0.9)
    assert set(a.blocks["accepted_len"]) == {8}
    assert src.for_sample("b").survival(8)[1] == 0.0
    with pytest.raises(KeyError, match="sample 'z'"):
        src.for_sample("z")


def test_paired_tost_is_hand_computable_and_needs_the_mean_inside_the_margin():
    from egpt_sim.analysis.validation import paired_tost

    # mean difference 10 ms, SD 1 over 10 pairs, margin 5 % of 1000 = 50 ms: clearly equivalent
    d = np.array([9.0, 11.0] * 5)
    ok, p = paired_tost(d, 1000.0)
    assert ok and p < 1e-10
    assert not paired_tost(d + 45.0, 1000.0)[0]  # mean 55 ms > 50 ms
    assert not paired_tost(np.array([-200.0, 200.0] * 5), 1000.0)[0]  # too noisy to tell
    assert paired_tost(np.array([3.0, 3.0]), 1000.0) == (True, 0.0)  # SE 0: the mean decides
    assert not paired_tost(np.array([1.0]), 1000.0)[0]


def test_per_sample_predictions_pair_with_their_requests():
    """Each measured sample is simulated on its own verifications: for requests whose latency is
    set by their sample's acceptance, the paired TOST shows equivalence with far more certainty
    than the unpaired one."""
    from egpt_sim.analysis.validation import predict_cell

    base = E.load_traces("example/seed_calibrated")
    ts = base.with_replay_source(_two_sample_source())
    # a copy: the loaded set keeps its own acceptance, and the copies share the tables
    assert base.replay_source is None and ts.sample_tables is base.sample_tables
    cell = pd.DataFrame({"strategy": "parallel_sd", "output_tokens": 50, "gamma": 8, "sigma": 0.0,
                         "n_gpus": 1, "sample_id": ["a", "b"] * 4, "latency_ms": 0.0})
    pred = predict_cell(cell, ts, 200, seed=3)
    own = pred.groupby("sample_id")["latency_ms"].mean()
    assert set(own.index) == {"a", "b"} and own["a"] < 0.95 * own["b"]  # all accepted vs none
    # "measured": the simulator per sample under other seeds (the truth is the model)
    meas = [predict_cell(cell.iloc[[i]], ts, 1, seed=100 + i)["latency_ms"].iloc[0] for i in range(len(cell))]
    rows = cell.assign(latency_ms=meas)
    cells, overall = compare(rows, {0.0: ts}, n_predicted=200)
    assert cells["paired_tost_equivalent"].all() and overall["paired_tost_equivalent_fraction"] == 1.0
    # pairing removes the sample-to-sample spread: far stronger evidence than the unpaired test
    assert (cells["paired_tost_pvalue"] < 0.01 * cells["tost_pvalue"]).all()


def test_exact_model_p90_is_the_half_normal_quantile():
    """A model without error, scored on cells whose measured figure has SE s, shows p90 |error|
    near 1.645 s (the 90 % point of a half-normal); cells without an SE are ignored."""
    from egpt_sim.analysis.validation import exact_model_p90

    assert exact_model_p90(np.full(200, 0.012)) == pytest.approx(1.645 * 0.012, rel=0.05)
    assert exact_model_p90(np.array([0.01, np.nan] * 50)) == pytest.approx(0.01645, rel=0.1)
    assert np.isnan(exact_model_p90(np.array([np.nan])))
    assert exact_model_p90(np.full(40, 2.0)) > exact_model_p90(np.full(40, 1.0))


def test_validation_summary_reads_each_folders_overall_json(tmp_path):
    import json

    from egpt_sim.analysis.tables import validation_summary

    (tmp_path / "validation-a").mkdir()
    (tmp_path / "validation-b").mkdir()  # not scored yet: left out
    (tmp_path / "validation-a" / "validation_overall.json").write_text(json.dumps(
        {"stages": {"n_cells": 40, "median_abs_error_pct": 1.5, "p90_abs_speedup_error": 0.03},
         "lossless": {"n_requests": 10}}))
    got = validation_summary(tmp_path)
    assert got[["folder", "mode", "cells", "median |err| %", "p90 |speed-up err|"]].values.tolist() == [
        ["validation-a", "stages", 40, 1.5, 0.03]]
    assert np.isnan(got["TOST paired"].iloc[0])  # a figure the file lacks is NaN, not 0
    assert validation_summary(tmp_path / "validation-b").empty


def test_residuals_simulate_every_request_of_a_cell():
    """The per-activity residuals pool the timelines of all simulated requests, not of one."""
    from egpt_sim.analysis.validation import activity_residuals, predict_cell_timeline

    ts = E.load_traces("example/seed_calibrated")
    cell = pd.DataFrame({"strategy": ["target_only"] * 2, "output_tokens": [6, 6], "gamma": [0, 0], "n_gpus": [1, 1],
                         "sigma": [0.1, 0.1], "request_id": [1, 2], "latency_ms": [900.0, 910.0]})
    tl = predict_cell_timeline(cell, ts, n_predicted=25, seed=0)
    assert tl["request_id"].nunique() == 25
    assert (tl[tl["activity"] == "decode_step"].groupby("request_id").size() == 5).all()  # N - 1 passes each
    measured = pd.DataFrame({"request_id": [1, 1, 2, 2], "actor": "target", "activity": ["prefill", "decode_step"] * 2,
                             "start_ms": [0.0, 600.0, 0.0, 610.0], "end_ms": [580.0, 630.0, 590.0, 640.0]})
    res = activity_residuals(cell, measured, {0.1: ts}, n_predicted=25).set_index(["actor", "activity"])
    pre = ts.durations_ms("target", "prefill")
    assert res.loc[("target", "prefill"), "predicted_per_request"] == 1.0
    assert pre.min() <= res.loc[("target", "prefill"), "predicted_median_ms"] <= pre.max()
    assert res.loc[("target", "decode_step"), "predicted_per_request"] == 5.0


def test_residuals_compare_pass_spans_without_the_loop_gap():
    """The executor's pass spans exclude the host gap between passes; the simulated ones must
    too (the model charges the gap before each pass), and the gap gets its own ``loop_gap`` row
    on both sides, with its time per request."""
    from egpt_sim.analysis.validation import activity_residuals, loop_gap_rows, predict_cell_timeline

    ts = E.load_traces("example/seed_calibrated")
    cell = pd.DataFrame({"strategy": ["target_only"] * 2, "output_tokens": [6, 6], "gamma": [0, 0], "n_gpus": [1, 1],
                         "sigma": [0.1, 0.1], "request_id": [1, 2], "latency_ms": [900.0, 910.0]})
    plain = predict_cell_timeline(cell, ts, n_predicted=5, seed=0)
    gapped = predict_cell_timeline(cell, ts, n_predicted=5, seed=0, pass_gap_ms=3.0)
    span = lambda tl: (tl["end_ms"] - tl["start_ms"])[tl["activity"] == "decode_step"].to_numpy()
    assert span(gapped) == pytest.approx(span(plain))  # the gap is not in the span
    gaps = loop_gap_rows(gapped.assign(duration_ms=gapped["end_ms"] - gapped["start_ms"]))
    assert gaps.loc[gaps["activity"] == "loop_gap", "duration_ms"].to_numpy() == pytest.approx(3.0)
    # measured: two decode steps per request, 2 ms apart
    measured = pd.DataFrame({"request_id": [1, 1, 1, 2, 2, 2], "actor": "target",
                             "activity": ["prefill", "decode_step", "decode_step"] * 2,
                             "start_ms": [0.0, 600.0, 632.0, 0.0, 610.0, 642.0],
                             "end_ms": [580.0, 630.0, 662.0, 590.0, 640.0, 672.0]})
    res = activity_residuals(cell, measured, {0.1: ts}, n_predicted=5, pass_gap_ms=3.0).set_index(["actor", "activity"])
    gap = res.loc[("target", "loop_gap")]
    assert gap["measured_median_ms"] == 2.0 and gap["measured_per_request"] == 1.0
    assert gap["predicted_median_ms"] == pytest.approx(3.0) and gap["predicted_per_request"] == 4.0
    assert gap["delta_ms_per_request"] == pytest.approx(4 * 3.0 - 2.0)
    assert res.loc[("target", "decode_step"), "measured_ms_per_request"] == 60.0


def test_loop_gaps_never_pair_passes_of_two_strategies():
    """Simulated request ids repeat across strategies (one id space per cell): a gap is taken
    between two passes of the same strategy, request and actor only."""
    from egpt_sim.analysis.validation import loop_gap_rows

    tl = pd.DataFrame({"strategy": ["a", "a", "b", "b"], "request_id": "r0", "actor": "target",
                       "activity": "decode_step", "start_ms": [0.0, 10.0, 3.0, 13.0], "end_ms": [8.0, 18.0, 11.0, 21.0]})
    gaps = loop_gap_rows(tl.assign(duration_ms=tl["end_ms"] - tl["start_ms"]))
    got = gaps[gaps["activity"] == "loop_gap"]
    assert sorted(got["strategy"]) == ["a", "b"] and (got["duration_ms"] == 2.0).all()


def test_simulated_speedup_is_estimated_as_the_measured_one_is():
    """Measured: one target_only and one strategy request per sample, independent noise (log-sd
    0.2), so the mean of their ratio is exp(0.2^2) = 1.041, not 1. The simulator's same-draws ratio
    is exactly 1 here; the estimator compared with the measurement must read 1.041 too, and never
    pair a request with another sample's baseline (samples 10x apart)."""
    rng = np.random.default_rng(3)
    n = 4000
    scale = np.where(np.arange(n) % 2 == 0, 100.0, 1000.0)
    sids = [f"s{i}" for i in range(n)]
    measured = pd.DataFrame({"strategy": ["target_only"] * n + ["prefill_then_verify"] * n,
                             "sample_id": sids * 2, "output_tokens": 20,
                             "latency_ms": np.r_[scale, scale] * rng.lognormal(0.0, 0.2, 2 * n)})
    meas = measured_speedups(measured)[measured["strategy"] != "target_only"].mean()
    lat = np.repeat([100.0, 1000.0], n) * rng.lognormal(0.0, 0.2, 2 * n)
    pred = pd.DataFrame({"sample_id": np.repeat(["a", "b"], n), "latency_ms": lat, "baseline_latency_ms": lat,
                         "speedup": 1.0})
    sim = unpaired_draw_speedups(pred)
    assert meas == pytest.approx(np.exp(0.04), abs=0.01)
    assert sim.mean() == pytest.approx(meas, abs=0.01) and pred["speedup"].mean() == 1.0
    assert sim.max() < 3.0  # within a sample only


def test_verdict_says_which_goals_the_noise_cannot_show():
    base = {"median_abs_error_pct": 2.4, "p90_abs_error_pct": 9.2, "p90_abs_speedup_error": 0.063,
            "tost_equivalent_fraction": 0.0, "paired_tost_equivalent_fraction": 0.08,
            "contention_concurrency": "streams"}
    floor = {"p90_abs_error_pct_if_exact": 8.2, "p90_abs_speedup_error_if_exact": 0.069}
    line = verdict(base | floor)  # eager goals: p90 10 %, speed-up 0.05
    assert line.startswith("MISSES") and "the p90 speed-up goal cannot be shown" in line
    assert "p90 latency" not in line  # 8.2 % < 10 %: showable
    both = verdict(base | floor | {"p90_abs_error_pct_if_exact": 12.0})
    assert "the p90 latency and p90 speed-up goals cannot be shown" in both
    assert "cannot be shown" not in verdict(base | {"p90_abs_error_pct_if_exact": 2.0,
                                                     "p90_abs_speedup_error_if_exact": 0.01})
