"""Validation scoring benchmark: one folder's traces-only predictions, fast engine vs SimPy.

Not a timed test: it prints wall times and their ratio for the README. ``python -m
egpt_sim.validation`` predicts every executor cell (per measured sample, 20 simulated requests
each) with the fast engine; this times the same ``predict_cell`` calls with the SimPy model on
the first ``--cells`` cells of the ``stages`` mode and checks both give the same latencies.

    python benchmarks/bench_validation.py                       # h200/validation-graphs-1gpu-cudnn-reference
    python benchmarks/bench_validation.py --folder h200/validation-eager-1gpu-reference --cells 6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from egpt_sim.analysis import validation as V  # noqa: E402
from egpt_sim.fast import simulate_fast  # noqa: E402
from egpt_sim.sim.runner import simulate  # noqa: E402
from egpt_sim.traces import resolve_trace_set  # noqa: E402

CELL_KEYS = ["n_gpus", "sigma", "strategy", "output_tokens"]


def cells_of(folder: str, n_cells: int):
    """(cell rows, trace set, concurrency) of the first ``n_cells`` speculative cells, stages mode."""
    res, traces_for = V.load_validation_dir(resolve_trace_set(folder), "stages")
    conc = V.executor_concurrency(res)
    spec = res[res["strategy"] != "target_only"]
    keys = spec[CELL_KEYS].drop_duplicates().head(n_cells).itertuples(index=False)
    out = []
    for k in keys:
        cell = spec[(spec[CELL_KEYS] == list(k)).all(axis=1)]
        ts = traces_for(k.sigma) if callable(traces_for) else traces_for[k.sigma]
        out.append((cell, ts))
    return out, conc


def timed(cells, conc: str, engine, n_predicted: int) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    lat = [V.predict_cell(cell, ts, n_predicted, 0, engine, contention_concurrency=conc)["latency_ms"].to_numpy()
           for cell, ts in cells]
    return time.perf_counter() - t0, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="h200/validation-graphs-1gpu-cudnn-reference")
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--n-predicted", type=int, default=400)
    a = ap.parse_args()
    cells, conc = cells_of(a.folder, a.cells)
    fast_s, fast = timed(cells, conc, simulate_fast, a.n_predicted)
    simpy_s, ref = timed(cells, conc, simulate, a.n_predicted)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(fast, ref))
    n = sum(len(x) for x in fast)
    print(f"{a.folder}: {len(cells)} cells, {n} simulated requests ({conc})")
    print(f"fast engine {fast_s:.2f} s, SimPy {simpy_s:.2f} s: x{simpy_s / fast_s:.1f}; "
          f"largest latency difference {worst:.2e} ms")


if __name__ == "__main__":
    main()
