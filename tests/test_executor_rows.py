"""Executor spans as stage rows (egpt_sim.analysis.executor_rows), the executor_folds validation
mode on a synthetic folder whose truth is known, and per-sample replay tails."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.analysis import executor_rows as X
from egpt_sim.analysis import validation as V
from egpt_sim.sim import closed_form as C
from egpt_sim.traces import schema
from egpt_sim.traces.acceptance import TraceAcceptance


def _span(rid, actor, activity, start, end, tokens=0):
    return dict(request_id=rid, actor=actor, activity=activity, start_ms=float(start), end_ms=float(end), gpu=0,
                tokens=tokens)


def test_token_passes_last_until_the_next_span_and_peers_are_the_most_overlapping():
    tl = pd.DataFrame([_span(1, "target", "prefill", 0, 20), _span(1, "target", "decode_step", 21, 25, 1),
                       _span(1, "target", "verify", 26, 31, 3), _span(1, "target", "decode_step", 31, 35, 1),
                       _span(1, "drafter", "prefill", 0, 5), _span(1, "drafter", "draft_step", 6, 16, 1),
                       _span(1, "drafter", "draft_step", 16, 19, 1)])
    out = X.peer_overlap(X.with_cycles(tl)).set_index(["actor", "start_ms"])
    assert out.loc[("target", 21.0), "cycle_ms"] == 5.0      # 21 -> next start 26: the host gap is charged
    assert out.loc[("target", 31.0), "cycle_ms"] == 4.0      # last pass: its duration
    assert out.loc[("target", 0.0), "cycle_ms"] == 20.0      # not a token pass: its duration
    assert out.loc[("target", 0.0), "peer_activity"] == "decode_step"  # draft steps overlap it most (13 of 20 ms)
    assert out.loc[("target", 0.0), "overlap_frac"] == pytest.approx(18 / 20)  # prefill 0-5, steps 6-16-19
    assert out.loc[("target", 26.0), "peer_activity"] == "none" and out.loc[("target", 26.0), "overlap_frac"] == 0


def _folder(tmp_path, seed=7):
    """A validation folder whose "executor" is the SimPy model on a constant trace set: the
    executor_folds calibration must recover it."""
    ts = C.constant_trace_set((40.0, 32.0, 24.0, 512.0), (2.0, 4.0, 8.0, 64.0), target_decode_ms=32.0,
                              drafter_decode_ms=16.0, verify_ms_by_gamma={1: 34.0, 2: 35.0, 4: 36.0, 8: 40.0},
                              acceptance_alpha=0.6, peer_factors={("target", "prefill", "decode_step"): 1.5,
                                                                  ("drafter", "decode_step", "prefill"): 2.0})
    rows, spans, rid = [], [], 0
    for strategy in ("target_only", "prefill_then_verify"):
        for n in (8, 16, 24, 32):
            cfg = E.SimConfig(strategy=strategy, output_tokens=n, gamma=8, acceptance=0.6, n_requests=6, seed=seed,
                              contention_concurrency="streams", contention_missing="assume:1.0")
            res = E.simulate(cfg, ts, timeline=True, n_timeline_requests=6)
            for i, r in res.requests.iterrows():
                rows.append(dict(strategy=strategy, output_tokens=n, gamma=0 if strategy == "target_only" else 8,
                                 sigma=np.nan if strategy == "target_only" else 0.1, latency_ms=r["latency_ms"],
                                 request_id=rid, sample_id=f"{i:06d}", placement="shared_gpu", workers="threads"))
                tl = res.timeline[res.timeline["request_id"] == r["request_id"]]
                spans.append(tl.assign(request_id=rid))
                rid += 1
    path = tmp_path / "val"
    path.mkdir()
    schema.write_table(ts.stage_timings, path / "stage_timings.parquet", schema.STAGE_TIMINGS_FILE)
    schema.write_table(ts.acceptance.assign(sigma=0.1, adapter="none"), path / "acceptance.parquet",
                       schema.ACCEPTANCE_FILE)
    pd.DataFrame(rows).to_parquet(path / "executor_results.parquet", index=False)
    pd.concat(spans, ignore_index=True).to_parquet(path / "executor_timeline.parquet", index=False)
    (path / "metadata.json").write_text(json.dumps(ts.metadata))
    return path, ts


def test_executor_stage_rows_keep_what_the_executor_did(tmp_path):
    path, ts = _folder(tmp_path)
    res = pd.read_parquet(path / "executor_results.parquet")
    tl = pd.read_parquet(path / "executor_timeline.parquet")
    rows, runs = X.executor_stage_rows(tl, res[res["output_tokens"] == 8], ts.stage_timings, "streams")
    alone = rows[rows["run_id"] == X.ALONE_RUN]
    assert set(alone["stage"]) == {"load", "preprocess", "vision_encode", "prefill", "decode_step"}
    assert (alone.loc[alone["stage"] == "decode_step", "duration_ms"] == 32.0).all()
    assert alone["sample_id"].nunique() == 6  # each target_only request is one recorded sample
    conc = rows[rows["run_id"] == X.CONCURRENT_RUN]
    assert set(conc["placement"]) == {"shared_gpu"} and set(conc["concurrency"]) == {"streams"}
    assert (conc.loc[conc["stage"] == "verify", "gamma"] >= 1).all()
    assert runs[X.CONCURRENT_RUN]["cpu_stages"] == "overlap"
    drafter_alone = rows[(rows["role"] == "drafter") & (rows["placement"] == "alone")]
    assert len(drafter_alone) == len(ts.stage_timings.query("role == 'drafter' and placement == 'alone'"))


def test_fold_mode_recovers_a_known_executor(tmp_path):
    path, _ = _folder(tmp_path)
    cells, overall = V.compare_dir(path, n_predicted=120, decode_from="executor_folds")
    assert len(cells) == 8 and overall["n_cells"] == 8  # every cell scored, none calibrated on itself
    assert set(cells.loc[cells["output_tokens"].isin([8, 24]), "calibrated_on_lengths"]) == {"16,32"}
    assert cells["error_pct"].abs().max() < 3.0, cells[["strategy", "output_tokens", "error_pct"]]
    assert "other output lengths" in overall["calibrated_on"]


def test_replay_tails_follow_each_executor_runs_samples():
    meta = {"runs": {"executor-0-15": {"acceptance_replay": {"0.1": {"tail_alpha": 0.9}}},
                     "executor-9-19": {"acceptance_replay": {"0.1": {"tail_alpha": 0.2}}}}}
    tails = V._replay_tails(meta, ["000003", "000008", "000009", "000015", "000019"])[0.1]
    assert tails == {"000003": 0.9, "000008": 0.9, "000009": 0.2, "000015": 0.2, "000019": 0.2}


def test_trace_acceptance_continues_each_sample_with_its_own_tail():
    blocks = pd.DataFrame({"run_id": "r", "sample_id": ["a", "a", "b", "b"], "verify_id": [0, 1, 0, 1],
                           "gamma": 4, "accepted_len": 4})  # every block censored at gamma
    src = TraceAcceptance(blocks, tail_alpha={"a": 0.0, "b": 0.5})
    u = (np.arange(4000) + 0.5) / 4000
    first = np.zeros(u.size, dtype=bool)
    a = src.runs(u, first, np.full(u.size, 0.1))
    b = src.runs(u, first, np.full(u.size, 0.9))
    assert (a == 4).all()  # tail 0: the run stops at the censoring point
    assert (b >= 4).all() and np.mean(b - 4) == pytest.approx(1.0, abs=0.05)  # geometric, mean a / (1 - a)
    assert src.survival(6)[5] == pytest.approx(0.5 * 0.5)  # mean over the samples of 0 and 0.5
    assert src.tail_alpha == 0.25


def test_lossless_summary_counts_near_ties():
    res = pd.DataFrame({"strategy": ["target_only", "parallel_sd", "parallel_sd", "parallel_sd"],
                        "lossless": [True, True, False, False], "gap_at_mismatch": [np.nan, np.nan, 0.0039, 0.05],
                        "reference_gap_at_mismatch": [np.nan, np.nan, 0.0, 0.0039]})
    s = V.lossless_summary(res)
    assert (s["n_speculative"], s["n_lossless"], s["n_mismatch"], s["n_mismatch_with_gaps"]) == (3, 1, 2, 2)
    assert s["max_gap_logits"] == 0.05 and s["n_above_tolerance"] == 1  # 0.05 logits is no fp16 near-tie


def test_merge_keeps_labels_notes_and_both_entries_of_a_run(tmp_path):
    pytest.importorskip("torch")
    from measure.validation_run import merge

    a, b = tmp_path / "a", tmp_path / "b"
    schema.write_metadata(a, {"acc": {"tail": 0.9}, "executor-0-8": {}}, label="grid", note="first call")
    schema.write_metadata(b, {"acc": {"tail": 0.2}, "executor-9-19": {}}, label="grid", note="top-up")
    (b / "gpu_monitor.csv").write_text("timestamp, index, clocks.sm [MHz]\n")
    meta = schema.read_metadata(merge(tmp_path / "m", a, b))
    assert meta["label"] == "grid" and meta["note"] == "first call | top-up"
    assert {"acc", "acc@b", "executor-0-8", "executor-9-19"} <= set(meta["runs"])
    assert (tmp_path / "m" / "gpu_monitor_b.csv").read_text().startswith("timestamp")  # the call's clock log kept
    assert not (tmp_path / "m" / "gpu_monitor_a.csv").exists()
