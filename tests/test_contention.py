"""Contention keyed by (role, stage, peer activity): fitting, provenance, missing factors,
peer activity inferred from start_ms, host contention, and the rate model in both engines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.sim import closed_form as C
from egpt_sim.traces.contention import ContentionModel, infer_peer_activity, label_cpu_peers, measured_stage
from egpt_sim.fast import simulate_fast
from egpt_sim.sim.rules import contention_for

META = {"schema_version": "1.1", "label": "hand", "runs": {"alone": {"source": "synthetic"},
                                                           "shared": {"source": "synthetic"}}}


def _row(run, sample, role, stage, ms, placement="alone", peer="none", overlap=np.nan, gamma=0, step=0,
         start=np.nan, concurrency=None):
    return dict(run_id=run, sample_id=sample, role=role, stage=stage, step=step, duration_ms=float(ms),
                prompt_tokens=100, kv_tokens=100, query_tokens=1, gamma=gamma, frames=1, placement=placement,
                concurrency=concurrency or ("none" if placement == "alone" else "streams"),
                peer_busy=peer != "none", start_ms=start, status="ok", peer_activity=peer, overlap_frac=overlap)


def _traces(rows) -> E.TraceSet:
    return E.TraceSet.from_frames(pd.DataFrame(rows), None, META, "<hand>")


def _two_activity_rows(noise=(1.0, 1.0)):
    """Two samples; alone 10 / 20 ms decode steps; with the peer decoding, the target takes
    1.5x (15 / 30 ms) and the drafter 0.9x (9 / 18 ms)."""
    rows = []
    for s, base in (("a", 10.0), ("b", 20.0)):
        for role in ("target", "drafter"):
            rows += [_row("alone", s, role, "decode_step", base, step=i) for i in range(3)]
        rows += [_row("shared", s, "target", "decode_step", 1.5 * base, "shared_gpu", "decode_step", 1.0, step=i)
                 for i in range(3)]
        rows += [_row("shared", s, "drafter", "decode_step", 0.9 * base, "shared_gpu", "decode_step", 1.0, step=i)
                 for i in range(3)]
    return rows


def test_hand_computed_factors_and_factor_below_one_kept():
    model = _traces(_two_activity_rows()).contention("shared_gpu", missing="assume:1.0")
    assert model.contention_factor("target", "decode_step", "decode_step") == pytest.approx(1.5)
    assert model.contention_factor("drafter", "decode_step", "decode_step") == pytest.approx(0.9)  # not clamped
    # a draft step is measured as a drafter decode_step, as the peer activity too
    assert model.contention_factor("drafter", "draft_step", "decode_step") == pytest.approx(0.9)
    assert model.contention_factor("target", "decode_step", "draft_step") == pytest.approx(1.5)
    t = model.table().set_index(["role", "stage", "peer_activity"])
    row = t.loc[("target", "decode_step", "decode_step")]
    assert row["measured"] and row["basis"] == "measured" and row["n_rows"] == 6
    assert row["ci_low"] <= 1.5 <= row["ci_high"]
    assert "same sample" in row["note"]
    # everything else was not measured: labelled with the user's assumption
    other = t.drop(index=[("target", "decode_step", "decode_step"), ("drafter", "decode_step", "decode_step")])
    assert not other["measured"].any() and (other["contention_factor"] == 1.0).all()
    assert other["note"].str.contains("assume:1.0").all()
    assert "2 of 24 factors measured" in model.header()
    # no peer: rate 1 whatever the table says
    assert model.contention_factor("target", "decode_step", "none") == 1.0


def test_factor_is_a_ratio_of_medians_over_matched_references():
    rows = [_row("alone", s, "target", "prefill", a) for s, a in (("a", 10.0), ("b", 20.0), ("c", 40.0))]
    rows += [_row("shared", s, "target", "prefill", b, "shared_gpu", "decode_step", 1.0)
             for s, b in (("a", 12.0), ("b", 36.0), ("c", 44.0))]
    f = _traces(rows).contention_fit("shared_gpu").by_peer[("target", "prefill", "decode_step")]
    assert f.value == pytest.approx(np.median([12, 36, 44]) / np.median([10, 20, 40]))  # 36 / 20
    assert f.n_rows == 3 and f.ci_low <= f.value <= f.ci_high


def test_same_run_idle_rows_are_the_preferred_reference():
    """The run itself drifted (idle rows 12 ms vs 10 ms alone): the factor is against the
    same run's rows with the peer idle."""
    rows = []
    for s in "abc":
        rows += [_row("alone", s, "target", "decode_step", 10.0, step=i) for i in range(2)]
        rows += [_row("shared", s, "target", "decode_step", 12.0, "shared_gpu", "none", 0.0, step=i) for i in range(2)]
        rows += [_row("shared", s, "target", "decode_step", 18.0, "shared_gpu", "decode_step", 1.0, step=2 + i)
                 for i in range(2)]
    fit = _traces(rows).contention_fit("shared_gpu")
    f = fit.by_peer[("target", "decode_step", "decode_step")]
    assert f.value == pytest.approx(1.5) and "same run" in f.note
    assert "x1.20 of alone" in fit.drift


