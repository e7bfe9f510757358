"""Strategies: how a request uses the drafter and the target. Selected by name.

Each strategy is a plain generator function ``strategy(ctx)`` registered with
:func:`register`; it composes the activities of :mod:`egpt_sim.processes`.

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
  :func:`window_budget_plan` from expected (median) quantities only: the ``b`` in
  0..min(gamma, N - 1) with the lowest expected latency, counting the drafter's CPU
  stages ahead of the target's (CPU lane), contention of its prefill and draft steps on
  a shared GPU (or host contention), the verify pass's overhead over a decode step
  (V(k) - D) and the saving D x P(run >= j + 1) of each verified draft. ``b = 0`` runs
  exactly ``target_only`` (the drafter is never started).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .processes import (
    RequestContext,
    drafter,
    drafter_prefill,
    draft_step,
    target_pass,
    target_prefill,
    verify_budget,
    prefill_phase,
    stage,
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
        yield from stage(ctx, "drafter", "decode_step", ctx.draws.decode_ms("drafter", i), tokens=1)
    s.committed = ctx.cfg.output_tokens


@register("serial_sd")
def serial_sd(ctx: RequestContext):
    s = ctx.state
    yield from drafter_prefill(ctx)
    yield from target_prefill(ctx)
    n = ctx.cfg.output_tokens
    while s.committed < n:
        want = min(ctx.cfg.gamma, n - s.committed - 1)
        while ctx.drafts_available() < want:
            yield from draft_step(ctx)
        yield from target_pass(ctx, verify_budget(ctx))


def _window_then(ctx: RequestContext, budget: Callable[[RequestContext], int], keep_drafting: bool):
    """Parallel prefill; verify the window's drafts; then AR decode or keep drafting."""
    s = ctx.state
    gamma = ctx.cfg.gamma
    lookahead = ctx.cfg.lookahead_blocks * gamma

    def cap(c: RequestContext) -> int:
        return budget(c) if not c.state.target_prefilled else (lookahead if keep_drafting else 0)

    ctx.drafter_cpu_done = ctx.env.event()  # CPU lane: the drafter's CPU stages go first
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
    if b == 0:
        yield from target_only(ctx)
        return
    yield from _window_then(ctx, lambda c: b, keep_drafting=False)


def _pair_ms(a_ms: float, r_ms: float, f_a: float, f_r: float) -> float:
    """End of work ``a_ms`` running beside ``r_ms`` of peer work (factors f_a, f_r), ms."""
    if r_ms <= 0:
        return a_ms
    if r_ms * f_r <= a_ms * f_a:  # the peer ends first, then ``a`` runs alone
        return r_ms * f_r + (a_ms - r_ms * f_r / f_a)
    return a_ms * f_a


def expected_window(plan: dict, b: int) -> tuple[float, int, float]:
    """Timeline of the prefill window with budget ``b >= 1`` for one sample's times.

    A fluid replay of the two prefill phases and ``b - 1`` draft steps (CPU lane,
    contention factors of ``plan["factor"]``). Returns (target prefill end ms,
    drafts held then incl. d1, work ms left of the drafter's step in flight then).
    """
    f = plan["factor"]
    t_todo = [("vision_encode", plan["target_vision_ms"]), ("prefill", plan["target_prefill_ms"])]
    d_todo = [("vision_encode", plan["drafter_vision_ms"]), ("prefill", plan["drafter_prefill_ms"])]
    d_todo += [("decode_step", plan["drafter_step_ms"])] * (b - 1)
    now = plan["drafter_cpu_ms"]
    t_start = now + plan["target_cpu_ms"]
    t_cur, d_cur = None, list(d_todo.pop(0))
    drafts = 0
    while True:
        if t_cur is None and now >= t_start:
            t_cur = list(t_todo.pop(0))
        both = t_cur is not None and d_cur is not None
        rt = 1.0 / f("target", t_cur[0], d_cur[0]) if both else 1.0
        rd = 1.0 / f("drafter", d_cur[0], t_cur[0]) if both else 1.0
        dt = min(t_cur[1] / rt if t_cur else t_start - now, d_cur[1] / rd if d_cur else np.inf)
        now += dt
        if t_cur:
            t_cur[1] -= dt * rt
        if d_cur:
            d_cur[1] -= dt * rd
            if d_cur[1] <= 1e-9:
                drafts += d_cur[0] != "vision_encode"  # prefill drafts d1, each step one more
                d_cur = list(d_todo.pop(0)) if d_todo else None
        if t_cur and t_cur[1] <= 1e-9:
            if not t_todo:
                return now, drafts, (d_cur[1] if d_cur and d_cur[0] == "decode_step" else 0.0)
            t_cur = list(t_todo.pop(0))


def expected_latency_ms(plan: dict, b: int, n_tokens: int) -> float:
    """E[latency] of prefill_then_verify with window budget ``b`` for one recorded sample's
    stage times, ms (b = 0: target_only). With R0 the window's run (d1 matches iff R0 >= 1) and
    k = min(drafts - 1, N - 2) drafts verified when d1 matched::

        E = tau + P(R0>=1) (V(k) + x_v) + (1 - P(R0>=1)) (D + x_d) + (N - 2) D - D sum_{j<=k} P(R0 >= j+1)

    where x_* is the slow-down of the first pass by the drafter's step still in flight.
    """
    D, surv, f = plan["target_decode_ms"], plan["p_run_at_least"], plan["factor"]
    if b == 0:
        return plan["target_cpu_ms"] + plan["target_vision_ms"] + plan["target_prefill_ms"] + (n_tokens - 1) * D
    tau, drafts, r = expected_window(plan, b)
    if n_tokens == 1:
        return tau
    k = max(0, min(drafts - 1, b - 1, n_tokens - 2))
    dec = _pair_ms(D, r, f("target", "decode_step", "decode_step"), f("drafter", "decode_step", "decode_step"))
    if k == 0:
        return tau + dec + (n_tokens - 2) * D
    V = float(plan["verify_ms"][k])
    ver = _pair_ms(V, r, f("target", "verify", "decode_step"), f("drafter", "decode_step", "verify"))
    p1 = float(surv[1])
    saved = D * float(np.sum(surv[2: k + 2]))
    return tau + p1 * ver + (1.0 - p1) * dec + (n_tokens - 2) * D - saved


def window_budget_plan(plan: dict, gamma: int, n_tokens: int) -> tuple[int, dict[int, float]]:
    """adaptive_budget's choice: the budget b in 0..min(gamma, N - 1) with the lowest
    expected latency (mean over the recorded samples of :func:`expected_latency_ms`;
    ties: the smaller b), and the expected latency of every b, ms."""
    top = max(0, min(int(gamma), int(n_tokens) - 1))
    shared = {"p_run_at_least": plan["p_run_at_least"], "factor": plan["factor"]}
    exp = {b: float(np.mean([expected_latency_ms(s | shared, b, int(n_tokens)) for s in plan["samples"]]))
           for b in range(top + 1)}
    best = min(exp, key=lambda b: (exp[b], b))
    return best, exp
