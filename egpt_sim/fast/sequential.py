"""Strategies whose two models never run at once: ``target_only`` and ``drafter_only``
(closed sums over the decode streams) and ``serial_sd`` (a lock-step loop over target passes)."""

from __future__ import annotations

import numpy as np

from ..sim import rules
from .batch import _Batch, _empty_counters
from .cache import _BankCache


def _target_only_one(bc: _BankCache, N: int) -> dict:
    out = _empty_counters(bc.n)
    tpe = bc.phase_sum["target"]
    ct = bc.csum("target_decode", N - 1)
    out["latency_ms"] = tpe + ct[:, N - 1]
    out["ttft_ms"] = tpe.copy()
    out["target_prefill_end_ms"] = tpe.copy()
    out["target_passes"][:] = N - 1
    return out


def _drafter_only_one(bc: _BankCache, N: int) -> dict:
    out = _empty_counters(bc.n)
    dpe = bc.phase_sum["drafter"]
    cd = bc.csum("drafter_decode", N - 1)
    out["latency_ms"] = dpe + cd[:, N - 1]
    out["ttft_ms"] = dpe.copy()
    out["drafter_prefill_end_ms"] = dpe.copy()
    return out


def _target_only(b: _Batch) -> list[dict]:
    return [_target_only_one(b.bc, int(N)) for N in b.N_s]


def _drafter_only(b: _Batch) -> list[dict]:
    return [_drafter_only_one(b.bc, int(N)) for N in b.N_s]


def _baseline(bc: _BankCache, N: int) -> np.ndarray:
    """target_only latency on the same draws (cached per bank and N)."""
    base = bc.baseline.get(N)
    if base is None:
        base = bc.baseline[N] = _target_only_one(bc, N)["latency_ms"]
    return base


def _serial_sd(b: _Batch) -> list[dict]:
    """Drafter prefill, target prefill, then {draft want; verify} — nothing overlaps.

    After every target pass the drafter re-synchronises (a pass over k drafts accepts
    L <= k; keeping would need drafter_pos = c + k >= c + L + 1 and run_end >= c + L + 1,
    i.e. L < k and L = k), so each loop iteration starts with no drafts available and
    drafts exactly ``want = rules.block_size(c, gamma, N)``; pass j of every request is column j.
    """
    bc, R, req, rows = b.bc, b.R, b.req, b.rows
    Nr, gr = b.Nr, b.gr
    out = _empty_counters(R)
    dpe = bc.phase_sum["drafter"][req]
    tpe = dpe + bc.phase_sum["target"][req]
    out["drafter_prefill_end_ms"] = dpe
    out["target_prefill_end_ms"] = tpe.copy()
    out["ttft_ms"] = tpe.copy()
    rt = b.runs(b.Nmax + 2)
    # drafter prefill drafts position 1; target prefill commits it (commit(0))
    r0 = rt[:, 0].astype(np.int64)
    accepted = rules.d1_matches(1, r0).astype(np.int64)  # d1 == t1 counts as accepted
    window_acc = accepted.copy()
    _, committed, keep = rules.commit_pass(0, r0, 1, 0, Nr)  # committed = 1 (N >= 1)
    run_end = np.where(keep, r0, committed + rt[:, 1])  # else re-sync at position 1
    runs_used = np.where(keep, 1, 2)
    out["window_drafts"][:] = 1
    t = tpe.copy()
    steps = np.zeros(R, dtype=np.int64)
    verify_passes = np.zeros(R, dtype=np.int64)
    passes = np.zeros(R, dtype=np.int64)
    if b.Nmax >= 2:
        cd = bc.csum("drafter_decode", b.gmax * (b.Nmax - 1) + 1)
        td = bc.stream("target_decode", b.Nmax - 1)
        vtab = b.vtab
        width = rt.shape[1] - 1
        for j in range(b.Nmax - 1):
            act = committed < Nr
            if not act.any():
                break
            want = np.where(act, rules.block_size(committed, gr, Nr), 0)
            t += cd[req, steps + want] - cd[req, steps]
            steps += want
            k = want  # rules.verify_size with exactly want drafts available (see docstring)
            ms = np.where(k > 0, vtab[rows, k], td[req, j])
            t = np.where(act, t + ms, t)
            L, c2, _ = rules.commit_pass(committed, run_end, committed + want, k, Nr)
            # window_drafts = 1 (d1 only): window_accepted stays d1 == t1 (min(L, 0) = 0 added)
            accepted += np.where(act, L, 0)
            verify_passes += act & (k > 0)
            passes += act
            # the drafter never keeps its lookahead here: re-sync after every pass (docstring)
            run_end = np.where(act, c2 + rt[rows, np.minimum(runs_used, width)], run_end)
            runs_used = runs_used + act
            committed = np.where(act, c2, committed)
    out["latency_ms"] = t
    out["drafted_tokens"] = 1 + steps
    out["accepted_tokens"] = accepted
    out["window_accepted"] = window_acc
    out["verify_passes"] = verify_passes
    out["target_passes"] = passes
    return b.split(out)