def test_verify_is_matched_by_gamma_and_full_overlap_rows_preferred():
    rows = []
    for s in "abc":
        rows += [_row("alone", s, "target", "verify", 10.0, gamma=1), _row("alone", s, "target", "verify", 20.0, gamma=8)]
        rows += [_row("shared", s, "target", "verify", 30.0, "shared_gpu", "decode_step", 1.0, gamma=8)]
        rows += [_row("shared", s, "target", "verify", 100.0, "shared_gpu", "decode_step", 0.5, gamma=8)]  # partial
    f = _traces(rows).contention_fit("shared_gpu").by_peer[("target", "verify", "decode_step")]
    assert f.value == pytest.approx(1.5)  # 30 / 20 (gamma 8), not 30 / 15, partial rows left out
    assert f.n_rows == 3 and "overlap >= 0.95" in f.note


def test_missing_factor_policies():
    ts = _traces(_two_activity_rows())
    with pytest.raises(ValueError) as ei:
        ts.contention("shared_gpu", missing="error")
    assert "was not measured" in str(ei.value) and "\n" not in str(ei.value)
    pooled = ts.contention("shared_gpu", missing="pooled")
    # target verify beside decode_step: borrowed from the sibling token pass, labelled
    f = pooled.factors[("target", "verify", "decode_step")]
    assert not f.measured and f.value == pytest.approx(1.5) and "decode_step beside decode_step" in f.note
    assert "contention_missing='pooled'" in pooled.header()
    cfg = E.SimConfig(strategy="prefill_then_verify", contention_missing="assume:1.25")
    assert cfg.contention_missing == "assume:1.25"
    for bad in ("bogus", "assume:", "assume:-1", "assume:0"):
        with pytest.raises(ValueError, match="contention_missing"):
            E.SimConfig(contention_missing=bad)


def test_schema_10_rows_without_start_ms_give_any_peer_factors(constant_traces, constant_times):
    """peer_activity 'busy' and no start_ms: the (role, stage) factor stands for every peer
    activity, labelled 'measured (any peer)'."""
    m = constant_traces.contention("shared_gpu")
    for peer in ("vision_encode", "prefill", "decode_step"):
        assert m.contention_factor("target", "prefill", peer) == pytest.approx(1.5)
        assert m.factors[("target", "prefill", peer)].basis == "measured (any peer)"
    # (target, verify) was never measured: assumed (pooled), never silently measured
    assert not m.factors[("target", "verify", "decode_step")].measured


