"""Does timing the stages change what is timed? One run answers two questions:

1. overhead: end-to-end time of a request (load -> decode N tokens) with the stage timers
   versus the identical code path under :class:`measure.timing.NullTimer` (target <= 1 %);
2. coverage: sum of the recorded stage durations versus the instrumented end-to-end time
   (target: within 2 %; the rest is Python between stages).

Requests are interleaved (plain, timed, plain, timed, ...) so drift hits both equally, and
medians are reported. Works on the CPU tiny preset and on a GPU with full-size presets::

    python benchmarks/bench_instrumentation.py                       # CPU, random:tiny
    python benchmarks/bench_instrumentation.py --source random:vicuna7b-clip224 --device cuda:0 --dtype fp16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from measure.dataset import load_dataset  # noqa: E402
from measure.models import build_pipeline  # noqa: E402
from measure.stages import StageConfig, role_protocol  # noqa: E402
from measure.synthetic import SynthConfig, generate  # noqa: E402
from measure.timing import Clock, NullTimer, StageTimer, synchronize  # noqa: E402


def one_request(pipe, sample, decode_steps: int, instrumented: bool) -> tuple[float, float]:
    """(end-to-end ms, sum of stage durations ms; NaN when not instrumented)."""
    cfg = StageConfig(decode_steps=decode_steps, gammas=(), warmup_samples=0)
    synchronize(pipe.device)
    timer = StageTimer(pipe.device, Clock((pipe.device,))) if instrumented else NullTimer(pipe.device)
    t0 = time.perf_counter()
    out = role_protocol(pipe, sample, timer, cfg)
    synchronize(pipe.device)
    e2e_ms = (time.perf_counter() - t0) * 1000.0
    if out.error:
        raise RuntimeError(out.error)
    spans = timer.resolve()
    return e2e_ms, (float(sum(sp.duration_ms for sp in spans)) if spans else float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="random:tiny")
    ap.add_argument("--role", choices=("target", "drafter"), default="target")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA (the traced configuration), fp32 on CPU")
    ap.add_argument("--backend", default="eager", help="decode backend (measure.backends)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sdpa", default="no-cudnn", help="SDPA kernels (measure.models.configure_sdpa)")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dataset", default=None, help="dataset dir (default: 2 synthetic samples in a temp dir)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args(argv)
    a.dtype = a.dtype or ("fp16" if a.device.startswith("cuda") else "fp32")

    with tempfile.TemporaryDirectory() as tmp:
        ds_dir = a.dataset or str(generate(tmp, SynthConfig(n_samples=2)).parent)
        sample = load_dataset(ds_dir, 1)[0]
        pipe = build_pipeline(a.role, a.source, dtype=a.dtype, device=a.device, frames=a.frames,
                              sdpa_backends=a.sdpa, backend=a.backend)
        for instrumented in (False, True, False, True):  # warm-up, both paths
            one_request(pipe, sample, a.decode_steps, instrumented)
        plain, timed, stage_sum = [], [], []
        for _ in range(a.reps):
            plain.append(one_request(pipe, sample, a.decode_steps, False)[0])
            e2e, total = one_request(pipe, sample, a.decode_steps, True)
            timed.append(e2e)
            stage_sum.append(total)

    plain_ms, timed_ms = float(np.median(plain)), float(np.median(timed))
    overhead_pct = (timed_ms - plain_ms) / plain_ms * 100.0
    gap_pct = float(np.median([(e - s) / e * 100.0 for e, s in zip(timed, stage_sum, strict=True)]))
    rows = [("uninstrumented end-to-end", f"{plain_ms:.2f} ms", ""),
            ("instrumented end-to-end", f"{timed_ms:.2f} ms", ""),
            ("instrumentation overhead", f"{overhead_pct:+.2f} %", "PASS" if overhead_pct <= 1.0 else "FAIL (> 1 %)"),
            ("stage sum", f"{float(np.median(stage_sum)):.2f} ms", ""),
            ("end-to-end not in a stage", f"{gap_pct:.2f} %", "PASS" if abs(gap_pct) <= 2.0 else "FAIL (> 2 %)")]
    print(f"{a.role} {a.source} on {a.device} ({a.dtype}, {a.backend}, {pipe.frames} frames, {pipe.prompt_tokens} prompt "
          f"tokens, {a.decode_steps} decode steps), median of {a.reps} interleaved pairs")
    for name, value, verdict in rows:
        print(f"  {name:28s} {value:>12s}  {verdict}")
    failed = overhead_pct > 1.0 or abs(gap_pct) > 2.0
    return 1 if (a.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
