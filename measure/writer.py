"""Trace output: one validated parquet part per finished sample, metadata, the summary table.

``out_dir/stage_timings/part-<run_id>-<sample_id>.parquet`` is written atomically by
:func:`egpt_sim.traces.schema.write_table` after each sample, so a crash loses at most the sample in
flight and ``--resume`` skips what is already on disk. A failed sample (CUDA OOM, a corrupt
clip, ...) becomes one ``status="failed"`` row per failing role with an ``error`` column; the
run goes on. A run that ends with no OK sample raises :class:`NoSamplesError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd


from egpt_sim.traces import schema  # torch- and simpy-free: egpt_sim imports its modules lazily
from measure.errors import first_line, one_line

STAGE_ORDER = ("load", "preprocess", "vision_encode", "prefill", "decode_step", "verify")
EXTRA_COLUMNS = {"peak_mem_mb": "float64", "peak_extra_mb": "float64", "peak_reserved_mb": "float64",
                 "kv_bytes": "Int64", "error": "string"}


class NoSamplesError(RuntimeError):
    """A run finished without a single OK sample."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def rows_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts) -> frame with every schema column plus the extra columns, canonical dtypes."""
    df = pd.DataFrame(list(rows))
    for col, dtype in EXTRA_COLUMNS.items():
        df[col] = (df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index)).astype(dtype)
    return df


class TraceWriter:
    """Writes the stage-timing parts of run ``run_id`` into the trace set ``out_dir``."""

    def __init__(self, out_dir: str | Path, run_id: str, run_meta: dict[str, Any], resume: bool = False):
        self.out_dir, self.run_id = Path(out_dir), run_id
        self.parts_dir = self.out_dir / schema.STAGE_TIMINGS_FILE
        self.run_meta = dict(run_meta)
        existing = self._status_by_sample()
        if existing and not resume:
            raise FileExistsError(f"{self.out_dir}: run {run_id!r} already has {len(existing)} samples; "
                                  "pass --resume to continue it or choose another --run-id")
        schema.write_metadata(self.out_dir, {run_id: self.run_meta})

    def _parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob(f"part-{_safe(self.run_id)}-*.parquet"))

    def part_path(self, sample_id: str) -> Path:
        return self.parts_dir / f"part-{_safe(self.run_id)}-{_safe(sample_id)}.parquet"

    def _status_by_sample(self) -> dict[str, bool]:
        """sample_id -> all rows OK, for this run, from its parts and a consolidated file."""
        single = self.out_dir / f"{schema.STAGE_TIMINGS_FILE}.parquet"
        status: dict[str, bool] = {}
        for p in ([single] if single.exists() else []) + self._parts():  # later sources win
            df = pd.read_parquet(p, columns=["run_id", "sample_id", "status"])
            df = df[df["run_id"] == self.run_id]
            status.update({str(k): bool((g["status"] == "ok").all()) for k, g in df.groupby("sample_id")})
        return status

    def done_samples(self) -> set[str]:
        """Samples of this run already written with all rows OK (failed ones are retried)."""
        return {k for k, ok in self._status_by_sample().items() if ok}

    def write_sample(self, sample_id: str, rows: list[dict[str, Any]]) -> Path:
        """Validate and atomically write the rows of one finished sample."""
        return schema.write_table(rows_frame(rows), self.part_path(sample_id), schema.STAGE_TIMINGS_FILE)

    def counts(self) -> dict[str, int]:
        status = self._status_by_sample()
        ok = sum(status.values())
        return {"samples_ok": ok, "samples_failed": len(status) - ok}

    def finish(self) -> dict[str, int]:
        """Record sample counts in the metadata; raise :class:`NoSamplesError` if none is OK."""
        counts = self.counts()
        schema.write_metadata(self.out_dir, {self.run_id: {**self.run_meta, **counts}})
        if counts["samples_ok"] == 0:
            raise NoSamplesError(f"run {self.run_id!r} in {self.out_dir}: no sample finished OK "
                                 f"({counts['samples_failed']} failed); see the 'error' column")
        return counts


