"""Command line: ``egpt-sim predict | sweep | timeline | plan | traces | make-example``.

Each command parses arguments, calls the library, prints a table or writes a file.
Bad input ends in one line on stderr naming the option, file or field: exit 2 for a
usage error or unusable input, 1 for a file that cannot be written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

import pandas as pd

from .analysis import labels
from .sim.config import STRATEGY_NAMES, SimConfig

SD_STRATEGIES = ("serial_sd", "prefill_then_verify", "parallel_sd", "adaptive_budget")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


class OneLineParser(argparse.ArgumentParser):
    """argparse with defaults in ``--help`` and one-line usage errors (exit 2)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- argument types


def _type(fn, what: str):
    """An argparse type from ``fn`` whose ValueError text becomes the one-line message."""
    def parse(text: str):
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"{text!r} is not {what}") from None
    parse.__name__ = what
    return parse


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if v < 1:
        raise ValueError(f"must be >= 1 (got {v})")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"must be a finite number > 0 (got {text})")
    return v


def _int_list(text: str) -> list[int]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{text!r}: give comma-separated integers, e.g. 20,50,100")
    return [_positive_int(t) for t in items]


def _strategy_list(text: str, allowed=STRATEGY_NAMES) -> list[str]:
    if text == "all":
        return list(allowed)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    baseline = [n for n in unknown if n in STRATEGY_NAMES]
    if baseline:
        raise ValueError(f"{baseline[0]!r} verifies no drafts, so no acceptance changes its speedup; "
                         f"choose 'all' or a comma list of {list(allowed)}")
    if unknown or not names:
        raise ValueError(f"unknown strategy {unknown[0] if unknown else text!r}; choose 'all' or a comma list of {list(allowed)}")
    return list(dict.fromkeys(names))


def _contention_missing(text: str) -> str:
    if text == "error" or (text.startswith("assume:") and _positive_float(text.split(":", 1)[1])):
        return text
    raise ValueError(f"{text!r}: use 'error' or 'assume:<factor>', e.g. assume:1.5")


POSITIVE_INT = _type(_positive_int, "a positive integer")
POSITIVE_FLOAT = _type(_positive_float, "a positive number")
INT_LIST = _type(_int_list, "a comma list of positive integers")
STRATEGIES = _type(_strategy_list, "a strategy list")
PLAN_STRATEGIES = _type(lambda t: _strategy_list(t, SD_STRATEGIES), "a speculative strategy list")
ACCEPTANCE = _type(labels.parse_acceptance, "an acceptance")
CONTENTION_MISSING = _type(_contention_missing, "a contention-missing policy")


# --------------------------------------------------------------------------- shared options


def _traces_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", default=None,
                   help="trace-set folder or bundled name (`egpt-sim traces` lists them); None = h100/fp16 if bundled, "
                        "else example/seed_calibrated")


def _sim_opts(p: argparse.ArgumentParser, requests: int = 200) -> None:
    p.add_argument("--gamma", type=POSITIVE_INT, default=8, help="max drafts per verification (and window budget)")
    p.add_argument("--requests", type=POSITIVE_INT, default=requests, help="simulated requests per scenario")
    p.add_argument("--seed", type=int, default=0, help="root random seed (common random numbers across strategies)")
    p.add_argument("--contention-missing", type=CONTENTION_MISSING, default=None,
                   help="same-GPU contention factors not measured in the trace set: 'error' or 'assume:<factor>' "
                        "(passed to SimConfig.contention_missing; None = its default)")
    _shape_opts(p)


SHAPE_OPTIONS = ("target_frames", "drafter_frames", "target_resolution", "target_prompt_tokens",
                 "drafter_prompt_tokens", "drafter_params_b", "stage_times", "cost_model")


