"""Per-sample replay (block bootstrap over recorded samples), the CPU lane, drafter_speed,
and strategies that need no acceptance data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import egpt_sim as E
from egpt_sim.sim.draws import DrawBank
from egpt_sim.fast import simulate_fast

N_SD = 17  # 16 recorded decode steps per sample in h100/fp16


@pytest.fixture(scope="module")
def fp16():
    return E.load_traces("h100/fp16")


def _measured_target_only_ms(ts: E.TraceSet, n_tokens: int) -> pd.Series:
    """Per recorded sample: prefill phase + the first N - 1 decode steps (alone rows)."""
    r = ts.ok_rows
    a = r[(r["placement"] == "alone") & (r["role"] == "target")]
    phase = a[a["stage"].isin(["load", "preprocess", "vision_encode", "prefill"])].groupby(
        ["run_id", "sample_id"])["duration_ms"].sum()
    dec = a[a["stage"] == "decode_step"].sort_values("step").groupby(["run_id", "sample_id"])["duration_ms"]
    return phase + dec.apply(lambda x: x.iloc[: n_tokens - 1].sum())


def test_target_only_sd_matches_the_measured_per_sample_sd(fp16):
    """89 % of the decode-step variance is between samples: i.i.d. pooled steps gave 29.8 ms
    of sd vs 113.6 measured; replaying samples keeps it (within +-25 %)."""
    measured = _measured_target_only_ms(fp16, N_SD)
    assert measured.std(ddof=1) == pytest.approx(113.6, abs=0.5)
    sim = simulate_fast(E.SimConfig(strategy="target_only", output_tokens=N_SD, n_requests=3000), fp16)
    sd = sim.requests["latency_ms"].std(ddof=1)
    assert 0.75 * measured.std(ddof=1) <= sd <= 1.25 * measured.std(ddof=1)
    assert sim.requests["latency_ms"].mean() == pytest.approx(measured.mean(), rel=0.02)


def test_requests_replay_their_own_sample(fp16):
    bank = DrawBank(fp16, seed=3, n_requests=40)
    t = fp16.sample_tables["target"]
    assert bank.paired_fraction == 1.0  # both roles were recorded on every sample
    dec = bank.ensure("target_decode", 40)
    for i in range(40):
        s = bank.sample_index["target"][i]
        key = t.keys[s]
        own = t.decode_ms[t.own_decode[s], : t.decode_n[t.own_decode[s]]]
        # the prefill phase and the recorded steps, in order; later steps from the same sample
        assert np.array_equal(bank.phase_ms["target"][i], t.phase_ms[s])
        assert np.array_equal(dec[i, : len(own)], own)
        assert np.isin(dec[i, len(own):], own).all()
        assert fp16.sample_tables["drafter"].keys[bank.sample_index["drafter"][i]] == key
        # verify cost from the sample's own verify rows, interpolated in k
        rows = fp16.ok_rows[(fp16.ok_rows["run_id"] == key[0]) & (fp16.ok_rows["sample_id"] == key[1])
                            & (fp16.ok_rows["role"] == "target") & (fp16.ok_rows["stage"] == "verify")]
        v = rows.set_index("gamma")["duration_ms"].sort_index()
        vt = bank.verify_table(8)[i]
        assert vt[4] == pytest.approx(v[4]) and vt[3] == pytest.approx((v[2] + v[4]) / 2)


def test_unpaired_samples_and_samples_without_rows_fall_back(example_traces):
    """A drafter sample missing: the drafter draws another sample; a target sample without
    verify rows uses the pooled curve; one without decode steps borrows another sample's."""
    st = example_traces.stage_timings
    sid = st["sample_id"].unique()
    drop = (st["role"] == "drafter") & (st["sample_id"] == sid[0])
    drop |= (st["role"] == "target") & (st["sample_id"] == sid[1]) & st["stage"].isin(["verify", "decode_step"])
    ts = E.TraceSet.from_frames(st[~drop], example_traces.acceptance, example_traces.metadata)
    bank = DrawBank(ts, seed=0, n_requests=400)
    t, d = ts.sample_tables["target"], ts.sample_tables["drafter"]
    keys_t = [t.keys[i] for i in bank.sample_index["target"]]
    keys_d = [d.keys[i] for i in bank.sample_index["drafter"]]
    unpaired = [kt[1] == sid[0] for kt in keys_t]
    assert any(unpaired) and all((kt == kd) != u for kt, kd, u in zip(keys_t, keys_d, unpaired))
    lonely = np.flatnonzero([kt[1] == sid[1] for kt in keys_t])
    assert lonely.size
    gam, med, _ = ts.verify_curve
    np.testing.assert_allclose(bank.verify_table(8)[lonely[0]], np.interp(np.arange(bank.verify_table(8).shape[1]), gam, med))
    assert np.isfinite(bank.ensure("target_decode", 30)[lonely]).all()


def test_drafter_speed_applies_to_gpu_stages_only(example_traces):
    slow, fast = DrawBank(example_traces, 0, 30, 1.0), DrawBank(example_traces, 0, 30, 4.0)
    np.testing.assert_array_equal(fast.phase_ms["drafter"][:, :2], slow.phase_ms["drafter"][:, :2])
    np.testing.assert_allclose(fast.phase_ms["drafter"][:, 2:], slow.phase_ms["drafter"][:, 2:] / 4.0)
    np.testing.assert_allclose(fast.ensure("drafter_decode", 5)[:, :5], slow.ensure("drafter_decode", 5)[:, :5] / 4.0)
    np.testing.assert_array_equal(fast.phase_ms["target"], slow.phase_ms["target"])


@pytest.mark.parametrize("acceptance", [None, "trace"])
def test_target_only_needs_no_acceptance_data(fp16, acceptance):
    assert fp16.acceptance is None
    cfg = E.SimConfig(strategy="target_only", acceptance=acceptance, output_tokens=8, n_requests=5)
    a, b = E.simulate(cfg, fp16).requests, simulate_fast(cfg, fp16).requests
    np.testing.assert_allclose(a["latency_ms"], b["latency_ms"], rtol=0, atol=1e-9)
    assert (a["acceptance"] == ("none" if acceptance is None else "trace")).all()
    E.simulate(cfg.replace(strategy="drafter_only"), fp16)
    with pytest.raises(ValueError, match="acceptance"):
        E.SimConfig(strategy="prefill_then_verify", acceptance=None)


def test_cpu_stages_run_one_after_another_drafter_first(example_traces):
    """Parallel prefill: the target's load starts when the drafter's preprocess ends; the
    drafter's GPU stages start right after its own CPU stages."""
    for strategy in ("prefill_then_verify", "parallel_sd"):
        tl = E.simulate(E.SimConfig(strategy=strategy, output_tokens=6, acceptance=0.5, n_requests=4), example_traces,
                        timeline=True, n_timeline_requests=4).timeline
        for _, ev in tl.groupby("request_id"):
            at = ev.set_index(["actor", "activity"])
            d_pre_end = at.loc[("drafter", "preprocess"), "end_ms"]
            assert at.loc[("target", "load"), "start_ms"] == d_pre_end
            assert at.loc[("drafter", "vision_encode"), "start_ms"] == d_pre_end
    tl = E.simulate(E.SimConfig(strategy="target_only", output_tokens=3, n_requests=1), example_traces,
                    timeline=True).timeline
    assert tl.loc[tl["activity"] == "load", "start_ms"].iloc[0] == 0.0
