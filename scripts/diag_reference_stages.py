"""Diagnostic (not a validation mode): what the reference requests' target stages would change.

Folders recorded before ``serving_reference_stage_ms`` (2026-12-01) lack the untimed reference
requests' prefill-phase durations, and folders before 2026-12-01's second session their decode
steps, so the harness cannot scale the stage runs' target load and decode step to the executor's
(:data:`egpt_sim.traces.harness.REFERENCE_ACTIVITIES`). This copies FOLDER to OUT, lets the
executor's own ``target_only`` spans of ACTIVITY (default: ``load``) stand in for the references
in every serving run — those requests are scored cells, hence a diagnostic — and runs
``python -m egpt_sim.validation`` on the copy (tables and JSON written in OUT only).

    python scripts/diag_reference_stages.py egpt_sim/data/traces/h200/validation-graphs-1gpu-cudnn-loopgaps /tmp/diag
    python scripts/diag_reference_stages.py egpt_sim/data/traces/h200/validation-eager-1gpu-serving /tmp/diag decode_step
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

from egpt_sim.analysis.validation import main as validation_main
from egpt_sim.traces import schema
from egpt_sim.traces.harness import REFERENCE_ACTIVITIES, serving_runs


def executor_target_spans_ms(folder: Path, activity: str) -> list[float]:
    """Durations (ms) of the target's ``activity`` spans in the executor's ``target_only`` requests."""
    res = pd.read_parquet(folder / "executor_results.parquet")
    tl = pd.read_parquet(folder / "executor_timeline.parquet")
    ids = res.loc[res["strategy"] == "target_only", "request_id"]
    rows = tl[tl["request_id"].isin(ids) & (tl["actor"] == "target") & (tl["activity"] == activity)]
    return [float(x) for x in rows["end_ms"] - rows["start_ms"]]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    src, out, activities = Path(argv[0]), Path(argv[1]), argv[2:] or ["load"]
    if bad := [a for a in activities if a not in REFERENCE_ACTIVITIES]:
        raise SystemExit(f"ACTIVITY {bad[0]!r}: the harness takes only {list(REFERENCE_ACTIVITIES)} from references")
    meta = schema.read_metadata(src)
    runs = serving_runs(meta)
    if not runs:
        raise SystemExit(f"{src}/metadata.json: no serving run (harness='serving_workers') to attach spans to")
    spans = {a: executor_target_spans_ms(src, a) for a in activities}
    if empty := [a for a, ms in spans.items() if not ms]:
        raise SystemExit(f"{src}/executor_timeline.parquet: no target_only {empty[0]} span")
    copy = out / src.name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(src, copy)
    def with_spans(run: dict) -> dict:  # recorded references of other activities are kept
        ref = run.get("serving_reference_stage_ms") or {}
        return {**run, "serving_reference_stage_ms": {**ref, "target": {**ref.get("target", {}), **spans}}}

    schema.write_metadata(copy, {rid: with_spans(meta["runs"][rid]) for rid in runs})
    for a, ms in spans.items():
        print(f"{len(ms)} executor target_only {a} spans (median {pd.Series(ms).median():.2f} ms) stand in for "
              f"the reference requests of {sorted(runs)}")
    return validation_main([str(copy), "--out", str(out)])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
