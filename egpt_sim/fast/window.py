"""The window engine: ``prefill_then_verify``, ``adaptive_budget`` and ``parallel_sd``, the
strategies whose drafter drafts while the target prefills (SimPy:
:func:`egpt_sim.sim.strategies._window_then`).

Every request of a :class:`~egpt_sim.fast.batch._Batch` is one row of the arrays of a
:class:`_Window`. A request holds at most one target and one drafter activity: a program
counter, the alone-time work left (ms) and whether it is on the GPU. A pass (target decode
step / verify, drafter draft step) with a serving-loop host gap runs it first, off the GPU
at rate 1 but seen by the peer as the pass, then its GPU work (``thost`` / ``dhost``,
:func:`egpt_sim.sim.rules.pass_phases_ms`), where the roles share a contention domain.
:func:`_window_engine` runs two phases:

1. :meth:`_Window.run_events` — a lock-step event loop over both prefill phases and the
   window. Each iteration advances every request to *its own* next completion
   (:meth:`~_Window.advance_to_next_completion`: processor sharing at the contended rates)
   and handles what completed (:meth:`~_Window.on_target_completions`,
   :meth:`~_Window.on_drafter_completions`). With ``aggregate``, a request whose target is
   in a pass while its drafter is past its prefill is parked (:meth:`~_Window.park`).
2. :meth:`_Window.run_passes` — a lock-step loop over target passes. Within one pass
   nothing re-syncs, so the drafter's step in flight and the further steps it may take run
   back to back at the contended rate while the target runs
   (:meth:`~_Window.drafter_steps_during_pass`, prefix sums of their wall times: a host
   phase at rate 1, GPU work at the contended rate); then the pass ends
   (:meth:`~_Window.end_pass`) and the step in flight carries over, in its host phase or its
   GPU work.

prefill_then_verify / adaptive_budget requests whose drafter has exited and whose target is
in a decode step finish with a closed sum (:meth:`~_Window.finish_decoding`). The rules —
commit / re-sync, verify size, draft cap, CPU lane, contended rates — are those of
:mod:`egpt_sim.sim.rules`, applied to index arrays.
"""

from __future__ import annotations

import numpy as np

from ..sim import rules
from ..traces.schema import CPU_STAGES
from ..traces.traceset import PREFILL_PHASE_STAGES
from .batch import _Batch

# target program counter: 0..3 prefill-phase stages, 4 = target pass, 5 = done, 6 = parked
# drafter program counter: 0..3 prefill-phase stages, 4 = draft step, 5 = idle (waiting), 6 = exited
_T_PASS, _T_DONE, _T_PARKED = 4, 5, 6
_D_STEP, _D_IDLE, _D_EXIT = 4, 5, 6
_VERIFY_CODE, _DECODE_CODE = 4, 5  # a target pass in the rate tables (egpt_sim.fast.batch._T_CODES)
_GPU_STAGE = np.array([s not in CPU_STAGES for s in PREFILL_PHASE_STAGES])  # by prefill-phase stage index
_N_CPU = len(CPU_STAGES)  # the prefill phase's first stages are its CPU stages
assert not _GPU_STAGE[:_N_CPU].any() and _GPU_STAGE[_N_CPU:].all()