def test_peer_activity_is_inferred_from_start_ms():
    """Schema 1.0 rows: the target's prefill (0-100 ms) overlaps the drafter's prefill for
    30 ms and its draft steps for 70 ms -> peer 'decode_step', fully covered."""
    rows = [_row("shared", "a", "target", "prefill", 100.0, "shared_gpu", "busy", start=0.0),
            _row("shared", "a", "drafter", "prefill", 30.0, "shared_gpu", "busy", start=0.0)]
    rows += [_row("shared", "a", "drafter", "decode_step", 30.0, "shared_gpu", "busy" if i < 2 else "none",
                  start=30.0 + 30 * i, step=i) for i in range(3)]
    df = pd.DataFrame(rows)
    df["overlap_frac"] = np.nan
    out = infer_peer_activity(df).set_index(["role", "stage", "step"])
    assert out.loc[("target", "prefill", 0), "peer_activity"] == "decode_step"
    assert out.loc[("target", "prefill", 0), "overlap_frac"] == pytest.approx(1.0)
    assert out.loc[("drafter", "prefill", 0), "peer_activity"] == "prefill"
    # the last step overlaps the target for 10 of 30 ms: stays idle (peer_busy False), overlap kept
    assert out.loc[("drafter", "decode_step", 2), "peer_activity"] == "none"
    assert out.loc[("drafter", "decode_step", 2), "overlap_frac"] == pytest.approx(1 / 3)
    assert out["peer_inferred"].sum() == 4


def test_bundled_fp16_factors_depend_on_the_peer_activity():
    m = E.load_traces("h100/fp16").contention("shared_gpu", "processes")
    t = m.table()
    assert {"peer_activity", "measured", "basis", "n_rows", "ci_low", "ci_high"} <= set(t.columns)
    beside_prefill = m.factors[("drafter", "decode_step", "prefill")]
    beside_verify = m.factors[("drafter", "decode_step", "verify")]
    assert beside_prefill.measured and beside_verify.measured and beside_prefill.value != beside_verify.value
    assert beside_prefill.n_rows >= 30 and beside_verify.n_rows >= 30
    assert "inferred from start_ms" in m.source and "run drift" in m.source
    assert (t["contention_factor"] < 1).any()  # measured factors below 1 are kept


@pytest.mark.parametrize("factor_peer,expected_ttft", [("decode_step", 622.0), ("prefill", 612.0)])
@pytest.mark.parametrize("n_gpus", [1, 2])
def test_rate_model_reproduces_a_hand_computed_timeline(constant_times, factor_peer, expected_ttft, n_gpus):
    """Target prefill x2 while the drafter *decodes*, 1.0 otherwise (assumed). Timeline: drafter
    CPU 0-4, vision 4-8, prefill 8-60, steps 60-80, 80-100, 100-120 (budget 4); target CPU
    4-76 (CPU lane), vision 76-100, prefill from 100: half speed during 100-120 beside the
    third step, so 512 ms of work end at 622. Keyed on a peer *prefill*, the step does not slow
    it: 612. One GPU (GPU contention) and two GPUs (host contention), both engines."""
    key = {("target", "prefill", factor_peer): 2.0}
    kw = {"peer_factors": key} if n_gpus == 1 else {"host_factors": key}
    ts = C.constant_trace_set(**(constant_times | {"shared_factors": None}), acceptance_alpha=0.5, **kw)
    cfg = E.SimConfig(strategy="prefill_then_verify", n_gpus=n_gpus, gamma=4, output_tokens=10, acceptance=1.0,
                      n_requests=3, contention_missing="assume:1.0")
    ref, got = E.simulate(cfg, ts), simulate_fast(cfg, ts)
    assert (ref.requests["ttft_ms"] == expected_ttft).all()
    np.testing.assert_allclose(got.requests["latency_ms"], ref.requests["latency_ms"], rtol=0, atol=1e-9)
    assert ref.contention.domain == ("gpu" if n_gpus == 1 else "host")


