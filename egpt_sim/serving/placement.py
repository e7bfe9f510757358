"""Placement: which model copies live on which GPU, and whether they fit in memory.

Memory model (GiB = 2**30 bytes), per model copy (*replica*) of a role:

* ``static_gib`` — weights: 13.5 GiB for a 7B model in fp16, 3.9 GiB in 4-bit (documented
  defaults, both models are ~7B). When the traces carry ``peak_mem_mb`` on the role's
  ``alone`` prefill rows (and ``memory_source="auto"``), ``static_gib`` is instead the
  largest measured peak minus the prompt's KV cache — weights plus activations as
  measured, at the trace's own quantisation (``weight_bits`` is then not used).
* ``per_request_gib`` — the KV cache of the one request a replica serves:
  ``kv_bytes_per_token x (prompt + longest answer + drafts in flight)`` with
  ``kv_bytes_per_token = 2 (K, V) x 32 layers x 4096 hidden x 2 bytes`` (fp16 KV), or
  the measured ``kv_bytes / prompt_tokens`` when the traces carry ``kv_bytes``.

Layouts (``r = replicas_per_gpu``; replica ids go slot-major, GPU 0 slot 0, GPU 1 slot 0,
..., so an idle-longest dispatcher spreads load over GPUs before stacking it):

* ``target_only`` — every GPU holds ``r`` target replicas.
* ``colocated`` — every GPU holds ``r`` drafter+target pairs (a pair = both copies).
* ``split`` — GPUs ``0..k-1`` hold drafters, GPUs ``k..N-1`` hold ``r`` target replicas
  each. Target replica ``j`` is bound to drafter GPU ``j mod k``; a drafter GPU holds one
  drafter copy (weights once) that serves all its bound replicas concurrently, with one
  KV cache per bound replica.

A layout that does not fit in ``gpu_mem_gib x mem_utilization`` raises
:class:`PlacementError` naming the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..traces.traceset import TraceSet
from .config import ServingConfig
from .streams import make_length_dist

WEIGHTS_GIB = {16: 13.5, 4: 3.9}
KV_BYTES_PER_TOKEN = 2 * 32 * 4096 * 2
_GIB = 2.0**30


class PlacementError(ValueError):
    """The requested models do not fit on the GPUs (one line, with the numbers)."""


@dataclass(frozen=True)
class RoleMemory:
    role: str
    static_gib: float
    per_request_gib: float
    kv_tokens: int
    source: str

    @property
    def replica_gib(self) -> float:
        return self.static_gib + self.per_request_gib


@dataclass(frozen=True)
class Replica:
    """A serving slot: runs one request at a time (FIFO) on its GPU(s)."""

    replica_id: int
    target_gpu: int
    drafter_gpu: int | None  # None: no drafter (target_only)
    exclusive: bool  # no other replica uses its GPU(s)


@dataclass(frozen=True)
class Placement:
    replicas: tuple[Replica, ...]
    gpu_roles: tuple[str, ...]  # per GPU: "target" | "pair" | "drafter"
    gpu_used_gib: tuple[float, ...]
    usable_gib: float
    memory: dict

    def table(self) -> pd.DataFrame:
        rows = [{"gpu": g, "gpu_role": role,
                 "replicas": sum(g in (r.target_gpu, r.drafter_gpu) for r in self.replicas),
                 "mem_used_gib": used, "mem_usable_gib": self.usable_gib}
                for g, (role, used) in enumerate(zip(self.gpu_roles, self.gpu_used_gib))]
        return pd.DataFrame(rows)


def _measured(traces: TraceSet, role: str, column: str) -> np.ndarray:
    r = traces.ok_rows
    if column not in r.columns:
        return np.array([])
    sel = r[(r["role"] == role) & (r["stage"] == "prefill") & (r["placement"] == "alone")]
    vals = pd.to_numeric(sel[column], errors="coerce").to_numpy(dtype=float)
    if column == "kv_bytes":
        vals = vals / sel["prompt_tokens"].to_numpy(dtype=float)
    return vals[np.isfinite(vals) & (vals > 0)]


def role_memory(cfg: ServingConfig, traces: TraceSet, role: str) -> RoleMemory:
    """Memory of one replica of ``role`` (see the module docstring)."""
    prompt = traces.prompt_tokens(role)
    ahead = cfg.gamma * (cfg.lookahead_blocks if role == "drafter" else 1)
    kv_tokens = prompt + make_length_dist(cfg.output_len).max_tokens + ahead
    auto = cfg.memory_source == "auto"
    kv_meas = _measured(traces, role, "kv_bytes") if auto else np.array([])
    kv_per_token = float(np.median(kv_meas)) if kv_meas.size else float(KV_BYTES_PER_TOKEN)
    peak = _measured(traces, role, "peak_mem_mb") if auto else np.array([])
    if peak.size:
        static = float(peak.max()) / 1024.0 - kv_per_token * prompt / _GIB
        source = "measured peak_mem_mb" + (" + kv_bytes" if kv_meas.size else "")
    else:
        static = WEIGHTS_GIB[cfg.weight_bits]
        source = f"documented {cfg.weight_bits}-bit weights" + (" + measured kv_bytes" if kv_meas.size else "")
    return RoleMemory(role, static, kv_per_token * kv_tokens / _GIB, kv_tokens, source)


def _fit_error(cfg: ServingConfig, what: str, need: float, usable: float, detail: str) -> PlacementError:
    return PlacementError(
        f"{cfg.policy}: {what} needs {need:.1f} GiB but a {cfg.gpu_mem_gib:g} GiB GPU has "
        f"{usable:.1f} GiB usable (mem_utilization={cfg.mem_utilization:g}); {detail}; "
        "try weight_bits=4, fewer replicas_per_gpu, fewer target GPUs per drafter GPU or a larger GPU")


def plan_placement(cfg: ServingConfig, traces: TraceSet) -> Placement:
    """Replicas and per-GPU memory of ``cfg``; raises :class:`PlacementError` if it does not fit."""
    usable = cfg.gpu_mem_gib * cfg.mem_utilization
    tgt, dft = role_memory(cfg, traces, "target"), role_memory(cfg, traces, "drafter")
    mem = {"target": tgt, "drafter": dft}
    unit = tgt.replica_gib + (dft.replica_gib if cfg.policy == "colocated" else 0.0)
    unit_name = "drafter+target pair" if cfg.policy == "colocated" else "target replica"
    detail = (f"one {unit_name} = {unit:.1f} GiB (target {tgt.replica_gib:.1f}"
              + (f" + drafter {dft.replica_gib:.1f}" if cfg.policy == "colocated" else "")
              + f"; {tgt.source}; KV for {tgt.kv_tokens} target tokens)")
    n_hosts = cfg.n_gpus - (cfg.drafter_gpus if cfg.policy == "split" else 0)
    r = cfg.replicas_per_gpu
    if r == "max":
        r = int(math.floor(usable / unit + 1e-9))
        if r < 1:
            raise _fit_error(cfg, f"one {unit_name}", unit, usable, detail)
    if r * unit > usable + 1e-9:
        raise _fit_error(cfg, f"replicas_per_gpu={r} x {unit_name}", r * unit, usable, detail)
    n_rep = r * n_hosts
    first_host = cfg.drafter_gpus if cfg.policy == "split" else 0
    if cfg.policy == "split":
        k = cfg.drafter_gpus
        bound = [len(range(j, n_rep, k)) for j in range(k)]
        d_used = [dft.static_gib + b * dft.per_request_gib for b in bound]
        worst = int(np.argmax(d_used))
        if d_used[worst] > usable + 1e-9:
            raise _fit_error(cfg, f"drafter GPU {worst} serving {bound[worst]} target replicas", d_used[worst],
                             usable, f"drafter weights {dft.static_gib:.1f} + {dft.per_request_gib:.2f} GiB KV "
                             "per bound replica")
        exclusive = r == 1 and max(bound) == 1
        replicas = tuple(Replica(j, first_host + j % n_hosts, j % k, exclusive) for j in range(n_rep))
        roles = ("drafter",) * k + ("target",) * n_hosts
        used = tuple(d_used) + (r * unit,) * n_hosts
    else:
        replicas = tuple(
            Replica(j, j % n_hosts, j % n_hosts if cfg.policy == "colocated" else None, r == 1)
            for j in range(n_rep))
        roles = ("pair" if cfg.policy == "colocated" else "target",) * n_hosts
        used = (r * unit,) * n_hosts
    return Placement(replicas, roles, used, usable, mem)
