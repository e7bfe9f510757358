"""Trace schema shared by ``measure`` (writers) and ``egpt_sim`` (readers).

This module is the contract between GPU measurement and CPU simulation. It imports
only numpy/pandas/pyarrow (never torch), so both sides can use it.

A *trace set* is a folder holding up to three tables plus run metadata::

    <trace_set>/
        stage_timings.parquet    one row per (run, sample, role, stage, step)
        acceptance.parquet       one row per (run, sample, verification, draft position)
        timeline.parquet         one row per executed activity (executor / simulator)
        metadata.json            {"schema_version", "runs": {run_id: {...}}, "label", ...}

Each table may instead be a folder of part files (``stage_timings/part-*.parquet``),
which is how ``measure`` appends one part per finished sample. Readers accept both.

Stage timings (``STAGE_TIMINGS``)
---------------------------------
================  ========  ===========================================================
column            dtype     meaning
================  ========  ===========================================================
run_id            string    id of the measurement run (key into metadata["runs"])
sample_id         string    dataset sample the row belongs to
role              string    ``target`` (Video-LLaVA) or ``drafter`` (EventGPT-like)
stage             string    ``load``, ``preprocess``, ``vision_encode``, ``prefill``,
                            ``decode_step``, ``verify``
step              int64     decode step / verify pass index within the sample (0 else)
duration_ms       float64   measured duration, ms (CUDA events for GPU stages,
                            perf_counter for CPU stages); must be >= 0
prompt_tokens     int64     LLM prompt (prefill) length actually produced, tokens
kv_tokens         int64     KV-cache length *before* this stage ran, tokens
query_tokens      int64     tokens fed to this forward pass (prefill: prompt_tokens,
                            decode_step: 1, verify: gamma + 1; 0 for CPU/vision stages)
gamma             int64     draft tokens verified by a ``verify`` pass (0 otherwise)
frames            int64     frames given to the vision tower
placement         string    ``alone`` | ``shared_gpu`` | ``separate_gpu``
concurrency       string    how the peer ran: ``none`` | ``streams`` | ``processes``
peer_busy         bool      the other model was running during (most of) this stage
start_ms          float64   start relative to the sample's common origin, ms (NaN if
                            not recorded)
status            string    ``ok`` or ``failed`` (e.g. CUDA OOM); failed rows are kept
                            for provenance and ignored by the simulator
================  ========  ===========================================================

Optional columns (schema 1.1; a 1.0 file is read with the default shown):

================  ========  ===========================================================
peer_activity     string    what the peer model was doing during this span: its stage
                            with the largest overlap (``prefill``, ``decode_step``,
                            ``verify``, ``vision_encode``, ...), ``none`` when the peer was
                            idle or absent. Default: ``busy`` where ``peer_busy`` (1.0
                            files did not record the activity), else ``none``.
overlap_frac      float64   fraction of this span covered by the peer's spans (0..1);
                            NaN when not recorded (default)
gpu_ms            float64   CUDA-event device time inside the span, ms (NaN for CPU
                            stages / not recorded). ``duration_ms`` is the host-visible
                            span (see ``measure.timing``)
backend           string    decode backend: ``eager`` | ``static`` | ``graphs`` |
                            ``compiled`` (default ``eager``)
================  ========  ===========================================================

Acceptance (``ACCEPTANCE``)
---------------------------
====================  ========  ========================================================
column                dtype     meaning
====================  ========  ========================================================
run_id                string    measurement run
sample_id             string    dataset sample
verify_id             int64     verification index within the sample (0 = the draft
                                block produced in the parallel-prefill window)
position              int64     draft position within the block, 0-based
gamma                 int64     number of drafts in this verification block
draft_token           int64     token the drafter proposed
target_token          int64     token the target commits at this position under the
                                run's verification rule: ``greedy``: its argmax;
                                ``sampled``: draft_token if accepted, else the token
                                resampled from norm(max(0, p - q))
p_draft               float64   drafter probability of draft_token
p_target              float64   target probability of draft_token
matched               bool      the draft passes the run's verification rule: ``greedy``:
                                draft_token == target argmax; ``sampled``: accepted by
                                the rejection test (probability min(1, p_target /
                                p_draft)). Either way matched == (draft_token ==
                                target_token)
accept_prob           float64   min(1, p_target / p_draft) (speculative sampling)
target_in_draft_top5  bool      target_token is in the drafter's top-5 at this position
accepted_len          int64     accepted *prefix* length of this verification, repeated
                                on every row of the block (0..gamma): the leading run of
                                ``matched``
====================  ========  ========================================================

The rule is the run's ``acceptance_rule`` metadata (``mode`` ``greedy`` or ``sampled``
with its ``temperature``; ``measure.acceptance``). ``sampled`` is speculative sampling
(Leviathan et al. 2023; Chen et al. 2023): drafts sampled from the drafter, p and q
softmaxes at the same temperature, the continuation follows the committed tokens.
``matched`` is recorded at every position, also after the first rejection (the test
against the target's distribution given the drafted prefix). The simulator reads only
``accepted_len`` and ``gamma``.

Timeline (``TIMELINE``): one row per activity, for Gantt charts and for comparing the
simulator with the real executor.

==============  ========  =============================================================
column          dtype     meaning
==============  ========  =============================================================
request_id      int64     request index
actor           string    ``target`` or ``drafter``
activity        string    stage name (``prefill``, ``draft_step``, ``verify``, ...)
start_ms        float64   start time relative to the request's arrival, ms
end_ms          float64   end time, ms (>= start_ms)
gpu             int64     GPU index the activity ran on (-1 for CPU stages)
tokens          int64     tokens produced/verified by the activity (0 if n/a)
==============  ========  =============================================================

Three acceptance numbers are never mixed up (see ``egpt_sim.acceptance``): the
*per-token match rate* (mean of ``matched`` over all positions), the *mean accepted
prefix length* (mean of ``accepted_len`` per verification) and the per-position
*P(accepted length > i)*.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

SCHEMA_VERSION = "1.1"
SUPPORTED_SCHEMA_VERSIONS = ("1.0", "1.1")

ROLES = ("target", "drafter")
STAGES = ("load", "preprocess", "vision_encode", "prefill", "decode_step", "verify")
CPU_STAGES = ("load", "preprocess")
PREFILL_PHASE_STAGES = ("load", "preprocess", "vision_encode", "prefill")  # a request's stages before its first pass
PASS_ACTIVITIES = ("decode_step", "draft_step", "verify")  # executor timeline activities that are one token pass
# what measure.validation_run keeps of its untimed reference requests (serving_reference_stage_ms)
REFERENCE_STAGES = PREFILL_PHASE_STAGES + ("decode_step",)
PLACEMENTS = ("alone", "shared_gpu", "separate_gpu")
CONCURRENCY = ("none", "streams", "processes")
BACKENDS = ("eager", "static", "graphs", "compiled")

STAGE_TIMINGS_FILE = "stage_timings"
ACCEPTANCE_FILE = "acceptance"
TIMELINE_FILE = "timeline"
METADATA_FILE = "metadata.json"


class TraceError(ValueError):
    """A trace file or table violates the schema; the message is one line naming it."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "string" | "int" | "float" | "bool"
    nullable: bool = False
    nonnegative: bool = False
    allowed: tuple[str, ...] | None = None
    optional: bool = False      # may be absent (older schema): filled with ``default``
    default: Any = None


