"""Acceptance: per-position curves, per-group curves, accepted prefix lengths, per-token vs prefix rates."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .base import _finish, _need_columns, _require


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

    ``by_group``: :func:`egpt_sim.analysis.tables.acceptance_by_group` (position, per_token_match_rate,
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
    ``mean_gamma`` and optionally ``iid_prefix_expected`` (:func:`egpt_sim.analysis.tables.acceptance_rates`).
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
