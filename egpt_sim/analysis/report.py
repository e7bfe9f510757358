"""Markdown report of a trace set: sections built by small functions.

Covers: the seeds' report shape (5-stage table, prefill, tokens, memory, parallel
execution, acceptance, key findings, implications) rebuilt from data:

* every number comes from the trace set or from the simulator run on it; a trace set
  with zero OK samples or a missing stage raises :class:`~egpt_sim.traces.schema.TraceError`
  instead of producing a report of zeros;
* the overlap window and drafts verified come from *simulated* events (with the fitted
  same-GPU contention on one GPU: drafting there is not free), not from
  ``window x token rate`` arithmetic;
* acceptance is reported three ways, always named: per-token match rate, mean accepted
  prefix length, P(accepted length > i); "accepted tokens" is never drafts x rate;
* every table and figure carries the trace set's provenance line.

``python -m egpt_sim.report --traces NAME --out DIR`` writes ``DIR/report.md`` + PNGs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..traces.acceptance import acceptance_by_position
from ..traces.schema import TraceError
from ..traces.traceset import TraceSet, resolve_trace_set
from . import plots
from .labels import SPEEDUP, describe_acceptance, parse_acceptance, resolve_acceptance
from .tables import (
    REPORT_STAGES,
    STRATEGIES,
    main_frames,
    stage_table,
    prefill_table,
    token_table,
    verify_table,
    memory_table,
    frames_table,
    contention_table,
    contention_by_concurrency,
    load_for_analysis,
    acceptance_rates,
    acceptance_by_group,
    acceptance_caption,
    headline_numbers,
    gpu_counts,
    strategy_table,
    timeline_frame,
    speedup_sweep,
)


STAGE_NAMES = {"load": "Stage 1: Data loading", "preprocess": "Stage 2: Preprocessing",
               "vision_encode": "Stage 3: Vision encoding", "prefill": "Stage 4: LLM prefill",
               "decode_step": "Stage 5: LLM decode (per token)"}


def md_table(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "NaN" if np.isnan(v) else format(v, floatfmt)
        return str(v)
    head = "| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, *body])


def _gpus(n: int) -> str:
    return f"{n} GPU{'s' if n > 1 else ''}"


def _pm(median: float, iqr: float) -> str:
    return f"{median:.1f} ± {iqr:.1f} ms"


NOT_SIMULATED = "not involved (measured stage times, nothing simulated)"


class _Report:
    """Accumulates markdown + figures; every caption names the provenance and the acceptance."""

    def __init__(self, out: Path, prov: str, acc: str):
        self.out, self.prov, self.acc, self.lines = out, prov, acc, []
        self.figures: list[str] = []

    def add(self, *text: str):
        self.lines.extend(text)

    def source(self, acc: str | None = None) -> str:
        return f"Source: {self.prov}; acceptance: {self.acc if acc is None else acc}"

    def table(self, df: pd.DataFrame, floatfmt: str = ".2f", acc: str | None = None):
        self.add(md_table(df, floatfmt), "", f"*{self.source(acc)}*", "")

    def figure(self, fig, name: str, alt: str, acc: str | None = None):
        plots.save(fig, self.out, name)
        self.figures.append(f"{name}.png")
        self.add(f"![{alt}]({name}.png)", "", f"*Figure: {alt}. {self.source(acc)}*", "")


@dataclass
class _Ctx:
    """What every report section reads: the trace set, the main scenario and its results."""

    ts: TraceSet
    prov: str
    output_tokens: int
    gamma: int
    gpus: list[int]
    n_requests: int
    seed: int
    acceptance: object
    acc: str
    st: pd.DataFrame
    pf: pd.DataFrame
    tok: pd.DataFrame
    head: dict
    sims: pd.DataFrame
    alpha_sweep: pd.DataFrame | None

    @property
    def runs(self) -> list[str]:
        return self.ts.acceptance_runs()

    def fig_caption(self, acc: str | None = None) -> str:
        """Caption drawn inside a simulated figure: provenance + acceptance."""
        return f"{self.prov} | acceptance: {self.acc if acc is None else acc}"


def _acc_of_runs(ts: TraceSet) -> str:
    """Acceptance caption of a measured acceptance table: which runs, pooled or one."""
    runs = ts.acceptance_runs()
    if len(runs) > 1:
        return f"recorded verifications of {len(runs)} acceptance runs POOLED ({', '.join(runs)})"
    return f"recorded verifications of acceptance run {runs[0]}" if runs else "none recorded"


def build_report(traces: str | Path | TraceSet | None, out_dir: str | Path, output_tokens: int = 50, gamma: int = 8,
                 n_gpus: Sequence[int] = (1, 2), strategies: Sequence[str] = STRATEGIES, n_requests: int = 200,
                 seed: int = 0, target_speedup: float = 1.2, plan: bool = True, seed_scenarios: bool = True,
                 plan_tol: float = 0.01, acceptance=None, frames_traces: str | Path | None = None,
                 alphas: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0), acceptance_run: str | None = None) -> Path:
    """Write ``out_dir/report.md`` plus PNG figures for a trace set; returns the report path.

    ``acceptance``: 'trace', an i.i.d. per-token rate alpha, or None (trace if recorded, else
    alpha = 0, labelled). ``acceptance_run``: keep only that recorded acceptance run (several
    runs are otherwise pooled, which the report says, with a per-run table).
    Raises :class:`TraceError` for a trace set with zero OK samples or a missing stage.
    """
    ts = _report_traces(traces, acceptance_run)
    st, pf, tok = stage_table(ts), prefill_table(ts), token_table(ts)  # raise before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = _context(ts, st, pf, tok, output_tokens, gamma, n_gpus, strategies, n_requests, seed, acceptance, alphas)
    R = _Report(out, c.prov, c.acc)
    _header_section(R, c)
    _summary_section(R, c)
    _stage_timing_section(R, c)
    _prefill_section(R, c)
    _frames_section(R, c, frames_traces)
    _token_section(R, c)
    _memory_section(R, c)
    ct = _contention_section(R, c)
    _parallel_section(R, c)
    rates = _acceptance_section(R, c)
    _findings_section(R, c, ct, rates)
    _implications_section(R, c, seed_scenarios, plan, target_speedup, plan_tol)
    _footer(R, ts)
    path = out / "report.md"
    path.write_text("\n".join(R.lines))
    return path


def _report_traces(traces: str | Path | TraceSet | None, acceptance_run: str | None) -> TraceSet:
    """The trace set reported on, reduced to one recorded acceptance run when one is named."""
    ts = traces if isinstance(traces, TraceSet) else TraceSet.load(resolve_trace_set(traces))
    if acceptance_run is not None:
        if ts.acceptance is None:
            raise TraceError(f"{ts.path}: no acceptance table, so acceptance run {acceptance_run!r} cannot be selected")
        ts = ts.with_acceptance_run(acceptance_run)
    return ts


def _context(ts: TraceSet, st, pf, tok, output_tokens: int, gamma: int, n_gpus: Sequence[int],
             strategies: Sequence[str], n_requests: int, seed: int, acceptance, alphas: Sequence[float]) -> _Ctx:
    """The main scenario simulated for every strategy and GPU count (and the alpha sweep)."""
    gpus = gpu_counts(ts, n_gpus)
    strategies = list(dict.fromkeys(["target_only", *strategies]))
    acceptance, defaulted = resolve_acceptance(acceptance, ts)
    acc = describe_acceptance(acceptance, ts, defaulted)
    if acceptance == "trace" and len(ts.acceptance_runs()) > 1:
        acc += "; choose one with --acceptance-run"
    sims = strategy_table(ts, output_tokens, gamma, gpus, strategies, acceptance, n_requests, seed)
    alpha_sweep = None
    if alphas:
        alpha_sweep = speedup_sweep(ts, [s_ for s_ in strategies if s_ not in ("target_only", "drafter_only")],
                                    [output_tokens], list(alphas), gpus, n_requests=n_requests, gamma=gamma, seed=seed)
    return _Ctx(ts, ts.provenance(), output_tokens, gamma, gpus, n_requests, seed, acceptance, acc, st, pf, tok,
                headline_numbers(ts), sims, alpha_sweep)


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _header_section(R: _Report, c: _Ctx) -> None:
    ts = c.ts
    R.add(f"# Parallel-prefill speculative decoding report: {ts.label}", "")
    if "measured" not in ts.source.split(", "):
        R.add(f"> **Not measured on this project's hardware** (source: {ts.source}). Numbers below are "
              "computed from this trace set, so they are only as real as its inputs.", "")
    n_failed = int((ts.stage_timings["status"] != "ok").sum())
    R.add(f"**Trace set:** `{_shown_path(ts.path)}`  ", f"**Provenance:** {c.prov}  ",
          f"**Samples:** {c.head['n_samples']} OK samples ({n_failed} failed rows ignored)  ",
          f"**Scenario simulated:** {c.output_tokens} output tokens, gamma = {c.gamma}, {c.n_requests} requests per "
          f"scenario, seed {c.seed}, acceptance = {c.acc}; GPU counts {c.gpus}  ",
          f"**Generated:** {_now()} by `python -m egpt_sim.report`", "")


def _match_rate_label(c: _Ctx) -> str:
    runs = c.runs
    if len(runs) > 1:
        return f"pooled over {len(runs)} acceptance runs: they differ, see the per-run table under Acceptance"
    return f"acceptance run {runs[0]}" if runs else "no acceptance recorded"


def _summary_section(R: _Report, c: _Ctx) -> None:
    head, sims = c.head, c.sims
    ptv = sims[sims["strategy"] == "prefill_then_verify"].set_index("n_gpus")
    sd = sims[~sims["strategy"].isin(["target_only", "drafter_only"])]
    best = sd.loc[sd.groupby("n_gpus")["latency_mean_ms"].idxmin()].set_index("n_gpus")
    rates = acceptance_rates(c.ts)
    R.add("## Executive summary", "")
    summary = [("Prefill phase S1-S4, target / drafter (median)",
                f"{head['target_phase_ms']:.1f} / {head['drafter_phase_ms']:.1f} ms ({head['prefill_phase_ratio']:.2f}x)")]
    for g in c.gpus:
        if g in ptv.index:
            p = ptv.loc[g]
            summary.append((f"Overlap window, {_gpus(g)} (simulated, mean)", f"{p['overlap_window_ms']:.1f} ms"))
            summary.append((f"Drafts ready when the target's prefill ends / accepted, prefill_then_verify, {_gpus(g)}",
                            f"{p['window_drafts_mean_tokens']:.2f} / {p['window_accepted_mean_tokens']:.2f} tokens"))
    if rates is not None:
        a = rates.iloc[0]
        summary += [(f"Per-token match rate ({_match_rate_label(c)})", f"{a['per_token_match_rate']:.3f}"),
                    (f"Mean accepted prefix length ({_match_rate_label(c)})",
                     f"{a['mean_accepted_prefix_len']:.2f} of {a['mean_gamma']:.0f} drafts")]
    for g, b in best.iterrows():
        summary.append((f"Best SD strategy at {c.output_tokens} tokens, {_gpus(g)} (acceptance: {c.acc.split(' (')[0]})",
                        f"{b['strategy']}: {b[SPEEDUP]:.3f}x"))
    if c.alpha_sweep is not None:
        for g, d in c.alpha_sweep[c.alpha_sweep["strategy"] != "target_only"].groupby("n_gpus"):
            for a_ in (0.7, 1.0):
                e = d[np.isclose(d["acceptance"].astype(float), a_)]
                if len(e) and not (isinstance(c.acceptance, float) and np.isclose(c.acceptance, a_)):
                    b = e.loc[e[SPEEDUP].idxmax()]
                    summary.append((f"Best SD strategy at {c.output_tokens} tokens, {_gpus(g)}, alpha = {a_:g} (i.i.d., assumed)",
                                    f"{b['strategy']}: {b[SPEEDUP]:.3f}x"))
    R.table(pd.DataFrame(summary, columns=["Metric", "Value"]),
            acc=f"{c.acc}, except rows naming an i.i.d. alpha (assumed)")


def _stage_timing_section(R: _Report, c: _Ctx) -> None:
    """The 5-stage table and figure (measured, each model alone)."""
    ts, prov, st, pf, head, na = c.ts, c.prov, c.st, c.pf, c.head, NOT_SIMULATED
    R.add("## 5-stage timing comparison", "",
          "Median ± interquartile range over OK samples, each model running alone on its GPU "
          f"(drafter {main_frames(ts).get('drafter')} frame(s), target {main_frames(ts).get('target')} frame(s)).", "")
    s = st.set_index(["role", "stage"])
    rows = []
    for stage in REPORT_STAGES:
        d, t = s.loc[("drafter", stage)], s.loc[("target", stage)]
        ratio = t["median_ms"] / d["median_ms"] if d["median_ms"] > 0 else float("nan")
        rows.append([STAGE_NAMES[stage], _pm(d["median_ms"], d["iqr_ms"]), _pm(t["median_ms"], t["iqr_ms"]), f"{ratio:.2f}x"])
    p = pf.set_index("role")
    rows.append(["**Prefill phase S1-S4 (per-sample sum)**", _pm(p.loc["drafter", "phase_median_ms"], p.loc["drafter", "phase_iqr_ms"]),
                 _pm(p.loc["target", "phase_median_ms"], p.loc["target", "phase_iqr_ms"]), f"{head['prefill_phase_ratio']:.2f}x"])
    R.table(pd.DataFrame(rows, columns=["Stage", "EventGPT (drafter)", "Video-LLaVA (target)", "target / drafter"]), acc=na)
    R.figure(plots.plot_stage_timings(st, caption=prov), "stages", "stage timings per role (median, IQR)", acc=na)


def _prefill_section(R: _Report, c: _Ctx) -> None:
    R.add("## Prefill comparison", "")
    R.table(pd.DataFrame([[r.role, r.frames, f"{r.phase_median_ms:.1f} ms", f"{r.prefill_median_ms:.1f} ms",
                           f"{r.prompt_tokens} tokens", f"{r.prefill_tok_per_s:,.0f} tok/s"] for r in c.pf.itertuples()],
                         columns=["Model", "Frames", "Prefill complete (S1-S4)", "LLM prefill (S4)", "Prefill length", "Prefill throughput"]),
            acc=NOT_SIMULATED)


def _token_section(R: _Report, c: _Ctx) -> None:
    """Decode per token, and verify passes priced per gamma (measured)."""
    R.add("## Token generation statistics", "")
    R.table(pd.DataFrame([[r.role, _pm(r.decode_median_ms, r.decode_iqr_ms), f"{r.tok_per_s:.1f}",
                           f"{r.steps_per_sample:.1f}", r.kv_tokens_first_step] for r in c.tok.itertuples()],
                         columns=["Model", "Decode per token", "Tokens/s", "Decode steps recorded per sample", "KV tokens at first step"]),
            acc=NOT_SIMULATED)
    vt = verify_table(c.ts)
    if vt is not None:
        R.add("Verification is one target forward pass over the gamma drafts (priced per gamma, not gamma decode steps):", "")
        R.table(vt, acc=NOT_SIMULATED)


def _memory_section(R: _Report, c: _Ctx) -> None:
    R.add("## GPU memory", "")
    mem = memory_table(c.ts)
    if mem is None:
        R.add("Not recorded in this trace set (no `kv_bytes` / `peak_mem_mb` values on prefill rows).", "")
    else:
        R.table(mem, ".1f", acc=NOT_SIMULATED)
        R.figure(plots.plot_memory(mem, caption=c.prov), "memory", "KV cache and peak memory per role", acc=NOT_SIMULATED)


def _frames_section(R: _Report, c: _Ctx, frames_traces) -> None:
    ft, ft_prov = frames_table(c.ts), c.prov
    if ft.groupby("role")["frames"].nunique().max() <= 1 and frames_traces is not None:
        fts = load_for_analysis(frames_traces)
        ft, ft_prov = frames_table(fts), fts.provenance()
    if ft.groupby("role")["frames"].nunique().max() <= 1:
        R.add("One frame count per role in this trace set; token scaling over frames needs a frames sweep "
              "(`python -m measure stages --frames 1,4,8,16,32`).", "")
        return
    R.add("### Token scaling over frames", "")
    if ft_prov != c.prov:
        R.add(f"From the frames sweep `{_shown_path(str(resolve_trace_set(frames_traces)))}` (models running alone):", "")
    R.add(md_table(ft, ".1f"), "", f"*Source: {ft_prov}; acceptance: {NOT_SIMULATED}*", "")
    plots.save(plots.plot_prefill_scaling(ft, caption=ft_prov), R.out, "prefill_scaling")
    R.figures.append("prefill_scaling.png")
    R.add("![prefill length and time vs frames](prefill_scaling.png)", "",
          f"*Figure: prefill length and time vs frames. Source: {ft_prov}; acceptance: {NOT_SIMULATED}*", "")


def _contention_section(R: _Report, c: _Ctx) -> pd.DataFrame | None:
    R.add("## Same-GPU contention", "")
    ct = contention_table(c.ts)
    if ct is None:
        R.add("No `shared_gpu` rows: contention could not be fitted, so one-GPU scenarios are not simulated.", "")
        return None
    cc = contention_by_concurrency(c.ts)
    R.add("Factor = median duration with the peer model busy on the same GPU / median alone. On one GPU the "
          "simulator slows both models by these factors while they overlap: drafting in the window is not free. "
          f"It uses the **{ct['concurrency'].iloc[0]}** factors (`contention_concurrency = auto`); `streams` = the two "
          "models as two threads of one process, `processes` = two processes. `measured` = False marks an assumed "
          "(fallback) factor: that (role, stage) was not measured with the peer busy.", "")
    R.table(cc.pivot_table(index=["role", "stage"], columns="concurrency", values="contention_factor").reset_index(),
            acc=NOT_SIMULATED)
    R.table(ct[["role", "stage", "contention_factor", "measured"]], acc=NOT_SIMULATED)
    R.figure(plots.plot_contention(cc, caption=c.prov, simulated=ct["concurrency"].iloc[0]), "contention",
             "same-GPU contention factors per concurrency", acc=NOT_SIMULATED)
    return ct


def _parallel_section(R: _Report, c: _Ctx) -> None:
    R.add("## Parallel execution analysis", "",
          "From **simulated events** (SimPy replay of the traces, same draws for every strategy), not from "
          f"window x token-rate arithmetic, with acceptance = {c.acc}. "
          "Overlap window = target prefill end - drafter prefill end.", "")
    par = c.sims[c.sims["strategy"].isin(["prefill_then_verify", "parallel_sd", "adaptive_budget"])]
    R.table(par[["n_gpus", "strategy", "drafter_prefill_end_ms", "target_prefill_end_ms", "overlap_window_ms",
                 "window_drafts_mean_tokens", "window_accepted_mean_tokens", "ttft_mean_ms", "latency_mean_ms",
                 "baseline_mean_ms", SPEEDUP]], ".2f")
    n_tok = min(c.output_tokens, 30)
    for g in c.gpus:
        tl = timeline_frame(c.ts, n_gpus=g, output_tokens=n_tok, gamma=c.gamma, acceptance=c.acceptance, seed=c.seed)
        R.figure(plots.plot_gantt(tl, title=f"Simulated request 0, {n_tok} tokens, {_gpus(g)}, acceptance: {c.acc.split(' (')[0]}",
                                  caption=c.fig_caption()), f"timeline_{g}gpu", f"simulated timeline of one request, {_gpus(g)}")


def _acceptance_section(R: _Report, c: _Ctx) -> pd.DataFrame | None:
    """The three named acceptance numbers; several runs get a per-run table (never pooled silently)."""
    ts = c.ts
    R.add("## Acceptance (three named numbers)", "")
    rates = acceptance_rates(ts)
    if rates is None:
        R.add(f"No acceptance table in this trace set; the simulations use {c.acc}. Measured acceptance curves "
              "(per-token match rate, mean accepted prefix length, P(accepted length > i)) need a trace set with one, "
              "e.g. `h100/validation` (notebook 02).", "")
        return None
    measured = _acc_of_runs(ts)
    R.add("* **per-token match rate**: fraction of draft positions whose token equals the target's (all positions);",
          "* **mean accepted prefix length**: tokens accepted per verification, up to the first mismatch;",
          "* **P(accepted length > i)**: per position i (0-based).", "")
    cols = ["group", "n_verifications", "mean_gamma", "per_token_match_rate", "mean_accepted_prefix_len",
            "iid_prefix_expected", "seeds_drafts_x_rate"]
    if len(c.runs) > 1:
        R.add(f"**{len(c.runs)} acceptance runs are recorded** ({', '.join(c.runs)}); they come from different drafters "
              "(see the run metadata), so each is shown on its own first. The pooled rows after it mix them; "
              "`--acceptance-run RUN` keeps one.", "")
        R.table(acceptance_rates(ts, by="run_id")[cols], ".3f", acc="recorded verifications, one row per acceptance run")
        by_run = acceptance_by_group(ts, "run_id")
        R.figure(plots.plot_acceptance_by_group(by_run, "run_id", caption=acceptance_caption(ts)), "acceptance_by_run",
                 "P(accepted length > i) per acceptance run", acc="recorded verifications, one curve per acceptance run")
    R.table(rates[cols], ".3f", acc=measured)
    bp = acceptance_by_position(ts.acceptance)
    shown = bp[bp["p_accept_len_gt"].shift(1, fill_value=1.0) > 0].head(16)  # up to the first P = 0
    R.table(shown.assign(i=lambda x: x["position"] - 1)[["i", "per_token_match_rate", "conditional_accept_rate",
                                                              "p_accept_len_gt", "n_blocks"]]
            .rename(columns={"p_accept_len_gt": "P(accepted length > i)"}), ".3f", acc=measured)
    alpha = float(rates.iloc[0]["per_token_match_rate"])
    cap = f"{c.prov} | acceptance: {measured}"
    R.figure(plots.plot_acceptance_curves(bp, alpha, caption=cap), "acceptance_curves", "per-position acceptance vs i.i.d. model",
             acc=measured)
    R.figure(plots.plot_prefix_lengths(ts.acceptance_blocks(), alpha, caption=cap), "prefix_lengths",
             "accepted prefix length distribution", acc=measured)
    R.figure(plots.plot_rate_comparison(rates, caption=cap), "acceptance_rates", "per-token vs prefix acceptance", acc=measured)
    return rates


def _implications_section(R: _Report, c: _Ctx, seed_scenarios: bool, plan: bool, target_speedup: float,
                          plan_tol: float) -> None:
    """Simulated speed-ups: the strategies, vs alpha, the seeds' scenarios, the alpha needed."""
    _strategy_speedups(R, c)
    if c.alpha_sweep is not None:
        _alpha_sweep_table(R, c)
    if seed_scenarios:
        _seed_scenarios_table(R, c)
    if plan:
        _required_acceptance_table(R, c, target_speedup, plan_tol)


