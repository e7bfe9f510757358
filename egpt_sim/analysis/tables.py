"""The analysis tables behind the report and the notebooks: tidy frames of a trace set.

* trace tables (measured, nothing simulated): stage timings, prefill phase, tokens, verify
  passes, memory, frames, contention factors, acceptance (three named numbers);
* simulated tables: strategies side by side, timelines, speed-up sweeps, break-even
  lengths, acceptance needed for a speed-up, serving latency vs load;
* loaders: trace sets for analysis, validation runs and their residuals.

Every function raises :class:`~egpt_sim.traces.schema.TraceError` (or returns None where the
table is optional) instead of returning a table of zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..sim.config import SimConfig, factorial
from ..sim.runner import draw_bank, simulate
from ..traces import schema
from ..traces.acceptance import acceptance_by_position, acceptance_summary, expected_accepted_iid
from ..traces.schema import TraceError
from ..traces.traceset import DATA_DIR, PREFILL_PHASE_STAGES, TraceSet, resolve_trace_set
from .labels import SPEEDUP, default_acceptance, summary_row, with_speedup

REPORT_STAGES = ("load", "preprocess", "vision_encode", "prefill", "decode_step")

SD_STRATEGIES = ("serial_sd", "prefill_then_verify", "parallel_sd", "adaptive_budget")

STRATEGIES = ("target_only", "drafter_only", *SD_STRATEGIES)


def _alone_main(ts: TraceSet) -> pd.DataFrame:
    """OK ``alone`` rows at each role's main frame count (the one most prefill samples used)."""
    r = ts.ok_rows[ts.ok_rows["placement"] == "alone"]
    main = main_frames(ts)
    return r[r["frames"] == r["role"].map(main)]


def main_frames(ts: TraceSet) -> dict[str, int]:
    r = ts.ok_rows[(ts.ok_rows["placement"] == "alone") & (ts.ok_rows["stage"] == "prefill")]
    return {role: int(g["frames"].mode().iloc[0]) for role, g in r.groupby("role")}


def _stats(x: pd.Series) -> dict:
    return {"n": int(len(x)), "median_ms": float(x.median()), "q25_ms": float(x.quantile(0.25)),
            "q75_ms": float(x.quantile(0.75))}


def stage_table(ts: TraceSet) -> pd.DataFrame:
    """Median and IQR of each of the five stages per role (alone, main frame count).

    Raises :class:`TraceError` naming the (role, stage) pairs with no OK rows.
    """
    r = _alone_main(ts)
    frames = main_frames(ts)
    rows, missing = [], []
    for role in schema.ROLES:
        for stage in REPORT_STAGES:
            d = r[(r["role"] == role) & (r["stage"] == stage)]["duration_ms"]
            if d.empty:
                missing.append(f"{role}/{stage}")
                continue
            rows.append({"role": role, "stage": stage, "frames": frames.get(role, 0)} | _stats(d))
    if missing:
        raise TraceError(f"{ts.path}: column 'stage' has no OK 'alone' rows for {', '.join(missing)} "
                         f"(the 5-stage report needs {', '.join(REPORT_STAGES)} for both roles)")
    t = pd.DataFrame(rows)
    return t.assign(iqr_ms=t["q75_ms"] - t["q25_ms"])


def prefill_table(ts: TraceSet) -> pd.DataFrame:
    """Per role: prefill phase (S1-S4 per-sample sum), LLM prefill, prompt length, tok/s."""
    r, frames = _alone_main(ts), main_frames(ts)
    rows = []
    for role in schema.ROLES:
        d = r[(r["role"] == role) & r["stage"].isin(PREFILL_PHASE_STAGES)]
        per = d.pivot_table(index=["run_id", "sample_id"], columns="stage", values="duration_ms", aggfunc="median")
        per = per.dropna(subset=["prefill"])
        pre = d[d["stage"] == "prefill"]
        phase = per.sum(axis=1)
        rows.append({
            "role": role, "frames": frames.get(role, 0), "n_samples": int(len(per)),
            "phase_median_ms": float(phase.median()), "phase_iqr_ms": float(phase.quantile(0.75) - phase.quantile(0.25)),
            "prefill_median_ms": float(pre["duration_ms"].median()),
            "prompt_tokens": int(pre["prompt_tokens"].median()),
            "prefill_tok_per_s": float((pre["prompt_tokens"] / pre["duration_ms"] * 1000.0).median()),
        })
    return pd.DataFrame(rows)


