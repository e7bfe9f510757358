"""Command line: ``egpt-sim predict | sweep | timeline | plan | traces | make-example``.

Each command parses arguments, calls the library, prints a table or writes a file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .config import STRATEGY_NAMES, SimConfig


def _acceptance(value: str):
    if value == "trace":
        return value
    if "," in value:
        return tuple(float(v) for v in value.split(","))
    return float(value)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", default=None, help="trace-set folder or bundled name (default: bundled H100 set, else example)")
    p.add_argument("--output-tokens", type=int, default=50, help="answer length, tokens")
    p.add_argument("--gamma", type=int, default=8, help="max drafts per verification (and window budget)")
    p.add_argument("--gpus", type=int, default=1, help="1 = shared GPU (contention), 2+ = separate GPUs")
    p.add_argument("--acceptance", type=_acceptance, default="trace",
                   help="'trace' (replay), a per-token rate alpha, or comma-separated conditional rates")
    p.add_argument("--acceptance-run", default=None,
                   help="with --acceptance trace: replay only this acceptance run_id (default: all runs pooled)")
    p.add_argument("--requests", type=int, default=200, help="simulated requests")
    p.add_argument("--seed", type=int, default=0)


def _traces(a):
    from . import load_traces

    ts = load_traces(a.traces)
    return ts.with_acceptance_run(a.acceptance_run) if getattr(a, "acceptance_run", None) else ts


def _config(a, strategy: str) -> SimConfig:
    return SimConfig(strategy=strategy, output_tokens=a.output_tokens, gamma=a.gamma, n_gpus=a.gpus,
                     acceptance=a.acceptance, n_requests=a.requests, seed=a.seed)


def _strategies(value: str) -> list[str]:
    return list(STRATEGY_NAMES) if value == "all" else value.split(",")


def cmd_predict(a) -> int:
    from .runner import draw_bank, simulate

    ts = _traces(a)
    cfgs = [_config(a, s) for s in _strategies(a.strategy)]
    bank = draw_bank(cfgs[0], ts)
    rows = []
    for cfg in cfgs:
        s = simulate(cfg, ts, bank=bank).summary()
        rows.append({"strategy": cfg.strategy, "latency_mean_ms": s["latency_mean_ms"], "p90_ms": s["latency_p90_ms"],
                     "ttft_ms": s["ttft_mean_ms"], "speedup": s["speedup_of_means"],
                     "window_drafts": s["window_drafts_mean_tokens"], "window_accepted": s["window_accepted_mean_tokens"],
                     "accepted": s["accepted_mean_tokens"], "verify_passes": s["verify_passes_mean"]})
    print(f"traces: {ts.provenance()}")
    if a.acceptance == "trace" and len(ts.acceptance_runs()) > 1:
        print(f"acceptance: {len(ts.acceptance_runs())} recorded runs pooled ({', '.join(ts.acceptance_runs())}); "
              "pick one with --acceptance-run")
    print(f"scenario: {a.output_tokens} output tokens, gamma={a.gamma}, {a.gpus} GPU(s), acceptance={a.acceptance}, "
          f"{a.requests} requests; speedup = mean target_only latency / mean latency on the same draws;\n"
          "accepted = drafts accepted as a prefix (not drafts x rate)")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


def cmd_sweep(a) -> int:
    from . import load_traces
    from .sweep import best_strategy, default_grid, run_sweep

    ts = load_traces(a.traces)
    grid = {"n_gpus": [int(g) for g in a.gpus_list.split(",")]}
    if a.quick:
        grid |= {"output_tokens": [5, 20, 50, 100], "acceptance": [0.0, 0.3, 0.6, 0.9, 1.0]}
    cfgs = default_grid(SimConfig(n_requests=a.requests, gamma=a.gamma, seed=a.seed), **grid)
    df = run_sweep(cfgs, ts, engine=a.engine)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(a.out, index=False)
    best = best_strategy(df)
    print(f"traces: {ts.provenance()}\nwrote {len(df)} scenarios to {a.out}\nbest strategy per cell (mean latency):")
    print(best.pivot_table(index=["n_gpus", "acceptance"], columns="output_tokens", values="strategy", aggfunc="first").to_string())
    return 0


def cmd_timeline(a) -> int:
    from .plots import plot_gantt
    from .runner import draw_bank, simulate

    ts = _traces(a)
    cfgs = [_config(a, s) for s in _strategies(a.strategy)]
    bank = draw_bank(cfgs[0], ts)
    frames = []
    for cfg in cfgs:
        r = simulate(cfg, ts, timeline=True, bank=bank)
        frames.append(r.timeline.assign(strategy=cfg.strategy))
    fig = plot_gantt(pd.concat(frames), title=f"One request, {a.output_tokens} tokens, {a.gpus} GPU(s), acceptance={a.acceptance}",
                     caption=ts.provenance())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=130)
    print(f"wrote {a.out}")
    return 0


def cmd_plan(a) -> int:
    from . import load_traces
    from .planning import required_acceptance_table

    ts = load_traces(a.traces)
    df = required_acceptance_table(ts, a.speedup, [int(n) for n in a.lengths.split(",")],
                                   [int(g) for g in a.gpus_list.split(",")], strategy=a.strategy,
                                   gamma=a.gamma, n_requests=a.requests)
    print(f"traces: {ts.provenance()}\nminimum i.i.d. per-token match rate alpha for {a.speedup}x (NaN = unreachable):")
    print(df[["strategy", "n_gpus", "output_tokens", "level", "mean_accepted_prefix_at_gamma", "max_speedup"]]
          .rename(columns={"level": "alpha_required"}).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def cmd_traces(a) -> int:
    from .schema import TraceError
    from .traces import TraceSet, bundled_trace_sets

    for name, path in bundled_trace_sets().items():
        line = ""
        try:
            ts = TraceSet.load(path)
            line = ts.provenance()
            ts.check_simulatable()
        except TraceError as exc:  # e.g. a target-only frame sweep: data, but not simulatable
            line += f" (not simulatable: {str(exc).split(': ', 1)[-1]})"
        print(f"{name:24s} {line}")
    return 0


def cmd_make_example(a) -> int:
    from .example_traces import make_example_traces

    print(f"wrote {make_example_traces(a.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egpt-sim", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("predict", help="simulate one scenario per strategy; print a table")
    _common(s)
    s.add_argument("--strategy", default="all", help="strategy name, comma list, or 'all'")
    s.set_defaults(fn=cmd_predict)
    s = sub.add_parser("sweep", help="grid: strategies x lengths x acceptance x GPU counts -> parquet")
    s.add_argument("--traces", default=None)
    s.add_argument("--out", default="out/sweep.parquet")
    s.add_argument("--gpus-list", default="1,2")
    s.add_argument("--gamma", type=int, default=8)
    s.add_argument("--requests", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="small grid (4 lengths x 5 alphas)")
    s.add_argument("--engine", default="auto", choices=["auto", "fast", "simpy"])
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("timeline", help="Gantt PNG of one request per strategy")
    _common(s)
    s.add_argument("--strategy", default="target_only,prefill_then_verify,parallel_sd")
    s.add_argument("--out", default="out/timeline.png")
    s.set_defaults(fn=cmd_timeline)
    s = sub.add_parser("plan", help="minimum acceptance for a target speedup")
    s.add_argument("--traces", default=None)
    s.add_argument("--speedup", type=float, default=1.5)
    s.add_argument("--lengths", default="20,50,100")
    s.add_argument("--gpus-list", default="1,2")
    s.add_argument("--strategy", default="prefill_then_verify")
    s.add_argument("--gamma", type=int, default=8)
    s.add_argument("--requests", type=int, default=200)
    s.set_defaults(fn=cmd_plan)
    s = sub.add_parser("traces", help="list bundled trace sets with provenance")
    s.set_defaults(fn=cmd_traces)
    s = sub.add_parser("make-example", help="regenerate the seed-calibrated example trace set")
    s.add_argument("--out", default=str(Path(__file__).parent / "data/traces/example/seed_calibrated"))
    s.set_defaults(fn=cmd_make_example)
    return p


def main(argv: list[str] | None = None) -> int:
    from .schema import TraceError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (TraceError, ValueError) as exc:
        print(f"egpt-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
