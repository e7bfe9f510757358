"""Random draws for a batch of requests, shared by every strategy (common random numbers).

Each request i owns independent streams from ``SeedSequence([seed, i])``: stage times
of each role, verify noise, and *uniforms* for acceptance runs. Draws are indexed (the
j-th target pass, the i-th drafter step, the n-th run) and extended in fixed blocks, so

* two strategies that use the same index see the same number — ``speedup`` is a paired
  comparison on identical draws;
* the SimPy reference model and the vectorised fast path consume identical values;
* acceptance runs come from the same uniforms for every acceptance level (inverse-CDF
  coupling), so a run never gets shorter when alpha grows and sweeps over alpha are
  monotone draw by draw.

A :class:`DrawBank` depends only on (trace set, seed, n_requests, drafter_speed,
include_cpu_stages): a sweep builds it once and reuses it for every scenario.
"""

from __future__ import annotations

import numpy as np

from .traces import TraceSet

BLOCK = 64  # draws are generated in blocks of this many per stream (prefix-stable)
_STREAMS = ("target_decode", "drafter_decode", "verify_noise", "acceptance_u")


class DrawBank:
    """All random quantities of ``n_requests`` requests (times in ms)."""

    def __init__(self, traces: TraceSet, seed: int, n_requests: int, drafter_speed: float = 1.0,
                 include_cpu_stages: bool = True):
        traces.check_simulatable()
        self.n_requests = n_requests
        self.seed = seed
        gens = [np.random.default_rng(ss) for i in range(n_requests)
                for ss in np.random.SeedSequence([int(seed), i]).spawn(1 + len(_STREAMS))]
        self._gens = {name: gens[k + 1 :: 1 + len(_STREAMS)] for k, name in enumerate(_STREAMS)}
        phase_gens = gens[:: 1 + len(_STREAMS)]
        self.phase_ms = {}
        for role in ("target", "drafter"):
            table = traces.prefill_phase_table[role]
            idx = np.array([g.integers(len(table)) for g in phase_gens])
            ph = table[idx].copy()
            if not include_cpu_stages:
                ph[:, :2] = 0.0
            if role == "drafter":
                ph /= drafter_speed
            self.phase_ms[role] = ph
        # one uniform per request to pick a recorded sample for acceptance replay
        self.sample_u = np.array([g.random() for g in phase_gens])
        tpool = traces.decode_pool["target"]
        dpool = traces.decode_pool["drafter"] / drafter_speed
        gam, med, ratios = traces.verify_curve
        self.verify_gammas, self.verify_median_ms = gam, med
        self._pools = {"target_decode": tpool, "drafter_decode": dpool, "verify_noise": ratios, "acceptance_u": None}
        self._arrays = {name: np.empty((n_requests, 0)) for name in _STREAMS}

    def ensure(self, stream: str, n: int) -> np.ndarray:
        """The (n_requests, >= n) array of ``stream``, extended block by block."""
        arr = self._arrays[stream]
        while arr.shape[1] < n:
            pool = self._pools[stream]
            if pool is None:  # uniforms in (0, 1]
                block = np.array([1.0 - g.random(BLOCK) for g in self._gens[stream]])
            else:
                block = np.array([g.choice(pool, BLOCK) for g in self._gens[stream]])
            arr = np.concatenate([arr, block], axis=1)
        self._arrays[stream] = arr
        return arr

    def request(self, i: int) -> "RequestDraws":
        return RequestDraws(self, i)

    def verify_ms(self, k, noise):
        """Cost of a pass verifying k >= 1 drafts: interpolated median x noise ratio."""
        return np.interp(k, self.verify_gammas, self.verify_median_ms) * noise


class RequestDraws:
    """The draws of one request, by index (used by the SimPy model)."""

    def __init__(self, bank: DrawBank, request_id: int):
        self.bank, self.request_id = bank, request_id
        self.phase_ms = {role: bank.phase_ms[role][request_id] for role in ("target", "drafter")}

    def _get(self, stream: str, i: int) -> float:
        arr = self.bank._arrays[stream]
        if i >= arr.shape[1]:
            arr = self.bank.ensure(stream, i + 1)
        return float(arr[self.request_id, i])

    def decode_ms(self, role: str, i: int) -> float:
        return self._get(f"{role}_decode", i)

    def target_pass_ms(self, j: int, k: int) -> float:
        """The j-th target pass after prefill, verifying k drafts (k = 0: decode step)."""
        if k == 0:
            return self._get("target_decode", j)
        return float(self.bank.verify_ms(k, self._get("verify_noise", j)))

    def acceptance_u(self, n: int) -> float:
        return self._get("acceptance_u", n)

    @property
    def sample_u(self) -> float:
        return float(self.bank.sample_u[self.request_id])