STAGE_TIMINGS: tuple[Column, ...] = (
    Column("run_id", "string"),
    Column("sample_id", "string"),
    Column("role", "string", allowed=ROLES),
    Column("stage", "string", allowed=STAGES),
    Column("step", "int", nonnegative=True),
    Column("duration_ms", "float", nonnegative=True),
    Column("prompt_tokens", "int", nonnegative=True),
    Column("kv_tokens", "int", nonnegative=True),
    Column("query_tokens", "int", nonnegative=True),
    Column("gamma", "int", nonnegative=True),
    Column("frames", "int", nonnegative=True),
    Column("placement", "string", allowed=PLACEMENTS),
    Column("concurrency", "string", allowed=CONCURRENCY),
    Column("peer_busy", "bool"),
    Column("start_ms", "float", nullable=True),
    Column("status", "string", allowed=("ok", "failed")),
    Column("peer_activity", "string", optional=True, default="<from peer_busy>"),
    Column("overlap_frac", "float", nullable=True, optional=True, default=float("nan")),
    Column("gpu_ms", "float", nullable=True, optional=True, default=float("nan")),
    Column("backend", "string", optional=True, default="eager", allowed=BACKENDS),
)

ACCEPTANCE: tuple[Column, ...] = (
    Column("run_id", "string"),
    Column("sample_id", "string"),
    Column("verify_id", "int", nonnegative=True),
    Column("position", "int", nonnegative=True),
    Column("gamma", "int", nonnegative=True),
    Column("draft_token", "int", nonnegative=True),
    Column("target_token", "int", nonnegative=True),
    Column("p_draft", "float", nonnegative=True),
    Column("p_target", "float", nonnegative=True),
    Column("matched", "bool"),
    Column("accept_prob", "float", nonnegative=True),
    Column("target_in_draft_top5", "bool"),
    Column("accepted_len", "int", nonnegative=True),
)

