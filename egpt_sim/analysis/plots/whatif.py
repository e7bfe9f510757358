"""What-if shapes: window and speed-up vs frames, where SD pays, cost-model laws."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..labels import SPEEDUP
from .base import ACTIVITY_COLORS, STAGE_LABELS, _finish, _need_columns, _require


def plot_shape_curves(sweep: pd.DataFrame, caption: str | None = None):
    """Window length (ms), drafts hidden in it and speed-up vs target frames
    (:func:`egpt_sim.analysis.shapes.shape_sweep`): one column per GPU count, one colour per drafter
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
    """Where parallel prefill pays (:func:`egpt_sim.analysis.shapes.pays_table`): best speculative
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
    """A cost model's laws (:mod:`egpt_sim.whatif.costmodel`) against the per-shape medians they
    were fitted on, one panel per stage; the dashed part of a curve is extrapolation."""
    from ...whatif.costmodel import _shape_medians

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