def _strategy_speedups(R: _Report, c: _Ctx) -> None:
    sims = c.sims
    R.add("## Implications for speculative decoding", "",
          f"Simulated speedup vs `target_only` (ratio of mean latencies on the same draws), {c.output_tokens} output tokens, "
          f"gamma = {c.gamma}, acceptance = {c.acc}:", "")
    R.table(sims[["n_gpus", "strategy", "latency_mean_ms", "latency_p90_ms", "ttft_mean_ms", "accepted_mean_tokens",
                  "verify_passes_mean", SPEEDUP]], ".2f")
    R.figure(plots.plot_strategy_speedups(sims, caption=c.fig_caption(),
                                          title=f"Simulated speedup, {c.output_tokens} tokens, acceptance: {c.acc.split(' (')[0]}"),
             "strategy_speedups", "simulated speedup per strategy and GPU count")


def _alpha_sweep_table(R: _Report, c: _Ctx) -> None:
    iid = "i.i.d. per-token match rate alpha per column (assumed, not measured)"
    R.add(f"### Speedup vs per-token match rate alpha ({c.output_tokens} tokens, i.i.d. prefix model)", "",
          "The speedup as a function of an assumed i.i.d. per-token match rate alpha (mean accepted prefix per "
          f"verification = sum of alpha^k, k = 1..{c.gamma}). Costs and contention are measured.", "")
    sw = c.alpha_sweep[c.alpha_sweep["strategy"] != "target_only"]
    R.table(sw.pivot_table(index=["n_gpus", "strategy"], columns="acceptance", values=SPEEDUP)
            .rename(columns=lambda a_: f"alpha {float(a_):g}").reset_index(), ".3f", acc=iid)


