"""Names and labels shared by the CLI, reports, plots and notebooks (no simulator imports).

* ``SPEEDUP`` (``"speedup"``) is the one name of the speed-up column in every table:
  mean ``target_only`` latency / mean latency on the same draws (a ratio, no unit).
  Older sweep files called it ``speedup_of_means``; :func:`with_speedup` renames it.
* :func:`parse_acceptance` reads ``--acceptance`` values; :func:`default_acceptance` and
  :func:`describe_acceptance` give one default and one wording for every caption.
"""

from __future__ import annotations

import math
from typing import Any

SPEEDUP = "speedup"
LEGACY_COLUMNS = {"speedup_of_means": SPEEDUP}
# alpha used when acceptance is left to its default and the trace set records none:
# no draft is ever accepted (a lower bound on what speculation can give)
NO_TRACE_ALPHA = 0.0
ACCEPTANCE_HELP = ("'auto' (replay when the trace set records acceptance, else alpha = 0), 'trace' (replay), "
                   "a per-token match rate alpha in [0, 1] (e.g. 0.6), or comma-separated per-position "
                   "conditional rates (e.g. 0.9,0.7,0.5)")


def with_speedup(df):
    """``df`` with legacy column names (``speedup_of_means``) renamed to ``speedup``."""
    legacy = {old: new for old, new in LEGACY_COLUMNS.items() if old in df.columns and new not in df.columns}
    extra = [old for old in LEGACY_COLUMNS if old in df.columns and old not in legacy]
    return df.rename(columns=legacy).drop(columns=extra)


def summary_row(summary: dict) -> dict:
    """A result summary with the speed-up under ``speedup`` (ratio of mean latencies)."""
    out = dict(summary)
    for old, new in LEGACY_COLUMNS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def parse_acceptance(text: str) -> Any:
    """``--acceptance`` text -> 'auto' | 'trace' | alpha (float) | tuple of rates.

    Raises ValueError with a one-line message saying what is accepted.
    """
    v = str(text).strip()
    if v in ("auto", "trace"):
        return v
    try:
        rates = [float(x) for x in v.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not one of: {ACCEPTANCE_HELP}") from None
    bad = [r for r in rates if math.isnan(r) or not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(f"{text!r}: rates must lie in [0, 1] (got {bad[0]:g})")
    return rates[0] if len(rates) == 1 else tuple(rates)


def default_acceptance(ts) -> Any:
    """'trace' when the trace set records acceptance, else ``NO_TRACE_ALPHA`` (alpha = 0)."""
    return "trace" if ts.acceptance is not None else NO_TRACE_ALPHA


def resolve_acceptance(value: Any, ts) -> tuple[Any, bool]:
    """(acceptance, defaulted): ``None``/'auto' become :func:`default_acceptance`."""
    if value is None or value == "auto":
        return default_acceptance(ts), True
    return value, False


def describe_acceptance(acceptance: Any, ts=None, defaulted: bool = False) -> str:
    """One phrase naming the acceptance of a scenario, for headers and captions."""
    if isinstance(acceptance, str) and acceptance == "trace":
        runs = ts.acceptance_runs() if ts is not None else []
        if len(runs) == 1:
            return f"replay of the recorded verifications (acceptance run {runs[0]})"
        if len(runs) > 1:
            return f"replay of the recorded verifications, {len(runs)} acceptance runs POOLED ({', '.join(runs)})"
        return "replay of the recorded verifications"
    if isinstance(acceptance, tuple):
        return "per-position conditional rates " + ", ".join(f"{a:g}" for a in acceptance) + " (assumed)"
    if hasattr(acceptance, "name"):
        return str(acceptance.name)
    a = float(acceptance)
    if defaulted and a == NO_TRACE_ALPHA:
        where = f"trace set {ts.label}" if ts is not None else "the trace set"
        return (f"alpha = {a:g} (no acceptance recorded in {where}: no draft is accepted, a lower bound; "
                "the default when no acceptance is given)")
    return f"i.i.d. per-token match rate alpha = {a:g} (assumed, not measured)"