def _cpu_peer_rows():
    """Per sample: alone drafter vision 10 ms, prefill 20 ms; in one shared_gpu run of threads
    and one of processes, the drafter's vision (5-25 ms, 20 ms) and prefill (25-55 ms, 30 ms)
    run inside the target's preprocess (0-60 ms) and are recorded, as the stage runs record
    them, with an idle peer."""
    rows = []
    for s in "abc":
        rows += [_row("alone", s, "drafter", "vision_encode", 10.0), _row("alone", s, "drafter", "prefill", 20.0)]
        for conc in ("streams", "processes"):
            kw = dict(placement="shared_gpu", peer="none", overlap=0.0, concurrency=conc)
            rows += [_row(conc, s, "target", "preprocess", 60.0, start=0.0, **kw),
                     _row(conc, s, "drafter", "vision_encode", 20.0, start=5.0, **kw),
                     _row(conc, s, "drafter", "prefill", 30.0, start=25.0, **kw)]
    return rows


def test_gpu_rows_beside_the_peers_cpu_work_give_host_factors_with_threads_only():
    rows = _cpu_peer_rows()
    out = label_cpu_peers(pd.DataFrame(rows)).set_index(["run_id", "sample_id", "role", "stage"])
    assert out.loc[("streams", "a", "drafter", "vision_encode"), "peer_activity"] == "preprocess"
    assert out.loc[("streams", "a", "drafter", "prefill"), "overlap_frac"] == pytest.approx(1.0)
    assert out.loc[("streams", "a", "drafter", "prefill"), "cpu_peer"]
    assert out.loc[("processes", "a", "drafter", "prefill"), "peer_activity"] == "none"  # no shared interpreter
    assert out.loc[("streams", "a", "target", "preprocess"), "peer_activity"] == "none"  # CPU rows untouched
    meta = {"schema_version": "1.1", "label": "hand", "runs": {r: {"source": "synthetic"}
                                                               for r in ("alone", "streams", "processes")}}
    ts = E.TraceSet.from_frames(pd.DataFrame(rows), None, meta, "<hand>")
    threads = ts.contention("shared_gpu", "streams", missing="assume:1.7")
    assert threads.contention_factor("drafter", "vision_encode", "preprocess") == pytest.approx(2.0)
    assert threads.contention_factor("drafter", "prefill", "preprocess") == pytest.approx(1.5)
    # not measured beside a CPU stage: 1, never borrowed or assumed like a GPU peer's
    assert threads.contention_factor("drafter", "prefill", "load") == 1.0
    assert threads.contention_factor("target", "prefill", "preprocess") == 1.0
    assert threads.factors[("drafter", "prefill", "prefill")].value == 1.7  # the GPU-peer grid: assumed
    assert "2 measured beside the peer's CPU stages" in threads.header() and not threads.is_trivial
    t = threads.table().set_index(["role", "stage", "peer_activity"])
    assert t.loc[("drafter", "vision_encode", "preprocess"), "measured"]
    procs = ts.contention("shared_gpu", "processes", missing="assume:1.0")
    assert procs.contention_factor("drafter", "prefill", "preprocess") == 1.0 and not procs.cpu_peer
    assert threads.scaled(0.0).contention_factor("drafter", "prefill", "preprocess") == 1.0


def test_rows_that_carry_a_cpu_peer_count_only_with_threads():
    """Executor spans carry the peer's CPU stage as peer activity already: with threads they
    fit cpu_peer; with processes they fit nothing (1 by rule) and stay out of the GPU-peer
    factors, whose pooled value is the GPU-peer rows' alone (x1.5 here, not x3)."""
    rows = []
    for s in "abc":
        rows += [_row("alone", s, "drafter", "prefill", 20.0)]
        for conc in ("streams", "processes"):
            kw = dict(placement="shared_gpu", overlap=1.0, concurrency=conc)
            rows += [_row(conc, s, "drafter", "prefill", 60.0, peer="preprocess", **kw),
                     _row(conc, s, "drafter", "prefill", 30.0, peer="prefill", **kw)]
    meta = {"schema_version": "1.1", "label": "hand", "runs": {r: {"source": "synthetic"}
                                                               for r in ("alone", "streams", "processes")}}
    ts = E.TraceSet.from_frames(pd.DataFrame(rows), None, meta, "<hand>")
    for conc, cpu in (("streams", 3.0), ("processes", None)):
        fit = ts.contention_fit("shared_gpu", conc)
        assert fit.pooled[("drafter", "prefill")].value == pytest.approx(1.5), conc
        assert (fit.cpu_peer[("drafter", "prefill", "preprocess")].value if cpu else fit.cpu_peer) == (
            pytest.approx(cpu) if cpu else {}), conc


