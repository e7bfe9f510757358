"""Decode backends on one GPU: ms per decode step (p10/p50/p90), verify by gamma, prefill,
capture/compile seconds, and the graphs path's logits against eager (same weights).

One pipeline at a time (built with the same seed, so weights are equal), the same sample, the
spans of :mod:`measure.timing` (host-visible ``duration_ms`` and CUDA-event ``gpu_ms``) around
the calls of :mod:`measure.activities`. The bandwidth floor is the language model's weight bytes
over the GPU's HBM bandwidth (H200 4.8 TB/s, H100 3.35 TB/s). Prints a table and writes JSON::

    python benchmarks/bench_backends.py --source random:vicuna7b-clip224 --device cuda:0 --out bench.json
    python benchmarks/bench_backends.py            # CPU smoke test (random:tiny, fp32, no compile)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from measure import activities as act  # noqa: E402
from measure.dataset import load_dataset  # noqa: E402
from measure.models import build_pipeline  # noqa: E402
from measure.synthetic import SynthConfig, generate  # noqa: E402
from measure.timing import Clock, StageTimer  # noqa: E402

HBM_TB_S = {"H200": 4.8, "H100": 3.35}


def _pct(v) -> dict[str, float]:
    p10, p50, p90 = np.percentile(np.asarray(v, float), [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90), "p90_over_p10": float(p90 / p10)}


def measure_backend(name: str, a, sample) -> dict:
    """All figures of one backend (see module docstring)."""
    pipe = build_pipeline("target", a.source, dtype=a.dtype, device=a.device, backend=name, seed=0,
                          compile_backend=a.compile_backend, sdpa_backends=a.sdpa)
    emb = pipe.vision_encode(pipe.preprocess(pipe.load(sample), sample.query))
    timer = StageTimer(pipe.device, Clock((pipe.device,)))
    cache, tok = act.prefill_first_token(pipe, emb)
    n = pipe.kv_tokens(cache)
    lengths = [1] if name == "compiled" else [1] + [g + 1 for g in a.gammas]
    if not pipe.backend.prepared:
        pipe.prepare_backend(lengths)
    for _ in range(3):  # prefill spans (cache reset each time)
        with timer.span("prefill"):
            cache, tok = act.prefill_first_token(pipe, emb)
    first = tok
    for i in range(a.steps):
        with timer.span("decode_step"):
            cache, tok = act.decode_token(pipe, cache, tok, i + 2)
    pipe.crop(cache, n)
    for g in ([] if name == "compiled" else a.gammas):
        for _ in range(a.verify_reps):
            with timer.span("verify", gamma=g):
                act.verify_pass(pipe, cache, first, list(range(100, 100 + g)), kv_before=n)
            pipe.crop(cache, n)
    spans = timer.resolve()
    rows = lambda st: [s for s in spans if s.stage == st][1 if st == "prefill" else a.skip:]  # noqa: E731
    res = {"backend": name, "prompt_tokens": n, "info": {k: v for k, v in pipe.backend.info.items()},
           "prefill_ms": _pct([s.duration_ms for s in rows("prefill")]),
           "decode_ms": _pct([s.duration_ms for s in rows("decode_step")]),
           "decode_gpu_ms": _pct([s.gpu_ms for s in rows("decode_step")]),
           "verify_ms": {g: float(np.median([s.duration_ms for s in spans if s.stage == "verify" and s.info["gamma"] == g]))
                         for g in ([] if name == "compiled" else a.gammas)},
           "lm_weight_bytes": int(sum(p.numel() * p.element_size() for p in pipe.parts.decoder.parameters())
                                  + pipe.parts.lm_head.weight.numel() * pipe.parts.lm_head.weight.element_size())}
    res["logits_probe"] = _logits_probe(pipe, emb)
    del pipe, cache
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return res


def _logits_probe(pipe, emb) -> list[float]:
    """Logits (fp32) of 3 decode steps + one 4-token verify after a fresh prefill (compared across backends)."""
    cache, tok = act.prefill_first_token(pipe, emb)
    out = []
    for i in range(3):
        cache, logits = pipe.decode_step(cache, tok)
        out.append(logits.float().cpu())
        tok = int(logits.argmax())
    out.append(pipe.verify(cache, [tok, 5, 6, 7]).float().cpu())
    return out


def _floor_note(r: dict) -> str:
    return "" if r["decode_over_floor"] is None else f", {r['decode_over_floor']:.2f}x floor"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="random:tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA, fp32 on the CPU")
    ap.add_argument("--backends", default=None, help="default: eager,static,graphs,compiled (CPU: no compiled)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--sdpa", default="auto", help="SDPA kernels (measure.models.resolve_sdpa): auto, no-cudnn, "
                    "default (torch's choice, cuDNN included), flash, efficient, math")
    ap.add_argument("--gammas", default="1,2,4,8,16,32,64")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--skip", type=int, default=20, help="first decode steps / verify reps not summarised")
    ap.add_argument("--verify-reps", type=int, default=25)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.dtype = a.dtype or ("fp16" if cuda else "fp32")
    a.gammas = [int(x) for x in a.gammas.split(",")]
    a.skip = min(a.skip, a.verify_reps - 1)
    names = (a.backends or ("eager,static,graphs,compiled" if cuda else "eager,static,graphs")).split(",")
    with tempfile.TemporaryDirectory() as tmp:
        sample = load_dataset(str(generate(tmp, SynthConfig(n_samples=1)).parent), 1)[0]
        results = [measure_backend(n, a, sample) for n in names]
    gpu = torch.cuda.get_device_name(torch.device(a.device)) if cuda else "cpu"
    bw = next((v for k, v in HBM_TB_S.items() if k in gpu), None)
    ref = results[0]["logits_probe"]
    print(f"{a.source} target LM on {gpu} ({a.dtype}), prompt {results[0]['prompt_tokens']} tokens; "
          f"decode = median of {a.steps - a.skip} steps; verify = median of {a.verify_reps - a.skip} passes")
    floor = None if bw is None else results[0]["lm_weight_bytes"] / (bw * 1e12) * 1e3
    print(f"bandwidth floor: {floor:.2f} ms/token" if floor else "bandwidth floor: n/a (unknown GPU)")
    for r in results:
        d, probe = r["decode_ms"], r.pop("logits_probe")
        r["max_abs_logit_diff_vs_" + names[0]] = float(max((x - y).abs().max() for x, y in zip(probe, ref)))
        r["decode_over_floor"] = None if floor is None else d["p50"] / floor
        extra = {k: r["info"].get(k) for k in ("capture_s", "compile_s") if k in r["info"]}
        ver = " ".join(f"g{g}={v:.2f}" for g, v in r["verify_ms"].items())
        print(f"  {r['backend']:9s} decode {d['p50']:7.2f} ms (gpu {r['decode_gpu_ms']['p50']:.2f}; p10/p50/p90 "
              f"{d['p10']:.2f}/{d['p50']:.2f}/{d['p90']:.2f}, p90/p10 {d['p90_over_p10']:.3f})"
              f"{_floor_note(r)}; "
              f"prefill {r['prefill_ms']['p50']:.1f} ms; verify {ver}; {extra}; "
              f"max |logit diff| vs {names[0]} {r['max_abs_logit_diff_vs_' + names[0]]:.3g}")
    if a.out:
        Path(a.out).write_text(json.dumps({"gpu": gpu, "floor_ms": floor, "source": a.source, "dtype": a.dtype,
                                           "torch": torch.__version__, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
