"""Random draws for a batch of requests, shared by every strategy (common random numbers).

Per-sample replay (block bootstrap over recorded samples): request i draws one recorded
sample per role from ``SeedSequence([seed, i])`` — the target's uniformly, the drafter's
the same (run_id, sample_id) when the drafter was recorded on it (else uniformly) — and
replays that sample's own ``alone`` rows (:attr:`egpt_sim.traces.TraceSet.sample_tables`):

* its four prefill-phase stages;
* its decode steps *in recorded order*: the j-th target pass after prefill uses recorded
  step j when it is a decode step, the i-th drafter step recorded drafter step i; past the
  recorded steps, steps are drawn i.i.d. from the same sample's steps (a sample that
  recorded none borrows the steps of a uniformly drawn sample that did);
* its verify rows by gamma (interpolated in k; a sample without them uses the pooled
  curve), so a pass over k drafts always costs the same for one request.

Per-request variation between samples (most of the decode-step variance in the H100
traces) is therefore kept, and target/drafter correlation when both were recorded on
the same sample. Further streams per request: the bootstrap indices of each role's
decode steps and uniforms for acceptance runs, generated in fixed blocks, so

* two strategies that use the same index see the same number — ``speedup`` is a paired
  comparison on identical draws;
* the SimPy reference model and the vectorised fast path consume identical values;
* acceptance runs come from the same uniforms for every acceptance level (inverse-CDF
  coupling): the run length of the n-th synchronisation never gets shorter when alpha
  grows. Request latency is NOT monotone in alpha draw by draw: a verify pass that
  accepts nothing costs V(k) - D more than the decode step it replaces (h100: verify 34
  vs decode 31 ms), and a different run length shifts which uniform each later
  synchronisation uses. On the bundled sets 0-10 % of requests get slower from one alpha
  to the next (steps of 0.1); mean latencies fell monotonically in every check, which
  nothing guarantees.

``drafter_speed`` divides the drafter's GPU stages (vision_encode, prefill, decode
steps), never its CPU stages (load, preprocess). A :class:`DrawBank` depends only on
(trace set, seed, n_requests, drafter_speed, include_cpu_stages): a sweep builds it once
and reuses it for every scenario. A what-if shape (:mod:`egpt_sim.whatif`) has its own
trace set, and so its own bank (``scenario_key`` records which).
"""

from __future__ import annotations

import numpy as np

from ..traces.traceset import RoleSamples, TraceSet

BLOCK = 64  # draws are generated in blocks of this many per stream (prefix-stable)
_STREAMS = ("target_decode", "drafter_decode", "acceptance_u")
_ROLES = ("target", "drafter")


def pass_gaps_ms(cfg, traces: TraceSet) -> dict[str, float]:
    """role -> host gap (ms) before each pass: ``cfg.pass_gap_ms`` for both roles, else the trace set's."""
    if cfg.pass_gap_ms is not None:
        return {"target": float(cfg.pass_gap_ms), "drafter": float(cfg.pass_gap_ms)}
    return dict(getattr(traces, "pass_gap_ms", {}) or {})


