"""What-if planning: what acceptance must an adapter reach for a target speedup?

``required_acceptance`` inverts the simulator by bisection over the acceptance level:
either the i.i.d. per-token match rate alpha, or a scale factor applied to a
per-position conditional acceptance curve (e.g. one measured from traces). The
simulated speedup (ratio of mean latencies vs ``target_only`` on the same draws)
is non-decreasing in the level because runs are drawn by inverse CDF from common
uniforms (see :mod:`egpt_sim.sim.draws`).

``seed_scenarios`` re-evaluates the seed reports' adapter scenarios (27.9 %, 50 %,
70 %, 80 %) with prefix acceptance and measured/fitted costs instead of
``drafts x alpha`` hand arithmetic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..sim.config import SimConfig
from ..sim.runner import draw_bank
from ..traces.acceptance import CurveAcceptance, acceptance_by_position, expected_accepted_iid
from ..traces.traceset import TraceSet
from .labels import SPEEDUP, summary_row
from .sweep import _engine_fn


def _speedup(cfg: SimConfig, traces: TraceSet, bank, engine: str) -> float:
    return summary_row(_engine_fn(engine)(cfg, traces, bank=bank).summary())[SPEEDUP]


def trace_curve(traces: TraceSet) -> tuple[float, ...]:
    """Conditional per-position acceptance rates measured in the trace set."""
    if traces.acceptance is None:
        raise ValueError(f"{traces.path}: no acceptance table; cannot derive a per-position curve")
    by_pos = acceptance_by_position(traces.acceptance)
    # positions no block reached (every earlier draft rejected) carry the last measured
    # rate forward rather than claiming the drafter could never match there
    rates = by_pos["conditional_accept_rate"].ffill().fillna(0.0).to_numpy()
    return tuple(float(r) for r in rates)


def required_acceptance(traces: TraceSet, target_speedup: float, output_tokens: int, n_gpus: int,
                        strategy: str = "prefill_then_verify", gamma: int = 8, n_requests: int = 300,
                        curve: Sequence[float] | None = None, seed: int = 0, tol: float = 1e-3,
                        engine: str = "auto", **config) -> dict:
    """Minimum acceptance level reaching ``target_speedup``.

    Without ``curve`` the level is the i.i.d. per-token match rate alpha in [0, 1];
    with ``curve`` it is the scale applied to that conditional curve, in [0, 1/min>0].
    Returns a dict with ``level`` (NaN when even perfect acceptance falls short),
    ``feasible``, ``speedup_at_level``, ``max_speedup`` and ``mean_accepted_prefix_at_gamma``
    = sum_{i=1..gamma} alpha^i (NaN for a curve or an unreachable target). ``target_only`` and
    ``drafter_only`` verify no drafts: asking them is a ValueError.
    """
    if not (target_speedup > 0 and np.isfinite(target_speedup)):
        raise ValueError(f"required_acceptance: target_speedup must be a finite number > 0 (got {target_speedup!r})")
    if strategy in ("target_only", "drafter_only"):
        raise ValueError(f"required_acceptance: strategy {strategy!r} verifies no drafts, so no acceptance level "
                         "changes its speedup; choose serial_sd, prefill_then_verify, parallel_sd or adaptive_budget")
    base = SimConfig(strategy=strategy, output_tokens=output_tokens, n_gpus=n_gpus, gamma=gamma,
                     n_requests=n_requests, seed=seed, **config)
    bank = draw_bank(base, traces)
    if curve is None:
        def cfg_at(x):
            return base.replace(acceptance=float(x))
        hi = 1.0
    else:
        c = tuple(float(a) for a in curve)
        positive = [a for a in c if a > 0]
        hi = 1.0 / min(positive) if positive else 1.0

        def cfg_at(x):
            return base.replace(acceptance=CurveAcceptance(c, scale=float(x)))
    max_speedup = _speedup(cfg_at(hi), traces, bank, engine)
    zero_speedup = _speedup(cfg_at(0.0), traces, bank, engine)
    out = {"target_speedup": target_speedup, "output_tokens": output_tokens, "n_gpus": n_gpus,
           "strategy": strategy, "gamma": gamma, "kind": "iid_alpha" if curve is None else "curve_scale",
           "max_speedup": max_speedup, "speedup_at_zero": zero_speedup}
    if zero_speedup >= target_speedup:
        level, sp = 0.0, zero_speedup
    elif max_speedup < target_speedup:
        level, sp = float("nan"), max_speedup
    else:
        lo, hi_ = 0.0, hi
        sp = max_speedup
        while hi_ - lo > tol:
            mid = 0.5 * (lo + hi_)
            s = _speedup(cfg_at(mid), traces, bank, engine)
            if s >= target_speedup:
                hi_, sp = mid, s
            else:
                lo = mid
        level = hi_
    out |= {"level": level, "feasible": not np.isnan(level), "speedup_at_level": sp}
    feasible_iid = curve is None and not np.isnan(level)
    out["mean_accepted_prefix_at_gamma"] = expected_accepted_iid(level, gamma) if feasible_iid else float("nan")
    return out


def required_acceptance_table(traces: TraceSet, target_speedup: float, output_tokens: Sequence[int],
                              n_gpus: Sequence[int], **kw) -> pd.DataFrame:
    """``required_acceptance`` over output lengths x GPU counts (one row each)."""
    rows = [required_acceptance(traces, target_speedup, n, g, **kw) for g in n_gpus for n in output_tokens]
    return pd.DataFrame(rows)


SEED_ALPHAS = {"seed adapter (27.9%)": 0.279, "target 50%": 0.5, "optimistic 70%": 0.7, "seed plan 80%": 0.8}


def seed_scenarios(traces: TraceSet, drafts_in_window: int = 26, output_tokens: int = 50,
                   strategies: Sequence[str] = ("prefill_then_verify", "parallel_sd", "adaptive_budget"),
                   n_gpus: Sequence[int] = (1, 2), n_requests: int = 300, engine: str = "auto") -> pd.DataFrame:
    """The seeds' adapter scenarios, evaluated correctly.

    Columns: ``seed_claim_accepted`` (= drafts x alpha, the seeds' arithmetic),
    ``prefix_expected_accepted`` (= sum_{i=1..drafts} alpha^i, prefix acceptance) and
    the simulated speedup per strategy and GPU count with fitted contention.
    """
    rows = []
    base = SimConfig(output_tokens=output_tokens, gamma=drafts_in_window, n_requests=n_requests)
    bank = draw_bank(base, traces)
    fn = _engine_fn(engine)
    for name, alpha in SEED_ALPHAS.items():
        for g in n_gpus:
            for strat in strategies:
                res = summary_row(fn(base.replace(strategy=strat, n_gpus=g, acceptance=alpha), traces, bank=bank).summary())
                rows.append({
                    "scenario": name, "alpha_per_token": alpha, "n_gpus": g, "strategy": strat,
                    "seed_claim_accepted": drafts_in_window * alpha,
                    "prefix_expected_accepted": expected_accepted_iid(alpha, drafts_in_window),
                    "sim_window_accepted_mean": res["window_accepted_mean_tokens"],
                    "sim_accepted_mean": res["accepted_mean_tokens"],
                    SPEEDUP: res[SPEEDUP],
                })
    return pd.DataFrame(rows)
