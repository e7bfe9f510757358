"""Run scenarios through the SimPy model and collect tidy result frames.

``simulate(config, traces)`` runs ``config.n_requests`` independent requests (each in
its own SimPy environment; request streams and queueing live in
:mod:`egpt_sim.serving`) and returns a :class:`SimResult` with

* ``requests`` — one row per request: latency, time-to-first-token, drafts, accepted
  tokens, verify passes, and ``speedup`` = target_only latency on the *same draws* /
  this latency;
* ``timeline`` — one row per activity (TIMELINE schema) when ``timeline=True``.

A config with what-if shape fields (``target_frames``, ``drafter_params_b``, ...) is
simulated on :func:`egpt_sim.whatif.scenario_traces` of the trace set; every request row
and summary says where the stage times came from (``time_source``: ``trace`` | ``model``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import simpy

from ..traces.acceptance import source_for
from ..traces.contention import ContentionModel, CpuLane
from ..traces.traceset import TraceSet
from ..whatif.shapes import scenario_traces, time_source_of
from . import strategies
from .budget import planning_inputs
from .config import SimConfig
from .draws import DrawBank, RequestDraws, pass_gaps_ms
from .gpu import Gpu
from .processes import RequestContext
from .rules import contention_for, cpu_lane_for

REQUEST_COLUMNS = (
    "request_id", "strategy", "n_gpus", "output_tokens", "gamma", "acceptance",
    "latency_ms", "ttft_ms", "target_prefill_end_ms", "drafter_prefill_end_ms",
    "drafted_tokens", "window_drafts", "wasted_drafts", "accepted_tokens",
    "window_accepted", "verify_passes", "target_passes", "baseline_latency_ms", "speedup", "time_source",
)

TIMELINE_COLUMNS = ("request_id", "actor", "activity", "start_ms", "end_ms", "gpu", "tokens")


@dataclass
class SimResult:
    """``contention``: the model used, with provenance (``.table()``: every factor
    measured or assumed, rows, CI; ``.header()``: one line for report headers)."""

    config: SimConfig
    requests: pd.DataFrame
    timeline: pd.DataFrame
    provenance: str
    contention: ContentionModel
    time_source_detail: str = "as recorded"
    cpu_lane: str = "serial"  # rules.cpu_lane_for(...).describe()

    @property
    def contention_header(self) -> str:
        return self.contention.header()

    def summary(self) -> dict:
        return summarize(self.requests) | {"provenance": self.provenance, "contention_factors": self.contention_header,
                                           "time_source_detail": self.time_source_detail, "cpu_lane_model": self.cpu_lane}


def summarize(requests: pd.DataFrame) -> dict:
    """Headline numbers. ``speedup_of_means`` = mean baseline / mean latency."""
    if len(requests) == 0:
        raise ValueError("cannot summarise zero simulated requests")
    r = requests
    return {
        "n_requests": int(len(r)),
        "latency_mean_ms": float(r["latency_ms"].mean()),
        "latency_p50_ms": float(r["latency_ms"].median()),
        "latency_p90_ms": float(r["latency_ms"].quantile(0.9)),
        "ttft_mean_ms": float(r["ttft_ms"].mean()),
        "baseline_mean_ms": float(r["baseline_latency_ms"].mean()),
        "speedup_of_means": float(r["baseline_latency_ms"].mean() / r["latency_ms"].mean()),
        "speedup_median": float(r["speedup"].median()),
        "accepted_mean_tokens": float(r["accepted_tokens"].mean()),
        "window_drafts_mean_tokens": float(r["window_drafts"].mean()),
        "window_accepted_mean_tokens": float(r["window_accepted"].mean()),
        "drafted_mean_tokens": float(r["drafted_tokens"].mean()),
        "verify_passes_mean": float(r["verify_passes"].mean()),
        "time_source": str(r["time_source"].iloc[0]) if "time_source" in r else "trace",
    }


def run_request(cfg: SimConfig, draws: RequestDraws, source, contention: ContentionModel,
                plan: dict | None = None, timeline: list | None = None, lane: CpuLane | None = None) -> dict:
    """Simulate one request in its own environment; returns its result row (``lane``:
    :func:`rules.cpu_lane_for`; None = a serial lane)."""
    env = simpy.Environment()
    target_gpu = Gpu(env, 0, contention)
    # two GPUs of one request share the host contention domain (rate 1 when it is trivial)
    drafter_gpu = target_gpu if cfg.n_gpus == 1 else Gpu(env, 1, contention, domain=target_gpu.domain)
    ctx = RequestContext(env, cfg, draws, target_gpu, drafter_gpu, timeline=timeline, plan=plan, source=source,
                         lane=lane if lane is not None else CpuLane())
    ctx.sync_drafter()  # the run for the prefill window starts at position 0
    ctx.state.generation = 0
    proc = env.process(strategies.get(cfg.strategy)(ctx))
    env.run(until=proc)
    s = ctx.state
    if s.committed != cfg.output_tokens:
        raise RuntimeError(f"{cfg.strategy}: emitted {s.committed} tokens, expected {cfg.output_tokens}")
    return {
        "request_id": draws.request_id, "latency_ms": env.now, "ttft_ms": s.ttft_ms,
        "target_prefill_end_ms": s.target_prefill_end_ms, "drafter_prefill_end_ms": s.drafter_prefill_end_ms,
        "drafted_tokens": s.drafted, "window_drafts": s.window_drafts, "wasted_drafts": s.wasted_drafts,
        "accepted_tokens": s.accepted, "window_accepted": s.window_accepted,
        "verify_passes": s.verify_passes, "target_passes": s.target_passes,
    }


def simulate(cfg: SimConfig, traces: TraceSet, timeline: bool = False, n_timeline_requests: int = 1,
             bank: DrawBank | None = None) -> SimResult:
    """Simulate ``cfg`` against ``traces`` with the SimPy reference model.

    ``bank`` lets sweeps reuse one set of draws across scenarios (it must match the
    config's seed, n_requests, drafter_speed, include_cpu_stages, pass gaps and what-if shape).
    """
    traces = scenario_traces(cfg, traces)
    if bank is not None:
        check_bank_scenario(bank, traces)
    source = source_for(cfg, traces)
    contention, lane = contention_for(cfg, traces), cpu_lane_for(cfg, traces)
    plan = planning_inputs(cfg, traces, source, contention) if cfg.strategy == "adaptive_budget" else None
    bank = bank if bank is not None else draw_bank(cfg, traces)
    base_cfg = cfg.replace(strategy="target_only")
    rows, events = [], []
    for i in range(cfg.n_requests):
        draws = bank.request(i)
        tl = events if (timeline and i < n_timeline_requests) else None
        row = run_request(cfg, draws, source, contention, plan, tl, lane)
        if cfg.strategy == "target_only":
            row["baseline_latency_ms"] = row["latency_ms"]
        else:
            row["baseline_latency_ms"] = run_request(base_cfg, draws, source, contention)["latency_ms"]
        rows.append(row)
    req = finish_requests(pd.DataFrame(rows), cfg, time_source_of(traces, cfg.strategy))
    tl_df = pd.DataFrame(events, columns=list(TIMELINE_COLUMNS))
    return SimResult(cfg, req, tl_df, traces.provenance(), contention, time_source_detail(traces), lane.describe())


def draw_bank(cfg: SimConfig, traces: TraceSet) -> DrawBank:
    """The draws of ``cfg``'s requests on the trace set it simulates (its what-if shape)."""
    return DrawBank(scenario_traces(cfg, traces), cfg.seed, cfg.n_requests, cfg.drafter_speed, cfg.include_cpu_stages,
                    pass_gaps_ms(cfg, traces))  # the serving loop's gaps do not depend on the what-if shape


def check_bank_scenario(bank: DrawBank, traces: TraceSet) -> None:
    """A bank drawn for another what-if shape would replay the wrong stage times."""
    if bank.scenario_key != getattr(traces, "scenario_key", None):
        raise ValueError(f"DrawBank was drawn for what-if shape {bank.scenario_key}, the config simulates "
                         f"{getattr(traces, 'scenario_key', None)} (None = as recorded): build it with draw_bank(cfg, traces)")


def time_source_detail(traces: TraceSet) -> str:
    """Where a simulation's stage times come from, one line (see :mod:`egpt_sim.whatif`)."""
    return getattr(traces, "time_source_detail", "as recorded (trace replay)")


def finish_requests(req: pd.DataFrame, cfg: SimConfig, time_source: str = "trace") -> pd.DataFrame:
    """Add speedup and scenario columns; order columns as REQUEST_COLUMNS."""
    req = req.copy()
    req["speedup"] = req["baseline_latency_ms"] / req["latency_ms"]
    for k in ("strategy", "n_gpus", "output_tokens", "gamma"):
        req[k] = getattr(cfg, k)
    req["acceptance"] = cfg.acceptance_label
    req["time_source"] = time_source
    return req[list(REQUEST_COLUMNS)]
