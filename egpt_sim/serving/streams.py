"""Request streams for the serving model: arrival processes and output-length distributions.

Covers: *when* requests arrive (Poisson, fixed interval, a replayed arrival trace) and
*how long* each answer is (fixed, uniform range, empirical list or CSV).

Assumptions:

* Every stream draws from its own ``numpy.random.SeedSequence([seed, STREAM_TAG, k])``
  generator, disjoint from the per-request :class:`~egpt_sim.sim.draws.DrawBank` streams
  (``SeedSequence([seed, i])``), so changing the arrival process never changes a
  request's stage times (common random numbers across loads and policies).
* Poisson arrivals are ``cumsum(E_i) / rate`` with a fixed stream of unit exponentials
  ``E_i``: at another rate the *same* arrival pattern is stretched in time, which makes
  latency-vs-load curves and the SLO binary search smooth (monotone draw by draw).
* A replayed trace is shifted so its first arrival is at 0 ms. With ``rate_rps`` given,
  it is also stretched so that its mean rate ``(n - 1) / span`` equals ``rate_rps``
  (the usual way DistServe/Vidur scale a trace to another load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..traces.schema import TraceError

STREAM_TAG = 0x5E12_71CE  # second SeedSequence word of the serving streams
ARRIVAL_STREAM, LENGTH_STREAM, SERVICE_STREAM = 1, 2, 3
ARRIVAL_KINDS = ("poisson", "fixed", "trace")
TRACE_COLUMNS = {"timestamp_s": 1000.0, "arrival_ms": 1.0}  # column -> factor to ms


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one serving stream (arrivals, lengths, exponential service)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_TAG, int(stream)]))


# --------------------------------------------------------------------------- arrivals


def load_arrival_trace(path: str | Path) -> np.ndarray:
    """Arrival times (ms, first = 0) from a CSV with ``timestamp_s`` or ``arrival_ms``.

    Raises :class:`TraceError` with a one-line message naming the file and column.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: arrival trace file does not exist")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for unreadable CSVs
        raise TraceError(f"{path}: cannot read arrival trace as CSV ({type(exc).__name__}: {exc})") from None
    col = next((c for c in TRACE_COLUMNS if c in df.columns), None)
    if col is None:
        raise TraceError(f"{path}: arrival trace needs a 'timestamp_s' or 'arrival_ms' column "
                         f"(found {list(df.columns)})")
    if len(df) == 0:
        raise TraceError(f"{path}: column {col!r} has no rows")
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(vals).all():
        raise TraceError(f"{path}: column {col!r} has {int((~np.isfinite(vals)).sum())} "
                         "missing or non-numeric values")
    back = np.flatnonzero(np.diff(vals) < 0)
    if back.size:
        raise TraceError(f"{path}: column {col!r} is not sorted (row {int(back[0]) + 1} goes back in time)")
    ms = vals * TRACE_COLUMNS[col]
    return ms - ms[0]


def arrival_times_ms(kind: str, n: int, rate_rps: float | None, seed: int,
                     trace_path: str | Path | None = None) -> np.ndarray:
    """The ``n`` arrival times (ms, non-decreasing) of one request stream.

    * ``poisson`` — exponential gaps of mean ``1000 / rate_rps`` (first arrival after one gap);
    * ``fixed`` — one request every ``1000 / rate_rps`` ms, the first at 0;
    * ``trace`` — the first ``n`` rows of ``trace_path`` (see :func:`load_arrival_trace`),
      rescaled to ``rate_rps`` if it is not None.
    """
    if kind == "poisson":
        gaps = stream_rng(seed, ARRIVAL_STREAM).standard_exponential(n)
        return np.cumsum(gaps) * (1000.0 / rate_rps)
    if kind == "fixed":
        return np.arange(n, dtype=float) * (1000.0 / rate_rps)
    if kind == "trace":
        ms = load_arrival_trace(trace_path)
        if n > len(ms):
            raise TraceError(f"{trace_path}: arrival trace has {len(ms)} rows, fewer than n_requests={n}")
        ms = ms[:n]
        if rate_rps is not None and n > 1 and ms[-1] > 0:
            ms = ms * (((n - 1) / ms[-1] * 1000.0) / rate_rps)
        return ms
    raise ValueError(f"unknown arrival kind {kind!r}; choose from {list(ARRIVAL_KINDS)}")


