"""Notebooks: thin by construction, executed with papermill on the bundled traces with small
parameters, and checked on the values they record with scrapbook (not just "it ran")."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")  # the notebooks extra (papermill, scrapbook, ipykernel)
pytest.importorskip("papermill")
pytest.importorskip("scrapbook")

import egpt_sim as E
from egpt_sim.analysis import notebooks as nbrun
from egpt_sim.traces import schema
from egpt_sim.traces.harness import factor_summary
from egpt_sim.traces.acceptance import expected_accepted_iid

QUICK = nbrun.NOTEBOOK_DIR / "params" / "quick.yaml"
NOTEBOOKS = sorted(nbrun.NOTEBOOK_DIR.glob("*.ipynb"))
STEMS = ["01_stage_timing", "02_acceptance", "03_speedup_sweep", "04_adapter_targets", "05_validation", "06_what_if_shapes"]


# --------------------------------------------------------------------------- structure (no kernel)


def test_every_notebook_is_present():
    assert [p.stem for p in NOTEBOOKS] == STEMS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = code[0]
    assert "parameters" in params.metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    lines = [ln for ln in params.source.splitlines() if ln.strip()]
    assert lines[0].startswith("#")
    for prev, line in zip(lines, lines[1:]):
        if not line.startswith("#"):
            name = line.split("=", 1)[0].strip()
            assert name.isupper() and prev.startswith("#"), f"{path.name}: {line!r} needs a comment and an UPPER_CASE name"
            compile(line.split("=", 1)[1].strip(), path.name, "eval")  # a plain literal, no derived values
            assert "(" not in line.split("=", 1)[1], f"{path.name}: {line!r} is not a plain literal"
    for cell in code:
        for word in ("def ", "class ", "lambda"):
            assert word not in cell.source, f"{path.name}: {word.strip()} in a notebook (put it in egpt_sim)"
    assert "sb.glue(" in code[-1].source, "the last cell records headline numbers with scrapbook"
    assert "FIG_DIR" in params.source


def test_yaml_and_cli_parameters(tmp_path):
    common, per = nbrun.load_params(QUICK)
    assert common["TRACES"] == "example/seed_calibrated" and per["03"]["OUTPUT_TOKENS"] == [10, 50]
    c2, p2 = nbrun.cli_params([("N_REQUESTS", "7"), ("03:ACCEPTANCE", "[0.0, 1.0]"), ("TRACES", "null")])
    assert c2 == {"N_REQUESTS": 7, "TRACES": None} and p2 == {"03": {"ACCEPTANCE": [0.0, 1.0]}}
    sweep_nb = nbrun.NOTEBOOK_DIR / "03_speedup_sweep.ipynb"
    params = nbrun.parameters_for(sweep_nb, common | c2, per)
    assert params["N_REQUESTS"] == 7 and params["OUTPUT_TOKENS"] == [10, 50]
    assert "CURVE_SOLVE" not in params  # common keys go only where declared
    with pytest.raises(ValueError, match="N_REQUEST"):
        nbrun.parameters_for(sweep_nb, {}, {"03": {"N_REQUEST": 5}})  # typo in a per-notebook key
    bad = tmp_path / "bad.yaml"
    bad.write_text("'03': 5\n")
    with pytest.raises(ValueError, match="must map"):
        nbrun.load_params(bad)
    assert [p.stem for p in nbrun.discover(only=["02", "05_validation"])] == ["02_acceptance", "05_validation"]
    with pytest.raises(ValueError, match="cannot read the params file"):
        nbrun.load_params(tmp_path / "missing.yaml")
    bad.write_text("a: [1\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML at line 2"):
        nbrun.load_params(bad)


def test_unknown_parameters_are_rejected_before_running():
    every = nbrun.discover()
    nbrun.check_parameters(every, {"N_REQUESTS": 5, "FRAMES_TRACES": None}, {"03": {"GANTT_OUTPUT_TOKENS": 4}})  # all known
    with pytest.raises(ValueError, match=r"-p: no notebook declares N_REQUEST \(did you mean N_REQUESTS\?\)"):
        nbrun.check_parameters(every, {"N_REQUEST": 5}, {}, origin="-p")  # a global typo (was silently ignored)
    with pytest.raises(ValueError, match="x.yaml: section '3' matches no notebook"):
        nbrun.check_parameters(every, {}, {"3": {"N_REQUESTS": 5}}, origin="x.yaml")
    with pytest.raises(ValueError, match="01_stage_timing declares no GAMMA"):
        nbrun.check_parameters(every, {}, {"01": {"GAMMA": 5}})  # declared by other notebooks, not by 01


@pytest.mark.parametrize("args, message", [
    (["-p", "N_REQUEST", "5"], "-p: no notebook declares N_REQUEST"),
    (["--params", "/nonexistent/params.yaml"], "/nonexistent/params.yaml: cannot read the params file"),
    (["-p", "03:GANTT", "5", "--only", "01"], "03_speedup_sweep declares no GANTT"),  # checked even when not run
])
def test_runner_cli_rejects_bad_parameters_in_one_line(tmp_path, capsys, args, message):
    assert nbrun.main(["--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "o").exists()  # nothing ran
    with pytest.raises(ValueError, match="matches no notebook"):
        nbrun.discover(only=["99"])


# --------------------------------------------------------------------------- executed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every notebook, once, with notebooks/params/quick.yaml (bundled example traces)."""
    out = tmp_path_factory.mktemp("notebooks")
    common, per = nbrun.load_params(QUICK)
    # the curve-scale solve is covered by tests/test_report.py::test_curve_requirements_scales_the_measured_curve
    per["04"]["CURVE_SOLVE"] = False
    result = nbrun.run_all(out, common=common, per=per, progress=False)
    return {r.name: r for r in result}, out