def failed_row(base: dict[str, Any], stage: str, error: BaseException | str) -> dict[str, Any]:
    """The one row a failed role/sample leaves: duration 0, status failed, one-line error."""
    msg = one_line(error) if isinstance(error, BaseException) else first_line(error)
    return {**base, "stage": stage, "step": 0, "duration_ms": 0.0, "kv_tokens": 0, "query_tokens": 0,
            "gamma": 0, "peer_busy": False, "start_ms": float("nan"), "status": "failed", "error": msg,
            "peer_activity": "none", "overlap_frac": float("nan"), "gpu_ms": float("nan")}


def peer_overlap(outcomes: dict[str, Any]) -> dict[str, list[tuple[float, str]]]:
    """Per span: (fraction of it covered by the peer's spans of the same resource, the peer's
    stage covering most). A GPU span counts the peer's GPU spans (the GPU is what they share);
    a CPU span (load, preprocess) the peer's CPU spans (host cores, threads). Activity ``none``
    when nothing overlaps.
    """
    res: dict[str, list[tuple[float, str]]] = {}
    cpu = ("load", "preprocess")
    for role, out in outcomes.items():
        spans = [(s["start_ms"], s["start_ms"] + s["duration_ms"], s["stage"])
                 for o in (o for r, o in outcomes.items() if r != role) for s in o.spans]
        peers = {True: sorted(x for x in spans if x[2] in cpu), False: sorted(x for x in spans if x[2] not in cpu)}
        flags = []
        for s in out.spans:
            peer = peers[s["stage"] in cpu]
            a, b = s["start_ms"], s["start_ms"] + s["duration_ms"]
            by_stage: dict[str, float] = {}
            for st, e, stage in peer:  # peer spans never overlap each other
                by_stage[stage] = by_stage.get(stage, 0.0) + max(0.0, min(b, e) - max(a, st))
            cover = sum(by_stage.values())
            frac = min(1.0, cover / (b - a)) if b > a else 0.0
            flags.append((frac, max(by_stage, key=by_stage.get) if cover > 0 else "none"))
        res[role] = flags
    return res


def mark_peer_busy(outcomes: dict[str, Any], min_fraction: float = 0.5) -> dict[str, list[bool]]:
    """peer_busy per span: the peer's spans cover >= ``min_fraction`` of this span's duration."""
    return {r: [f >= min_fraction for f, _ in v] for r, v in peer_overlap(outcomes).items()}


def outcome_rows(outcomes: dict[str, Any], base: dict[str, Any], concurrent: bool) -> list[dict[str, Any]]:
    """Schema rows of one sample; a failed role leaves one failed row (in concurrent runs the
    whole sample is failed: the peer did not run as planned)."""
    failed = {r: o for r, o in outcomes.items() if o.error}
    rows: list[dict[str, Any]] = []
    overlap = peer_overlap(outcomes) if concurrent else {}
    for role, out in outcomes.items():
        rbase = {**base, "role": role, "frames": out.frames, "prompt_tokens": out.prompt_tokens}
        if role in failed or (concurrent and failed):
            err = out.error or f"peer failed: {next(iter(failed.values())).error}"
            rows.append(failed_row(rbase, out.failed_stage if out.error else "load", err))
            continue
        flags = overlap.get(role, [(0.0, "none")] * len(out.spans))
        for s, (frac, peer) in zip(out.spans, flags, strict=True):
            row = {**rbase, "stage": s["stage"], "step": int(s["step"]), "duration_ms": float(s["duration_ms"]),
                   "kv_tokens": int(s.get("kv_tokens", 0)), "query_tokens": int(s.get("query_tokens", 0)),
                   "gamma": int(s.get("gamma", 0)), "peer_busy": bool(frac >= 0.5), "start_ms": float(s["start_ms"]),
                   "status": "ok", "peer_activity": peer if concurrent else "none",
                   "overlap_frac": float(frac) if concurrent else 0.0,
                   "gpu_ms": float(s.get("gpu_ms", float("nan")))}
            if s["stage"] == "prefill":
                row.update(peak_mem_mb=out.peak_mem_mb, peak_extra_mb=out.peak_extra_mb, kv_bytes=out.kv_bytes,
                           peak_reserved_mb=getattr(out, "peak_reserved_mb", float("nan")))
            rows.append(row)
    return rows


