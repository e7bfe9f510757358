"""egpt_sim: replay measured traces through a SimPy model of parallel-prefill speculative decoding.

Torch-free by design: this package only reads trace files written by ``measure``.
"""

from .acceptance import (
    CurveAcceptance,
    IidAcceptance,
    TraceAcceptance,
    acceptance_by_position,
    acceptance_summary,
    expected_accepted_iid,
    expected_tokens_per_verify,
)
from .config import STRATEGY_NAMES, SimConfig, factorial
from .runner import SimResult, simulate, summarize
from .schema import SCHEMA_VERSION, TraceError
from .traces import ContentionModel, TraceSet, bundled_trace_sets, resolve_trace_set

__version__ = "0.1.0"

__all__ = [
    "CurveAcceptance", "IidAcceptance", "TraceAcceptance", "acceptance_by_position",
    "acceptance_summary", "expected_accepted_iid", "expected_tokens_per_verify",
    "STRATEGY_NAMES", "SimConfig", "factorial", "SimResult", "simulate", "summarize",
    "SCHEMA_VERSION", "TraceError", "ContentionModel", "TraceSet", "bundled_trace_sets",
    "resolve_trace_set", "load_traces",
]


def load_traces(name_or_path=None) -> TraceSet:
    """Load a trace set by folder path or bundled name (None = default bundled set)."""
    return TraceSet.load(resolve_trace_set(name_or_path))