def token_table(ts: TraceSet) -> pd.DataFrame:
    """Per role: decode step ms (median, IQR), tokens/s, decode steps recorded per sample."""
    r = _alone_main(ts)
    rows = []
    for role in schema.ROLES:
        d = r[(r["role"] == role) & (r["stage"] == "decode_step")]
        s = _stats(d["duration_ms"])
        rows.append({
            "role": role, "decode_median_ms": s["median_ms"], "decode_iqr_ms": s["q75_ms"] - s["q25_ms"],
            "tok_per_s": 1000.0 / s["median_ms"] if s["median_ms"] > 0 else float("nan"),
            "steps_per_sample": float(d.groupby(["run_id", "sample_id"]).size().mean()),
            "kv_tokens_first_step": int(d[d["step"] == d["step"].min()]["kv_tokens"].median()),
        })
    return pd.DataFrame(rows)


def verify_table(ts: TraceSet) -> pd.DataFrame | None:
    """Target verify pass cost per gamma vs one decode step (None without verify rows)."""
    r = _alone_main(ts)
    v = r[(r["role"] == "target") & (r["stage"] == "verify")]
    if v.empty:
        return None
    dec = float(r[(r["role"] == "target") & (r["stage"] == "decode_step")]["duration_ms"].median())
    t = v.groupby("gamma")["duration_ms"].agg(["median", "size"]).reset_index()
    return t.rename(columns={"median": "verify_median_ms", "size": "n"}).assign(vs_decode_step=lambda x: x["verify_median_ms"] / dec)


def memory_table(ts: TraceSet) -> pd.DataFrame | None:
    """Median KV-cache MB (``kv_bytes``) and peak MB (``peak_mem_mb``) of prefill rows, per
    role; None when the trace set has neither column (or only missing values)."""
    r = _alone_main(ts)
    pre = r[r["stage"] == "prefill"]
    cols = [c for c in ("kv_bytes", "peak_mem_mb") if c in pre.columns and pd.to_numeric(pre[c], errors="coerce").notna().any()]
    if not cols:
        return None
    rows = []
    for role, d in pre.groupby("role"):
        row = {"role": role, "prompt_tokens": int(d["prompt_tokens"].median())}
        if "kv_bytes" in cols:
            row["kv_mb"] = float(pd.to_numeric(d["kv_bytes"], errors="coerce").median()) / 2**20
        if "peak_mem_mb" in cols:
            row["peak_mem_mb"] = float(pd.to_numeric(d["peak_mem_mb"], errors="coerce").median())
        rows.append(row)
    return pd.DataFrame(rows)


def frames_table(ts: TraceSet) -> pd.DataFrame:
    """Token scaling: per (role, frames) median prompt tokens, LLM prefill and vision ms."""
    r = ts.ok_rows[ts.ok_rows["placement"] == "alone"]
    pre = r[r["stage"] == "prefill"].groupby(["role", "frames"]).agg(
        n_samples=("sample_id", "nunique"), prompt_tokens=("prompt_tokens", "median"), prefill_ms=("duration_ms", "median"))
    vis = r[r["stage"] == "vision_encode"].groupby(["role", "frames"])["duration_ms"].median().rename("vision_ms")
    return pre.join(vis).reset_index()


def contention_table(ts: TraceSet, concurrency: str = "auto") -> pd.DataFrame | None:
    """Fitted same-GPU slow-down factors, or None without ``shared_gpu`` rows.

    ``concurrency="auto"`` is what the simulator uses by default (``SimConfig.contention_concurrency``):
    separate processes when measured, else streams. The ``concurrency`` column names the rows used.
    """
    try:
        table = ts.contention("shared_gpu", concurrency).table(by_peer=False)
    except TraceError:
        return None
    if concurrency == "auto":
        shared = ts.ok_rows[(ts.ok_rows["placement"] == "shared_gpu") & ts.ok_rows["peer_busy"]]
        present = set(shared["concurrency"].astype(str))
        concurrency = next((c for c in ("processes", "streams") if c in present), "any")
    return table.assign(concurrency=concurrency)


