"""Markdown report and analysis tables: sections in the seeds' shape, numbers taken from
the data (never a report of zeros), clear errors for unusable trace sets."""

import re

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.analysis import report as R, tables as T
from egpt_sim.traces import schema
from egpt_sim.traces.schema import TraceError

SECTIONS = ["## Executive summary", "## 5-stage timing comparison", "## Prefill comparison",
            "## Token generation statistics", "## GPU memory", "## Same-GPU contention",
            "## Parallel execution analysis", "## Acceptance (three named numbers)", "## Key findings",
            "## Implications for speculative decoding"]
SMALL = dict(n_requests=8, plan_tol=0.1)


def rewrite(folder, fn) -> None:
    """Apply ``fn`` to the stage timings of a trace-set folder and write them back (validated)."""
    path = folder / "stage_timings.parquet"
    st = pd.read_parquet(path).drop(columns=["schema_version"])
    schema.write_table(fn(st), path, schema.STAGE_TIMINGS_FILE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return R.build_report("example/seed_calibrated", out, output_tokens=20, **SMALL), out


def test_report_has_every_section_and_figure(built):
    path, out = built
    text = path.read_text()
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions), "sections out of the seeds' order"
    for png in ("stages", "contention", "timeline_1gpu", "timeline_2gpu", "acceptance_curves", "prefix_lengths",
                "acceptance_rates", "strategy_speedups", "seed_scenarios"):
        assert f"]({png}.png)" in text
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_numbers_come_from_the_data(built, example_traces):
    text = built[0].read_text()
    ok = example_traces.ok_rows
    alone = ok[ok["placement"] == "alone"]
    for role, col in (("drafter", 1), ("target", 2)):
        d = alone[(alone["role"] == role) & (alone["stage"] == "prefill")]["duration_ms"]
        iqr = d.quantile(0.75) - d.quantile(0.25)
        row = next(line for line in text.splitlines() if line.startswith("| Stage 4: LLM prefill"))
        assert row.split("|")[col + 1].strip() == f"{d.median():.1f} ± {iqr:.1f} ms"
    match_rate = example_traces.acceptance["matched"].mean()
    assert f"| Per-token match rate (acceptance run seed-calibrated-example) | {match_rate:.3f} |" in text
    prefix = example_traces.acceptance.groupby(["sample_id", "verify_id"])["accepted_len"].first().mean()
    assert f"{prefix:.2f} of 16 drafts" in text
    tokens = int(alone[(alone["role"] == "target") & (alone["stage"] == "prefill")]["prompt_tokens"].median())
    assert f"{tokens} tokens" in text
    assert "0.0 ± 0.0" not in text and "| 0.00x" not in text  # the seeds' all-zero report


def test_report_names_acceptance_and_carries_provenance(built, example_traces):
    text = built[0].read_text()
    for name in ("per-token match rate", "mean accepted prefix length", "P(accepted length > i)"):
        assert name in text
    prov = example_traces.provenance()
    n_tables = len(re.findall(r"^\|---", text, flags=re.M))
    n_figures = len(re.findall(r"^!\[", text, flags=re.M))
    assert text.count(f"Source: {prov}") == n_tables + n_figures
    assert "Not measured" in text  # the example set is labelled as such


def test_report_findings_use_simulated_speedups(built):
    text = built[0].read_text()
    findings = text.split("## Key findings")[1].split("## Implications")[0]
    assert re.search(r"prefill_then_verify runs at \d\.\d{3}x", findings)
    assert re.search(r"\*\*Best at 20 tokens on 2 GPUs\*\*: \w+ at \d\.\d{3}x", findings)
    implications = text.split("## Implications for speculative decoding")[1]
    assert "seed_claim_accepted" in implications and "alpha_required" in implications


def test_zero_ok_samples_raise(example_trace_dir, tmp_path):
    rewrite(example_trace_dir, lambda st: st.assign(status="failed"))
    with pytest.raises(TraceError, match="status 'ok'"):
        R.build_report(example_trace_dir, tmp_path / "out", **SMALL)
    assert not (tmp_path / "out" / "report.md").exists()