def _shape_opts(p: argparse.ArgumentParser) -> None:
    """What-if shapes (egpt_sim.whatif): None = as recorded in the trace set."""
    g = p.add_argument_group("what-if shapes (stage times from the cost model where not measured; "
                             "every row says time_source trace|model)")
    g.add_argument("--target-frames", type=POSITIVE_INT, default=None, help="target frames (None = as recorded)")
    g.add_argument("--drafter-frames", type=POSITIVE_INT, default=None, help="drafter event frames (None = as recorded)")
    g.add_argument("--target-resolution", type=int, choices=[224, 336], default=None,
                   help="target frame resolution, px: 257 | 577 prompt tokens per frame (None = as recorded)")
    g.add_argument("--target-prompt-tokens", type=POSITIVE_INT, default=None,
                   help="target LLM prompt length, tokens (overrides frames x tokens per frame)")
    g.add_argument("--drafter-prompt-tokens", type=POSITIVE_INT, default=None, help="drafter LLM prompt length, tokens")
    g.add_argument("--drafter-params-b", type=POSITIVE_FLOAT, default=None,
                   help="drafter size, billions of parameters: prefill/decode/verify scaled by weight bytes "
                        "(GPU-bound backends only)")
    g.add_argument("--stage-times", choices=["auto", "trace", "model"], default=None,
                   help="auto = replay measured shapes, cost model otherwise; model = always the cost model; "
                        "trace = error where a shape was not measured (None = auto)")
    g.add_argument("--cost-model", default=None,
                   help="trace sets the cost model is fitted on besides --traces: 'auto' (bundled sets of the same "
                        "GPU and decode backend) or a comma list (None = auto)")


def _common(p: argparse.ArgumentParser) -> None:
    _traces_opt(p)
    p.add_argument("--output-tokens", type=POSITIVE_INT, default=50, help="answer length, tokens")
    p.add_argument("--gpus", type=POSITIVE_INT, default=1, help="1 = shared GPU (fitted contention), 2+ = separate GPUs")
    p.add_argument("--acceptance", type=ACCEPTANCE, default="auto", help=labels.ACCEPTANCE_HELP)
    p.add_argument("--acceptance-run", default=None,
                   help="replay only this recorded acceptance run_id (needs trace replay); None = all runs pooled, announced")
    _sim_opts(p)


def _sim_kwargs(a) -> dict:
    """SimConfig keyword arguments shared by every command: the contention-missing policy
    and the what-if shape."""
    kw = {k: getattr(a, k) for k in SHAPE_OPTIONS if getattr(a, k, None) is not None}
    if getattr(a, "contention_missing", None) is None:
        return kw
    if "contention_missing" not in {f.name for f in dataclasses.fields(SimConfig)}:
        raise ValueError("--contention-missing: this version of SimConfig has no contention_missing field yet")
    return kw | {"contention_missing": a.contention_missing}


def _traces(a):
    """The trace set of ``a`` (one acceptance run when asked) and ``a.acceptance`` resolved."""
    from . import load_traces

    ts = load_traces(a.traces)
    acc = getattr(a, "acceptance", None)
    if acc is None:
        return ts
    a.acceptance, a.acceptance_defaulted = labels.resolve_acceptance(acc, ts)
    if a.acceptance_run:
        if a.acceptance != "trace" and not a.acceptance_defaulted:
            raise _UsageError(f"--acceptance-run {a.acceptance_run} replays a recorded run, but --acceptance is "
                              f"{acc!r}: drop one of them (or use --acceptance trace)")
        if ts.acceptance is None:
            raise _UsageError(f"--acceptance-run {a.acceptance_run}: trace set {ts.path} records no acceptance "
                              "(`egpt-sim traces` lists the sets that do)")
        ts = ts.with_acceptance_run(a.acceptance_run)  # one line naming the runs there are
        a.acceptance = "trace"
    return ts


class _UsageError(ValueError):
    """Contradictory options (exit 2, one line)."""


def _config(a, strategy: str) -> SimConfig:
    return SimConfig(strategy=strategy, output_tokens=a.output_tokens, gamma=a.gamma, n_gpus=a.gpus,
                     acceptance=a.acceptance, n_requests=a.requests, seed=a.seed, **_sim_kwargs(a))


# --------------------------------------------------------------------------- commands