def contention_by_concurrency(ts: TraceSet) -> pd.DataFrame | None:
    """Contention factors fitted separately for every measured concurrency (``streams``:
    two threads of one process; ``processes``), stacked; None without ``shared_gpu`` rows."""
    shared = ts.ok_rows[(ts.ok_rows["placement"] == "shared_gpu") & ts.ok_rows["peer_busy"]]
    present = [c for c in ("processes", "streams") if c in set(shared["concurrency"].astype(str))]
    tables = [t for t in (contention_table(ts, c) for c in present) if t is not None]
    if not tables:
        return contention_table(ts, "any")
    return pd.concat(tables, ignore_index=True)


def load_for_analysis(name: str | Path) -> TraceSet:
    """A trace set loaded for tables only: no check that it can be *simulated* (a frames sweep
    of the target alone has no drafter rows, yet its token-scaling table is valid)."""
    path = resolve_trace_set(name)
    meta = schema.read_metadata(path)
    st = schema.read_table(path, schema.STAGE_TIMINGS_FILE)
    acc = schema.read_table(path, schema.ACCEPTANCE_FILE) if schema._table_path(path, schema.ACCEPTANCE_FILE) else None
    ts = TraceSet(st, acc, meta, str(path))
    if ts.ok_rows.empty:
        raise TraceError(f"{path}: stage_timings has no rows with status 'ok'")
    return ts


def stage_comparison(sets: dict[str, TraceSet]) -> pd.DataFrame:
    """Stage medians of several trace sets side by side (e.g. fp16 vs 4-bit): one row per
    (set, role, stage) from :func:`stage_table`, with a ``set`` column."""
    return pd.concat([stage_table(ts).assign(set=name) for name, ts in sets.items()], ignore_index=True)


def acceptance_rates(ts: TraceSet, by: str | None = None) -> pd.DataFrame | None:
    """The three acceptance numbers for all verifications, the window block (verify 0)
    and later blocks; plus what the i.i.d. prefix model and the seeds' drafts x rate
    arithmetic would say at the same per-token rate. None without an acceptance table.

    ``by`` (e.g. ``"sigma"`` or ``"run_id"``): one row per value of that column instead of
    the window/later split (several acceptance runs pooled in one table are kept apart).
    """
    a = ts.acceptance
    if a is None:
        return None
    if by is not None:
        if by not in a.columns:
            raise ValueError(f"acceptance_rates: the acceptance table has no column {by!r}")
        groups = [("all verifications", a)] + [(f"{by} = {v:g}" if isinstance(v, (int, float, np.number)) else str(v),
                                                 a[a[by] == v]) for v in sorted(a[by].dropna().unique())]
        if a[by].nunique() <= 1:
            groups = groups[:1]
    else:
        groups = [("all verifications", a), ("window block (verify 0)", a[a["verify_id"] == 0]),
                  ("later blocks", a[a["verify_id"] > 0])]
    rows = []
    for name, d in groups:
        if d.empty or (name != "all verifications" and len(d) == len(a)):
            continue
        s = acceptance_summary(d)
        gam = d.groupby(["run_id", "sample_id", "verify_id"])["gamma"].first()
        s["iid_prefix_expected"] = float(np.mean([expected_accepted_iid(s["per_token_match_rate"], int(g)) for g in gam]))
        s["seeds_drafts_x_rate"] = s["mean_gamma"] * s["per_token_match_rate"]
        rows.append({"group": name} | s)
    return pd.DataFrame(rows)


