"""Stage timings and timelines: Gantt charts, per-stage timings, prefill scaling, memory, contention factors."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .base import ACTIVITY_COLORS, ROLE_COLORS, ROLE_NAMES, STAGE_LABELS, _finish, _need_columns, _require


def plot_gantt(timeline: pd.DataFrame, title: str = "", caption: str | None = None, by: str = "strategy"):
    """Gantt chart: one row per (``by`` value, actor), bars coloured by activity.

    ``timeline`` has the TIMELINE columns plus an optional ``by`` column (e.g. the
    strategy), so one figure can compare strategies for the same request draws.
    """
    _require(timeline, "plot_gantt", "the timeline")
    tl = timeline.copy()
    if by not in tl.columns:
        tl[by] = ""
    groups = list(dict.fromkeys(tl[by]))
    lanes = [(g, a) for g in groups for a in ("drafter", "target") if ((tl[by] == g) & (tl["actor"] == a)).any()]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(lanes) + 1.9))
    for y, (g, actor) in enumerate(lanes):
        ev = tl[(tl[by] == g) & (tl["actor"] == actor)]
        for act, sub in ev.groupby("activity"):
            ax.broken_barh(list(zip(sub["start_ms"], sub["end_ms"] - sub["start_ms"])), (y - 0.38, 0.76),
                           facecolors=ACTIVITY_COLORS.get(act, "#777777"), edgecolors="white", linewidth=0.3)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([f"{g}  {a}" if g else a for g, a in lanes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since request start (ms)")
    present = set(tl["activity"])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for a, c in ACTIVITY_COLORS.items() if a in present]
    labels = [a for a in ACTIVITY_COLORS if a in present]
    ax.set_title(textwrap.fill(title or "Timeline of one request", 95), fontsize=10)
    return _finish(fig, caption, legend=(handles, labels, len(labels)))


def plot_stage_timings(stages: pd.DataFrame, caption: str | None = None, title: str = ""):
    """5-stage comparison per role: median bars with IQR whiskers, values written on bars.

    ``stages``: one row per (role, stage) with ``median_ms``, ``q25_ms``, ``q75_ms``
    (:func:`egpt_sim.analysis.tables.stage_table`).
    """
    _require(stages, "plot_stage_timings", "the stage table")
    _need_columns(stages, "plot_stage_timings", ["role", "stage", "median_ms", "q25_ms", "q75_ms"])
    order = [s for s in STAGE_LABELS if s in set(stages["stage"])]
    roles = [r for r in ROLE_COLORS if r in set(stages["role"])]
    fig, ax = plt.subplots(figsize=(9, 0.75 * len(order) + 1.8))
    h = 0.8 / len(roles)
    xmax = float(stages["q75_ms"].max())
    for j, role in enumerate(roles):
        d = stages[stages["role"] == role].set_index("stage").reindex(order)
        y = np.arange(len(order)) + (j - (len(roles) - 1) / 2) * h
        med = d["median_ms"].to_numpy(float)
        err = np.vstack([med - d["q25_ms"].to_numpy(float), d["q75_ms"].to_numpy(float) - med])
        ax.barh(y, med, height=h * 0.92, color=ROLE_COLORS[role], label=ROLE_NAMES[role],
                xerr=np.nan_to_num(err), error_kw={"elinewidth": 0.8, "capsize": 2})
        for yy, m, q in zip(y, med, d["q75_ms"].to_numpy(float)):
            if np.isfinite(m):
                ax.text(max(m, q) + xmax * 0.012, yy, f"{m:.1f} ms", va="center", fontsize=7.5)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels([STAGE_LABELS[s] for s in order])
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.15)
    ax.set_xlabel("duration (ms): median, whiskers = interquartile range; model running alone")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Stage timings per role")
    return _finish(fig, caption)


def plot_prefill_scaling(frames: pd.DataFrame, caption: str | None = None):
    """Token scaling: prompt (prefill) length and prefill time vs frames given, per role.

    ``frames``: rows (role, frames) with ``prompt_tokens`` and ``prefill_ms`` medians
    (:func:`egpt_sim.analysis.tables.frames_table`).
    """
    _require(frames, "plot_prefill_scaling", "the frames table")
    _need_columns(frames, "plot_prefill_scaling", ["role", "frames", "prompt_tokens", "prefill_ms"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, col, label in ((axes[0], "prompt_tokens", "prefill length (prompt tokens)"),
                           (axes[1], "prefill_ms", "LLM prefill, median (ms)")):
        for role, d in frames.sort_values("frames").groupby("role"):
            ax.plot(d["frames"], d[col], "o-", color=ROLE_COLORS.get(role, "k"), label=ROLE_NAMES.get(role, role))
            for x, v in zip(d["frames"], d[col]):
                ax.annotate(f"{v:,.0f}", (x, v), textcoords="offset points", xytext=(4, 4), fontsize=7.5)
        ax.set_xlabel("frames given to the vision tower")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(frames["frames"].unique()))
        ax.set_ylim(bottom=0, top=float(frames[col].max()) * 1.18)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Prefill length and time vs frames")
    return _finish(fig, caption)


def plot_memory(memory: pd.DataFrame, caption: str | None = None):
    """KV-cache and peak GPU memory per role (MB), from ``kv_bytes`` / ``peak_mem_mb``.

    ``memory``: one row per role with ``kv_mb`` and/or ``peak_mem_mb``
    (:func:`egpt_sim.analysis.tables.memory_table`); NaN bars are left out.
    """
    _require(memory, "plot_memory", "the memory table")
    cols = [c for c in ("kv_mb", "peak_mem_mb") if c in memory.columns and memory[c].notna().any()]
    if not cols:
        raise ValueError("plot_memory: no kv_mb or peak_mem_mb values (memory not recorded in this trace set)")
    names = {"kv_mb": "KV cache after prefill", "peak_mem_mb": "peak GPU memory (prefill)"}
    fig, ax = plt.subplots(figsize=(7.5, 4))
    roles = list(memory["role"])
    w = 0.8 / len(cols)
    for j, col in enumerate(cols):
        x = np.arange(len(roles)) + (j - (len(cols) - 1) / 2) * w
        vals = memory[col].to_numpy(float)
        bars = ax.bar(x, np.nan_to_num(vals), width=w * 0.92, label=names[col],
                      color=["#6baed6", "#08519c"][j])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}" if v >= 100 else f"{v:.3g}", ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(np.arange(len(roles)))
    ax.set_xticklabels([ROLE_NAMES.get(r, r) for r in roles])
    ax.set_ylabel("MB (median over samples)")
    ax.set_title("Memory per role")
    ax.legend(fontsize=8)
    return _finish(fig, caption)


def plot_contention(contention: pd.DataFrame, caption: str | None = None, simulated: str | None = None):
    """Same-GPU slow-down factors per (role, stage); fallbacks (not measured) are hatched.

    ``contention``: ``ContentionModel.table()`` (role, stage, contention_factor, measured),
    optionally with a ``concurrency`` column (``report.contention_by_concurrency``): one bar
    per concurrency (``processes`` / ``streams``) per row. ``simulated`` names the
    concurrency the simulator uses; it is written in the title.
    """
    _require(contention, "plot_contention", "the contention table")
    _need_columns(contention, "plot_contention", ["role", "stage", "contention_factor", "measured"])
    rank = {s: i for i, s in enumerate(STAGE_LABELS)}
    c = contention.copy()
    if "concurrency" not in c:
        c["concurrency"] = ""
    concs = list(dict.fromkeys(c["concurrency"]))
    keys = (c.assign(_r=c["stage"].map(rank)).sort_values(["role", "_r"])[["role", "stage"]]
            .drop_duplicates().reset_index(drop=True))
    n = len(concs)
    fig, ax = plt.subplots(figsize=(9.5, (0.32 * n + 0.12) * len(keys) + 1.9))
    h = 0.8 / n
    shades = {"processes": 1.0, "streams": 0.55, "any": 0.8, "": 1.0}
    for j, conc in enumerate(concs):
        d = c[c["concurrency"] == conc].set_index(["role", "stage"])
        for i, (role, stage) in enumerate(zip(keys["role"], keys["stage"])):
            if (role, stage) not in d.index:
                continue
            r = d.loc[(role, stage)]
            y = i + (j - (n - 1) / 2) * h
            f, meas = float(r["contention_factor"]), bool(r["measured"])
            ax.barh(y, max(f - 1.0, 0.004), left=1.0, height=h * 0.9, color=ROLE_COLORS.get(role, "k"),
                    hatch=None if meas else "//", alpha=shades.get(conc, 0.8) * (1.0 if meas else 0.5),
                    edgecolor="black", linewidth=0.4)
            tag = ("" if meas else " (fallback, not measured)") + (f"  [{conc}]" if n > 1 else "")
            ax.text(f + 0.02, y, f"x{f:.2f}{tag}", va="center", fontsize=7.5)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(np.arange(len(keys)))
    ax.set_yticklabels([f"{ROLE_NAMES.get(r, r)}: {STAGE_LABELS.get(s, s)}" for r, s in zip(keys["role"], keys["stage"])],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(1.0, float(c["contention_factor"].max()) * 1.3 + 0.15)
    ax.set_xlabel("slow-down factor = median with the peer busy on the same GPU / median alone (1 = no slow-down)")
    title = "Same-GPU contention factors"
    if n > 1:
        title += " per concurrency (" + " vs ".join(f"{x}: {'dark' if shades.get(x, 1) == 1 else 'light'}" for x in concs) + ")"
    elif concs[0]:
        title += f" ({concs[0]})"
    if simulated:
        title += f"\nthe simulator uses the '{simulated}' factors"
    ax.set_title(title, fontsize=10)
    return _finish(fig, caption)


def plot_stage_comparison(comparison: pd.DataFrame, caption: str | None = None, title: str = ""):
    """Stage medians of several trace sets side by side, one panel per role.

    ``comparison``: :func:`egpt_sim.analysis.tables.stage_comparison` (set, role, stage, median_ms,
    q25_ms, q75_ms). Whiskers are the interquartile range.
    """
    _require(comparison, "plot_stage_comparison", "the stage comparison")
    _need_columns(comparison, "plot_stage_comparison", ["set", "role", "stage", "median_ms", "q25_ms", "q75_ms"])
    sets = list(dict.fromkeys(comparison["set"]))
    order = [s for s in STAGE_LABELS if s in set(comparison["stage"])]
    roles = [r for r in ROLE_COLORS if r in set(comparison["role"])]
    fig, axes = plt.subplots(1, len(roles), figsize=(5.6 * len(roles), 0.55 * len(order) * len(sets) + 1.6), sharey=True,
                             squeeze=False)
    colors = ["#3182bd", "#e6550d", "#31a354", "#756bb1"]
    h = 0.8 / len(sets)
    xmax = float(comparison["q75_ms"].max())
    for ax, role in zip(axes[0], roles):
        for j, name in enumerate(sets):
            d = comparison[(comparison["set"] == name) & (comparison["role"] == role)].set_index("stage").reindex(order)
            y = np.arange(len(order)) + (j - (len(sets) - 1) / 2) * h
            med = d["median_ms"].to_numpy(float)
            err = np.vstack([med - d["q25_ms"].to_numpy(float), d["q75_ms"].to_numpy(float) - med])
            ax.barh(y, np.nan_to_num(med), height=h * 0.9, color=colors[j % 4], label=name, xerr=np.nan_to_num(err),
                    error_kw={"elinewidth": 0.7, "capsize": 2})
            for yy, m, q in zip(y, med, d["q75_ms"].to_numpy(float)):
                if np.isfinite(m):
                    ax.text(max(m, q) + xmax * 0.015, yy, f"{m:.1f}", va="center", fontsize=7)
        ax.set_title(ROLE_NAMES.get(role, role), fontsize=10)
        ax.set_xlim(0, xmax * 1.2)
        ax.set_xlabel("median ms (whiskers: IQR), alone")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(np.arange(len(order)))
    axes[0][0].set_yticklabels([STAGE_LABELS[s] for s in order])
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Stage timings: " + " vs ".join(sets))
    return _finish(fig, caption)
