"""Strategies: how a request uses the drafter and the target. Selected by name.

Each strategy is a plain generator function ``strategy(ctx)`` registered with
:func:`register`; it composes the activities of :mod:`egpt_sim.sim.processes`.

* ``target_only`` — Video-LLaVA alone: stages 1-4, then N-1 decode steps. The baseline.
* ``drafter_only`` — EventGPT alone (its own answer, for reference; not lossless).
* ``serial_sd`` — classic speculative decoding: drafter stages 1-4, target stages 1-4,
  then loop {drafter drafts gamma tokens; target verifies them in one pass}.
* ``prefill_then_verify`` — both prefills start together; the drafter drafts (up to
  gamma) until the target's prefill ends; one verify pass; then target AR decode.
* ``parallel_sd`` — as above, then the drafter keeps drafting (up to
  ``lookahead_blocks * gamma`` ahead) while the target verifies (PEARL-style).
* ``adaptive_budget`` — prefill_then_verify whose window budget ``b`` (drafts held at the
  end of the target's prefill, d1 included) is chosen at request start by
  :func:`egpt_sim.sim.budget.window_budget_plan` from expected (median) quantities only: the ``b`` in
  0..min(gamma, N - 1) with the lowest expected latency, counting the drafter's CPU
  stages ahead of the target's (CPU lane), contention of its prefill and draft steps on
  a shared GPU (or host contention), the verify pass's overhead over a decode step
  (V(k) - D) and the saving D x P(run >= j + 1) of each verified draft. ``b = 0`` runs
  exactly ``target_only`` (the drafter is never started).
"""

from __future__ import annotations

from typing import Callable

from ..traces.contention import CpuLane
from . import rules
from .processes import (
    RequestContext,
    drafter,
    drafter_prefill,
    draft_step,
    target_pass,
    target_prefill,
    verify_budget,
    prefill_phase,
    pass_stage,
)

StrategyFn = Callable[[RequestContext], object]

STRATEGIES: dict[str, StrategyFn] = {}


def register(name: str):
    def deco(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = fn
        return fn
    return deco


def get(name: str) -> StrategyFn:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; registered: {sorted(STRATEGIES)}") from None


def _decode_rest(ctx: RequestContext):
    while ctx.state.committed < ctx.cfg.output_tokens:
        yield from target_pass(ctx, 0)


@register("target_only")
def target_only(ctx: RequestContext):
    ctx.state.drafter_stopped = True
    yield from target_prefill(ctx)
    yield from _decode_rest(ctx)


@register("drafter_only")
def drafter_only(ctx: RequestContext):
    s = ctx.state
    yield from prefill_phase(ctx, "drafter")
    s.ttft_ms = s.drafter_prefill_end_ms = ctx.env.now
    for i in range(ctx.cfg.output_tokens - 1):
        yield from pass_stage(ctx, "drafter", "decode_step", ctx.draws.decode_ms("drafter", i), tokens=1)
    s.committed = ctx.cfg.output_tokens


@register("serial_sd")
def serial_sd(ctx: RequestContext):
    s = ctx.state
    yield from drafter_prefill(ctx)
    yield from target_prefill(ctx)
    n = ctx.cfg.output_tokens
    while s.committed < n:
        want = rules.block_size(s.committed, ctx.cfg.gamma, n)
        while ctx.drafts_available() < want:
            yield from draft_step(ctx)
        yield from target_pass(ctx, verify_budget(ctx))


def _window_then(ctx: RequestContext, budget: Callable[[RequestContext], int], keep_drafting: bool):
    """Parallel prefill; verify the window's drafts; then AR decode or keep drafting."""
    s = ctx.state
    after_prefill = rules.after_prefill_cap(keep_drafting, ctx.cfg.lookahead_blocks, ctx.cfg.gamma)

    def cap(c: RequestContext) -> int:
        return rules.draft_cap(c.state.target_prefilled, budget(c), after_prefill)

    if ctx.lane.mode == "serial":
        ctx.drafter_cpu_done = ctx.env.event()  # serial CPU lane: the drafter's CPU stages go first
    ctx.env.process(drafter(ctx, cap))
    yield from target_prefill(ctx)
    if not keep_drafting:
        s.drafter_stopped = True
        ctx.notify()
        k = verify_budget(ctx, budget(ctx))
        if k > 0:
            yield from target_pass(ctx, k)
        yield from _decode_rest(ctx)
        return
    while s.committed < ctx.cfg.output_tokens:
        yield from target_pass(ctx, verify_budget(ctx))
    s.drafter_stopped = True
    ctx.notify()


@register("prefill_then_verify")
def prefill_then_verify(ctx: RequestContext):
    yield from _window_then(ctx, lambda c: c.cfg.gamma, keep_drafting=False)


@register("parallel_sd")
def parallel_sd(ctx: RequestContext):
    yield from _window_then(ctx, lambda c: c.cfg.gamma, keep_drafting=True)


@register("adaptive_budget")
def adaptive_budget(ctx: RequestContext):
    b = int(ctx.plan["window_budget"])  # decided from expected quantities (runner.planning_inputs)
    ctx.state.window_budget = b
    if b == 0:  # the drafter is never started: one prefill phase, no CPU lane
        ctx.lane = CpuLane("none", {}, "adaptive_budget with window budget 0")
        yield from target_only(ctx)
        return
    yield from _window_then(ctx, lambda c: b, keep_drafting=False)
