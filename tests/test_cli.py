"""CLI commands print real tables / write files, and fail with one-line errors."""

import pandas as pd
import pytest

from egpt_sim.cli import main

EX = ["--traces", "example/seed_calibrated"]


def test_predict_prints_every_strategy(capsys):
    assert main(["predict", *EX, "--requests", "20", "--gpus", "2", "--acceptance", "0.7"]) == 0
    out = capsys.readouterr().out
    for s in ("target_only", "prefill_then_verify", "parallel_sd", "adaptive_budget", "serial_sd"):
        assert s in out
    assert "seed-calibrated example" in out  # provenance is always shown


def test_sweep_writes_parquet_and_best_table(tmp_path, capsys):
    out = tmp_path / "s.parquet"
    assert main(["sweep", *EX, "--quick", "--requests", "10", "--out", str(out), "--gpus-list", "1"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 6 * 4 * 5 and (df["latency_mean_ms"] > 0).all()
    assert "best strategy per cell" in capsys.readouterr().out


def test_timeline_writes_png(tmp_path):
    out = tmp_path / "t.png"
    assert main(["timeline", *EX, "--requests", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_bad_trace_set_is_a_one_line_error(capsys):
    assert main(["predict", "--traces", "/nonexistent/set"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/nonexistent/set" in err


def test_acceptance_run_selects_one_recorded_run(capsys):
    import egpt_sim as E
    from egpt_sim.schema import TraceError

    ts = E.load_traces("h100/validation")
    assert len(ts.acceptance_runs()) > 1
    one = ts.with_acceptance_run("acc-sigma0.1")
    assert set(one.acceptance["run_id"]) == {"acc-sigma0.1"}
    # sigma 0.1 accepted nothing in the window: replaying it alone must give no window acceptance,
    # while the pooled mixture (which includes sigma 0.01 runs) does
    cfg = E.SimConfig(strategy="prefill_then_verify", n_gpus=2, acceptance="trace", n_requests=60)
    assert E.simulate(cfg, one).summary()["window_accepted_mean_tokens"] < E.simulate(cfg, ts).summary()["window_accepted_mean_tokens"]
    with pytest.raises(TraceError, match="no run 'nope'"):
        ts.with_acceptance_run("nope")
    assert main(["predict", "--traces", "h100/validation", "--requests", "5"]) == 0
    assert "pick one with --acceptance-run" in capsys.readouterr().out
