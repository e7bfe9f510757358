"""SimPy activities of one request: small generators named after what they model.

Covers: ``target_prefill``, ``drafter_prefill``, ``draft_step``, ``target_pass``
(a decode step when k = 0, a ``verify_pass`` of k drafts otherwise; each a ``pass_stage``:
the serving loop's host gap, then GPU work) and the ``drafter`` loop, sharing one
:class:`RequestState`.

Token bookkeeping (positions 1..N of the answer):

* ``committed`` tokens are final (target's). The target's prefill commits position 1.
* The drafter has drafted up to position ``drafter_pos``; its prefill drafts position 1
  and every further draft costs one decode step.
* After each synchronisation at position ``c`` the acceptance source draws a run length
  R: drafts for positions c+1..c+R match the target, position c+R+1 does not
  (``run_end = c + R``).
* A target pass over k drafts accepts ``L = min(run_end - committed, k)`` and commits
  L + 1 tokens. The drafter's d1, when it equals the target's prefill token t1, counts
  as accepted (it saves no pass), so ``window_accepted`` is the accepted prefix length
  of the window's block, the same quantity as ``accepted_len`` in acceptance traces. Afterwards the drafter keeps its lookahead only if it has drafted the
  new last committed position and that draft matched; otherwise it re-synchronises
  (its in-flight step, if any, finishes on the GPU and is discarded).

The rules — commit / re-sync, verify size, the drafter's cap, the CPU lane — are stated
once in :mod:`egpt_sim.sim.rules`, which the fast engine (:mod:`egpt_sim.fast`) calls too.
CPU lane (:func:`rules.cpu_lane_for`): when a strategy runs both prefill phases at once on a
``serial`` lane, the target's load starts when the drafter's preprocess ends
(:func:`cpu_lane_wait`); on an ``overlap`` lane both start at once and each CPU stage takes
its alone time x the lane's factor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from ..traces.contention import CpuLane, measured_stage
from ..traces.schema import CPU_STAGES
from ..traces.traceset import PREFILL_PHASE_STAGES
from . import rules
from .config import SimConfig
from .draws import RequestDraws
from .gpu import Gpu


@dataclass
class RequestState:
    committed: int = 0
    drafter_pos: int = 0
    run_end: int = 0
    runs_used: int = 0
    generation: int = 0  # bumped on every re-sync; stale drafts are discarded
    drafter_stopped: bool = False
    target_prefilled: bool = False
    drafter_prefilled: bool = False
    drafter_steps: int = 0
    target_passes: int = 0
    drafted: int = 0
    wasted_drafts: int = 0
    window_drafts: int = 0
    accepted: int = 0
    window_accepted: int = 0
    verify_passes: int = 0
    window_budget: int | None = None  # adaptive_budget's choice, fixed once made
    ttft_ms: float = float("nan")
    target_prefill_end_ms: float = float("nan")
    drafter_prefill_end_ms: float = float("nan")


@dataclass
class RequestContext:
    env: simpy.Environment
    cfg: SimConfig
    draws: RequestDraws
    target_gpu: Gpu
    drafter_gpu: Gpu
    state: RequestState = field(default_factory=RequestState)
    timeline: list[tuple] | None = None
    plan: dict | None = None  # expected (median) times for policies that plan ahead
    source: object = None  # AcceptanceSource mapping uniforms to run lengths
    drafter_cpu_done: simpy.Event | None = None  # serial CPU lane: set when the drafter's CPU stages end
    lane: CpuLane = field(default_factory=CpuLane)  # rules.cpu_lane_for(cfg, traces)
    _wakeup: simpy.Event | None = None

    # -- helpers ------------------------------------------------------------
    def gpu_of(self, role: str) -> Gpu:
        return self.target_gpu if role == "target" else self.drafter_gpu

    def record(self, role, activity, start, end, gpu, tokens=0):
        if self.timeline is not None:
            self.timeline.append((self.draws.request_id, role, activity, start, end, gpu, tokens))

    def drafts_available(self) -> int:
        return max(0, self.state.drafter_pos - self.state.committed)  # rules.verify_size's "available"

    def notify(self) -> None:
        """Wake the drafter loop (state changed: commit, stop)."""
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def wait_for_change(self) -> simpy.Event:
        self._wakeup = self.env.event()
        return self._wakeup

    def sync_drafter(self) -> None:
        """Drafter restarts from the committed prefix; a fresh acceptance run starts."""
        s = self.state
        u = np.array([self.draws.acceptance_u(s.runs_used)])
        run = int(self.source.runs(u, np.array([s.runs_used == 0]), np.array([self.draws.sample_u]))[0])
        s.drafter_pos, s.run_end = rules.resync(s.committed, run)
        s.runs_used += 1
        s.generation += 1

    def commit(self, k: int) -> int:
        """Book a target pass over k drafts; returns accepted L (:func:`rules.commit_pass`)."""
        s = self.state
        L, s.committed, keeps = rules.commit_pass(s.committed, s.run_end, s.drafter_pos, k, self.cfg.output_tokens)
        s.accepted += L
        if not keeps:
            self.sync_drafter()
        self.notify()
        return L


# -- activities ---------------------------------------------------------------


def stage(ctx: RequestContext, role: str, name: str, work_ms: float, tokens: int = 0):
    """One stage through the role's GPU's contention domain: a CPU stage runs at its own
    time (rate 1) but is seen by the peer's GPU stages (host contention of threads); a GPU
    stage at the contended rate."""
    env = ctx.env
    start = env.now
    gpu = ctx.gpu_of(role)
    yield from gpu.execute(role, measured_stage(name), work_ms)
    ctx.record(role, name, start, env.now, -1 if name in CPU_STAGES else gpu.index, tokens)


def pass_stage(ctx: RequestContext, role: str, name: str, pass_ms: float, tokens: int):
    """A decode step, verify pass or draft step of alone time ``pass_ms``: the serving loop's
    host gap first (rate 1, this role's GPU idle, the peer slowed as by the pass), then the
    GPU work at the contended rate (:func:`rules.pass_phases_ms`). The recorded span is the
    GPU part."""
    host_ms, gpu_ms = rules.pass_phases_ms(pass_ms, ctx.draws.pass_gap_ms(role))
    if host_ms > 0:
        yield from ctx.gpu_of(role).execute(role, measured_stage(name), host_ms, host=True)
    yield from stage(ctx, role, name, gpu_ms, tokens)


def cpu_lane_wait(ctx: RequestContext, role: str):
    """The target's CPU stages wait for the drafter's (one CPU lane, drafter first: the
    wait is :func:`rules.cpu_stages_ms` of the drafter's phase)."""
    ev = ctx.drafter_cpu_done
    if role == "target" and ev is not None and not ev.processed:
        yield ev


def prefill_phase(ctx: RequestContext, role: str):
    """Stages 1-4 of one role (load, preprocess, vision_encode, prefill), CPU lane first
    (CPU stages x the lane's factors, :func:`rules.lane_phase_ms`)."""
    yield from cpu_lane_wait(ctx, role)
    phase = rules.lane_phase_ms(ctx.draws.phase_ms[role], ctx.lane.multipliers(role, PREFILL_PHASE_STAGES))
    for name, ms in zip(PREFILL_PHASE_STAGES, phase):
        yield from stage(ctx, role, name, ms, tokens=1 if name == "prefill" else 0)
        if role == "drafter" and name == CPU_STAGES[-1] and ctx.drafter_cpu_done is not None:
            ctx.drafter_cpu_done.succeed()


def target_prefill(ctx: RequestContext):
    """Target stages 1-4; its last logits give answer position 1 (time to first token)."""
    yield from prefill_phase(ctx, "target")
    s = ctx.state
    s.target_prefilled = True
    s.target_prefill_end_ms = s.ttft_ms = ctx.env.now
    s.window_drafts = s.drafted
    if rules.d1_matches(s.drafter_pos, s.run_end):  # d1 equals t1: counted as accepted (saves no pass)
        s.accepted += 1
        s.window_accepted = 1
    ctx.commit(0)


def drafter_prefill(ctx: RequestContext):
    """Drafter stages 1-4; its last logits are the draft for position 1."""
    s = ctx.state
    gen = s.generation
    yield from prefill_phase(ctx, "drafter")
    s.drafter_prefilled = True
    s.drafter_prefill_end_ms = ctx.env.now
    if gen == s.generation and s.committed == 0:
        s.drafter_pos = 1
        s.drafted += 1
    ctx.notify()


def draft_step(ctx: RequestContext):
    """One drafter decode step = one draft token (discarded if a re-sync intervened)."""
    s = ctx.state
    gen = s.generation
    ms = ctx.draws.decode_ms("drafter", s.drafter_steps)
    s.drafter_steps += 1
    yield from pass_stage(ctx, "drafter", "draft_step", ms, tokens=1)
    if gen == s.generation:
        s.drafter_pos += 1
        s.drafted += 1
    else:
        s.wasted_drafts += 1


def target_pass(ctx: RequestContext, k: int):
    """A target forward after prefill: decode step (k = 0) or verify pass over k drafts."""
    s = ctx.state
    ms = ctx.draws.target_pass_ms(s.target_passes, k)
    s.target_passes += 1
    yield from pass_stage(ctx, "target", "verify" if k else "decode_step", ms, tokens=k + 1 if k else 1)
    first_pass_verify = k > 0 and s.target_passes == 1
    s.verify_passes += k > 0
    L = ctx.commit(k)
    if first_pass_verify and s.window_accepted == 1:  # d1 matched: add the window drafts accepted
        s.window_accepted += rules.window_accepted_after(L, s.window_drafts)


def drafter(ctx: RequestContext, cap_tokens):
    """Drafter loop: prefill, then draft while fewer than ``cap_tokens(ctx)`` drafts wait."""
    yield from drafter_prefill(ctx)
    s = ctx.state
    n = ctx.cfg.output_tokens
    while not rules.drafter_exits(s.drafter_stopped, s.committed, n):
        if rules.drafter_drafts(s.drafter_pos, s.committed, cap_tokens(ctx), n):
            yield from draft_step(ctx)
        else:
            yield ctx.wait_for_change()


def verify_budget(ctx: RequestContext, budget: int | None = None) -> int:
    """Drafts the target verifies now: available, at most gamma (or budget), never past N."""
    limit = ctx.cfg.gamma if budget is None else budget
    return rules.verify_size(ctx.state.drafter_pos, ctx.state.committed, limit, ctx.cfg.output_tokens)
