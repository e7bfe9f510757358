"""Serving scenario: one frozen, picklable dataclass per simulated serving run.

A :class:`ServingConfig` names the request stream (arrivals, answer lengths), the
machine (``n_gpus``, memory), the placement policy and the per-request settings that
are handed to the single-request model as a :class:`~egpt_sim.sim.config.SimConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..sim.config import STRATEGY_NAMES, SimConfig
from .streams import ARRIVAL_KINDS, make_length_dist

POLICIES = ("target_only", "colocated", "split")
MAX_GPUS = 16


@dataclass(frozen=True)
class ServingConfig:
    """One serving scenario. Times in ms, rates in requests/s, memory in GiB.

    Request stream
        ``arrival``: ``"poisson"`` | ``"fixed"`` | ``"trace"`` (then ``arrival_trace`` is a CSV
        with ``timestamp_s`` or ``arrival_ms``); ``rate_rps``: offered load (for a trace:
        None = replay as recorded, else rescale to this mean rate); ``n_requests``;
        ``output_len``: answer-length distribution (see
        :func:`~egpt_sim.serving.streams.make_length_dist`); ``seed``: root of every stream.

    Machine and placement
        ``policy``: ``target_only`` (one target replica per slot, no drafting — the
        baseline), ``colocated`` (each slot holds a drafter+target pair running
        ``strategy``), ``split`` (``drafter_gpus`` GPUs hold drafters, the other
        ``n_gpus - drafter_gpus`` hold targets). ``replicas_per_gpu``: model copies
        (pairs, for colocated) per GPU, an int or ``"max"`` (as many as fit in memory).
        ``same_role``: how activities of the same role share a GPU — ``"ps"``
        (processor sharing, each of n gets 1/n) or ``"serial"`` (FIFO, one at a time).
        ``weight_bits`` (16 or 4), ``gpu_mem_gib``, ``mem_utilization`` (usable fraction),
        ``memory_source``: ``"auto"`` (measured ``peak_mem_mb``/``kv_bytes`` when the traces
        carry them, documented defaults otherwise) or ``"documented"``.

    Service
        ``service_time``: ``"trace"`` (the replayed per-request model) or
        ``"exponential"`` (an exponential with the mean service time; for queueing checks).
        ``engine``: ``"auto"`` (a replica whose GPUs nothing else uses runs each request
        with :func:`egpt_sim.sim.runner.run_request` in a private clock) or ``"shared_clock"``
        (every request runs on the shared SimPy clock and GPUs).

    Per request (forwarded to :class:`SimConfig`): ``strategy``, ``gamma``, ``acceptance``,
    ``contention``, ``contention_scale``, ``drafter_speed``, ``include_cpu_stages``,
    ``lookahead_blocks``.
    """

    policy: str = "target_only"
    n_gpus: int = 1
    strategy: str = "prefill_then_verify"
    rate_rps: float | None = 0.2
    arrival: str = "poisson"
    arrival_trace: str | None = None
    n_requests: int = 500
    output_len: Any = 50
    seed: int = 0
    drafter_gpus: int = 1
    replicas_per_gpu: int | str = 1
    same_role: str = "ps"
    weight_bits: int = 16
    gpu_mem_gib: float = 80.0
    mem_utilization: float = 0.9
    memory_source: str = "auto"
    service_time: str = "trace"
    engine: str = "auto"
    gamma: int = 8
    acceptance: Any = "trace"
    contention: str = "fitted"
    contention_scale: float = 1.0
    drafter_speed: float = 1.0
    include_cpu_stages: bool = True
    lookahead_blocks: int = 2
    label: str = field(default="", compare=False)

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"ServingConfig.{name}: {why} (got {getattr(self, name)!r})")

        for name in ("output_len", "acceptance"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.policy not in POLICIES:
            bad("policy", f"choose from {list(POLICIES)}")
        if not 1 <= int(self.n_gpus) <= MAX_GPUS:
            bad("n_gpus", f"must be in 1..{MAX_GPUS}")
        if self.strategy not in STRATEGY_NAMES or self.strategy == "drafter_only":
            bad("strategy", "must be a lossless single-request strategy: "
                f"{[s for s in STRATEGY_NAMES if s != 'drafter_only']}")
        if self.arrival not in ARRIVAL_KINDS:
            bad("arrival", f"choose from {list(ARRIVAL_KINDS)}")
        if self.arrival == "trace" and not self.arrival_trace:
            bad("arrival_trace", "arrival='trace' needs the path of an arrival CSV")
        if self.rate_rps is None and self.arrival != "trace":
            bad("rate_rps", "needed for poisson and fixed arrivals")
        if self.rate_rps is not None and not float(self.rate_rps) > 0:
            bad("rate_rps", "must be > 0 requests/s")
        if int(self.n_requests) < 1:
            bad("n_requests", "must be >= 1")
        make_length_dist(self.output_len)
        if self.policy == "split" and not 1 <= int(self.drafter_gpus) <= int(self.n_gpus) - 1:
            bad("drafter_gpus", f"split needs 1 <= drafter_gpus <= n_gpus - 1 = {int(self.n_gpus) - 1}")
        if self.replicas_per_gpu != "max" and not (isinstance(self.replicas_per_gpu, int) and self.replicas_per_gpu >= 1):
            bad("replicas_per_gpu", "must be an int >= 1 or 'max'")
        if self.same_role not in ("ps", "serial"):
            bad("same_role", "must be 'ps' or 'serial'")
        if self.weight_bits not in (16, 4):
            bad("weight_bits", "must be 16 or 4")
        if not self.gpu_mem_gib > 0 or not 0 < self.mem_utilization <= 1:
            bad("gpu_mem_gib", "gpu_mem_gib must be > 0 and mem_utilization in (0, 1]")
        if self.memory_source not in ("auto", "documented"):
            bad("memory_source", "must be 'auto' or 'documented'")
        if self.service_time not in ("trace", "exponential"):
            bad("service_time", "must be 'trace' or 'exponential'")
        if self.service_time == "exponential" and self.policy == "split":
            bad("service_time", "an exponential service time needs one service per request; "
                "use target_only or colocated")
        if self.engine not in ("auto", "shared_clock"):
            bad("engine", "must be 'auto' or 'shared_clock'")
        self.request_config(1)  # validates the per-request fields

    # ------------------------------------------------------------------ helpers
    @property
    def request_strategy(self) -> str:
        return "target_only" if self.policy == "target_only" else self.strategy

    @property
    def variant(self) -> str:
        """Short label of the policy (for tables and legends)."""
        if self.label:
            return self.label
        if self.policy == "target_only":
            return "target_only"
        if self.policy == "split":
            return f"split[{self.drafter_gpus}d]/{self.strategy}"
        return f"colocated/{self.strategy}"

    def request_config(self, output_tokens: int) -> SimConfig:
        """The single-request :class:`SimConfig` of a request with ``output_tokens`` tokens.

        ``n_gpus`` is 1 when drafter and target share a GPU (target_only, colocated) and 2
        for split, which selects the matching contention model in :mod:`egpt_sim.sim.runner`.
        """
        return SimConfig(
            strategy=self.request_strategy, output_tokens=int(output_tokens), gamma=self.gamma,
            n_gpus=2 if self.policy == "split" else 1, acceptance=self.acceptance,
            n_requests=int(self.n_requests), seed=self.seed, contention=self.contention,
            contention_scale=self.contention_scale, drafter_speed=self.drafter_speed,
            include_cpu_stages=self.include_cpu_stages, lookahead_blocks=self.lookahead_blocks,
        )

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output_len"] = repr(make_length_dist(self.output_len))
        if not isinstance(self.acceptance, (str, int, float)):
            d["acceptance"] = "curve"
        d["variant"] = self.variant
        return d

    def replace(self, **changes: Any) -> "ServingConfig":
        return dataclasses.replace(self, **changes)
