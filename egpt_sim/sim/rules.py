"""The rules of one request, stated once: both engines call these functions.

The SimPy model (:mod:`egpt_sim.sim.processes`, :mod:`egpt_sim.sim.strategies`,
:mod:`egpt_sim.sim.gpu`) calls them with one request's numbers; the fast engine
(:mod:`egpt_sim.fast`) with numpy arrays over many requests. Every function is written with
element-wise numpy operations, so the two get the same answer by construction
(``tests/test_fastpath.py`` checks the engines agree on the same draws).

* **Contention** — which model applies (:func:`contention_for`: one GPU = the same-GPU
  model, two GPUs = the host model, strategies that never run both models at once = none)
  and how fast an activity runs beside the other role's (:func:`contended_rate`: 1 / the
  largest factor over the peer's running activities, 1 with no peer; a CPU stage is never
  slowed this way — its lane factor says how it shares the host — but with threads it can
  slow the peer's GPU stage, by the measured ``cpu_peer`` factor, else not). Work is
  alone-time ms: an activity with ``remaining`` ms of work runs ``remaining / rate`` ms of
  wall time (processor sharing).
* **CPU lane** — when both prefill phases run at once (:func:`cpu_lane_for`): on a
  ``serial`` lane the CPU stages (load, preprocess) of the two roles run one after the
  other, drafter first (the target waits :func:`lane_wait_ms`, the drafter's CPU stages);
  on an ``overlap`` lane both start at once, as the executor runs them, each CPU stage
  taking its alone time x its measured factor (:func:`lane_phase_ms`). Each role's GPU
  stages start as soon as its own CPU stages end. CPU stages never contend on the GPU.
* **Host phase of a pass** — a decode step, verify pass or draft step of alone time ``t``
  (:class:`egpt_sim.sim.draws.DrawBank`: GPU work + the serving loop's host gap ``g``) runs
  ``g`` on the host first — at rate 1, its GPU idle meanwhile — then ``t - g`` of GPU work
  at the contended rate (:func:`pass_phases_ms`). The peer sees the host phase as the pass
  itself: contention factors are fitted on a peer looping with its own host time, so its
  gap is part of what slows the other role, not a relief from it. Per contended target
  cycle beside a busy drafter: f x 7.26 + 0.39 = 15.71 ms (f = 2.11) vs 15.65-15.75 ms
  measured; the gap as contended GPU work gave 2.11 x (7.26 + 0.39) = 16.14 ms, the gap
  invisible to the peer (it relieved the target during each drafter gap) 15.32 ms.
* **Commit / re-sync** — after each synchronisation at position ``c`` the acceptance
  source draws a run length R (``run_end = c + R``). A target pass over k drafts accepts
  ``L = min(run_end - committed, k)`` and commits L + 1 tokens (never past N); the drafter
  keeps its lookahead only if it has drafted the new last committed position and that
  draft matched, else it re-synchronises (:func:`commit_pass`, :func:`resync`). The
  drafter's d1 counts as accepted when it equals the target's prefill token
  (:func:`d1_matches`).
* **Verify size** — a target pass verifies the drafts available, at most a limit (gamma,
  or the window budget), never past position N - 1 (:func:`verify_size`); serial_sd drafts
  a block of :func:`block_size` drafts before each pass.
* **Window budget** — before the target's prefill ends the drafter drafts while fewer than
  the window budget are waiting; afterwards up to ``lookahead_blocks * gamma`` ahead
  (parallel_sd) or not at all (:func:`after_prefill_cap`, :func:`draft_cap`,
  :func:`drafter_exits`, :func:`drafter_drafts`, :func:`draft_limit`).

Scalars stay Python numbers (the SimPy model's hot path); arrays go through numpy.
"""

from __future__ import annotations

import numpy as np

from ..traces.contention import ContentionModel, CpuLane
from ..traces.schema import CPU_STAGES