class DrawBank:
    """All random quantities of ``n_requests`` requests (times in ms)."""

    def __init__(self, traces: TraceSet, seed: int, n_requests: int, drafter_speed: float = 1.0,
                 include_cpu_stages: bool = True, pass_gap_ms: dict[str, float] | None = None):
        """``pass_gap_ms``: role -> host time (ms) added to each of its decode steps, verify
        passes and draft steps (the serving loop's gap between passes; not scaled by
        ``drafter_speed``). A pass's draw is its alone time, gap included; the engines run the
        gap as a host phase before the GPU work (:func:`egpt_sim.sim.rules.pass_phases_ms`)."""
        traces.check_simulatable()
        self.pass_gap_ms = {role: float((pass_gap_ms or {}).get(role, 0.0)) for role in _ROLES}
        self.scenario_key = getattr(traces, "scenario_key", None)  # what-if shape (None = as recorded)
        self.n_requests = n_requests
        self.seed = seed
        self.drafter_speed = float(drafter_speed)
        tabs: dict[str, RoleSamples] = traces.sample_tables
        self._tabs = tabs
        gens = [np.random.default_rng(ss) for i in range(n_requests)
                for ss in np.random.SeedSequence([int(seed), i]).spawn(1 + len(_STREAMS))]
        self._gens = {name: gens[k + 1:: 1 + len(_STREAMS)] for k, name in enumerate(_STREAMS)}
        pick = gens[:: 1 + len(_STREAMS)]
        # fixed order of draws per request: target sample, drafter sample (used when not
        # paired), acceptance sample uniform, decode donors of both roles
        u = np.array([g.random(5) for g in pick]) if n_requests else np.zeros((0, 5))
        self.sample_index = self._pick_samples(tabs, u[:, 0], u[:, 1])
        self.sample_u = u[:, 2]
        self._decode_row = {}
        for j, role in enumerate(_ROLES):
            t = tabs[role]
            own = t.own_decode[self.sample_index[role]]
            donor = np.minimum((u[:, 3 + j] * len(t.decode_keys)).astype(np.int64), len(t.decode_keys) - 1)
            self._decode_row[role] = np.where(own >= 0, own, donor)
        self.phase_ms = {}
        for role in _ROLES:
            ph = tabs[role].phase_ms[self.sample_index[role]].copy()
            if not include_cpu_stages:
                ph[:, :2] = 0.0
            if role == "drafter":
                ph[:, 2:] /= self.drafter_speed  # GPU stages only
            self.phase_ms[role] = ph
        gam, med, _ = traces.verify_curve
        self.verify_gammas, self.verify_median_ms = gam, med  # pooled curve (planning, fallback)
        self._pooled_verify = (gam, med)
        self._verify = np.zeros((n_requests, 0))
        self._arrays = {name: np.empty((n_requests, 0)) for name in _STREAMS}

    @staticmethod
    def _pick_samples(tabs: dict[str, RoleSamples], u_t: np.ndarray, u_d: np.ndarray) -> dict[str, np.ndarray]:
        """Target sample uniform; drafter = the same recorded sample when it has one."""
        nt, nd = len(tabs["target"].keys), len(tabs["drafter"].keys)
        t = np.minimum((u_t * nt).astype(np.int64), nt - 1)
        where = {k: i for i, k in enumerate(tabs["drafter"].keys)}
        paired = np.array([where.get(tabs["target"].keys[i], -1) for i in t], dtype=np.int64)
        d = np.where(paired >= 0, paired, np.minimum((u_d * nd).astype(np.int64), nd - 1))
        return {"target": t, "drafter": d}

    @property
    def paired_fraction(self) -> float:
        """Share of requests whose target and drafter replay the same recorded sample."""
        kt = [self._tabs["target"].keys[i] for i in self.sample_index["target"]]
        kd = [self._tabs["drafter"].keys[i] for i in self.sample_index["drafter"]]
        return float(np.mean([a == b for a, b in zip(kt, kd)])) if kt else float("nan")

    def ensure(self, stream: str, n: int) -> np.ndarray:
        """The (n_requests, >= n) array of ``stream``, extended block by block."""
        arr = self._arrays[stream]
        while arr.shape[1] < n:
            if stream == "acceptance_u":  # uniforms in (0, 1]
                block = np.array([1.0 - g.random(BLOCK) for g in self._gens[stream]]).reshape(self.n_requests, BLOCK)
            else:
                block = self._decode_block(stream.split("_")[0], arr.shape[1])
            arr = np.concatenate([arr, block], axis=1)
        self._arrays[stream] = arr
        return arr

    def _decode_block(self, role: str, col0: int) -> np.ndarray:
        """Columns col0..col0+BLOCK of a role's decode steps: recorded steps in order,
        then i.i.d. draws from the same sample's steps."""
        t = self._tabs[role]
        row = self._decode_row[role]
        n_rec = t.decode_n[row]
        u = np.array([g.random(BLOCK) for g in self._gens[f"{role}_decode"]]).reshape(self.n_requests, BLOCK)
        cols = col0 + np.arange(BLOCK)[None, :]
        boot = np.minimum((u * n_rec[:, None]).astype(np.int64), n_rec[:, None] - 1)
        idx = np.where(cols < n_rec[:, None], np.minimum(cols, t.decode_ms.shape[1] - 1), boot)
        out = t.decode_ms[row[:, None], idx]
        return (out / self.drafter_speed if role == "drafter" else out) + self.pass_gap_ms[role]

    def verify_table(self, kmax: int) -> np.ndarray:
        """(n_requests, >= kmax + 1): cost of a target pass over k drafts for each request."""
        if self._verify.shape[1] < kmax + 1:
            curves = self._tabs["target"].verify_curves(max(kmax, 64), self._pooled_verify)
            self._verify = curves[self.sample_index["target"]] + self.pass_gap_ms["target"]
        return self._verify

    def request(self, i: int) -> "RequestDraws":
        return RequestDraws(self, i)


class RequestDraws:
    """The draws of one request, by index (used by the SimPy model)."""

    def __init__(self, bank: DrawBank, request_id: int):
        self.bank, self.request_id = bank, request_id
        self.phase_ms = {role: bank.phase_ms[role][request_id] for role in _ROLES}

    def _get(self, stream: str, i: int) -> float:
        arr = self.bank._arrays[stream]
        if i >= arr.shape[1]:
            arr = self.bank.ensure(stream, i + 1)
        return float(arr[self.request_id, i])

    def decode_ms(self, role: str, i: int) -> float:
        return self._get(f"{role}_decode", i)

    def target_pass_ms(self, j: int, k: int) -> float:
        """The j-th target pass after prefill, verifying k drafts (k = 0: decode step j)."""
        if k == 0:
            return self._get("target_decode", j)
        return float(self.bank.verify_table(k)[self.request_id, k])

    def pass_gap_ms(self, role: str) -> float:
        """Host gap (ms) that each of ``role``'s pass draws includes."""
        return self.bank.pass_gap_ms[role]

    def acceptance_u(self, n: int) -> float:
        return self._get("acceptance_u", n)

    @property
    def sample_u(self) -> float:
        return float(self.bank.sample_u[self.request_id])