def _ok(runs, name):
    r = runs[0][name]
    assert r.ok, f"{name} failed: {r.error}"
    assert r.figures or name == "05_validation"
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in r.figures)
    return r.scraps


@pytest.mark.notebooks
def test_index_links_every_notebook(runs):
    index = (runs[1] / "index.md").read_text()
    for stem in STEMS:
        assert f"[{stem}]({stem}.ipynb)" in index and (runs[1] / f"{stem}.ipynb").exists()
    assert "figures/03_speedup_sweep/speedup_heatmaps.png" in index
    assert "headline.target_phase_ms" in index


@pytest.mark.notebooks
def test_01_stage_timing_records_trace_numbers(runs, example_traces):
    s = _ok(runs, "01_stage_timing")
    ok = example_traces.ok_rows
    alone = ok[ok["placement"] == "alone"]
    h = s["headline"]
    assert h["n_samples"] == ok["sample_id"].nunique() == 40
    for role in ("target", "drafter"):
        pre = alone[(alone["role"] == role) & (alone["stage"] == "prefill")]
        assert h[f"{role}_prefill_ms"] == pytest.approx(pre["duration_ms"].median())
        assert h[f"{role}_prompt_tokens"] == int(pre["prompt_tokens"].median())
    assert h["target_phase_ms"] > h["drafter_phase_ms"] > 0 and h["prefill_phase_ratio"] > 1
    assert len(s["stage_median_ms"]) == 10 and all(v > 0 for v in s["stage_median_ms"].values())
    assert s["trace_source"] == "seed-calibrated example" and s["memory_recorded"] is False
    assert s["contention_factors"] and all(v >= 1.0 for v in s["contention_factors"].values())


@pytest.mark.notebooks
def test_02_acceptance_matches_the_trace(runs, example_traces):
    s = _ok(runs, "02_acceptance")
    acc = example_traces.acceptance
    blocks = acc.groupby(["sample_id", "verify_id"])[["accepted_len", "gamma"]].first()
    assert s["per_token_match_rate"] == pytest.approx(acc["matched"].mean())
    assert s["mean_accepted_prefix_len"] == pytest.approx(blocks["accepted_len"].mean())
    assert s["n_verifications"] == len(blocks) and s["mean_gamma"] == 16
    p = np.array(s["p_accept_len_gt"])
    assert p[0] == pytest.approx((blocks["accepted_len"] > 0).mean())
    assert np.all(np.diff(p) <= 1e-12) and len(p) == 16
    alpha = s["per_token_match_rate"]
    np.testing.assert_allclose(s["iid_p_accept_len_gt"], alpha ** np.arange(1, 17))
    overall = s["rates"][0]
    assert overall["seeds_drafts_x_rate"] == pytest.approx(16 * alpha)
    assert overall["mean_accepted_prefix_len"] < overall["seeds_drafts_x_rate"] / 5  # prefix, not drafts x rate


