"""Trace schema: every bad input is a one-line TraceError naming the file and column."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from egpt_sim.traces import schema
from egpt_sim.traces.schema import TraceError
from egpt_sim.traces import TraceSet


def _one_line_error(excinfo, *must_contain: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, f"multi-line TraceError: {msg!r}"
    for part in must_contain:
        assert part in msg, f"{part!r} not in TraceError message {msg!r}"
    return msg


@pytest.fixture
def stage_df(constant_traces) -> pd.DataFrame:
    """A valid STAGE_TIMINGS frame (canonical dtypes), without the provenance column."""
    return constant_traces.stage_timings.drop(columns=["schema_version"], errors="ignore").reset_index(drop=True)


@pytest.fixture
def acc_df(make_acceptance) -> pd.DataFrame:
    return make_acceptance({("s0", 0): [True, False, True], ("s0", 1): [True, True, True], ("s1", 0): [False, True, False]})


def _write_raw(df: pd.DataFrame, path) -> str:
    """Write parquet WITHOUT validation (what a buggy writer might produce)."""
    df.to_parquet(path, index=False)
    return str(path)


# --------------------------------------------------------------------------- stage timings, file level

BAD_STAGE_CASES = {
    "missing column": (lambda d: d.drop(columns=["duration_ms"]), "duration_ms", "missing"),
    "wrong dtype (str durations)": (lambda d: d.assign(duration_ms=d["duration_ms"].astype(str)), "duration_ms", "dtype"),
    "wrong dtype (float step)": (lambda d: d.assign(step=d["step"] + 0.5), "step", "dtype"),
    "wrong dtype (int bool)": (lambda d: d.assign(peer_busy=d["peer_busy"].astype(int)), "peer_busy", "dtype"),
    "NaN duration": (lambda d: d.assign(duration_ms=d["duration_ms"].where(d.index != 3, np.nan)), "duration_ms", "NaN"),
    "None run_id": (lambda d: d.assign(run_id=d["run_id"].astype(object).where(d.index != 0, None)), "run_id", "NaN"),
    "negative duration": (lambda d: d.assign(duration_ms=d["duration_ms"].where(d.index != 2, -1.0)), "duration_ms", "negative"),
    "negative kv_tokens": (lambda d: d.assign(kv_tokens=d["kv_tokens"].where(d.index != 2, -5)), "kv_tokens", "negative"),
    "infinite duration": (lambda d: d.assign(duration_ms=d["duration_ms"].where(d.index != 1, np.inf)), "duration_ms", "infinite"),
    "unknown role": (lambda d: d.assign(role=d["role"].where(d.index != 0, "oracle")), "role", "oracle"),
    "unknown stage": (lambda d: d.assign(stage=d["stage"].where(d.index != 0, "sampling")), "stage", "sampling"),
    "unknown placement": (lambda d: d.assign(placement=d["placement"].where(d.index != 0, "cloud")), "placement", "cloud"),
    "unknown concurrency": (lambda d: d.assign(concurrency=d["concurrency"].where(d.index != 0, "threads")), "concurrency", "threads"),
    "unknown status": (lambda d: d.assign(status=d["status"].where(d.index != 0, "oom")), "status", "oom"),
    "unsupported schema_version column": (lambda d: d.assign(schema_version="9.9"), "schema_version", "9.9"),
}


@pytest.mark.parametrize("case", list(BAD_STAGE_CASES))
def test_bad_stage_timings_file_is_one_line_error_naming_file_and_column(case, stage_df, tmp_path):
    mutate, column, word = BAD_STAGE_CASES[case]
    path = _write_raw(mutate(stage_df.copy()), tmp_path / "stage_timings.parquet")
    with pytest.raises(TraceError) as ei:
        schema.read_table(path, schema.STAGE_TIMINGS_FILE)
    _one_line_error(ei, path, repr(column), word)


@pytest.mark.parametrize("case", [c for c in BAD_STAGE_CASES if "schema_version" not in c])
def test_bad_stage_timings_in_memory_names_source_and_column(case, stage_df):
    mutate, column, word = BAD_STAGE_CASES[case]
    with pytest.raises(TraceError) as ei:
        schema.validate(mutate(stage_df.copy()), schema.STAGE_TIMINGS_FILE, source="my_frame")
    _one_line_error(ei, "my_frame", repr(column), word)


def test_valid_frame_passes_and_gets_canonical_dtypes(stage_df):
    raw = stage_df.astype({"run_id": object, "step": "int32", "duration_ms": "float32"})
    out = schema.validate(raw, schema.STAGE_TIMINGS_FILE)
    assert out["step"].dtype == np.int64
    assert out["duration_ms"].dtype == np.float64
    assert pd.api.types.is_string_dtype(out["run_id"])
    assert len(out) == len(stage_df)


def test_zero_rows_is_an_error_naming_the_file(stage_df, tmp_path):
    path = _write_raw(stage_df.iloc[:0], tmp_path / "stage_timings.parquet")
    with pytest.raises(TraceError) as ei:
        schema.read_table(path, schema.STAGE_TIMINGS_FILE)
    _one_line_error(ei, path, "zero rows")


def test_corrupt_parquet_is_one_line_error(tmp_path):
    p = tmp_path / "stage_timings.parquet"
    p.write_bytes(b"PAR1 this is not parquet\n second line\n")
    with pytest.raises(TraceError) as ei:
        schema.read_table(p, schema.STAGE_TIMINGS_FILE)
    _one_line_error(ei, str(p), "cannot read parquet")


def test_write_table_refuses_invalid_frames_and_writes_nothing(stage_df, tmp_path):
    p = tmp_path / "stage_timings.parquet"
    with pytest.raises(TraceError) as ei:
        schema.write_table(stage_df.assign(duration_ms=-stage_df["duration_ms"]), p, schema.STAGE_TIMINGS_FILE)
    _one_line_error(ei, str(p), "'duration_ms'")
    assert not p.exists() and not list(tmp_path.iterdir())


def test_unknown_table_name():
    with pytest.raises(TraceError) as ei:
        schema.validate(pd.DataFrame({"a": [1]}), "timings", source="x")
    _one_line_error(ei, "x", "timings")


# --------------------------------------------------------------------------- acceptance


def test_acceptance_prefix_rule_violation(acc_df, tmp_path):
    bad = acc_df.copy()
    # block (s0, 0) is [T, F, T]: prefix = 1; per-token matches = 2 -> claiming 2 is wrong
    sel = (bad["sample_id"] == "s0") & (bad["verify_id"] == 0)
    bad.loc[sel, "accepted_len"] = 2
    path = _write_raw(bad, tmp_path / "acceptance.parquet")
    with pytest.raises(TraceError) as ei:
        schema.read_table(path, schema.ACCEPTANCE_FILE)
    _one_line_error(ei, path, "'accepted_len'", "leading run")


def test_acceptance_prefix_rule_accepts_correct_table(acc_df):
    out = schema.validate(acc_df, schema.ACCEPTANCE_FILE)
    blocks = out.groupby(["sample_id", "verify_id"])["accepted_len"].first().to_dict()
    assert blocks == {("s0", 0): 1, ("s0", 1): 3, ("s1", 0): 0}


@pytest.mark.parametrize("column,value,word", [
    ("position", 3, "'position'"),          # position must be < gamma
    ("accepted_len", 4, "'accepted_len'"),  # exceeds gamma
    ("matched", 1, "'matched'"),            # int instead of bool -> dtype
    ("p_target", -0.1, "'p_target'"),
])
def test_acceptance_bad_values(acc_df, column, value, word):
    bad = acc_df.copy()
    if column == "matched":
        bad["matched"] = bad["matched"].astype(int)
    else:
        bad.loc[0, column] = value
    with pytest.raises(TraceError) as ei:
        schema.validate(bad, schema.ACCEPTANCE_FILE, source="acc.parquet")
    _one_line_error(ei, "acc.parquet", word)


# --------------------------------------------------------------------------- round trips


def test_write_read_round_trip(stage_df, acc_df, tmp_path):
    for table, df in ((schema.STAGE_TIMINGS_FILE, stage_df), (schema.ACCEPTANCE_FILE, acc_df)):
        p = schema.write_table(df, tmp_path / f"{table}.parquet", table)
        back = schema.read_table(p, table)
        assert set(back["schema_version"]) == {schema.SCHEMA_VERSION}
        expected = schema.validate(df, table)
        pd.testing.assert_frame_equal(back.drop(columns=["schema_version"]), expected, check_like=False)
        # reading the folder finds the same table
        pd.testing.assert_frame_equal(schema.read_table(tmp_path, table), back)


def test_parts_folder_layout(stage_df, tmp_path):
    parts = tmp_path / "stage_timings"
    halves = np.array_split(np.arange(len(stage_df)), 3)
    for i, idx in enumerate(halves):
        schema.write_table(stage_df.iloc[idx], parts / f"part-{i:05d}.parquet", schema.STAGE_TIMINGS_FILE)
    whole = schema.read_table(tmp_path, schema.STAGE_TIMINGS_FILE)  # trace-set folder
    direct = schema.read_table(parts, schema.STAGE_TIMINGS_FILE)    # the parts folder itself
    expected = schema.validate(stage_df, schema.STAGE_TIMINGS_FILE)
    for got in (whole, direct):
        pd.testing.assert_frame_equal(got.drop(columns=["schema_version"]), expected)


def test_parts_folder_with_one_bad_part_names_the_folder(stage_df, tmp_path):
    parts = tmp_path / "stage_timings"
    schema.write_table(stage_df, parts / "part-00000.parquet", schema.STAGE_TIMINGS_FILE)
    _write_raw(stage_df.assign(role="oracle", schema_version="1.0"), parts / "part-00001.parquet")
    with pytest.raises(TraceError) as ei:
        schema.read_table(tmp_path, schema.STAGE_TIMINGS_FILE)
    _one_line_error(ei, str(parts), "'role'", "oracle")


def test_empty_parts_folder(tmp_path):
    (tmp_path / "stage_timings").mkdir()
    with pytest.raises(TraceError) as ei:
        schema.read_table(tmp_path, schema.STAGE_TIMINGS_FILE)
    _one_line_error(ei, "stage_timings", "no .parquet parts")


def test_folder_without_table(tmp_path):
    with pytest.raises(TraceError) as ei:
        schema.read_table(tmp_path, schema.ACCEPTANCE_FILE)
    _one_line_error(ei, str(tmp_path), "acceptance")


def test_trace_set_loads_from_parts_layout(example_trace_dir, example_traces):
    st = example_trace_dir / "stage_timings.parquet"
    df = pd.read_parquet(st)
    st.unlink()
    (example_trace_dir / "stage_timings").mkdir()
    for i, idx in enumerate(np.array_split(np.arange(len(df)), 4)):
        _write_raw(df.iloc[idx], example_trace_dir / "stage_timings" / f"part-{i:05d}.parquet")
    ts = TraceSet.load(example_trace_dir)
    assert len(ts.stage_timings) == len(example_traces.stage_timings)
    np.testing.assert_array_equal(np.sort(ts.stage_timings["duration_ms"].to_numpy()),
                                  np.sort(example_traces.stage_timings["duration_ms"].to_numpy()))


# --------------------------------------------------------------------------- metadata


def test_missing_metadata(example_trace_dir):
    (example_trace_dir / "metadata.json").unlink()
    with pytest.raises(TraceError) as ei:
        TraceSet.load(example_trace_dir)
    _one_line_error(ei, str(example_trace_dir / "metadata.json"), "missing")


def test_invalid_metadata_json(example_trace_dir):
    (example_trace_dir / "metadata.json").write_text('{"schema_version": "1.0",\n "runs": {oops}\n')
    with pytest.raises(TraceError) as ei:
        TraceSet.load(example_trace_dir)
    _one_line_error(ei, str(example_trace_dir / "metadata.json"), "invalid JSON")


@pytest.mark.parametrize("version", ["9.9", "", None, 1.0])
def test_unknown_metadata_schema_version(example_trace_dir, version):
    p = example_trace_dir / "metadata.json"
    meta = json.loads(p.read_text())
    if version is None:
        del meta["schema_version"]
    else:
        meta["schema_version"] = version
    p.write_text(json.dumps(meta))
    if version == 1.0:  # a float 1.0 is str()-ed to "1.0": accepted (documents the coercion)
        assert TraceSet.load(example_trace_dir).metadata["schema_version"] == 1.0
        return
    with pytest.raises(TraceError) as ei:
        TraceSet.load(example_trace_dir)
    _one_line_error(ei, str(p), "'schema_version'")


def test_metadata_without_runs(example_trace_dir):
    p = example_trace_dir / "metadata.json"
    p.write_text(json.dumps({"schema_version": "1.0", "runs": {}}))
    with pytest.raises(TraceError) as ei:
        TraceSet.load(example_trace_dir)
    _one_line_error(ei, str(p), "'runs'")


def test_unknown_schema_version_column_in_trace_set(example_trace_dir):
    p = example_trace_dir / "acceptance.parquet"
    df = pd.read_parquet(p)
    _write_raw(df.assign(schema_version="2.0"), p)
    with pytest.raises(TraceError) as ei:
        TraceSet.load(example_trace_dir)
    _one_line_error(ei, str(p), "'schema_version'", "2.0")


def test_write_metadata_merges_runs(tmp_path):
    schema.write_metadata(tmp_path, {"a": {"gpu_name": "x"}}, label="L")
    schema.write_metadata(tmp_path, {"b": {"gpu_name": np.float64(2.5)}})
    meta = schema.read_metadata(tmp_path)
    assert set(meta["runs"]) == {"a", "b"} and meta["label"] == "L"
    assert meta["runs"]["b"]["gpu_name"] == 2.5 and meta["schema_version"] == schema.SCHEMA_VERSION


# --------------------------------------------------------------------------- trace-set usability


@pytest.mark.parametrize("role,stage", [("drafter", "decode_step"), ("target", "prefill")])
def test_trace_set_missing_required_alone_rows(example_trace_dir, role, stage):
    p = example_trace_dir / "stage_timings.parquet"
    df = pd.read_parquet(p)
    drop = (df["role"] == role) & (df["stage"] == stage) & (df["placement"] == "alone")
    assert drop.any()
    _write_raw(df[~drop], p)
    ts = TraceSet.load(example_trace_dir)  # loads (analysis is fine), but cannot be replayed
    with pytest.raises(TraceError) as ei:
        ts.check_simulatable()
    _one_line_error(ei, str(example_trace_dir), "'stage'", stage, role, "alone")
    import egpt_sim as E
    with pytest.raises(TraceError, match="needed to simulate"):
        E.simulate(E.SimConfig(n_requests=1, acceptance=0.5), ts)


def test_trace_set_with_only_failed_rows(example_trace_dir):
    p = example_trace_dir / "stage_timings.parquet"
    _write_raw(pd.read_parquet(p).assign(status="failed"), p)
    with pytest.raises(TraceError) as ei:
        TraceSet.load(example_trace_dir)
    _one_line_error(ei, str(example_trace_dir), "status")


def test_trace_set_folder_missing():
    with pytest.raises(TraceError) as ei:
        TraceSet.load("/nonexistent/trace/set")
    _one_line_error(ei, "/nonexistent/trace/set")


def test_bundled_example_loads_and_is_labelled(example_traces):
    assert "seed-calibrated example" in example_traces.source
    assert "seed-calibrated example" in example_traces.provenance()
    assert example_traces.acceptance is not None and len(example_traces.acceptance) > 0


def test_timeline_validation_rejects_end_before_start():
    tl = pd.DataFrame(dict(request_id=[0], actor=["target"], activity=["prefill"], start_ms=[5.0],
                           end_ms=[4.0], gpu=[0], tokens=[1]))
    with pytest.raises(TraceError) as ei:
        schema.validate(tl, schema.TIMELINE_FILE, source="tl")
    _one_line_error(ei, "tl", "'end_ms'")
