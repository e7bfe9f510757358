"""Probe: the target's graph decode step (gpu_ms) in the two executor harnesses, interleaved
in time with stage runs (run by scripts/probe_decode_gap.sh), drafter on the same GPU vs on a
second GPU (target_only requests: the drafter idles). One JSON line per probe.

    python scripts/probe_placement.py --dataset DIR [--n 60 --requests 4]
        [--probes processes:cuda:1,processes:cuda:0,threads:cuda:1]

Why: in the H200 two-GPU validation grids the target's decode step took 13.9 ms (gpu_ms) in the
executor and 13.2 ms in every stage run of the same call; on one GPU the two agree (13.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from measure import dataset as ds
from measure.executor import Executor, ProcessExecutor
from measure.models import build_pipeline


def _build(a, drafter_device: str) -> dict:
    return {r: dict(source=a.source, dtype=a.dtype, backend=a.backend, seed=0,
                    device=a.target_device if r == "target" else drafter_device) for r in ("target", "drafter")}


def _decode_ms(ex, sample, a) -> list[float]:
    ex.run(sample, "target_only", 12, 0)  # warm-up (graph capture)
    steps = []
    for i in range(a.requests):
        tl = ex.run(sample, "target_only", a.n, i + 1).timeline
        steps += tl[tl.activity == "decode_step"]["gpu_ms"].tolist()
    return steps


def probe(sample, workers: str, drafter_device: str, a) -> dict:
    t0 = time.perf_counter()
    build = _build(a, drafter_device)
    if workers == "processes":
        with ProcessExecutor(build, gamma=8) as ex:
            steps = _decode_ms(ex, sample, a)
    else:
        pipes = {r: build_pipeline(r, **b) for r, b in build.items()}
        steps = _decode_ms(Executor(pipes["target"], pipes["drafter"], gamma=8), sample, a)
        del pipes
    q = statistics.quantiles(steps, n=10)
    return {"workers": workers, "drafter_device": drafter_device, "decode_gpu_ms_median": statistics.median(steps),
            "p10": q[0], "p90": q[-1], "steps": len(steps), "wall_s": round(time.perf_counter() - t0, 1),
            "utc": time.strftime("%H:%M:%S", time.gmtime())}


def _parent_models(sample, devices: list[str], a) -> None:
    """Build target and drafter in this process on ``devices``, run one target_only request, free
    them (the CUDA contexts stay, as in measure.validation_run)."""
    import gc

    import torch

    pipes = {r: build_pipeline(r, source=a.source, dtype=a.dtype, backend=a.backend, seed=0, device=d)
             for r, d in zip(("target", "drafter"), devices + devices[-1:])}
    Executor(pipes["target"], pipes["drafter"], gamma=8).run(sample, "target_only", 8, 0)
    del pipes
    gc.collect()
    torch.cuda.empty_cache()


def _parent_acceptance(sample, devices: list[str], a) -> None:
    """As :func:`_parent_models`, but the parent records one acceptance block of ``sample`` with
    the drafter perturbed from the target (sigma 0.03), as measure.validation_run does: on two
    devices this copies tensors between the GPUs (peer access) before the workers start."""
    import gc
    import tempfile

    import torch

    from measure.acceptance import record_acceptance

    pipes = {r: build_pipeline(r, source=a.source, dtype=a.dtype, backend=a.backend, seed=0, device=d)
             for r, d in zip(("target", "drafter"), devices + devices[-1:])}
    with tempfile.TemporaryDirectory() as tmp:
        record_acceptance(pipes["target"], pipes["drafter"], [sample], sigma=0.03, run_id="p", out_dir=tmp,
                          drafter_context="target", gamma=8, n_blocks=1)
    del pipes
    gc.collect()
    torch.cuda.empty_cache()


def _parent_p2p(devices: list[str]) -> None:
    """Only a cross-device copy in the parent (enables peer access between the two GPUs)."""
    import torch

    x = torch.ones(1 << 20, device=devices[1])
    torch.cuda.synchronize(devices[1])
    y = x.to(devices[0])
    torch.cuda.synchronize(devices[0])
    del x, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--source", default="random:vicuna7b-clip336")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--backend", default="graphs")
    ap.add_argument("--target-device", default="cuda:0")
    ap.add_argument("--probes", default="processes:cuda:1,processes:cuda:0")
    ap.add_argument("--parent-models", default="",
                    help="devices (target,drafter) on which this parent process first builds both models, runs a "
                         "request and frees them, as validation_run's parent does before its workers start")
    ap.add_argument("--parent-acceptance", default="",
                    help="devices (target,drafter) on which this parent records one acceptance block first, "
                         "as validation_run's parent does (cross-GPU copies when the devices differ)")
    ap.add_argument("--parent-p2p", default="", help="devices (a,b): the parent only copies a tensor b -> a first")
    a = ap.parse_args()
    sample = ds.load_dataset(a.dataset, 1)[0]
    if a.parent_models:
        _parent_models(sample, a.parent_models.split(","), a)
    if a.parent_acceptance:
        _parent_acceptance(sample, a.parent_acceptance.split(","), a)
    if a.parent_p2p:
        _parent_p2p(a.parent_p2p.split(","))
    for p in a.probes.split(","):
        workers, dev = p.split(":", 1)
        print(json.dumps(probe(sample, workers, dev, a)), flush=True)


if __name__ == "__main__":
    main()