TIMELINE: tuple[Column, ...] = (
    Column("request_id", "int", nonnegative=True),
    Column("actor", "string", allowed=ROLES),
    Column("activity", "string"),
    Column("start_ms", "float", nonnegative=True),
    Column("end_ms", "float", nonnegative=True),
    Column("gpu", "int"),
    Column("tokens", "int", nonnegative=True),
)

TABLES: dict[str, tuple[Column, ...]] = {
    STAGE_TIMINGS_FILE: STAGE_TIMINGS,
    ACCEPTANCE_FILE: ACCEPTANCE,
    TIMELINE_FILE: TIMELINE,
}

# Run metadata keys every run should carry (missing ones are an error for measured
# traces; the seed-calibrated example sets them to explanatory strings).
RUN_METADATA_KEYS = (
    "gpu_name",
    "dtype",
    "quantization",
    "versions",
    "git_commit",
    "source",  # "measured" | "seed-calibrated example" | "synthetic"
)

_KIND_CHECK = {
    "string": lambda s: pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s),
    "int": pd.api.types.is_integer_dtype,
    "float": lambda s: pd.api.types.is_float_dtype(s) or pd.api.types.is_integer_dtype(s),
    "bool": pd.api.types.is_bool_dtype,
}
_KIND_CAST = {"string": "string", "int": "int64", "float": "float64", "bool": "bool"}


def table_doc(table: str) -> str:
    """Markdown column table for ``table`` (used by the README and ``--help``)."""
    rows = ["| column | dtype | nullable |", "|---|---|---|"]
    for col in TABLES[table]:
        rows.append(f"| `{col.name}` | {col.kind} | {'yes' if col.nullable else 'no'} |")
    return "\n".join(rows)


def validate(df: pd.DataFrame, table: str, source: str = "<memory>") -> pd.DataFrame:
    """Check ``df`` against the column table of ``table``; return it with canonical dtypes.

    Raises :class:`TraceError` with a one-line message naming ``source`` and the column
    for: zero rows, a missing column, a wrong dtype, NaN/None in a non-nullable column,
    a negative value where only non-negative values make sense, an unknown category.
    Extra columns are kept (writers may add provenance columns).
    """
    if table not in TABLES:
        raise TraceError(f"{source}: unknown table {table!r}")
    if len(df) == 0:
        raise TraceError(f"{source}: table {table!r} has zero rows (refusing an empty trace)")
    out = df.copy()
    for col in TABLES[table]:
        where = f"{source}: column {col.name!r}"
        if col.name not in out.columns:
            if not col.optional:
                raise TraceError(f"{where} is missing")
            out[col.name] = _default_column(out, col)
        s = out[col.name]
        if not col.nullable and s.isna().any():
            raise TraceError(f"{where} has {int(s.isna().sum())} missing/NaN values")
        if not _KIND_CHECK[col.kind](s):
            raise TraceError(f"{where} has dtype {s.dtype}, expected {col.kind}")
        if col.kind in ("int", "float"):
            vals = s.to_numpy(dtype="float64", na_value=np.nan)
            if np.isinf(vals).any():
                raise TraceError(f"{where} has infinite values")
            if col.nonnegative and (vals < 0).any():
                raise TraceError(f"{where} has negative values (min {np.nanmin(vals)})")
        if col.allowed is not None:
            bad = sorted(set(s.dropna().astype(str)) - set(col.allowed))
            if bad:
                raise TraceError(f"{where} has unknown values {bad}; allowed {list(col.allowed)}")
        if col.kind == "string":
            out[col.name] = s.astype("string")
        elif not (col.nullable and col.kind != "float"):
            out[col.name] = s.astype(_KIND_CAST[col.kind])
    if table == ACCEPTANCE_FILE:
        _check_acceptance_consistency(out, source)
    if table == TIMELINE_FILE and (out["end_ms"] < out["start_ms"]).any():
        raise TraceError(f"{source}: column 'end_ms' is before 'start_ms' in some rows")
    return out


def _default_column(df: pd.DataFrame, col: Column) -> pd.Series:
    """Values of an optional column absent from an older file."""
    if col.default == "<from peer_busy>":
        busy = df["peer_busy"].astype(bool) if "peer_busy" in df.columns else pd.Series(False, index=df.index)
        return pd.Series(np.where(busy, "busy", "none"), index=df.index, dtype="string")
    return pd.Series([col.default] * len(df), index=df.index,
                     dtype=_KIND_CAST[col.kind] if col.kind != "string" else "string")