def _seed_scenarios_table(R: _Report, c: _Ctx) -> None:
    from .planning import SEED_ALPHAS, seed_scenarios as _seed

    sc = _seed(c.ts, output_tokens=c.output_tokens, n_gpus=c.gpus, n_requests=c.n_requests)
    acc = f"i.i.d. per-token match rate alpha per scenario ({', '.join(f'{a:g}' for a in SEED_ALPHAS.values())}; assumed)"
    R.add("### The seeds' adapter scenarios, evaluated with prefix acceptance", "",
          "`seed_claim_accepted` = drafts x alpha (the seeds' arithmetic); `prefix_expected_accepted` = sum of "
          "alpha^i (acceptance stops at the first mismatch); speedups are simulated with fitted costs and contention.", "")
    R.table(sc, ".3f", acc=acc)
    R.figure(plots.plot_seed_scenarios(sc, caption=c.fig_caption(acc)), "seed_scenarios", "seed adapter scenarios", acc=acc)


def _required_acceptance_table(R: _Report, c: _Ctx, target_speedup: float, plan_tol: float) -> None:
    from .planning import required_acceptance_table

    req = required_acceptance_table(c.ts, target_speedup, [c.output_tokens], c.gpus, strategy="parallel_sd", gamma=c.gamma,
                                    n_requests=c.n_requests, tol=plan_tol, seed=c.seed)
    R.add(f"### Acceptance needed for {target_speedup:g}x (parallel_sd, {c.output_tokens} tokens)", "",
          "Minimum i.i.d. per-token match rate alpha (NaN = unreachable even at alpha = 1):", "")
    R.table(req[["n_gpus", "level", "speedup_at_level", "max_speedup"]].rename(columns={"level": "alpha_required"}), ".3f",
            acc="the i.i.d. per-token match rate alpha solved for (assumed)")