def scenario_header(a, ts, contention=None, time_source: str | None = None) -> list[str]:
    """Header lines of a prediction: traces, acceptance (named, pooled runs announced),
    scenario, where the stage times come from, and the contention factors used,
    measured vs assumed."""
    lines = [f"traces: {ts.provenance()}",
             f"acceptance: {labels.describe_acceptance(a.acceptance, ts, getattr(a, 'acceptance_defaulted', False))}"]
    if a.acceptance == "trace" and len(ts.acceptance_runs()) > 1:
        lines[-1] += "; pick one with --acceptance-run"
    lines.append(f"scenario: {a.output_tokens} output tokens, gamma={a.gamma}, {a.gpus} GPU(s), {a.requests} requests, "
                 f"seed {a.seed}")
    if time_source:
        lines.append(f"stage times: {time_source}")
    lines += contention_lines(contention, a.gpus)
    return lines


def contention_lines(model, n_gpus: int) -> list[str]:
    """The contention factors of ``model`` (a ContentionModel) as table lines: its one-line
    header, then one row per (role, stage, peer activity) with measured / assumed."""
    if model is None or model.domain == "none" or not model.factors:
        return [model.header() if model is not None else "contention: none"]
    t = model.table()
    t = t.assign(source=[f"measured ({n} rows, 95% CI {lo:.2f}-{hi:.2f})" if m else f"assumed ({note})"
                         for m, n, lo, hi, note in zip(t["measured"], t["n_rows"], t["ci_low"], t["ci_high"], t["note"])])
    body = t[["role", "stage", "peer_activity", "contention_factor", "source"]].to_string(
        index=False, float_format=lambda x: f"{x:.2f}")
    return [model.header(), *("  " + ln for ln in body.splitlines())]


def cmd_predict(a) -> int:
    from .sim.runner import draw_bank, simulate

    ts = _traces(a)
    cfgs = [_config(a, s) for s in a.strategy]
    bank = draw_bank(cfgs[0], ts)
    rows, model = [], None
    for cfg in cfgs:
        res = simulate(cfg, ts, bank=bank)
        if model is None or model.domain == "none":  # target_only runs one model: no contention to show
            model = res.contention
        s = labels.summary_row(res.summary())
        rows.append({"strategy": cfg.strategy, "latency_mean_ms": s["latency_mean_ms"], "p90_ms": s["latency_p90_ms"],
                     "ttft_ms": s["ttft_mean_ms"], labels.SPEEDUP: s[labels.SPEEDUP],
                     "window_drafts": s["window_drafts_mean_tokens"], "window_accepted": s["window_accepted_mean_tokens"],
                     "accepted": s["accepted_mean_tokens"], "verify_passes": s["verify_passes_mean"],
                     "time_source": s["time_source"]})
    print("\n".join(scenario_header(a, ts, model, res.time_source_detail)))
    print("speedup = mean target_only latency / mean latency on the same draws; "
          "accepted = drafts accepted as a prefix (not drafts x rate)")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


def cmd_sweep(a) -> int:
    from . import load_traces
    from .analysis.sweep import best_with_margins, default_grid, format_winner, run_sweep

    ts = load_traces(a.traces)
    grid = {"n_gpus": a.gpus_list}
    if a.quick:
        grid |= {"output_tokens": [5, 20, 50, 100], "acceptance": [0.0, 0.3, 0.6, 0.9, 1.0]}
    cfgs = default_grid(SimConfig(n_requests=a.requests, gamma=a.gamma, seed=a.seed, **_sim_kwargs(a)), **grid)
    df = run_sweep(cfgs, ts, engine=a.engine, progress=not a.no_progress)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    best = best_with_margins(df, ts, engine=a.engine)
    mark = _printable("≈", "~=")
    best["cell"] = best.apply(format_winner, axis=1, tie_mark=mark)
    n_tie = int(best["tie"].sum())
    print(f"traces: {ts.provenance()}\nacceptance: i.i.d. per-token match rate alpha per row (assumed, not measured)\n"
          f"{stage_times_line(cfgs[0], ts)}wrote {len(df)} scenarios to {out}\n"
          "best strategy per cell (lowest mean latency): strategy, speedup, +margin over the runner-up in speedup;\n"
          f"'{mark}' = tie: the margin is inside the 95 % paired Monte-Carlo interval ({n_tie} of {len(best)} cells)")
    print(best.pivot_table(index=["n_gpus", "acceptance"], columns="output_tokens", values="cell", aggfunc="first").to_string())
    return 0


