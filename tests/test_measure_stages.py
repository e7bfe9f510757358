"""measure.stages / writer / cli: rows in schema, resume, failures, placements (CPU, tiny preset)."""

from __future__ import annotations

import importlib.util
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not (importlib.util.find_spec("av") or importlib.util.find_spec("cv2")):
    pytest.skip("needs PyAV or OpenCV to write/read MP4s", allow_module_level=True)

from egpt_sim.traces import schema  # noqa: E402
from measure import stages, writer  # noqa: E402
from measure.cli import main  # noqa: E402
from measure.dataset import load_dataset  # noqa: E402
from measure.models import Pipeline, build_pipeline  # noqa: E402
from measure.stages import RoleOutcome, RunPlan, StageConfig, execute  # noqa: E402
from measure.synthetic import SynthConfig, generate  # noqa: E402

pytestmark = pytest.mark.torch

GPU_STAGES = ("vision_encode", "prefill", "decode_step", "verify")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    generate(out, SynthConfig(n_samples=3, width=96, height=72, duration_s=0.5, fps=20))
    return out


def plan(data_dir, out, **kw) -> RunPlan:
    stage = StageConfig(**{"decode_steps": 3, "gammas": (1, 2), **kw.pop("stage", {})})
    return RunPlan(**{"target": "random:tiny", "drafter": "random:tiny", "dataset": str(data_dir), "out": str(out),
                      "dtype": "fp32", "target_device": "cpu", "frames": (2,), "progress": False,
                      "stage": stage, **kw})


def run_ok(p: RunPlan) -> list[str]:
    ok, errors = execute(p, log=lambda s: None)
    assert not errors, errors
    return ok


def test_alone_rows_fill_the_schema_and_round_trip(data_dir, tmp_path):
    (run_id,) = run_ok(plan(data_dir, tmp_path))
    df = schema.read_table(tmp_path, "stage_timings")  # validates every column
    assert run_id == "fp32-alone-none-f2" and set(df["run_id"]) == {run_id}
    assert len(df) == 3 * 2 * (4 + 3 + 2)  # samples x roles x (4 stages + 3 decode + 2 verify)
    assert (df["status"] == "ok").all() and not df["peer_busy"].any() and set(df["concurrency"]) == {"none"}
    for (_sid, role), g in df.groupby(["sample_id", "role"]):
        by = g.set_index(["stage", "step"])
        n = int(by.loc[("prefill", 0), "prompt_tokens"])
        assert (g["prompt_tokens"] == n).all() and int(by.loc[("prefill", 0), "query_tokens"]) == n
        dec = g[g["stage"] == "decode_step"].sort_values("step")
        assert dec["step"].tolist() == [0, 1, 2] and dec["kv_tokens"].tolist() == [n, n + 1, n + 2]
        ver = g[g["stage"] == "verify"].sort_values("step")
        assert ver["gamma"].tolist() == [1, 2] and ver["query_tokens"].tolist() == [2, 3]
        assert (ver["kv_tokens"] == n).all()  # each verify pass starts from the cropped prefill cache
        assert g["frames"].iloc[0] == (2 if role == "target" else 1)
        assert g.sort_values("start_ms")["stage"].iloc[0] == "load" and g["start_ms"].notna().all()
        assert int(by.loc[("prefill", 0), "kv_bytes"]) == 2 * 2 * 64 * n * 4  # tiny fp32 KV cache
    meta = schema.read_metadata(tmp_path)["runs"][run_id]
    assert set(schema.RUN_METADATA_KEYS) <= set(meta) and meta["samples_ok"] == 3
    assert meta["timing_method"]["gpu_stages"] == "perf_counter" and meta["video_decoder"] in ("pyav", "opencv")


def test_resume_after_a_crash_continues_without_duplicates(data_dir, tmp_path, monkeypatch):
    real, written = writer.TraceWriter.write_sample, []

    def crash_after_two(self, sample_id, rows):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        written.append(sample_id)
        return real(self, sample_id, rows)

    monkeypatch.setattr(writer.TraceWriter, "write_sample", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        execute(plan(data_dir, tmp_path, roles=("target",)), log=lambda s: None)
    monkeypatch.setattr(writer.TraceWriter, "write_sample", real)
    parts = sorted((tmp_path / "stage_timings").glob("*.parquet"))
    assert len(parts) == 2 and written == ["000000", "000001"]
    mtimes = {p: p.stat().st_mtime_ns for p in parts}

    ok, errors = execute(plan(data_dir, tmp_path, roles=("target",)), log=lambda s: None)  # no --resume
    assert not ok and "already has 2 samples; pass --resume" in errors[0]

    run_ok(plan(data_dir, tmp_path, roles=("target",), resume=True))
    df = schema.read_table(tmp_path, "stage_timings")
    assert sorted(df["sample_id"].unique()) == ["000000", "000001", "000002"]
    assert not df.duplicated(["sample_id", "role", "stage", "step"]).any()
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())  # done samples not re-measured