def acceptance_by_group(ts: TraceSet, by: str = "sigma") -> pd.DataFrame | None:
    """:func:`acceptance_by_position` per value of ``by`` (a ``by`` column added), for
    per-run / per-sigma curves; None without an acceptance table."""
    a = ts.acceptance
    if a is None:
        return None
    if by not in a.columns:
        raise ValueError(f"acceptance_by_group: the acceptance table has no column {by!r}")
    return pd.concat([acceptance_by_position(d).assign(**{by: v, "per_token_match_rate_pooled": float(d["matched"].mean())})
                      for v, d in a.groupby(by)], ignore_index=True)


def acceptance_caption(ts: TraceSet, run_id: str | None = None) -> str:
    """Provenance of an acceptance table: verifications, runs and how each run's drafter was made
    (the run metadata's ``drafter_context`` / ``sigma``; a perturbed copy of the target is not
    a trained drafter), appended to the trace set's provenance line."""
    a = ts.acceptance
    if a is None:
        return ts.provenance()
    runs = ts.metadata.get("runs", {})
    parts = []
    for rid, d in a.groupby("run_id"):
        if run_id is not None and rid != run_id:
            continue
        r = runs.get(rid, {})
        n = d.groupby(["sample_id", "verify_id"]).ngroups
        how = []
        if r.get("drafter_context") is not None:
            how.append(f"drafter context {r['drafter_context']}")
        if r.get("sigma") is not None:
            how.append(f"sigma {r['sigma']:g}")
        kinds = {str(m.get("kind")) for m in r.get("models", {}).values() if m.get("kind")}
        if kinds == {"random"}:
            how.append("random weights")
        parts.append(f"{rid}: {n} verifications" + (f" ({', '.join(how)})" if how else ""))
    return f"{ts.provenance()} | acceptance: {'; '.join(parts)}"


def headline_numbers(ts: TraceSet) -> dict:
    """Headline numbers of a trace set (for notebook scraps and the report's findings)."""
    st, pf, tok = stage_table(ts), prefill_table(ts).set_index("role"), token_table(ts).set_index("role")
    out = {"n_samples": int(ts.ok_rows["sample_id"].nunique()), "provenance": ts.provenance()}
    for role in schema.ROLES:
        out[f"{role}_phase_ms"] = float(pf.loc[role, "phase_median_ms"])
        out[f"{role}_prefill_ms"] = float(pf.loc[role, "prefill_median_ms"])
        out[f"{role}_prompt_tokens"] = int(pf.loc[role, "prompt_tokens"])
        out[f"{role}_decode_ms"] = float(tok.loc[role, "decode_median_ms"])
    out["prefill_phase_ratio"] = out["target_phase_ms"] / out["drafter_phase_ms"]
    out["n_stage_rows"] = int(st["n"].sum())
    if ts.acceptance is not None:
        s = acceptance_summary(ts.acceptance)
        out |= {k: s[k] for k in ("per_token_match_rate", "mean_accepted_prefix_len", "mean_gamma", "n_verifications")}
    return out


def gpu_counts(ts: TraceSet, n_gpus: Sequence[int]) -> list[int]:
    """``n_gpus`` without 1 when no same-GPU contention was measured (it cannot be simulated)."""
    return [g for g in n_gpus if g != 1 or contention_table(ts) is not None]


def strategy_table(ts: TraceSet, output_tokens: int = 50, gamma: int = 8, n_gpus: Sequence[int] = (1, 2),
                   strategies: Sequence[str] = STRATEGIES, acceptance=None, n_requests: int = 200,
                   seed: int = 0, **config) -> pd.DataFrame:
    """Simulate every (GPU count, strategy) on one set of draws; one summary row each,
    plus the simulated prefill ends and overlap window (target - drafter prefill end)."""
    acceptance = default_acceptance(ts) if acceptance is None else acceptance
    base = SimConfig(output_tokens=output_tokens, gamma=gamma, acceptance=acceptance, n_requests=n_requests,
                     seed=seed, **config)
    bank = draw_bank(base, ts)
    rows = []
    for g in n_gpus:
        for s in strategies:
            res = simulate(base.replace(strategy=s, n_gpus=g), ts, bank=bank)
            req = res.requests
            rows.append({"n_gpus": g, "strategy": s, "output_tokens": output_tokens, "gamma": gamma,
                         "acceptance": base.acceptance_label} | summary_row(res.summary()) | {
                "drafter_prefill_end_ms": float(req["drafter_prefill_end_ms"].mean()),
                "target_prefill_end_ms": float(req["target_prefill_end_ms"].mean()),
                "overlap_window_ms": float((req["target_prefill_end_ms"] - req["drafter_prefill_end_ms"]).mean()),
            })
    return pd.DataFrame(rows)


