"""Cost models: stage time (ms) as a function of the shape, fitted from measured trace sets.

A what-if beyond the measured shapes (more frames, a 336-px target, a smaller drafter)
needs stage times where nothing was recorded. Per role, decode backend, GPU and precision
(dtype / quantization: a 4-bit set is another machine), each
stage gets one *law* — a simple form chosen from the bundled data (`h200/graphs-frames`:
the target alone at 273..8240 prompt tokens) — fitted to the per-shape medians by
least squares on the relative error (non-negative coefficients):

=============  ==================  ======================================================
stage          x                   law
=============  ==================  ======================================================
prefill        prompt tokens       roofline ``max(floor, b·x + c·x²)``: flat ~42 ms up to
                                   ~1000 tokens (kernel-launch bound: the host launches
                                   while the GPU runs, so the two overlap — a max, not a
                                   sum), then weight FLOPs ∝ x plus attention ∝ x²
vision_encode  vision tokens       the same roofline (frames × 257 at 224 px, × 577 at
                                   336 px, CLS included); all measured shapes sit on the
                                   floor (~15 ms for 1..32 frames), so it fits flat
preprocess     vision tokens       affine ``a + b·x`` (CPU: fixed cost + resize/normalise
                                   ∝ output pixels)
decode_step    KV tokens           affine ``a + b·x`` (memory bound: weights + KV read)
verify         KV tokens, per γ    affine in KV for every γ measured at >= 2 KV lengths;
                                   another γ uses the nearest fitted γ's KV dependence
KV MB          prompt tokens       proportional ``b·x`` (``kv_bytes`` on prefill rows)
=============  ==================  ======================================================

A law needs >= 2 measured shapes. A role with one shape (every bundled drafter: 620
tokens) *borrows* the other role's law — same stage, backend and GPU: both are the same
Vicuna-7B language model + CLIP ViT-L/14 — rescaled to its own median; with no shape
variation anywhere the law is flat. :meth:`CostModel.table` says which (``source``).

Residual spread is kept, not averaged away: :class:`RoleData` keeps every measured
sample (its stage times with their x), and a what-if draws whole recorded samples of the
nearest measured shape and moves them along the law (``y · law(x_new) / law(x_old)``,
see :mod:`egpt_sim.whatif`) — a block bootstrap of multiplicative residuals that keeps
the between-sample spread and the step-to-step pattern of the decode steps.
``residual_sd_log`` in the table is the spread of log(y / law) over the fitted rows.

Torch-free (numpy, pandas, scipy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ..traces.schema import TraceError

PHASE = ("load", "preprocess", "vision_encode", "prefill")
MODELLED = ("preprocess", "vision_encode", "prefill", "decode_step", "verify")  # load is replayed, not modelled
GPU_BOUND_BACKENDS = ("graphs", "compiled")  # decode is a graph replay: its time is GPU work, not launches
RESOLUTION_PATCHES = {224: 257, 336: 577}  # CLIP ViT-L/14 patches per frame incl. CLS
KNEE_MARGIN = 0.10  # a compute-bound shape is > 10 % above the overhead floor (else it is on the floor)
LAW_X = {"prefill": "prompt_tokens", "vision_encode": "vision_tokens", "preprocess": "vision_tokens",
         "decode_step": "kv_tokens", "verify": "kv_tokens", "kv_mb": "prompt_tokens"}
LAW_FORM = {"prefill": "roofline", "vision_encode": "roofline", "preprocess": "affine",
            "decode_step": "affine", "verify": "affine", "kv_mb": "proportional"}


# --------------------------------------------------------------------------- laws


@dataclass(frozen=True)
class Law:
    """One stage's median time (ms) vs ``x``.

    ``form``: ``roofline`` (params floor_ms, b ms/x, c ms/x²), ``affine`` (a ms, b ms/x),
    ``proportional`` (b per x) or ``flat`` (ms). ``source``: ``fitted`` or how it was
    borrowed. ``n_shapes``: distinct x it was fitted on; ``x_range``: their span.
    """

    form: str
    params: tuple
    x: str
    n_shapes: int
    source: str = "fitted"
    x_range: tuple = (float("nan"), float("nan"))
    residual_sd_log: float = float("nan")

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        p = self.params
        if self.form == "roofline":
            return np.maximum(p[0], p[1] * x + p[2] * x * x)
        if self.form == "affine":
            return p[0] + p[1] * x
        if self.form == "proportional":
            return p[0] * x
        return np.full_like(x, p[0])

    def scaled(self, k: float, source: str) -> "Law":
        """The same shape times ``k`` (a borrowed law at another role's level)."""
        return Law(self.form, tuple(float(v) * k for v in self.params), self.x, self.n_shapes, source,
                   self.x_range, self.residual_sd_log)

    def ratio(self, x_new, x_old) -> np.ndarray:
        """law(x_new) / law(x_old): how a recorded time moves to another shape."""
        return self(x_new) / self(x_old)

    def describe(self) -> str:
        p = self.params
        if self.form == "roofline":
            return f"max({p[0]:.3g}, {p[1]:.3g}*x + {p[2]:.3g}*x^2)"
        if self.form == "affine":
            return f"{p[0]:.3g} + {p[1]:.3g}*x"
        if self.form == "proportional":
            return f"{p[0]:.4g}*x"
        return f"{p[0]:.3g}"


def fit_affine(x: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """(a, b) >= 0 minimising sum((a + b·x) / m - 1)²: least squares on the relative error."""
    th, _ = nnls(np.c_[1.0 / m, x / m], np.ones_like(m))
    return float(th[0]), float(th[1])


def fit_compute(x: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """(b, c) >= 0 of ``b·x + c·x²`` (relative least squares); one point: c = 0, b = m / x."""
    if len(x) == 1:
        return float(m[0] / x[0]), 0.0
    th, _ = nnls(np.c_[x / m, x * x / m], np.ones_like(m))
    return float(th[0]), float(th[1])


def fit_roofline(x: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
    """(floor, b, c) of ``max(floor, b·x + c·x²)`` from per-shape medians.

    Every split of the shapes sorted by x is tried: the first k on the floor (floor = their
    median), the rest compute bound (:func:`fit_compute`), each compute-bound point more
    than ``KNEE_MARGIN`` above the floor (a point within noise of the floor is on it); the
    split with the least squared log error wins (ties: fewer compute points). All points
    on the floor gives a flat law (b = c = 0).
    """
    o = np.argsort(x)
    x, m = np.asarray(x, float)[o], np.asarray(m, float)[o]
    best = (np.sum(np.log(m / np.median(m)) ** 2), (float(np.median(m)), 0.0, 0.0))
    for k in range(len(x) - 1, -1, -1):  # k points on the floor, fewest compute points first
        floor = float(np.median(m[:k])) if k else 0.0
        if k and not np.all(m[k:] > floor * (1.0 + KNEE_MARGIN)):
            continue
        b, c = fit_compute(x[k:], m[k:])
        pred = np.maximum(floor, b * x + c * x * x)
        if np.any(pred <= 0):
            continue
        err = float(np.sum(np.log(pred / m) ** 2))
        if err < best[0] - 1e-12:
            best = (err, (floor, b, c))
    return best[1]


def fit_law(stage: str, x: np.ndarray, m: np.ndarray) -> Law | None:
    """The law of ``stage`` through per-shape medians (x, m); None with < 2 shapes."""
    x, m = np.asarray(x, float), np.asarray(m, float)
    ok = np.isfinite(x) & np.isfinite(m) & (m > 0) & (x > 0)
    x, m = x[ok], m[ok]
    form = LAW_FORM[stage]
    if form == "proportional" and len(x) >= 1:
        params: tuple = (float(np.median(m / x)),)
    elif len(np.unique(x)) < 2:
        return None
    elif form == "roofline":
        params = fit_roofline(x, m)
    else:
        params = fit_affine(x, m)
    if form == "roofline" and params[1] == params[2] == 0.0:
        form, params = "flat", (params[0],)
    return Law(form, params, LAW_X[stage], int(len(np.unique(x))), "fitted", (float(x.min()), float(x.max())))


# --------------------------------------------------------------------------- measured samples


def resolution_of(role: str, prompt_tokens: float, frames: float) -> int:
    """Frame resolution (224 | 336 px) that explains a prompt: the one leaving the fewest
    non-negative text tokens (prompt - frames × LLM tokens per frame)."""
    best, res = None, 224
    for r in RESOLUTION_PATCHES:
        text = prompt_tokens - frames * llm_tokens_per_frame(role, r)
        if text >= 0 and (best is None or text < best):
            best, res = text, r
    return res


def llm_tokens_per_frame(role: str, resolution: int) -> int:
    """Tokens a frame adds to the LLM prompt: the target keeps CLS (257 | 577), the
    drafter (EventGPT-like) drops it (256 | 576)."""
    return RESOLUTION_PATCHES[int(resolution)] - (1 if role == "drafter" else 0)


@dataclass
class RoleData:
    """A role's measured ``alone`` samples, with the shape of each (arrays of length n).

    ``keys``: (set, run_id, sample_id); ``frames``, ``resolution``, ``prompt_tokens``,
    ``vision_tokens`` (frames × patches incl. CLS); ``phase_ms`` (n, 4) load /
    preprocess / vision_encode / prefill (NaN = not recorded); ``decode_ms`` /
    ``decode_kv`` (n, W) steps in order (NaN-padded); ``gammas`` (G,), ``verify_ms`` /
    ``verify_kv`` (n, G); ``kv_mb`` (n,) KV cache after prefill (NaN = not recorded).
    """

    keys: list
    frames: np.ndarray
    resolution: np.ndarray
    prompt_tokens: np.ndarray
    vision_tokens: np.ndarray
    phase_ms: np.ndarray
    decode_ms: np.ndarray
    decode_kv: np.ndarray
    gammas: np.ndarray
    verify_ms: np.ndarray
    verify_kv: np.ndarray
    kv_mb: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def shape_ids(self) -> np.ndarray:
        """One id per distinct (frames, resolution): the samples of one measured shape."""
        return self.frames.astype(np.int64) * 1000 + self.resolution.astype(np.int64)

    def x(self, name: str) -> np.ndarray:
        return {"prompt_tokens": self.prompt_tokens, "vision_tokens": self.vision_tokens}[name].astype(float)


def role_data(rows: pd.DataFrame, role: str, set_ids: pd.Series) -> RoleData:
    """:class:`RoleData` of ``role`` from ``alone`` OK rows (``set_ids``: the trace set of each row)."""
    r = rows[(rows["role"] == role)].assign(_set=set_ids)
    groups = list(r.groupby(["_set", "run_id", "sample_id"], sort=True))
    groups = [(k, g) for k, g in groups if (g["stage"] == "prefill").any()]
    n = len(groups)
    width = max([int((g["stage"] == "decode_step").sum()) for _, g in groups] + [1])
    gammas = np.array(sorted(set(r.loc[r["stage"] == "verify", "gamma"].astype(int))), dtype=np.int64)
    phase = np.full((n, 4), np.nan)
    dec_ms, dec_kv = np.full((n, width), np.nan), np.full((n, width), np.nan)
    ver_ms, ver_kv = np.full((n, len(gammas)), np.nan), np.full((n, len(gammas)), np.nan)
    frames, prompt, kv_mb = np.zeros(n), np.zeros(n), np.full(n, np.nan)
    for i, (_, g) in enumerate(groups):
        pre = g[g["stage"] == "prefill"]
        frames[i], prompt[i] = float(pre["frames"].median()), float(pre["prompt_tokens"].median())
        if "kv_bytes" in pre.columns:
            kb = pd.to_numeric(pre["kv_bytes"], errors="coerce").dropna()
            kv_mb[i] = float(kb.median()) / 2**20 if len(kb) else np.nan
        for j, st in enumerate(PHASE):
            v = g.loc[g["stage"] == st, "duration_ms"]
            phase[i, j] = float(v.median()) if len(v) else np.nan
        d = g[g["stage"] == "decode_step"].sort_values("step")
        dec_ms[i, : len(d)], dec_kv[i, : len(d)] = d["duration_ms"].to_numpy(float), d["kv_tokens"].to_numpy(float)
        v = g[g["stage"] == "verify"].groupby("gamma")[["duration_ms", "kv_tokens"]].median()
        for j, gam in enumerate(gammas):
            if gam in v.index:
                ver_ms[i, j], ver_kv[i, j] = v.loc[gam, "duration_ms"], v.loc[gam, "kv_tokens"]
    res = np.array([resolution_of(role, p, f) for p, f in zip(prompt, frames)], dtype=np.int64)
    vis = frames * np.array([RESOLUTION_PATCHES[int(x)] for x in res], dtype=float)
    return RoleData([k for k, _ in groups], frames, res, prompt, vis, phase, dec_ms, dec_kv, gammas,
                    ver_ms, ver_kv, kv_mb)


# --------------------------------------------------------------------------- fitting


def _shape_medians(data: RoleData, stage: str, gamma: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, median y) per measured shape, and every row's (x, y), for one stage."""
    sid = data.shape_ids()
    if stage in ("decode_step", "verify"):
        if stage == "decode_step":
            y, x = data.decode_ms, data.decode_kv
        else:
            j = int(np.flatnonzero(data.gammas == gamma)[0])
            y, x = data.verify_ms[:, j:j + 1], data.verify_kv[:, j:j + 1]
        rows_x, rows_y, rows_s = x.ravel(), y.ravel(), np.repeat(sid, y.shape[1])
    elif stage == "kv_mb":
        rows_x, rows_y, rows_s = data.x("prompt_tokens"), data.kv_mb, sid
    else:
        rows_x, rows_y, rows_s = data.x(LAW_X[stage]), data.phase_ms[:, PHASE.index(stage)], sid
    ok = np.isfinite(rows_x) & np.isfinite(rows_y)
    rows_x, rows_y, rows_s = rows_x[ok], rows_y[ok], rows_s[ok]
    shapes = np.unique(rows_s)
    xm = np.array([np.median(rows_x[rows_s == s]) for s in shapes])
    ym = np.array([np.median(rows_y[rows_s == s]) for s in shapes])
    return xm, ym, rows_x, rows_y


def _with_residuals(law: Law | None, rows_x: np.ndarray, rows_y: np.ndarray) -> Law | None:
    if law is None or not len(rows_y):
        return law
    r = np.log(np.maximum(rows_y, 1e-12) / law(rows_x))
    return Law(law.form, law.params, law.x, law.n_shapes, law.source, law.x_range, float(np.std(r)))


def _stage_keys(data: dict[str, RoleData]) -> list[tuple[str, str, int]]:
    keys = []
    for role, d in data.items():
        keys += [(role, s, 0) for s in ("preprocess", "vision_encode", "prefill", "decode_step", "kv_mb")]
        keys += [(role, "verify", int(g)) for g in d.gammas]
    return keys


def fit_laws(data: dict[str, RoleData]) -> dict[tuple[str, str, int], Law]:
    """Every (role, stage, gamma) law: fitted where the role has >= 2 shapes, else the
    other role's law rescaled to this role's median, else flat (see module docstring)."""
    own, meds = {}, {}
    for role, stage, gam in _stage_keys(data):
        xm, ym, rx, ry = _shape_medians(data[role], stage, gam)
        meds[(role, stage, gam)] = (xm, ym, rx, ry)
        own[(role, stage, gam)] = _with_residuals(fit_law(stage, xm, ym), rx, ry)
    laws = {}
    for key, law in own.items():
        xm, ym, rx, ry = meds[key]
        if law is None and len(ym):
            law = _borrow(key, own, xm, ym, rx, ry)
        if law is not None:
            laws[key] = law
    return laws


def _borrow(key, own: dict, xm, ym, rx, ry) -> Law:
    """The other role's law for this stage (nearest fitted gamma for verify), rescaled to
    this role's median; flat when no role measured >= 2 shapes."""
    role, stage, gam = key
    other = "drafter" if role == "target" else "target"
    cands = [(abs(g - gam), k) for k in own if k[0] == other and k[1] == stage and own[k] is not None
             for g in [k[2]]]
    if cands:
        donor = own[min(cands)[1]]
        k = float(np.median(ym / donor(xm)))
        law = donor.scaled(k, f"borrowed from {other} (x{k:.3g})")
    else:
        law = Law("flat", (float(np.median(ym)),), LAW_X[stage], 1, "flat: one shape measured",
                  (float(xm.min()), float(xm.max())))
    law = _with_residuals(law, rx, ry)
    return Law(law.form, law.params, law.x, int(len(np.unique(xm))), law.source,
               (float(xm.min()), float(xm.max())), law.residual_sd_log)


# --------------------------------------------------------------------------- the model


@dataclass
class CostModel:
    """Stage laws + measured samples of both roles, for one GPU, decode backend and precision.

    ``sets``: labels of the trace sets it was fitted on; ``params_b``: measured parameter
    count per role (billions, from metadata; NaN when not recorded).
    """

    laws: dict
    data: dict
    gpu: str
    backend: str
    sets: tuple
    params_b: dict = field(default_factory=dict)
    precision: str = "fp16/none"

    @property
    def label(self) -> str:
        return f"cost model ({self.gpu}, {self.backend}, {self.precision}; fitted on {', '.join(self.sets)})"

    def law(self, role: str, stage: str, gamma: int = 0) -> Law:
        """The law of (role, stage); verify: the law of the nearest measured gamma."""
        if stage == "verify":
            gams = [k[2] for k in self.laws if k[:2] == (role, "verify")]
            if not gams:
                raise TraceError(f"{self.label}: no 'verify' rows for role '{role}'")
            fitted = [g for g in gams if self.laws[(role, "verify", g)].n_shapes >= 2] or gams
            gamma = min(fitted, key=lambda g: (abs(g - gamma), g))
        key = (role, stage, int(gamma) if stage == "verify" else 0)
        if key not in self.laws:
            raise TraceError(f"{self.label}: no '{stage}' rows for role '{role}' to fit a cost model on")
        return self.laws[key]

    def median_ms(self, role: str, stage: str, x, gamma: int = 0) -> np.ndarray:
        """Median stage time (ms) at ``x`` (the law's x: see :data:`LAW_X`)."""
        return self.law(role, stage, gamma)(x)

    def kv_mb(self, role: str, prompt_tokens) -> np.ndarray:
        """KV cache after prefill, MB (2**20 bytes), at ``prompt_tokens``."""
        return self.law(role, "kv_mb")(prompt_tokens)

    def table(self) -> pd.DataFrame:
        """One row per law: role, stage, gamma, form, formula, x, shapes, x range, source, spread."""
        rows = [{"role": r, "stage": s, "gamma": g, "form": law.form, "law": law.describe(), "x": law.x,
                 "n_shapes": law.n_shapes, "x_min": law.x_range[0], "x_max": law.x_range[1], "source": law.source,
                 "residual_sd_log": law.residual_sd_log} for (r, s, g), law in sorted(self.laws.items())]
        return pd.DataFrame(rows)


def _run_attr(meta: dict, run_id: str, role: str, key: str):
    run = meta.get("runs", {}).get(str(run_id), {})
    if key == "params_b":
        n = (run.get("models") or {}).get(role, {}).get("n_params")
        return float(n) / 1e9 if n else float("nan")
    return run.get(key)


def backend_of(decode_backend) -> str:
    """Normalise a run's ``decode_backend`` metadata: graphs | compiled | static | eager."""
    text = str(decode_backend or "eager").lower()
    return next((b for b in ("graphs", "compiled", "static") if b in text), "eager")


def signature(ts) -> pd.DataFrame:
    """Alone OK rows of ``ts`` with their run's ``gpu``, ``backend`` (row column where
    recorded, else the run's ``decode_backend``), ``precision`` (dtype/quantization) and
    ``params_b``."""
    rows = ts.ok_rows[ts.ok_rows["placement"] == "alone"]
    meta = ts.metadata
    runs = rows["run_id"].astype(str)
    gpu = runs.map(lambda r: str(_run_attr(meta, r, "", "gpu_name") or "unknown GPU"))
    meta_backend = runs.map(lambda r: backend_of(_run_attr(meta, r, "", "decode_backend")))
    backend = rows["backend"].astype(str) if "backend" in rows.columns else meta_backend
    # schema 1.0 files read 'eager' by default: the run's metadata knows better where it says graphs
    backend = backend.where(~((backend == "eager") & (meta_backend != "eager")), meta_backend)
    params = [_run_attr(meta, r, role, "params_b") for r, role in zip(runs, rows["role"].astype(str))]
    precision = runs.map(lambda r: precision_of(meta.get("runs", {}).get(r, {})))
    return rows.assign(gpu=gpu.to_numpy(), backend=backend.to_numpy(), precision=precision.to_numpy(), params_b=params)


def precision_of(run: dict) -> str:
    """``dtype/quantization`` of a run's metadata (e.g. ``fp16/none``, ``fp16/4bit``)."""
    return f"{run.get('dtype', '?')}/{run.get('quantization', 'none')}"


def fit_cost_model(trace_sets, gpu: str | None = None, backend: str | None = None,
                   precision: str | None = None) -> CostModel:
    """Fit a :class:`CostModel` on the ``alone`` rows of ``trace_sets`` (TraceSet objects)
    measured on ``gpu`` with ``backend`` at ``precision`` (None: the most common of the
    first set)."""
    trace_sets = list(trace_sets)
    if not trace_sets:
        raise ValueError("fit_cost_model: no trace sets")
    sigs = [signature(ts) for ts in trace_sets]
    first = sigs[0]
    if first.empty:
        raise TraceError(f"{trace_sets[0].path}: no 'alone' rows to fit a cost model on")
    gpu = gpu or str(first["gpu"].mode().iloc[0])
    backend = backend or str(first["backend"].mode().iloc[0])
    precision = precision or str(first["precision"].mode().iloc[0])
    keep = [s[(s["gpu"] == gpu) & (s["backend"] == backend) & (s["precision"] == precision)] for s in sigs]
    labels = [set_label(ts) for ts in trace_sets]
    used = [lab for lab, k in zip(labels, keep) if len(k)]
    rows = pd.concat([k.assign(_set=lab) for lab, k in zip(labels, keep) if len(k)], ignore_index=True)
    data = {role: role_data(rows, role, rows.loc[rows["role"] == role, "_set"]) for role in ("target", "drafter")
            if (rows["role"] == role).any()}
    params = {role: float(np.nanmedian(rows.loc[rows["role"] == role, "params_b"].astype(float)))
              if rows.loc[rows["role"] == role, "params_b"].notna().any() else float("nan") for role in data}
    return CostModel(fit_laws(data), data, gpu, backend, tuple(used), params, precision)


def set_label(ts) -> str:
    """A trace set's name in a cost model: its metadata label, else its bundled name
    (``h100/fp16``), else its folder name."""
    if ts.metadata.get("label"):
        return str(ts.metadata["label"])
    from ..traces.traceset import DATA_DIR

    folder = Path(str(ts.path).split(" [", 1)[0])
    try:
        return str(folder.resolve().relative_to(DATA_DIR.resolve()))
    except (ValueError, OSError):
        return folder.name


def filter_rows(ts, keep) -> "TraceSet":  # noqa: F821 (egpt_sim.traces imports this module's users)
    """``ts`` restricted to the stage rows where ``keep(rows)`` is True (e.g. a holdout split)."""
    from ..traces.traceset import TraceSet

    st = ts.stage_timings
    return TraceSet(st[keep(st)].reset_index(drop=True), ts.acceptance, ts.metadata, ts.path)
