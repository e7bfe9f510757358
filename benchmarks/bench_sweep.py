"""Sweep benchmark: simulated requests per second of the fast path on the default grid.

Not a timed test: it prints numbers for the README / issue (the target is the default
what-if grid, >= 5,000 scenarios x 500 replayed requests, in under 60 s on 2 cores).

    python benchmarks/bench_sweep.py                    # full default grid, 2 workers
    python benchmarks/bench_sweep.py --quick            # 1/10 of the grid (smoke run)
    python benchmarks/bench_sweep.py --profile          # cProfile one worker's share, in-process

Grid: 6 strategies x output_tokens [5 ... 300] (10) x acceptance alpha 0..1 (21 steps)
x n_gpus {1, 2} x gamma {4, 8} = 5,040 scenarios, 500 requests each, on the bundled
trace set (6 x 10 x 21 x 2 alone is only 2,520). The fast path
(``egpt_sim.fast.run_grid``) runs it over a process pool; the SimPy reference rate
is measured in the same run on a stratified random subset (every strategy x GPU
count), through the same run_grid machinery with ``use_fast=False``, and the fast path
is checked to give the same summaries on that subset.

"simulated requests" counts the scenario's requests (500 per scenario) for both
engines; each also simulates the target_only baseline on the same draws (SimPy runs it
as a second SimPy request, the fast path reuses one cached closed sum per length).
Other processes on the machine inflate the wall time: the worker CPU seconds printed
next to it are the load-independent number (idle 2-core wall ~ CPU / 2 + start-up).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from egpt_sim.sim.config import STRATEGY_NAMES, SimConfig, factorial  # noqa: E402
from egpt_sim.fast import run_grid  # noqa: E402
from egpt_sim.traces import resolve_trace_set  # noqa: E402

OUTPUT_TOKENS = [5, 10, 20, 30, 50, 75, 100, 150, 200, 300]
ALPHAS = [round(i / 20, 2) for i in range(21)]
GAMMAS = [4, 8]


def default_grid(n_requests: int = 500, gammas=GAMMAS) -> list[SimConfig]:
    """6 strategies x 10 lengths x 21 alphas x 2 GPU counts x 2 gammas = 5,040 scenarios.

    (6 x 10 x 21 x 2 alone is 2,520; the gamma factor {4, 8} brings it past 5,000.)
    """
    return factorial(SimConfig(n_requests=n_requests), {
        "strategy": list(STRATEGY_NAMES),
        "output_tokens": OUTPUT_TOKENS,
        "acceptance": ALPHAS,
        "n_gpus": [1, 2],
        "gamma": list(gammas),
    })


def simpy_subset(grid: list[SimConfig], per_cell: int, n_requests: int, seed: int = 0) -> list[SimConfig]:
    """``per_cell`` random scenarios of every (strategy, n_gpus) cell, with fewer requests."""
    rng = random.Random(seed)
    cells: dict[tuple, list[SimConfig]] = {}
    for c in grid:
        cells.setdefault((c.strategy, c.n_gpus), []).append(c)
    out = []
    for key in sorted(cells):
        out += [c.replace(n_requests=n_requests) for c in rng.sample(cells[key], per_cell)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=None, help="trace-set folder or bundled name (default: bundled)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--requests", type=int, default=500, help="requests per scenario")
    ap.add_argument("--gammas", default=",".join(map(str, GAMMAS)), help="comma-separated gamma values")
    ap.add_argument("--quick", action="store_true", help="every 10th scenario of the grid")
    ap.add_argument("--simpy-per-cell", type=int, default=2, help="SimPy subset: scenarios per strategy x n_gpus")
    ap.add_argument("--simpy-requests", type=int, default=40, help="SimPy subset: requests per scenario")
    ap.add_argument("--profile", action="store_true", help="cProfile the fast path in-process on 1/workers of the grid")
    args = ap.parse_args(argv)

    path = str(resolve_trace_set(args.traces))
    gammas = [int(g) for g in args.gammas.split(",")]
    grid = default_grid(args.requests, gammas)
    if args.quick:
        grid = grid[::10]

    if args.profile:
        import cProfile
        import pstats

        share = random.Random(0).sample(grid, len(grid) // max(1, args.workers))  # one worker's share
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        run_grid(share, path, workers=1)
        prof.disable()
        dt = time.perf_counter() - t0
        print(f"profile: {len(share)} scenarios in-process in {dt:.1f} s")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return 0

    print(f"trace set      : {path}")
    print(f"workers        : {args.workers} (os.cpu_count() = {os.cpu_count()})")
    if hasattr(os, "getloadavg"):  # other processes on a 2-core box inflate the wall time
        print(f"load average   : {os.getloadavg()[0]:.2f} (1 min, before the run)")

    fast = run_grid(grid, path, workers=args.workers, use_fast=True)
    wall = fast.attrs["wall_s"]
    n_req = fast.attrs["simulated_requests"]
    rate = n_req / wall

    sub = simpy_subset(default_grid(args.requests, gammas), args.simpy_per_cell, args.simpy_requests)
    ref = run_grid(sub, path, workers=args.workers, use_fast=False)
    ref_rate = ref.attrs["simulated_requests"] / ref.attrs["wall_s"]
    chk = run_grid(sub, path, workers=1, use_fast=True)
    num = [c for c in ref.columns if c.endswith(("_ms", "_tokens", "_mean")) or c.startswith("speedup")]
    a, r = chk[num].to_numpy(float), ref[num].to_numpy(float)
    both = np.isnan(a) & np.isnan(r)  # columns neither engine fills (e.g. prompt tokens of a measured shape)
    rel = np.where(both, 0.0, np.abs(a - r) / np.maximum(1e-12, np.abs(r)))  # NaN on one side only stays NaN
    max_rel = float(np.max(rel))

    print(f"scenarios      : {len(fast):,} (fast path {fast.attrs['n_fast']:,}, SimPy fallback {fast.attrs['n_simpy']:,})")
    print(f"requests each  : {args.requests}")
    print(f"simulated req  : {n_req:,}")
    print(f"wall           : {wall:.1f} s  (target < 60 s); worker CPU {fast.attrs['worker_cpu_s']:.1f} s "
          f"over {args.workers} workers")
    print(f"fast path      : {rate:,.0f} simulated requests/s")
    print(f"SimPy reference: {ref_rate:,.0f} simulated requests/s "
          f"({len(sub)} scenarios x {args.simpy_requests} requests, same {args.workers} workers, "
          f"{ref.attrs['wall_s']:.1f} s)")
    print(f"ratio          : {rate / ref_rate:,.0f}x")
    print(f"subset check   : fast vs SimPy summaries, max relative difference {max_rel:.1e}")
    if not max_rel <= 1e-9:
        print("MISMATCH: the fast path disagrees with the SimPy reference on the subset "
              "(reference model changed? run pytest tests/test_fastpath.py)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