def timeline_frame(ts: TraceSet, strategies: Sequence[str] = ("target_only", "prefill_then_verify", "parallel_sd"),
                   n_gpus: int = 1, output_tokens: int = 30, gamma: int = 8, acceptance=None, seed: int = 0) -> pd.DataFrame:
    """Simulated events of request 0 under each strategy (same draws), with a ``strategy`` column."""
    acceptance = default_acceptance(ts) if acceptance is None else acceptance
    frames = []
    for s in strategies:
        cfg = SimConfig(strategy=s, n_gpus=n_gpus, output_tokens=output_tokens, gamma=gamma, acceptance=acceptance,
                        n_requests=1, seed=seed)
        frames.append(simulate(cfg, ts, timeline=True).timeline.assign(strategy=s))
    return pd.concat(frames, ignore_index=True)


def gantt_title(output_tokens: int, n_gpus: int, acceptance, gamma: int) -> str:
    """Title of a one-request Gantt chart naming tokens, GPUs, acceptance and gamma."""
    acc = ("replayed acceptance trace" if acceptance == "trace"
           else f"i.i.d. per-token match rate alpha = {float(acceptance):g}")
    gpus = "1 shared GPU (fitted contention)" if n_gpus == 1 else f"{n_gpus} GPUs (drafter on its own)"
    return f"One simulated request: {output_tokens} tokens, {gpus}, {acc}, gamma = {gamma}"


def speedup_sweep(ts: TraceSet, strategies: Sequence[str] = SD_STRATEGIES, output_tokens: Sequence[int] = (10, 50, 100),
                  acceptance: Sequence = (0.0, 0.5, 1.0), n_gpus: Sequence[int] = (1, 2), n_requests: int = 100,
                  **config) -> pd.DataFrame:
    """Sweep strategies x output lengths x acceptance x GPU counts; every other field (gamma,
    seed, ...) from ``config``. target_only is always included, as the baseline candidate
    of the best-strategy map."""
    from .sweep import run_sweep

    strategies = list(dict.fromkeys(["target_only", *strategies]))
    cfgs = factorial(SimConfig(n_requests=n_requests, **config),
                     {"strategy": strategies, "output_tokens": list(output_tokens), "acceptance": list(acceptance),
                      "n_gpus": list(n_gpus)})
    return run_sweep(cfgs, ts, progress=False)


def sensitivity_sweep(ts: TraceSet, factor: str, values: Sequence[float], strategies: Sequence[str] = SD_STRATEGIES,
                      n_gpus: Sequence[int] = (1, 2), n_requests: int = 100, **config) -> pd.DataFrame:
    """Speedup vs one what-if factor (``drafter_speed`` or ``contention_scale``)."""
    from .sweep import run_sweep

    if factor not in ("drafter_speed", "contention_scale"):
        raise ValueError(f"sensitivity_sweep: factor must be drafter_speed or contention_scale, got {factor!r}")
    base = SimConfig(n_requests=n_requests, **config)
    return run_sweep(factorial(base, {factor: list(values), "strategy": list(strategies), "n_gpus": list(n_gpus)}),
                     ts, progress=False)


def break_even_table(sweep: pd.DataFrame, threshold: float = 1.0) -> pd.DataFrame:
    """Per (strategy, GPU count, output length): the lowest swept alpha whose speedup is
    strictly above ``threshold`` (NaN: never, on this grid) and the best speedup seen."""
    sweep = with_speedup(sweep)
    d = sweep[sweep["strategy"] != "target_only"]
    if d.empty:
        raise ValueError("break_even_table: the sweep has no strategy other than target_only")
    rows = []
    for (s, g, n), e in d.groupby(["strategy", "n_gpus", "output_tokens"]):
        faster = e[e[SPEEDUP] > threshold]["acceptance"].astype(float)
        rows.append({"strategy": s, "n_gpus": g, "output_tokens": n,
                     "break_even_alpha": float(faster.min()) if len(faster) else float("nan"),
                     "max_speedup": float(e[SPEEDUP].max())})
    return pd.DataFrame(rows)


