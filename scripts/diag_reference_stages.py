"""Diagnostic (not a validation mode): what the reference requests' target load would change.

Folders recorded before ``serving_reference_stage_ms`` (2026-12-01) lack the untimed reference
requests' prefill-phase durations, so the harness cannot scale the stage runs' target load to
the executor's (whose load span holds the dispatch to the worker). This copies FOLDER to OUT,
lets the executor's own ``target_only`` load spans stand in for the references in every serving
run — those requests are scored cells, hence a diagnostic — and runs
``python -m egpt_sim.validation`` on the copy (tables and JSON written in OUT only).

    python scripts/diag_reference_load.py egpt_sim/data/traces/h200/validation-graphs-1gpu-cudnn-loopgaps /tmp/diag
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

from egpt_sim.analysis.validation import main as validation_main
from egpt_sim.traces import schema
from egpt_sim.traces.harness import serving_runs


def executor_target_loads_ms(folder: Path) -> list[float]:
    """Durations (ms) of the target's load spans in the executor's ``target_only`` requests."""
    res = pd.read_parquet(folder / "executor_results.parquet")
    tl = pd.read_parquet(folder / "executor_timeline.parquet")
    ids = res.loc[res["strategy"] == "target_only", "request_id"]
    load = tl[tl["request_id"].isin(ids) & (tl["actor"] == "target") & (tl["activity"] == "load")]
    return [float(x) for x in load["end_ms"] - load["start_ms"]]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    src, out = Path(argv[0]), Path(argv[1])
    meta = schema.read_metadata(src)
    runs = serving_runs(meta)
    if not runs:
        raise SystemExit(f"{src}/metadata.json: no serving run (harness='serving_workers') to attach loads to")
    loads = executor_target_loads_ms(src)
    if not loads:
        raise SystemExit(f"{src}/executor_timeline.parquet: no target_only load span")
    copy = out / src.name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(src, copy)
    schema.write_metadata(copy, {rid: {**meta["runs"][rid], "serving_reference_stage_ms": {"target": {"load": loads}}}
                                 for rid in runs})
    print(f"{len(loads)} executor target_only loads (median {pd.Series(loads).median():.2f} ms) stand in for the "
          f"reference requests of {sorted(runs)}")
    return validation_main([str(copy), "--out", str(out)])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
