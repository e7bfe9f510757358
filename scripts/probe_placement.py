"""Probe: the target's graph decode step inside the process executor, drafter on the same GPU
vs on a second GPU (target_only requests: the drafter worker idles). Prints median gpu_ms.

    python scripts/probe_placement.py --dataset DIR [--n 60 --requests 4]

Why: in the H200 two-GPU validation grids the target's decode step took 13.9 ms (gpu_ms) in the
executor and 13.2 ms in every stage run of the same call; on one GPU the two agree (13.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from measure import dataset as ds
from measure.executor import ProcessExecutor


def probe(sample, drafter_device: str, a) -> dict:
    build = {r: dict(source=a.source, dtype="fp16", backend="graphs", device="cuda:0" if r == "target" else drafter_device)
             for r in ("target", "drafter")}
    t0 = time.perf_counter()
    ex = ProcessExecutor(build, gamma=8)
    try:
        ex.run(sample, "target_only", 12, 0)  # warm-up
        steps = []
        for i in range(a.requests):
            tl = ex.run(sample, "target_only", a.n, i + 1).timeline
            steps += tl[tl.activity == "decode_step"]["gpu_ms"].tolist()
    finally:
        ex.close()
    return {"drafter_device": drafter_device, "decode_gpu_ms_median": statistics.median(steps), "steps": len(steps),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--source", default="random:vicuna7b-clip336")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--devices", default="cuda:0,cuda:1,cuda:0")
    a = ap.parse_args()
    sample = ds.load_dataset(a.dataset, 1)[0]
    for d in a.devices.split(","):
        print(json.dumps(probe(sample, d, a)), flush=True)


if __name__ == "__main__":
    main()
