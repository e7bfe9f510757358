"""adaptive_budget's window budget, fixed at request start from expected quantities.

:func:`planning_inputs` gathers what a real scheduler could know before a request starts
(the recorded samples' stage times, the acceptance survival, the contention factors);
:func:`window_budget_plan` picks the budget ``b`` in 0..min(gamma, N - 1) with the lowest
expected latency (:func:`expected_latency_ms`, a fluid replay of the prefill window by
:func:`expected_window`). Both engines read the same plan: the SimPy strategy
(:func:`egpt_sim.sim.strategies.adaptive_budget`) and the fast engine (:mod:`egpt_sim.fast`).
"""

from __future__ import annotations

import numpy as np

from ..traces.contention import ContentionModel
from ..traces.traceset import PREFILL_PHASE_STAGES, TraceSet
from . import rules
from .config import SimConfig
from .draws import pass_gaps_ms


def planning_inputs(cfg: SimConfig, traces: TraceSet, source, contention: ContentionModel) -> dict:
    """What a real scheduler could know before a request starts — the recorded samples'
    stage times (CPU, vision, prefill of both roles paired as the draws pair them, mean
    decode step, verify curve; target passes with the serving loop's host gap added, the
    drafter's step and its gap apart: the window replays the gap as the engines' host phase),
    the acceptance survival P(R0 >= i), the contention factors — and adaptive_budget's window
    budget, the same for every request (:func:`egpt_sim.sim.budget.window_budget_plan`)."""
    cpu = 1.0 if cfg.include_cpu_stages else 0.0
    gap = pass_gaps_ms(cfg, traces)  # each pass's alone time includes the serving loop's host gap
    gap_t, gap_d = gap.get("target", 0.0), gap.get("drafter", 0.0)
    lane = rules.cpu_lane_for(cfg, traces)
    mult = {r: lane.multipliers(r, PREFILL_PHASE_STAGES) for r in ("target", "drafter")}
    tabs = traces.sample_tables
    t, d = tabs["target"], tabs["drafter"]
    gam, vmed, _ = traces.verify_curve
    where = {k: i for i, k in enumerate(d.keys)}
    d_mean = d.phase_ms.mean(axis=0)
    d_step = np.nanmean(d.decode_ms, axis=1)
    t_step = np.nanmean(t.decode_ms, axis=1)
    vcurve = t.verify_curves(cfg.gamma, (gam, vmed)) + gap_t
    samples = []
    for i, key in enumerate(t.keys):
        j = where.get(key, -1)
        dp = d.phase_ms[j] if j >= 0 else d_mean
        ds = d_step[d.own_decode[j]] if j >= 0 and d.own_decode[j] >= 0 else float(np.mean(d_step))
        ts = t_step[t.own_decode[i]] if t.own_decode[i] >= 0 else float(np.mean(t_step))
        dl, tl = rules.lane_phase_ms(dp, mult["drafter"]), rules.lane_phase_ms(t.phase_ms[i], mult["target"])
        samples.append({
            "target_cpu_ms": float(rules.cpu_stages_ms(t.phase_ms[i])) * cpu,  # alone (target_only)
            "target_lane_load_ms": float(tl[0]) * cpu, "target_lane_preprocess_ms": float(tl[1]) * cpu,
            "target_wait_ms": float(rules.lane_wait_ms(lane.mode == "serial", dl)) * cpu,
            "target_vision_ms": float(t.phase_ms[i, 2]), "target_prefill_ms": float(t.phase_ms[i, 3]),
            "drafter_load_ms": float(dl[0]) * cpu, "drafter_preprocess_ms": float(dl[1]) * cpu,
            "drafter_vision_ms": float(dp[2]) / cfg.drafter_speed,
            "drafter_prefill_ms": float(dp[3]) / cfg.drafter_speed,
            "drafter_step_ms": float(ds) / cfg.drafter_speed, "drafter_gap_ms": gap_d,
            "target_decode_ms": float(ts) + gap_t,
            "verify_ms": vcurve[i],
        })
    plan = {"samples": samples, "p_run_at_least": source.survival(cfg.gamma + 1),
            "factor": contention.contention_factor}
    plan["window_budget"], plan["expected_latency_ms"] = window_budget_plan(
        plan, cfg.gamma, cfg.output_tokens)
    if cfg.window_budget is not None:  # fixed by the caller (validation at the executor's budget):
        # the executor's window cap, min(gamma, b); a budget past N - 1 still drafts up to position N
        # (the verify pass takes N - 1), as prefill_then_verify does (measure.executor.RequestSpec)
        plan["window_budget"] = max(0, min(int(cfg.window_budget), cfg.gamma))
    return plan