EPS_MS = 1e-9  # a GPU activity with no more alone-time work than this takes no time
OVERLAPPING = ("prefill_then_verify", "parallel_sd", "adaptive_budget")  # both models run at once


_NUMPY_OPS, _BUILTIN_OPS = (np.minimum, np.maximum), (min, max)


def _ops(*xs):
    """(minimum, maximum) for these operands: numpy's for arrays, the builtins for numbers."""
    for x in xs:
        if isinstance(x, np.ndarray):
            return _NUMPY_OPS
    return _BUILTIN_OPS


# --------------------------------------------------------------------------- contention


def contention_for(cfg, traces) -> ContentionModel:
    """The contention model of ``cfg``'s domain (see :mod:`egpt_sim.traces.contention`).

    One GPU: same-GPU contention fitted from ``shared_gpu`` rows. Two or more GPUs: host
    contention (``separate_gpu`` rows; 1.0 by rule for processes; an explicit assumption
    of 1.0 where not measured). Strategies that never run both models at once, and
    ``contention='none'``, get no contention. Unmeasured factors follow
    ``cfg.contention_missing``.
    """
    if cfg.contention == "none":
        return ContentionModel.none("contention='none'")
    if cfg.strategy not in OVERLAPPING:
        return ContentionModel.none(f"not applicable: {cfg.strategy} never runs both models at once")
    placement = "shared_gpu" if cfg.n_gpus == 1 else "separate_gpu"
    model = traces.contention(placement, cfg.contention_concurrency, cfg.contention_missing)
    return model.scaled(cfg.contention_scale)


def contended_rate(model: ContentionModel, role: str, stage: str, peer_stages) -> float:
    """Speed of ``role``'s ``stage`` (alone = 1) while the other role runs ``peer_stages``:
    1 / the largest factor over the peer's stages (a CPU peer stage: the model's measured
    host factor beside it, else 1); 1 with none, and for a CPU stage."""
    return min((contended_rate_of(model.contention_factor, role, stage, p) for p in peer_stages), default=1.0)


def contended_rate_of(factor, role: str, stage: str, peer_stage: str) -> float:
    """Speed of ``role``'s ``stage`` beside one peer activity, ``factor`` =
    ``ContentionModel.contention_factor`` (also the budget planner's fluid replay): 1 for a CPU
    stage and beside ``"none"`` (no peer, or one waiting for the CPU lane)."""
    if stage in CPU_STAGES or stage == "none" or peer_stage == "none":
        return 1.0
    return 1.0 / factor(role, stage, peer_stage)


def cpu_lane_for(cfg, traces) -> CpuLane:
    """The CPU lane of ``cfg`` (:class:`egpt_sim.traces.contention.CpuLane`): ``none`` for
    strategies that never run both prefill phases at once; else ``cfg.cpu_lane``, where
    ``auto`` takes what the concurrent stage runs of the domain measured."""
    if cfg.strategy not in OVERLAPPING:
        return CpuLane("none", {}, f"not applicable: {cfg.strategy} runs one prefill phase")
    placement = "shared_gpu" if cfg.n_gpus == 1 else "separate_gpu"
    if cfg.cpu_lane == "serial":
        return CpuLane("serial", {}, "cpu_lane='serial'")
    lane = traces.cpu_lane(placement, cfg.contention_concurrency)
    if cfg.cpu_lane == "overlap" and lane.mode != "overlap":
        return CpuLane("overlap", {}, f"cpu_lane='overlap', factors assumed 1 ({lane.source})")
    return lane


def lane_phase_ms(phase_ms, multipliers):
    """Prefill-phase stage times (..., 4) of a role in its lane: CPU stages x their factor."""
    return phase_ms * multipliers


def lane_wait_ms(serial, drafter_phase_ms):
    """How long the target's CPU stages wait for the drafter's: its CPU stages on a serial
    lane, 0 on an overlapping one (``serial``: bool or bool array)."""
    return np.where(serial, cpu_stages_ms(drafter_phase_ms), 0.0)


