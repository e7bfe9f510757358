"""Figures drawn from trace and simulator frames. Every function returns a Figure and
never shows it; ``caption`` (the provenance line: trace set, GPU, dtype, sample count,
source) is wrapped and written under the axes.

Plot helpers live here (tested), not in notebooks. Each helper takes the tidy frame a
library function returns (``egpt_sim.report.*_table``, ``acceptance_by_position``,
``run_sweep``, ``best_strategy``, ``required_acceptance_table``, ``seed_scenarios``,
``validation.compare``) and raises ``ValueError`` for an empty frame: a figure drawn
from zero rows would show nothing and look like a result.

Acceptance is always named: *per-token match rate* (fraction of draft positions equal
to the target's token), *mean accepted prefix length* (tokens accepted per
verification, up to the first mismatch) and *P(accepted length > i)*.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .labels import SPEEDUP, with_speedup  # noqa: E402

ACTIVITY_COLORS = {
    "load": "#c7c7c7", "preprocess": "#9e9e9e", "vision_encode": "#8c6bb1", "prefill": "#2b8cbe",
    "draft_step": "#fdae6b", "decode_step": "#41ab5d", "verify": "#e6550d",
}
ROLE_COLORS = {"drafter": "#fd8d3c", "target": "#3182bd"}
ROLE_NAMES = {"drafter": "drafter (EventGPT)", "target": "target (Video-LLaVA)"}
STRATEGY_COLORS = {
    "target_only": "#969696", "drafter_only": "#fdd0a2", "serial_sd": "#9e9ac8",
    "prefill_then_verify": "#3182bd", "parallel_sd": "#e6550d", "adaptive_budget": "#31a354",
}
STAGE_LABELS = {
    "load": "1 load", "preprocess": "2 preprocess", "vision_encode": "3 vision encode",
    "prefill": "4 LLM prefill", "decode_step": "5 decode (per token)", "verify": "verify pass",
}
_CAPTION_PT = 7


def _require(df: pd.DataFrame | None, fn: str, what: str) -> pd.DataFrame:
    if df is None or len(df) == 0:
        raise ValueError(f"{fn}: {what} has zero rows (refusing to draw an empty figure)")
    return df


def _need_columns(df: pd.DataFrame, fn: str, cols) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{fn}: missing column(s) {missing}")


def _caption(fig, caption: str | None) -> None:
    """Write ``caption`` wrapped to the figure width, under the axes (see :func:`_finish`)."""
    if caption:
        fig.text(0.01, 0.005, _wrap(fig, caption), fontsize=_CAPTION_PT, color="#555555", ha="left", va="bottom")


def _wrap(fig, caption: str) -> str:
    chars = max(40, int(fig.get_figwidth() * 72 / (_CAPTION_PT * 0.56)))
    return "\n".join(textwrap.wrap(caption, chars))


def _finish(fig, caption: str | None, legend: tuple | None = None):
    """tight_layout leaving room for the wrapped caption and, if given, a figure legend
    ``(handles, labels, ncol)`` placed between the axes and the caption."""
    lines = _wrap(fig, caption).count("\n") + 1 if caption else 0
    h = fig.get_figheight()
    bottom = (lines * _CAPTION_PT * 1.35 + 6) / 72 / h
    if legend is not None:
        handles, labels, ncol = legend
        rows = -(-len(labels) // ncol)
        fig.legend(handles, labels, ncol=ncol, loc="lower center", bbox_to_anchor=(0.5, bottom), fontsize=7.5, frameon=False)
        bottom += (rows * 0.2 + 0.1) / h
    fig.tight_layout(rect=(0, min(bottom, 0.45), 1, 1))
    _caption(fig, caption)
    return fig


def add_caption(fig, caption: str | None):
    """Caption a figure drawn elsewhere (e.g. :mod:`egpt_sim.serving_plots`) like ours."""
    return _finish(fig, caption)


def save(fig, fig_dir: str | Path, name: str, dpi: int = 130):
    """Write ``fig`` to ``fig_dir/name.png``, release it from pyplot, return it.

    Returning the figure lets a notebook cell end with ``plots.save(plots.plot_x(...), ...)``
    so the figure is displayed exactly once.
    """
    out = Path(fig_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=dpi)
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- timelines


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


# --------------------------------------------------------------------------- stage timings


def plot_stage_timings(stages: pd.DataFrame, caption: str | None = None, title: str = ""):
    """5-stage comparison per role: median bars with IQR whiskers, values written on bars.

    ``stages``: one row per (role, stage) with ``median_ms``, ``q25_ms``, ``q75_ms``
    (:func:`egpt_sim.report.stage_table`).
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
    (:func:`egpt_sim.report.frames_table`).
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
    (:func:`egpt_sim.report.memory_table`); NaN bars are left out.
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

    ``comparison``: :func:`egpt_sim.report.stage_comparison` (set, role, stage, median_ms,
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


# --------------------------------------------------------------------------- acceptance


def plot_acceptance_curves(by_position: pd.DataFrame, alpha: float | None = None, caption: str | None = None):
    """Per-position acceptance vs the i.i.d. geometric model.

    Left: per-token match rate and conditional acceptance rate at draft position i.
    Right: P(accepted length > i). ``by_position`` is ``acceptance_by_position(...)``
    (1-based ``position``, plotted as 0-based i); ``alpha`` (default: the pooled
    per-token match rate) sets the i.i.d. reference, for which both left curves are
    flat at alpha and P(accepted length > i) = alpha**(i+1).
    """
    _require(by_position, "plot_acceptance_curves", "the per-position table")
    _need_columns(by_position, "plot_acceptance_curves",
                  ["position", "per_token_match_rate", "conditional_accept_rate", "p_accept_len_gt"])
    d = by_position.sort_values("position")
    i = d["position"].to_numpy(int) - 1
    if alpha is None:
        w = d["n_blocks"] if "n_blocks" in d else None
        alpha = float(np.average(d["per_token_match_rate"].fillna(0), weights=w))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.3))
    a1.plot(i, d["per_token_match_rate"], "o-", color="#3182bd", label="per-token match rate at i")
    a1.plot(i, d["conditional_accept_rate"], "s-", color="#e6550d",
            label="conditional: P(accepted at i | accepted 0..i-1)")
    a1.axhline(alpha, color="black", ls="--", lw=1, label=f"i.i.d. model: alpha = {alpha:.3f}")
    a1.set_ylim(-0.02, 1.02)
    a1.set_xlabel("draft position i (0 = first draft)")
    a1.set_ylabel("rate")
    a1.set_title("Per-position rates")
    a1.legend(fontsize=7.5)
    a2.plot(i, d["p_accept_len_gt"], "o-", color="#31a354", label="measured P(accepted length > i)")
    a2.plot(i, alpha ** (i + 1.0), "k--", lw=1, label=f"i.i.d. geometric: alpha^(i+1), alpha = {alpha:.3f}")
    a2.set_ylim(-0.02, 1.02)
    a2.set_xlabel("i (drafts)")
    a2.set_ylabel("P(accepted length > i)")
    a2.set_title("Accepted prefix survival")
    a2.legend(fontsize=7.5)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return _finish(fig, caption)