def test_missing_stage_raises_naming_it(example_trace_dir, tmp_path):
    rewrite(example_trace_dir, lambda st: st[~((st["role"] == "drafter") & (st["stage"] == "vision_encode"))])
    with pytest.raises(TraceError, match="drafter/vision_encode"):
        R.build_report(example_trace_dir, tmp_path / "out", **SMALL)
    assert not (tmp_path / "out" / "report.md").exists()


def test_missing_decode_rows_raise(example_trace_dir, tmp_path):
    rewrite(example_trace_dir, lambda st: st[~((st["role"] == "target") & (st["stage"] == "decode_step"))])
    with pytest.raises(TraceError, match="decode_step"):
        R.build_report(example_trace_dir, tmp_path / "out", **SMALL)


def test_memory_and_frames_sections_when_columns_present(example_trace_dir, tmp_path):
    def add(st):
        pre = st["stage"] == "prefill"
        st = st.assign(kv_bytes=pd.array(np.where(pre, st["prompt_tokens"] * 524288, pd.NA), dtype="Int64"),
                       peak_mem_mb=np.where(pre, 15000.0, np.nan))
        extra = st[(st["role"] == "target") & (st["placement"] == "alone") & st["stage"].isin(["vision_encode", "prefill"])]
        extra = extra.assign(frames=16, prompt_tokens=9260, sample_id=extra["sample_id"] + "-f16")
        return pd.concat([st, extra], ignore_index=True)

    rewrite(example_trace_dir, add)
    ts = E.load_traces(example_trace_dir)
    mem = T.memory_table(ts).set_index("role")
    assert mem.loc["target", "kv_mb"] == pytest.approx(4643 * 0.5)  # 0.5 MiB per token
    assert mem.loc["drafter", "peak_mem_mb"] == 15000.0
    assert T.stage_table(ts).query("role == 'target' and stage == 'prefill'")["frames"].item() == 8
    text = R.build_report(ts, tmp_path / "out", plan=False, seed_scenarios=False, n_requests=5).read_text()
    assert "2321.5" in text and "](memory.png)" in text
    assert "### Token scaling over frames" in text and "](prefill_scaling.png)" in text


def test_no_acceptance_table_reports_it_and_simulates_alpha_zero(example_trace_dir, tmp_path):
    (example_trace_dir / "acceptance.parquet").unlink()
    text = R.build_report(example_trace_dir, tmp_path / "out", plan=False, seed_scenarios=False, n_requests=5).read_text()
    assert "No acceptance table in this trace set" in text
    assert "alpha = 0 (no acceptance recorded" in text


def test_tables_from_the_example(example_traces):
    st = T.stage_table(example_traces)
    assert len(st) == 10 and (st["median_ms"] > 0).all() and (st["q75_ms"] >= st["q25_ms"]).all()
    pf = T.prefill_table(example_traces).set_index("role")
    assert pf.loc["target", "prompt_tokens"] == 4643 and pf.loc["drafter", "prompt_tokens"] == 636
    assert pf.loc["target", "phase_median_ms"] > pf.loc["target", "prefill_median_ms"] > 0
    tok = T.token_table(example_traces).set_index("role")
    assert tok.loc["target", "tok_per_s"] == pytest.approx(1000 / tok.loc["target", "decode_median_ms"])
    rates = T.acceptance_rates(example_traces)
    assert list(rates["group"]) == ["all verifications", "window block (verify 0)", "later blocks"]
    assert (rates["mean_accepted_prefix_len"] < rates["seeds_drafts_x_rate"]).all()
    assert T.memory_table(example_traces) is None
    assert T.verify_table(example_traces)["vs_decode_step"].lt(1.0).all()


def test_speedup_sweep_is_exactly_the_requested_grid(example_traces):
    sw = T.speedup_sweep(example_traces, ["parallel_sd"], output_tokens=[10], acceptance=[0.0, 1.0], n_gpus=[2],
                         n_requests=3, gamma=4)
    assert len(sw) == 2 * 2 and set(sw["strategy"]) == {"target_only", "parallel_sd"}
    assert (sw["gamma"] == 4).all() and (sw["speedup"] > 0).all() and "speedup_of_means" not in sw.columns