def stage_times_line(cfg: SimConfig, ts) -> str:
    """``stage times: ...\n`` for a what-if shape (where the times come from), else ''."""
    if cfg.scenario_key is None:
        return ""
    from .sim.runner import time_source_detail
    from .whatif.shapes import scenario_traces

    return f"stage times: {time_source_detail(scenario_traces(cfg, ts))}\n"


def _printable(text: str, fallback: str) -> str:
    """``text`` if stdout can encode it (a UTF-8 terminal), else ``fallback``."""
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return fallback
    return text


def figure_path(out: str) -> Path:
    """``--out`` as a figure file: no suffix means ``.png``; an unknown suffix is an error."""
    p = Path(out)
    if p.suffix == "":
        return p.with_name(p.name + ".png")
    if p.suffix.lower() not in FIGURE_SUFFIXES:
        raise _UsageError(f"--out {out}: unknown figure type {p.suffix!r}; use one of {', '.join(FIGURE_SUFFIXES)}")
    return p


def cmd_timeline(a) -> int:
    from .analysis.plots import plot_gantt
    from .sim.runner import draw_bank, simulate

    out = figure_path(a.out)
    ts = _traces(a)
    cfgs = [_config(a, s) for s in a.strategy]
    bank = draw_bank(cfgs[0], ts)
    frames = []
    for cfg in cfgs:
        r = simulate(cfg, ts, timeline=True, bank=bank)
        frames.append(r.timeline.assign(strategy=cfg.strategy))
    acc = labels.describe_acceptance(a.acceptance, ts, a.acceptance_defaulted)
    fig = plot_gantt(pd.concat(frames), title=f"One request, {a.output_tokens} tokens, {a.gpus} GPU(s), acceptance: {acc}",
                     caption=ts.provenance())
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")
    return 0