def cpu_stages_ms(phase_ms):
    """How long a role's CPU stages hold the CPU lane (load + preprocess of a prefill phase,
    ``phase_ms[..., :2]``, ms): for the drafter, how long the target's CPU stages wait."""
    return phase_ms[..., 0] + phase_ms[..., 1]


def pass_phases_ms(pass_ms, gap_ms):
    """(host ms, GPU work ms) of a pass whose alone time ``pass_ms`` includes the serving
    loop's host gap ``gap_ms`` (never more host time than the pass has)."""
    lo, _ = _ops(pass_ms, gap_ms)
    host = lo(gap_ms, pass_ms)
    return host, pass_ms - host


# --------------------------------------------------------------------------- tokens


def resync(committed, run):
    """(drafter_pos, run_end) after a re-synchronisation at ``committed`` with run length ``run``."""
    return committed, committed + run


def d1_matches(drafter_pos, run_end):
    """The drafter's prefill draft (position 1) equals the target's first token."""
    return (drafter_pos >= 1) & (run_end >= 1)


def commit_pass(committed, run_end, drafter_pos, k, n_tokens):
    """A target pass over ``k`` drafts: (accepted L, committed after, drafter keeps its lookahead)."""
    lo, hi = _ops(committed, run_end, k, n_tokens)
    accepted = hi(0, lo(run_end - committed, k))
    after = lo(committed + accepted + 1, n_tokens)
    keeps = (drafter_pos >= after) & (run_end >= after)
    return accepted, after, keeps


def window_accepted_after(first_verify_accepted, window_drafts):
    """Drafts of the window accepted beyond d1 by the first verify pass (when d1 matched)."""
    lo, _ = _ops(first_verify_accepted, window_drafts)
    return lo(first_verify_accepted, window_drafts - 1)


def verify_size(drafter_pos, committed, limit, n_tokens):
    """Drafts a target pass verifies now: those available, at most ``limit``, never past N - 1."""
    lo, hi = _ops(drafter_pos, committed, limit, n_tokens)
    available = hi(0, drafter_pos - committed)
    return hi(0, lo(lo(available, limit), n_tokens - committed - 1))


def block_size(committed, gamma, n_tokens):
    """Drafts serial_sd drafts before each verify pass: gamma, never past position N - 1."""
    lo, _ = _ops(committed, gamma, n_tokens)
    return lo(gamma, n_tokens - committed - 1)


# --------------------------------------------------------------------------- the window


def after_prefill_cap(keep_drafting: bool, lookahead_blocks, gamma):
    """Drafts the drafter may hold once the target's prefill ended: ``lookahead_blocks x gamma``
    ahead while it keeps drafting (parallel_sd), else none (it stops)."""
    return lookahead_blocks * gamma if keep_drafting else 0 * gamma


def draft_cap(target_prefilled, window_budget, after_prefill):
    """Drafts the drafter may hold ahead of the committed tokens: the window budget until the
    target's prefill ends, then ``after_prefill``."""
    if isinstance(target_prefilled, np.ndarray):
        return np.where(target_prefilled, after_prefill, window_budget)
    return after_prefill if target_prefilled else window_budget


def drafter_exits(stopped, committed, n_tokens):
    """The drafter loop ends: stopped, or every token committed."""
    return stopped | (committed >= n_tokens)


def drafter_drafts(drafter_pos, committed, cap, n_tokens):
    """The drafter drafts one more token: fewer than ``cap`` waiting and not at position N."""
    _, hi = _ops(drafter_pos, committed)
    return (hi(0, drafter_pos - committed) < cap) & (drafter_pos < n_tokens)


def draft_limit(committed, cap, n_tokens):
    """The furthest position the drafter may draft to (with drafter_pos >= committed,
    :func:`drafter_drafts` is drafter_pos < this)."""
    lo, _ = _ops(committed, cap, n_tokens)
    return lo(committed + cap, n_tokens)
