"""Trace sets: read measured (or example) traces and turn them into samplers.

Covers: loading a trace-set folder (see :mod:`egpt_sim.schema`), resampling raw stage
durations per request, verify cost as a function of the number of drafts, and the
same-GPU contention factors fitted from ``shared_gpu`` vs ``alone`` rows.

Assumptions (stated once, used everywhere):

* Durations are resampled from the raw ``alone`` rows (not only medians). The four
  prefill-phase stages of one request come from one recorded sample, so their
  correlation is kept; decode steps are bootstrapped i.i.d. from all decode steps.
* A verify pass over ``k`` drafts costs the median at the bracketing measured gammas,
  linearly interpolated in ``k``, times a resampled multiplicative noise ratio.
* Contention is a *rate* model: while the peer model is busy on the same GPU, an
  activity progresses at ``1 / factor`` of its alone speed, where
  ``factor = median(shared, peer busy) / median(alone)`` per (role, stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import schema
from .schema import TraceError

PREFILL_PHASE_STAGES = ("load", "preprocess", "vision_encode", "prefill")
DATA_DIR = Path(__file__).parent / "data" / "traces"


@dataclass(frozen=True)
class ContentionModel:
    """Slow-down factors (>= 1 means slower) while the peer model is busy on the same GPU.

    ``factors[(role, stage)]``; stages without shared measurements fall back to the
    role's decode-step factor, then to the median of the role's factors, then 1.0 —
    ``fallbacks`` says which entries were not measured directly.
    """

    factors: dict[tuple[str, str], float]
    fallbacks: tuple[tuple[str, str], ...] = ()
    source: str = "fitted"

    def factor(self, role: str, stage: str) -> float:
        return self.factors.get((role, stage), 1.0)

    def scaled(self, excess_scale: float) -> "ContentionModel":
        """What-if: scale the excess slow-down (factor - 1) by ``excess_scale``."""
        return ContentionModel(
            {k: 1.0 + (v - 1.0) * excess_scale for k, v in self.factors.items()},
            self.fallbacks,
            f"{self.source} x{excess_scale:g}",
        )

    @staticmethod
    def none() -> "ContentionModel":
        return ContentionModel({}, (), "none")

    def table(self) -> pd.DataFrame:
        rows = [
            {"role": r, "stage": s, "contention_factor": f, "measured": (r, s) not in self.fallbacks}
            for (r, s), f in sorted(self.factors.items())
        ]
        return pd.DataFrame(rows)


@dataclass
class TraceSet:
    """A loaded trace set: validated tables + metadata. Build with :meth:`load`."""

    stage_timings: pd.DataFrame
    acceptance: pd.DataFrame | None
    metadata: dict[str, Any]
    path: str = "<memory>"
    _cache: dict = field(default_factory=dict, repr=False)

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
        ts = cls(st, acc, meta, str(path))
        ts._check_has_samples()
        return ts

    @classmethod
    def from_frames(cls, stage_timings: pd.DataFrame, acceptance: pd.DataFrame | None,
                    metadata: dict[str, Any], path: str = "<memory>") -> "TraceSet":
        st = schema.validate(stage_timings, schema.STAGE_TIMINGS_FILE, path)
        acc = None if acceptance is None else schema.validate(acceptance, schema.ACCEPTANCE_FILE, path)
        ts = cls(st, acc, metadata, path)
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

    # ------------------------------------------------------------------ views
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

    def contention(self, placement: str = "shared_gpu", concurrency: str = "any") -> ContentionModel:
        """Fit slow-down factors from ``placement`` rows with the peer busy vs ``alone``.

        ``concurrency`` selects how the two models shared the GPU in the measurement
        (``streams``: two threads in one process; ``processes``), ``any`` (pooled) or
        ``auto`` (processes if measured, else streams). Threads
        contend for the Python interpreter as well as the GPU, so the two differ a lot;
        validate against an executor with the concurrency it actually used.
        """
        r = self.ok_rows
        shared = r[(r["placement"] == placement) & r["peer_busy"]]
        if concurrency == "auto":  # separate processes (no shared interpreter) when measured
            present = set(shared["concurrency"].astype(str))
            concurrency = next((c for c in ("processes", "streams") if c in present), "any")
        key = ("contention", placement, concurrency)
        if key in self._cache:
            return self._cache[key]
        if concurrency != "any":
            shared = shared[shared["concurrency"] == concurrency]
        factors: dict[tuple[str, str], float] = {}
        gpu_stages = ("vision_encode", "prefill", "decode_step", "verify")
        for role in schema.ROLES:
            for stage in gpu_stages:
                s = shared[(shared["role"] == role) & (shared["stage"] == stage)]["duration_ms"]
                a = self._alone(role, stage)["duration_ms"]
                if len(s) and len(a) and np.median(a) > 0:
                    factors[(role, stage)] = max(1.0, float(np.median(s) / np.median(a)))
        if not factors and placement == "shared_gpu":
            raise TraceError(
                f"{self.path}: column 'placement' has no 'shared_gpu' rows with peer_busy"
                f"{'' if concurrency == 'any' else f' and concurrency {concurrency!r}'}; "
                "cannot fit a one-GPU contention model (pass contention='none' to ignore contention)"
            )
        fallbacks = []
        for role in schema.ROLES:
            mine = [v for (r_, _), v in factors.items() if r_ == role]
            default = factors.get((role, "decode_step"), float(np.median(mine)) if mine else 1.0)
            for stage in gpu_stages:
                if (role, stage) not in factors:
                    factors[(role, stage)] = default
                    fallbacks.append((role, stage))
        how = placement if concurrency == "any" else f"{placement}/{concurrency}"
        model = ContentionModel(factors, tuple(fallbacks), f"fitted from {how} rows of {self.label}")
        self._cache[key] = model
        return model

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
