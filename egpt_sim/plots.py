"""Figures drawn from simulator/trace frames. Every function returns a Figure and
never shows it; ``caption`` (provenance) is written under the axes.

Plot helpers live here (tested), not in notebooks.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ACTIVITY_COLORS = {
    "load": "#c7c7c7", "preprocess": "#9e9e9e", "vision_encode": "#8c6bb1", "prefill": "#2b8cbe",
    "draft_step": "#fdae6b", "decode_step": "#41ab5d", "verify": "#e6550d",
}


def _caption(fig, caption: str | None):
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=7, color="#555555", ha="left", va="bottom")


def plot_gantt(timeline: pd.DataFrame, title: str = "", caption: str | None = None, by: str = "strategy"):
    """Gantt chart: one row per (``by`` value, actor), bars coloured by activity.

    ``timeline`` has the TIMELINE columns plus an optional ``by`` column (e.g. the
    strategy), so one figure can compare strategies for the same request draws.
    """
    if timeline is None or len(timeline) == 0:
        raise ValueError("plot_gantt: the timeline has no events")
    tl = timeline.copy()
    if by not in tl.columns:
        tl[by] = ""
    groups = list(dict.fromkeys(tl[by]))
    lanes = [(g, a) for g in groups for a in ("drafter", "target") if ((tl[by] == g) & (tl["actor"] == a)).any()]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(lanes) + 1.6))
    for y, (g, actor) in enumerate(lanes):
        ev = tl[(tl[by] == g) & (tl["actor"] == actor)]
        for act, sub in ev.groupby("activity"):
            ax.broken_barh(list(zip(sub["start_ms"], sub["end_ms"] - sub["start_ms"])), (y - 0.38, 0.76),
                           facecolors=ACTIVITY_COLORS.get(act, "#777777"), edgecolors="white", linewidth=0.3)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([f"{g}  {a}" if g else a for g, a in lanes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since request start (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for a, c in ACTIVITY_COLORS.items() if a in set(tl["activity"])]
    labels = [a for a in ACTIVITY_COLORS if a in set(tl["activity"])]
    ax.legend(handles, labels, ncol=len(labels), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.set_title(title or "Timeline of one request")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _caption(fig, caption)
    return fig


def plot_speedup_heatmap(sweep: pd.DataFrame, strategy: str, n_gpus: int, caption: str | None = None,
                         value: str = "speedup_of_means"):
    """Heatmap of ``value`` over output length x per-token acceptance for one strategy/GPU count.

    The 1.0 contour (break-even vs target_only) is drawn in black.
    """
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
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _caption(fig, caption)
    return fig