@pytest.mark.parametrize("column", ["speedup", "speedup_of_means"])  # the second: a sweep file from before the rename
def test_break_even_table(column):
    sweep = pd.DataFrame({"strategy": ["s"] * 3 + ["target_only"], "n_gpus": [1] * 4, "output_tokens": [10] * 4,
                          "acceptance": [0.0, 0.5, 1.0, 0.0], column: [0.9, 1.05, 1.2, 1.0]})
    be = T.break_even_table(sweep)
    assert len(be) == 1 and be["break_even_alpha"].item() == 0.5 and be["max_speedup"].item() == 1.2
    assert np.isnan(T.break_even_table(sweep, threshold=2.0)["break_even_alpha"].item())


def test_curve_requirements_scales_the_measured_curve(example_traces):
    t = T.curve_requirements(example_traces, 1.05, [20], [2], n_requests=5, tol=0.1)
    assert t["kind"].eq("curve_scale").all()
    assert (t["level"].isna() | (t["level"] >= 0)).all() and (t["max_speedup"] > 0).all()


def test_records_are_json_safe():
    df = pd.DataFrame({"a": [1.0, np.nan], "b": [np.int64(3), np.int64(4)], "c": ["x", None]})
    assert T.records(df) == [{"a": 1.0, "b": 3, "c": "x"}, {"a": None, "b": 4, "c": None}]
    assert T.records(None) == []


def test_load_validation_without_data(tmp_path):
    v = T.load_validation(tmp_path / "nope")
    assert not v.available and v.message.startswith("no validation data") and v.cells is None


def test_load_validation_with_a_compare(tmp_path, monkeypatch):
    from egpt_sim.analysis import validation

    cells = pd.DataFrame({"strategy": ["target_only"], "output_tokens": [20], "sigma": [0.0], "n_measured": [5],
                          "measured_median_ms": [1000.0], "predicted_median_ms": [1010.0], "error_pct": [1.0],
                          "ks_pvalue": [0.5], "tost_equivalent": [True]})
    monkeypatch.setattr(validation, "compare_dir", lambda folder: (cells, {"median_abs_error_pct": 1.0}))
    v = T.load_validation(tmp_path)
    assert v.available and len(v.cells) == 1 and "median |error| 1.0 %" in v.message
    assert str(tmp_path) in v.caption


