"""Real parallel-prefill executor on tiny random models (CPU threads)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import math  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

from egpt_sim.traces import schema  # noqa: E402
from egpt_sim.traces.acceptance import IidAcceptance, TraceAcceptance  # noqa: E402
from measure import dataset as ds  # noqa: E402
from measure import synthetic  # noqa: E402
from measure.executor import Executor  # noqa: E402
from measure.models import build_pipeline  # noqa: E402
from measure.perturb import perturb_from  # noqa: E402

pytestmark = pytest.mark.torch
N = 24
SPEC = ("prefill_then_verify", "parallel_sd")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = synthetic.generate(tmp_path_factory.mktemp("ds"), synthetic.SynthConfig(n_samples=2, duration_s=0.3))
    return ds.load_dataset(path)


@pytest.fixture(scope="module")
def target():
    return build_pipeline("target", "random:tiny", dtype="fp32", device="cpu")


class SlowTarget:
    """The target with added host delays, so the drafter wins the prefill race (as on a GPU,
    where the target's prefill is ~7x longer); tokens are unchanged."""

    def __init__(self, pipe, prefill_s=0.1, pass_s=0.005):
        self.pipe, self.prefill_s, self.pass_s = pipe, prefill_s, pass_s

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def prefill(self, embeds):
        time.sleep(self.prefill_s)
        return self.pipe.prefill(embeds)

    def decode_step(self, cache, token):
        time.sleep(self.pass_s)
        return self.pipe.decode_step(cache, token)

    def verify(self, cache, tokens):
        time.sleep(self.pass_s)
        return self.pipe.verify(cache, tokens)


@pytest.fixture(scope="module")
def slow(target):
    return SlowTarget(target)


@pytest.fixture(scope="module")
def drafter(target):
    """The EventGPT-like drafter (own 1-frame prompt), LM = perturbed copy of the target's."""
    d = build_pipeline("drafter", "random:tiny", dtype="fp32", device="cpu")
    perturb_from(d, target, 0.0)
    return d


@pytest.fixture(scope="module")
def twin(target):
    """A drafter that sees the target's own prompt (a second target pipeline): real acceptances."""
    p = build_pipeline("target", "random:tiny", dtype="fp32", device="cpu")
    p.model.load_state_dict(target.model.state_dict())
    return p


@pytest.fixture(scope="module")
def references(target, samples):
    ex = Executor(target)
    return {s.sample_id: ex.run(s, "target_only", N).tokens for s in samples}


def check_consistent(res, strategy, n=N):
    tl = schema.validate(res.timeline, schema.TIMELINE_FILE)
    row = res.row
    assert len(res.tokens) == n
    for _, g in tl.groupby("actor"):  # each actor: one activity at a time, in order
        assert (g["start_ms"].diff().fillna(0) >= 0).all()
        assert (g["start_ms"].iloc[1:].to_numpy() >= g["end_ms"].iloc[:-1].to_numpy() - 1e-6).all()
    tgt = tl[tl["actor"] == "target"]
    assert tgt["activity"].tolist()[:4] == ["load", "preprocess", "vision_encode", "prefill"]
    prefill_end = tgt.loc[tgt["activity"] == "prefill", "end_ms"].iloc[0]
    passes = tgt[tgt["activity"].isin(["decode_step", "verify"])]
    assert (passes["start_ms"] >= prefill_end).all()
    assert row["ttft_ms"] == pytest.approx(prefill_end)
    assert row["latency_ms"] == pytest.approx(tgt["end_ms"].max())
    assert row["target_passes"] == len(passes)
    # the prefill commits position 1 (d1 == t1 counts as accepted); a pass commits L + 1
    assert 1 + len(passes) + row["accepted"] - row["first_draft_matched"] == n
    assert row["verify_passes"] == (passes["activity"] == "verify").sum()
    assert row["accepted"] <= row["drafted"]
    assert (tl.loc[tl["activity"].isin(["load", "preprocess"]), "gpu"] == -1).all()
    if strategy == "target_only":
        assert row["verify_passes"] == 0 and set(tl["actor"]) == {"target"}
    else:
        assert row["tokens_from_window"] <= min(row["accepted"], row["window_drafts"])
        assert row["tokens_from_window"] >= row["first_draft_matched"]
        assert len(tl[(tl["actor"] == "drafter") & (tl["activity"] == "prefill")]) == 1
    if strategy == "prefill_then_verify":  # every acceptance happens in the window
        assert row["verify_passes"] <= 1 and row["accepted"] == row["tokens_from_window"]
        if not row["first_draft_matched"]:
            assert row["verify_passes"] == 0


def test_target_only_is_plain_decoding(target, samples, references):
    res = Executor(target).run(samples[0], "target_only", N, reference=references[samples[0].sample_id])
    check_consistent(res, "target_only")
    assert res.row["lossless"] and res.row["target_passes"] == N - 1


@pytest.mark.parametrize("strategy", SPEC)
def test_own_prompt_drafter_is_lossless(slow, drafter, samples, references, strategy):
    ex = Executor(slow, drafter, gamma=4)
    for s in samples:
        res = ex.run(s, strategy, N, reference=references[s.sample_id])
        check_consistent(res, strategy)
        assert res.row["lossless"] and res.row["acceptance_mode"] == "model"
        assert res.row["placement"] == "shared_gpu"


@pytest.mark.parametrize("sigma", [0.0, 0.03, 0.1, 0.5])
@pytest.mark.parametrize("strategy", SPEC)
def test_perturbed_twin_is_lossless_with_rejections(target, slow, twin, samples, references, strategy, sigma):
    perturb_from(twin, target, sigma, seed=1)
    ex = Executor(slow, twin, gamma=4)
    res = ex.run(samples[0], strategy, N, reference=references[samples[0].sample_id], sigma=sigma)
    check_consistent(res, strategy)
    assert res.row["lossless"], f"{strategy} sigma={sigma} changed the target's tokens"
    if sigma == 0.0:  # an exact copy on the same prompt: the whole window is accepted
        assert res.row["first_draft_matched"] and res.row["tokens_from_window"] == 4


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("strategy", SPEC)
def test_replay_is_lossless_and_follows_the_source(slow, drafter, samples, references, strategy, alpha):
    ex = Executor(slow, drafter, gamma=4)
    sid = samples[1].sample_id
    res = ex.run(samples[1], strategy, N, reference=references[sid], replay=IidAcceptance(alpha), replay_seed=7)
    check_consistent(res, strategy)
    assert res.row["lossless"] and res.row["acceptance_mode"] == "replay"
    if alpha == 0.0:
        assert res.row["accepted"] == 0 and not res.row["first_draft_matched"]
    if alpha == 1.0:  # the whole window (gamma drafts incl. position 1) is accepted
        assert res.row["first_draft_matched"] and res.row["tokens_from_window"] == 4
        if strategy == "parallel_sd":  # passes of up to gamma + 1 tokens instead of N - 1 steps
            assert res.row["target_passes"] < N // 2


def test_replay_from_a_recorded_trace(slow, drafter, samples, references):
    blocks = pd.DataFrame({"run_id": "r", "sample_id": "x", "verify_id": [0, 1, 2], "gamma": 4,
                           "accepted_len": [2, 1, 4]})
    src = TraceAcceptance(blocks, tail_alpha=0.5)
    sid = samples[0].sample_id
    res = Executor(slow, drafter, gamma=4).run(samples[0], "prefill_then_verify", N, reference=references[sid],
                                               replay=src)
    assert res.row["lossless"] and res.row["tokens_from_window"] == 2  # window run R = 2: d1, d2 match


def test_thread_errors_reach_the_caller(target, drafter, samples, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("drafter exploded")

    monkeypatch.setattr(drafter, "decode_step", boom)
    with pytest.raises(RuntimeError, match="drafter exploded"):
        Executor(target, drafter, gamma=4).run(samples[0], "parallel_sd", N)


def test_bad_arguments(target, drafter, samples):
    with pytest.raises(ValueError, match="drafter"):
        Executor(target).run(samples[0], "parallel_sd", N)
    with pytest.raises(ValueError, match="reference"):
        Executor(target, drafter).run(samples[0], "parallel_sd", N, replay=IidAcceptance(0.5))
    with pytest.raises(ValueError, match="strategy"):
        Executor(target).run(samples[0], "serial", N)


def test_adaptive_budget_zero_is_target_only_and_a_budget_caps_the_window(slow, drafter, samples, references):
    ex = Executor(slow, drafter, gamma=4)
    sid = samples[0].sample_id
    zero = ex.run(samples[0], "adaptive_budget", N, reference=references[sid], replay=IidAcceptance(1.0),
                  window_budget=0)
    check_consistent(zero, "target_only")  # the drafter never started
    assert zero.row["drafted"] == 0 and zero.row["window_budget"] == 0 and zero.row["lossless"]
    two = ex.run(samples[0], "adaptive_budget", N, reference=references[sid], replay=IidAcceptance(1.0),
                 window_budget=2)
    check_consistent(two, "prefill_then_verify")
    assert two.row["window_drafts"] <= 2 and two.row["tokens_from_window"] == 2 and two.row["lossless"]


def test_processes_executor_returns_the_threads_executors_tokens(samples):
    """Two worker processes (models built from the same seed) commit exactly the tokens of the
    threads executor, for every strategy, on one host clock."""
    from measure.executor import ProcessExecutor

    build = {r: dict(source="random:tiny", dtype="fp32", device="cpu", seed=3) for r in ("target", "drafter")}
    pipes = {r: build_pipeline(r, **b) for r, b in build.items()}
    threads = Executor(pipes["target"], pipes["drafter"], gamma=4)
    ref = threads.run(samples[0], "target_only", N).tokens
    got = {}
    with ProcessExecutor(build, gamma=4) as procs:
        assert procs.run(samples[0], "target_only", N).tokens == ref  # same seed, same weights
        for strategy in SPEC + ("adaptive_budget",):
            got[strategy] = procs.run(samples[0], strategy, N, reference=ref, replay=IidAcceptance(0.7),
                                      replay_seed=5, window_budget=2)
    for strategy, res in got.items():
        want = threads.run(samples[0], strategy, N, reference=ref, replay=IidAcceptance(0.7), replay_seed=5,
                           window_budget=2)
        assert res.tokens == want.tokens == ref and res.row["lossless"], strategy
        assert res.row["workers"] == "processes" and want.row["workers"] == "threads"
        check_consistent(res, "prefill_then_verify" if strategy == "adaptive_budget" else strategy)
        assert res.timeline["start_ms"].min() == 0.0  # one host clock, rebased on the first activity


def test_record_gaps_gives_one_gap_per_committed_position(slow, drafter, samples, references):
    sid = samples[0].sample_id
    for strategy in ("target_only", "parallel_sd"):
        res = Executor(slow, drafter, gamma=4).run(samples[0], strategy, N, reference=references[sid],
                                                   replay=None if strategy == "target_only" else IidAcceptance(0.8),
                                                   record_gaps=True)
        assert len(res.gaps) == N and all(g >= 0 for g in res.gaps)
    assert Executor(slow, drafter, gamma=4).run(samples[0], "target_only", 3).gaps is None  # off by default


def test_mismatch_gaps_names_the_first_differing_position():
    from measure.executor import mismatch_gaps

    assert mismatch_gaps([1, 2, 3], [1, 2, 3], [5.0, 4.0, 3.0], [5.0, 4.0, 3.0]) == {}
    got = mismatch_gaps([1, 9, 3], [1, 2, 3], [5.0, 0.01, 3.0], [5.0, 0.02, 3.0])
    assert got == {"first_mismatch_position": 2, "gap_at_mismatch": 0.01, "reference_gap_at_mismatch": 0.02}
    assert math.isnan(mismatch_gaps([7], [1], None, None)["gap_at_mismatch"])


def test_each_sample_is_warmed_untimed_before_its_cells():
    """validation_run: both roles prefill a sample once before its timed cells (per-shape first
    calls such as cuDNN attention plans stay out of the recorded latencies)."""
    from types import SimpleNamespace

    from measure.validation_run import SAMPLE_WARMUP, ValidationConfig, _warm_sample

    calls = []

    class FakeExecutor:
        def run(self, sample, strategy, n, **kw):
            calls.append((strategy, n, kw.get("replay")))
            return SimpleNamespace(tokens=[1, 2])

    sample = SimpleNamespace(sample_id="000003")
    ref = _warm_sample(FakeExecutor(), sample, ValidationConfig(target="random:tiny"), {0.1: {"000003": "src"}})
    assert calls == [("target_only", 100, None), ("prefill_then_verify", 2, "src")] and ref.tokens == [1, 2]
    calls.clear()
    _warm_sample(FakeExecutor(), sample, ValidationConfig(target="random:tiny", strategies=("target_only",),
                                                          lengths=(5, 20)), {})
    assert calls == [("target_only", 20, None)] and "untimed" in SAMPLE_WARMUP


def test_sample_cells_are_shuffled_per_sample_with_stable_request_ids():
    """The timed cells of a sample run in a seeded random order (no strategy always first, the
    order effect in CELL_ORDER); request ids do not depend on the order."""
    from measure.validation_run import ValidationConfig, sample_cells

    cfg = ValidationConfig(target="random:tiny", lengths=(5, 20), sigmas=(0.01, 0.1))
    sources = {0.01: {}, 0.1: {}}
    fixed = sample_cells(ValidationConfig(**{**cfg.__dict__, "shuffle": False}), 3, sources)
    assert [c[1] for c in fixed[:1]] == ["target_only"] and [c[0] for c in fixed] == sorted(c[0] for c in fixed)
    assert len(fixed) == 2 * (1 + 2 * 3) and len({c[3] for c in fixed}) == len(fixed)
    norm = lambda cells: [(n, st, None if sg != sg else sg, rid) for n, st, sg, rid in cells]  # noqa: E731 (NaN)
    fixed = norm(fixed)
    a, b = norm(sample_cells(cfg, 3, sources)), norm(sample_cells(cfg, 4, sources))
    assert sorted(a, key=str) == sorted(fixed, key=str) and a == norm(sample_cells(cfg, 3, sources))  # a permutation, reproducible
    assert a != fixed and [c[:3] for c in a] != [c[:3] for c in b]  # shuffled, differently per sample
    ids = {c[:3]: c[3] for c in fixed}
    assert all(ids[c[:3]] == c[3] for c in a)
    assert not any(c[2] == 0.1 for c in sample_cells(cfg, 3, {0.01: {}}))  # a sigma without a trace: no cells


def test_stage_protocol_runs_inside_both_executors(samples):
    """``stage_alone``: measure.stages' alone protocol on the executor's own pipelines (threads)
    and inside its worker processes, one role at a time: the same spans as a stage run."""
    from measure.executor import ProcessExecutor
    from measure.stages import StageConfig, run_alone

    cfg = StageConfig(decode_steps=3, gammas=(1, 2))
    build = {r: dict(source="random:tiny", dtype="fp32", device="cpu", seed=3) for r in ("target", "drafter")}
    pipes = {r: build_pipeline(r, **b) for r, b in build.items()}
    want = [(s["stage"], s.get("gamma")) for s in run_alone(pipes["target"], samples[0], cfg).spans]
    outs = {"threads": Executor(pipes["target"], pipes["drafter"], gamma=2).stage_alone(samples[0], cfg)}
    with ProcessExecutor(build, gamma=2) as procs:
        outs["processes"] = procs.stage_alone(samples[0], cfg)
        assert procs.run(samples[0], "target_only", 4).row["lossless"] is None  # the workers serve on after it
    for kind, out in outs.items():
        assert set(out) == {"target", "drafter"} and not any(o.error for o in out.values()), kind
        assert [(s["stage"], s.get("gamma")) for s in out["target"].spans] == want, kind
        assert sum(s["stage"] == "decode_step" for s in out["drafter"].spans) == 3, kind


def test_loop_gaps_are_the_host_time_between_one_actors_passes():
    from types import SimpleNamespace

    from measure.validation_run import ReferenceLog, ValidationConfig, _warm_sample, loop_gaps_ms

    tl = pd.DataFrame({"actor": ["target"] * 4 + ["drafter"] * 3,
                       "activity": ["prefill", "decode_step", "verify", "decode_step", "draft_step", "draft_step", "load"],
                       "start_ms": [0.0, 10.0, 17.5, 30.0, 1.0, 3.5, 0.0],
                       "end_ms": [9.0, 17.0, 29.0, 37.0, 3.0, 6.0, 1.0]})
    assert loop_gaps_ms(tl) == {"target": [0.5, 1.0], "drafter": [0.5]}  # prefill and CPU stages are no passes
    assert loop_gaps_ms(None) == {} and loop_gaps_ms(tl.iloc[:2]) == {}

    class FakeExecutor:
        def run(self, sample, strategy, n, **kw):
            return SimpleNamespace(tokens=[1, 2], timeline=tl)

    log = ReferenceLog()
    _warm_sample(FakeExecutor(), SimpleNamespace(sample_id="s"), ValidationConfig(target="random:tiny"),
                 {0.1: {"s": "src"}}, log)
    assert log.gaps_ms == {"target": [0.5, 1.0], "drafter": [0.5]}  # the reference only (no peer at work)
    # its prefill phase and decode steps (not verify or draft passes)
    assert log.stage_ms == {"target": {"prefill": [9.0], "decode_step": [7.0, 7.0]}, "drafter": {"load": [1.0]}}
