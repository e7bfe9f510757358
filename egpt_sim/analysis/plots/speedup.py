"""Simulated speed-ups: heatmaps, grids, best strategy, strategies side by side, acceptance
needed, sensitivity, the seeds' scenarios, serving latency."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..labels import SPEEDUP, with_speedup
from .base import STRATEGY_COLORS, _finish, _need_columns, _require, add_caption


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
    (:func:`egpt_sim.analysis.tables.strategy_table`).
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


def plot_serving_latency(df: pd.DataFrame, caption: str | None = None, metric: str = "latency_p90_ms",
                         title: str | None = None):
    """Serving latency vs offered load (``report.serving_latency_vs_load``), captioned.

    ``split[1d]`` = one GPU for the drafter(s), the rest for target replicas; ``colocated``
    = drafter + target pairs sharing each GPU; ``target_only`` = one target replica per GPU.
    """
    _require(df, "plot_serving_latency", "the serving sweep")
    from ...serving.plots import plot_latency_vs_load

    names = {"latency_p90_ms": "p90 latency", "latency_p50_ms": "median latency", "latency_mean_ms": "mean latency"}
    title = title or f"Serving: {names.get(metric, metric)} vs offered load (one shared FIFO queue)"
    fig = plot_latency_vs_load(df, metric=metric, title=title)
    fig.axes[0].set_ylabel(f"{names.get(metric, metric)} per request (s, log scale)")
    fig.axes[0].title.set_fontsize(10)
    return add_caption(fig, caption)