def acceptance_curve(ts: TraceSet, run_id: str | None = None) -> tuple[float, ...] | None:
    """The measured conditional per-position acceptance curve of ``ts`` (only ``run_id``'s
    verifications when given); None without an acceptance table."""
    from .planning import trace_curve

    if ts.acceptance is None:
        return None
    if run_id is None:
        return trace_curve(ts)
    a = ts.acceptance[ts.acceptance["run_id"] == run_id]
    if a.empty:
        raise ValueError(f"{ts.path}: no acceptance rows for run_id {run_id!r} "
                         f"(has {sorted(ts.acceptance['run_id'].unique())})")
    return trace_curve(TraceSet(ts.stage_timings, a, ts.metadata, ts.path))


def curve_requirements(ts: TraceSet, target_speedup: float, output_tokens: Sequence[int], n_gpus: Sequence[int],
                       curve: Sequence[float] | None = None, **kw) -> pd.DataFrame | None:
    """Minimum scale of a *measured* per-position conditional curve reaching
    ``target_speedup`` (``planning.required_acceptance_table`` with ``curve``). ``curve``
    defaults to ``ts``'s own (:func:`acceptance_curve`); None without either."""
    from .planning import required_acceptance_table

    curve = acceptance_curve(ts) if curve is None else curve
    if curve is None:
        return None
    return required_acceptance_table(ts, target_speedup, output_tokens, n_gpus, curve=tuple(curve), **kw)


def optional_trace_set(name: str | Path | None, bundled: str) -> TraceSet | None:
    """``name`` loaded for analysis (:func:`load_for_analysis`: it need not be simulatable),
    else the bundled set ``bundled`` when it exists, else None."""
    if name is not None:
        return load_for_analysis(name)
    from ..traces.traceset import bundled_trace_sets

    path = bundled_trace_sets().get(bundled)
    return load_for_analysis(path) if path is not None else None


def serving_latency_vs_load(ts: TraceSet, rates_rps: Sequence[float], n_gpus: int = 2, n_requests: int = 200,
                            strategy: str = "parallel_sd", acceptance=0.7, **config) -> pd.DataFrame | None:
    """Latency vs offered load for target_only, colocated and split serving of ``strategy``
    (:mod:`egpt_sim.serving`); None when the serving layer is not available."""
    try:
        from ..serving import ServingConfig
        from ..serving.sweep import latency_vs_load
    except ImportError:
        return None
    base = ServingConfig(n_gpus=n_gpus, n_requests=n_requests, acceptance=acceptance, **config)
    variants = ["target_only", {"policy": "colocated", "strategy": strategy}]
    if n_gpus > base.drafter_gpus:
        variants.append({"policy": "split", "strategy": strategy})
    return latency_vs_load(base, rates_rps, variants=variants, n_gpus=[n_gpus], traces_path=ts.path, workers=1)


@dataclass
class ValidationData:
    """Outcome of :func:`load_validation`: ``available`` False comes with the reason."""

    available: bool
    message: str
    cells: pd.DataFrame | None = None
    overall: dict = field(default_factory=dict)
    caption: str = ""


