"""Trace sets: read measured (or example) traces and turn them into samplers.

Covers: loading a trace-set folder (see :mod:`egpt_sim.traces.schema`), the per-sample tables
the simulator replays (:attr:`TraceSet.sample_tables`), verify cost as a function of the
number of drafts, and the contention models fitted from concurrent vs alone rows
(:mod:`egpt_sim.traces.contention`).

Assumptions (stated once, used everywhere):

* A simulated request replays *recorded samples*: one per role, drawn at random
  (:class:`egpt_sim.sim.draws.DrawBank`), the target's and the drafter's being the same
  recorded sample (run_id, sample_id) when both roles were recorded on it. From its
  sample a role takes its four prefill-phase stages, its decode steps in recorded order
  (with their KV lengths; beyond the recorded steps, steps are bootstrapped from the same
  sample) and, for the target, its verify rows by gamma. Only ``alone`` rows are
  replayed; contention multiplies them.
* A verify pass over ``k`` drafts costs the sample's verify time at the bracketing
  measured gammas, linearly interpolated in ``k`` (flat beyond the largest; a pass over
  0 drafts is the sample's median decode step). A sample without verify rows uses the
  pooled curve (median per gamma over all samples).
* Contention is a *rate* model keyed by (role, stage, peer activity); see
  :mod:`egpt_sim.traces.contention`.
* Stage rows are what the *serving processes* would run: a trace set holding stage-protocol
  rows timed inside the executor's workers (``harness="serving_workers"``) has the GPU rows
  of the stage runs they name rescaled at load (:mod:`egpt_sim.traces.harness`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import schema
from .contention import (ContentionModel, CpuLane, Fit, fit_cpu_lane, fit_factors, infer_peer_activity, resolve,
                         uniform_model)
from .harness import apply_serving_harness, serving_gap_ms
from .schema import PREFILL_PHASE_STAGES, TraceError

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "traces"


@dataclass(frozen=True)
class RoleSamples:
    """One role's recorded ``alone`` samples, ready for per-sample replay (ms).

    ``keys``: (run_id, sample_id) with a prefill row; ``phase_ms`` (n, 4) load /
    preprocess / vision_encode / prefill (a missing stage = 0 ms). ``decode_ms``
    (n_dec, width): the decode steps of the samples in ``decode_keys`` in step order,
    NaN-padded, ``decode_n`` steps each; ``own_decode[i]`` indexes sample i's row in
    it (-1: the sample recorded no decode step). ``verify_ms`` (n, G): median verify
    time per gamma in ``verify_gammas`` (NaN where not recorded). ``decode_median_ms``
    (n,): the sample's median decode step (pooled median if it has none).
    """

    keys: tuple
    phase_ms: np.ndarray
    decode_keys: tuple
    decode_ms: np.ndarray
    decode_n: np.ndarray
    own_decode: np.ndarray
    verify_gammas: np.ndarray
    verify_ms: np.ndarray
    decode_median_ms: np.ndarray

    def verify_curves(self, kmax: int, pooled: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """(n, kmax + 1): cost of a pass over k = 0..kmax drafts for each sample, ms."""
        k = np.arange(kmax + 1)
        out = np.empty((len(self.keys), kmax + 1))
        for i in range(len(self.keys)):
            have = np.isfinite(self.verify_ms[i]) if self.verify_ms.size else np.zeros(0, bool)
            if have.any():
                gam = self.verify_gammas[have]
                med = self.verify_ms[i, have]
                if gam[0] > 0:
                    gam, med = np.concatenate([[0], gam]), np.concatenate([[self.decode_median_ms[i]], med])
                out[i] = np.interp(k, gam, med)
            else:
                out[i] = np.interp(k, *pooled)
        return out


@dataclass
class TraceSet:
    """A loaded trace set: validated tables + metadata. Build with :meth:`load`."""

    stage_timings: pd.DataFrame
    acceptance: pd.DataFrame | None
    metadata: dict[str, Any]
    path: str = "<memory>"
    _cache: dict = field(default_factory=dict, repr=False)
    # serving-harness factors applied at load (:mod:`egpt_sim.traces.harness`; empty: none)
    serving_factors: pd.DataFrame | None = field(default=None, repr=False)
    # acceptance the executor replayed, set by validation (None: the set's recorded acceptance)
    replay_source: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> "TraceSet":
        """Load a trace-set folder; raises :class:`TraceError` (one line) on bad input."""
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"{path}: trace set folder does not exist")
        meta = schema.read_metadata(path)
        st = schema.read_table(path, schema.STAGE_TIMINGS_FILE)
        acc = None
        if schema._table_path(path, schema.ACCEPTANCE_FILE) is not None:
            acc = schema.read_table(path, schema.ACCEPTANCE_FILE)
        st, factors = apply_serving_harness(st, meta)
        ts = cls(st, acc, meta, str(path), serving_factors=factors)
        ts._check_has_samples()
        return ts

    @classmethod
    def from_frames(cls, stage_timings: pd.DataFrame, acceptance: pd.DataFrame | None,
                    metadata: dict[str, Any], path: str = "<memory>") -> "TraceSet":
        st = schema.validate(stage_timings, schema.STAGE_TIMINGS_FILE, path)
        acc = None if acceptance is None else schema.validate(acceptance, schema.ACCEPTANCE_FILE, path)
        st, factors = apply_serving_harness(st, metadata)
        ts = cls(st, acc, metadata, path, serving_factors=factors)
        ts._check_has_samples()
        return ts

    def _check_has_samples(self) -> None:
        """Zero OK samples is an error at load time: never analyse or report nothing."""
        if self.ok_rows.empty:
            raise TraceError(f"{self.path}: stage_timings has no rows with status 'ok'")

    def check_simulatable(self) -> None:
        """Both roles need alone prefill and decode rows to be replayed (a target-only
        frame sweep loads and plots fine, but cannot drive a simulation)."""
        for role in schema.ROLES:
            for stage in ("prefill", "decode_step"):
                if self._alone(role, stage).empty:
                    raise TraceError(
                        f"{self.path}: column 'stage' has no '{stage}' rows for role '{role}' "
                        "with placement 'alone' (needed to simulate)"
                    )

    def with_replay_source(self, source: Any) -> "TraceSet":
        """A shallow copy that replays ``source`` (an acceptance source, e.g. one sample's) and
        shares this set's tables and caches; the per-sample tables and the verify curve are
        computed once, here, rather than once per copy."""
        self.sample_tables, self.verify_curve  # noqa: B018 -- warm before copying
        own = copy.copy(self)
        own.replay_source = source
        return own

    # ------------------------------------------------------------------ views
    @cached_property
    def pass_gap_ms(self) -> dict[str, float]:
        """role -> host time (ms) the serving loop spends between two passes of that role
        (:func:`egpt_sim.traces.harness.serving_gap_ms`). Recorded for the target's loop (the
        reference requests); a role without its own gap takes the target's (the two loops do the
        same per-pass bookkeeping: 0.13-0.20 vs 0.18 ms on two H200s); 0 when nothing was recorded."""
        gaps = serving_gap_ms(self.metadata)
        return {role: gaps.get(role, gaps.get("target", 0.0)) for role in schema.ROLES}

    @cached_property
    def ok_rows(self) -> pd.DataFrame:
        return self.stage_timings[self.stage_timings["status"] == "ok"]

    @property
    def label(self) -> str:
        return str(self.metadata.get("label", Path(self.path).name))

    @property
    def source(self) -> str:
        kinds = {str(r.get("source", "unknown")) for r in self.metadata["runs"].values()}
        return ", ".join(sorted(kinds))

    def provenance(self) -> str:
        """One line for figure captions: trace set, GPU, dtype, sample count, source."""
        runs = self.metadata["runs"].values()
        gpus = sorted({str(r.get("gpu_name", "?")) for r in runs})
        dtypes = sorted({f"{r.get('dtype', '?')}/{r.get('quantization', 'none')}" for r in runs})
        n = self.ok_rows["sample_id"].nunique()
        return f"{self.label} | {', '.join(gpus)} | {', '.join(dtypes)} | {n} samples | {self.source}"

    def _alone(self, role: str, stage: str) -> pd.DataFrame:
        key = ("alone", role, stage)
        if key not in self._cache:
            r = self.ok_rows
            self._cache[key] = r[(r["role"] == role) & (r["stage"] == stage) & (r["placement"] == "alone")]
        return self._cache[key]

    def durations_ms(self, role: str, stage: str, placement: str = "alone") -> np.ndarray:
        r = self.ok_rows
        sel = r[(r["role"] == role) & (r["stage"] == stage) & (r["placement"] == placement)]
        return sel["duration_ms"].to_numpy(dtype=float)

    def prompt_tokens(self, role: str) -> int:
        p = self._alone(role, "prefill")["prompt_tokens"]
        return int(np.median(p))

    # ------------------------------------------------------------------ samplers
    @cached_property
    def prefill_phase_table(self) -> dict[str, np.ndarray]:
        """Per role: array (n_samples, 4) of load/preprocess/vision_encode/prefill ms.

        Stages missing from a trace count as 0 ms (e.g. a trace without CPU stages).
        """
        out = {}
        for role in schema.ROLES:
            r = self.ok_rows
            sel = r[(r["role"] == role) & (r["placement"] == "alone") & r["stage"].isin(PREFILL_PHASE_STAGES)]
            piv = sel.pivot_table(index=["run_id", "sample_id"], columns="stage", values="duration_ms", aggfunc="median")
            piv = piv.reindex(columns=list(PREFILL_PHASE_STAGES)).dropna(subset=["prefill"]).fillna(0.0)
            out[role] = piv.to_numpy(dtype=float)
        return out

    @cached_property
    def decode_pool(self) -> dict[str, np.ndarray]:
        return {role: self._alone(role, "decode_step")["duration_ms"].to_numpy(dtype=float) for role in schema.ROLES}

    @cached_property
    def verify_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target verify cost: (gammas, median_ms per gamma, pooled noise ratios).

        Without verify rows, a verify pass is priced as a decode step (documented
        fallback; measured traces always carry verify rows).
        """
        v = self._alone("target", "verify")
        if v.empty:
            med = float(np.median(self.decode_pool["target"]))
            return np.array([0]), np.array([med]), self.decode_pool["target"] / med
        g = v.groupby("gamma")["duration_ms"]
        med = g.median()
        ratios = (v["duration_ms"] / v["gamma"].map(med)).to_numpy(dtype=float)
        gam = med.index.to_numpy(dtype=int)
        dec = float(np.median(self.decode_pool["target"]))
        if gam[0] > 0:  # a pass with 0 drafts is a decode step
            gam = np.concatenate([[0], gam])
            med_v = np.concatenate([[dec], med.to_numpy(dtype=float)])
        else:
            med_v = med.to_numpy(dtype=float)
        return gam, med_v, ratios

    def verify_median_ms(self, k: int | np.ndarray) -> np.ndarray:
        gam, med, _ = self.verify_curve
        return np.interp(k, gam, med)

    @cached_property
    def sample_tables(self) -> dict[str, RoleSamples]:
        """Per role: the recorded ``alone`` samples for per-sample replay."""
        return {role: self._role_samples(role) for role in schema.ROLES}

    def _role_samples(self, role: str) -> RoleSamples:
        r = self.ok_rows
        mine = r[(r["role"] == role) & (r["placement"] == "alone")]
        sel = mine[mine["stage"].isin(PREFILL_PHASE_STAGES)]
        piv = sel.pivot_table(index=["run_id", "sample_id"], columns="stage", values="duration_ms", aggfunc="median")
        piv = piv.reindex(columns=list(PREFILL_PHASE_STAGES)).dropna(subset=["prefill"]).fillna(0.0)
        keys = tuple(piv.index)
        dec = mine[mine["stage"] == "decode_step"].sort_values(["run_id", "sample_id", "step"])
        steps = [g["duration_ms"].to_numpy(float) for _, g in dec.groupby(["run_id", "sample_id"], sort=True)]
        dkeys = tuple(k for k, _ in dec.groupby(["run_id", "sample_id"], sort=True))
        width = max((len(x) for x in steps), default=0)
        table = np.full((len(steps), max(width, 1)), np.nan)
        for i, x in enumerate(steps):
            table[i, : len(x)] = x
        where = {k: i for i, k in enumerate(dkeys)}
        own = np.array([where.get(k, -1) for k in keys], dtype=np.int64)
        pooled_med = float(np.nanmedian(table)) if len(steps) else float("nan")
        dmed = np.array([np.median(steps[j]) if j >= 0 else pooled_med for j in own])
        ver = mine[mine["stage"] == "verify"]
        vp = ver.pivot_table(index=["run_id", "sample_id"], columns="gamma", values="duration_ms", aggfunc="median")
        vp = vp.reindex(index=pd.MultiIndex.from_tuples(keys) if keys else None)
        gam = vp.columns.to_numpy(dtype=np.int64) if len(vp.columns) else np.zeros(0, np.int64)
        vms = vp.to_numpy(dtype=float) if len(vp.columns) else np.zeros((len(keys), 0))
        return RoleSamples(keys, piv.to_numpy(dtype=float), dkeys, table, np.array([len(x) for x in steps], np.int64),
                           own, gam, vms, dmed)

    # ------------------------------------------------------------------ contention
    @cached_property
    def contention_rows(self) -> pd.DataFrame:
        """OK rows with peer activity / overlap inferred from ``start_ms`` where the trace
        did not record them (schema 1.0); see :func:`egpt_sim.traces.contention.infer_peer_activity`."""
        return infer_peer_activity(self.ok_rows)

    def simulated_concurrency(self, concurrency: str = "auto") -> str:
        """``auto``: ``processes`` when any concurrent rows were measured with processes,
        else ``streams`` (two threads of one process, as ``measure.executor`` runs them)."""
        if concurrency != "auto":
            return concurrency
        r = self.ok_rows
        present = set(r.loc[r["placement"] != "alone", "concurrency"].astype(str))
        return next((c for c in ("processes", "streams") if c in present), "streams")

    def contention_fit(self, placement: str = "shared_gpu", concurrency: str = "auto") -> Fit:
        """What was measured: factors from ``placement`` rows of ``concurrency`` (cached)."""
        concurrency = self.simulated_concurrency(concurrency)
        key = ("fit", placement, concurrency)
        if key not in self._cache:
            self._cache[key] = fit_factors(self.contention_rows, placement, concurrency, self.label)
        return self._cache[key]

    def contention(self, placement: str = "shared_gpu", concurrency: str = "auto",
                   missing: str = "pooled") -> ContentionModel:
        """Contention model of one domain, every key resolved (see :mod:`egpt_sim.traces.contention`).

        ``placement="shared_gpu"``: same-GPU contention (one GPU). ``"separate_gpu"``:
        host contention of two GPUs: fitted from ``separate_gpu`` rows when the models run
        as threads (``streams``); 1.0 by rule for ``processes``. ``concurrency``: how the
        simulated system runs the two models (``auto``: see :meth:`simulated_concurrency`).
        ``missing``: ``SimConfig.contention_missing``. Raises :class:`TraceError` (one
        line) when one GPU is asked for with no ``shared_gpu`` rows to fit or borrow from.
        """
        concurrency = self.simulated_concurrency(concurrency)
        key = ("contention", placement, concurrency, missing)
        if key in self._cache:
            return self._cache[key]
        domain = "gpu" if placement == "shared_gpu" else "host"
        if domain == "host" and concurrency == "processes":
            model = uniform_model(1.0, domain, "1.0 by rule: separate processes share no interpreter",
                                  "processes: no host contention (rule)", missing)
        else:
            model = resolve(self.contention_fit(placement, concurrency), missing, domain)
        self._cache[key] = model
        return model

    def cpu_lane(self, placement: str = "shared_gpu", concurrency: str = "auto") -> CpuLane:
        """The CPU lane measured by ``placement`` runs of ``concurrency`` (cached): ``overlap``
        with per (role, CPU stage) factors when those runs started both roles' CPU stages
        together, else ``serial`` (see :class:`egpt_sim.traces.contention.CpuLane`)."""
        concurrency = self.simulated_concurrency(concurrency)
        key = ("cpu_lane", placement, concurrency)
        if key not in self._cache:
            self._cache[key] = fit_cpu_lane(self.ok_rows, self.metadata, placement, concurrency, self.label)
        return self._cache[key]

    # ------------------------------------------------------------------ acceptance
    def acceptance_runs(self) -> list[str]:
        return [] if self.acceptance is None else sorted(self.acceptance["run_id"].astype(str).unique())

    def with_acceptance_run(self, run_id: str) -> "TraceSet":
        """The same stage timings with only acceptance run ``run_id`` (trace replay otherwise
        pools every recorded run, e.g. several drafter perturbations, into one mixture)."""
        runs = self.acceptance_runs()
        if run_id not in runs:
            raise TraceError(f"{self.path}: column 'run_id' of the acceptance table has no run {run_id!r}; runs: {runs}")
        acc = self.acceptance[self.acceptance["run_id"] == run_id]
        return TraceSet(self.stage_timings, acc, self.metadata, f"{self.path} [{run_id}]")

    def acceptance_blocks(self) -> pd.DataFrame:
        """One row per verification: run_id, sample_id, verify_id, gamma, accepted_len."""
        if self.acceptance is None:
            raise TraceError(f"{self.path}: no acceptance table in this trace set (needed for acceptance='trace'; "
                             "give a per-token rate instead, e.g. --acceptance 0.6)")
        a = self.acceptance
        return (
            a.groupby(["run_id", "sample_id", "verify_id"], as_index=False)
            .agg(gamma=("gamma", "first"), accepted_len=("accepted_len", "first"))
        )


def bundled_trace_sets() -> dict[str, Path]:
    """Trace sets shipped with the package: name -> folder."""
    if not DATA_DIR.is_dir():
        return {}
    return {
        str(p.parent.relative_to(DATA_DIR)): p.parent
        for p in sorted(DATA_DIR.glob("**/metadata.json"))
    }


def resolve_trace_set(name_or_path: str | Path | None) -> Path:
    """A path, a bundled trace-set name, or None for the default bundled set."""
    bundled = bundled_trace_sets()
    if name_or_path is None:
        for preferred in ("h100/fp16", "example/seed_calibrated"):
            if preferred in bundled:
                return bundled[preferred]
        if bundled:
            return next(iter(bundled.values()))
        raise TraceError(f"{DATA_DIR}: no bundled trace sets found")
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    raise TraceError(
        f"{name_or_path}: not a folder and not a bundled trace set (bundled: {sorted(bundled)})"
    )
