"""Simulated speed-ups over target_only on the H200 stage sets (README table): eager (two
threads) vs graphs (two worker processes), 1 and 2 GPUs, 20/50/100 tokens, i.i.d. alpha.

    python benchmarks/h200_speedups.py [--requests 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

import egpt_sim as E  # noqa: E402

SETS = {"eager (threads)": ("h200/eager-fp16", "streams"), "graphs (processes)": ("h200/graphs-fp16", "processes")}
STRATEGIES = ("prefill_then_verify", "parallel_sd", "adaptive_budget")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--alphas", default="0.6,0.9")
    a = ap.parse_args(argv)
    rows = []
    for label, (name, conc) in SETS.items():
        ts = E.load_traces(name)
        for gpus in (1, 2):
            for alpha in (float(x) for x in a.alphas.split(",")):
                for n in (20, 50, 100):
                    row = {"backend": label, "gpus": gpus, "alpha": alpha, "tokens": n}
                    for s in STRATEGIES:
                        cfg = E.SimConfig(strategy=s, output_tokens=n, n_gpus=gpus, acceptance=alpha,
                                          n_requests=a.requests, contention_concurrency=conc)
                        row[s] = E.simulate_fast(cfg, ts).summary()["speedup_of_means"]
                    rows.append(row)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
