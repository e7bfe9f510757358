"""Serving at scale: request streams on N GPUs, placement policies, sweeps.

This package's face (this file) re-exports the serving layer; the code lives in

* :mod:`egpt_sim.serving.streams` — arrivals (Poisson, fixed interval, replayed CSV) and
  answer lengths (fixed, uniform, empirical);
* :mod:`egpt_sim.serving.config` — :class:`ServingConfig`;
* :mod:`egpt_sim.serving.placement` — replicas per GPU and the memory check;
* :mod:`egpt_sim.serving.engine` — the SimPy actors (``request_source``, ``replica``,
  ``serve_*``), :class:`SharedGpu`, :func:`run_serving`, Erlang C;
* :mod:`egpt_sim.serving.sweep` — sweeps on any executor, latency vs load, max rate
  under an SLO;
* :mod:`egpt_sim.serving.plots` — figures.

Quick start::

    import egpt_sim as E
    from . import ServingConfig, run_serving
    ts = E.load_traces("example/seed_calibrated")
    cfg = ServingConfig(policy="colocated", strategy="parallel_sd", n_gpus=4, rate_rps=1.0,
                        acceptance=0.6, n_requests=1000)
    run_serving(cfg, ts).summary()

Model in one paragraph: requests arrive into **one shared FIFO queue**; each replica (a
target copy, a drafter+target pair, or a target bound to a drafter GPU) serves one
request at a time with the single-request model of :mod:`egpt_sim.sim.strategies`; GPUs
shared by several replicas slow concurrent activities by the fitted cross-role factors
and by processor sharing (or serialisation) within a role. No batching, no preemption.
"""

from .config import POLICIES, ServingConfig
from .engine import (
    REQUEST_COLUMNS,
    RequestClock,
    ServingResult,
    SharedGpu,
    erlang_c_wait_ms,
    mean_service_ms,
    replica,
    request_source,
    run_serving,
    summarize_serving,
)
from .placement import KV_BYTES_PER_TOKEN, WEIGHTS_GIB, Placement, PlacementError, Replica, plan_placement, role_memory
from .plots import plot_latency_vs_load, plot_max_rate
from .streams import (
    EmpiricalLength,
    FixedLength,
    UniformLength,
    arrival_times_ms,
    load_arrival_trace,
    make_length_dist,
    output_lengths,
)
from .sweep import (
    latency_vs_load,
    map_tasks,
    max_rate_under_slo,
    rate_grid,
    run_config,
    run_serving_sweep,
    search_max_rate,
)

__all__ = [
    "POLICIES", "ServingConfig", "REQUEST_COLUMNS", "RequestClock", "ServingResult", "SharedGpu",
    "erlang_c_wait_ms", "mean_service_ms", "replica", "request_source", "run_serving", "summarize_serving",
    "KV_BYTES_PER_TOKEN", "WEIGHTS_GIB", "Placement", "PlacementError", "Replica", "plan_placement",
    "role_memory", "plot_latency_vs_load", "plot_max_rate", "EmpiricalLength", "FixedLength",
    "UniformLength", "arrival_times_ms", "load_arrival_trace", "make_length_dist", "output_lengths",
    "latency_vs_load", "map_tasks", "max_rate_under_slo", "rate_grid", "run_config", "run_serving_sweep",
    "search_max_rate",
]
