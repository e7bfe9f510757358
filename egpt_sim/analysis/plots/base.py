"""What every figure shares: colours, labels, captions, ``save``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


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
    """Caption a figure drawn elsewhere (e.g. :mod:`egpt_sim.serving.plots`) like ours."""
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
