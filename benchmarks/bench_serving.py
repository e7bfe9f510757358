"""Serving-layer benchmark (one run prints everything).

1. Simulated requests per second (wall and CPU) of one 16-GPU, 10,000-request run,
   per placement policy.
2. Wall time of one sweep on a ``ProcessPoolExecutor`` with 1 vs 2 workers.

Usage: ``python benchmarks/bench_serving.py [--requests 10000] [--sweep-configs 8]``.
Wall times depend on what else runs on the machine; CPU times do not (as much).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import egpt_sim as E  # noqa: E402
from egpt_sim.serving import ServingConfig, run_serving, run_serving_sweep  # noqa: E402

TRACES = "example/seed_calibrated"


def bench_one_run(n_requests: int) -> None:
    ts = E.load_traces(TRACES)
    print(f"== one run: 16 GPUs, {n_requests} requests, Poisson, acceptance 0.6, 50-token answers ==")
    print(f"{'policy':34s} {'rate_rps':>8s} {'wall_s':>7s} {'cpu_s':>7s} {'sim_req/s(wall)':>16s} "
          f"{'sim_req/s(cpu)':>15s} {'p90_s':>6s} {'busy':>5s}")
    cases = [
        ServingConfig(policy="target_only", n_gpus=16, rate_rps=6.0),
        ServingConfig(policy="colocated", strategy="prefill_then_verify", n_gpus=16, rate_rps=6.0),
        ServingConfig(policy="colocated", strategy="parallel_sd", n_gpus=16, rate_rps=5.0),
        ServingConfig(policy="split", strategy="parallel_sd", n_gpus=16, drafter_gpus=4, rate_rps=5.0),
    ]
    for cfg in cases:
        cfg = cfg.replace(n_requests=n_requests, acceptance=0.6, seed=0)
        w0, c0 = time.perf_counter(), time.process_time()
        res = run_serving(cfg, ts)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        s = res.summary()
        print(f"{cfg.variant:34s} {cfg.rate_rps:8.2f} {wall:7.2f} {cpu:7.2f} {n_requests / wall:16.0f} "
              f"{n_requests / cpu:15.0f} {s['latency_p90_ms'] / 1000:6.2f} {s['gpu_busy_mean_frac']:5.2f}")


def sweep_configs(n: int, n_requests: int) -> list[ServingConfig]:
    base = ServingConfig(policy="colocated", n_gpus=8, acceptance=0.6, n_requests=n_requests)
    return [base.replace(rate_rps=0.5 + 0.4 * i, seed=i, policy=("colocated", "target_only")[i % 2])
            for i in range(n)]


def bench_sweep(n_configs: int, n_requests: int) -> None:
    cfgs = sweep_configs(n_configs, n_requests)
    print(f"\n== sweep: {n_configs} configs x {n_requests} requests, ProcessPoolExecutor "
          f"(os.cpu_count() = {os.cpu_count()}) ==")
    walls, frames = {}, {}
    for workers in (1, 2):
        with ProcessPoolExecutor(workers) as pool:
            pool.submit(int, 0).result()  # start the pool before timing
            t0 = time.perf_counter()
            frames[workers] = run_serving_sweep(cfgs, TRACES, executor=pool)
            walls[workers] = time.perf_counter() - t0
        print(f"workers={workers}: wall {walls[workers]:6.2f} s")
    same = frames[1].equals(frames[2])
    print(f"speed-up 2 vs 1 workers: x{walls[1] / walls[2]:.2f} (ideal x2.00); identical results: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--sweep-configs", type=int, default=8)
    ap.add_argument("--sweep-requests", type=int, default=1500)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(wall times include whatever else runs)")
    bench_one_run(a.requests)
    bench_sweep(a.sweep_configs, a.sweep_requests)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