def plot_acceptance_by_group(by_group: pd.DataFrame, by: str = "sigma", caption: str | None = None,
                             labels: dict | None = None):
    """Per-group acceptance curves (e.g. one per drafter perturbation sigma or acceptance run).

    ``by_group``: :func:`egpt_sim.report.acceptance_by_group` (position, per_token_match_rate,
    p_accept_len_gt, n_blocks, ``by``, per_token_match_rate_pooled). Left: per-token match
    rate at draft position i; right: P(accepted length > i), with the i.i.d. geometric model
    alpha^(i+1) at each group's pooled per-token match rate (dashed, same colour).
    """
    _require(by_group, "plot_acceptance_by_group", "the per-group table")
    _need_columns(by_group, "plot_acceptance_by_group",
                  ["position", "per_token_match_rate", "p_accept_len_gt", "n_blocks", by])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    groups = list(dict.fromkeys(by_group.sort_values(by)[by]))
    for j, g in enumerate(groups):
        d = by_group[by_group[by] == g].sort_values("position")
        i = d["position"].to_numpy(int) - 1
        color = plt.cm.viridis(j / max(1, len(groups) - 1) * 0.9)
        name = (labels or {}).get(g, f"{by} = {g:g}" if isinstance(g, (int, float, np.number)) else f"{by} = {g}")
        alpha = float(d["per_token_match_rate_pooled"].iloc[0]) if "per_token_match_rate_pooled" in d else \
            float(np.average(d["per_token_match_rate"].fillna(0)))
        nb = int(d["n_blocks"].max())
        a1.plot(i, d["per_token_match_rate"], "o-", color=color, label=f"{name}: alpha = {alpha:.3f} ({nb} verifications)")
        a2.plot(i, d["p_accept_len_gt"], "o-", color=color,
                label=f"{name}: mean accepted prefix {d['p_accept_len_gt'].fillna(0).sum():.2f}")
        a2.plot(i, alpha ** (i + 1.0), "--", color=color, lw=1)
    a1.set_xlabel("draft position i (0 = first draft)")
    a1.set_ylabel("per-token match rate at position i")
    a1.set_title("Per-token match rate (all positions)")
    a2.set_xlabel("i (drafts)")
    a2.set_ylabel("P(accepted length > i)")
    a2.set_title("Accepted prefix survival; dashed = i.i.d. alpha^(i+1)")
    for ax in (a1, a2):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    return _finish(fig, caption)