def load_validation(validation_dir: str | Path | None = None, **compare_kw) -> ValidationData:
    """Simulator vs measured cells of a validation folder written by ``measure.validation_run``
    (``egpt_sim.analysis.validation.compare_dir``).

    ``None`` = the bundled ``h100/validation`` set. A missing folder or a missing
    validation module/function gives ``available=False`` with a "no validation data"
    message instead of an error; a folder that exists but is unusable raises (TraceError).
    """
    folder = Path(validation_dir) if validation_dir is not None else DATA_DIR / "h100" / "validation"
    if not folder.is_dir() and (DATA_DIR / str(validation_dir)).is_dir():  # a bundled name, e.g. h200/...
        folder = DATA_DIR / str(validation_dir)
    if not folder.is_dir():
        return ValidationData(False, f"no validation data: folder {folder} does not exist")
    try:
        from .validation import compare_dir
    except ImportError as exc:
        return ValidationData(False, f"no validation data: egpt_sim.analysis.validation.compare_dir is not available ({exc})")
    cells, overall = compare_dir(folder, **compare_kw)
    if cells is None or len(cells) == 0:
        return ValidationData(False, f"no validation data: {folder} gave zero comparison cells")
    msg = (f"{len(cells)} validation cells from {folder}: median |error| {overall.get('median_abs_error_pct', float('nan')):.1f} %, "
           f"p90 {overall.get('p90_abs_error_pct', float('nan')):.1f} %, "
           f"p90 |speed-up error| {overall.get('p90_abs_speedup_error', float('nan')):.3f}, "
           f"TOST-equivalent fraction {overall.get('tost_equivalent_fraction', float('nan')):.2f} "
           f"(paired {overall.get('paired_tost_equivalent_fraction', float('nan')):.2f})")
    try:
        caption = f"validation: {TraceSet.load(folder).provenance()}"
    except TraceError:
        caption = f"validation data: {folder}"
    return ValidationData(True, msg, cells, dict(overall), caption)


SUMMARY_COLUMNS = {"n_cells": "cells", "median_abs_error_pct": "median |err| %", "p90_abs_error_pct": "p90 |err| %",
                   "max_abs_error_pct": "max |err| %", "p90_abs_speedup_error": "p90 |speed-up err|",
                   "paired_tost_equivalent_fraction": "TOST paired", "p90_abs_error_pct_if_exact": "exact-model p90 %",
                   "p90_abs_speedup_error_if_exact": "exact-model p90 speed-up"}


def validation_summary(root: str | Path = "h200") -> pd.DataFrame:
    """One row per (validation folder, mode) under ``root`` (a bundled name or a path): the figures
    ``python -m egpt_sim.validation`` wrote to each folder's ``validation_overall.json`` (nothing is
    re-simulated; a folder not yet scored is left out). Empty frame when there are none."""
    import json

    base = Path(root) if Path(root).is_dir() else DATA_DIR / str(root)
    rows = []
    for f in sorted(base.glob("validation*/validation_overall.json")):
        for mode, o in json.loads(f.read_text()).items():
            if isinstance(o, dict) and "n_cells" in o:
                rows.append({"folder": f.parent.name, "mode": mode,
                             **{label: o.get(key, np.nan) for key, label in SUMMARY_COLUMNS.items()}})
    return pd.DataFrame(rows, columns=["folder", "mode", *SUMMARY_COLUMNS.values()])


def load_residuals(validation_dir: str | Path | None = None, n_predicted: int = 100) -> pd.DataFrame | None:
    """Per-activity residuals (executor vs simulated median duration and count per request,
    :func:`egpt_sim.analysis.validation.activity_residuals`) of a validation folder; None when the folder
    has no executor timeline."""
    from .validation import activity_residuals, executor_concurrency, load_validation_dir

    folder = Path(validation_dir) if validation_dir is not None else DATA_DIR / "h100" / "validation"
    if not folder.is_dir() and (DATA_DIR / str(validation_dir)).is_dir():
        folder = DATA_DIR / str(validation_dir)
    if not (folder / "executor_timeline.parquet").exists():
        return None
    results, traces_for = load_validation_dir(folder)
    timeline = pd.read_parquet(folder / "executor_timeline.parquet")
    return activity_residuals(results, timeline, traces_for, n_predicted=n_predicted,
                              contention_concurrency=executor_concurrency(results))


def records(df: pd.DataFrame | None) -> list[dict]:
    """JSON-safe rows (NaN -> None, numpy scalars -> Python) for ``scrapbook.glue``
    (which cannot record None: no frame gives an empty list)."""
    if df is None:
        return []
    clean = df.astype(object).where(df.notna(), None)
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in clean.to_dict("records")]
