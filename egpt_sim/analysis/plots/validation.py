"""Validation: simulator vs the real executor."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .base import STRATEGY_COLORS, _caption, _finish, _need_columns, _require


def plot_activity_residuals(residuals: pd.DataFrame, caption: str | None = None):
    """Which activity the simulator mispredicts: (simulated / executor median duration - 1) in %
    per strategy x actor x activity, labelled with the executor's median (ms) and the error in
    activities per request (simulated - executor) and, where known, in ms per request: what the
    activity adds to a request's latency (``loop_gap``: host time between two passes)."""
    r = residuals.replace([np.inf, -np.inf], np.nan).dropna(subset=["error_pct"])
    r = r.sort_values(["strategy", "actor", "activity"])
    delta = r["delta_ms_per_request"] if "delta_ms_per_request" in r else pd.Series(np.nan, index=r.index)
    labels = [f"{s} · {a} · {act}" for s, a, act in zip(r["strategy"], r["actor"], r["activity"])]
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(r) + 1.5))
    y = np.arange(len(r))
    colors = ["#c0392b" if abs(e) > 10 else "#e67e22" if abs(e) > 5 else "#2e86c1" for e in r["error_pct"]]
    ax.barh(y, r["error_pct"], color=colors)
    for yi, (e, m, c, d) in enumerate(zip(r["error_pct"], r["measured_median_ms"], r["count_error"], delta)):
        text = f" {m:.1f} ms" + (f", {c:+.1f}/req" if abs(c) >= 0.05 else "")
        text += f", {d:+.0f} ms/req" if np.isfinite(d) and abs(d) >= 0.5 else ""
        ax.text(max(e, 0.0), yi, text, va="center", ha="left", fontsize=7)
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