@pytest.mark.notebooks
def test_03_speedup_sweep_tables(runs):
    s = _ok(runs, "03_speedup_sweep")
    # quick.yaml: 3 strategies + target_only, 2 lengths, 3 alphas, 2 GPU counts
    assert s["n_scenarios"] == 4 * 2 * 3 * 2
    best = s["best_strategy"]
    assert len(best) == 2 * 2 * 3
    assert {b["strategy"] for b in best} <= {"target_only", "prefill_then_verify", "parallel_sd", "adaptive_budget"}
    assert all(b["speedup"] >= 1.0 - 1e-9 for b in best)  # target_only is always a candidate
    lo, hi = s["speedup_range"]
    assert 0 < lo <= 1.0 <= hi
    cell = [b for b in best if b["n_gpus"] == 2 and b["acceptance"] == 1.0 and b["output_tokens"] == 50][0]
    assert cell["strategy"] != "target_only" and cell["speedup"] > 1.0  # perfect drafts pay on 2 GPUs
    for b in best:  # margin over the runner-up, and a tie exactly when it is inside its paired interval
        assert b["margin"] >= 0 and b["margin_ci"] >= 0 and b["runner_up"] not in (None, b["strategy"])
        assert b["tie"] == (b["margin"] <= b["margin_ci"] + 1e-9)
    for b in s["break_even"]:
        assert b["break_even_alpha"] is None or 0.0 <= b["break_even_alpha"] <= 1.0
    assert set(s["gantt_latency_ms"]) == {"target_only", "prefill_then_verify", "parallel_sd", "adaptive_budget"}
    assert all(v > 0 for v in s["gantt_latency_ms"].values())
    serving = pytest.importorskip("egpt_sim.serving")
    assert serving and s["serving_rows"] == 3 * 2  # target_only, colocated, split x 2 rates


@pytest.mark.notebooks
def test_04_adapter_targets(runs):
    s = _ok(runs, "04_adapter_targets")
    req = s["required_alpha"]
    assert len(req) == 2 * 2
    for r in req:
        assert r["level"] is None or 0.0 <= r["level"] <= 1.0
        assert r["max_speedup"] > 0
    assert any(r["level"] is not None for r in req if r["n_gpus"] == 2)
    assert s["curve_scale"] == []  # switched off in this run
    for r in s["seed_scenarios"]:
        a = r["alpha_per_token"]
        assert r["seed_claim_accepted"] == pytest.approx(26 * a)
        assert r["prefix_expected_accepted"] == pytest.approx(expected_accepted_iid(a, 26))
        assert r["prefix_expected_accepted"] < r["seed_claim_accepted"] and r["speedup"] > 0
    assert {r["scenario"] for r in s["seed_scenarios"]} == {"seed adapter (27.9%)", "target 50%", "optimistic 70%", "seed plan 80%"}
    speed = {(r["strategy"], r["n_gpus"], r["drafter_speed"]): r["speedup"] for r in s["sensitivity_drafter_speed"]}
    assert len(speed) == 2 * 2 * 2 and all(v > 0 for v in speed.values())
    assert speed[("parallel_sd", 2, 2.0)] >= speed[("parallel_sd", 2, 1.0)]  # a faster drafter never hurts on its own GPU
    cont = {(r["strategy"], r["contention_scale"]): r["speedup"] for r in s["sensitivity_contention"]}
    assert cont[("parallel_sd", 0.0)] >= cont[("parallel_sd", 1.0)]  # contention only slows the shared GPU