def _findings_section(R: _Report, c: _Ctx, ct, rates) -> None:
    R.add("## Key findings", "")
    for i, f in enumerate(_findings(c, ct, rates), 1):
        R.add(f"{i}. {f}")
    R.add("")


def _footer(R: _Report, ts: TraceSet) -> None:
    R.add("---", "", f"*Generated {_now()} by egpt_sim.report from `{_shown_path(ts.path)}`; figures: {', '.join(R.figures)}.*", "")


def _per_token_speed(ratio: float) -> str:
    """Target / drafter decode-time ratio in words (never "0.98x faster")."""
    if ratio > 1.01:
        return f"the drafter is {ratio:.2f}x faster per token."
    if ratio < 0.99:
        return f"the drafter is {1 / ratio:.2f}x *slower* per token (no cheaper drafts)."
    return f"the drafter is no faster per token (ratio {ratio:.2f}): drafts cost about as much as target steps."


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when below it (no absolute paths in reports)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _findings(c: _Ctx, ct, rates) -> list[str]:
    head, sims, n_tokens = c.head, c.sims, c.output_tokens
    p, t = c.pf.set_index("role"), c.tok.set_index("role")
    f = [f"**Prefill**: the target's prefill phase (S1-S4) takes {head['target_phase_ms']:.1f} ms vs the drafter's "
         f"{head['drafter_phase_ms']:.1f} ms ({head['prefill_phase_ratio']:.2f}x), with a "
         f"{p.loc['target', 'prompt_tokens'] / max(1, p.loc['drafter', 'prompt_tokens']):.1f}x longer prompt "
         f"({p.loc['target', 'prompt_tokens']} vs {p.loc['drafter', 'prompt_tokens']} tokens).",
         f"**Decode**: {t.loc['target', 'decode_median_ms']:.1f} ms/token (target) vs {t.loc['drafter', 'decode_median_ms']:.1f} "
         f"ms/token (drafter): " + _per_token_speed(t.loc['target', 'decode_median_ms'] / t.loc['drafter', 'decode_median_ms'])]
    if ct is not None:
        cf = ct.set_index(["role", "stage"])["contention_factor"]
        f.append(f"**Sharing one GPU is not free**: while both run, the target's prefill slows x{cf.get(('target', 'prefill'), 1.0):.2f} "
                 f"and each draft step x{cf.get(('drafter', 'decode_step'), 1.0):.2f}.")
    short = c.acc.split(" (")[0]
    for r in sims[sims["strategy"] == "prefill_then_verify"].itertuples():
        f.append(f"**Window, {_gpus(r.n_gpus)}** (simulated, acceptance: {short}): the drafter finishes its prefill "
                 f"{r.overlap_window_ms:.0f} ms before the target; {r.window_drafts_mean_tokens:.2f} drafts are ready when its "
                 f"prefill ends (at most gamma = {r.gamma}), of which {r.window_accepted_mean_tokens:.2f} are accepted on "
                 f"average; prefill_then_verify runs at {getattr(r, SPEEDUP):.3f}x.")
    if rates is not None:
        a = rates.iloc[0]
        f.append(f"**Acceptance** ({_match_rate_label(c)}): per-token match rate {a['per_token_match_rate']:.3f}, but the mean "
                 f"accepted prefix length is {a['mean_accepted_prefix_len']:.2f} tokens of {a['mean_gamma']:.0f} drafts (the "
                 f"drafts x rate arithmetic would claim {a['seeds_drafts_x_rate']:.2f}).")
    sd = sims[~sims["strategy"].isin(["target_only", "drafter_only"])]
    for g, d in sd.groupby("n_gpus"):
        b = d.loc[d["latency_mean_ms"].idxmin()]
        sp = b[SPEEDUP]
        verdict = "faster than" if sp > 1.01 else "slower than" if sp < 0.99 else "within 1 % of"
        f.append(f"**Best at {n_tokens} tokens on {_gpus(g)}**: {b['strategy']} at {sp:.3f}x, "
                 f"{verdict} Video-LLaVA alone (simulated, acceptance: {short}).")
    return f


