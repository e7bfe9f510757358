"""Acceptance: where draft matches come from, and the three ways to report them.

Covers: acceptance *sources* for the simulator and acceptance *metrics* for reports.

Acceptance is a **prefix**: drafts are accepted up to the first mismatch. The simulator
therefore draws *run lengths*: after each synchronisation of the drafter with the
target's committed tokens, ``R`` is the number of consecutive drafts (positions 1, 2,
... since the sync) that will match the target; position ``R + 1`` mismatches.
A verification of ``k`` drafts accepts ``min(R, k)``.

Sources (all return run lengths, capped at :data:`RUN_CAP`):

* ``IidAcceptance(alpha)`` — every position matches with per-token rate ``alpha``
  independently: P(R >= i) = alpha**i, so with gamma drafts
  E[accepted] = sum_{i=1..gamma} alpha**i  (NOT gamma * alpha).
* ``CurveAcceptance(alphas)`` — position-dependent *conditional* rates:
  P(match at i | matched 1..i-1) = alphas[i-1]; the last value repeats.
* ``TraceAcceptance(blocks)`` — replays recorded verifications: a request picks a
  recorded sample and draws run lengths from that sample's verifications. A fully
  accepted block (accepted_len == gamma) is censored; its run continues geometrically
  with the conditional rate of the last recorded positions, shrunk toward the measured
  per-position curve by a Beta prior (:func:`conditional_tail_rate`; never exactly 1).

Metrics (names used in every table and figure):

* ``per_token_match_rate`` — fraction of draft positions whose token equals the
  target's, i.e. mean of ``matched`` (greedy runs: the target's argmax; sampled runs:
  accepted by the speculative-sampling test) over all positions, also those after a
  mismatch;
* ``mean_accepted_prefix_len`` — mean accepted prefix length per verification;
* ``p_accept_len_gt`` — per position i: P(accepted length > i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

RUN_CAP = 1_000_000  # "never mismatches" (alpha = 1)


class AcceptanceSource(Protocol):
    """Maps uniforms u in (0, 1] to run lengths (inverse CDF), vectorised.

    ``first`` marks the run of the parallel-prefill window (position 0 sync);
    ``sample_u`` picks a recorded sample per request (trace replay only).
    """

    name: str

    def runs(self, u: np.ndarray, first: np.ndarray, sample_u: np.ndarray) -> np.ndarray: ...

    def survival(self, gamma: int) -> np.ndarray: ...


def _geometric_from_u(u: np.ndarray, alpha: float) -> np.ndarray:
    """Inverse CDF of the run length with P(R >= i) = alpha**i, for u in (0, 1]."""
    u = np.asarray(u, dtype=float)
    if alpha >= 1.0:
        return np.full(u.shape, RUN_CAP, dtype=np.int64)
    if alpha <= 0.0:
        return np.zeros(u.shape, dtype=np.int64)
    with np.errstate(divide="ignore"):
        r = np.floor(np.log(u) / np.log(alpha))
    return np.minimum(r, RUN_CAP).astype(np.int64)


@dataclass(frozen=True)
class IidAcceptance:
    """Per-token match rate ``alpha``, independent across positions."""

    alpha: float

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"acceptance alpha must be in [0, 1], got {self.alpha}")

    @property
    def name(self) -> str:
        return f"iid(alpha={self.alpha:g})"

    def runs(self, u, first=None, sample_u=None):
        return _geometric_from_u(u, self.alpha)

    def survival(self, gamma: int) -> np.ndarray:
        """P(R >= i) for i = 0..gamma."""
        return self.alpha ** np.arange(gamma + 1, dtype=float)

    def expected_accepted(self, gamma: int) -> float:
        return expected_accepted_iid(self.alpha, gamma)


@dataclass(frozen=True)
class CurveAcceptance:
    """Conditional per-position rates alphas[i] = P(match at i+1 | matched 1..i).

    The last rate repeats for later positions.
    """

    alphas: tuple[float, ...]
    scale: float = 1.0  # what-if: multiply every conditional rate (clipped to [0, 1])

    def __post_init__(self):
        if not self.alphas:
            raise ValueError("acceptance curve needs at least one rate")
        if any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"acceptance curve rates must be in [0, 1], got {self.alphas}")

    @property
    def name(self) -> str:
        head = ",".join(f"{a:.2f}" for a in self.alphas[:4])
        return f"curve({head}{',...' if len(self.alphas) > 4 else ''})x{self.scale:g}"

    @property
    def rates(self) -> np.ndarray:
        return np.clip(np.asarray(self.alphas, dtype=float) * self.scale, 0.0, 1.0)

    def runs(self, u, first=None, sample_u=None):
        u = np.asarray(u, dtype=float)
        r = self.rates
        surv = np.concatenate([[1.0], np.cumprod(r)])  # P(R >= i), i = 0..K
        k = len(r)
        out = (u[..., None] <= surv[None, 1:]).sum(axis=-1).astype(np.int64)
        tail = u <= surv[k]
        if tail.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                out[tail] = k + _geometric_from_u(u[tail] / surv[k], r[-1])
        return np.minimum(out, RUN_CAP)

    def survival(self, gamma: int) -> np.ndarray:
        r = self.rates
        full = np.array([r[min(i, len(r) - 1)] for i in range(gamma)])
        return np.concatenate([[1.0], np.cumprod(full)])

    def expected_accepted(self, gamma: int) -> float:
        return float(self.survival(gamma)[1:].sum())


class TraceAcceptance:
    """Replay recorded verifications (see module docstring)."""

    def __init__(self, blocks: pd.DataFrame, tail_alpha: float | Mapping[str, float] | None = None,
                 label: str = "trace"):
        """``tail_alpha``: the censored tail's match rate — one value, or per sample id (a
        folder merged from calls whose replays used different tails; samples it does not name
        get the pooled rate); None: :func:`conditional_tail_rate` of ``blocks``."""
        if blocks.empty:
            raise ValueError("acceptance trace has zero verifications")
        self.label = label
        self.blocks = blocks
        groups = list(blocks.groupby(["run_id", "sample_id"], sort=True))
        self.n_samples = len(groups)
        self.sample_ids = [str(sid) for (_, sid), _ in groups]
        pooled = conditional_tail_rate(blocks)
        if isinstance(tail_alpha, Mapping):
            self._tails = np.array([float(tail_alpha.get(str(sid), pooled)) for (_, sid), _ in groups])
        else:
            self._tails = np.full(self.n_samples, float(pooled if tail_alpha is None else tail_alpha))
        self.tail_alpha = float(self._tails.mean())  # a single figure for labels
        # padded (n_samples, width) tables of accepted_len / gamma for window & later pools
        self._pools = {}
        for first in (True, False):
            acc, gam = [], []
            for _, g in groups:
                sel = g[g["verify_id"] == 0] if first else g[g["verify_id"] > 0]
                if sel.empty:
                    sel = g
                acc.append(sel["accepted_len"].to_numpy(int))
                gam.append(sel["gamma"].to_numpy(int))
            width = max(len(a) for a in acc)
            A = np.zeros((len(acc), width), dtype=np.int64)
            G = np.ones((len(acc), width), dtype=np.int64)
            n = np.array([len(a) for a in acc])
            for i, (a, g_) in enumerate(zip(acc, gam)):
                A[i, : len(a)], G[i, : len(a)] = a, g_
            self._pools[first] = (A, G, n)

    @property
    def name(self) -> str:
        return f"trace({self.label})"

    def for_sample(self, sample_id) -> "TraceAcceptance":
        """The verifications of one sample, continued with its own tail rate: the acceptance a
        request on that sample replays (per-request predictions, paired with a measured one)."""
        sid = str(sample_id)
        if sid not in self.sample_ids:
            raise KeyError(f"acceptance trace {self.label!r}: no verifications of sample {sid!r}")
        tails = [t for s, t in zip(self.sample_ids, self._tails) if s == sid]
        sel = self.blocks[self.blocks["sample_id"].astype(str) == sid]
        return TraceAcceptance(sel, tail_alpha=float(np.mean(tails)), label=f"{self.label} sample {sid}")

    def runs(self, u, first, sample_u):
        u = np.atleast_1d(np.asarray(u, dtype=float))
        first = np.broadcast_to(np.asarray(first, dtype=bool), u.shape)
        sample = np.minimum((np.broadcast_to(sample_u, u.shape) * self.n_samples).astype(np.int64), self.n_samples - 1)
        out = np.empty(u.shape, dtype=np.int64)
        for flag in (True, False):
            m = first == flag
            if not m.any():
                continue
            A, G, n = self._pools[flag]
            s = sample[m]
            pos = (1.0 - u[m]) * n[s]  # u in (0, 1] -> [0, n)
            j = np.minimum(pos.astype(np.int64), n[s] - 1)
            frac = pos - j  # leftover uniform in [0, 1) drives the censored tail
            run = A[s, j]
            censored = run >= G[s, j]
            if censored.any():
                cu, ct = 1.0 - frac[censored], self._tails[s[censored]]
                tail = np.zeros(cu.shape, dtype=np.int64)
                for a in np.unique(ct):  # one geometric law per distinct tail rate
                    tail[ct == a] = _geometric_from_u(cu[ct == a], float(a))
                run[censored] += tail
            out[m] = run
        return np.minimum(out, RUN_CAP)

    def survival(self, gamma: int) -> np.ndarray:
        """P(window run >= i), i = 0..gamma, weighted as ``runs`` draws: samples equally,
        then the blocks of a sample equally; censored blocks continue geometrically."""
        A, G, n = self._pools[True]
        i = np.arange(gamma + 1)[None, None, :]
        runs, cens = A[:, :, None], (A >= G)[:, :, None]
        tail = self._tails[:, None, None]
        p = np.where(runs >= i, 1.0, np.where(cens, tail ** np.maximum(i - runs, 0), 0.0))
        valid = (np.arange(A.shape[1])[None, :] < n[:, None])[:, :, None]
        per_sample = (p * valid).sum(axis=1) / n[:, None]
        return per_sample.mean(axis=0)


class NoAcceptance:
    """For strategies that never verify drafts (``target_only``, ``drafter_only``): no
    acceptance data is needed; every run length is 0."""

    name = "none"

    def runs(self, u, first=None, sample_u=None):
        return np.zeros(np.shape(u), dtype=np.int64)

    def survival(self, gamma: int) -> np.ndarray:
        return np.concatenate([[1.0], np.zeros(gamma)])


NEEDS_NO_ACCEPTANCE = ("target_only", "drafter_only")


def source_for(cfg, traces=None) -> AcceptanceSource:
    """The acceptance source of a :class:`~egpt_sim.sim.config.SimConfig`: none for strategies
    that never verify drafts (so they run without acceptance data), else :func:`make_source`."""
    if cfg.strategy in NEEDS_NO_ACCEPTANCE:
        return NoAcceptance()
    return make_source(cfg.acceptance, traces)


def make_source(spec, traces=None) -> AcceptanceSource:
    """Build a source from a config value: 'trace', a float alpha, or a sequence curve."""
    if isinstance(spec, (IidAcceptance, CurveAcceptance, TraceAcceptance, NoAcceptance)):
        return spec
    if spec is None:
        raise ValueError("acceptance is None: only target_only / drafter_only run without acceptance data")
    if isinstance(spec, str):
        if spec == "trace":
            if traces is None:
                raise ValueError("acceptance='trace' needs a trace set")
            return TraceAcceptance(traces.acceptance_blocks(), label=traces.label)
        try:
            return IidAcceptance(float(spec))
        except ValueError:
            raise ValueError(f"acceptance must be 'trace', a rate in [0,1] or a list of rates; got {spec!r}") from None
    if isinstance(spec, (int, float)):
        return IidAcceptance(float(spec))
    if isinstance(spec, Sequence):
        return CurveAcceptance(tuple(float(a) for a in spec))
    raise ValueError(f"cannot build an acceptance source from {spec!r}")


# --------------------------------------------------------------------------- metrics


def expected_accepted_iid(alpha: float, gamma: int) -> float:
    """E[accepted prefix length] for gamma drafts at i.i.d. per-token rate alpha."""
    return float(sum(alpha**i for i in range(1, gamma + 1)))


def expected_tokens_per_verify(alpha: float, gamma: int) -> float:
    """Leviathan et al.: E[tokens per verification] = (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


TAIL_PRIOR_STRENGTH = 4.0  # pseudo-verifications of the Beta prior on the tail rate


def _conditional_counts(blocks: pd.DataFrame, positions: range) -> tuple[int, int]:
    """(matched, at risk) over 0-based ``positions``: at position i the blocks at risk
    are those with gamma > i and accepted_len >= i; those with accepted_len > i matched."""
    L = blocks["accepted_len"].to_numpy()
    gam = blocks["gamma"].to_numpy()
    at_risk = matched = 0
    for i in positions:
        risk = (L >= i) & (gam > i)
        at_risk += int(risk.sum())
        matched += int((risk & (L > i)).sum())
    return matched, at_risk


def conditional_tail_rate(blocks: pd.DataFrame, last_positions: int = 2,
                          prior_strength: float = TAIL_PRIOR_STRENGTH) -> float:
    """Conditional match rate beyond the recorded block (the censored tail), shrunk.

    Posterior mean of the conditional match rate over the last ``last_positions``
    positions under a Beta(a0, b0) prior centred on the measured per-position curve:
    ``a0 = n0 m + 1/2``, ``b0 = n0 (1 - m) + 1/2`` with ``m`` the pooled conditional rate
    over *all* recorded positions, ``n0 = prior_strength`` pseudo-observations and
    Jeffreys' 1/2 on each side, i.e.::

        tail = (matched_tail + n0 m + 1/2) / (at_risk_tail + n0 + 1)

    so finite data never give exactly 1 (or 0): with 16 of 16 tail positions matched and
    m = 0.77 (``acc-sigma0.03``) the tail rate is 0.93, not 1.0.
    """
    g = int(blocks["gamma"].max())
    m_all, n_all = _conditional_counts(blocks, range(g))
    m = m_all / n_all if n_all else 0.5
    matched, at_risk = _conditional_counts(blocks, range(max(0, g - last_positions), g))
    return (matched + prior_strength * m + 0.5) / (at_risk + prior_strength + 1.0)


def acceptance_summary(acceptance: pd.DataFrame) -> dict[str, float]:
    """The three named acceptance numbers from an ACCEPTANCE table."""
    if acceptance is None or len(acceptance) == 0:
        raise ValueError("acceptance summary needs at least one recorded draft position")
    blocks = acceptance.groupby(["run_id", "sample_id", "verify_id"]).agg(
        gamma=("gamma", "first"), accepted_len=("accepted_len", "first")
    )
    return {
        "per_token_match_rate": float(acceptance["matched"].mean()),
        "mean_accepted_prefix_len": float(blocks["accepted_len"].mean()),
        "mean_gamma": float(blocks["gamma"].mean()),
        "n_verifications": int(len(blocks)),
        "n_positions": int(len(acceptance)),
    }


def acceptance_by_position(acceptance: pd.DataFrame) -> pd.DataFrame:
    """Per draft position i (1-based): match rate, conditional rate, P(accepted len >= i).

    ``p_accept_len_gt`` at row i is P(accepted length > i-1) = P(position i accepted).
    """
    blocks = acceptance.groupby(["run_id", "sample_id", "verify_id"]).agg(
        gamma=("gamma", "first"), accepted_len=("accepted_len", "first")
    )
    gmax = int(blocks["gamma"].max())
    rows = []
    for i in range(gmax):
        at_pos = acceptance[acceptance["position"] == i]
        eligible = blocks[blocks["gamma"] > i]
        risk = eligible[eligible["accepted_len"] >= i]
        rows.append({
            "position": i + 1,
            "per_token_match_rate": float(at_pos["matched"].mean()) if len(at_pos) else np.nan,
            "conditional_accept_rate": float((risk["accepted_len"] > i).mean()) if len(risk) else np.nan,
            "p_accept_len_gt": float((eligible["accepted_len"] > i).mean()) if len(eligible) else np.nan,
            "n_blocks": int(len(eligible)),
        })
    return pd.DataFrame(rows)


def iid_curve(alpha: float, gamma: int) -> pd.DataFrame:
    """The i.i.d. geometric model's P(accepted length > i-1) for comparison plots."""
    i = np.arange(1, gamma + 1)
    return pd.DataFrame({"position": i, "p_accept_len_gt": alpha**i})