def test_rows_partly_beside_a_gpu_peer_and_partly_beside_its_cpu_work_are_left_out():
    """A drafter prefill (50-100 ms, 50 vs 20 alone) 80 % beside the target's preprocess and
    20 % beside its vision encode: its full-overlap equivalent would charge the whole slow-down
    to the vision encode (x16 by the rate model); with threads it is left out, so that key is
    not measured, while with processes (no shared interpreter) it still counts."""
    rows = []
    for s in "abc":
        rows += [_row("alone", s, "drafter", "prefill", 20.0)]
        for conc in ("streams", "processes"):
            kw = dict(placement="shared_gpu", concurrency=conc)
            rows += [_row(conc, s, "target", "preprocess", 90.0, start=0.0, peer="none", overlap=0.0, **kw),
                     _row(conc, s, "target", "vision_encode", 30.0, start=90.0, peer="prefill", overlap=1.0, **kw),
                     _row(conc, s, "drafter", "prefill", 50.0, start=50.0, peer="vision_encode", overlap=0.2, **kw)]
    out = label_cpu_peers(pd.DataFrame(rows)).set_index(["run_id", "sample_id", "role", "stage"])
    assert out.loc[("streams", "a", "drafter", "prefill"), "confounded"]
    assert not out.loc[("processes", "a", "drafter", "prefill"), "confounded"]
    assert out.loc[("streams", "a", "drafter", "prefill"), "peer_activity"] == "vision_encode"  # label kept
    meta = {"schema_version": "1.1", "label": "hand", "runs": {r: {"source": "synthetic"}
                                                               for r in ("alone", "streams", "processes")}}
    ts = E.TraceSet.from_frames(pd.DataFrame(rows), None, meta, "<hand>")
    assert ("drafter", "prefill", "vision_encode") not in ts.contention_fit("shared_gpu", "streams").by_peer
    assert ts.contention_fit("shared_gpu", "processes").by_peer[("drafter", "prefill", "vision_encode")].value > 10


@pytest.mark.parametrize("n_gpus", [1, 2])
def test_a_peers_cpu_stage_slows_a_gpu_stage_in_both_engines(constant_times, n_gpus):
    """Drafter vision x2 beside the target's load, prefill x2 beside its preprocess (threads).
    Serial CPU lane: drafter CPU 0-4; target load 4-44, preprocess 44-76, vision from 76. The
    drafter's vision (4 ms of work) runs 4-12 at half speed; its prefill (52 ms) does 32 ms by
    44 (no factor beside the load), 16 more by 76 at half speed, the last 4 by 80 (60 without
    the factors). The target is not slowed: TTFT 612 either way."""
    key = {("drafter", "vision_encode", "load"): 2.0, ("drafter", "prefill", "preprocess"): 2.0}
    kw = {"peer_factors": key} if n_gpus == 1 else {"host_factors": key}
    cfg = E.SimConfig(strategy="prefill_then_verify", n_gpus=n_gpus, gamma=4, output_tokens=10, acceptance=1.0,
                      n_requests=3, contention_missing="assume:1.0")
    for factors, drafter_end in ((kw, 80.0), ({}, 60.0)):
        ts = C.constant_trace_set(**(constant_times | {"shared_factors": None}), acceptance_alpha=0.5, **factors)
        ref, got = E.simulate(cfg, ts), simulate_fast(cfg, ts)
        assert (ref.requests["drafter_prefill_end_ms"] == drafter_end).all()
        assert (ref.requests["ttft_ms"] == 612.0).all()
        for col in ("latency_ms", "drafter_prefill_end_ms", "drafted_tokens", "window_drafts"):
            np.testing.assert_allclose(got.requests[col], ref.requests[col], rtol=0, atol=1e-9)


