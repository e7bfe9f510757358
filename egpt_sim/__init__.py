"""egpt_sim: replay measured traces through a SimPy model of parallel-prefill speculative decoding.

Torch-free by design: this package only reads trace files written by ``measure``.
Attributes are imported lazily (PEP 562), so ``egpt_sim.schema`` — the trace contract
``measure`` writes to — imports with numpy/pandas/pyarrow alone (no simpy needed).
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CurveAcceptance": "acceptance", "IidAcceptance": "acceptance", "TraceAcceptance": "acceptance",
    "acceptance_by_position": "acceptance", "acceptance_summary": "acceptance",
    "expected_accepted_iid": "acceptance", "expected_tokens_per_verify": "acceptance",
    "STRATEGY_NAMES": "config", "SimConfig": "config", "factorial": "config",
    "SimResult": "runner", "simulate": "runner", "summarize": "runner",
    "SCHEMA_VERSION": "schema", "TraceError": "schema",
    "ContentionModel": "contention", "TraceSet": "traces", "bundled_trace_sets": "traces",
    "resolve_trace_set": "traces",
    "simulate_fast": "fastpath", "run_sweep": "sweep", "read_sweep": "sweep", "required_acceptance": "planning",
    "ServingConfig": "serving", "run_serving": "serving",
    "CostModel": "costmodel", "fit_cost_model": "costmodel", "scenario_traces": "whatif",
}

__all__ = sorted([*_EXPORTS, "load_traces"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'egpt_sim' has no attribute {name!r}")


def load_traces(name_or_path=None):
    """Load a trace set by folder path or bundled name (None = default bundled set)."""
    from .traces import TraceSet, resolve_trace_set

    return TraceSet.load(resolve_trace_set(name_or_path))
