"""The window engine: ``prefill_then_verify``, ``adaptive_budget`` and ``parallel_sd``, the
strategies whose drafter drafts while the target prefills (see :mod:`egpt_sim.fast`)."""

from __future__ import annotations

import numpy as np

from ..traces.traceset import PREFILL_PHASE_STAGES
from .batch import _Batch


_EPS_MS = 1e-9  # egpt_sim.sim.gpu._EPS_MS: a GPU activity with no more work than this takes no time

_GPU_STAGE = tuple(s not in ("load", "preprocess") for s in PREFILL_PHASE_STAGES)


# target program counter: 0..3 prefill-phase stages, 4 = target pass, 5 = done, 6 = parked
# drafter program counter: 0..3 prefill-phase stages, 4 = draft step, 5 = idle (waiting), 6 = exited
_T_PASS, _T_DONE, _T_PARKED = 4, 5, 6

_D_STEP, _D_IDLE, _D_EXIT = 4, 5, 6


def _window_engine(b: _Batch, aggregate: bool = True) -> list[dict]:
    """prefill_then_verify / adaptive_budget / parallel_sd (strategies._window_then).

    ``aggregate=False`` runs the plain event loop to the end (one completion per
    request per iteration); ``True`` switches each request to the per-pass loop once
    its drafter is past its prefill and its target in a pass (same semantics, fewer
    iterations; both are tested against SimPy).
    """
    bc, R, req, sid = b.bc, b.R, b.req, b.sid
    Nr, gr = b.Nr, b.gr
    keep_drafting = b.strategy == "parallel_sd"
    adaptive = b.strategy == "adaptive_budget"
    cap_after = b.la_r if keep_drafting else np.zeros(R, dtype=np.int64)
    shared = b.shared
    inf = np.inf

    phase_t, phase_d = b.phase_t, b.phase_d
    rt_pair, rd_pair = b.rt_pair, b.rd_pair
    vtab = b.vtab
    td = bc.stream("target_decode", max(b.Nmax - 1, 1))
    rt = b.runs(b.Nmax + 2)
    dd_width = [0]
    dd = [None]
    dd_lo = [0.0]  # min over the generated drafter steps (bounds steps per pass)

    def drafter_stream(need):
        if need > dd_width[0]:
            w = max(need, 2 * b.Nmax + 2 * b.lamax + 64)
            dd[0] = bc.stream("drafter_decode", w)
            dd_width[0] = dd[0].shape[1]
            dd_lo[0] = bc.stream_min("drafter_decode", dd_width[0])
        return dd[0]

    drafter_stream(1)

    # ---- state (run_request: initial sync at position 0, then generation reset to 0)
    now = np.zeros(R)
    latency = np.full(R, np.nan)
    tpc = np.zeros(R, dtype=np.int64)
    # CPU lane (processes module docstring): the target's load starts when the drafter's
    # preprocess ends, so its first CPU stage carries that wait
    tw = (phase_d[:, 0] + phase_d[:, 1]) + phase_t[:, 0]
    tgpu = np.full(R, _GPU_STAGE[0])
    kcur = np.zeros(R, dtype=np.int64)
    dpc = np.zeros(R, dtype=np.int64)
    dw = phase_d[:, 0].copy()
    dgpu = np.full(R, _GPU_STAGE[0])
    if _GPU_STAGE[0]:
        tw[tw <= _EPS_MS] = 0.0
        dw[dw <= _EPS_MS] = 0.0

    committed = np.zeros(R, dtype=np.int64)
    dpos = np.zeros(R, dtype=np.int64)
    run_end = rt[:, 0].astype(np.int64)
    runs_used = np.ones(R, dtype=np.int64)
    generation = np.zeros(R, dtype=np.int64)
    step_gen = np.zeros(R, dtype=np.int64)
    stopped = np.zeros(R, dtype=bool)
    tpref = np.zeros(R, dtype=bool)
    dsteps = np.zeros(R, dtype=np.int64)
    tpasses = np.zeros(R, dtype=np.int64)
    drafted = np.zeros(R, dtype=np.int64)
    wasted = np.zeros(R, dtype=np.int64)
    window_drafts = np.zeros(R, dtype=np.int64)
    accepted = np.zeros(R, dtype=np.int64)
    window_acc = np.zeros(R, dtype=np.int64)
    verify_passes = np.zeros(R, dtype=np.int64)
    if adaptive:  # strategies.adaptive_budget: fixed per scenario at request start (b >= 1 here)
        budget = np.array([int(p["window_budget"]) for p in b.plans], dtype=np.int64)[sid]
    else:
        budget = gr.copy()
    tpe = np.full(R, np.nan)
    dpe = np.full(R, np.nan)
    n_done = 0

    def rates(t_sel, d_sel):
        """Contended rates of the target / drafter activities of requests ``t_sel``."""
        tc = np.where(tpc[t_sel] < _T_PASS, tpc[t_sel], np.where(kcur[t_sel] > 0, 4, 5))
        dc = np.minimum(dpc[d_sel], _D_STEP)
        s_ = sid[t_sel]
        return rt_pair[s_, tc, dc], rd_pair[s_, dc, tc]

    # ---- helpers on index arrays
    def sync(s):
        c = committed[s]
        dpos[s] = c
        run_end[s] = c + rt[s, runs_used[s]]
        runs_used[s] += 1
        generation[s] += 1

    def commit(idx, k):
        c = committed[idx]
        L = np.maximum(0, np.minimum(run_end[idx] - c, k))
        c2 = np.minimum(c + L + 1, Nr[idx])
        committed[idx] = c2
        accepted[idx] += L
        bad = (dpos[idx] < c2) | (run_end[idx] < c2)
        if bad.any():
            sync(idx[bad])
        return L

    def start_pass(idx, k):
        j = tpasses[idx]
        ri = req[idx]
        ver = k > 0
        ms = np.where(ver, vtab[idx, k], td[ri, j])
        tpasses[idx] = j + 1
        tw[idx] = ms
        tgpu[idx] = True
        tpc[idx] = _T_PASS
        kcur[idx] = k

    def finish(idx):
        latency[idx] = now[idx]
        tpc[idx] = _T_DONE
        tw[idx] = 0.0
        dpc[idx] = _D_EXIT
        dw[idx] = inf
        dgpu[idx] = False
        tgpu[idx] = False

    def verify_k(idx, limit):
        c = committed[idx]
        avail = np.maximum(0, dpos[idx] - c)
        return np.maximum(0, np.minimum(np.minimum(avail, limit), Nr[idx] - c - 1))

    def drafter_next(idx):
        """The drafter loop's decision after a completion or a wake-up."""
        c = committed[idx]
        n_ = Nr[idx]
        ex = stopped[idx] | (c >= n_)
        cap = np.where(tpref[idx], cap_after[idx], budget[idx])
        p = dpos[idx]
        go = ~ex & (np.maximum(0, p - c) < cap) & (p < n_)
        g = idx[go]
        if g.size:
            i = dsteps[g]
            arr = drafter_stream(int(i.max()) + 1)
            dw[g] = arr[req[g], i]
            dsteps[g] = i + 1
            step_gen[g] = generation[g]
            dpc[g] = _D_STEP
            dgpu[g] = True
        rest = idx[~go]
        if rest.size:
            dpc[rest] = np.where(ex[~go], _D_EXIT, _D_IDLE)
            dw[rest] = inf
            dgpu[rest] = False

    def wake(idx):
        w = idx[dpc[idx] == _D_IDLE]
        if w.size:
            drafter_next(w)

    def pass_end(c):
        """Target pass ends (now): book it, then the next pass starts and the drafter wakes."""
        k = kcur[c]
        first_pass_verify = (k > 0) & (tpasses[c] == 1)
        verify_passes[c] += k > 0
        L = commit(c, k)
        sel = first_pass_verify & (window_acc[c] == 1)
        if sel.any():  # d1 matched: add the window drafts the first verify accepted
            f = c[sel]
            window_acc[f] += np.minimum(L[sel], window_drafts[f] - 1)
        done = committed[c] >= Nr[c]
        nd = 0
        if done.any():
            finish(c[done])
            nd = int(done.sum())
            c = c[~done]
        if c.size:
            start_pass(c, verify_k(c, gr[c]) if keep_drafting else np.zeros(c.size, dtype=np.int64))
            wake(c)
        return nd

    def finalize_ar():
        """prefill_then_verify / adaptive: drafter gone, target in AR decode -> closed sum."""
        f = np.flatnonzero((dpc == _D_EXIT) & (tpc == _T_PASS) & (kcur == 0))
        if f.size:
            rem = Nr[f] - committed[f] - 1  # decode steps after the current one
            j0 = tpasses[f]
            ct = bc.csum("target_decode", int((j0 + rem).max()))
            ri = req[f]
            end = now[f] + tw[f]  # drafter gone: the current step runs at rate 1
            now[f] = end + (ct[ri, j0 + rem] - ct[ri, j0])
            tpasses[f] = j0 + rem
            committed[f] = Nr[f]
            finish(f)
        return int(f.size)

    # ---------------------------------------------------------------- phase 1: events
    # One completion per request per iteration. With ``aggregate``, a request whose
    # target is in a pass while its drafter is past its prefill is parked (frozen in
    # time) and phase 2 takes it over.
    one = np.ones(R)
    parked_tw = np.zeros(R)
    parked_dw = np.full(R, inf)
    n_parked = 0
    while n_done + n_parked < R:
        # -- advance every request to its next completion (processor sharing on one GPU)
        if shared:
            both = tgpu & dgpu
            rt_, rd_ = one.copy(), one.copy()
            bi = np.flatnonzero(both)
            if bi.size:
                rt_[bi], rd_[bi] = rates(bi, bi)
            ttime = tw / rt_
            dtime = dw / rd_
        else:
            ttime = tw
            dtime = dw
        tev = ttime <= dtime  # tie: the target's completion is handled first
        dt = np.where(tev, ttime, dtime)
        now += dt
        if shared:
            tw -= dt * rt_
            dw -= dt * rd_
        else:
            tw -= dt
            dw -= dt

        te = np.flatnonzero(tev)
        de = np.flatnonzero(~tev)
        # -- target completions
        if te.size:
            pc = tpc[te]
            m = pc < 3
            if m.any():  # next prefill-phase stage
                a = te[m]
                npc = pc[m] + 1
                tpc[a] = npc
                w = phase_t[a, npc]
                gpu = npc >= 2
                tw[a] = np.where(gpu & (w <= _EPS_MS), 0.0, w)
                tgpu[a] = gpu
            m = pc == 3
            if m.any():  # target prefill ends: ttft, window drafts, d1 == t1, commit(0)
                a = te[m]
                tpref[a] = True
                tpe[a] = now[a]
                window_drafts[a] = drafted[a]
                d1 = (dpos[a] >= 1) & (run_end[a] >= 1)
                accepted[a] += d1
                window_acc[a] = np.where(d1, 1, window_acc[a])
                commit(a, 0)
                if keep_drafting:
                    k = verify_k(a, gr[a])
                else:
                    stopped[a] = True
                    k = verify_k(a, budget[a])
                done = committed[a] >= Nr[a]
                if done.any():
                    finish(a[done])
                    n_done += int(done.sum())
                    k, a = k[~done], a[~done]
                if a.size:
                    start_pass(a, k)
                    wake(a)
            m = pc == _T_PASS
            if m.any():  # target pass ends
                n_done += pass_end(te[m])
        # -- drafter completions
        if de.size:
            pc = dpc[de]
            m = pc == _D_STEP
            if m.any():
                c = de[m]
                same = step_gen[c] == generation[c]
                dpos[c] += same
                drafted[c] += same
                wasted[c] += ~same
                drafter_next(c)
            m = pc < 3
            if m.any():
                a = de[m]
                npc = pc[m] + 1
                dpc[a] = npc
                w = phase_d[a, npc]
                gpu = npc >= 2
                dw[a] = np.where(gpu & (w <= _EPS_MS), 0.0, w)
                dgpu[a] = gpu
            m = pc == 3
            if m.any():  # drafter prefill ends: its logits draft position 1
                a = de[m]
                dpe[a] = now[a]
                fresh = (generation[a] == 0) & (committed[a] == 0)
                dpos[a] = np.where(fresh, 1, dpos[a])
                drafted[a] += fresh
                drafter_next(a)
        if not keep_drafting:
            n_done += finalize_ar()
        if aggregate:
            pk = np.flatnonzero((tpc == _T_PASS) & (dpc >= _D_STEP))
            if pk.size:
                parked_tw[pk] = tw[pk]
                parked_dw[pk] = dw[pk]
                tpc[pk] = _T_PARKED
                tw[pk] = 0.0  # frozen: next completion "now", ignored (no handler for _T_PARKED)
                dw[pk] = inf
                n_parked += pk.size

    # ---------------------------------------------------------------- phase 2: per pass
    # Every live request: target in a pass (remaining work tw, contended rate trc),
    # drafter in a draft step (remaining dw), idle, or exited. Within a pass nothing
    # re-syncs, so the drafter runs its in-flight step, then up to m more steps back to
    # back (m = P - drafter_pos, P = min(committed + cap, N); 0 once stopped), all at
    # the contended rate while the target runs. The pass ends at T; the drafter
    # completions before T are booked, the step in flight at T carries over.
    if n_parked:
        pk = np.flatnonzero(tpc == _T_PARKED)
        tpc[pk] = _T_PASS
        tw[pk] = parked_tw[pk]
        dw[pk] = parked_dw[pk]
    A = np.flatnonzero(tpc == _T_PASS)
    while n_done < R:
        twA = tw[A]
        T = twA.copy()  # pass end (from now) when the drafter is not on the GPU
        busy = dpc[A] == _D_STEP
        B = A[busy]
        if B.size:
            nb = B.size
            rb = np.arange(nb)
            dwB = dw[B]
            genok = step_gen[B] == generation[B]
            c = committed[B]
            p1 = dpos[B] + genok
            nB = Nr[B]
            m = np.where(stopped[B], 0, np.maximum(0, np.minimum(c + cap_after[B], nB) - p1))
            twB = twA[busy]
            if shared:
                rtc, rdc = rates(B, B)  # target pass beside a draft step
                tmax = twB / rtc  # pass end if the drafter stays busy throughout
            else:
                rdc = 1.0
                tmax = twB
            mmax = int(m.max())
            if mmax:
                # only steps that can finish within the longest pass matter: kb columns
                dd_min = dd_lo[0]
                kb = min(mmax, 1 + int(np.ceil(float((tmax * rdc).max()) / dd_min))) if dd_min > 0 else mmax
                rB = req[B]
                while True:
                    cols = dsteps[B][:, None] + np.arange(kb)
                    arr = drafter_stream(int(cols.max()) + 1)
                    W = arr[rB[:, None], cols]
                    W[np.arange(kb)[None, :] >= m[:, None]] = inf
                    cum = np.empty((nb, kb + 1))
                    cum[:, 0] = dwB
                    np.cumsum(W, axis=1, out=cum[:, 1:])
                    cum[:, 1:] += dwB[:, None]
                    # truncation is exact only if a request with m > kb is still busy at
                    # tmax (then its pass ends at tmax and q <= kb); else widen and redo
                    if kb < mmax and ((m > kb) & (cum[:, kb] <= tmax * rdc)).any():
                        kb = mmax
                        continue
                    break
                busy_work = cum[rb, np.minimum(m, kb)]
            else:
                kb = 0
                cum = dwB[:, None]
                busy_work = dwB
            if shared:
                bw = busy_work / rdc  # wall time the drafter stays on the GPU
                Tb = np.where(tmax <= bw, tmax, bw + (twB - bw * rtc))
                q = (cum / rdc[:, None] < Tb[:, None]).sum(axis=1)
            else:
                Tb = tmax
                q = (cum < Tb[:, None]).sum(axis=1)
            d0 = q >= 1
            v0 = d0 & genok
            wasted[B] += d0 & ~genok
            inc = v0 + np.maximum(q - 1, 0)
            dpos[B] += inc
            drafted[B] += inc
            dsteps[B] += np.minimum(q, m)
            infl = q <= m
            rem = cum[rb, np.minimum(q, kb)] - Tb * rdc
            dw[B] = np.where(infl, rem, inf)
            step_gen[B] = np.where(infl & d0, generation[B], step_gen[B])
            dpc[B] = np.where(infl, _D_STEP, np.where(stopped[B], _D_EXIT, _D_IDLE))
            dgpu[B] = infl
            T[busy] = Tb
        now[A] += T
        nd = pass_end(A)
        if not keep_drafting:
            nd += finalize_ar()
        if nd:
            n_done += nd
            A = np.flatnonzero(tpc == _T_PASS)

    out = {
        "latency_ms": latency, "ttft_ms": tpe.copy(), "target_prefill_end_ms": tpe,
        "drafter_prefill_end_ms": dpe, "drafted_tokens": drafted, "window_drafts": window_drafts,
        "wasted_drafts": wasted, "accepted_tokens": accepted, "window_accepted": window_acc,
        "verify_passes": verify_passes, "target_passes": tpasses,
    }
    return b.split(out)
