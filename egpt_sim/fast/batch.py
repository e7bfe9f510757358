"""Scenarios stacked row-wise into one engine call (:class:`_Batch`), and the contention
rate tables of the stage codes the engines use."""

from __future__ import annotations

import numpy as np

from ..sim import rules
from ..sim.config import SimConfig
from ..sim.draws import DrawBank
from ..sim.rules import contention_for, cpu_lane_for
from ..traces.traceset import PREFILL_PHASE_STAGES, TraceSet
from .cache import _acc_key, _bank_cache, _plan, _source


_COUNTERS = ("drafted_tokens", "window_drafts", "wasted_drafts", "accepted_tokens",
             "window_accepted", "verify_passes", "target_passes")


class _Batch:
    """Scenarios of one strategy (and one GPU placement) stacked row-wise: S scenarios x
    n requests = R rows; row r is request ``req[r]`` of scenario ``sid[r]``. Stacking
    amortises numpy's per-call overhead; every per-scenario constant is a per-row array."""

    def __init__(self, cfgs: list[SimConfig], traces: TraceSet, bank: DrawBank):
        c0 = cfgs[0]
        self.cfgs = cfgs
        self.strategy = c0.strategy
        self.contention = [contention_for(c, traces) for c in cfgs]
        self.lanes = [cpu_lane_for(c, traces) for c in cfgs]
        self.shared = _contended(c0, self.contention[0])  # the two roles can slow each other
        self.bc = _bank_cache(bank)
        self.bank = bank
        self.n = n = bank.n_requests
        self.S = S = len(cfgs)
        self.R = S * n
        self.req = np.tile(np.arange(n), S)
        self.sid = np.repeat(np.arange(S), n)
        self.rows = np.arange(self.R)
        N_s = np.array([int(c.output_tokens) for c in cfgs], dtype=np.int64)
        g_s = np.array([int(c.gamma) for c in cfgs], dtype=np.int64)
        self.N_s, self.g_s = N_s, g_s
        self.Nmax = int(N_s.max())
        self.gmax = int(g_s.max())
        self.Nr = N_s[self.sid]
        self.gr = g_s[self.sid]
        lb_s = np.array([int(c.lookahead_blocks) for c in cfgs], dtype=np.int64)
        self.lb_r = lb_s[self.sid]
        la_s = lb_s * g_s
        self.lamax = int(la_s.max())
        self.sources = [_source(c, traces) for c in cfgs]
        # contended rates by (target stage code, drafter stage code), rules.contended_rate:
        # rt[s, tc, dc], rd[s, dc, tc]
        self.rt_pair, self.rd_pair = _rate_tables(self.contention)
        self.vtab = bank.verify_table(max(self.gmax, 1))[self.req]  # (R, >= gmax + 1) per-sample verify ms
        self.phase_t = bank.phase_ms["target"][self.req]
        self.phase_d = bank.phase_ms["drafter"][self.req]
        self.plans = ([_plan(c, traces, src, cm) for c, src, cm in zip(cfgs, self.sources, self.contention)]
                      if self.strategy == "adaptive_budget" else None)

    def runs(self, width: int) -> np.ndarray:
        """Stacked (R, width) run table: row r, column j = the j-th sync of that request."""
        tabs = [self.bc.run_table(_acc_key(c.acceptance), src, width)[:, :width]
                for c, src in zip(self.cfgs, self.sources)]
        return tabs[0] if len(tabs) == 1 else np.concatenate(tabs, axis=0)

    def split(self, out: dict) -> list[dict]:
        n = self.n
        return [{k: v[s * n:(s + 1) * n] for k, v in out.items()} for s in range(self.S)]


# stage codes of the rate tables: target 0..3 prefill phase, 4 verify, 5 decode step;
# drafter 0..3 prefill phase, 4 draft step (measured as decode_step)
_T_CODES = PREFILL_PHASE_STAGES + ("verify", "decode_step")

_D_CODES = PREFILL_PHASE_STAGES + ("draft_step",)


def _rate_tables(models) -> tuple[np.ndarray, np.ndarray]:
    """Per scenario: rate of the target at code tc beside the drafter at code dc, and the
    reverse (:func:`egpt_sim.sim.rules.contended_rate`: 1 for a CPU stage; beside a CPU stage, its
    measured host factor or 1)."""
    S = len(models)
    rt = np.ones((S, len(_T_CODES), len(_D_CODES)))
    rd = np.ones((S, len(_D_CODES), len(_T_CODES)))
    for s, cm in enumerate(models):
        for i, ts in enumerate(_T_CODES):
            for j, ds in enumerate(_D_CODES):
                rt[s, i, j] = rules.contended_rate(cm, "target", ts, (ds,))
                rd[s, j, i] = rules.contended_rate(cm, "drafter", ds, (ts,))
    return rt, rd


def _contended(cfg: SimConfig, model) -> bool:
    """One GPU, or two GPUs whose host contention model is not all ones."""
    return int(cfg.n_gpus) == 1 or not model.is_trivial


def _empty_counters(n: int) -> dict:
    out = {k: np.zeros(n, dtype=np.int64) for k in _COUNTERS}
    for k in ("ttft_ms", "target_prefill_end_ms", "drafter_prefill_end_ms"):
        out[k] = np.full(n, np.nan)
    return out