@pytest.mark.notebooks
def test_05_validation_says_when_there_is_no_data(runs):
    s = _ok(runs, "05_validation")
    if s["validation_available"]:
        assert s["n_cells"] > 0 and runs[0]["05_validation"].figures
    else:
        assert s["validation_message"].startswith("no validation data") and s["n_cells"] == 0
        nb = nbformat.read(runs[0]["05_validation"].output, as_version=4)
        shown = json.dumps([o for c in nb.cells for o in c.get("outputs", [])])
        assert "No validation data" in shown


@pytest.mark.notebooks
def test_06_what_if_shapes(runs):
    s = _ok(runs, "06_what_if_shapes")
    # quick.yaml: 3 target frame counts x 2 drafter sizes x 2 GPU counts x (target_only + 2 strategies)
    assert s["n_scenarios"] == len(s["sweep"]) == 3 * 2 * 2 * 3
    rows = {(r["target_frames"], r["drafter_params_b"], r["n_gpus"], r["strategy"]): r for r in s["sweep"]}
    for key, r in rows.items():  # the recorded shape (8 frames, the measured 7.06 B drafter) is replayed, the rest modelled
        recorded = key[:2] == (8, 7.06) or (key[0] == 8 and key[3] == "target_only")  # target_only: the target alone
        assert r["time_source"] == ("trace" if recorded else "model"), key
    for g in (1, 2):
        for p in (1.0, 7.06):
            w = [rows[(f, p, g, "prefill_then_verify")]["window_ms"] for f in (1, 8, 32)]
            assert w[0] < w[1] < w[2]  # a longer target prompt opens a longer window
        for f in (1, 8, 32):  # a smaller drafter on its own GPU drafts faster and never loses
            assert rows[(f, 1.0, 2, "parallel_sd")]["speedup"] >= rows[(f, 7.06, 2, "parallel_sd")]["speedup"]
            assert rows[(f, 1.0, g, "prefill_then_verify")]["window_drafts"] <= 8  # at most GAMMA drafts hide
    assert all(r["speedup"] == pytest.approx(1.0) for r in s["sweep"] if r["strategy"] == "target_only")
    assert len(s["pays"]) == 3 * 2 * 2 and all(p["pays"] == (p["speedup"] > 1.0) for p in s["pays"])
    assert any(p["pays"] for p in s["pays"] if p["n_gpus"] == 2)
    laws = {(law["role"], law["stage"], law["gamma"]): law for law in s["laws"]}
    assert laws[("target", "prefill", 0)]["form"] == "roofline" and laws[("target", "prefill", 0)]["n_shapes"] >= 6
    assert laws[("drafter", "prefill", 0)]["source"].startswith("borrowed from target")
    hold = {r["stage"]: r for r in s["holdout_summary"] if r["gamma"] == 0}
    assert hold["decode_step"]["median_abs_err_pct"] < 2 and hold["prefill"]["median_abs_err_pct"] < 5
    assert s["acceptance"].startswith("measured per-position curve of h200/validation-graphs-1gpu run acc-sigma0.03")


@pytest.mark.notebooks
@pytest.mark.skipif(nbrun.measure_available() is not None, reason=f"measure cannot run: {nbrun.measure_available()}")
def test_01_runs_measure_on_cpu(tmp_path):
    run = nbrun.run_notebook(nbrun.NOTEBOOK_DIR / "01_stage_timing.ipynb", tmp_path,
                             {"RUN_MEASURE": True, "MEASURE_DEVICE": "cpu", "MEASURE_SAMPLES": 2, "MEASURE_DECODE_STEPS": 3})
    assert run.ok, run.error
    s = run.scraps
    assert s["trace_source"] == "measured" and s["headline"]["n_samples"] == 2
    assert s["memory_recorded"] is True  # measure writes kv_bytes on prefill rows
    ts = E.load_traces(tmp_path / "_runs" / "measured" / "traces")
    assert s["headline"]["target_prompt_tokens"] == ts.prompt_tokens("target")
    assert not math.isnan(s["headline"]["target_decode_ms"])