def test_cli_writes_report_and_fails_in_one_line(tmp_path, capsys):
    assert R.main(["--traces", "example/seed_calibrated", "--out", str(tmp_path), "--requests", "5", "--no-plan",
                   "--no-seed-scenarios", "--gpus", "2"]) == 0
    assert (tmp_path / "report.md").exists() and "wrote" in capsys.readouterr().out
    assert R.main(["--traces", "/nonexistent/set", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/nonexistent/set" in err


# --------------------------------------------------------------------------- H100 sets, per-run acceptance

def _bundled(name):
    from egpt_sim.traces import bundled_trace_sets

    if name not in bundled_trace_sets():
        pytest.skip(f"bundled trace set {name} not present")
    return name


def test_frames_sweep_loads_for_analysis():
    name = _bundled("h100/frames")
    ft = T.frames_table(T.optional_trace_set(name, "unused"))
    assert ft["frames"].nunique() >= 2 and (ft["prompt_tokens"].diff().dropna() > 0).all()


def test_acceptance_split_by_run_keeps_runs_apart(example_traces):
    a = example_traces.acceptance
    rates = T.acceptance_rates(example_traces, by="run_id")
    assert rates.iloc[0]["group"] == "all verifications"
    by = T.acceptance_by_group(example_traces, "run_id")
    for run, d in a.groupby("run_id"):
        g = by[by["run_id"] == run]
        blocks = d.groupby(["sample_id", "verify_id"])["accepted_len"].first()
        # mean accepted prefix length = sum_i P(accepted length > i)
        assert g["p_accept_len_gt"].fillna(0).sum() == pytest.approx(blocks.mean())
        assert g["per_token_match_rate_pooled"].iloc[0] == pytest.approx(d["matched"].mean())
    with pytest.raises(ValueError, match="no column"):
        T.acceptance_rates(example_traces, by="nope")
    assert "acceptance:" in T.acceptance_caption(example_traces)


def test_contention_table_names_the_concurrency_the_simulator_uses(example_traces):
    ct = T.contention_table(example_traces)
    assert "concurrency" in ct and ct["concurrency"].nunique() == 1
    cc = T.contention_by_concurrency(example_traces)
    assert set(ct["concurrency"]) <= set(cc["concurrency"]) | {"any"}


def test_acceptance_curve_of_one_run(example_traces):
    run = example_traces.acceptance["run_id"].iloc[0]
    curve = T.acceptance_curve(example_traces, run)
    assert len(curve) >= 1 and all(0.0 <= c <= 1.0 for c in curve)
    with pytest.raises(ValueError, match="no acceptance rows"):
        T.acceptance_curve(example_traces, "missing-run")


# --------------------------------------------------------------------------- issue 15: captions name acceptance


def _captions(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("*Source:", "*Figure:"))]


def test_every_caption_names_the_acceptance(built):
    caps = _captions(built[0].read_text())
    assert len(caps) > 20 and all("; acceptance: " in c for c in caps), [c for c in caps if "; acceptance: " not in c]
    simulated = [c for c in caps if "strategy_speedups" in c or "timeline of one request" in c]
    assert simulated and all("acceptance: replay of the recorded verifications (acceptance run seed-calibrated-example)" in c
                             for c in simulated)


def test_default_alpha_zero_is_stated_in_captions_and_figures(example_trace_dir, tmp_path):
    (example_trace_dir / "acceptance.parquet").unlink()
    out = tmp_path / "out"
    text = R.build_report(example_trace_dir, out, plan=False, seed_scenarios=False, n_requests=5, alphas=()).read_text()
    implications = text.split("## Implications for speculative decoding")[1]
    cap = next(c for c in _captions(implications) if c.startswith("*Source:"))
    assert "acceptance: alpha = 0 (no acceptance recorded in trace set" in cap and "a lower bound" in cap
    fig = next(c for c in _captions(implications) if c.startswith("*Figure:"))
    assert "alpha = 0 (no acceptance recorded" in fig


@pytest.fixture
def two_runs_dir(example_trace_dir):
    """The example set with a second acceptance run (every draft rejected), in metadata too."""
    import json

    acc = pd.read_parquet(example_trace_dir / "acceptance.parquet").drop(columns=["schema_version"])
    second = acc.assign(run_id="all-rejected", matched=False, accepted_len=0, target_in_draft_top5=False)
    schema.write_table(pd.concat([acc, second], ignore_index=True), example_trace_dir / "acceptance.parquet",
                       schema.ACCEPTANCE_FILE)
    meta_path = example_trace_dir / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["runs"]["all-rejected"] = dict(next(iter(meta["runs"].values())))
    meta_path.write_text(json.dumps(meta))
    return example_trace_dir


def test_pooled_acceptance_runs_are_announced_with_a_per_run_table(two_runs_dir, tmp_path):
    kw = dict(plan=False, seed_scenarios=False, n_requests=5, alphas=())
    text = R.build_report(two_runs_dir, tmp_path / "pooled", **kw).read_text()
    assert "**2 acceptance runs are recorded** (all-rejected, seed-calibrated-example)" in text
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| all-rejected") or
            ln.startswith("| seed-calibrated-example")}
    assert set(rows) == {"all-rejected", "seed-calibrated-example"}
    assert rows["all-rejected"].split("|")[4].strip() == "0.000"  # its per-token match rate, not the pooled one
    assert "Per-token match rate (pooled over 2 acceptance runs" in text
    assert "acceptance runs POOLED (all-rejected, seed-calibrated-example); choose one with --acceptance-run" in text
    one = R.build_report(two_runs_dir, tmp_path / "one", acceptance_run="all-rejected", **kw).read_text()
    assert "POOLED" not in one and "acceptance runs are recorded" not in one
    assert "| Per-token match rate (acceptance run all-rejected) | 0.000 |" in one


@pytest.mark.parametrize("args, message", [
    (["--acceptance", "abc"], "argument --acceptance: 'abc' is not one of"),
    (["--acceptance-run", "nope"], "no run 'nope'"),
    (["--gpus", "1,x"], "argument --gpus: 'x' is not an integer"),
    (["--target-speedup", "-2"], "argument --target-speedup: must be a finite number > 0"),
])
def test_report_cli_rejects_bad_input_in_one_line(tmp_path, capsys, args, message):
    try:
        code = R.main(["--traces", "example/seed_calibrated", "--out", str(tmp_path / "r"), "--requests", "3", *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "r" / "report.md").exists()