def consolidate(out_dir: str | Path) -> Path:
    """Merge all parts (and an earlier consolidated file) into ``stage_timings.parquet``."""
    out_dir = Path(out_dir)
    parts_dir, single = out_dir / schema.STAGE_TIMINGS_FILE, out_dir / f"{schema.STAGE_TIMINGS_FILE}.parquet"
    sources = ([single] if single.exists() else []) + sorted(parts_dir.glob("*.parquet"))
    if not sources:
        raise NoSamplesError(f"{out_dir}: nothing to consolidate")
    df = pd.concat([pd.read_parquet(p).assign(_src=i) for i, p in enumerate(sources)], ignore_index=True)
    latest = df.groupby(["run_id", "sample_id"])["_src"].transform("max")  # a re-measured sample wins
    df = df[df["_src"] == latest].drop(columns=["_src", "schema_version"], errors="ignore")
    path = schema.write_table(df, single, schema.STAGE_TIMINGS_FILE)
    for p in parts_dir.glob("*.parquet"):
        p.unlink()
    if parts_dir.is_dir() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    return path


# --------------------------------------------------------------------------- summary


def _fmt(values: pd.Series) -> str:
    v = values.to_numpy(dtype="float64")
    if v.size == 0:
        return "-"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.1f} ± {q3 - q1:.1f}"


def format_report(df: pd.DataFrame) -> str:
    """The seed report's 5-stage table, from recorded rows: median ± IQR per stage in ms.

    One block per (placement, concurrency, frames, role); ``decode_step`` is per token,
    ``verify`` per pass (all gammas). Then contention slow-down factors: median shared /
    median alone per role x stage, for steps where the peer was busy.
    """
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return "(no OK rows)"
    lines = ["| placement | conc. | frames | role | " + " | ".join(STAGE_ORDER[:5])
             + " | verify | prefill tokens | KV MB | peak MB |", "|" + "---|" * 13]
    keys = ["placement", "concurrency", "frames", "role"]
    for (pl, conc, fr, role), g in ok.groupby(keys, sort=True):
        cells = [_fmt(g.loc[g["stage"] == s, "duration_ms"]) for s in STAGE_ORDER]
        pre = g[g["stage"] == "prefill"]
        kv = pre["kv_bytes"].astype("float64").median() / 2**20 if "kv_bytes" in pre else float("nan")
        peak = pre["peak_mem_mb"].astype("float64").median() if "peak_mem_mb" in pre else float("nan")
        peak_s = "-" if np.isnan(peak) else f"{peak:.0f}"
        lines.append(f"| {pl} | {conc} | {fr} | {role} | " + " | ".join(cells)
                     + f" | {int(pre['prompt_tokens'].median()) if len(pre) else '-'} | {kv:.1f} | {peak_s} |")
    lines += ["", "contention slow-down (median shared-run step with busy peer / median alone), per role x stage:"]
    alone = ok[ok["placement"] == "alone"].groupby(["frames", "role", "stage"])["duration_ms"].median()
    busy = ok[(ok["placement"] != "alone") & ok["peer_busy"]]
    for (pl, conc, fr, role, stage), g in busy.groupby(["placement", "concurrency", "frames", "role", "stage"]):
        base = alone.get((fr, role, stage))
        if base is not None and base > 0:
            lines.append(f"  {pl}/{conc} frames={fr} {role:7s} {stage:13s} x{g['duration_ms'].median() / base:.2f}"
                         f"  ({len(g)} steps)")
    return "\n".join(lines)