# --------------------------------------------------------------------------- output lengths


@dataclass(frozen=True)
class FixedLength:
    """Every answer has ``tokens`` tokens."""

    tokens: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, int(self.tokens), dtype=np.int64)

    @property
    def max_tokens(self) -> int:
        return int(self.tokens)

    @property
    def mean_tokens(self) -> float:
        return float(self.tokens)


@dataclass(frozen=True)
class UniformLength:
    """Answer length uniform on the integers ``low..high`` (both included)."""

    low: int
    high: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(int(self.low), int(self.high) + 1, size=n, dtype=np.int64)

    @property
    def max_tokens(self) -> int:
        return int(self.high)

    @property
    def mean_tokens(self) -> float:
        return (self.low + self.high) / 2.0


@dataclass(frozen=True)
class EmpiricalLength:
    """Answer length resampled (with replacement, uniformly) from recorded ``values``."""

    values: tuple[int, ...]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.values, dtype=np.int64)[rng.integers(len(self.values), size=n)]

    @property
    def max_tokens(self) -> int:
        return int(max(self.values))

    @property
    def mean_tokens(self) -> float:
        return float(np.mean(self.values))

    @classmethod
    def from_csv(cls, path: str | Path, column: str = "output_tokens") -> "EmpiricalLength":
        """Read lengths from ``column`` of a CSV; one-line :class:`TraceError` if unusable."""
        path = Path(path)
        if not path.is_file():
            raise TraceError(f"{path}: output-length file does not exist")
        df = pd.read_csv(path)
        if column not in df.columns:
            raise TraceError(f"{path}: output-length CSV needs a {column!r} column (found {list(df.columns)})")
        vals = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
        if len(vals) == 0 or not np.isfinite(vals).all() or (vals < 1).any() or (vals != np.round(vals)).any():
            raise TraceError(f"{path}: column {column!r} must hold integers >= 1 (and at least one row)")
        return cls(tuple(int(v) for v in vals))


LengthDist = FixedLength | UniformLength | EmpiricalLength


def make_length_dist(spec) -> LengthDist:
    """Build an output-length distribution from a config value.

    ``50`` -> fixed; ``("uniform", 20, 80)``; ``("empirical", (12, 50, 97))`` or a plain
    list/tuple of ints -> empirical; ``"lengths.csv"`` or ``("csv", path[, column])`` ->
    empirical from a CSV; a distribution object is returned unchanged.
    """
    if isinstance(spec, (FixedLength, UniformLength, EmpiricalLength)):
        dist = spec
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        dist = FixedLength(int(spec))
    elif isinstance(spec, (str, Path)):
        dist = EmpiricalLength.from_csv(spec)
    elif isinstance(spec, Sequence) and spec and spec[0] == "uniform" and len(spec) == 3:
        dist = UniformLength(int(spec[1]), int(spec[2]))
    elif isinstance(spec, Sequence) and spec and spec[0] == "empirical" and len(spec) == 2:
        dist = EmpiricalLength(tuple(int(v) for v in spec[1]))
    elif isinstance(spec, Sequence) and spec and spec[0] == "csv" and len(spec) in (2, 3):
        dist = EmpiricalLength.from_csv(*spec[1:])
    elif isinstance(spec, Sequence) and spec and all(isinstance(v, (int, np.integer)) for v in spec):
        dist = EmpiricalLength(tuple(int(v) for v in spec))
    else:
        raise ValueError(f"output_len: cannot build a length distribution from {spec!r}; use an int, "
                         "('uniform', lo, hi), ('empirical', values), a list of ints or a CSV path")
    low = dist.low if isinstance(dist, UniformLength) else (
        dist.tokens if isinstance(dist, FixedLength) else min(dist.values, default=0))
    if low < 1 or (isinstance(dist, UniformLength) and dist.high < dist.low):
        raise ValueError(f"output_len: lengths must be >= 1 tokens (and low <= high); got {dist!r}")
    return dist


def output_lengths(spec, n: int, seed: int) -> np.ndarray:
    """The ``n`` answer lengths (tokens) of one request stream."""
    return make_length_dist(spec).sample(n, stream_rng(seed, LENGTH_STREAM))
