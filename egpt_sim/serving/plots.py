"""Figures of serving sweeps. Each helper returns a ``matplotlib.figure.Figure`` (built
without pyplot, so nothing is displayed and no GUI backend is needed)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def plot_latency_vs_load(df: pd.DataFrame, metric: str = "latency_p90_ms", x: str = "rate_rps",
                         slo_ms: float | None = None, title: str | None = None) -> Figure:
    """``metric`` vs offered load: one line per (variant, n_gpus) of a
    :func:`~egpt_sim.serving.sweep.latency_vs_load` frame; an SLO as a dashed line (not
    counted among the data lines)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for (variant, n), g in df.sort_values(x).groupby(["variant", "n_gpus"], sort=True):
        ax.plot(g[x], g[metric] / 1000.0, marker="o", ms=3, label=f"{variant}, {n} GPU{'s' * (n > 1)}")
    if slo_ms is not None:
        ax.axhline(slo_ms / 1000.0, color="0.4", ls="--", lw=1, label=f"SLO {slo_ms / 1000:g} s")
    ax.set_xlabel("offered load (requests/s)" if x == "rate_rps" else x)
    ax.set_ylabel(f"{metric.replace('_ms', '')} (s)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or f"{metric} vs offered load")
    fig.tight_layout()
    return fig


def plot_max_rate(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Max rate meeting the SLO vs number of GPUs: one line per variant of a
    :func:`~egpt_sim.serving.sweep.max_rate_under_slo` frame."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for variant, g in df.sort_values("n_gpus").groupby("variant", sort=True):
        ax.plot(g["n_gpus"], g["max_rate_rps"], marker="o", ms=4, label=variant)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("max rate meeting the SLO (requests/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title is None and len(df):
        r = df.iloc[0]
        title = f"max rate with p{r['percentile']:g} {r['metric'].replace('_ms', '')} <= {r['slo_ms'] / 1000:g} s"
    ax.set_title(title or "max rate under SLO")
    fig.tight_layout()
    return fig