def _pair_ms(a_ms: float, r_ms: float, f_a: float, f_r: float) -> float:
    """End of work ``a_ms`` running beside ``r_ms`` of peer work (factors f_a, f_r), ms."""
    if r_ms <= 0:
        return a_ms
    if r_ms * f_r <= a_ms * f_a:  # the peer ends first, then ``a`` runs alone
        return r_ms * f_r + (a_ms - r_ms * f_r / f_a)
    return a_ms * f_a


def expected_window(plan: dict, b: int) -> tuple[float, int, float]:
    """Timeline of the prefill window with budget ``b >= 1`` for one sample's times.

    A fluid replay of the two prefill phases and ``b - 1`` draft steps (CPU lane of the plan,
    contention factors of ``plan["factor"]``: a CPU stage runs at 1 and slows the peer's GPU
    stage by its host factor, as :func:`egpt_sim.sim.rules.contended_rate` says; a draft step's
    host gap runs at 1 and the target sees it as the step, as in
    :func:`egpt_sim.sim.rules.pass_phases_ms`). Returns (target prefill end ms, drafts held then
    incl. d1, alone ms left of the drafter's step in flight then, gap included).
    """
    f = plan["factor"]
    t_todo = [("none", plan["target_wait_ms"]), ("load", plan["target_lane_load_ms"]),
              ("preprocess", plan["target_lane_preprocess_ms"]), ("vision_encode", plan["target_vision_ms"]),
              ("prefill", plan["target_prefill_ms"])]  # "none": waiting for the CPU lane
    # the drafter's items: (activity, alone ms, host phase of a draft step)
    d_todo = [("load", plan["drafter_load_ms"], False), ("preprocess", plan["drafter_preprocess_ms"], False),
              ("vision_encode", plan["drafter_vision_ms"], False), ("prefill", plan["drafter_prefill_ms"], False)]
    gap, step = rules.pass_phases_ms(plan["drafter_step_ms"] + plan["drafter_gap_ms"], plan["drafter_gap_ms"])
    d_todo += [("decode_step", gap, True), ("decode_step", step, False)] * (b - 1)
    now, drafts = 0.0, 0
    t_cur, d_cur = list(t_todo.pop(0)), list(d_todo.pop(0))
    while True:
        peer_d = d_cur[0] if d_cur is not None else "none"
        rt = rules.contended_rate_of(f, "target", t_cur[0], peer_d)
        rd = rules.contended_rate_of(f, "drafter", peer_d, t_cur[0]) if d_cur and not d_cur[2] else 1.0
        dt = min(t_cur[1] / rt, d_cur[1] / rd if d_cur else np.inf)
        now += dt
        t_cur[1] -= dt * rt
        if d_cur:
            d_cur[1] -= dt * rd
            if d_cur[1] <= 1e-9:
                # prefill drafts d1, each step's GPU work one more
                drafts += d_cur[0] in ("prefill", "decode_step") and not d_cur[2]
                d_cur = list(d_todo.pop(0)) if d_todo else None
        if t_cur[1] <= 1e-9:
            if not t_todo:
                return now, drafts, _step_left_ms(d_cur, step)
            t_cur = list(t_todo.pop(0))


def _step_left_ms(d_cur, step_ms: float) -> float:
    """Alone ms left of the drafter's draft step in flight (its GPU work still to come when in
    its host gap); 0 when it is in no draft step."""
    if not d_cur or d_cur[0] != "decode_step":
        return 0.0
    return d_cur[1] + step_ms if d_cur[2] else d_cur[1]


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
