"""Command line: ``python -m measure {stages,synth-data,report} ...`` (logic lives in the modules)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BACKENDS = ("eager", "static", "graphs", "compiled")  # measure.backends.BACKENDS (no torch import here)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def _strs(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def cmd_stages(a: argparse.Namespace) -> int:
    from measure.stages import RunPlan, StageConfig, execute

    plan = RunPlan(target=a.target, drafter=a.drafter, dataset=a.dataset, out=a.out, n_samples=a.n_samples,
                   dtype=a.dtype, quant=a.quant, placements=a.placement, concurrency=a.concurrency,
                   frames=a.frames, roles=a.roles, target_device=a.device, drafter_device=a.drafter_device,
                   separate_device=a.separate_device,
                   attn_implementation=a.attn, sdpa_backends=a.sdpa, video_decoder=a.video_decoder,
                   run_prefix=a.run_prefix, backend=a.backend, compile_backend=a.compile_backend,
                   max_new_tokens=a.max_new_tokens,
                   resume=a.resume, consolidate=a.consolidate, progress=not a.no_progress,
                   stage=StageConfig(decode_steps=a.decode_steps, gammas=a.gammas, warmup_samples=a.warmup,
                                     cpu_stages=a.cpu_stages))
    ok, errors = execute(plan)
    if ok:
        print(_report(a.out, ok))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors or not ok else 0


def cmd_synth(a: argparse.Namespace) -> int:
    from measure.synthetic import RESOLUTIONS, SynthConfig, generate

    w, h = RESOLUTIONS[a.resolution] if a.resolution in RESOLUTIONS else map(int, a.resolution.split("x"))
    path = generate(a.out, SynthConfig(n_samples=a.n, width=w, height=h, duration_s=a.duration_s, fps=a.fps,
                                       seed=a.seed, background=a.background, video_format=a.video_format))
    print(f"wrote {a.n} samples: {path}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    print(_report(a.trace_dir, None))
    return 0


def _report(trace_dir: str, run_ids: list[str] | None) -> str:
    from measure.writer import format_report, schema

    df = schema.read_table(trace_dir, "stage_timings")
    return format_report(df if run_ids is None else df[df["run_id"].isin(run_ids)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m measure", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stages", help="per-stage timings of both pipelines -> stage_timings parquet")
    s.add_argument("--target", default="random:vicuna7b-clip224", help="checkpoint dir or random:<preset>")
    s.add_argument("--drafter", default="random:vicuna7b-clip336", help="checkpoint dir or random:<preset>")
    s.add_argument("--dataset", required=True, help="dataset dir (dataset.json) or JSON file")
    s.add_argument("--out", required=True, help="trace set folder")
    s.add_argument("--n-samples", type=int, default=None)
    s.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    s.add_argument("--quant", choices=("none", "4bit"), default="none")
    s.add_argument("--placement", type=_strs, default=("alone",), help="alone,shared_gpu,separate_gpu")
    s.add_argument("--concurrency", type=_strs, default=("streams",), help="streams,processes (shared runs)")
    s.add_argument("--frames", type=_ints, default=(8,), help="8, or a sweep 1,4,8,16,32 (target alone)")
    s.add_argument("--roles", type=_strs, default=("target", "drafter"), help="roles of alone runs")
    s.add_argument("--decode-steps", type=int, default=20)
    s.add_argument("--gammas", type=_ints, default=(1, 2, 4, 8, 16, 32, 64))
    s.add_argument("--backend", choices=BACKENDS, default="eager",
                   help="decode backend: eager (DynamicCache), static (StaticCache), graphs (StaticCache + "
                   "CUDA graphs), compiled (torch.compile reduce-overhead); see measure.backends")
    s.add_argument("--compile-backend", default="inductor", help="dynamo backend of --backend compiled")
    s.add_argument("--max-new-tokens", type=int, default=256,
                   help="room a static cache keeps after the prompt (decode steps + verify + drafts)")
    s.add_argument("--warmup", type=int, default=1, help="untimed warm-up samples per run")
    s.add_argument("--cpu-stages", choices=("overlap", "serial"), default="overlap",
                   help="concurrent placements: both roles' load/preprocess at once (as the executor) or one "
                        "after the other (the protocol before schema 1.1 sets)")
    s.add_argument("--device", default="cuda:0", help="target device (and drafter's unless separate)")
    s.add_argument("--drafter-device", default=None, help="drafter device of every placement (default: the target's)")
    s.add_argument("--separate-device", default="cuda:1", help="drafter device of separate_gpu runs")
    s.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, ...)")
    s.add_argument("--sdpa", default="auto", help="SDPA kernels: auto (default: no-cudnn for eager, torch's "
                   "default for static backends), no-cudnn, default, flash, efficient, math (measure.models.resolve_sdpa)")
    s.add_argument("--video-decoder", choices=("auto", "pyav", "opencv"), default="auto")
    s.add_argument("--run-prefix", default="", help="prefix of the run ids")
    s.add_argument("--resume", action="store_true", help="skip samples already written for a run")
    s.add_argument("--consolidate", action="store_true", help="merge parts into stage_timings.parquet")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_stages)
    g = sub.add_parser("synth-data", help="write a synthetic DSEC-style dataset")
    g.add_argument("--out", required=True)
    g.add_argument("--n", type=int, default=30)
    g.add_argument("--resolution", default="small", help="small (320x240), seed (640x480) or WxH")
    g.add_argument("--duration-s", type=float, default=1.0)
    g.add_argument("--fps", type=int, default=30)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--background", choices=("white", "black"), default="white")
    g.add_argument("--video-format", choices=("mp4", "frames"), default="mp4")
    g.set_defaults(func=cmd_synth)
    r = sub.add_parser("report", help="print the 5-stage table of a trace set")
    r.add_argument("trace_dir")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
