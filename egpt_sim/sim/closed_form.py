"""Closed-form expectations for simple scenarios, used to test the SimPy model.

Covers: analytic latencies of ``target_only``, ``prefill_then_verify`` and
``serial_sd`` when every stage takes a *fixed* time, acceptance is i.i.d. at
per-token rate ``alpha`` (or given by a survival curve), and the drafter and target
never slow each other down (two GPUs, or ``contention='none'``); plus
:func:`constant_trace_set`, an in-memory trace set with exactly those fixed times.

Notation (all times in ms, token counts in tokens)
--------------------------------------------------
``T_t``  target stages 1-4 (load + preprocess + vision_encode + prefill), ms
``T_d``  drafter stages 1-4, ms
``D``    one target decode step, ms
``S``    one drafter decode (draft) step, ms
``V(k)`` one target verify pass over ``k`` drafts, ms: the measured verify medians
         linearly interpolated in ``k``, with a pass over 0 drafts priced as ``D``
         (exactly what :meth:`egpt_sim.traces.TraceSet.verify_curve` does)
``N``    output tokens, ``gamma`` max drafts per verify pass
``R``    acceptance run length after a synchronisation: drafts 1..R match, R + 1
         does not; i.i.d. model: P(R >= i) = alpha**i (see :mod:`egpt_sim.traces.acceptance`)

The token bookkeeping follows :mod:`egpt_sim.sim.processes`: the target's prefill commits
answer position 1 (``t1``); the drafter's prefill drafts position 1 (``d1``); a target
pass over ``k`` drafts accepts ``L = min(R', k)`` of them (``R'`` = what is left of the
current run) and commits ``L + 1`` tokens.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..traces import schema
from ..traces.acceptance import expected_tokens_per_verify
from ..traces.examples import stage_rows

__all__ = [
    "expected_tokens_per_verify",
    "phase_total_ms",
    "verify_ms_interp",
    "target_only_latency_ms",
    "lane_target_phase_ms",
    "window_drafts",
    "prefill_then_verify_verified_drafts",
    "prefill_then_verify_expectations",
    "prefill_then_verify_latency_ms",
    "serial_sd_expectations",
    "serial_sd_latency_ms",
    "serial_sd_tokens_per_verify",
    "constant_trace_set",
]


# --------------------------------------------------------------------------- helpers


def phase_total_ms(phase_ms: float | Sequence[float], include_cpu_stages: bool = True) -> float:
    """Total of stages 1-4, ms.

    ``phase_ms`` is either a total (float) or the four stage times
    ``(load, preprocess, vision_encode, prefill)``; with ``include_cpu_stages=False``
    the first two (CPU) stages are dropped, as :class:`egpt_sim.sim.draws.DrawBank` does.
    """
    if isinstance(phase_ms, (int, float, np.integer, np.floating)):
        return float(phase_ms)
    stages = [float(x) for x in phase_ms]
    if len(stages) != 4:
        raise ValueError(f"phase_ms needs 4 stage times (load, preprocess, vision_encode, prefill), got {phase_ms!r}")
    if not include_cpu_stages:
        stages[0] = stages[1] = 0.0
    return float(sum(stages))


def verify_ms_interp(k: int, verify_ms_by_gamma: Mapping[int, float] | None, decode_ms: float) -> float:
    """``V(k)``: cost of one verify pass over ``k`` drafts, ms.

    Linear interpolation of ``verify_ms_by_gamma`` in ``k`` (flat beyond the largest
    measured gamma); if no gamma 0 is given, a pass over 0 drafts is a decode step
    (``decode_ms``). Without verify measurements every pass costs ``decode_ms``.
    """
    if not verify_ms_by_gamma:
        return float(decode_ms)
    items = sorted((int(g), float(ms)) for g, ms in verify_ms_by_gamma.items())
    gam = [g for g, _ in items]
    med = [ms for _, ms in items]
    if gam[0] > 0:
        gam, med = [0] + gam, [float(decode_ms)] + med
    return float(np.interp(k, gam, med))


def _survival(alpha: float | None, survival: Sequence[float] | None, n: int) -> np.ndarray:
    """P(R >= i) for i = 0..n, from ``alpha`` (i.i.d.) or a given curve (last value's
    ratio is *not* extrapolated: the curve must be long enough)."""
    if survival is not None:
        s = np.asarray(survival, dtype=float)
        if len(s) < n + 1:
            raise ValueError(f"survival curve needs P(R >= i) for i = 0..{n}, got {len(s)} values")
        return s[: n + 1]
    if alpha is None or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return float(alpha) ** np.arange(n + 1, dtype=float)


# --------------------------------------------------------------------------- target only


def target_only_latency_ms(target_phase_ms: float | Sequence[float], decode_ms: float, n_tokens: int,
                           include_cpu_stages: bool = True) -> float:
    """Latency of ``target_only``: ``T_t + (N - 1) * D`` (ms).

    The target's prefill gives the first answer token; each of the remaining N - 1
    tokens costs one decode step. TTFT is ``T_t``.
    """
    if n_tokens < 1:
        raise ValueError("n_tokens must be >= 1")
    return phase_total_ms(target_phase_ms, include_cpu_stages) + (n_tokens - 1) * float(decode_ms)


# --------------------------------------------------------------------------- prefill_then_verify


def lane_target_phase_ms(target_phase_ms: float | Sequence[float], drafter_phase_ms: float | Sequence[float],
                         include_cpu_stages: bool = True) -> float:
    """``T_t' = C_d + T_t``: end of the target's stages 1-4 when both prefills run at once.

    CPU lane (:mod:`egpt_sim.sim.processes`): the two roles' CPU stages run one after the
    other, drafter first, so the target's stage 1 starts when the drafter's stage 2 ends,
    at ``C_d`` = drafter load + preprocess. ``drafter_phase_ms`` given as a total carries
    no CPU split: ``C_d = 0`` then.
    """
    T_t = phase_total_ms(target_phase_ms, include_cpu_stages)
    if isinstance(drafter_phase_ms, (int, float, np.integer, np.floating)) or not include_cpu_stages:
        return T_t
    d = [float(x) for x in drafter_phase_ms]
    return (d[0] + d[1]) + T_t



def window_drafts(target_phase_ms: float, drafter_phase_ms: float, step_ms: float, gamma: int,
                  n_tokens: int) -> int:
    """``W``: drafts the drafter holds when the target's prefill ends (ms inputs).

    The drafter's prefill ends at ``T_d`` with draft ``d1``, the target's at ``T_t`` (for a
    parallel prefill pass ``T_t'`` of :func:`lane_target_phase_ms`);
    afterwards it drafts one token per ``S`` ms (the j-th step ends at ``T_d + j S``)
    until it holds ``gamma`` drafts (the window budget) or has drafted position ``N``.
    A step still running at ``T_t`` is not in the window::

        W = 0                                         if T_d > T_t
        W = min(gamma, N, max(1, ceil((T_t - T_d) / S)))  otherwise

    which is ``min(gamma, N, 1 + floor((T_t - T_d) / S))`` whenever ``(T_t - T_d) / S``
    is not an integer. Ties: a step ending exactly at ``T_t`` is counted late (the fast
    path's rule; SimPy orders same-instant events by scheduling, so keep test times off
    ties); a drafter prefill ending exactly at ``T_t`` is in the window (``W = 1``, which
    gives no verify pass either way, since ``k = W - 1 = 0``).
    """
    T_t, T_d, S = float(target_phase_ms), float(drafter_phase_ms), float(step_ms)
    if T_d > T_t:
        return 0
    in_window = max(1, math.ceil((T_t - T_d) / S)) if S > 0 else gamma
    return int(max(0, min(gamma, n_tokens, in_window)))


def prefill_then_verify_verified_drafts(target_phase_ms: float, drafter_phase_ms: float, step_ms: float,
                                        gamma: int, n_tokens: int) -> int:
    """``k``: drafts the single verify pass checks, given ``d1`` matched ``t1``.

    After the target's prefill commits ``t1`` (position 1), the drafts for positions
    2..W are available; :func:`egpt_sim.sim.processes.verify_budget` caps them at gamma and
    at ``N - 2`` (the pass itself commits one more token, and the answer ends at N)::

        k = max(0, min(W - 1, gamma, N - 2))
    """
    W = window_drafts(target_phase_ms, drafter_phase_ms, step_ms, gamma, n_tokens)
    return int(max(0, min(W - 1, gamma, n_tokens - 2)))


def prefill_then_verify_expectations(
    alpha: float | None,
    gamma: int,
    n_tokens: int,
    target_phase_ms: float | Sequence[float],
    drafter_phase_ms: float | Sequence[float],
    drafter_decode_ms: float,
    include_cpu_stages: bool = True,
    survival: Sequence[float] | None = None,
) -> dict[str, float]:
    """Expected token counts of ``prefill_then_verify`` (fixed times, no contention).

    ``window_drafts`` = W and ``verified_drafts`` = k (deterministic; the target's
    prefill ends at ``T_t'`` of :func:`lane_target_phase_ms`);
    ``verify_passes`` = P(R0 >= 1) if k > 0 else 0; ``verify_accepted_tokens`` =
    E[L; R0 >= 1] = sum_{j=1..k} P(R0 >= j + 1); ``accepted_tokens`` (=
    ``window_accepted``) adds ``d1`` when it is in the window and equals ``t1``
    (probability P(R0 >= 1)): the simulator counts it as accepted, so the window's
    accepted prefix has the meaning of ``accepted_len`` in acceptance traces.
    """
    T_t = lane_target_phase_ms(target_phase_ms, drafter_phase_ms, include_cpu_stages)
    T_d = phase_total_ms(drafter_phase_ms, include_cpu_stages)
    W = window_drafts(T_t, T_d, float(drafter_decode_ms), gamma, n_tokens)
    k = prefill_then_verify_verified_drafts(T_t, T_d, float(drafter_decode_ms), gamma, n_tokens)
    surv = _survival(alpha, survival, k + 1)
    L = float(surv[2 : k + 2].sum()) if k > 0 else 0.0
    d1 = float(surv[1]) if W >= 1 else 0.0
    return {
        "window_drafts": W,
        "verified_drafts": k,
        "verify_passes": float(surv[1]) if k > 0 else 0.0,
        "verify_accepted_tokens": L,
        "accepted_tokens": d1 + L,
        "window_accepted": d1 + L,
    }


def prefill_then_verify_latency_ms(
    alpha: float | None,
    gamma: int,
    n_tokens: int,
    target_phase_ms: float | Sequence[float],
    drafter_phase_ms: float | Sequence[float],
    target_decode_ms: float,
    drafter_decode_ms: float,
    verify_ms_by_gamma: Mapping[int, float] | None = None,
    include_cpu_stages: bool = True,
    survival: Sequence[float] | None = None,
) -> float:
    """E[latency] of ``prefill_then_verify`` with fixed times and no contention, ms.

    Derivation. The target's prefill ends at ``T_t' = C_d + T_t``
    (:func:`lane_target_phase_ms`: its CPU stages wait for the drafter's, ``C_d``). Let
    ``R0`` be the window's run (``d1`` matches iff ``R0 >= 1``), ``W`` from
    :func:`window_drafts` and ``k`` from :func:`prefill_then_verify_verified_drafts`
    (both with ``T_t'``). Below, ``T_t`` stands for ``T_t'``.

    * ``R0 = 0`` (``d1 != t1``) or ``k = 0``: the drafter re-synchronises / has nothing
      to offer; no verify pass runs and the target decodes the other N - 1 tokens::

          L_ms = T_t + (N - 1) D

    * ``R0 >= 1`` and ``k > 0``: one verify pass over drafts 2..k+1 accepts
      ``L = min(R0 - 1, k)`` and commits ``L + 1`` tokens; then ``N - 2 - L`` decode
      steps::

          L_ms = T_t + V(k) + (N - 2 - L) D

    Taking expectations, with ``E[L; R0 >= 1] = sum_{j=1..k} P(R0 >= j + 1)``::

        E[L_ms] = T_t + (N - 1) D + P(R0 >= 1) (V(k) - D) - D sum_{j=1..k} P(R0 >= j + 1)

    For i.i.d. acceptance ``P(R0 >= i) = alpha**i``, so the verify pass runs with
    probability ``alpha`` and ``E[L] = sum_{j=1..k} alpha**(j + 1)``. ``survival``
    (``P(R0 >= i)``, i = 0..k + 1, e.g. ``CurveAcceptance.survival``) replaces ``alpha``.
    TTFT is ``T_t'``: ``C_d`` later than ``target_only``'s, the price of the CPU lane.
    Valid for two GPUs without host contention, or one GPU with ``contention='none'``.
    """
    T_t = lane_target_phase_ms(target_phase_ms, drafter_phase_ms, include_cpu_stages)
    T_d = phase_total_ms(drafter_phase_ms, include_cpu_stages)
    D = float(target_decode_ms)
    base = target_only_latency_ms(T_t, D, n_tokens)
    k = prefill_then_verify_verified_drafts(T_t, T_d, float(drafter_decode_ms), gamma, n_tokens)
    if k == 0:
        return base
    surv = _survival(alpha, survival, k + 1)
    V = verify_ms_interp(k, verify_ms_by_gamma, D)
    return float(base + surv[1] * (V - D) - D * surv[2 : k + 2].sum())


# --------------------------------------------------------------------------- serial SD


def _serial_sd_dp(alpha: float, gamma: int, n_tokens: int, pass_cost) -> float:
    """E[sum of ``pass_cost(w, L)`` over serial_sd's target passes after prefill].

    State ``c`` = committed tokens with the drafter synchronised (no drafts pending) —
    true after the target's prefill (c = 1) and after *every* verify pass (a pass that
    accepts L < k leaves a mismatch at c + L + 1; one that accepts all k commits the
    target's bonus token at c + k + 1, which the drafter has not drafted). From ``c``:

    * ``c = N``: done;
    * ``c = N - 1``: one decode step (``w = 0``, ``L = 0``);
    * else ``w = min(gamma, N - c - 1)`` draft steps, one verify pass over ``w``
      drafts, ``P(L = l) = alpha**l (1 - alpha)`` for ``l < w``, ``P(L = w) = alpha**w``
      (runs are geometric, hence memoryless after each re-synchronisation), next
      state ``c + L + 1``.
    """
    a = float(alpha)
    E = np.zeros(n_tokens + 2)
    for c in range(n_tokens - 1, 0, -1):
        w = min(gamma, n_tokens - c - 1)
        if w == 0:
            E[c] = pass_cost(0, 0) + E[c + 1]
            continue
        tot = 0.0
        for l in range(w + 1):
            p = a**l * (1.0 - a) if l < w else a**w
            if p:
                tot += p * (pass_cost(w, l) + E[c + l + 1])
        E[c] = tot
    return float(E[1]) if n_tokens >= 2 else 0.0


def serial_sd_expectations(alpha: float, gamma: int, n_tokens: int) -> dict[str, float]:
    """Expected per-request counts of ``serial_sd`` (i.i.d. acceptance, exact under the
    truncation at N; see :func:`_serial_sd_dp`).

    Returns ``verify_passes``, ``decode_passes`` (0/1: a final single-token pass),
    ``target_passes``, ``verify_accepted_tokens`` (drafts accepted by verify passes),
    ``accepted_tokens`` (those plus ``d1`` when it equals ``t1``, probability
    ``alpha``: the simulator counts that draft as accepted although it saves no
    pass), ``draft_steps`` (after the drafter's prefill) and ``tokens_per_verify`` =
    E[tokens committed by verify passes] / E[verify passes] (what a pooled estimator
    over many requests converges to). Identity: ``verify_accepted_tokens +
    target_passes = N - 1``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    dp = lambda f: _serial_sd_dp(alpha, gamma, n_tokens, f)  # noqa: E731
    vp = dp(lambda w, l: 1.0 if w else 0.0)
    acc = dp(lambda w, l: float(l))
    dec = dp(lambda w, l: 0.0 if w else 1.0)
    steps = dp(lambda w, l: float(w))
    return {
        "verify_passes": vp,
        "decode_passes": dec,
        "target_passes": vp + dec,
        "verify_accepted_tokens": acc,
        "accepted_tokens": float(alpha) + acc,
        "draft_steps": steps,
        "tokens_per_verify": (acc + vp) / vp if vp > 0 else float("nan"),
    }


def serial_sd_tokens_per_verify(alpha: float, gamma: int) -> float:
    """Mean tokens committed per *untruncated* verify pass of ``gamma`` drafts.

    ``L = min(R, gamma)`` with ``P(R >= i) = alpha**i``, so
    ``E[L + 1] = sum_{i=0..gamma} alpha**i = (1 - alpha**(gamma + 1)) / (1 - alpha)``
    (Leviathan et al.; ``gamma + 1`` at alpha = 1, 1 at alpha = 0).
    """
    return expected_tokens_per_verify(alpha, gamma)


def serial_sd_latency_ms(
    alpha: float,
    gamma: int,
    n_tokens: int,
    target_phase_ms: float | Sequence[float],
    drafter_phase_ms: float | Sequence[float],
    target_decode_ms: float,
    drafter_decode_ms: float,
    verify_ms_by_gamma: Mapping[int, float] | None = None,
    include_cpu_stages: bool = True,
) -> float:
    """E[latency] of ``serial_sd`` with fixed times (ms); exact for every alpha.

    Drafter prefill, then target prefill (nothing overlaps, so contention never
    applies): ``T_d + T_t``; then, from ``c = 1`` committed tokens, each round drafts
    ``w = min(gamma, N - c - 1)`` tokens (``w S``) and verifies them (``V(w)``); the
    last token, if reached with ``c = N - 1``, is a decode step ``D``. Hence::

        E[L_ms] = T_d + T_t + E[ sum over rounds of (w S + V(w)) ] + P(c hits N - 1) D

    computed by the dynamic programme of :func:`_serial_sd_dp`. Special cases:
    ``alpha = 0``: every round commits 1 token, so ``N - 1`` rounds with
    ``w_c = min(gamma, N - c - 1)``; ``alpha = 1``: every round commits ``w + 1``.
    TTFT is ``T_d + T_t``.
    """
    T_t = phase_total_ms(target_phase_ms, include_cpu_stages)
    T_d = phase_total_ms(drafter_phase_ms, include_cpu_stages)
    D, S = float(target_decode_ms), float(drafter_decode_ms)
    V = {w: verify_ms_interp(w, verify_ms_by_gamma, D) for w in range(1, gamma + 1)}
    rounds = _serial_sd_dp(alpha, gamma, n_tokens, lambda w, l: (w * S + V[w]) if w else D)
    return T_d + T_t + rounds


# --------------------------------------------------------------------------- traces


_GPU_STAGES = ("vision_encode", "prefill", "decode_step", "verify")


def constant_trace_set(
    target_phase_ms: Sequence[float] = (40.0, 32.0, 24.0, 512.0),
    drafter_phase_ms: Sequence[float] = (2.0, 2.0, 4.0, 56.0),
    target_decode_ms: float = 32.0,
    drafter_decode_ms: float = 16.0,
    verify_ms_by_gamma: Mapping[int, float] | None = None,
    shared_factors: Mapping[tuple[str, str], float] | None = None,
    acceptance_alpha: float | None = None,
    *,
    peer_factors: Mapping[tuple[str, str, str], float] | None = None,
    host_factors: Mapping[tuple[str, str, str], float] | None = None,
    n_samples: int = 3,
    decode_steps: int = 4,
    acceptance_gamma: int = 8,
    acceptance_blocks_per_sample: int = 8,
    seed: int = 0,
    label: str = "constant",
):
    """An in-memory :class:`~egpt_sim.traces.TraceSet` whose every stage has a FIXED time.

    ``*_phase_ms`` are ``(load, preprocess, vision_encode, prefill)`` in ms; every
    sample repeats them, so resampling always returns the same numbers and the
    simulator becomes deterministic up to acceptance. ``verify_ms_by_gamma`` maps
    gamma -> target verify ms (default ``{1: D, 8: D}``: a verify pass costs a decode
    step). ``shared_factors`` maps ``(role, stage)`` (GPU stages only) to a same-GPU
    slow-down factor: ``shared_gpu`` rows with ``peer_busy`` are written with
    ``factor x`` the alone time, so :meth:`TraceSet.contention` fits exactly these
    factors, for any peer activity (the rows record none: schema 1.0 style).
    ``peer_factors`` / ``host_factors`` map ``(role, stage, peer_activity)`` to a factor
    written as schema-1.1 rows (``peer_activity`` set, ``overlap_frac`` 1) with
    placement ``shared_gpu`` / ``separate_gpu`` (concurrency ``streams``): the fitted
    contention models reproduce exactly these keys (a CPU stage as peer activity: the host
    factor of threads beside the peer's load / preprocess, ``ContentionModel.cpu_peer``). ``acceptance_alpha`` adds an
    acceptance table of ``n_samples x acceptance_blocks_per_sample`` blocks of
    ``acceptance_gamma`` drafts with i.i.d. Bernoulli(alpha) matches (seeded by ``seed``;
    the table is random, the times are not). Every schema column is filled.
    Prefer integer / binary-fraction times: sums are then exact in floating point.
    """
    from ..traces.traceset import TraceSet  # local: keep this module importable on its own

    tp = [float(x) for x in target_phase_ms]
    dp = [float(x) for x in drafter_phase_ms]
    if len(tp) != 4 or len(dp) != 4:
        raise ValueError("phase times need 4 stages: (load, preprocess, vision_encode, prefill)")
    D = float(target_decode_ms)
    verify = dict(verify_ms_by_gamma) if verify_ms_by_gamma else {1: D, 8: D}
    shared = dict(shared_factors or {})
    for (role, stg), f in shared.items():
        if role not in schema.ROLES or stg not in _GPU_STAGES:
            raise ValueError(f"shared_factors: ({role!r}, {stg!r}) is not a (role, GPU stage) pair")
        if not f > 0:
            raise ValueError(f"shared_factors: factor for ({role}, {stg}) must be > 0, got {f}")
        if role == "drafter" and stg == "verify":
            raise ValueError("shared_factors: the drafter has no verify stage")

    run_id = f"{label}-run"
    stages = ("load", "preprocess", "vision_encode", "prefill")
    rows = stage_rows(
        run_id, [f"{label}-{s:03d}" for s in range(n_samples)], {"target": 4096, "drafter": 512},
        {"target": 8, "drafter": 1}, {"target": dict(zip(stages, tp)), "drafter": dict(zip(stages, dp))},
        {"target": D, "drafter": float(drafter_decode_ms)}, verify, decode_steps,
        keep=lambda role, stg, is_shared: not is_shared or (role, stg) in shared,
        duration=lambda role, stg, is_shared, ms: ms * (shared[(role, stg)] if is_shared else 1.0),
    )
    st = pd.DataFrame(rows)
    st["peer_activity"] = np.where(st["peer_busy"], "busy", "none")
    st["overlap_frac"] = np.nan
    extra = [_peer_rows(st, peer_factors or {}, "shared_gpu"), _peer_rows(st, host_factors or {}, "separate_gpu")]
    st = pd.concat([st] + [e for e in extra if len(e)], ignore_index=True)
    acc = None
    if acceptance_alpha is not None:
        acc = _bernoulli_acceptance(float(acceptance_alpha), run_id, label, n_samples, acceptance_gamma,
                                    acceptance_blocks_per_sample, seed)
    meta = {
        "schema_version": schema.SCHEMA_VERSION,
        "label": label,
        "runs": {run_id: {
            "gpu_name": "none (constant synthetic times)", "dtype": "n/a", "quantization": "none",
            "versions": {}, "git_commit": "n/a", "source": "synthetic",
            "acceptance_alpha_per_token": acceptance_alpha,
        }},
    }
    return TraceSet.from_frames(st, acc, meta, path=f"<constant:{label}>")


def _peer_rows(st: pd.DataFrame, factors: Mapping[tuple[str, str, str], float], placement: str) -> pd.DataFrame:
    """Copies of the alone rows of each (role, stage) in ``factors``, as contended rows
    beside ``peer`` (schema 1.1 columns), ``factor x`` the alone time."""
    out = []
    for (role, stg, peer), f in factors.items():
        if role not in schema.ROLES or stg not in _GPU_STAGES or peer not in _GPU_STAGES + schema.CPU_STAGES \
                or not f > 0:
            raise ValueError(f"{placement} factors: bad key or factor ({role!r}, {stg!r}, {peer!r}) -> {f!r}")
        a = st[(st["role"] == role) & (st["stage"] == stg) & (st["placement"] == "alone")].copy()
        a["duration_ms"] *= float(f)
        out.append(a.assign(placement=placement, concurrency="streams", peer_busy=True, peer_activity=peer,
                            overlap_frac=1.0))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _bernoulli_acceptance(alpha: float, run_id: str, label: str, n_samples: int, gamma: int,
                          blocks: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_samples):
        for v in range(blocks):
            matched = rng.random(gamma) < alpha
            acc_len = gamma if matched.all() else int(np.argmin(matched))
            for i in range(gamma):
                tgt = 100 + 7 * i + v
                rows.append(dict(run_id=run_id, sample_id=f"{label}-{s:03d}", verify_id=v, position=i, gamma=gamma,
                                 draft_token=tgt if matched[i] else tgt + 1, target_token=tgt,
                                 p_draft=0.5, p_target=0.5 if matched[i] else 0.05,
                                 matched=bool(matched[i]), accept_prob=1.0 if matched[i] else 0.1,
                                 target_in_draft_top5=bool(matched[i]), accepted_len=acc_len))
    return pd.DataFrame(rows)
