"""egpt_sim: replay measured traces through a SimPy model of parallel-prefill speculative decoding.

Torch-free by design: this package only reads trace files written by ``measure``.
Layers (ARCHITECTURE.md): :mod:`egpt_sim.traces` (the trace contract, trace sets,
acceptance, contention factors) -> :mod:`egpt_sim.whatif` (cost models, unmeasured shapes)
-> :mod:`egpt_sim.sim` (the SimPy single-request model) -> :mod:`egpt_sim.fast` (the same
model vectorised) -> :mod:`egpt_sim.serving` (request streams on N GPUs) ->
:mod:`egpt_sim.analysis` (sweeps, planning, validation, tables, figures, report,
notebooks); :mod:`egpt_sim.cli` on top. Attributes are imported lazily (PEP 562), so
``egpt_sim.traces.schema`` — the trace contract ``measure`` writes to — imports with
numpy/pandas/pyarrow alone (no simpy needed).
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CurveAcceptance": "traces.acceptance", "IidAcceptance": "traces.acceptance",
    "TraceAcceptance": "traces.acceptance", "acceptance_by_position": "traces.acceptance",
    "acceptance_summary": "traces.acceptance", "expected_accepted_iid": "traces.acceptance",
    "expected_tokens_per_verify": "traces.acceptance",
    "STRATEGY_NAMES": "sim.config", "SimConfig": "sim.config", "factorial": "sim.config",
    "SimResult": "sim.runner", "simulate": "sim.runner", "summarize": "sim.runner",
    "SCHEMA_VERSION": "traces.schema", "TraceError": "traces.schema",
    "ContentionModel": "traces.contention", "TraceSet": "traces.traceset", "bundled_trace_sets": "traces.traceset",
    "resolve_trace_set": "traces.traceset",
    "simulate_fast": "fast.api", "run_sweep": "analysis.sweep", "read_sweep": "analysis.sweep",
    "required_acceptance": "analysis.planning",
    "ServingConfig": "serving.config", "run_serving": "serving.engine",
    "CostModel": "whatif.costmodel", "fit_cost_model": "whatif.costmodel", "scenario_traces": "whatif.shapes",
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
    from .traces.traceset import TraceSet, resolve_trace_set

    return TraceSet.load(resolve_trace_set(name_or_path))
