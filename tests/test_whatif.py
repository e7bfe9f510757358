"""What-if shapes: cost models recover known laws, unmeasured shapes draw from them (and
say so), measured shapes replay the trace exactly, SimPy and the fast path stay equal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim import cli, whatif as W
from egpt_sim.whatif import costmodel as C
from egpt_sim.fast import run_grid, simulate_fast
from egpt_sim.sim.runner import draw_bank
from egpt_sim.traces.schema import TraceError

GRAPHS = "h200/graphs-fp16"
FLOAT_COLS = ("latency_ms", "ttft_ms", "target_prefill_end_ms", "drafter_prefill_end_ms", "baseline_latency_ms", "speedup")
INT_COLS = ("drafted_tokens", "window_drafts", "wasted_drafts", "accepted_tokens", "window_accepted", "verify_passes",
            "target_passes")

# the known laws of the synthetic set (ms; x = prompt tokens, KV tokens or vision tokens)
FLOOR_MS, PER_TOKEN_MS = 40.0, 0.03          # prefill = max(40, 0.03 ms/token)
DEC_A_MS, DEC_B_MS = 8.0, 0.0013             # decode step = 8 + 0.0013 ms per KV token
PRE_A_MS, PRE_B_MS = 3.0, 0.015              # preprocess = 3 + 0.015 ms per vision token
VISION_MS = 15.0                             # vision encode: flat


def _law_rows(rng, role: str, frames: int, tokens_per_frame: int, text: int, n: int, noise: float) -> list[dict]:
    """Alone rows of one shape following the known laws, with lognormal noise ``noise``."""
    p = text + frames * tokens_per_frame
    vt = frames * (tokens_per_frame + (1 if role == "drafter" else 0))
    rows = []
    for s in range(n):
        base = dict(run_id=f"{role}-f{frames}", sample_id=f"{s:03d}", role=role, prompt_tokens=p, frames=frames,
                    placement="alone", concurrency="none", peer_busy=False, start_ms=np.nan, status="ok")
        phase = {"load": 10.0, "preprocess": PRE_A_MS + PRE_B_MS * vt, "vision_encode": VISION_MS,
                 "prefill": max(FLOOR_MS, PER_TOKEN_MS * p)}
        for stage, ms in phase.items():
            rows.append(base | dict(stage=stage, step=0, gamma=0, kv_tokens=0, query_tokens=p if stage == "prefill" else 0,
                                    duration_ms=ms * rng.lognormal(0, noise)))
        for i in range(6):
            rows.append(base | dict(stage="decode_step", step=i, gamma=0, kv_tokens=p + i, query_tokens=1,
                                    duration_ms=(DEC_A_MS + DEC_B_MS * (p + i)) * rng.lognormal(0, noise)))
        for j, g in enumerate((1, 8)):
            rows.append(base | dict(stage="verify", step=j, gamma=g, kv_tokens=p, query_tokens=g + 1,
                                    duration_ms=(DEC_A_MS + DEC_B_MS * p) * (1.05 + 0.01 * g) * rng.lognormal(0, noise)))
    return rows


def known_law_traces(noise: float = 0.02, frames=(1, 2, 4, 8, 16, 32)) -> E.TraceSet:
    """Target at ``frames`` x 257 tokens (+16 text), drafter at one shape (1 frame, 576 + 44)."""
    rng = np.random.default_rng(7)
    rows = [r for f in frames for r in _law_rows(rng, "target", f, 257, 16, 6, noise)]
    rows += _law_rows(rng, "drafter", 1, 576, 44, 6, noise)
    st = pd.DataFrame(rows)
    st["kv_bytes"] = pd.array(np.where(st["stage"] == "prefill", st["prompt_tokens"] * 2**19, pd.NA), dtype="Int64")
    models = {"target": {"n_params": 7.0e9}, "drafter": {"n_params": 7.0e9}}
    runs = {rid: {"gpu_name": "synthetic GPU", "decode_backend": "graphs", "models": models, "source": "synthetic"}
            for rid in st["run_id"].unique()}
    return E.TraceSet.from_frames(st, None, {"schema_version": "1.1", "runs": runs, "label": "known-law synthetic"})


@pytest.fixture(scope="module")
def graphs():
    return E.load_traces(GRAPHS)


@pytest.fixture(scope="module")
def known():
    return known_law_traces()


# --------------------------------------------------------------------------- cost models


def test_roofline_fit_recovers_exact_points():
    x = np.array([250.0, 500, 1000, 2000, 4000, 8000])
    floor, b, c = C.fit_roofline(x, np.maximum(FLOOR_MS, PER_TOKEN_MS * x))
    assert floor == pytest.approx(FLOOR_MS) and b == pytest.approx(PER_TOKEN_MS, rel=1e-6) and c == pytest.approx(0, abs=1e-12)
    a, b2 = C.fit_affine(x, DEC_A_MS + DEC_B_MS * x)
    assert (a, b2) == (pytest.approx(DEC_A_MS), pytest.approx(DEC_B_MS))
    flat = C.fit_law("vision_encode", x, np.full(6, VISION_MS) * [1.0, 1.02, 0.98, 1.01, 0.99, 1.03])
    assert flat.form == "flat" and flat(1e5) == pytest.approx(VISION_MS, rel=0.03)  # within noise of the floor: flat
    assert C.fit_law("prefill", x[:1], np.array([40.0])) is None  # one shape fits no law


def test_cost_model_recovers_a_known_law_from_noisy_traces(known):
    cm = C.fit_cost_model([known])
    pf = cm.law("target", "prefill")
    assert pf.form == "roofline" and pf.source == "fitted" and pf.n_shapes == 6
    floor, b, c = pf.params
    assert floor == pytest.approx(FLOOR_MS, rel=0.03) and b == pytest.approx(PER_TOKEN_MS, rel=0.05)
    assert c * 8240**2 < 0.03 * PER_TOKEN_MS * 8240  # no attention term in this law
    for tokens in (600, 3000, 6000, 12000):  # unmeasured shapes, one an extrapolation
        assert cm.median_ms("target", "prefill", tokens) == pytest.approx(max(FLOOR_MS, PER_TOKEN_MS * tokens), rel=0.04)
    dec = cm.law("target", "decode_step")
    assert dec.params == (pytest.approx(DEC_A_MS, rel=0.05), pytest.approx(DEC_B_MS, rel=0.06))
    assert cm.law("target", "preprocess").params[1] == pytest.approx(PRE_B_MS, rel=0.06)
    assert cm.law("target", "vision_encode").form == "flat"
    assert cm.kv_mb("target", 1000) == pytest.approx(500.0)  # 2**19 bytes per token
    assert 0.005 < pf.residual_sd_log < 0.05  # the 2 % noise is kept as spread, not lost


def test_a_role_with_one_shape_borrows_the_other_roles_law(known):
    cm = C.fit_cost_model([known])
    law = cm.law("drafter", "decode_step")
    assert law.source.startswith("borrowed from target") and law.n_shapes == 1
    measured = np.nanmedian(cm.data["drafter"].decode_ms)
    assert law(620) == pytest.approx(measured, rel=0.02)  # rescaled to the drafter's own level
    t = cm.table()
    assert set(t["source"].str.split(" ").str[0]) == {"fitted", "borrowed"}


def test_measured_graphs_laws_have_the_documented_forms(graphs):
    cm = W.cost_model_for(graphs)
    assert "h200/graphs-frames" in cm.sets and cm.backend == "graphs"
    assert cm.law("target", "prefill").form == "roofline" and cm.law("target", "decode_step").form == "affine"
    assert cm.median_ms("target", "prefill", 500) == pytest.approx(42.8, rel=0.05)  # the ~42 ms floor
    assert cm.median_ms("target", "prefill", 8240) == pytest.approx(280.1, rel=0.05)


def test_auto_cost_model_sets_share_gpu_backend_and_precision(graphs):
    h100 = E.load_traces("h100/fp16")
    names = [C.set_label(ts) for ts in W.cost_model_sets(h100)]
    assert names[0] == "h100/fp16" and "h100/frames" in names and "h100/4bit" not in names  # 4-bit: another machine
    assert not {"h200/eager-fp16", "h100/fp16"} & {C.set_label(ts) for ts in W.cost_model_sets(graphs)}
    assert W.cost_model_for(h100).backend == "eager" and W.cost_model_for(h100).precision == "fp16/none"


# --------------------------------------------------------------------------- scenarios


def test_measured_shape_replays_the_trace_exactly(graphs):
    cfg = E.SimConfig(strategy="parallel_sd", n_gpus=1, acceptance=0.6, n_requests=30, output_tokens=20)
    same = cfg.replace(target_frames=8, drafter_frames=1, target_resolution=224, drafter_params_b=7.06)
    assert W.scenario_traces(same, graphs) is graphs
    a, b = E.simulate(cfg, graphs), E.simulate(same, graphs)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    assert set(a.requests["time_source"]) == {"trace"} and a.summary()["time_source"] == "trace"


def test_unmeasured_frames_draw_from_the_cost_model_and_say_so(graphs):
    cfg = E.SimConfig(strategy="prefill_then_verify", n_gpus=2, acceptance=0.6, n_requests=40, target_frames=16)
    sc = W.scenario_traces(cfg, graphs)
    assert sc.time_source == "model" and sc.scenario.target.source == "model" and sc.scenario.drafter.source == "trace"
    _, _, _, text = W.recorded_shape(graphs, "target")
    assert sc.prompt_tokens("target") == round(text + 16 * 257)
    pre = sc.sample_tables["target"].phase_ms[:, 3]
    assert np.median(pre) == pytest.approx(130.4, rel=0.05)  # graphs-frames measured 130.4 ms at 16 frames
    assert np.std(pre) > 0  # a distribution, not a mean
    res = E.simulate(cfg, graphs)
    assert set(res.requests["time_source"]) == {"model"} and res.summary()["time_source"] == "model"
    assert "target 16 frames @224 px" in res.time_source_detail and "graphs-frames" in res.time_source_detail
    base = E.simulate(cfg.replace(target_frames=None), graphs)
    assert res.summary()["baseline_mean_ms"] > base.summary()["baseline_mean_ms"] + 150  # 2x the prompt: slower


def test_target_resolution_336_uses_577_tokens_per_frame(graphs):
    sc = W.resolve_scenario(E.SimConfig(target_resolution=336, target_frames=4), graphs)
    _, _, _, text = W.recorded_shape(graphs, "target")
    assert sc.target.prompt_tokens == round(text + 4 * 577) and sc.target.vision_tokens == 4 * 577
    direct = W.resolve_scenario(E.SimConfig(target_prompt_tokens=3000, drafter_prompt_tokens=700), graphs)
    assert (direct.target.prompt_tokens, direct.drafter.prompt_tokens) == (3000, 700)
    assert direct.time_source == "model"


def test_drafter_params_scale_gpu_stages_by_weight_bytes(graphs):
    cfg = E.SimConfig(drafter_params_b=1.0)
    sc = W.scenario_traces(cfg, graphs)
    scale = 1.0 / W.measured_params_b(graphs, "drafter")
    new, old = sc.sample_tables["drafter"], graphs.sample_tables["drafter"]
    assert new.keys == old.keys  # the recorded samples move themselves: pairing as recorded
    np.testing.assert_allclose(new.phase_ms[:, :3], old.phase_ms[:, :3])  # load, preprocess, vision unchanged
    np.testing.assert_allclose(new.phase_ms[:, 3], old.phase_ms[:, 3] * scale, rtol=1e-9)
    np.testing.assert_allclose(new.decode_median_ms, old.decode_median_ms * scale, rtol=0.02)
    np.testing.assert_allclose(sc.sample_tables["target"].phase_ms, graphs.sample_tables["target"].phase_ms)
    assert sc.time_source == "model" and sc.scenario.target.source == "trace"
    res = E.simulate(cfg.replace(strategy="drafter_only", n_requests=20), graphs)
    ref = E.simulate(E.SimConfig(strategy="drafter_only", n_requests=20), graphs)
    assert res.summary()["latency_mean_ms"] < 0.4 * ref.summary()["latency_mean_ms"]


def test_stage_times_model_forces_the_model_and_trace_refuses_it(graphs):
    forced = W.scenario_traces(E.SimConfig(stage_times="model"), graphs)
    assert forced.time_source == "model" and "forced" in forced.scenario.target.why
    # at the recorded shape every sample moves by law ratio 1: the recorded times come back
    np.testing.assert_allclose(forced.sample_tables["target"].phase_ms, graphs.sample_tables["target"].phase_ms)
    with pytest.raises(ValueError, match="SimConfig.stage_times: 'trace', but target 16 frames"):
        W.scenario_traces(E.SimConfig(stage_times="trace", target_frames=16), graphs)


def test_bad_shape_input_is_a_one_line_error_naming_the_field():
    for kw, field in [({"target_resolution": 300}, "target_resolution"), ({"target_frames": 0}, "target_frames"),
                      ({"drafter_params_b": -1.0}, "drafter_params_b"), ({"stage_times": "measured"}, "stage_times"),
                      ({"target_prompt_tokens": 1.5}, "target_prompt_tokens"), ({"cost_model": ""}, "cost_model")]:
        with pytest.raises(ValueError, match=f"SimConfig.{field}:") as exc:
            E.SimConfig(**kw)
        assert "\n" not in str(exc.value)


def test_drafter_params_are_refused_on_a_host_bound_backend():
    eager = E.load_traces("h200/eager-fp16")
    with pytest.raises(ValueError, match="SimConfig.drafter_params_b: .*'eager' backend, which is host bound"):
        E.simulate(E.SimConfig(drafter_params_b=1.0, n_requests=2), eager)


def test_a_cost_model_without_a_shape_sweep_refuses_to_guess(example_traces):
    # the example set has one target shape and no bundled sibling on its "GPU": no law to move along
    with pytest.raises(TraceError, match="'preprocess' of role 'target' was measured at one vision_tokens only") as exc:
        E.simulate(E.SimConfig(target_frames=16, n_requests=2, acceptance=0.5), example_traces)
    assert "\n" not in str(exc.value)
    # the same set at its own shape, a smaller drafter: nothing needs a law it lacks (but it is not graphs: refused)
    with pytest.raises(ValueError, match="drafter_params_b"):
        E.simulate(E.SimConfig(drafter_params_b=1.0, n_requests=2, acceptance=0.5), example_traces)


def test_a_bank_of_another_shape_is_refused(graphs):
    cfg = E.SimConfig(n_requests=5, acceptance=0.6)
    bank = draw_bank(cfg, graphs)
    with pytest.raises(ValueError, match="DrawBank was drawn for what-if shape None"):
        E.simulate(cfg.replace(target_frames=16), graphs, bank=bank)
    with pytest.raises(ValueError, match="DrawBank was drawn"):
        simulate_fast(cfg.replace(target_frames=16), graphs, bank=bank)


def test_contention_carries_over_from_the_nearest_measured_shape(graphs):
    far = W.scenario_traces(E.SimConfig(target_frames=16), graphs)
    near = W.scenario_traces(E.SimConfig(target_frames=4), graphs)
    src = far.contention_source("shared_gpu", "processes")  # a one-GPU grid of the 4.6k-token prompt
    assert src is not graphs and src.prompt_tokens("target") > 4600 and "validation-graphs-1gpu" in src.label
    assert near.contention_source("shared_gpu", "processes") is graphs  # 2070 tokens
    assert src.label in far.contention("shared_gpu").header()


# --------------------------------------------------------------------------- engines


@pytest.mark.parametrize("kw", [
    dict(strategy="parallel_sd", n_gpus=1, target_frames=16),
    dict(strategy="prefill_then_verify", n_gpus=2, drafter_params_b=1.0, gamma=16),
    dict(strategy="adaptive_budget", n_gpus=1, target_frames=2, target_resolution=336, drafter_params_b=3.0),
    dict(strategy="serial_sd", n_gpus=1, drafter_frames=2, stage_times="model"),
    dict(strategy="parallel_sd", n_gpus=2, target_frames=32, drafter_params_b=0.5, lookahead_blocks=3),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_simpy_and_fast_path_agree_on_model_drawn_shapes(graphs, kw):
    cfg = E.SimConfig(acceptance=0.7, n_requests=30, output_tokens=40, **kw)
    bank = draw_bank(cfg, graphs)
    ref, got = E.simulate(cfg, graphs, bank=bank).requests, simulate_fast(cfg, graphs, bank=bank).requests
    assert set(ref["time_source"]) == set(got["time_source"]) == {"model"}
    for c in FLOAT_COLS:
        np.testing.assert_allclose(got[c].to_numpy(float), ref[c].to_numpy(float), rtol=0, atol=1e-6, err_msg=c)
    for c in INT_COLS:
        assert (got[c].to_numpy() == ref[c].to_numpy()).all(), c


def test_grids_and_sweeps_carry_the_shape_and_the_time_source(graphs):
    base = E.SimConfig(n_requests=10, acceptance=0.6, output_tokens=10)
    cfgs = [base.replace(strategy=s, target_frames=f) for s in ("target_only", "parallel_sd") for f in (None, 16)]
    df = run_grid(cfgs, graphs, workers=1)
    assert list(df["time_source"]) == ["trace", "model", "trace", "model"]
    assert df.loc[1, "baseline_mean_ms"] > df.loc[0, "baseline_mean_ms"]
    from egpt_sim.analysis.sweep import _config_of, run_sweep

    sw = run_sweep(cfgs, graphs, engine="fast", progress=False)  # rows grouped by shared draws
    assert list(sw["time_source"]) == ["model" if f == 16 else "trace" for f in sw["target_frames"]]
    assert sorted(map(repr, (_config_of(r) for _, r in sw.iterrows()))) == sorted(map(repr, cfgs))  # None survives


# --------------------------------------------------------------------------- held-out shapes and the CLI


def test_held_out_frame_counts_are_predicted_within_the_goal(graphs):
    frames = E.load_traces("h200/graphs-frames")
    cells = W.holdout_cells(frames, [1, 2, 8, 32], [4, 16], "split")
    assert set(cells["held_out_frames"]) == {4, 16} and (cells["n_measured"] == cells["n_predicted"]).any()
    by = cells.set_index(["held_out_frames", "stage", "gamma"])["err_median_pct"].abs()
    assert by.loc[(16, "prefill", 0)] < 5 and by.loc[(4, "prefill", 0)] < 5
    assert by.xs("decode_step", level="stage").max() < 2
    assert by.xs("e2e_target_only", level="stage").max() < 5
    summary = W.holdout_summary(cells)
    assert summary["goal_met"].dtype == bool and len(summary) == cells.groupby(["stage", "gamma"]).ngroups


def test_cli_predict_rows_state_the_time_source(capsys):
    assert cli.main(["predict", "--traces", GRAPHS, "--target-frames", "16", "--gpus", "2", "--acceptance", "0.6",
                     "--requests", "10"]) == 0
    out = capsys.readouterr().out
    table = out.split("(not drafts x rate)\n", 1)[1].splitlines()
    assert "time_source" in table[0] and all(line.rstrip().endswith("model") for line in table[1:])
    assert "stage times: target 16 frames @224 px" in out
    assert cli.main(["predict", "--traces", GRAPHS, "--drafter-params-b", "1", "--gpus", "2", "--acceptance", "0.6",
                     "--requests", "10", "--strategy", "parallel_sd"]) == 0
    out = capsys.readouterr().out
    assert "1B params" in out and out.rstrip().endswith("model")
    assert cli.main(["predict", "--traces", GRAPHS, "--drafter-params-b", "1", "--requests", "5", "--acceptance", "0.6",
                     "--strategy", "target_only"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("trace")  # target_only runs the recorded target alone
    assert cli.main(["predict", "--traces", GRAPHS, "--requests", "5", "--acceptance", "0.6", "--strategy", "target_only"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("trace")


def test_cli_shape_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", "--target-resolution", "300"])
    assert exc.value.code == 2 and "--target-resolution" in capsys.readouterr().err
    assert cli.main(["predict", "--traces", "h200/eager-fp16", "--drafter-params-b", "1", "--requests", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "drafter_params_b" in err