def cmd_plan(a) -> int:
    from . import load_traces
    from .analysis.planning import required_acceptance_table

    ts = load_traces(a.traces)
    frames = [required_acceptance_table(ts, a.speedup, a.lengths, a.gpus_list, strategy=s, gamma=a.gamma,
                                        n_requests=a.requests, seed=a.seed, **_sim_kwargs(a)) for s in a.strategy]
    df = pd.concat(frames, ignore_index=True)
    cols = ["strategy", "n_gpus", "output_tokens", "level", "mean_accepted_prefix_at_gamma", "speedup_at_level", "max_speedup"]
    print(f"traces: {ts.provenance()}\n{stage_times_line(SimConfig(**_sim_kwargs(a)), ts)}"
          f"minimum i.i.d. per-token match rate alpha reaching {a.speedup:g}x "
          f"(gamma={a.gamma}, {a.requests} requests; NaN = unreachable even at alpha = 1):")
    print(df.reindex(columns=cols).rename(columns={"level": "alpha_required"})
          .to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def measurement_flags(ts) -> str:
    """`` | ...`` notes on how a measured set was taken: schema 1.0 runs (before the interleaved,
    busy-until-the-end contention protocol) and runs whose drift check flagged them."""
    runs = ts.metadata.get("runs", {})
    if not runs or ts.source != "measured":
        return ""
    notes = []
    if str(ts.metadata.get("schema_version", "1.0")) == "1.0":
        notes.append("schema 1.0: measured before the contention/span fixes (alone and shared rows in "
                     "different time blocks, target decode never beside a busy drafter)")
    flagged = sorted(k for k, r in runs.items() if (r.get("drift") or {}).get("flagged"))
    if flagged:
        notes.append(f"drift > 5 % first vs last quarter in {len(flagged)} run(s): {', '.join(flagged)}")
    return "".join(f" | {n}" for n in notes)


def trace_set_line(path) -> str:
    """One line for ``egpt-sim traces``: provenance, acceptance runs, simulatable or not."""
    from .traces.schema import TraceError
    from .traces.traceset import TraceSet

    try:
        ts = TraceSet.load(path)
    except TraceError as exc:
        return f"unreadable: {exc}"
    runs = ts.acceptance_runs()
    acc = (f"acceptance: {len(runs)} run{'s' if len(runs) > 1 else ''} ({', '.join(runs)})" if runs
           else "acceptance: none (use --acceptance ALPHA)")
    line = f"{ts.provenance()} | {acc}{measurement_flags(ts)}"
    try:
        ts.check_simulatable()
    except TraceError as exc:  # e.g. a target-only frame sweep: data, but not simulatable
        line += f" | not simulatable: {str(exc).split(': ', 1)[-1]}"
    return line


def cmd_traces(a) -> int:
    from .traces.traceset import bundled_trace_sets

    sets = bundled_trace_sets()
    if not sets:
        raise ValueError("no bundled trace sets found (egpt_sim/data/traces is empty)")
    for name, path in sets.items():
        print(f"{name:24s} {trace_set_line(path)}")
    return 0


def cmd_make_example(a) -> int:
    from .traces.examples import make_example_traces

    print(f"wrote {make_example_traces(a.out)}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="egpt-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, doc: str, fn):
        s = sub.add_parser(name, help=doc, description=doc)
        s.set_defaults(fn=fn)
        return s

    s = command("predict", "simulate one scenario for every strategy on the same draws; print one table", cmd_predict)
    _common(s)
    s.add_argument("--strategy", type=STRATEGIES, default="all", help="strategy name, comma list, or 'all'")
    s = command("sweep", "grid of strategies x lengths x alpha x GPU counts -> parquet; print the best strategy per cell "
                "with its margin over the runner-up", cmd_sweep)
    _traces_opt(s)
    s.add_argument("--out", default="out/sweep.parquet", help="parquet file written (one row per scenario)")
    s.add_argument("--gpus-list", type=INT_LIST, default="1,2", help="GPU counts, comma-separated")
    s.add_argument("--quick", action="store_true", help="small grid: 4 lengths (5,20,50,100) x 5 alphas (0,0.3,0.6,0.9,1)")
    s.add_argument("--engine", default="auto", choices=["auto", "fast", "simpy"],
                   help="fast = vectorised path (tested equal to SimPy), simpy = reference model, auto = fast if available")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _sim_opts(s)
    s = command("timeline", "Gantt chart of one simulated request per strategy (same draws)", cmd_timeline)
    _common(s)
    s.add_argument("--strategy", type=STRATEGIES, default="target_only,prefill_then_verify,parallel_sd",
                   help="strategy name, comma list, or 'all'")
    s.add_argument("--out", default="out/timeline.png", help="figure file; no suffix = .png")
    s = command("plan", "minimum i.i.d. per-token acceptance alpha reaching a target speedup (bisection)", cmd_plan)
    _traces_opt(s)
    s.add_argument("--speedup", type=POSITIVE_FLOAT, default=1.05, help="target speedup vs target_only (> 0)")
    s.add_argument("--lengths", type=INT_LIST, default="20,50,100", help="answer lengths, tokens, comma-separated")
    s.add_argument("--gpus-list", type=INT_LIST, default="1,2", help="GPU counts, comma-separated")
    s.add_argument("--strategy", type=PLAN_STRATEGIES, default="prefill_then_verify",
                   help=f"speculative strategy, comma list, or 'all' ({', '.join(SD_STRATEGIES)})")
    _sim_opts(s)
    command("traces", "list bundled trace sets: provenance, acceptance runs, simulatable or not", cmd_traces)
    s = command("make-example", "regenerate the seed-calibrated example trace set (not measured)", cmd_make_example)
    s.add_argument("--out", default=str(Path(__file__).parent / "data/traces/example/seed_calibrated"),
                   help="trace-set folder written")
    return p


def main(argv: list[str] | None = None) -> int:
    from .traces.schema import TraceError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (TraceError, ValueError) as exc:
        print(f"egpt-sim {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `egpt-sim sweep | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as exc:
        print(f"egpt-sim {args.cmd}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
