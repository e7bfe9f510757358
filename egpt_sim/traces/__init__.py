"""Traces: what was recorded, read back — the trace contract, trace sets, acceptance sources
and the contention factors fitted from them.

* :mod:`egpt_sim.traces.schema` — the trace contract ``measure`` writes to (numpy / pandas /
  pyarrow only; importable without simpy or torch);
* :mod:`egpt_sim.traces.traceset` — :class:`TraceSet`: a loaded trace-set folder and the
  per-sample tables the simulator replays; bundled sets;
* :mod:`egpt_sim.traces.acceptance` — acceptance sources (run lengths) and metrics;
* :mod:`egpt_sim.traces.contention` — contention factors fitted from concurrent vs alone rows;
* :mod:`egpt_sim.traces.examples` — the seed-calibrated example trace set.
"""

from .contention import ContentionModel, Fit, fit_factors, infer_peer_activity, resolve, uniform_model
from .traceset import DATA_DIR, PREFILL_PHASE_STAGES, RoleSamples, TraceSet, bundled_trace_sets, resolve_trace_set

__all__ = ["DATA_DIR", "PREFILL_PHASE_STAGES", "RoleSamples", "TraceSet", "bundled_trace_sets", "resolve_trace_set",
           "ContentionModel", "Fit", "fit_factors", "infer_peer_activity", "resolve", "uniform_model"]
