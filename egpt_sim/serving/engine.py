"""Serving engine: a request stream queued onto replicas on N GPUs, in one SimPy clock.

Queueing model (one choice, used by every policy): **one shared FIFO queue** (a
``simpy.Store``) in front of all replicas — an M/G/c system for Poisson arrivals. An idle
replica takes the request at the head of the queue; when several replicas are idle, the
one idle longest gets it (the Store serves waiting ``get``s in FIFO order). We chose a
central queue over per-GPU queues because it is work-conserving (no request waits while
a replica idles), it is what a front-end dispatcher with "send to the first free GPU"
does, and its Poisson/exponential limit is the textbook M/M/c (Erlang C) system.

Each replica serves **one request at a time** (no batching): the single-request model
of :mod:`egpt_sim.sim.processes` / :mod:`egpt_sim.sim.strategies` is reused unchanged:

* a replica whose GPUs no other replica uses (``Replica.exclusive``, the default
  ``replicas_per_gpu=1`` layouts) has a service time that depends only on its request's
  draws, so it calls :func:`egpt_sim.sim.runner.run_request` — the very function
  :func:`egpt_sim.sim.runner.simulate` calls — in a private clock and then holds the replica
  for that long. At low load a request's latency therefore *equals* the single-request
  result on the same :class:`~egpt_sim.sim.draws.DrawBank` row, bit for bit;
* replicas that share a GPU (several copies per GPU, split drafters) run the strategy on
  the shared clock and shared :class:`SharedGpu` objects; a request sees a clock that
  starts at its service start (:class:`RequestClock`), as in ``run_request``.

GPU sharing (:class:`SharedGpu`): activities of *different* roles slow each other by the
fitted contention factors of :mod:`egpt_sim.sim.gpu` (unchanged); ``n`` activities of the
*same* role on one GPU either share it equally (``same_role="ps"``: each runs at rate
``1/n``, total work conserved; both effects multiply) or run one at a time in FIFO order
(``"serial"``). A drafter step left in flight when its request ends still finishes on its
GPU (a launched kernel cannot be recalled); ``run_request`` simply stops there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy

from ..sim import strategies
from ..sim.budget import planning_inputs
from ..sim.gpu import Gpu, contended_rate
from ..sim.processes import RequestContext
from ..sim.rules import contention_for, cpu_lane_for
from ..sim.runner import draw_bank, run_request
from ..traces.acceptance import make_source
from ..traces.schema import CPU_STAGES
from ..traces.traceset import TraceSet
from .config import ServingConfig
from .placement import Placement, Replica, plan_placement
from .streams import SERVICE_STREAM, arrival_times_ms, make_length_dist, output_lengths, stream_rng

REQUEST_COLUMNS = (
    "request_id", "replica", "target_gpu", "drafter_gpu", "output_tokens", "arrival_ms", "start_ms",
    "finish_ms", "queue_delay_ms", "service_ms", "ttft_ms", "latency_ms", "accepted_tokens",
    "drafted_tokens", "verify_passes",
)
_PILOT_REQUESTS = 200


class SharedGpu(Gpu):
    """A :class:`~egpt_sim.sim.gpu.Gpu` that several replicas (and requests) may use at once.

    Rate of an activity = ``1 / (factor x n_same)`` under ``"ps"``, where ``factor`` is
    the fitted cross-role contention factor while an activity of the other role runs
    (1 otherwise) and ``n_same`` the number of running activities of its own role.
    Under ``"serial"`` same-role activities queue FIFO (``n_same`` is then always 1).
    With one activity per role this is exactly :class:`~egpt_sim.sim.gpu.Gpu`.
    """

    def __init__(self, env: simpy.Environment, index: int, contention, same_role: str = "ps"):
        super().__init__(env, index, contention)
        self.same_role = same_role
        self._locks = {r: simpy.Resource(env, 1) for r in ("target", "drafter")} if same_role == "serial" else None

    def execute(self, role: str, stage: str, work_ms: float):
        """As :meth:`Gpu.execute`; under ``"serial"`` a GPU stage first waits for its role's turn
        (a CPU stage never queues: it runs here only so that the peer's GPU stages see it)."""
        if self._locks is None or stage in CPU_STAGES:
            return (yield from super().execute(role, stage, work_ms))
        with self._locks[role].request() as turn:
            yield turn
            return (yield from super().execute(role, stage, work_ms))

    def _rerate(self) -> None:
        counts = Counter(a.role for a in self._active if a.on_gpu)  # CPU stages share no GPU
        for a in self._active:
            share = counts[a.role] if a.on_gpu else 1
            self._set_rate(a, contended_rate(self.contention, a, self._active) / share)


class RequestClock:
    """The shared environment as one request sees it: ``now`` counts from its service start."""

    def __init__(self, env: simpy.Environment, origin_ms: float):
        self._env, self._origin_ms = env, origin_ms

    @property
    def now(self) -> float:
        return self._env.now - self._origin_ms

    def __getattr__(self, name):
        return getattr(self._env, name)


@dataclass
class Request:
    request_id: int
    arrival_ms: float
    output_tokens: int


class _Serving:
    """State shared by the actors of one run (built by :func:`run_serving`)."""

    def __init__(self, cfg: ServingConfig, traces: TraceSet, placement: Placement):
        self.cfg, self.traces, self.placement = cfg, traces, placement
        self.env = simpy.Environment()
        self.queue = simpy.Store(self.env)
        self.lengths = output_lengths(cfg.output_len, cfg.n_requests, cfg.seed)
        rcfg = cfg.request_config(make_length_dist(cfg.output_len).max_tokens)
        self.source = make_source(cfg.acceptance, traces)
        self.contention, self.lane = contention_for(rcfg, traces), cpu_lane_for(rcfg, traces)
        self.plan = planning_inputs(rcfg, traces, self.source, self.contention) \
            if rcfg.strategy == "adaptive_budget" else None
        self._cfgs: dict = {}
        self.gpus = [SharedGpu(self.env, g, self.contention, cfg.same_role) for g in range(cfg.n_gpus)]
        self.busy_ms = np.zeros(cfg.n_gpus)  # busy time booked by private-clock services
        self.rows: list[tuple] = []
        self.bank = None
        if cfg.service_time == "exponential":
            mean = mean_service_ms(cfg, traces)
            self.exp_service_ms = mean * stream_rng(cfg.seed, SERVICE_STREAM).standard_exponential(cfg.n_requests)
        else:
            self.bank = draw_bank(rcfg, traces)

    def request_cfg(self, tokens: int):
        if tokens not in self._cfgs:
            self._cfgs[tokens] = self.cfg.request_config(tokens)
        return self._cfgs[tokens]


# --------------------------------------------------------------------------- actors


def request_source(sv: _Serving, arrivals_ms: np.ndarray):
    """Puts request i into the shared FIFO queue at its arrival time."""
    env = sv.env
    for i, t in enumerate(arrivals_ms):
        if t > env.now:
            yield env.timeout(t - env.now)
        sv.queue.put(Request(i, env.now, int(sv.lengths[i])))


def replica(sv: _Serving, rep: Replica):
    """One serving slot: take the head of the queue, serve it to completion, repeat."""
    env = sv.env
    if sv.cfg.service_time == "exponential":
        serve = serve_exponential
    elif rep.exclusive and sv.cfg.engine == "auto":
        serve = serve_private_clock
    else:
        serve = serve_shared_clock
    while True:
        req = yield sv.queue.get()
        start = env.now
        out = yield from serve(sv, rep, req)
        queue_ms = start - req.arrival_ms
        sv.rows.append((req.request_id, rep.replica_id, rep.target_gpu,
                        -1 if rep.drafter_gpu is None else rep.drafter_gpu, req.output_tokens,
                        req.arrival_ms, start, env.now, queue_ms, out["service_ms"],
                        queue_ms + out["ttft_ms"], queue_ms + out["service_ms"], out["accepted"],
                        out["drafted"], out["verify_passes"]))


def serve_private_clock(sv: _Serving, rep: Replica, req: Request):
    """Service = :func:`run_request` on this request's draws (the replica owns its GPUs)."""
    timeline: list = []
    row = run_request(sv.request_cfg(req.output_tokens), sv.bank.request(req.request_id), sv.source,
                      sv.contention, sv.plan, timeline, sv.lane)
    gpu_of = {0: rep.target_gpu, 1: rep.drafter_gpu}
    for private, real in gpu_of.items():
        spans = sorted((s, e) for (_, _, _, s, e, g, _) in timeline if g == private)
        sv.busy_ms[real if real is not None else rep.target_gpu] += _union_ms(spans)
    yield sv.env.timeout(row["latency_ms"])
    return {"service_ms": row["latency_ms"], "ttft_ms": row["ttft_ms"], "accepted": row["accepted_tokens"],
            "drafted": row["drafted_tokens"], "verify_passes": row["verify_passes"]}


def serve_shared_clock(sv: _Serving, rep: Replica, req: Request):
    """Run the strategy on the shared clock and shared GPUs (contention across replicas)."""
    env = sv.env
    cfg = sv.request_cfg(req.output_tokens)
    tgt = sv.gpus[rep.target_gpu]
    dft = sv.gpus[rep.drafter_gpu] if rep.drafter_gpu is not None else tgt
    clock = RequestClock(env, env.now)
    ctx = RequestContext(clock, cfg, sv.bank.request(req.request_id), tgt, dft, plan=sv.plan, source=sv.source)
    ctx.sync_drafter()  # as run_request: the prefill window's run starts at position 0
    ctx.state.generation = 0
    yield from strategies.get(cfg.strategy)(ctx)
    s = ctx.state
    if s.committed != cfg.output_tokens:
        raise RuntimeError(f"{cfg.strategy}: emitted {s.committed} tokens, expected {cfg.output_tokens}")
    return {"service_ms": clock.now, "ttft_ms": s.ttft_ms, "accepted": s.accepted, "drafted": s.drafted,
            "verify_passes": s.verify_passes}


def serve_exponential(sv: _Serving, rep: Replica, req: Request):
    """Service ~ Exp(mean service time of the trace): the M/M/c check."""
    ms = float(sv.exp_service_ms[req.request_id])
    sv.busy_ms[rep.target_gpu] += ms
    yield sv.env.timeout(ms)
    return {"service_ms": ms, "ttft_ms": float("nan"), "accepted": 0, "drafted": 0, "verify_passes": 0}


def _union_ms(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of sorted (start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    return total + (cur_e - cur_s if cur_e is not None else 0.0)


# --------------------------------------------------------------------------- run + results


@dataclass
class ServingResult:
    config: ServingConfig
    requests: pd.DataFrame  # one row per request (REQUEST_COLUMNS), by request_id
    gpus: pd.DataFrame  # one row per GPU: role, replicas, memory, busy_ms, busy_frac
    placement: Placement

    def summary(self, warmup_frac: float = 0.1) -> dict:
        return {"variant": self.config.variant, "policy": self.config.policy, "n_gpus": self.config.n_gpus,
                "n_replicas": len(self.placement.replicas), "offered_rps": _offered_rps(self.requests)} \
            | summarize_serving(self.requests, self.gpus, warmup_frac)


def _offered_rps(req: pd.DataFrame) -> float:
    span = req["arrival_ms"].max() - req["arrival_ms"].min()
    return float((len(req) - 1) / span * 1000.0) if span > 0 else float("nan")


def summarize_serving(requests: pd.DataFrame, gpus: pd.DataFrame, warmup_frac: float = 0.1) -> dict:
    """Headline numbers. Latency statistics skip the first ``warmup_frac`` of requests
    (by arrival: the system starts empty); throughput counts every request over
    first arrival .. last completion."""
    if len(requests) == 0:
        raise ValueError("cannot summarise zero served requests")
    r = requests.sort_values("request_id")
    steady = r.iloc[int(len(r) * warmup_frac):] if len(r) > 1 else r
    span_ms = r["finish_ms"].max() - r["arrival_ms"].min()
    lat, ttft, q = steady["latency_ms"], steady["ttft_ms"], steady["queue_delay_ms"]
    return {
        "n_requests": int(len(r)),
        "throughput_rps": float(len(r) / span_ms * 1000.0) if span_ms > 0 else float("nan"),
        "latency_mean_ms": float(lat.mean()), "latency_p50_ms": float(lat.quantile(0.5)),
        "latency_p90_ms": float(lat.quantile(0.9)), "latency_p99_ms": float(lat.quantile(0.99)),
        "ttft_p50_ms": float(ttft.quantile(0.5)), "ttft_p90_ms": float(ttft.quantile(0.9)),
        "queue_delay_mean_ms": float(q.mean()), "queue_delay_p90_ms": float(q.quantile(0.9)),
        "service_mean_ms": float(steady["service_ms"].mean()),
        "gpu_busy_mean_frac": float(gpus["busy_frac"].mean()), "gpu_busy_max_frac": float(gpus["busy_frac"].max()),
    }


def run_serving(cfg: ServingConfig, traces: TraceSet) -> ServingResult:
    """Serve ``cfg.n_requests`` requests of ``cfg``'s stream on its GPUs; see the module docstring."""
    placement = plan_placement(cfg, traces)
    sv = _Serving(cfg, traces, placement)
    arrivals = arrival_times_ms(cfg.arrival, cfg.n_requests, cfg.rate_rps, cfg.seed, cfg.arrival_trace)
    sv.env.process(request_source(sv, arrivals))
    for rep in placement.replicas:
        sv.env.process(replica(sv, rep))
    sv.env.run()
    if len(sv.rows) != cfg.n_requests:
        raise RuntimeError(f"served {len(sv.rows)} of {cfg.n_requests} requests")
    req = pd.DataFrame(sv.rows, columns=list(REQUEST_COLUMNS)).sort_values("request_id", ignore_index=True)
    horizon_ms = float(req["finish_ms"].max())
    gpus = placement.table()
    gpus["busy_ms"] = sv.busy_ms + np.array([g.busy_ms for g in sv.gpus])
    gpus["busy_frac"] = gpus["busy_ms"] / horizon_ms if horizon_ms > 0 else 0.0
    return ServingResult(cfg, req, gpus, placement)


def mean_service_ms(cfg: ServingConfig, traces: TraceSet) -> float:
    """Mean service time of one request, used by ``service_time="exponential"``.

    target_only: exact expectation under the resampling model (mean prefill phase +
    (E[tokens] - 1) x mean target decode step). colocated: the mean
    :func:`run_request` latency of the first ``min(n_requests, 200)`` requests (a pilot).
    """
    dist = make_length_dist(cfg.output_len)
    if cfg.policy == "target_only":
        phase = traces.prefill_phase_table["target"].copy()
        if not cfg.include_cpu_stages:
            phase[:, :2] = 0.0
        return float(phase.sum(axis=1).mean() + (dist.mean_tokens - 1) * traces.decode_pool["target"].mean())
    n = min(cfg.n_requests, _PILOT_REQUESTS)
    pilot = cfg.replace(service_time="trace", n_requests=n)
    lengths = output_lengths(cfg.output_len, n, cfg.seed)
    rcfg = pilot.request_config(dist.max_tokens)
    bank, source = draw_bank(rcfg, traces), make_source(cfg.acceptance, traces)
    cont = contention_for(rcfg, traces)
    plan = planning_inputs(rcfg, traces, source, cont) if rcfg.strategy == "adaptive_budget" else None
    lane = cpu_lane_for(rcfg, traces)
    lat = [run_request(pilot.request_config(int(lengths[i])), bank.request(i), source, cont, plan, None, lane)["latency_ms"]
           for i in range(n)]
    return float(np.mean(lat))


def erlang_c_wait_ms(rate_rps: float, mean_service_ms: float, servers: int) -> float:
    """M/M/c mean waiting time in queue (Erlang C), ms; inf when the load is >= 1."""
    a = rate_rps * mean_service_ms / 1000.0  # offered load, Erlangs
    if a >= servers:
        return float("inf")
    b = 1.0  # Erlang B by the stable recursion, then C from B
    for k in range(1, servers + 1):
        b = a * b / (k + a * b)
    c = b / (1.0 - (a / servers) * (1.0 - b))
    return c * mean_service_ms / (servers - a)