class _Window:
    """The window engine's state: one row per request of a batch (see the module docstring)."""

    __slots__ = (
        "b", "bc", "R", "req", "sid", "Nr", "gr", "keep_drafting", "cap_after", "shared", "phase_t", "phase_d", "serial",
        "rt_pair", "rd_pair", "vtab", "td", "rt", "dd", "dd_width", "dd_lo", "budget",
        "now", "latency", "tpc", "tw", "tgpu", "kcur", "dpc", "dw", "dgpu",
        "committed", "dpos", "run_end", "runs_used", "generation", "step_gen", "stopped", "tpref",
        "dsteps", "tpasses", "drafted", "wasted", "window_drafts", "accepted", "window_acc", "verify_passes",
        "tpe", "dpe", "n_done", "n_parked", "parked_tw", "parked_dw",
        "gap_t", "gap_d", "host_phases", "thost", "dhost", "tpend", "dpend",
    )

    def __init__(self, b: _Batch):
        self.b, self.bc, self.R, self.req, self.sid = b, b.bc, b.R, b.req, b.sid
        self.Nr, self.gr, self.shared = b.Nr, b.gr, b.shared
        self.keep_drafting = b.strategy == "parallel_sd"
        self.cap_after = rules.after_prefill_cap(self.keep_drafting, b.lb_r, b.gr)
        # the CPU lane of each scenario: CPU stages x its factors, and serial or overlapping
        mult = {r: np.array([ln.multipliers(r, PREFILL_PHASE_STAGES) for ln in b.lanes]) for r in ("target", "drafter")}
        self.phase_t = rules.lane_phase_ms(b.phase_t, mult["target"][b.sid])
        self.phase_d = rules.lane_phase_ms(b.phase_d, mult["drafter"][b.sid])
        self.serial = np.array([ln.mode == "serial" for ln in b.lanes])[b.sid]
        self.rt_pair, self.rd_pair = b.rt_pair, b.rd_pair
        self.vtab = b.vtab
        # a pass's host gap runs before its GPU work (rules.pass_phases_ms); it matters only where
        # the roles can slow each other: elsewhere the pass runs at rate 1 as one piece
        gaps = b.bank.pass_gap_ms if self.shared else {}
        self.gap_t, self.gap_d = float(gaps.get("target", 0.0)), float(gaps.get("drafter", 0.0))
        self.host_phases = self.gap_t > 0 or self.gap_d > 0
        self.td = b.bc.stream("target_decode", max(b.Nmax - 1, 1))
        self.rt = b.runs(b.Nmax + 2)
        self.dd, self.dd_width, self.dd_lo = None, 0, 0.0
        self.drafter_stream(1)
        if b.strategy == "adaptive_budget":  # fixed per scenario at request start (b >= 1 here)
            self.budget = np.array([int(p["window_budget"]) for p in b.plans], dtype=np.int64)[b.sid]
        else:
            self.budget = b.gr.copy()
        self._start()

    def _start(self) -> None:
        """Every request at its start (run_request: the initial sync at position 0, generation 0)."""
        R = self.R
        i64 = dict(dtype=np.int64)
        self.now, self.latency = np.zeros(R), np.full(R, np.nan)
        self.tpc, self.kcur, self.dpc = np.zeros(R, **i64), np.zeros(R, **i64), np.zeros(R, **i64)
        # serial CPU lane: the target's load starts when the drafter's CPU stages end, so its
        # first CPU stage carries that wait (none on an overlapping lane)
        self.tw = rules.lane_wait_ms(self.serial, self.phase_d) + self.phase_t[:, 0]
        self.dw = self.phase_d[:, 0].copy()
        self.tgpu, self.dgpu = np.full(R, _GPU_STAGE[0]), np.full(R, _GPU_STAGE[0])
        if _GPU_STAGE[0]:
            self.tw[self.tw <= rules.EPS_MS] = 0.0
            self.dw[self.dw <= rules.EPS_MS] = 0.0
        self.committed, self.dpos = np.zeros(R, **i64), np.zeros(R, **i64)
        self.run_end = self.rt[:, 0].astype(np.int64)  # rules.resync at position 0
        self.runs_used = np.ones(R, **i64)
        self.generation, self.step_gen = np.zeros(R, **i64), np.zeros(R, **i64)
        self.stopped, self.tpref = np.zeros(R, dtype=bool), np.zeros(R, dtype=bool)
        for name in ("dsteps", "tpasses", "drafted", "wasted", "window_drafts", "accepted", "window_acc",
                     "verify_passes"):
            setattr(self, name, np.zeros(R, **i64))
        self.tpe, self.dpe = np.full(R, np.nan), np.full(R, np.nan)
        # in a pass's host phase (off the GPU), and the GPU work that follows it
        self.thost, self.dhost = np.zeros(R, dtype=bool), np.zeros(R, dtype=bool)
        self.tpend, self.dpend = np.zeros(R), np.zeros(R)
        self.n_done = self.n_parked = 0
        self.parked_tw, self.parked_dw = np.zeros(R), np.full(R, np.inf)

    # ------------------------------------------------------------------ draws and rates

    def drafter_stream(self, need: int) -> np.ndarray:
        """The drafter's decode steps, at least ``need`` columns (and their minimum)."""
        if need > self.dd_width:
            b = self.b
            w = max(need, 2 * b.Nmax + 2 * b.lamax + 64)
            self.dd = self.bc.stream("drafter_decode", w)
            self.dd_width = self.dd.shape[1]
            self.dd_lo = self.bc.stream_min("drafter_decode", self.dd_width)  # bounds steps per pass
        return self.dd

    def rates(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contended rates of the target and the drafter activity of requests ``sel`` (both running,
        :meth:`running`; a CPU stage runs at 1 and slows the peer by its ``cpu_peer`` factor)."""
        tpc = self.tpc[sel]
        tc = np.where(tpc < _T_PASS, tpc, np.where(self.kcur[sel] > 0, _VERIFY_CODE, _DECODE_CODE))
        dc = np.minimum(self.dpc[sel], _D_STEP)
        s_ = self.sid[sel]
        return self.rt_pair[s_, tc, dc], self.rd_pair[s_, dc, tc]

    @staticmethod
    def running(on_gpu: np.ndarray, pc: np.ndarray, work: np.ndarray) -> np.ndarray:
        """A role's activity that contends: a GPU activity, or one of its prefill phase's CPU
        stages (program counter 0-1, work pending) that the peer's GPU stage may feel (threads)."""
        return on_gpu | ((pc < _N_CPU) & np.isfinite(work))

    # ------------------------------------------------------------------ the rules on index arrays

    def resync(self, s: np.ndarray) -> None:
        """The drafter restarts from the committed prefix; a fresh acceptance run starts."""
        self.dpos[s], self.run_end[s] = rules.resync(self.committed[s], self.rt[s, self.runs_used[s]])
        self.runs_used[s] += 1
        self.generation[s] += 1

    def commit(self, idx: np.ndarray, k) -> np.ndarray:
        """Book a target pass over ``k`` drafts; returns the accepted counts."""
        L, after, keeps = rules.commit_pass(self.committed[idx], self.run_end[idx], self.dpos[idx], k, self.Nr[idx])
        self.committed[idx] = after
        self.accepted[idx] += L
        bad = ~keeps
        if bad.any():
            self.resync(idx[bad])
        return L

    def verify_k(self, idx: np.ndarray, limit) -> np.ndarray:
        return rules.verify_size(self.dpos[idx], self.committed[idx], limit, self.Nr[idx])

    def start_pass(self, idx: np.ndarray, k: np.ndarray) -> None:
        """The next target pass: a decode step (k = 0) or a verify pass over k drafts, host
        phase first (:meth:`pass_phases`)."""
        j = self.tpasses[idx]
        total = np.where(k > 0, self.vtab[idx, k], self.td[self.req[idx], j])
        self.tw[idx], self.tpend[idx], self.thost[idx] = self.pass_phases(total, self.gap_t)
        self.tpasses[idx] = j + 1
        self.tgpu[idx] = ~self.thost[idx]
        self.tpc[idx] = _T_PASS
        self.kcur[idx] = k

    @staticmethod
    def pass_phases(total_ms: np.ndarray, gap_ms: float):
        """(work now, GPU work pending, in host phase) of passes of alone time ``total_ms``:
        the host gap first when there is one (:func:`rules.pass_phases_ms`), else the GPU work."""
        if gap_ms <= 0:
            return total_ms, 0.0, False
        host, gpu = rules.pass_phases_ms(total_ms, gap_ms)
        h = host > 0
        return np.where(h, host, gpu), np.where(h, gpu, 0.0), h

    def end_host_phase(self, idx: np.ndarray, role: str) -> None:
        """Requests ``idx``: ``role``'s pass leaves its host phase and starts its GPU work."""
        work, pend, host, gpu = ((self.tw, self.tpend, self.thost, self.tgpu) if role == "target" else
                                 (self.dw, self.dpend, self.dhost, self.dgpu))
        work[idx] = pend[idx]
        pend[idx] = 0.0
        host[idx] = False
        gpu[idx] = True

    def finish(self, idx: np.ndarray) -> None:
        """Requests ``idx`` emitted every token now."""
        self.latency[idx] = self.now[idx]
        self.tpc[idx] = _T_DONE
        self.tw[idx] = 0.0
        self.dpc[idx] = _D_EXIT
        self.dw[idx] = np.inf
        self.dgpu[idx] = False
        self.tgpu[idx] = False
        self.thost[idx] = self.dhost[idx] = False
        self.tpend[idx] = self.dpend[idx] = 0.0

    def drafter_next(self, idx: np.ndarray) -> None:
        """The drafter loop's decision after a completion or a wake-up: draft, wait or exit."""
        c, n = self.committed[idx], self.Nr[idx]
        ex = rules.drafter_exits(self.stopped[idx], c, n)
        cap = rules.draft_cap(self.tpref[idx], self.budget[idx], self.cap_after[idx])
        go = ~ex & rules.drafter_drafts(self.dpos[idx], c, cap, n)
        g = idx[go]
        if g.size:
            i = self.dsteps[g]
            total = self.drafter_stream(int(i.max()) + 1)[self.req[g], i]
            self.dw[g], self.dpend[g], self.dhost[g] = self.pass_phases(total, self.gap_d)
            self.dsteps[g] = i + 1
            self.step_gen[g] = self.generation[g]
            self.dpc[g] = _D_STEP
            self.dgpu[g] = ~self.dhost[g]
        rest = idx[~go]
        if rest.size:
            self.dpc[rest] = np.where(ex[~go], _D_EXIT, _D_IDLE)
            self.dw[rest] = np.inf
            self.dgpu[rest] = False
            self.dhost[rest] = False

    def wake(self, idx: np.ndarray) -> None:
        """Waiting drafters of ``idx`` decide again (the committed prefix changed)."""
        w = idx[self.dpc[idx] == _D_IDLE]
        if w.size:
            self.drafter_next(w)

    def end_pass(self, c: np.ndarray) -> int:
        """Target passes of requests ``c`` end now: book them, start the next pass, wake the
        drafter. Returns how many requests finished."""
        k = self.kcur[c]
        first_pass_verify = (k > 0) & (self.tpasses[c] == 1)
        self.verify_passes[c] += k > 0
        L = self.commit(c, k)
        sel = first_pass_verify & (self.window_acc[c] == 1)
        if sel.any():  # d1 matched: add the window drafts the first verify accepted
            f = c[sel]
            self.window_acc[f] += rules.window_accepted_after(L[sel], self.window_drafts[f])
        done = self.committed[c] >= self.Nr[c]
        nd = 0
        if done.any():
            self.finish(c[done])
            nd = int(done.sum())
            c = c[~done]
        if c.size:
            self.start_pass(c, self.verify_k(c, self.gr[c]) if self.keep_drafting else np.zeros(c.size, dtype=np.int64))
            self.wake(c)
        return nd

    def finish_decoding(self) -> int:
        """prefill_then_verify / adaptive_budget: drafter gone, target in a decode step -> the
        rest is a closed sum of the decode stream. Returns how many requests finished."""
        f = np.flatnonzero((self.dpc == _D_EXIT) & (self.tpc == _T_PASS) & (self.kcur == 0))
        if f.size:
            rem = self.Nr[f] - self.committed[f] - 1  # decode steps after the current one
            j0 = self.tpasses[f]
            ct = self.bc.csum("target_decode", int((j0 + rem).max()))
            ri = self.req[f]
            end = self.now[f] + self.tw[f] + self.tpend[f]  # drafter gone: the current step runs at rate 1
            self.now[f] = end + (ct[ri, j0 + rem] - ct[ri, j0])
            self.tpasses[f] = j0 + rem
            self.committed[f] = self.Nr[f]
            self.finish(f)
        return int(f.size)

    # ------------------------------------------------------------------ phase 1: events

    def run_events(self, aggregate: bool) -> None:
        """Phase 1: one completion per request per iteration, until every request is done
        or (``aggregate``) parked for the per-pass loop."""
        one = np.ones(self.R)
        while self.n_done + self.n_parked < self.R:
            te, de = self.advance_to_next_completion(one)
            if te.size:
                self.on_target_completions(te)
            if de.size:
                self.on_drafter_completions(de)
            if not self.keep_drafting:
                self.n_done += self.finish_decoding()
            if aggregate:
                self.park()

    def advance_to_next_completion(self, one: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every request to its next completion (processor sharing of the GPU while
        both roles are on it); returns the requests whose target / drafter activity ended."""
        if self.shared:
            rt_, rd_ = one.copy(), one.copy()
            bi = np.flatnonzero(self.running(self.tgpu | self.thost, self.tpc, self.tw)
                                & self.running(self.dgpu | self.dhost, self.dpc, self.dw))
            if bi.size:
                rt_[bi], rd_[bi] = self.rates(bi)
                if self.host_phases:  # a host phase runs at rate 1; its peer sees the pass
                    rt_[self.thost], rd_[self.dhost] = 1.0, 1.0
            ttime = self.tw / rt_
            dtime = self.dw / rd_
        else:
            ttime, dtime = self.tw, self.dw
        tev = ttime <= dtime  # tie: the target's completion is handled first
        dt = np.where(tev, ttime, dtime)
        self.now += dt
        if self.shared:
            self.tw -= dt * rt_
            self.dw -= dt * rd_
        else:
            self.tw -= dt
            self.dw -= dt
        return np.flatnonzero(tev), np.flatnonzero(~tev)

    def _next_prefill_stage(self, a: np.ndarray, pc: np.ndarray, role: str) -> None:
        """Requests ``a`` move ``role`` to the prefill-phase stage after ``pc``."""
        phase, pcs, work, on_gpu = ((self.phase_t, self.tpc, self.tw, self.tgpu) if role == "target" else
                                    (self.phase_d, self.dpc, self.dw, self.dgpu))
        npc = pc + 1
        pcs[a] = npc
        w = phase[a, npc]
        gpu = _GPU_STAGE[npc]
        work[a] = np.where(gpu & (w <= rules.EPS_MS), 0.0, w)
        on_gpu[a] = gpu

    def on_target_completions(self, te: np.ndarray) -> None:
        pc = self.tpc[te]
        h = self.thost[te] & (pc == _T_PASS)  # before any handler starts a new pass (not parked)
        m = pc < 3
        if m.any():
            self._next_prefill_stage(te[m], pc[m], "target")
        m = pc == 3
        if m.any():
            self.target_prefill_end(te[m])
        if h.any():  # a pass's host phase ends: its GPU work starts
            self.end_host_phase(te[h], "target")
        m = (pc == _T_PASS) & ~h
        if m.any():
            self.n_done += self.end_pass(te[m])

    def target_prefill_end(self, a: np.ndarray) -> None:
        """The target's prefill ends: ttft, window drafts, d1 == t1, commit(0), first pass."""
        self.tpref[a] = True
        self.tpe[a] = self.now[a]
        self.window_drafts[a] = self.drafted[a]
        d1 = rules.d1_matches(self.dpos[a], self.run_end[a])
        self.accepted[a] += d1
        self.window_acc[a] = np.where(d1, 1, self.window_acc[a])
        self.commit(a, 0)
        if self.keep_drafting:
            k = self.verify_k(a, self.gr[a])
        else:
            self.stopped[a] = True
            k = self.verify_k(a, self.budget[a])
        done = self.committed[a] >= self.Nr[a]
        if done.any():
            self.finish(a[done])
            self.n_done += int(done.sum())
            k, a = k[~done], a[~done]
        if a.size:
            self.start_pass(a, k)
            self.wake(a)

    def on_drafter_completions(self, de: np.ndarray) -> None:
        pc, h = self.dpc[de], self.dhost[de]  # before any handler starts a new step
        if h.any():
            self.end_host_phase(de[h], "drafter")
        m = (pc == _D_STEP) & ~h
        if m.any():  # a draft step ends: a draft, unless a re-sync made it stale
            c = de[m]
            same = self.step_gen[c] == self.generation[c]
            self.dpos[c] += same
            self.drafted[c] += same
            self.wasted[c] += ~same
            self.drafter_next(c)
        m = pc < 3
        if m.any():
            self._next_prefill_stage(de[m], pc[m], "drafter")
        m = pc == 3
        if m.any():  # the drafter's prefill ends: its logits draft position 1
            a = de[m]
            self.dpe[a] = self.now[a]
            fresh = (self.generation[a] == 0) & (self.committed[a] == 0)
            self.dpos[a] = np.where(fresh, 1, self.dpos[a])
            self.drafted[a] += fresh
            self.drafter_next(a)

    def park(self) -> None:
        """Freeze requests whose target is in a pass and drafter past its prefill (phase 2's)."""
        pk = np.flatnonzero((self.tpc == _T_PASS) & (self.dpc >= _D_STEP))
        if pk.size:
            self.parked_tw[pk] = self.tw[pk]
            self.parked_dw[pk] = self.dw[pk]
            self.tpc[pk] = _T_PARKED
            self.tw[pk] = 0.0  # frozen: next completion "now", ignored (no handler for _T_PARKED)
            self.dw[pk] = np.inf
            self.n_parked += pk.size

    # ------------------------------------------------------------------ phase 2: per pass

    def run_passes(self) -> None:
        """Phase 2: every live request's target is in a pass; one pass per iteration."""
        if self.n_parked:
            pk = np.flatnonzero(self.tpc == _T_PARKED)
            self.tpc[pk] = _T_PASS
            self.tw[pk] = self.parked_tw[pk]
            self.dw[pk] = self.parked_dw[pk]
        A = np.flatnonzero(self.tpc == _T_PASS)
        while self.n_done < self.R:
            T = self.tw[A] + self.tpend[A]  # pass end (from now) when the drafter is not on the GPU
            busy = self.dpc[A] == _D_STEP
            if busy.any():
                B = A[busy]
                host = self.thost[B]
                T[busy] = self.drafter_steps_during_pass(B, np.where(host, self.tw[B], 0.0),
                                                         np.where(host, self.tpend[B], self.tw[B]))
            self.now[A] += T
            nd = self.end_pass(A)
            if not self.keep_drafting:
                nd += self.finish_decoding()
            if nd:
                self.n_done += nd
                A = np.flatnonzero(self.tpc == _T_PASS)

    def drafter_steps_during_pass(self, B: np.ndarray, host_t: np.ndarray, gpu_t: np.ndarray) -> np.ndarray:
        """Requests ``B`` (drafter in a step, target in a pass with ``host_t`` ms of host phase
        and ``gpu_t`` ms of GPU work left): the drafter runs its step in flight, then up to m
        more back to back (m = the draft limit min(committed + cap, N) - drafter_pos; 0 once
        stopped), GPU work at the contended rate while the target runs, host phases at 1.
        Books the drafter completions before the pass ends; the step in flight then carries
        over (:meth:`carry_step_over`). Returns the wall time to the end of the pass."""
        genok = self.step_gen[B] == self.generation[B]
        p1 = self.dpos[B] + genok
        m = np.where(self.stopped[B], 0,
                     np.maximum(0, rules.draft_limit(self.committed[B], self.cap_after[B], self.Nr[B]) - p1))
        rtc, rdc = self.rates(B) if self.shared else (1.0, 1.0)  # target pass beside a draft step
        tmax = host_t + gpu_t / rtc  # pass end if the drafter stays busy throughout
        host0 = np.where(self.dhost[B], self.dw[B], 0.0)  # the step in flight: host phase left, GPU work left
        gpu0 = np.where(self.dhost[B], self.dpend[B], self.dw[B])
        # alone drafter work that can end within tmax (a host phase runs at 1, GPU work at rdc)
        reach = tmax * (np.maximum(rdc, 1.0) if self.host_phases else rdc)
        cum, kb, _ = self._step_work_prefix(B, m, host0 + gpu0, reach)
        r = np.reshape(rdc, (-1, 1))
        if self.host_phases:  # drafter completions, wall ms from now
            hosts, gpus = self._step_phases(cum, host0, gpu0)
            wall = np.cumsum(hosts + gpus / r, axis=1)
        else:
            gpus, wall = None, cum / r
        nb = np.arange(B.size)
        bw = wall[nb, np.minimum(m, kb)]  # the drafter stays busy this long
        if self.shared:  # after bw the target runs alone: its host phase left, then its GPU work left
            Tb = np.where(tmax <= bw, tmax, bw + (np.maximum(0.0, host_t - bw)
                                                 + (gpu_t - np.maximum(0.0, bw - host_t) * rtc)))
        else:
            Tb = tmax
        q = (wall < Tb[:, None]).sum(axis=1)  # drafter completions before the pass end
        d0 = q >= 1
        v0 = d0 & genok
        self.wasted[B] += d0 & ~genok
        inc = v0 + np.maximum(q - 1, 0)
        self.dpos[B] += inc
        self.drafted[B] += inc
        self.dsteps[B] += np.minimum(q, m)
        self.carry_step_over(B, q <= m, np.minimum(q, kb), cum, wall, gpus, Tb, rdc)
        self.step_gen[B] = np.where((q <= m) & d0, self.generation[B], self.step_gen[B])
        return Tb

    def carry_step_over(self, B, infl, c, cum, wall, gpus, Tb, rdc) -> None:
        """The drafter's state at its target's pass end ``Tb``: in the step of column ``c``
        (``infl``; in its host phase or its GPU work), else waiting or gone."""
        nb = np.arange(B.size)
        if self.host_phases:
            left = wall[nb, c] - Tb  # wall ms left of the step in flight
            gpu_left = gpus[nb, c] / rdc
            in_host = infl & (left > gpu_left)
            with np.errstate(invalid="ignore"):  # inf - inf where no step is in flight
                work = np.where(in_host, left - gpu_left, np.minimum(left, gpu_left) * rdc)
            self.dpend[B] = np.where(in_host, gpus[nb, c], 0.0)
        else:
            in_host = np.zeros(B.size, dtype=bool)
            work = cum[nb, c] - Tb * rdc
        self.dw[B] = np.where(infl, work, np.inf)
        self.dhost[B] = in_host
        self.dpc[B] = np.where(infl, _D_STEP, np.where(self.stopped[B], _D_EXIT, _D_IDLE))
        self.dgpu[B] = infl & ~in_host

    def _step_phases(self, cum: np.ndarray, host0: np.ndarray, gpu0: np.ndarray):
        """(host ms, GPU work ms) of each column of :meth:`_step_work_prefix`'s prefix sums:
        column 0 the step in flight (``host0``, ``gpu0`` left), the others whole draft steps
        (inf past the draft limit), each its host gap first (:func:`rules.pass_phases_ms`)."""
        with np.errstate(invalid="ignore"):
            steps = np.diff(cum, axis=1)
        steps[np.isnan(steps)] = np.inf  # inf - inf past the limit
        host = np.where(np.isfinite(steps), np.minimum(self.gap_d, steps), 0.0)
        return np.column_stack([host0, host]), np.column_stack([gpu0, steps - host])

    def _step_work_prefix(self, B: np.ndarray, m: np.ndarray, dwB: np.ndarray, reach: np.ndarray):
        """Prefix sums of the drafter's alone work from now: column 0 the step in flight
        (``dwB`` left), column i + i further steps (at most ``m``; inf beyond). Only steps that
        can finish within the longest ``reach`` of drafter work matter: ``kb`` columns. Returns
        (cum, kb, work of the whole busy stretch)."""
        mmax = int(m.max())
        if not mmax:
            return dwB[:, None], 0, dwB
        nb = B.size
        kb = min(mmax, 1 + int(np.ceil(float(reach.max()) / self.dd_lo))) if self.dd_lo > 0 else mmax
        rB = self.req[B]
        while True:
            cols = self.dsteps[B][:, None] + np.arange(kb)
            W = self.drafter_stream(int(cols.max()) + 1)[rB[:, None], cols]
            W[np.arange(kb)[None, :] >= m[:, None]] = np.inf
            cum = np.empty((nb, kb + 1))
            cum[:, 0] = dwB
            np.cumsum(W, axis=1, out=cum[:, 1:])
            cum[:, 1:] += dwB[:, None]
            # truncation is exact only if a request with m > kb is still busy at the pass end
            # (then its pass ends at tmax and q <= kb); else widen and redo
            if kb < mmax and ((m > kb) & (cum[:, kb] <= reach)).any():
                kb = mmax
                continue
            return cum, kb, cum[np.arange(nb), np.minimum(m, kb)]

    def result(self) -> dict:
        return {
            "latency_ms": self.latency, "ttft_ms": self.tpe.copy(), "target_prefill_end_ms": self.tpe,
            "drafter_prefill_end_ms": self.dpe, "drafted_tokens": self.drafted, "window_drafts": self.window_drafts,
            "wasted_drafts": self.wasted, "accepted_tokens": self.accepted, "window_accepted": self.window_acc,
            "verify_passes": self.verify_passes, "target_passes": self.tpasses,
        }


def _window_engine(b: _Batch, aggregate: bool = True) -> list[dict]:
    """prefill_then_verify / adaptive_budget / parallel_sd on a batch (see the module docstring).

    ``aggregate=False`` runs the plain event loop to the end (one completion per request per
    iteration); ``True`` switches each request to the per-pass loop once its drafter is past
    its prefill and its target in a pass (same semantics, fewer iterations; both are tested
    against SimPy).
    """
    w = _Window(b)
    w.run_events(aggregate)
    w.run_passes()
    return b.split(w.result())
