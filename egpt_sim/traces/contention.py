"""Contention: how much the two models slow each other, by what the *peer* is doing.

One rate model (used by :mod:`egpt_sim.sim.gpu` and :mod:`egpt_sim.fast` alike): while an
activity of ``role`` at measured ``stage`` runs beside an activity of the other role
whose measured stage is ``peer_activity``, it progresses at
``1 / contention_factor(role, stage, peer_activity)`` of its alone speed (rate 1 with no
peer). Two effects, each a :class:`ContentionModel` over the same keys:

* **GPU contention** (``n_gpus == 1``): both models on one GPU, fitted from
  ``placement == "shared_gpu"`` rows of the simulated concurrency.
* **Host contention** (``n_gpus >= 2``): two models as two *threads* of one interpreter
  slow each other even on separate GPUs (issue 11). Fitted from ``placement ==
  "separate_gpu"`` rows with ``concurrency == "streams"``; with ``processes`` it is 1.0 by
  rule (no shared interpreter).
* **A peer's CPU work** (threads only): in one interpreter a GPU activity is slowed by the
  other thread's CPU stages too (load, preprocess hold the interpreter the launching thread
  needs): the drafter's vision encode runs x1.8 and its prefill x1.4 beside the target's
  preprocess in the eager H200 stage runs. Keys ``(role, GPU stage, CPU stage)`` in
  :attr:`ContentionModel.cpu_peer`, fitted from ``streams`` rows that overlap the peer's CPU
  stages (:func:`label_cpu_peers`; the stage runs record a GPU row's peer among GPU stages
  only); 1 where not measured and for processes, by rule — never borrowed.

Fitting (:func:`fit_factors`), per (role, stage, peer_activity): factor = median of the
contended rows' durations / median of their *reference* durations (ratio of medians),
where a row's reference is, first available: rows of the same run and sample with the
peer idle (``overlap_frac`` <= 0.05 or unknown), else ``alone`` rows of the same sample,
else all ``alone`` rows of (role, stage); verify rows are matched by gamma. Rows with
``overlap_frac >= 0.95`` are preferred when at least 3 are known. Factors below 1 are kept
as measured. The 95 % interval is a bootstrap over recorded samples. Schema-1.0 rows
(``peer_activity == "busy"``) get their peer activity *inferred* from ``start_ms``
overlaps (:func:`infer_peer_activity`, the 1.1 definition: the peer stage overlapping
the row most); rows without ``start_ms`` stay ``busy`` and only give a (role, stage,
``any``) factor, which then stands for every peer activity ("measured, any peer").

A factor that was not measured is resolved by ``SimConfig.contention_missing``
(:func:`resolve`): ``"error"`` raises; ``"assume:<x>"`` uses x; ``"pooled"`` (default)
borrows, in order, the (role, stage) factor pooled over peer activities, the sibling
token-pass stage (``decode_step`` <-> ``verify``) with the same peer, then pooled, then
the median of the role's measured factors. Every borrowed or assumed value is labelled
``assumed`` in :meth:`ContentionModel.table` and in :meth:`ContentionModel.header`.
Host contention with no ``separate_gpu`` rows at all is an explicit assumption of 1.0
under ``"pooled"`` (today's behaviour, labelled).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np
import pandas as pd

from .schema import CPU_STAGES, TraceError

# the simulator's GPU activities, by role, as measured stage names
ROLE_STAGES = {"target": ("vision_encode", "prefill", "verify", "decode_step"),
               "drafter": ("vision_encode", "prefill", "decode_step")}
GPU_STAGES = ("vision_encode", "prefill", "decode_step", "verify")
ANY_PEER = "any"
IDLE = ("none", "")
_ACTIVITY_TO_STAGE = {"draft_step": "decode_step"}  # simulator activity -> measured stage
_SIBLING = {"decode_step": "verify", "verify": "decode_step"}  # token passes over the KV cache
_FULL_OVERLAP, _NO_OVERLAP = 0.95, 0.05
SHARED_INTERPRETER = ("streams",)  # concurrency whose two models are threads of one interpreter
MIN_ROWS = 3  # a key with fewer contended rows counts as not measured
_MAX_FACTOR = 20.0  # full_overlap_ms: a partly overlapped row implies at most this slow-down
_BOOTSTRAP = 200
MISSING_POLICIES = ("error", "pooled", "assume:<x>")


def measured_stage(activity: str) -> str:
    """The measured stage name of a simulator activity (the ONE mapping: ``draft_step``
    is a drafter ``decode_step``; every other activity is named as measured)."""
    return _ACTIVITY_TO_STAGE.get(activity, activity)


def peer_of(role: str) -> str:
    return "drafter" if role == "target" else "target"


def parse_missing(missing: str) -> float | None:
    """``"assume:<x>"`` -> x; ``"error"`` / ``"pooled"`` -> None; else ValueError."""
    if missing in ("error", "pooled"):
        return None
    if isinstance(missing, str) and missing.startswith("assume:"):
        try:
            x = float(missing.split(":", 1)[1])
        except ValueError:
            x = float("nan")
        if x > 0:
            return x
    raise ValueError(f"contention_missing must be 'error', 'pooled' or 'assume:<x>' with x > 0 (got {missing!r})")


@dataclass(frozen=True)
class Factor:
    """One slow-down factor with its provenance (value 1 = no slow-down)."""

    value: float
    basis: str  # "measured" | "measured (any peer)" | "assumed"
    note: str = ""
    n_rows: int = 0
    ci_low: float = float("nan")
    ci_high: float = float("nan")

    @property
    def measured(self) -> bool:
        return self.basis.startswith("measured")


@dataclass(frozen=True)
class ContentionModel:
    """Slow-down factors of one contention domain (``gpu``, ``host`` or ``none``).

    ``factors[(role, stage, peer_activity)]`` covers every key the simulator can ask
    (:data:`ROLE_STAGES` x the peer's stages); ``pooled[(role, stage)]`` is the factor
    pooled over peer activities (for summary tables).
    """

    factors: Mapping[tuple[str, str, str], Factor] = field(default_factory=dict)
    domain: str = "none"
    source: str = "none"
    missing: str = "pooled"
    pooled: Mapping[tuple[str, str], Factor] = field(default_factory=dict)
    cpu_peer: Mapping[tuple[str, str, str], Factor] = field(default_factory=dict)  # (role, GPU stage, CPU stage)

    def contention_factor(self, role: str, stage: str, peer_activity: str) -> float:
        """Slow-down of ``role``'s ``stage`` while the peer runs ``peer_activity`` (1 when
        the peer is idle or the domain has no contention; beside a peer's CPU stage, the
        measured :attr:`cpu_peer` factor, else 1)."""
        if self.domain == "none" or peer_activity in IDLE:
            return 1.0
        key = (role, measured_stage(stage), measured_stage(peer_activity))
        if peer_activity in CPU_STAGES:
            f = self.cpu_peer.get(key)
            return 1.0 if f is None else f.value
        f = self.factors.get(key)
        if f is None:
            raise ValueError(f"contention: no factor for {key} in the {self.domain} model ({self.source})")
        return f.value

    def factor(self, role: str, stage: str, peer_activity: str = ANY_PEER) -> float:
        """:meth:`contention_factor`; ``peer_activity="any"`` gives the pooled factor."""
        if peer_activity == ANY_PEER and self.domain != "none":
            f = self.pooled.get((role, measured_stage(stage)))
            return 1.0 if f is None else f.value
        return self.contention_factor(role, stage, peer_activity)

    @property
    def is_trivial(self) -> bool:
        """True when every factor is 1 (activities never slow each other)."""
        return all(f.value == 1.0 for f in (*self.factors.values(), *self.cpu_peer.values()))

    def scaled(self, excess_scale: float) -> "ContentionModel":
        """What-if: scale the excess slow-down (factor - 1) of every factor by ``excess_scale``."""
        if excess_scale == 1.0:
            return self

        def sc(f: Factor) -> Factor:
            lo, hi = (1.0 + (x - 1.0) * excess_scale for x in (f.ci_low, f.ci_high))
            return replace(f, value=1.0 + (f.value - 1.0) * excess_scale, ci_low=lo, ci_high=hi)

        return replace(self, factors={k: sc(f) for k, f in self.factors.items()},
                       pooled={k: sc(f) for k, f in self.pooled.items()},
                       cpu_peer={k: sc(f) for k, f in self.cpu_peer.items()},
                       source=f"{self.source} x{excess_scale:g}")

    @staticmethod
    def none(source: str = "none") -> "ContentionModel":
        return ContentionModel({}, "none", source)

    def assumptions(self) -> list[str]:
        """One line per assumed (not measured) factor."""
        return [f"{r}/{s} beside {p}: x{f.value:.3g} ({f.note})"
                for (r, s, p), f in sorted(self.factors.items()) if not f.measured]

    def header(self) -> str:
        """One line for result headers: domain, source, measured vs assumed count."""
        if self.domain == "none":
            return f"contention: none ({self.source})"
        n = len(self.factors)
        m = sum(f.measured for f in self.factors.values())
        head = f"{self.domain} contention: {self.source}; {m} of {n} factors measured"
        if m < n:
            notes = {f.note for f in self.factors.values() if not f.measured}
            why = (f"contention_missing='{self.missing}'" if any(x.startswith("pooled") for x in notes)
                   else "; ".join(sorted(notes)))
            head += f", {n - m} assumed ({why}; see .table())"
        if self.cpu_peer:
            head += f"; {len(self.cpu_peer)} measured beside the peer's CPU stages (threads)"
        return head

    def table(self, by_peer: bool = True) -> pd.DataFrame:
        """Factors with provenance: role, stage[, peer_activity], contention_factor,
        measured, basis, n_rows, ci_low, ci_high, note (the :attr:`cpu_peer` keys too).
        ``by_peer=False``: one row per (role, stage), the factor pooled over GPU peer activities."""
        items = (((r, s, p), f) for (r, s, p), f in sorted({**self.factors, **self.cpu_peer}.items())) if by_peer else \
            (((r, s), f) for (r, s), f in sorted(self.pooled.items()))
        rows = []
        for key, f in items:
            row = {"role": key[0], "stage": key[1]} | ({"peer_activity": key[2]} if by_peer else {})
            rows.append(row | {"contention_factor": f.value, "measured": f.measured, "basis": f.basis,
                               "n_rows": f.n_rows, "ci_low": f.ci_low, "ci_high": f.ci_high,
                               "note": f.note, "domain": self.domain})
        cols = ["role", "stage"] + (["peer_activity"] if by_peer else []) + [
            "contention_factor", "measured", "basis", "n_rows", "ci_low", "ci_high", "note", "domain"]
        return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- peer activity


def infer_peer_activity(rows: pd.DataFrame) -> pd.DataFrame:
    """Fill ``peer_activity`` / ``overlap_frac`` of concurrent rows from ``start_ms``.

    For rows of ``shared_gpu`` / ``separate_gpu`` runs whose ``overlap_frac`` is unknown
    (schema 1.0), the overlap with the other role's GPU spans of the same run and sample
    is computed; a ``busy`` row gets the peer stage with the largest overlap (the 1.1
    definition). Rows without ``start_ms`` keep what they had. Adds a boolean column
    ``peer_inferred``.
    """
    out = rows.copy()
    out["peer_inferred"] = False
    conc = out[(out["placement"] != "alone") & out["overlap_frac"].isna() & out["start_ms"].notna()
               & out["stage"].isin(GPU_STAGES)]
    if conc.empty:
        return out
    pa = out["peer_activity"].astype(object).to_numpy().copy()
    of = out["overlap_frac"].to_numpy(dtype=float).copy()
    inferred = np.zeros(len(out), dtype=bool)
    for _, g in conc.groupby(["run_id", "sample_id"], sort=False):
        pos = out.index.get_indexer(g.index)
        start = g["start_ms"].to_numpy(float)
        end = start + g["duration_ms"].to_numpy(float)
        role = g["role"].to_numpy(object)
        code = np.array([GPU_STAGES.index(x) for x in g["stage"]], dtype=np.int64)
        for j in range(len(g)):
            peer = role != role[j]
            ov = _overlap_ms(start[j], end[j], start[peer], end[peer])
            dur, tot = end[j] - start[j], ov.sum()
            p = pos[j]
            of[p] = min(1.0, tot / dur) if dur > 0 else 0.0
            if pa[p] == "busy" and tot > 0:
                pa[p] = GPU_STAGES[int(np.argmax(np.bincount(code[peer], weights=ov, minlength=len(GPU_STAGES))))]
                inferred[p] = True
    out["peer_activity"] = pd.array(pa, dtype="string")
    out["overlap_frac"] = of
    out["peer_inferred"] = inferred
    return out


def _overlap_ms(start: float, end: float, peer_start: np.ndarray, peer_end: np.ndarray) -> np.ndarray:
    """How long (ms) the span [start, end) overlaps each peer span."""
    return np.clip(np.minimum(peer_end, end) - np.maximum(peer_start, start), 0.0, None)


def label_cpu_peers(rows: pd.DataFrame) -> pd.DataFrame:
    """GPU rows of threads runs (:data:`SHARED_INTERPRETER`) recorded with an idle peer but
    overlapping the peer's CPU stages (same run and sample, from ``start_ms``) get that CPU
    stage as ``peer_activity`` (the one overlapping most) and its ``overlap_frac``; column
    ``cpu_peer`` marks them. The stage runs record a GPU row's peer among the peer's GPU
    stages only (``measure.writer.peer_overlap``), so these rows read as uncontended.

    Column ``confounded`` marks GPU rows recorded beside a GPU peer for part of their time
    (overlap < 0.95) and beside the peer's CPU stages for more than 0.05 of it: their
    full-overlap equivalent (:func:`full_overlap_ms`) assumes the rest ran alone, which it did
    not (eager H200 grid: a drafter prefill 80 % beside the target's preprocess and 20 %
    beside its vision encode read as x19 beside the vision encode). Fits leave them out."""
    out = rows.copy()
    out["cpu_peer"] = False
    out["confounded"] = False
    if out.empty or "start_ms" not in out:
        return out
    shared = (out["placement"] != "alone") & out["concurrency"].isin(SHARED_INTERPRETER) & out["start_ms"].notna()
    partial = ~(out["overlap_frac"] >= _FULL_OVERLAP)
    gpu = shared & out["stage"].isin(GPU_STAGES) & (out["peer_activity"].isin(IDLE) | partial)
    cpu = shared & out["stage"].isin(CPU_STAGES)
    if not (gpu.any() and cpu.any()):
        return out
    pa = out["peer_activity"].astype(object).to_numpy().copy()
    of = out["overlap_frac"].to_numpy(dtype=float).copy()
    mark, confounded = np.zeros(len(out), dtype=bool), np.zeros(len(out), dtype=bool)
    idle = out["peer_activity"].isin(IDLE).to_numpy()
    start, dur = out["start_ms"].to_numpy(float), out["duration_ms"].to_numpy(float)
    stage, key = out["stage"].to_numpy(), list(zip(out["run_id"], out["sample_id"], out["role"]))
    by_key: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(cpu.to_numpy()):
        by_key.setdefault(key[i], []).append(i)
    cpu_spans = {k: (start[g], start[g] + dur[g], stage[g]) for k, g in by_key.items()}  # -> its CPU spans
    for i in np.flatnonzero(gpu.to_numpy()):
        run, sid, role = key[i]
        peer = cpu_spans.get((run, sid, peer_of(role)))
        if peer is None or not dur[i] > 0:
            continue
        ov = _overlap_ms(start[i], start[i] + dur[i], peer[0], peer[1])
        frac = min(1.0, float(ov.sum()) / dur[i])
        if frac <= _NO_OVERLAP:
            continue
        if idle[i]:
            pa[i], of[i], mark[i] = str(peer[2][int(np.argmax(ov))]), frac, True
        else:
            confounded[i] = True
    out["peer_activity"] = pd.array(pa, dtype="string")
    out["overlap_frac"] = of
    out["cpu_peer"], out["confounded"] = mark, confounded
    return out


# --------------------------------------------------------------------------- fitting


def _reference_lookup(rows: pd.DataFrame, placement: str, concurrency: str) -> dict:
    """Reference durations by key: same run & sample with the peer idle, alone by sample,
    alone pooled (verify keyed by gamma, other stages by gamma 0)."""
    conc = rows[(rows["placement"] == placement) & rows["peer_activity"].isin(IDLE)
                & ~(rows["overlap_frac"] > _NO_OVERLAP)]
    if concurrency != "any":
        conc = conc[conc["concurrency"] == concurrency]
    alone = rows[rows["placement"] == "alone"]
    dur = "duration_ms"
    return {
        "same run": conc.groupby(["run_id", "sample_id", "role", "stage", "gamma"])[dur].median().to_dict(),
        "alone, same sample": alone.groupby(["sample_id", "role", "stage", "gamma"])[dur].median().to_dict(),
        "alone, pooled": alone.groupby(["role", "stage", "gamma"])[dur].median().to_dict(),
    }


def _references(busy: pd.DataFrame, lookup: dict) -> tuple[np.ndarray, list[str]]:
    """Per contended row: its reference duration (ms) and which kind was used."""
    ref = np.full(len(busy), np.nan)
    kind = [""] * len(busy)
    keys = zip(busy["run_id"], busy["sample_id"], busy["role"], busy["stage"], busy["gamma"])
    for i, (run, sid, role, stage, gam) in enumerate(keys):
        for name, k in (("same run", (run, sid, role, stage, gam)), ("alone, same sample", (sid, role, stage, gam)),
                        ("alone, pooled", (role, stage, gam))):
            v = lookup[name].get(k)
            if v is not None and v > 0:
                ref[i], kind[i] = v, name
                break
    return ref, kind


def _ratio_with_ci(dur: np.ndarray, ref: np.ndarray, cluster: np.ndarray, seed: int) -> tuple[float, float, float]:
    """median(dur) / median(ref), with a 95 % bootstrap interval over clusters (samples)."""
    value = float(np.median(dur) / np.median(ref))
    labels, inv = np.unique(cluster, return_inverse=True)
    if len(labels) < 2:
        return value, float("nan"), float("nan")
    groups = [np.flatnonzero(inv == c) for c in range(len(labels))]
    rng = np.random.default_rng(seed)
    reps = np.empty(_BOOTSTRAP)
    for b in range(_BOOTSTRAP):
        idx = np.concatenate([groups[c] for c in rng.integers(len(groups), size=len(groups))])
        reps[b] = np.median(dur[idx]) / np.median(ref[idx])
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return value, float(lo), float(hi)


def full_overlap_ms(dur_ms: np.ndarray, ref_ms: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """The duration a partly overlapped row would have had overlapped throughout, under the
    rate model: alone work W = ref ran (1 - o) of its wall time D at rate 1 and o of it at
    rate 1/f, so W = D (1 - o + o / f) and f = o / (W / D - 1 + o); returns W x f (ms).
    Rows with an unknown overlap (NaN) count as fully overlapped."""
    o = np.where(np.isfinite(overlap), overlap, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = o / (ref_ms / dur_ms - 1.0 + o)
    return ref_ms * np.clip(np.where(np.isfinite(f) & (f > 0), f, _MAX_FACTOR), 1.0 / _MAX_FACTOR, _MAX_FACTOR)


def _fit_one(sel: pd.DataFrame, ref: np.ndarray, kinds: list[str], key: tuple) -> Factor | None:
    """The factor of one key from its contended rows: full-overlap rows when at least
    :data:`MIN_ROWS`, else every row with some overlap, each taken at its full-overlap
    equivalent (:func:`full_overlap_ms`)."""
    ok = np.isfinite(ref)
    ofr = sel["overlap_frac"].to_numpy(float)
    full = ok & (ofr >= _FULL_OVERLAP)
    use = full if full.sum() >= MIN_ROWS else ok & ~(ofr < _NO_OVERLAP)
    if use.sum() < MIN_ROWS:
        return None
    dur = full_overlap_ms(sel["duration_ms"].to_numpy(float)[use], ref[use], ofr[use])
    cluster = (sel["run_id"].astype(str) + "/" + sel["sample_id"].astype(str)).to_numpy()[use]
    value, lo, hi = _ratio_with_ci(dur, ref[use], cluster, zlib.crc32(repr(key).encode()))
    used = pd.Series(np.asarray(kinds, dtype=object)[use]).value_counts()
    note = "reference: " + ", ".join(f"{k} {n}" for k, n in used.items())
    if full.sum() >= MIN_ROWS:
        note += f"; overlap >= {_FULL_OVERLAP:g} rows only"
    return Factor(value, "measured", note, int(use.sum()), lo, hi)


def fit_factors(rows: pd.DataFrame, placement: str, concurrency: str, label: str) -> "Fit":
    """Measured factors from ``placement`` rows of ``concurrency`` (``any``: pooled).

    ``rows``: OK stage rows after :func:`infer_peer_activity`; ``label`` names the trace
    set in provenance. Unmeasured keys are left out (see :func:`resolve`). Rows beside the
    peer's CPU stages (:func:`label_cpu_peers`; rows that carry a CPU peer already, as the
    executor's spans do) give :attr:`Fit.cpu_peer` with threads and nothing with processes (1
    by rule); they are neither idle references nor part of the GPU-peer factors; confounded
    rows are left out.
    """
    rows = label_cpu_peers(rows)
    busy = rows[(rows["placement"] == placement) & ~rows["peer_activity"].isin(IDLE)
                & rows["stage"].isin(GPU_STAGES) & ~rows["confounded"]]
    if concurrency != "any":
        busy = busy[busy["concurrency"] == concurrency]
    how = f"{placement}/{concurrency} rows of {label}"
    by_peer, pooled, unrecorded, cpu_peer = {}, {}, set(), {}
    if busy.empty:
        return Fit(by_peer, pooled, unrecorded, how, 0)
    ref, kinds = _references(busy, _reference_lookup(rows, placement, concurrency))
    on_cpu = busy["peer_activity"].isin(CPU_STAGES).to_numpy(dtype=bool)
    threads = on_cpu & busy["concurrency"].isin(SHARED_INTERPRETER).to_numpy(dtype=bool)
    for (role, stage, peer), g in busy[threads].groupby(["role", "stage", "peer_activity"], sort=True):
        m = busy.index.get_indexer(g.index)
        f = _fit_one(g, ref[m], [kinds[i] for i in m], (role, stage, str(peer)))
        if f is not None:
            cpu_peer[(role, stage, str(peer))] = f
    busy, ref, kinds = busy[~on_cpu], ref[~on_cpu], [k for k, c in zip(kinds, on_cpu) if not c]
    for (role, stage), g in busy.groupby(["role", "stage"], sort=True):
        m = busy.index.get_indexer(g.index)
        f = _fit_one(g, ref[m], [kinds[i] for i in m], (role, stage, ANY_PEER))
        if f is not None:
            pooled[(role, stage)] = f
        peers = g["peer_activity"].astype(str)
        if (peers == "busy").all():
            unrecorded.add((role, stage))
        for peer, gp in g[peers != "busy"].groupby("peer_activity", sort=True):
            mp = busy.index.get_indexer(gp.index)
            f = _fit_one(gp, ref[mp], [kinds[i] for i in mp], (role, stage, str(peer)))
            if f is not None:
                by_peer[(role, stage, str(peer))] = f
    inferred = bool(busy["peer_inferred"].any()) if "peer_inferred" in busy else False
    return Fit(by_peer, pooled, unrecorded, how, int(len(busy)), inferred, _run_drift(rows, placement, concurrency),
               cpu_peer)


def _run_drift(rows: pd.DataFrame, placement: str, concurrency: str) -> str:
    """Diagnostic: the target's decode step with the peer idle in the concurrent runs vs
    ``alone`` (same samples). Far from 1 means the runs drifted (eager decode is host
    bound), which factors referenced to ``alone`` rows carry."""
    conc = rows[(rows["placement"] == placement) & rows["peer_activity"].isin(IDLE)
                & (rows["role"] == "target") & (rows["stage"] == "decode_step")]
    if concurrency != "any":
        conc = conc[conc["concurrency"] == concurrency]
    alone = rows[(rows["placement"] == "alone") & (rows["role"] == "target") & (rows["stage"] == "decode_step")]
    alone = alone[alone["sample_id"].isin(set(conc["sample_id"]))]
    if conc.empty or alone.empty:
        return ""
    r = float(conc["duration_ms"].median() / alone["duration_ms"].median())
    return f"run drift: target decode_step with the peer idle runs x{r:.2f} of alone"


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Fit:
    """What was measured for one domain (input of :func:`resolve`)."""

    by_peer: dict
    pooled: dict
    unrecorded: set
    label: str  # e.g. "shared_gpu/processes rows of h100/fp16"
    n_rows: int  # contended rows available (0: nothing measured)
    inferred: bool = False
    drift: str = ""
    cpu_peer: dict = field(default_factory=dict)  # (role, GPU stage, peer CPU stage) -> Factor, threads only


def _borrow(key: tuple, fit: Fit) -> Factor | None:
    """``pooled`` policy: the nearest measured factor for an unmeasured key (labelled)."""
    role, stage, peer = key
    sib = _SIBLING.get(stage)
    chain = [(fit.pooled.get((role, stage)), f"{role}/{stage} pooled over peer activities")]
    if sib:
        chain += [(fit.by_peer.get((role, sib, peer)), f"{role}/{sib} beside {peer}"),
                  (fit.pooled.get((role, sib)), f"{role}/{sib} pooled over peer activities")]
    for f, note in chain:
        if f is not None:
            return Factor(f.value, "assumed", f"pooled: {note}", 0, f.ci_low, f.ci_high)
    mine = [f.value for (r, _, _), f in fit.by_peer.items() if r == role] + \
           [f.value for (r, _), f in fit.pooled.items() if r == role]
    if mine:
        return Factor(float(np.median(mine)), "assumed", f"pooled: median of {role}'s measured factors")
    return None


def resolve(fit: Fit, missing: str, domain: str) -> ContentionModel:
    """The full factor grid of one domain, unmeasured keys resolved by ``missing``."""
    assume = parse_missing(missing)
    factors = {}
    for role, stages in ROLE_STAGES.items():
        for stage in stages:
            for peer in ROLE_STAGES[peer_of(role)]:
                key = (role, stage, peer)
                f = fit.by_peer.get(key)
                if f is None and (role, stage) in fit.unrecorded and (role, stage) in fit.pooled:
                    f = replace(fit.pooled[(role, stage)], basis="measured (any peer)",
                                note=fit.pooled[(role, stage)].note + "; peer activity not recorded")
                if f is None:
                    f = _missing(key, fit, missing, assume, domain)
                factors[key] = f
    pooled = {}
    for role, stages in ROLE_STAGES.items():
        for stage in stages:
            f = fit.pooled.get((role, stage))
            pooled[(role, stage)] = f if f is not None else Factor(
                float(np.median([factors[(role, stage, p)].value for p in ROLE_STAGES[peer_of(role)]])),
                "assumed", "median over peer activities of the resolved factors")
    src = f"fitted from {fit.label}" if fit.n_rows else f"not measured (no {fit.label})"
    if fit.inferred:
        src += " (peer activity inferred from start_ms)"
    if fit.drift:
        src += f" [{fit.drift}]"
    return ContentionModel(factors, domain, src, missing, pooled, fit.cpu_peer)


def uniform_model(value: float, domain: str, source: str, note: str, missing: str = "pooled") -> ContentionModel:
    """Every key at ``value``, labelled assumed with ``note`` (e.g. host contention of processes)."""
    f = Factor(float(value), "assumed", note)
    keys = [(r, s, p) for r, stages in ROLE_STAGES.items() for s in stages for p in ROLE_STAGES[peer_of(r)]]
    return ContentionModel({k: f for k in keys}, domain, source, missing,
                           {(r, s): f for r, stages in ROLE_STAGES.items() for s in stages})


def _missing(key: tuple, fit: Fit, missing: str, assume: float | None, domain: str) -> Factor:
    if assume is not None:
        return Factor(assume, "assumed", f"contention_missing='{missing}'")
    role, stage, peer = key
    what = f"{domain} contention factor ({role}, {stage}, peer {peer}) was not measured ({fit.label})"
    if missing == "error":
        raise ValueError(f"{what}; set SimConfig.contention_missing to 'pooled' or 'assume:<x>'")
    f = _borrow(key, fit)
    if f is not None:
        return f
    if domain == "host":
        return Factor(1.0, "assumed", "host contention not measured: assumed 1.0")
    raise TraceError(f"{what}: column 'placement' has no contended rows for role {role!r}; "
                     "pass contention='none' or contention_missing='assume:<x>'")


# --------------------------------------------------------------------------- the CPU lane

CPU_LANE_MODES = ("auto", "serial", "overlap")


@dataclass(frozen=True)
class CpuLane:
    """How the CPU stages (load, preprocess) of two prefill phases that start together share
    the host, one statement for both engines (:mod:`egpt_sim.sim.rules`).

    * ``serial`` — one lane, drafter first: the target's load starts when the drafter's
      preprocess ends; every CPU stage takes its alone time (the protocol of stage runs
      recorded with ``cpu_stages="serial"``).
    * ``overlap`` — both roles start stage 1 at once, as ``measure.executor`` runs them; each
      CPU stage takes its alone time x ``factors[(role, stage)]``: median duration in the
      concurrent runs recorded with ``cpu_stages="overlap"`` over the alone median (pooled
      over what the peer did meanwhile; 1 where not measured).
    * ``none`` — only one role runs (target_only, drafter_only, serial_sd).
    """

    mode: str = "serial"
    factors: Mapping[tuple[str, str], Factor] = field(default_factory=dict)
    source: str = "serial by rule"

    def factor(self, role: str, stage: str) -> float:
        f = self.factors.get((role, stage)) if self.mode == "overlap" else None
        return 1.0 if f is None else f.value

    def multipliers(self, role: str, stages: tuple[str, ...]) -> np.ndarray:
        """Per prefill-phase stage of ``role``: its duration multiplier (1 for GPU stages)."""
        return np.array([self.factor(role, s) for s in stages])

    def describe(self) -> str:
        if self.mode != "overlap":
            return f"{self.mode} ({self.source})"
        fs = ", ".join(f"{r} {s} x{f.value:.2f}" for (r, s), f in sorted(self.factors.items()))
        return f"overlap ({self.source}): {fs or 'no CPU factor measured (x1)'}"


def overlap_runs(metadata: dict) -> set[str]:
    """Run ids whose CPU stages started together (``cpu_stages == "overlap"`` in run metadata)."""
    return {k for k, r in metadata.get("runs", {}).items() if str(r.get("cpu_stages", "")) == "overlap"}


def fit_cpu_lane(rows: pd.DataFrame, metadata: dict, placement: str, concurrency: str, label: str) -> CpuLane:
    """The ``overlap`` lane measured by ``placement`` runs of ``concurrency`` recorded with
    overlapping CPU stages; ``serial`` (labelled) when there are none."""
    runs = overlap_runs(metadata)
    conc = rows[(rows["placement"] == placement) & rows["run_id"].astype(str).isin(runs)
                & rows["stage"].isin(CPU_STAGES)]
    if concurrency != "any":
        conc = conc[conc["concurrency"] == concurrency]
    if conc.empty:
        return CpuLane("serial", {}, f"no {placement}/{concurrency} run of {label} recorded overlapping CPU stages")
    factors = {}
    ref = _cpu_references(conc, rows, metadata)
    for (role, stage), g in conc.groupby(["role", "stage"], sort=True):
        r = ref[conc.index.get_indexer(g.index)]
        ok = np.isfinite(r) & (r > 0)
        if ok.sum() < MIN_ROWS:
            continue
        cluster = (g["run_id"].astype(str) + "/" + g["sample_id"].astype(str)).to_numpy()[ok]
        value, lo, hi = _ratio_with_ci(g["duration_ms"].to_numpy(float)[ok], r[ok], cluster,
                                       zlib.crc32(repr((role, stage, "cpu")).encode()))
        note = "concurrent start vs alone (interleaved run of the same samples where recorded)"
        if value < 1.0:  # a peer cannot speed a CPU stage up: below 1 is noise, kept out of the lane
            note, value = f"measured x{value:.2f} (< 1: noise), used as 1", 1.0
        factors[(role, stage)] = Factor(value, "measured", note, int(ok.sum()), lo, hi)
    return CpuLane("overlap", factors, f"{placement}/{concurrency} runs of {label} with overlapping CPU stages")


def _cpu_references(conc: pd.DataFrame, rows: pd.DataFrame, metadata: dict) -> np.ndarray:
    """Per concurrent CPU row: the median alone duration of the same sample in an alone run
    interleaved with its run (run metadata ``interleaved_with``), else of the same sample in
    any alone run, else pooled over alone rows (ms)."""
    alone = rows[(rows["placement"] == "alone") & rows["stage"].isin(conc["stage"].unique())]
    med = "duration_ms"
    same_run = alone.groupby(["run_id", "sample_id", "role", "stage"])[med].median().to_dict()
    by_sample = alone.groupby(["sample_id", "role", "stage"])[med].median().to_dict()
    pooled = alone.groupby(["role", "stage"])[med].median().to_dict()
    runs = metadata.get("runs", {})
    out = np.full(len(conc), np.nan)
    for i, (run, sid, role, stage) in enumerate(zip(conc["run_id"].astype(str), conc["sample_id"], conc["role"],
                                                     conc["stage"])):
        mates = [m for m in runs.get(run, {}).get("interleaved_with", []) if m != run]
        vals = [same_run[(m, sid, role, stage)] for m in mates if (m, sid, role, stage) in same_run]
        out[i] = vals[0] if vals else by_sample.get((sid, role, stage), pooled.get((role, stage), np.nan))
    return out