def test_host_contention_defaults_and_provenance(example_traces):
    """No separate_gpu rows: two-GPU predictions assume 1.0, labelled; processes: 1.0 by rule;
    'error' refuses; every result carries its contention provenance."""
    cfg = E.SimConfig(strategy="parallel_sd", n_gpus=2, output_tokens=10, acceptance=0.5, n_requests=3)
    res = E.simulate(cfg, example_traces)
    assert res.contention.domain == "host" and res.contention.is_trivial
    assert "not measured" in res.contention_header and "assumed 1.0" in res.contention_header
    assert res.summary()["contention_factors"] == res.contention_header
    procs = contention_for(cfg.replace(contention_concurrency="processes"), example_traces)
    assert procs.is_trivial and "rule" in procs.header()
    with pytest.raises(ValueError, match="not measured"):
        contention_for(cfg.replace(contention_missing="error"), example_traces)
    one = E.simulate(cfg.replace(n_gpus=1), example_traces)
    assert one.contention.domain == "gpu" and "measured" in one.contention_header
    none = E.simulate(cfg.replace(strategy="target_only"), example_traces)
    assert none.contention.domain == "none" and "not applicable" in none.contention_header
    assert isinstance(one.contention, ContentionModel) and len(one.contention.table()) == 24


def test_activity_names_map_in_one_place():
    assert measured_stage("draft_step") == "decode_step"
    for s in ("vision_encode", "prefill", "decode_step", "verify"):
        assert measured_stage(s) == s


def test_pass_host_gap_runs_at_rate_1_and_slows_the_peer_hand_computed():
    """A pass's serving-loop host gap runs off the GPU at rate 1, and the peer sees it as the
    pass (rules.pass_phases_ms: factors are fitted on peers looping with their host time).
    Factor 2 both ways; target pass 11 ms (1 ms gap + 10 ms GPU), the drafter drafting back to
    back 5 ms steps (1 ms gap + 4 ms GPU). By hand: both gaps to 1 ms; both on the GPU at 1/2
    until the draft step ends at 9 ms (target: 6 ms of work left); the drafter's gap, target
    at 1/2: 5.5 left at 10; both at 1/2 until the next step ends at 18 (1.5 left); the drafter's
    gap: 1.0 left at 19; the third step beside it: the pass ends at 21 ms = 1 + 2 x 10 (the
    closed form of a pass beside a peer that never stops). The third step ran 1 ms of work
    at 1/2 by then and ends alone at 24. The gap as contended GPU work would end the pass at
    2 x 11 = 22 ms; a gap invisible to the peer at 19 ms."""
    import types

    import simpy

    from egpt_sim.sim.gpu import Gpu
    from egpt_sim.sim.processes import pass_stage
    from egpt_sim.traces.contention import uniform_model

    env = simpy.Environment()
    gpu = Gpu(env, 0, uniform_model(2.0, "gpu", "test: every factor 2", "test"))
    ends: dict[str, list[float]] = {"target": [], "drafter": []}
    ctx = types.SimpleNamespace(env=env, gpu_of=lambda role: gpu,
                                draws=types.SimpleNamespace(pass_gap_ms=lambda role: 1.0),
                                record=lambda role, activity, start, end, g, tokens=0: ends[role].append(end))

    def drafter():
        for _ in range(3):
            yield from pass_stage(ctx, "drafter", "draft_step", 5.0, tokens=1)

    env.process(pass_stage(ctx, "target", "decode_step", 11.0, tokens=1))
    env.process(drafter())
    env.run()
    assert ends["target"] == pytest.approx([21.0])
    assert ends["drafter"] == pytest.approx([9.0, 18.0, 24.0])
    assert gpu.busy_ms == pytest.approx(24.0 - 1.0)  # idle only while both are in their gaps (0-1 ms)