@pytest.mark.notebooks
@pytest.mark.skipif(nbrun.measure_available() is not None, reason=f"measure cannot run: {nbrun.measure_available()}")
def test_05_plots_measured_vs_predicted_from_a_cpu_validation_run(tmp_path):
    import subprocess
    import sys

    val = tmp_path / "val"
    subprocess.run([sys.executable, "-m", "measure.validation_run", "--out", str(val), "--target", "random:tiny",
                    "--drafter", "random:tiny", "--n-requests", "2", "--lengths", "5,10", "--sigmas", "0.1",
                    "--device", "cpu", "--dtype", "fp32", "--stage-samples", "2"],
                   cwd=nbrun.ROOT, check=True, capture_output=True)
    run = nbrun.run_notebook(nbrun.NOTEBOOK_DIR / "05_validation.ipynb", tmp_path / "nb",
                             {"VALIDATION_DIR": str(val), "N_PREDICTED": 50, "DECODE_FROM": "stages"})
    assert run.ok, run.error
    s = run.scraps
    results = pd.read_parquet(val / "executor_results.parquet")
    assert s["validation_available"] is True
    assert s["n_cells"] == len(results.groupby(["strategy", "output_tokens", results["sigma"].fillna(0.1)]))
    assert s["validation_overall"]["n_cells"] == s["n_cells"] and s["validation_overall"]["median_abs_error_pct"] >= 0
    assert sorted(f.name for f in run.figures) == ["activity_residuals.png", "measured_vs_predicted.png"]
    assert s["n_summary_rows"] > 0  # every bundled H200 grid, from its validation_overall.json
    strategies = set(results["strategy"])
    assert s["n_residual_rows"] >= len(strategies) * 4  # every strategy: at least load..prefill of the target
    # the stage protocol was also run by the executor's workers, naming the stage runs it corrects
    st = pd.read_parquet(val / "stage_timings.parquet")
    runs = json.loads((val / "metadata.json").read_text())["runs"]
    serving = [r for r, m in runs.items() if m.get("harness") == "serving_workers"]
    assert len(serving) == 1
    rows = st[(st["run_id"] == serving[0]) & (st["stage"] == "decode_step")]
    assert set(rows["role"]) == {"target", "drafter"} and set(rows["sample_id"]) == set(st["sample_id"])
    assert runs[serving[0]]["harness_of"] and set(runs[serving[0]]["harness_of"]) <= set(st["run_id"])
    gaps = runs[serving[0]]["serving_loop_gaps_ms"]  # the reference requests' host time between passes
    assert len(gaps["target"]) >= 2 * (10 - 2) and min(gaps["target"]) >= 0
    assert E.load_traces(val).pass_gap_ms["target"] == pytest.approx(float(np.median(gaps["target"])))
    ref = runs[serving[0]]["serving_reference_stage_ms"]["target"]  # prefill phase (one per sample), decode steps
    assert set(ref) == set(schema.REFERENCE_STAGES) and len(ref["load"]) >= 2
    assert len({len(ref[s]) for s in schema.PREFILL_PHASE_STAGES}) == 1 and min(ref["load"]) > 0
    assert len(ref["decode_step"]) >= len(ref["load"]) * (10 - 2) and min(ref["decode_step"]) > 0
    assert {"target/load", "target/decode_step"} <= set(factor_summary(E.load_traces(val).serving_factors))


@pytest.mark.notebooks
def test_cli_fails_nonzero_when_a_notebook_fails(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("# answer\nVALUE = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import scrapbook as sb\nsb.glue('value', VALUE)\nassert VALUE == 1, 'boom'")]
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "01_x.ipynb")
    assert nbrun.main(["--out", str(tmp_path / "bad"), "--notebooks-dir", str(tmp_path / "nbs"), "-p", "VALUE", "2"]) == 1
    assert "FAILED" in (tmp_path / "bad" / "index.md").read_text() and "boom" in (tmp_path / "bad" / "index.md").read_text()
    assert nbrun.main(["--out", str(tmp_path / "t"), "--notebooks-dir", str(tmp_path / "nbs"), "-p", "01:VALU", "2"]) == 2