def plot_prefix_lengths(blocks: pd.DataFrame, alpha: float | None = None, caption: str | None = None):
    """Distribution of the accepted prefix length per verification (0..gamma).

    ``blocks``: one row per verification with ``gamma`` and ``accepted_len``
    (``TraceSet.acceptance_blocks()``). With ``alpha`` the i.i.d. geometric model's
    distribution, P(L = k) = alpha^k (1 - alpha) (k < gamma), is overlaid.
    """
    _require(blocks, "plot_prefix_lengths", "the verification table")
    _need_columns(blocks, "plot_prefix_lengths", ["gamma", "accepted_len"])
    gmax = int(blocks["gamma"].max())
    k = np.arange(gmax + 1)
    frac = blocks["accepted_len"].value_counts(normalize=True).reindex(k, fill_value=0.0).to_numpy()
    mean = float(blocks["accepted_len"].mean())
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    ax.bar(k, frac, color="#6baed6", label=f"measured ({len(blocks)} verifications)")
    if alpha is not None:
        model = np.zeros(gmax + 1)
        for g, n in blocks["gamma"].value_counts().items():
            pmf = alpha ** np.arange(g + 1) * (1 - alpha)
            pmf[g] = alpha**g
            model[: g + 1] += pmf * n / len(blocks)
        ax.plot(k, model, "ko--", ms=3, lw=1, label=f"i.i.d. geometric, alpha = {alpha:.3f}")
    ax.axvline(mean, color="#e6550d", lw=1.5, label=f"mean accepted prefix length = {mean:.2f} tokens")
    ax.set_xlabel("accepted prefix length per verification (tokens, up to the first mismatch)")
    ax.set_ylabel("fraction of verifications")
    ax.set_xticks(k if gmax <= 20 else k[:: max(1, gmax // 16)])
    ax.set_title(f"Accepted prefix length distribution (gamma up to {gmax})")
    ax.legend(fontsize=8)
    return _finish(fig, caption)


def plot_rate_comparison(rates: pd.DataFrame, caption: str | None = None):
    """Per-token match rate vs prefix acceptance, side by side, per group of verifications.

    ``rates``: rows with ``group``, ``per_token_match_rate``, ``mean_accepted_prefix_len``,
    ``mean_gamma`` and optionally ``iid_prefix_expected`` (:func:`egpt_sim.report.acceptance_rates`).
    Left: rates as fractions (per-token match rate vs accepted prefix / drafts). Right:
    tokens per verification: measured mean accepted prefix length, the i.i.d. prefix
    model, and drafts x per-token rate (the seeds' arithmetic, which ignores the prefix rule).
    """
    _require(rates, "plot_rate_comparison", "the acceptance rate table")
    _need_columns(rates, "plot_rate_comparison", ["group", "per_token_match_rate", "mean_accepted_prefix_len", "mean_gamma"])
    r = rates.reset_index(drop=True)
    x = np.arange(len(r))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    left = {"per-token match rate": r["per_token_match_rate"],
            "accepted prefix / drafts": r["mean_accepted_prefix_len"] / r["mean_gamma"]}
    right = {"mean accepted prefix length (measured)": r["mean_accepted_prefix_len"]}
    if "iid_prefix_expected" in r:
        right["i.i.d. prefix model: sum alpha^k"] = r["iid_prefix_expected"]
    right["drafts x per-token rate (seeds' arithmetic, wrong)"] = r["mean_gamma"] * r["per_token_match_rate"]
    for ax, series, colors in ((a1, left, ["#3182bd", "#31a354"]), (a2, right, ["#31a354", "#737373", "#de2d26"])):
        w = 0.8 / len(series)
        for j, (name, vals) in enumerate(series.items()):
            xx = x + (j - (len(series) - 1) / 2) * w
            bars = ax.bar(xx, vals, width=w * 0.92, label=name, color=colors[j])
            for b, v in zip(bars, vals):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom",
                        fontsize=7.5 if len(r) <= 3 else 6, rotation=0 if len(r) * len(series) <= 9 else 90)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{textwrap.fill(str(g), 14)}\n(gamma {m:.0f})" for g, m in zip(r["group"], r["mean_gamma"])],
                           fontsize=8 if len(r) <= 3 else 7)
        ax.legend(fontsize=7.5, loc="upper left")
    a1.set_ylim(0, 1.1)
    a1.set_ylabel("fraction")
    a1.set_title("Rates: per draft position vs accepted")
    top = max(float(np.nanmax(np.asarray(list(v), float))) for v in right.values())
    a2.set_ylim(0, top * (1.3 if len(r) * len(right) <= 9 else 1.45) + 0.1)
    a2.set_ylabel("tokens per verification")
    a2.set_title("Accepted tokens per verification")
    return _finish(fig, caption)


# --------------------------------------------------------------------------- speedups


def plot_speedup_heatmap(sweep: pd.DataFrame, strategy: str, n_gpus: int, caption: str | None = None,
                         value: str = SPEEDUP):
    """Heatmap of ``value`` over output length x per-token acceptance for one strategy/GPU count.

    The 1.0 contour (break-even vs target_only) is drawn in black.
    """
    sweep = with_speedup(sweep) if sweep is not None else sweep
    import seaborn as sns

    d = sweep[(sweep["strategy"] == strategy) & (sweep["n_gpus"] == n_gpus)]
    if d.empty:
        raise ValueError(f"plot_speedup_heatmap: no rows for strategy={strategy!r}, n_gpus={n_gpus}")
    grid = d.pivot_table(index="acceptance", columns="output_tokens", values=value).sort_index(ascending=False)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sns.heatmap(grid, ax=ax, cmap="RdBu", center=1.0, annot=grid.shape[0] * grid.shape[1] <= 120, fmt=".2f",
                cbar_kws={"label": "speedup vs target_only (ratio of mean latencies)"})
    if grid.values.min() < 1.0 < grid.values.max():
        ax.contour(np.arange(grid.shape[1]) + 0.5, np.arange(grid.shape[0]) + 0.5, grid.values, levels=[1.0],
                   colors="black", linewidths=1.2)
    ax.set_xlabel("output tokens")
    ax.set_ylabel("per-token match rate alpha (i.i.d. prefix model)")
    ax.set_title(f"{strategy}, {n_gpus} GPU{'s' if n_gpus > 1 else ''}")
    return _finish(fig, caption)


def _grid(d: pd.DataFrame, value: str) -> pd.DataFrame:
    return d.pivot_table(index="acceptance", columns="output_tokens", values=value).sort_index()


def plot_speedup_grid(sweep: pd.DataFrame, strategies=None, n_gpus=None, caption: str | None = None,
                      value: str = SPEEDUP):
    """Speedup heatmaps, one panel per (GPU count, strategy), one shared diverging scale.

    Rows: GPU counts; columns: strategies (``target_only`` is the baseline and left out).
    Blue = faster than target_only, red = slower; the black line is break-even (1.0).
    """
    sweep = with_speedup(sweep) if sweep is not None else sweep
    _require(sweep, "plot_speedup_grid", "the sweep")
    strategies = list(strategies or [s for s in dict.fromkeys(sweep["strategy"]) if s != "target_only"])
    n_gpus = list(n_gpus or sorted(sweep["n_gpus"].unique()))
    cells = {(g, s): sweep[(sweep["strategy"] == s) & (sweep["n_gpus"] == g)] for g in n_gpus for s in strategies}
    if not strategies or all(c.empty for c in cells.values()):
        raise ValueError("plot_speedup_grid: no sweep rows for the requested strategies/GPU counts")
    vals = sweep[sweep["strategy"].isin(strategies)][value]
    # symmetric log scale around 1, at most 0.5x..2x so differences near break-even stay visible
    full = max(abs(float(np.log2(vals.max()))), abs(float(np.log2(vals.min()))), 0.05)
    span = min(full, 1.0)
    norm = matplotlib.colors.LogNorm(vmin=2**-span, vmax=2**span, clip=False)
    fig, axes = plt.subplots(len(n_gpus), len(strategies), figsize=(3.3 * len(strategies) + 1.2, 3.0 * len(n_gpus) + 0.9),
                             squeeze=False, sharex=True, sharey=True)
    im = None
    for r, g in enumerate(n_gpus):
        for c, s in enumerate(strategies):
            ax = axes[r][c]
            d = cells[(g, s)]
            ax.set_title(f"{s}, {g} GPU{'s' if g > 1 else ''}", fontsize=9)
            if d.empty:
                ax.text(0.5, 0.5, "not simulated", ha="center", va="center", transform=ax.transAxes)
                continue
            grid = _grid(d, value)
            im = ax.imshow(grid.values, origin="lower", aspect="auto", cmap="RdBu", norm=norm)
            if grid.values.min() < 1.0 < grid.values.max():
                ax.contour(grid.values, levels=[1.0], colors="black", linewidths=1.3)
            if grid.shape[1] <= 8 and grid.shape[0] <= 12:
                for (yy, xx), v in np.ndenumerate(grid.values):
                    ax.text(xx, yy, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if abs(np.log2(v)) > 0.75 * span else "black")
            ax.set_xticks(range(grid.shape[1]))
            ax.set_xticklabels(grid.columns, fontsize=7, rotation=90 if grid.shape[1] > 6 else 0)
            step = max(1, grid.shape[0] // 6)
            ax.set_yticks(range(0, grid.shape[0], step))
            ax.set_yticklabels([f"{a:g}" for a in grid.index[::step]], fontsize=7)
            if r == len(n_gpus) - 1:
                ax.set_xlabel("output tokens", fontsize=8)
            if c == 0:
                ax.set_ylabel("per-token match rate alpha", fontsize=8)
    fig.suptitle("Simulated speedup vs target_only (ratio of mean latencies); black line = break-even")
    _finish(fig, caption)
    if im is not None:
        fig.subplots_adjust(right=0.88)
        cax = fig.add_axes((0.9, 0.25, 0.015, 0.6))
        cb = fig.colorbar(im, cax=cax, extend="both" if full > span else "neither")
        cb.set_label("speedup (log scale)", fontsize=8)
        cb.ax.minorticks_off()
        ticks = [t for t in (0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0) if 2**-span <= t <= 2**span]
        cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    return fig


def plot_best_strategy(best: pd.DataFrame, caption: str | None = None):
    """Best strategy per cell (lowest mean latency), one panel per GPU count.

    ``best``: ``sweep.best_strategy(df)`` (n_gpus, output_tokens, acceptance, strategy,
    speedup). Each cell is coloured by strategy and labelled with its speedup.
    """
    best = with_speedup(best) if best is not None else best
    _require(best, "plot_best_strategy", "the best-strategy table")
    _need_columns(best, "plot_best_strategy", ["n_gpus", "output_tokens", "acceptance", "strategy", SPEEDUP])
    gpus = sorted(best["n_gpus"].unique())
    strategies = [s for s in STRATEGY_COLORS if s in set(best["strategy"])] + \
        sorted(set(best["strategy"]) - set(STRATEGY_COLORS))
    code = {s: i for i, s in enumerate(strategies)}
    cmap = matplotlib.colors.ListedColormap([STRATEGY_COLORS.get(s, "#cccccc") for s in strategies])
    fig, axes = plt.subplots(1, len(gpus), figsize=(5.2 * len(gpus), 4.8), squeeze=False)
    for ax, g in zip(axes[0], gpus):
        d = best[best["n_gpus"] == g]
        strat = d.pivot_table(index="acceptance", columns="output_tokens", values="strategy", aggfunc="first").sort_index()
        sp = d.pivot_table(index="acceptance", columns="output_tokens", values=SPEEDUP).sort_index()
        codes = strat.apply(lambda col: col.map(code)).to_numpy(float)
        ax.imshow(codes, origin="lower", aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(strategies) - 0.5)
        if sp.size <= 80:
            for (yy, xx), v in np.ndenumerate(sp.to_numpy()):
                ax.text(xx, yy, f"{v:.3f}" if abs(v - 1.0) < 0.005 and v != 1.0 else f"{v:.2f}", ha="center", va="center",
                        fontsize=6.5)
        ax.set_xticks(range(strat.shape[1]))
        ax.set_xticklabels(strat.columns, fontsize=7)
        step = max(1, strat.shape[0] // 8)
        ax.set_yticks(range(0, strat.shape[0], step))
        ax.set_yticklabels([f"{a:g}" for a in strat.index[::step]], fontsize=7)
        ax.set_xlabel("output tokens")
        ax.set_ylabel("per-token match rate alpha (i.i.d.)")
        ax.set_title(f"{g} GPU{'s' if g > 1 else ''}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=STRATEGY_COLORS.get(s, "#cccccc")) for s in strategies]
    fig.suptitle("Best strategy per cell (lowest mean latency; number = its speedup vs target_only)")
    return _finish(fig, caption, legend=(handles, strategies, min(len(strategies), 5)))


def plot_strategy_speedups(summary: pd.DataFrame, caption: str | None = None, title: str = ""):
    """Simulated speedup vs target_only per strategy, bars grouped by GPU count.

    ``summary``: rows with ``strategy``, ``n_gpus``, ``speedup``
    (:func:`egpt_sim.report.strategy_table`).
    """
    summary = with_speedup(summary) if summary is not None else summary
    _require(summary, "plot_strategy_speedups", "the strategy table")
    _need_columns(summary, "plot_strategy_speedups", ["strategy", "n_gpus", SPEEDUP])
    strategies = list(dict.fromkeys(summary["strategy"]))
    gpus = sorted(summary["n_gpus"].unique())
    fig, ax = plt.subplots(figsize=(1.4 * len(strategies) + 3, 4.3))
    ax.axhline(1.0, color="black", lw=1, ls="--", zorder=0)
    w = 0.8 / len(gpus)
    for j, g in enumerate(gpus):
        d = summary[summary["n_gpus"] == g].set_index("strategy").reindex(strategies)
        x = np.arange(len(strategies)) + (j - (len(gpus) - 1) / 2) * w
        bars = ax.bar(x, d[SPEEDUP].fillna(0), width=w * 0.92, label=f"{g} GPU{'s' if g > 1 else ''}",
                      color=plt.cm.Blues(0.45 + 0.4 * j / max(1, len(gpus) - 1)))
        for b, v in zip(bars, d[SPEEDUP]):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}x", ha="center", va="bottom", fontsize=7,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_xticks(np.arange(len(strategies)))
    ax.set_xticklabels([s + "\n(drafter's own answer)" if s == "drafter_only" else s for s in strategies], fontsize=8)
    ax.set_ylabel("speedup vs target_only\n(ratio of mean latencies, same draws)")
    ax.set_ylim(0, float(summary[SPEEDUP].max()) * 1.18)
    ax.legend(fontsize=8)
    ax.set_title(title or "Simulated speedup per strategy")
    return _finish(fig, caption)


# --------------------------------------------------------------------------- planning


def plot_required_acceptance(table: pd.DataFrame, caption: str | None = None):
    """Minimum acceptance for a target speedup vs output length, one line per GPU count
    (and strategy). Unreachable cells (NaN: even perfect acceptance falls short) are
    marked with an x above the axis.

    ``table``: ``planning.required_acceptance_table(...)`` (output_tokens, n_gpus,
    strategy, level, kind, target_speedup).
    """
    _require(table, "plot_required_acceptance", "the required-acceptance table")
    _need_columns(table, "plot_required_acceptance", ["output_tokens", "n_gpus", "strategy", "level", "kind", "target_speedup"])
    kinds = set(table["kind"])
    curve = kinds == {"curve_scale"}
    top = float(np.nanmax(table["level"])) if table["level"].notna().any() else 1.0
    ymax = max(1.0, top) * 1.12
    fig, ax = plt.subplots(figsize=(8, 4.6))
    styles = ["-", "--", ":", "-."]
    for j, ((strategy, g), d) in enumerate(table.sort_values("output_tokens").groupby(["strategy", "n_gpus"], sort=False)):
        color = plt.cm.tab10(j % 10)
        ax.plot(d["output_tokens"], d["level"], marker="o", ls=styles[(g - 1) % 4], color=color,
                label=f"{strategy}, {g} GPU{'s' if g > 1 else ''}")
        miss = d[d["level"].isna()]
        if len(miss):
            ax.plot(miss["output_tokens"], [ymax * 0.97] * len(miss), "x", color=color, ms=9, mew=2)
            if "max_speedup" in miss:
                for x, m in zip(miss["output_tokens"], miss["max_speedup"]):
                    ax.annotate(f"max {m:.2f}x", (x, ymax * 0.97), textcoords="offset points", xytext=(6, -12 - 9 * j),
                                fontsize=6.5, color=color)
    if table["level"].isna().any():
        ax.text(0.01, 0.02, "x at the top = unreachable (even perfect acceptance falls short)", transform=ax.transAxes,
                fontsize=7.5, va="bottom")
    if not curve:
        ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_ylim(0, ymax)
    ax.set_xscale("log")
    ticks = sorted(table["output_tokens"].unique())
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("output tokens")
    ax.set_ylabel("minimum scale of the measured per-position curve" if curve
                  else "minimum per-token match rate alpha (i.i.d.)")
    speeds = ", ".join(f"{s:g}x" for s in sorted(table["target_speedup"].unique()))
    ax.set_title(f"Acceptance needed for a {speeds} speedup vs target_only")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    return _finish(fig, caption)


def plot_sensitivity(sweep: pd.DataFrame, factor: str, caption: str | None = None, value: str = SPEEDUP):
    """Speedup vs one what-if factor (e.g. ``drafter_speed``, ``contention_scale``).

    One line per strategy (colour) and GPU count (line style); dashed grey = break-even.
    """
    sweep = with_speedup(sweep) if sweep is not None else sweep
    _require(sweep, "plot_sensitivity", "the sensitivity sweep")
    _need_columns(sweep, "plot_sensitivity", [factor, "strategy", "n_gpus", value])
    d = sweep[sweep["strategy"] != "target_only"]
    _require(d, "plot_sensitivity", "the sweep without target_only")
    labels = {"drafter_speed": "drafter speed-up (every drafter stage time divided by this)",
              "contention_scale": "contention scale (excess slow-down x this; 0 = none, 1 = fitted)"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ["-", "--", ":", "-."]
    for (s, g), e in d.sort_values(factor).groupby(["strategy", "n_gpus"]):
        ax.plot(e[factor], e[value], marker="o", ms=4, ls=styles[(g - 1) % 4], color=STRATEGY_COLORS.get(s, "k"),
                label=f"{s}, {g} GPU{'s' if g > 1 else ''}")
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    xs = sorted(d[factor].unique())
    if factor == "drafter_speed" and min(xs) > 0:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(xs, labels=[f"{x:g}" for x in xs])
    ax.set_xlabel(labels.get(factor, factor))
    ax.set_ylabel("speedup vs target_only")
    acc = sorted(map(str, d["acceptance"].unique())) if "acceptance" in d else []
    nt = sorted(d["output_tokens"].unique()) if "output_tokens" in d else []
    ax.set_title(f"Sensitivity to {factor}" + (f" ({', '.join(map(str, nt))} tokens, acceptance {', '.join(acc)})" if acc else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, ncol=2)
    return _finish(fig, caption)


def plot_seed_scenarios(scenarios: pd.DataFrame, caption: str | None = None):
    """The seeds' adapter scenarios evaluated correctly (``planning.seed_scenarios``).

    Left: accepted tokens in the prefill window: the seeds' drafts x alpha vs the prefix
    expectation sum alpha^i vs simulated. Right: simulated speedup - 1 in % per
    strategy/GPU count (0 = as fast as target_only; every bar is labelled), legend below.
    """
    _require(scenarios, "plot_seed_scenarios", "the scenario table")
    scenarios = with_speedup(scenarios)
    _need_columns(scenarios, "plot_seed_scenarios", ["scenario", "strategy", "n_gpus", "seed_claim_accepted",
                                                     "prefix_expected_accepted", "sim_window_accepted_mean", SPEEDUP])
    names = list(dict.fromkeys(scenarios["scenario"]))
    x = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.2))
    first = scenarios.groupby("scenario", sort=False).agg(
        claim=("seed_claim_accepted", "first"), prefix=("prefix_expected_accepted", "first"),
        sim=("sim_window_accepted_mean", "mean")).reindex(names)
    for j, (col, lab, colr) in enumerate((("claim", "seeds: drafts x alpha (wrong)", "#de2d26"),
                                          ("prefix", "prefix rule: sum alpha^i", "#737373"),
                                          ("sim", "simulated window accepted (mean)", "#31a354"))):
        bars = a1.bar(x + (j - 1) * 0.27, first[col], width=0.25, label=lab, color=colr)
        for b, v in zip(bars, first[col]):
            a1.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    a1.set_xticks(x)
    a1.set_xticklabels(names, fontsize=8, rotation=10)
    a1.set_ylabel("accepted tokens from the window block")
    a1.set_ylim(0, float(first[["claim", "prefix", "sim"]].to_numpy().max()) * 1.12)
    a1.set_title("Accepted drafts: seeds' arithmetic vs prefix acceptance", fontsize=10)
    a1.legend(fontsize=7.5, loc="upper left")
    _seed_speedup_panel(a2, scenarios, names)
    handles, labels_ = a2.get_legend_handles_labels()
    strategies = list(dict.fromkeys(scenarios["strategy"]))
    combos = list(dict.fromkeys(zip(scenarios["strategy"], scenarios["n_gpus"])))
    order = sorted(range(len(combos)), key=lambda k: (strategies.index(combos[k][0]), combos[k][1]))
    # column-major legend: one column per strategy, one row per GPU count
    return _finish(fig, caption, legend=([handles[k] for k in order], [labels_[k] for k in order], len(strategies)))


def _seed_speedup_panel(ax, scenarios: pd.DataFrame, names: list[str]) -> None:
    """Bars of (speedup - 1) x 100 % per (strategy, GPU count), labelled, around a 0 line."""
    x = np.arange(len(names))
    combos = list(dict.fromkeys(zip(scenarios["strategy"], scenarios["n_gpus"])))
    w = 0.8 / len(combos)
    pct = (scenarios[SPEEDUP] - 1.0) * 100.0
    span = max(float(pct.abs().max()), 0.5)
    for j, (s, g) in enumerate(combos):
        d = scenarios[(scenarios["strategy"] == s) & (scenarios["n_gpus"] == g)].set_index("scenario").reindex(names)
        v = (d[SPEEDUP] - 1.0) * 100.0
        bars = ax.bar(x + (j - (len(combos) - 1) / 2) * w, v, width=w * 0.92, color=STRATEGY_COLORS.get(s, "k"),
                      alpha=0.55 if g == 1 else 1.0, hatch="//" if g == 1 else None, edgecolor="white",
                      label=f"{s}, {g} GPU{'s' if g > 1 else ''}")
        for b, val in zip(bars, v):
            if np.isfinite(val):
                ax.text(b.get_x() + b.get_width() / 2, val + (0.04 if val >= 0 else -0.04) * span, f"{val:+.1f}",
                        ha="center", va="bottom" if val >= 0 else "top", fontsize=6, rotation=90)
    ax.axhline(0.0, color="black", lw=1)
    ax.set_ylim(-span * 1.45, span * 1.45)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8, rotation=10)
    ax.set_ylabel("simulated speedup - 1 vs target_only (%)\n(> 0: faster, < 0: slower)")
    ax.set_title("Simulated speedup - 1, % (hatched = 1 GPU, with contention)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


# --------------------------------------------------------------------------- validation


def plot_activity_residuals(residuals: pd.DataFrame, caption: str | None = None):
    """Which activity the simulator mispredicts: (simulated / executor median duration - 1) in %
    per strategy x actor x activity, labelled with the executor's median (ms) and the error in
    activities per request (simulated - executor)."""
    r = residuals.dropna(subset=["error_pct"]).sort_values(["strategy", "actor", "activity"])
    labels = [f"{s} · {a} · {act}" for s, a, act in zip(r["strategy"], r["actor"], r["activity"])]
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(r) + 1.5))
    y = np.arange(len(r))
    colors = ["#c0392b" if abs(e) > 10 else "#e67e22" if abs(e) > 5 else "#2e86c1" for e in r["error_pct"]]
    ax.barh(y, r["error_pct"], color=colors)
    for yi, (e, m, c) in enumerate(zip(r["error_pct"], r["measured_median_ms"], r["count_error"])):
        ax.text(max(e, 0.0), yi, f" {m:.1f} ms" + (f", {c:+.1f}/req" if abs(c) >= 0.05 else ""), va="center",
                ha="left", fontsize=7)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(yticks=y, yticklabels=labels, xlabel="simulated vs executor median duration, %")
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    ax.set_title("Per-activity residuals (executor timeline vs simulated timeline)", fontsize=10)
    _caption(fig, caption)
    fig.tight_layout()
    return fig


def plot_validation(cells: pd.DataFrame, caption: str | None = None, title: str | None = None):
    """Measured vs predicted median latency per validation cell, with y = x and +-10 %.

    ``cells``: ``validation.compare(...)[0]`` (strategy, measured_median_ms,
    predicted_median_ms, error_pct, optional n_gpus / tost_equivalent).
    """
    _require(cells, "plot_validation", "the validation cells")
    _need_columns(cells, "plot_validation", ["strategy", "measured_median_ms", "predicted_median_ms"])
    fig, ax = plt.subplots(figsize=(7, 6.4))
    lo = float(min(cells["measured_median_ms"].min(), cells["predicted_median_ms"].min())) * 0.9
    hi = float(max(cells["measured_median_ms"].max(), cells["predicted_median_ms"].max())) * 1.1
    xx = np.array([lo, hi])
    ax.fill_between(xx, xx * 0.9, xx * 1.1, color="#dddddd", label="+-10 %")
    ax.plot(xx, xx, "k-", lw=1, label="predicted = measured")
    markers = {1: "o", 2: "s", 4: "^", 8: "D"}
    calib = cells["calibration"].astype(bool) if "calibration" in cells else pd.Series(False, index=cells.index)
    for (s, g), d in cells.assign(n_gpus=cells.get("n_gpus", 1)).groupby(["strategy", "n_gpus"]):
        cal = calib.loc[d.index]
        label = f"{s}, {g} GPU{'s' if g > 1 else ''}"
        if cal.any():
            ax.scatter(d.loc[cal, "measured_median_ms"], d.loc[cal, "predicted_median_ms"], facecolor="none",
                       edgecolor=STRATEGY_COLORS.get(s, "k"), marker=markers.get(int(g), "o"), s=36, linewidth=1.2,
                       label=label + " (calibration cells, not scored)")
        if (~cal).any():
            ax.scatter(d.loc[~cal, "measured_median_ms"], d.loc[~cal, "predicted_median_ms"], color=STRATEGY_COLORS.get(s, "k"),
                       marker=markers.get(int(g), "o"), s=36, edgecolor="black", linewidth=0.4, label=label)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    if hi / lo > 8:
        ax.set_xscale("log")
        ax.set_yscale("log")
        fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(fmt)
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ticks = [t for t in (100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000, 20000, 50000) if lo <= t <= hi]
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    ax.set_xlabel("measured median latency (ms), real executor")
    ax.set_ylabel("predicted median latency (ms), simulator")
    head = title or "Simulator vs measured"
    if "error_pct" in cells:
        scored = cells[~calib]
        head += f"\nmedian |error| {scored['error_pct'].abs().median():.1f} % over {len(scored)} scored cells"
        if "n_measured" in cells:
            head += f" ({int(cells['n_measured'].sum())} measured requests in all)"
    ax.set_title(head, fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3)
    return _finish(fig, caption)


def plot_serving_latency(df: pd.DataFrame, caption: str | None = None, metric: str = "latency_p90_ms",
                         title: str | None = None):
    """Serving latency vs offered load (``report.serving_latency_vs_load``), captioned.

    ``split[1d]`` = one GPU for the drafter(s), the rest for target replicas; ``colocated``
    = drafter + target pairs sharing each GPU; ``target_only`` = one target replica per GPU.
    """
    _require(df, "plot_serving_latency", "the serving sweep")
    from .serving_plots import plot_latency_vs_load

    names = {"latency_p90_ms": "p90 latency", "latency_p50_ms": "median latency", "latency_mean_ms": "mean latency"}
    title = title or f"Serving: {names.get(metric, metric)} vs offered load (one shared FIFO queue)"
    fig = plot_latency_vs_load(df, metric=metric, title=title)
    fig.axes[0].set_ylabel(f"{names.get(metric, metric)} per request (s, log scale)")
    fig.axes[0].title.set_fontsize(10)
    return add_caption(fig, caption)


# --------------------------------------------------------------------------- what-if shapes


def plot_shape_curves(sweep: pd.DataFrame, caption: str | None = None):
    """Window length (ms), drafts hidden in it and speed-up vs target frames
    (:func:`egpt_sim.whatif.shape_sweep`): one column per GPU count, one colour per drafter
    size, one line style per strategy; hollow markers = stage times from the cost model."""
    _require(sweep, "plot_shape_curves", "the shape sweep")
    _need_columns(sweep, "plot_shape_curves", ["target_frames", "drafter_params_b", "n_gpus", "strategy", "window_ms",
                                               "window_drafts", SPEEDUP, "time_source"])
    d = sweep[sweep["strategy"] != "target_only"]
    _require(d, "plot_shape_curves", "the sweep without target_only")
    gpus, sizes = sorted(d["n_gpus"].unique()), sorted(d["drafter_params_b"].unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    rows = [("window_ms", "window: target prefill end - drafter prefill end, ms"),
            ("window_drafts", "drafts hidden in the window"), (SPEEDUP, "speedup vs target_only")]
    fig, axes = plt.subplots(3, len(gpus), figsize=(5 * len(gpus), 9), squeeze=False, sharex=True)
    styles = dict(zip(sorted(d["strategy"].unique()), ["-", "--", ":", "-."]))
    for j, g in enumerate(gpus):
        for (s, p), e in d[d["n_gpus"] == g].sort_values("target_frames").groupby(["strategy", "drafter_params_b"]):
            c = colors[sizes.index(p)]
            for i, (col, _) in enumerate(rows):
                ax = axes[i, j]
                ax.plot(e["target_frames"], e[col], ls=styles[s], color=c, lw=1.3,
                        label=f"{p:g}B drafter, {s}" if i == 0 else None)
                model = e["time_source"] == "model"
                ax.scatter(e["target_frames"][model], e[col][model], facecolors="none", edgecolors=[c], s=22)
                ax.scatter(e["target_frames"][~model], e[col][~model], color=[c], s=22)
        for i, (col, label) in enumerate(rows):
            ax = axes[i, j]
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(d["target_frames"].unique()), labels=[str(x) for x in sorted(d["target_frames"].unique())])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            ax.set_ylabel(label, fontsize=8)
            if col == SPEEDUP:
                ax.axhline(1.0, color="grey", ls="--", lw=1)
                ax.set_xlabel("target frames")
        axes[0, j].set_title(f"{g} GPU{'s' if g > 1 else ''}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    return _finish(fig, caption, legend=(handles, labels, min(4, len(labels))))


def plot_pays_map(pays: pd.DataFrame, caption: str | None = None):
    """Where parallel prefill pays (:func:`egpt_sim.whatif.pays_table`): best speculative
    speed-up over target frames x drafter size, one panel per GPU count; cells > 1 are
    outlined and labelled with the winning strategy."""
    _require(pays, "plot_pays_map", "the pays table")
    _need_columns(pays, "plot_pays_map", ["n_gpus", "target_frames", "drafter_params_b", "strategy", SPEEDUP])
    gpus = sorted(pays["n_gpus"].unique())
    fig, axes = plt.subplots(1, len(gpus), figsize=(5.5 * len(gpus), 4.6), squeeze=False)
    lo, hi = float(pays[SPEEDUP].min()), float(pays[SPEEDUP].max())
    span = max(abs(1 - lo), abs(hi - 1), 1e-3)
    short = {"prefill_then_verify": "ptv", "parallel_sd": "psd", "adaptive_budget": "ab", "serial_sd": "ssd"}
    for ax, g in zip(axes[0], gpus):
        grid = pays[pays["n_gpus"] == g].pivot_table(index="drafter_params_b", columns="target_frames", values=SPEEDUP)
        strat = pays[pays["n_gpus"] == g].pivot_table(index="drafter_params_b", columns="target_frames",
                                                      values="strategy", aggfunc="first")
        im = ax.imshow(grid.values, cmap="RdBu", vmin=1 - span, vmax=1 + span, origin="lower", aspect="auto")
        for (i, k), v in np.ndenumerate(grid.values):
            ax.text(k, i, f"{v:.2f}\n{short.get(strat.values[i, k], strat.values[i, k])}", ha="center", va="center",
                    fontsize=7, fontweight="bold" if v > 1 else "normal")
            if v > 1:
                ax.add_patch(plt.Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
        ax.set_xticks(range(grid.shape[1]), labels=[str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), labels=[f"{r:g}" for r in grid.index])
        ax.set_xlabel("target frames")
        ax.set_ylabel("drafter size, billions of parameters")
        ax.set_title(f"{g} GPU{'s' if g > 1 else ''}: best speedup (outlined: > 1, pays)", fontsize=9)
        fig.colorbar(im, ax=ax, label="speedup vs target_only")
    return _finish(fig, caption)


def plot_cost_laws(cost_model, role: str = "target", stages=("preprocess", "vision_encode", "prefill", "decode_step"),
                   caption: str | None = None):
    """A cost model's laws (:mod:`egpt_sim.costmodel`) against the per-shape medians they
    were fitted on, one panel per stage; the dashed part of a curve is extrapolation."""
    from .costmodel import _shape_medians

    data = cost_model.data.get(role)
    if data is None or not len(data):
        raise ValueError(f"plot_cost_laws: the cost model has no {role!r} samples (refusing to draw an empty figure)")
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        law = cost_model.law(role, stage)
        xm, ym, rx, ry = _shape_medians(data, stage)
        ax.scatter(rx, ry, s=8, color="#bdbdbd", label="measured rows")
        ax.scatter(xm, ym, s=28, color=ACTIVITY_COLORS.get(stage, "k"), zorder=3, label="per-shape median")
        lo, hi = float(np.min(xm)), float(np.max(xm))
        inside = np.geomspace(lo, hi, 100)
        ax.plot(inside, law(inside), color="black", lw=1.2, label=f"law ({law.source})")
        for a, b in ((lo / 2, lo), (hi, hi * 2)):
            xs = np.geomspace(a, b, 30)
            ax.plot(xs, law(xs), color="black", lw=1.0, ls="--")
        ax.set_xscale("log")
        ax.set_title(f"{STAGE_LABELS.get(stage, stage)}\n{law.describe()}", fontsize=8)
        ax.set_xlabel(law.x.replace("_", " "))
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    return _finish(fig, caption, legend=(handles, labels, 3))