def _check_acceptance_consistency(df: pd.DataFrame, source: str) -> None:
    """accepted_len must equal the leading run of ``matched`` in each block (prefix rule)."""
    if (df["position"] >= df["gamma"]).any():
        raise TraceError(f"{source}: column 'position' must be < 'gamma'")
    if (df["accepted_len"] > df["gamma"]).any():
        raise TraceError(f"{source}: column 'accepted_len' exceeds 'gamma'")
    keys = ["run_id", "sample_id", "verify_id"]
    d = df.sort_values(keys + ["position"])
    # leading run of matches: position < first mismatch position
    miss_pos = d["position"].where(~d["matched"], other=np.iinfo(np.int64).max)
    first_miss = miss_pos.groupby([d[k] for k in keys], sort=False).transform("min")
    prefix = np.minimum(first_miss.to_numpy(), d["gamma"].to_numpy())
    if (prefix != d["accepted_len"].to_numpy()).any():
        raise TraceError(
            f"{source}: column 'accepted_len' disagrees with the leading run of 'matched' "
            "(acceptance is a prefix: drafts are accepted up to the first mismatch)"
        )


# --------------------------------------------------------------------------- I/O


def _table_path(folder: Path, table: str) -> Path | None:
    f = folder / f"{table}.parquet"
    d = folder / table
    if f.exists():
        return f
    if d.is_dir():
        return d
    return None


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """Read and validate one table from a parquet file or a folder of part files."""
    path = Path(path)
    if path.is_dir():
        found = _table_path(path, table)
        if found is not None:
            path = found  # a trace-set folder
        elif path.name != table:
            raise TraceError(f"{path}: no {table}.parquet or {table}/ parts found")
    try:
        if path.is_dir():
            parts = sorted(path.glob("*.parquet"))
            if not parts:
                raise TraceError(f"{path}: folder has no .parquet parts")
            df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        else:
            df = pd.read_parquet(path)
    except TraceError:
        raise
    except Exception as exc:  # pyarrow raises many types; keep the message one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceError(f"{path}: cannot read parquet ({msg})") from exc
    _check_version_column(df, path)
    return validate(df, table, source=str(path))


def _check_version_column(df: pd.DataFrame, source: Path) -> None:
    if "schema_version" in df.columns:
        bad = sorted(set(df["schema_version"].astype(str)) - set(SUPPORTED_SCHEMA_VERSIONS))
        if bad:
            raise TraceError(
                f"{source}: column 'schema_version' has unsupported version(s) {bad}; "
                f"this egpt_sim reads {list(SUPPORTED_SCHEMA_VERSIONS)}"
            )


def write_table(df: pd.DataFrame, path: str | Path, table: str) -> Path:
    """Validate and write ``df`` as parquet (with a ``schema_version`` column)."""
    path = Path(path)
    out = validate(df, table, source=str(path))
    out = out.assign(schema_version=SCHEMA_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    out.to_parquet(tmp, index=False)
    tmp.replace(path)  # atomic: a killed writer never leaves half a file
    return path


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """Read ``metadata.json`` of a trace set and check its schema version."""
    p = Path(folder) / METADATA_FILE
    if not p.exists():
        raise TraceError(f"{p}: metadata file is missing")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise TraceError(f"{p}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    version = str(meta.get("schema_version", ""))
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise TraceError(
            f"{p}: field 'schema_version' is {version!r}; supported {list(SUPPORTED_SCHEMA_VERSIONS)}"
        )
    if not isinstance(meta.get("runs"), dict) or not meta["runs"]:
        raise TraceError(f"{p}: field 'runs' must map run_id -> run metadata (found none)")
    return meta


def write_metadata(folder: str | Path, runs: Mapping[str, Mapping[str, Any]], **extra: Any) -> Path:
    """Write/merge ``metadata.json``: existing runs are kept, new ones added or updated."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / METADATA_FILE
    meta: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "runs": {}}
    if p.exists():
        meta = read_metadata(folder)
    meta["runs"].update({k: dict(v) for k, v in runs.items()})
    meta.update(extra)
    meta["schema_version"] = SCHEMA_VERSION
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=_json_default))
    tmp.replace(p)
    return p


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def empty_like(table: str) -> pd.DataFrame:
    """A zero-row frame with the table's columns (for writers building rows)."""
    return pd.DataFrame({c.name: pd.Series(dtype=_KIND_CAST[c.kind]) for c in TABLES[table]})