def build_parser() -> argparse.ArgumentParser:
    from ..cli import ACCEPTANCE, INT_LIST, POSITIVE_FLOAT, POSITIVE_INT, OneLineParser

    p = OneLineParser(prog="python -m egpt_sim.report", description="Markdown report (+ PNG figures) of a trace set")
    p.add_argument("--traces", default=None, help="trace-set folder or bundled name; None = h100/fp16 if bundled, else the example")
    p.add_argument("--out", required=True, help="output folder (report.md + figures)")
    p.add_argument("--output-tokens", type=POSITIVE_INT, default=50, help="answer length simulated, tokens")
    p.add_argument("--gamma", type=POSITIVE_INT, default=8, help="max drafts per verification")
    p.add_argument("--gpus", type=INT_LIST, default="1,2", help="GPU counts, comma-separated")
    p.add_argument("--requests", type=POSITIVE_INT, default=200, help="simulated requests per scenario")
    p.add_argument("--seed", type=int, default=0, help="root random seed")
    p.add_argument("--target-speedup", type=POSITIVE_FLOAT, default=1.2, help="speedup for the required-acceptance table")
    p.add_argument("--no-plan", action="store_true", help="skip the required-acceptance search")
    p.add_argument("--no-seed-scenarios", action="store_true", help="skip the seeds' 27.9/50/70/80 %% scenarios")
    p.add_argument("--acceptance", type=ACCEPTANCE, default="auto",
                   help="main scenario's acceptance: 'auto' (trace if recorded, else alpha = 0, labelled), 'trace' "
                        "or an i.i.d. per-token match rate alpha")
    p.add_argument("--acceptance-run", default=None,
                   help="keep only this recorded acceptance run_id (tables and trace replay); None = every run, "
                        "pooled rows announced and a per-run table shown")
    p.add_argument("--frames-traces", default=None, help="frames-sweep trace set for token scaling (e.g. h100/frames)")
    p.add_argument("--alphas", default="0,0.3,0.5,0.7,0.8,0.9,1", help="alpha sweep for the speedup table ('' = skip)")
    return p


def _alphas(text: str) -> list[float]:
    out = []
    for x in (t.strip() for t in text.split(",")):
        if x:
            a = parse_acceptance(x)
            if not isinstance(a, float):
                raise ValueError(f"--alphas: {x!r} is not a per-token match rate in [0, 1]")
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if isinstance(a.acceptance, tuple):
            raise ValueError("--acceptance: the report takes 'auto', 'trace' or one alpha, not a curve")
        path = build_report(a.traces, a.out, output_tokens=a.output_tokens, gamma=a.gamma, n_gpus=a.gpus,
                            n_requests=a.requests, seed=a.seed, target_speedup=a.target_speedup, plan=not a.no_plan,
                            seed_scenarios=not a.no_seed_scenarios, acceptance=a.acceptance, alphas=_alphas(a.alphas),
                            frames_traces=a.frames_traces, acceptance_run=a.acceptance_run)
    except (TraceError, ValueError) as exc:
        print(f"egpt_sim.report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