def _fail_target_prefill_of(monkeypatch, bad_ids):
    real_load, real_prefill = Pipeline.load, Pipeline.prefill

    def load(self, sample):
        self._sample_id = sample.sample_id
        return real_load(self, sample)

    def prefill(self, embeds):
        if self.role == "target" and self._sample_id in bad_ids:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\n(details)")
        return real_prefill(self, embeds)

    monkeypatch.setattr(Pipeline, "load", load)
    monkeypatch.setattr(Pipeline, "prefill", prefill)


def test_failed_sample_is_recorded_and_the_run_goes_on(data_dir, tmp_path, monkeypatch):
    _fail_target_prefill_of(monkeypatch, {"000001"})
    (run_id,) = run_ok(plan(data_dir, tmp_path, stage={"warmup_samples": 0}))
    df = schema.read_table(tmp_path, "stage_timings")
    bad = df[df["status"] == "failed"]
    assert len(bad) == 1
    row = bad.iloc[0]
    assert (row["sample_id"], row["role"], row["stage"], row["duration_ms"]) == ("000001", "target", "prefill", 0.0)
    assert row["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    ok_rows = df[(df["sample_id"] == "000001") & (df["role"] == "drafter")]
    assert len(ok_rows) == 9 and (ok_rows["status"] == "ok").all()  # alone: the other role is fine
    meta = schema.read_metadata(tmp_path)["runs"][run_id]
    assert (meta["samples_ok"], meta["samples_failed"]) == (2, 1)
    # a failed sample is retried by --resume
    monkeypatch.undo()
    run_ok(plan(data_dir, tmp_path, resume=True, stage={"warmup_samples": 0}))
    assert (schema.read_table(tmp_path, "stage_timings")["status"] == "ok").all()


def test_zero_ok_samples_is_an_error(data_dir, tmp_path, monkeypatch, capsys):
    _fail_target_prefill_of(monkeypatch, {"000000", "000001", "000002"})
    pipe = build_pipeline("target", "random:tiny", dtype="fp32", device="cpu", frames=1)
    w = writer.TraceWriter(tmp_path, "r0", {"source": "measured"})
    with pytest.raises(writer.NoSamplesError, match="run 'r0' .* no sample finished OK \\(3 failed\\)"):
        stages.run_samples({"target": pipe}, load_dataset(data_dir), StageConfig(decode_steps=1, warmup_samples=0),
                           w, "r0", progress=False)
    code = main(["stages", "--target", "random:tiny", "--dataset", str(data_dir), "--out", str(tmp_path / "cli"),
                 "--dtype", "fp32", "--device", "cpu", "--roles", "target", "--decode-steps", "1", "--no-progress"])
    assert code == 1 and "NoSamplesError" in capsys.readouterr().err


@pytest.mark.parametrize("cpu_stages", ["serial", "overlap"])
def test_shared_gpu_streams_on_cpu_records_overlap(data_dir, tmp_path, cpu_stages):
    (run_id,) = run_ok(plan(data_dir, tmp_path, placements=("shared_gpu",), concurrency=("streams",),
                            stage={"cpu_stages": cpu_stages}))
    df = schema.read_table(tmp_path, "stage_timings")
    assert run_id == "fp32-shared_gpu-streams-f2" and set(df["placement"]) == {"shared_gpu"}
    assert df["start_ms"].notna().all() and df["peer_busy"].dtype == bool
    for _sid, g in df.groupby("sample_id"):
        d, t = g[g["role"] == "drafter"], g[g["role"] == "target"]
        end = lambda rows, stage: float((rows["start_ms"] + rows["duration_ms"])[rows["stage"] == stage].max())  # noqa: E731
        start = lambda rows, stage: float(rows["start_ms"][rows["stage"] == stage].min())  # noqa: E731
        if cpu_stages == "serial":
            assert end(d, "preprocess") <= start(t, "load")  # stages 1-2: one role after the other
            assert min(start(d, "vision_encode"), start(t, "vision_encode")) >= end(t, "preprocess")  # barrier
        else:  # both start stage 1 together (one barrier), as the executor runs them
            assert start(t, "load") < end(d, "preprocess") and start(d, "load") < end(t, "load")
            cpu = g[g["stage"].isin(["load", "preprocess"]) & (g["overlap_frac"] > 0)]
            assert len(cpu) and set(cpu["peer_activity"]) <= {"load", "preprocess"}
        assert "verify" not in set(d["stage"]) and len(t[t["stage"] == "verify"]) == 2
        dec = d[d["stage"] == "decode_step"]
        t_done = end(t, "decode_step")
        # the drafter drafts until the target's last timed step ended (then it stops)
        assert (dec["start_ms"] <= t_done).all()
        assert len(dec) >= 1 or end(d, "prefill") >= t_done
        assert len(t[t["stage"] == "decode_step"]) == 3
        busy = g[(g["overlap_frac"] > 0) & g["stage"].isin(["prefill", "decode_step", "verify"])]
        assert set(busy["peer_activity"]) <= {"vision_encode", "prefill", "decode_step", "verify"}
        assert g["overlap_frac"].between(0, 1).all() and (g["backend"] == "eager").all()


def test_peer_busy_needs_half_the_span_covered():
    def out(role, spans):
        return RoleOutcome(role, 1, spans=[{"stage": "prefill", "step": i, "start_ms": a, "duration_ms": b - a}
                                           for i, (a, b) in enumerate(spans)])

    busy = writer.mark_peer_busy({"target": out("target", [(0, 10), (20, 30)]),
                                  "drafter": out("drafter", [(0, 4), (5, 6), (24, 26), (40, 41)])})
    assert busy["target"] == [True, False] and busy["drafter"] == [True, True, True, False]


def test_separate_gpu_and_processes_on_cpu_devices(data_dir, tmp_path):
    ok = run_ok(plan(data_dir, tmp_path, n_samples=1, placements=("separate_gpu",), drafter_device="cpu",
                     concurrency=("streams", "processes"), stage={"decode_steps": 2}))
    assert ok == ["fp32-separate_gpu-streams-f2", "fp32-separate_gpu-processes-f2"]
    df = schema.read_table(tmp_path, "stage_timings")
    for _run_id, g in df.groupby("run_id"):
        assert set(g["placement"]) == {"separate_gpu"} and (g["status"] == "ok").all()
        assert g["start_ms"].notna().all() and set(g["role"]) == {"target", "drafter"}
    meta = schema.read_metadata(tmp_path)["runs"]["fp32-separate_gpu-processes-f2"]
    assert meta["timing_method"]["gpu_stages"] == "perf_counter" and meta["devices"] == ["cpu", "cpu"]


def test_cli_frame_sweep_report_and_consolidate(data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["stages", "--target", "random:tiny", "--dataset", str(data_dir), "--out", str(out), "--n-samples", "1",
                 "--dtype", "fp32", "--device", "cpu", "--frames", "1,2", "--decode-steps", "1", "--gammas", "1",
                 "--no-progress", "--consolidate"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| alone | none | 1 | target |" in printed and "| alone | none | 2 | target |" in printed
    assert (out / "stage_timings.parquet").exists() and not (out / "stage_timings").exists()
    df = schema.read_table(out, "stage_timings")
    tokens = df[df["stage"] == "prefill"].set_index("frames")["prompt_tokens"]
    assert tokens[2] - tokens[1] == 16 + 1  # one more frame: patches + CLS
    assert set(df["role"]) == {"target"}
    assert main(["report", str(out)]) == 0 and "prefill tokens" in capsys.readouterr().out
    w = writer.TraceWriter(out, "fp32-alone-none-f1", {"source": "measured"}, resume=True)
    assert w.done_samples() == {"000000"}  # resume sees consolidated samples too


def test_synth_data_cli(tmp_path, capsys):
    assert main(["synth-data", "--out", str(tmp_path), "--n", "2", "--resolution", "64x48", "--duration-s", "0.2"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    assert len(list((tmp_path / "mp4").glob("*.mp4"))) == 2


def test_failed_row_is_one_line_and_in_schema():
    row = writer.failed_row({"run_id": "r", "sample_id": "s", "role": "target", "prompt_tokens": 0, "frames": 8,
                             "placement": "alone", "concurrency": "none"}, "load", ValueError("bad\nmore"))
    df = schema.validate(writer.rows_frame([row]), "stage_timings")
    assert df["error"].iloc[0] == "ValueError: bad" and math.isnan(df["start_ms"].iloc[0])


def test_stage_run_and_executor_spans_contain_the_same_work(data_dir, tmp_path, monkeypatch):
    """One span definition: a ``verify`` / ``decode_step`` span makes the same pipeline calls in a
    stage run and in the executor (forward, then the rollback for verify)."""
    import threading
    import time

    from egpt_sim.traces.acceptance import IidAcceptance
    from measure import timing
    from measure.executor import Executor

    local, calls = threading.local(), []  # spans open in this thread (the executor runs two)
    real_span = timing.StageTimer.span

    def span(self, stage, *a, **k):
        cm = real_span(self, stage, *a, **k)

        class Wrap:
            def __enter__(self_):
                local.__dict__.setdefault("open", []).append(stage)
                return cm.__enter__()

            def __exit__(self_, *exc):
                local.open.pop()
                return cm.__exit__(*exc)
        return Wrap()

    def current():
        return local.open[-1] if getattr(local, "open", None) else None

    monkeypatch.setattr(timing.StageTimer, "span", span)
    for name in ("decode_step", "verify", "crop"):
        real = getattr(Pipeline, name)
        monkeypatch.setattr(Pipeline, name, (lambda real, name: lambda self, *a, **k: (
            calls.append((current(), name)), real(self, *a, **k))[1])(real, name))

    def patterns(source):
        by_span = {}
        for span_name, method in source:
            by_span.setdefault(span_name, []).append(method)
        return by_span

    run_ok(plan(data_dir, tmp_path, n_samples=1, roles=("target",), stage={"warmup_samples": 0}))
    stage_calls, calls[:] = list(calls), []
    tgt = build_pipeline("target", "random:tiny", dtype="fp32", device="cpu")
    dft = build_pipeline("drafter", "random:tiny", dtype="fp32", device="cpu")
    sample = load_dataset(data_dir)[0]
    calls[:] = []
    # the executor's decode steps: target_only always runs them (parallel_sd at acceptance 1 may run
    # none when the drafter has drafted every token by the end of the slowed prefill: a race)
    ref = Executor(tgt).run(sample, "target_only", 8).tokens
    real_prefill = tgt.prefill
    tgt.prefill = lambda embeds: (time.sleep(0.2), real_prefill(embeds))[1]  # the drafter wins the race
    Executor(tgt, dft, gamma=2).run(sample, "parallel_sd", 8, reference=ref, replay=IidAcceptance(1.0))
    exec_calls = [(s, m) for s, m in calls if s in ("verify", "decode_step")]
    st, ex = patterns(stage_calls), patterns(exec_calls)
    assert "verify" in ex and "verify" in st
    for name in ("verify", "decode_step"):
        per_span = lambda seq: sorted(set(tuple(seq[i:i + 2]) if seq[i] == "verify" else (seq[i],)  # noqa: E731
                                          for i in range(len(seq)) if seq[i] != "crop"))
        assert per_span(st[name]) == per_span(ex[name]), name
    assert st["verify"].count("crop") == st["verify"].count("verify")  # rollback inside every verify span
    assert ex["verify"].count("crop") == ex["verify"].count("verify")


def test_peer_overlap_fraction_and_activity():
    def out(role, spans):
        return RoleOutcome(role, 1, spans=[{"stage": st, "step": i, "start_ms": a, "duration_ms": b - a}
                                           for i, (st, a, b) in enumerate(spans)])

    res = writer.peer_overlap({
        "target": out("target", [("load", 0, 5), ("prefill", 10, 20), ("decode_step", 30, 40)]),
        "drafter": out("drafter", [("preprocess", 0, 5), ("prefill", 10, 13), ("decode_step", 13, 20),
                                   ("decode_step", 30, 39)])})
    assert res["target"][0] == (1.0, "preprocess")  # a CPU span counts the peer's CPU spans
    assert res["target"][1] == (1.0, "decode_step")  # 3 ms prefill + 7 ms decode: decode dominates
    assert res["target"][2][0] == pytest.approx(0.9) and res["target"][2][1] == "decode_step"
    assert res["drafter"][1] == (1.0, "prefill")


def test_drift_check_flags_a_slowing_host():
    import pandas as pd

    from measure import provenance

    rows = []
    for i in range(8):
        for step in range(4):
            rows.append({"sample_id": f"s{i}", "role": "target", "stage": "decode_step", "status": "ok",
                         "duration_ms": 10.0 * (1.2 if i >= 6 else 1.0)})
        rows.append({"sample_id": f"s{i}", "role": "target", "stage": "prefill", "status": "ok", "duration_ms": 50.0})
    res = provenance.drift_check(pd.DataFrame(rows), [f"s{i}" for i in range(8)])
    assert res["flagged"] and res["change_last_vs_first"]["target/decode_step"] == pytest.approx(0.2)
    assert res["change_last_vs_first"]["target/prefill"] == 0.0
    small = provenance.drift_check(pd.DataFrame(rows[:10]), ["s0", "s1"])
    assert not small["flagged"] and "not checked" in small["note"]


def test_provenance_records_commit_stamp_host_and_4bit_counts(monkeypatch):
    from measure import presets, provenance

    monkeypatch.setenv(provenance.COMMIT_ENV, "abc123 dirty")
    assert provenance.git_info() == ("abc123", True)
    host = provenance.host_info()
    assert {"cpu_model", "cpu_cores_logical", "torch_threads", "mps", "gpu_clocks"} <= set(host)

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(10, dtype=torch.uint8), requires_grad=False)
            self.b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16), requires_grad=False)

    counts = presets.parameter_counts(Packed(), "4bit")
    assert counts["n_params"] == 23 and counts["param_storage"] == {"nf4 (packed uint8)": 20, "float16": 3}
    assert presets.parameter_counts(Packed(), None)["n_params"] == 13


def test_configurations_are_interleaved_per_sample(data_dir, tmp_path, monkeypatch):
    """Sample-major order: every configuration measures sample i before any measures sample i + 1,
    so a contention factor compares rows taken minutes apart at most."""
    order, real = [], writer.TraceWriter.write_sample

    def record(self, sample_id, rows):
        order.append((sample_id, self.run_id))
        return real(self, sample_id, rows)

    monkeypatch.setattr(writer.TraceWriter, "write_sample", record)
    ok = run_ok(plan(data_dir, tmp_path, placements=("alone", "shared_gpu"), concurrency=("streams",),
                     stage={"decode_steps": 1, "gammas": (1,)}))
    assert ok == ["fp32-alone-none-f2", "fp32-shared_gpu-streams-f2"]
    assert [s for s, _ in order] == ["000000", "000000", "000001", "000001", "000002", "000002"]
    assert [r for _, r in order[:2]] == ok
    meta = schema.read_metadata(tmp_path)["runs"]["fp32-alone-none-f2"]
    assert meta["interleaved_with"] == ok and meta["cpu_stages"] == "n/a"
    assert schema.read_metadata(tmp_path)["runs"]["fp32-shared_gpu-streams-f2"]["cpu_stages"] == "overlap"


def test_a_new_prompt_length_is_measured_on_its_second_pass():
    """Per-shape first-call costs (cuDNN plans, autotuning) stay out of the recorded stage times:
    the first pass of a new (role, prompt length) is rerun, its times kept in the metadata."""
    from types import SimpleNamespace

    calls = []

    def runner(sample):
        calls.append(sample.sample_id)
        first = calls.count(sample.sample_id) == 1
        o = RoleOutcome("target", 8, spans=[{"stage": "prefill", "duration_ms": 90.0 if first else 40.0}],
                        prompt_tokens=sample.n)
        return {"target": o}

    run = stages.MeasuredRun("r", StageConfig(), runner, SimpleNamespace(run_meta={}))
    seen: set = set()
    s0, s1, s2 = (SimpleNamespace(sample_id=i, n=n) for i, n in (("a", 600), ("b", 600), ("c", 610)))
    assert stages.warm_outcomes(run, s0, seen)["target"].spans[0]["duration_ms"] == 40.0
    assert stages.warm_outcomes(run, s1, seen)["target"].spans[0]["duration_ms"] == 90.0  # shape known: once
    assert stages.warm_outcomes(run, s2, seen)["target"].spans[0]["duration_ms"] == 40.0
    assert calls == ["a", "a", "b", "c", "c"] and seen == {("target", 600), ("target", 610)}
    assert run.writer.run_meta["first_pass_ms"] == {"a": {"target": {"prefill": 90.0}},
                                                   "c": {"target": {"prefill": 90.0}}}
