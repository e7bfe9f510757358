"""Probe: does the target's graph decode step (gpu_ms, the stage span) depend on what was allocated
on the GPU before the model (physical placement of the weights) or on other processes' contexts?
One process per call; prints one JSON line.

    python scripts/probe_alloc.py --dataset DIR [--pad-gb 15] [--pad-after-gb 0] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from measure import activities as act
from measure import dataset as ds
from measure.models import build_pipeline
from measure.timing import Clock, StageTimer


def decode_ms(pipe, sample, steps: int) -> list[float]:
    loaded = pipe.load(sample)
    embeds = pipe.vision_encode(pipe.preprocess(loaded, sample.query))
    cache, tok = act.prefill_first_token(pipe, embeds)
    if not pipe.backend.prepared:
        pipe.prepare_backend([1])
    n = int(embeds.shape[1])
    timer = StageTimer(pipe.device, Clock((pipe.device,)))
    for s in range(steps):
        with timer.span("decode_step"):
            cache, tok = act.decode_token(pipe, cache, tok, n + s + 2)
    return [sp.gpu_ms for sp in timer.resolve()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--pad-gb", type=float, default=0.0, help="allocated (and kept) before the model is built")
    ap.add_argument("--pad-after-gb", type=float, default=0.0, help="allocated after the model is built")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--label", default="")
    ap.add_argument("--source", default="random:vicuna7b-clip336")
    ap.add_argument("--dtype", default="fp16")
    a = ap.parse_args()
    pad = torch.empty(int(a.pad_gb * 2**30), dtype=torch.uint8, device=a.device) if a.pad_gb else None
    pipe = build_pipeline("target", source=a.source, dtype=a.dtype, backend="graphs",
                          device=a.device, seed=0)
    after = torch.empty(int(a.pad_after_gb * 2**30), dtype=torch.uint8, device=a.device) if a.pad_after_gb else None
    sample = ds.load_dataset(a.dataset, 1)[0]
    decode_ms(pipe, sample, 4)  # warm-up: capture, first shapes
    ms = decode_ms(pipe, sample, a.steps)[2:] + decode_ms(pipe, sample, a.steps)[2:]
    q = statistics.quantiles(ms, n=10)
    w = next(iter(pipe.model.parameters())) if hasattr(pipe, "model") else None
    print(json.dumps({"label": a.label, "pad_gb": a.pad_gb, "pad_after_gb": a.pad_after_gb,
                      "decode_gpu_ms_median": round(statistics.median(ms), 3), "p10": round(q[0], 3),
                      "p90": round(q[-1], 3), "steps": len(ms), "weight_ptr_gb": round(w.data_ptr() / 2**30, 1) if w is not None else None,
                      "utc": time.strftime("%H:%M:%S", time.gmtime())}), flush=True)
    del pad, after


if __name__ == "__main__":
    main()
