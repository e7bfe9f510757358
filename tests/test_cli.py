"""CLI commands print real tables / write files, and fail with one-line errors."""

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.cli import main
from egpt_sim.sim.config import STRATEGY_NAMES

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
    from egpt_sim.traces.schema import TraceError

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


# --------------------------------------------------------------------------- issue 15: user-facing fixes


def run_cli(args, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``egpt-sim ARGS``, argparse exits included."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, message", [
    (["plan", "--speedup", "-1"], "argument --speedup: must be a finite number > 0 (got -1)"),
    (["plan", "--speedup", "0"], "argument --speedup: must be a finite number > 0"),
    (["plan", "--strategy", "target_only"], "'target_only' verifies no drafts"),
    (["plan", "--strategy", "prefill_then_verify,nope"], "unknown strategy 'nope'"),
    (["plan", "--lengths", "20,x"], "argument --lengths: 'x' is not an integer"),
    (["predict", "--acceptance", "abc"], "'abc' is not one of: 'auto'"),
    (["predict", "--acceptance", "1.5"], "rates must lie in [0, 1] (got 1.5)"),
    (["predict", *EX, "--acceptance", "0.6", "--acceptance-run", "seed-calibrated-example"],
     "--acceptance-run seed-calibrated-example replays a recorded run, but --acceptance is 0.6"),
    (["predict", "--traces", "h100/fp16", "--acceptance-run", "acc-sigma0.03"], "records no acceptance"),
    (["predict", "--strategy", "target_only,fast_sd"], "unknown strategy 'fast_sd'"),
    (["predict", "--requests", "0"], "argument --requests: must be >= 1 (got 0)"),
    (["predict", "--contention-missing", "maybe"], "'maybe': use 'error' or 'assume:<factor>'"),
    (["timeline", *EX, "--out", "fig.xyz"], "unknown figure type '.xyz'"),
    (["sweep", "--gpus-list", "1,two"], "argument --gpus-list: 'two' is not an integer"),
    (["predict", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_usage_errors_are_one_line_with_exit_2(capsys, args, message):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0, err
    assert message in err and "Traceback" not in err


def test_bare_predict_works_and_labels_its_default_acceptance(capsys):
    from egpt_sim.traces import resolve_trace_set

    assert main(["predict", "--requests", "5"]) == 0
    out = capsys.readouterr().out
    ts = E.load_traces(resolve_trace_set(None))
    if ts.acceptance is None:  # the bundled H100 set records none: alpha = 0, said so
        assert f"acceptance: alpha = 0 (no acceptance recorded in trace set {ts.label}" in out
        assert "a lower bound" in out
    else:
        assert "acceptance: replay of the recorded verifications" in out
    header = next(ln.split() for ln in out.splitlines() if ln.split()[:1] == ["strategy"])
    assert "speedup" in header and len(out.splitlines()) > len(STRATEGY_NAMES)


def test_predict_header_shows_contention_measured_vs_assumed(capsys, example_traces):
    assert main(["predict", *EX, "--requests", "3", "--gpus", "1", "--acceptance", "0.5"]) == 0
    out = capsys.readouterr().out
    cfg = E.SimConfig(strategy="parallel_sd", n_gpus=1, acceptance=0.5, n_requests=3)
    model = E.simulate(cfg, example_traces).contention
    assert model.header() in out and model.domain == "gpu"
    table = model.table()
    for r in table.itertuples():
        source = "measured" if r.measured else "assumed"
        assert any(line.split()[:4] == [r.role, r.stage, r.peer_activity, f"{r.contention_factor:.2f}"]
                   and line.split()[4].startswith(source) for line in out.splitlines()), (r.role, r.stage, r.peer_activity)

def test_contention_missing_goes_into_sim_config(monkeypatch):
    import dataclasses

    from egpt_sim import cli

    args = cli.build_parser().parse_args(["predict", "--contention-missing", "assume:1.5"])
    has_field = "contention_missing" in {f.name for f in dataclasses.fields(E.SimConfig)}
    if has_field:
        assert cli._sim_kwargs(args) == {"contention_missing": "assume:1.5"}
    else:
        with pytest.raises(ValueError, match="no contention_missing field"):
            cli._sim_kwargs(args)
    assert cli._sim_kwargs(cli.build_parser().parse_args(["predict"])) == {}  # not given: SimConfig's default


def test_plan_takes_comma_lists_and_reports_unreachable_targets(capsys):
    args = ["plan", *EX, "--lengths", "10", "--gpus-list", "2", "--requests", "4"]
    assert main([*args, "--strategy", "prefill_then_verify,parallel_sd", "--speedup", "1.01"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["prefill_then_verify"], ["parallel_sd"])]
    assert [r[0] for r in rows] == ["prefill_then_verify", "parallel_sd"]
    assert main([*args, "--strategy", "parallel_sd", "--speedup", "50"]) == 0  # unreachable: NaN, not a KeyError
    row = next(ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("parallel_sd"))
    assert row[3] == "NaN" and row[4] == "NaN"  # alpha_required, mean_accepted_prefix_at_gamma


def test_timeline_names_the_file_it_writes(tmp_path, capsys):
    out = tmp_path / "gantt"
    assert main(["timeline", *EX, "--requests", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}.png"
    assert (tmp_path / "gantt.png").read_bytes()[:4] == b"\x89PNG" and not out.exists()


def test_traces_says_which_sets_carry_acceptance(capsys):
    from egpt_sim.traces import bundled_trace_sets

    assert main(["traces"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(bundled_trace_sets())
    for name, path in bundled_trace_sets().items():
        runs = E.load_traces(path).acceptance_runs() if "frames" not in name else []
        if runs:
            assert f"acceptance: {len(runs)} run{'s' if len(runs) > 1 else ''} ({', '.join(runs)})" in lines[name]
        else:
            assert "acceptance: none" in lines[name]


def test_every_subcommand_option_has_help_and_default(capsys):
    import argparse

    from egpt_sim import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"predict", "sweep", "timeline", "plan", "traces", "make-example"}
    for name, p in sub.choices.items():
        assert p.description, name
        options = [a for a in p._actions if a.option_strings and a.dest != "help"]
        assert all(a.help for a in options), (name, [a.dest for a in options if not a.help])
        text = p.format_help()
        assert text.count("(default:") == len(options), (name, text)
    assert "simulated requests per scenario (default: 200)" in " ".join(sub.choices["predict"].format_help().split())


def test_sweep_writes_speedup_column_and_prints_margins(tmp_path, capsys):
    from egpt_sim.analysis.sweep import read_sweep

    out = tmp_path / "s.parquet"
    assert main(["sweep", *EX, "--quick", "--requests", "10", "--out", str(out), "--gpus-list", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    df = pd.read_parquet(out)
    assert "speedup" in df.columns and "speedup_of_means" not in df.columns
    assert "paired Monte-Carlo interval" in text and " +0." in text
    assert "≈ target_only / " in text  # alpha = 0 on 2 GPUs: speculation changes nothing, a tie with the baseline
    df.rename(columns={"speedup": "speedup_of_means"}).to_parquet(tmp_path / "old.parquet")  # a file from before
    pd.testing.assert_series_equal(read_sweep(tmp_path / "old.parquet")["speedup"], df["speedup"])


def test_required_acceptance_rejects_meaningless_inputs(example_traces):
    from egpt_sim.analysis.planning import required_acceptance

    with pytest.raises(ValueError, match="target_speedup must be a finite number > 0"):
        required_acceptance(example_traces, -1.0, 10, 2, n_requests=3)
    with pytest.raises(ValueError, match="'target_only' verifies no drafts"):
        required_acceptance(example_traces, 1.05, 10, 2, strategy="target_only", n_requests=3)
    row = required_acceptance(example_traces, 50.0, 10, 2, strategy="parallel_sd", n_requests=3)
    assert np.isnan(row["level"]) and np.isnan(row["mean_accepted_prefix_at_gamma"])  # the column is always there
