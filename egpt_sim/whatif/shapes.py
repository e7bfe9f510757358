"""What-if shapes: simulate frame counts, resolutions, prompt lengths and drafter sizes
that were not measured, from the cost models of :mod:`egpt_sim.whatif.costmodel`.

A :class:`~egpt_sim.sim.config.SimConfig` names a shape per role (``target_frames``,
``target_resolution``, ``target_prompt_tokens``, ``drafter_frames``,
``drafter_prompt_tokens``, ``drafter_params_b``; None = as recorded).
:func:`scenario_traces` resolves it against the trace set (the *base*):

* **trace** — a role whose shape matches the base's recorded rows (same frames and
  resolution, prompt within 1 % or 8 tokens, measured parameter count) is replayed
  exactly as today. When both roles match, the base itself is returned: nothing changes.
* **model** — otherwise the role's stage times come from the cost model. Prompt tokens
  = the base's text tokens + frames × tokens per frame (target 257 | 577 at 224 | 336 px,
  CLS kept; drafter 256 | 576, CLS dropped). The cost model is fitted on the base plus
  ``SimConfig.cost_model`` (``auto``: every bundled set measured on the same GPU with the
  same decode backend and precision). Its samples of the *nearest measured shape* (prompt tokens, log
  scale; the base's own shape on a tie) are moved along the fitted laws:
  ``y · law(x_new) / law(x_old)`` for preprocess, vision_encode, prefill (x = tokens),
  every decode step and verify pass (x = KV length, shifted by the prompt change). When
  the nearest shape is the base's, each recorded sample moves itself (per-request draws
  and target/drafter pairing as today); otherwise request i's recorded sample is crossed
  with every sample of that shape (``run_id``/``sample_id~j`` keys), so residuals are
  resampled from the measured spread of the nearest shape. ``load`` is not modelled: it
  stays the recorded sample's.
* ``drafter_params_b``: the drafter's prefill, decode steps and verify passes are scaled
  by weight bytes, ``params_b / measured params`` — assumed GPU bound, which holds for a
  graph-replayed decode (``graphs``/``compiled`` backends). The measured prefill floor
  (~36–42 ms below ~1000 tokens) is launch overhead that more likely scales with layer
  count: scaling it by bytes is optimistic for a small drafter. Host-bound backends
  (eager: the step is kernel launches) are refused. Vision and CPU stages keep their
  times (the vision tower does not change with the LLM).
* Contention factors carry over from the nearest measured shape: the base, or the
  cost-model set whose target prompt is nearest to the scenario's among those with
  concurrent rows of the simulated placement and concurrency (ties: the base).

``SimConfig.stage_times``: ``auto`` (the rules above), ``model`` (every role from the
cost model, even at a measured shape: smooth curves, validation) or ``trace`` (an error
where a role is not measured). Results say which: ``time_source`` (``trace`` | ``model``)
in every request row and summary, :attr:`Scenario.detail` in prediction headers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..traces.schema import TraceError
from ..traces.traceset import RoleSamples, TraceSet, bundled_trace_sets, resolve_trace_set
from . import costmodel as C

SAME_PROMPT_REL, SAME_PROMPT_TOKENS = 0.01, 8  # a prompt this close to the recorded one is the recorded shape

SAME_PARAMS_REL = 0.01


@dataclass(frozen=True)
class RoleShape:
    """One role's shape in a scenario: frames, resolution (px), prompt tokens, vision
    tokens (frames × patches incl. CLS), parameter scale (drafter: params_b / measured),
    ``source`` (``trace`` | ``model``) and ``why`` (one phrase). ``prompt_given``: the
    prompt length was set directly; else each moved sample keeps its own text tokens
    (``prompt_tokens`` is then the base's median text + the frames' tokens)."""

    role: str
    frames: int
    resolution: int
    prompt_tokens: int
    params_scale: float = 1.0
    params_b: float = float("nan")
    source: str = "trace"
    why: str = "as recorded"
    prompt_given: bool = False

    def prompt_for(self, prompt: float, frames: float, resolution: int) -> float:
        """The prompt a recorded sample (``prompt`` tokens, ``frames`` at ``resolution``) has
        in this shape: the same text tokens, this shape's frame tokens (or the given prompt)."""
        if self.prompt_given:
            return float(self.prompt_tokens)
        per = C.llm_tokens_per_frame
        return float(prompt + self.frames * per(self.role, self.resolution) - frames * per(self.role, int(resolution)))

    @property
    def vision_tokens(self) -> int:
        return int(self.frames * C.RESOLUTION_PATCHES[self.resolution])

    def describe(self) -> str:
        size = f", {self.params_b:.3g}B params (x{self.params_scale:.3g} by weight bytes)" if self.params_scale != 1.0 else ""
        return (f"{self.role} {self.frames} frame{'s' if self.frames != 1 else ''} @{self.resolution} px, "
                f"{self.prompt_tokens} prompt tokens{size}: {self.source} ({self.why})")


@dataclass(frozen=True)
class Scenario:
    """Both roles' shapes; ``time_source`` is ``trace`` only when both are replayed."""

    target: RoleShape
    drafter: RoleShape

    @property
    def time_source(self) -> str:
        return "trace" if self.target.source == self.drafter.source == "trace" else "model"

    @property
    def detail(self) -> str:
        return f"{self.target.describe()}; {self.drafter.describe()}"

    def role(self, role: str) -> RoleShape:
        return self.target if role == "target" else self.drafter


def recorded_shape(base: TraceSet, role: str) -> tuple[int, int, float, float]:
    """(frames, resolution, prompt tokens, text tokens) of the base's recorded ``role``."""
    pre = base.ok_rows
    pre = pre[(pre["role"] == role) & (pre["stage"] == "prefill") & (pre["placement"] == "alone")]
    if pre.empty:
        raise TraceError(f"{base.path}: no 'prefill' rows for role '{role}' with placement 'alone'")
    frames, prompt = int(pre["frames"].median()), float(pre["prompt_tokens"].median())
    res = C.resolution_of(role, prompt, frames)
    return frames, res, prompt, prompt - frames * C.llm_tokens_per_frame(role, res)


def measured_params_b(base: TraceSet, role: str) -> float:
    """Parameter count (billions) of ``role`` in the base's metadata (NaN if not recorded)."""
    vals = [C._run_attr(base.metadata, r, role, "params_b") for r in base.metadata.get("runs", {})]
    vals = [v for v in vals if v == v]
    return float(np.median(vals)) if vals else float("nan")


def _role_shape(cfg, base: TraceSet, role: str, backend: str) -> RoleShape:
    frames0, res0, prompt0, text = recorded_shape(base, role)
    frames = int(getattr(cfg, f"{role}_frames") or frames0)
    res = int(cfg.target_resolution or res0) if role == "target" else res0
    tokens = getattr(cfg, f"{role}_prompt_tokens")
    prompt = int(tokens) if tokens else int(round(text + frames * C.llm_tokens_per_frame(role, res)))
    scale, params = 1.0, float("nan")
    if role == "drafter" and cfg.drafter_params_b is not None:
        params, measured = float(cfg.drafter_params_b), measured_params_b(base, role)
        if not measured == measured:
            raise ValueError(f"SimConfig.drafter_params_b: {base.label} records no drafter parameter count "
                             "(metadata runs.*.models.drafter.n_params) to scale from")
        scale = params / measured
        if abs(scale - 1.0) <= SAME_PARAMS_REL:
            scale = 1.0
        elif backend not in C.GPU_BOUND_BACKENDS:
            raise ValueError(f"SimConfig.drafter_params_b: {base.label} decodes with the {backend!r} backend, which "
                             "is host bound (a step is kernel launches, not weight bytes); scaling by weight bytes "
                             f"needs a GPU-bound backend ({', '.join(C.GPU_BOUND_BACKENDS)})")
    same = (frames == frames0 and res == res0 and scale == 1.0
            and abs(prompt - prompt0) <= max(SAME_PROMPT_TOKENS, SAME_PROMPT_REL * prompt0))
    if same and cfg.stage_times != "model":
        return RoleShape(role, frames, res, int(round(prompt0)), 1.0, params, "trace", f"measured in {base.label}")
    if cfg.stage_times == "trace":
        raise ValueError(f"SimConfig.stage_times: 'trace', but {role} {frames} frames @{res} px, {prompt} prompt tokens"
                         f"{f', {params:g}B params' if scale != 1.0 else ''} was not measured in {base.label} "
                         f"({frames0} frames @{res0} px, {prompt0:.0f} tokens); use 'auto' or 'model'")
    why = "forced by stage_times='model'" if same else f"not measured in {base.label}"
    return RoleShape(role, frames, res, prompt, scale, params, "model", why, prompt_given=bool(tokens))


def resolve_scenario(cfg, base: TraceSet) -> Scenario:
    """Both roles' shapes of ``cfg`` against ``base`` (see the module docstring)."""
    backend = _base_signature(base)[1]
    return Scenario(_role_shape(cfg, base, "target", backend), _role_shape(cfg, base, "drafter", backend))


def _base_signature(base: TraceSet) -> tuple[str, str, str]:
    """(GPU, decode backend, precision) of the base's ``alone`` rows (the most common)."""
    key = ("signature",)
    if key not in base._cache:
        sig = C.signature(base)
        base._cache[key] = tuple(str(sig[c].mode().iloc[0]) for c in ("gpu", "backend", "precision"))
    return base._cache[key]


def _folder(ts: TraceSet) -> Path | None:
    p = Path(str(ts.path).split(" [", 1)[0])
    return p.resolve() if p.is_dir() else None


def _metadata_matches(folder: Path, gpu: str, backend: str, precision: str) -> bool:
    """A bundled set with a run measured on ``gpu`` with ``backend`` at ``precision``
    (metadata only: cheap)."""
    try:
        runs = json.loads((folder / "metadata.json").read_text()).get("runs", {})
    except (OSError, ValueError):
        return False
    return any(str(r.get("gpu_name")) == gpu and C.backend_of(r.get("decode_backend")) == backend
               and C.precision_of(r) == precision for r in runs.values())


def cost_model_sets(base: TraceSet, spec: str = "auto") -> list[TraceSet]:
    """The trace sets a cost model for ``base`` is fitted on: the base, then ``spec``
    (``auto``: bundled sets with a run on the base's GPU, decode backend and precision; else
    a comma list of bundled names or folders)."""
    gpu, backend, precision = _base_signature(base)
    here = _folder(base)
    if spec == "auto":
        folders = [p.resolve() for p in bundled_trace_sets().values() if _metadata_matches(p, gpu, backend, precision)]
    else:
        try:
            folders = [resolve_trace_set(s.strip()).resolve() for s in str(spec).split(",") if s.strip()]
        except TraceError as exc:
            raise ValueError(f"SimConfig.cost_model: {exc}") from None
    out, seen = [base], {here}
    for f in folders:
        if f not in seen:
            seen.add(f)
            out.append(TraceSet.load(f))
    return out


def cost_model_for(base: TraceSet, spec: str = "auto") -> C.CostModel:
    """The (cached) cost model of ``base``: fitted on :func:`cost_model_sets` at the base's
    GPU, decode backend and precision."""
    key = ("costmodel", spec)
    if key not in base._cache:
        sets = cost_model_sets(base, spec)
        base._cache[key] = (C.fit_cost_model(sets, *_base_signature(base)), sets)
    return base._cache[key][0]


@dataclass
class _Donors:
    """Per anchor (recorded base sample): the cost-model samples it becomes (indices into
    the role's :class:`~egpt_sim.whatif.costmodel.RoleData`), or None = replay it unchanged."""

    per_anchor: list
    note: str


def _nearest_shape(data: C.RoleData, prompt: float, base_label: str) -> np.ndarray:
    """Indices of the samples of the measured shape nearest to ``prompt`` (log tokens);
    ties go to the shape the base recorded."""
    sid = data.shape_ids()
    best = None
    for s in np.unique(sid):
        idx = np.flatnonzero(sid == s)
        dist = abs(np.log(prompt / np.median(data.prompt_tokens[idx])))
        in_base = any(data.keys[i][0] == base_label for i in idx)
        rank = (round(dist, 9), not in_base)
        if best is None or rank < best[0]:
            best = (rank, idx)
    return best[1]


def _donors(base_tab: RoleSamples, shape: RoleShape, cm: C.CostModel, base_label: str) -> _Donors:
    """Which measured samples each recorded sample of the base becomes (module docstring)."""
    n = len(base_tab.keys)
    if shape.source == "trace":
        return _Donors([None] * n, "replayed")
    data = cm.data.get(shape.role)
    if data is None or not len(data):
        raise TraceError(f"{cm.label}: no '{shape.role}' samples to model {shape.describe()}")
    ok = np.isfinite(data.phase_ms[:, 3]) & np.isfinite(data.decode_ms[:, 0])
    near = [i for i in _nearest_shape(data, shape.prompt_tokens, base_label) if ok[i]]
    if not near:
        raise TraceError(f"{cm.label}: no '{shape.role}' sample with prefill and decode rows at the nearest shape")
    where = {data.keys[i][1:]: i for i in near if data.keys[i][0] == base_label}
    j0 = near[0]
    nf = int(data.frames[j0])
    what = f"{nf} frame{'s' if nf != 1 else ''} @{int(data.resolution[j0])} px, {data.prompt_tokens[j0]:.0f} tokens"
    if where and all(k in where for k in base_tab.keys):  # the base's own shape: each sample moves itself
        return _Donors([[where[k]] for k in base_tab.keys], f"recorded samples moved from {what}")
    sets = sorted({data.keys[i][0] for i in near})
    return _Donors([list(near)] * n, f"{len(near)} samples of {what} ({', '.join(sets)}) moved along the laws")


def _ratio(cm: C.CostModel, role: str, stage: str, x_new, x_old, gamma: int = 0) -> np.ndarray:
    """law(x_new) / law(x_old) of (role, stage); refused where the law could not be fitted
    (one shape measured by either role) and the shape changes."""
    law = cm.law(role, stage, gamma)
    x_new, x_old = np.asarray(x_new, float), np.asarray(x_old, float)
    if law.source.startswith("flat: one shape") and np.any(np.abs(x_new - x_old) > 1e-9 * np.abs(x_old)):
        raise TraceError(f"{cm.label}: '{stage}' of role '{role}' was measured at one {law.x} only "
                         f"({law.x_range[0]:.0f}), so its cost at {float(np.max(x_new)):.0f} is unknown; fit the cost "
                         "model on a set with a frame sweep on this GPU and backend (SimConfig.cost_model)")
    return law.ratio(x_new, x_old)


def _moved_sample(data: C.RoleData, d: int, shape: RoleShape, cm: C.CostModel, load_ms: float) -> dict:
    """Sample ``d`` of ``data`` moved to ``shape``: phase (4,), decode steps, verify by gamma."""
    role, s = shape.role, shape.params_scale
    p_new = shape.prompt_for(data.prompt_tokens[d], data.frames[d], int(data.resolution[d]))
    dp = p_new - data.prompt_tokens[d]
    vt_old, vt_new = data.vision_tokens[d], shape.vision_tokens
    ph = np.nan_to_num(data.phase_ms[d].copy(), nan=0.0)
    ph[0] = load_ms
    ph[1] *= _ratio(cm, role, "preprocess", vt_new, vt_old)
    ph[2] *= _ratio(cm, role, "vision_encode", vt_new, vt_old)
    ph[3] *= _ratio(cm, role, "prefill", p_new, data.prompt_tokens[d]) * s
    steps = np.isfinite(data.decode_ms[d])
    kv = data.decode_kv[d, steps]
    dec = data.decode_ms[d, steps] * _ratio(cm, role, "decode_step", np.maximum(kv + dp, 1.0), kv) * s
    ver = {}
    for j, g in enumerate(data.gammas):
        if np.isfinite(data.verify_ms[d, j]):
            kvg = data.verify_kv[d, j]
            ver[int(g)] = float(data.verify_ms[d, j] * _ratio(cm, role, "verify", max(kvg + dp, 1.0), kvg, int(g)) * s)
    return {"phase": ph, "decode": dec, "verify": ver}


def _replayed_sample(tab: RoleSamples, a: int) -> dict:
    """Recorded sample ``a`` of a base table, unchanged."""
    row = tab.own_decode[a]
    dec = tab.decode_ms[row, : tab.decode_n[row]] if row >= 0 else np.zeros(0)
    ver = {int(g): float(v) for g, v in zip(tab.verify_gammas, tab.verify_ms[a]) if np.isfinite(v)} if tab.verify_ms.size else {}
    return {"phase": tab.phase_ms[a].copy(), "decode": dec, "verify": ver, "row": row}


def _role_table(base_tab: RoleSamples, shape: RoleShape, donors: _Donors, cm: C.CostModel, K: int) -> RoleSamples:
    """The role's :class:`RoleSamples` in the scenario: anchor a, variant j < K (keys
    ``sample~j`` when K > 1); a replayed role keeps the base's decode table."""
    keys, samples = [], []
    for a, key in enumerate(base_tab.keys):
        for j in range(K):
            keys.append(key if K == 1 else (key[0], f"{key[1]}~{j}"))
            ds = donors.per_anchor[a]
            samples.append(_replayed_sample(base_tab, a) if ds is None
                           else _moved_sample(cm.data[shape.role], ds[j % len(ds)], shape, cm, base_tab.phase_ms[a, 0]))
    gammas = np.array(sorted({g for s in samples for g in s["verify"]}), dtype=np.int64)
    ver = np.array([[s["verify"].get(int(g), np.nan) for g in gammas] for s in samples]).reshape(len(samples), len(gammas))
    phase = np.array([s["phase"] for s in samples])
    if shape.source == "trace":  # keep the recorded decode table (and its borrowed rows for samples without one)
        own = np.array([s["row"] for s in samples], dtype=np.int64)
        med = np.repeat(base_tab.decode_median_ms, K)
        return RoleSamples(tuple(keys), phase, base_tab.decode_keys, base_tab.decode_ms, base_tab.decode_n, own,
                           gammas, ver, med)
    width = max(len(s["decode"]) for s in samples)
    dec = np.full((len(samples), width), np.nan)
    for i, s in enumerate(samples):
        dec[i, : len(s["decode"])] = s["decode"]
    n = np.array([len(s["decode"]) for s in samples], dtype=np.int64)
    return RoleSamples(tuple(keys), phase, tuple(keys), dec, n, np.arange(len(samples), dtype=np.int64), gammas, ver,
                       np.nanmedian(dec, axis=1))


def scenario_tables(base: TraceSet, scenario: Scenario, cm: C.CostModel) -> tuple[dict, dict]:
    """Per role: the scenario's :class:`RoleSamples`, and a note on where its times come from."""
    label = C.set_label(base)
    tabs = base.sample_tables
    donors = {r: _donors(tabs[r], scenario.role(r), cm, label) for r in ("target", "drafter")}
    K = max(max((len(d) for d in dn.per_anchor if d is not None), default=1) for dn in donors.values())
    out = {r: _role_table(tabs[r], scenario.role(r), donors[r], cm, K) for r in ("target", "drafter")}
    return out, {r: donors[r].note for r in donors}


@dataclass
class ScenarioTraceSet(TraceSet):
    """A base trace set seen at another shape: the base's rows, acceptance and metadata,
    with the per-sample tables the simulator replays rebuilt for ``scenario``."""

    base: TraceSet | None = None
    scenario: Scenario | None = None
    cost_model: C.CostModel | None = None
    fit_sets: tuple = ()
    scenario_key: tuple | None = None
    notes: dict = field(default_factory=dict)

    @cached_property
    def _tables(self) -> dict:
        tabs, notes = scenario_tables(self.base, self.scenario, self.cost_model)
        self.notes.update(notes)
        return tabs

    @cached_property
    def sample_tables(self) -> dict:
        return self._tables

    @cached_property
    def prefill_phase_table(self) -> dict:
        return {r: t.phase_ms for r, t in self._tables.items()}

    @cached_property
    def decode_pool(self) -> dict:
        return {r: t.decode_ms[np.isfinite(t.decode_ms)] for r, t in self._tables.items()}

    @cached_property
    def verify_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pooled target verify curve of the scenario's samples (as :meth:`TraceSet.verify_curve`)."""
        t = self._tables["target"]
        dec = float(np.median(self.decode_pool["target"]))
        have = [j for j in range(len(t.verify_gammas)) if np.isfinite(t.verify_ms[:, j]).any()]
        if not have:
            return np.array([0]), np.array([dec]), self.decode_pool["target"] / dec
        gam = t.verify_gammas[have]
        med = np.array([np.nanmedian(t.verify_ms[:, j]) for j in have])
        ratios = (t.verify_ms[:, have] / med)[np.isfinite(t.verify_ms[:, have])]
        if gam[0] > 0:
            gam, med = np.concatenate([[0], gam]), np.concatenate([[dec], med])
        return gam, med, ratios

    @property
    def time_source(self) -> str:
        return self.scenario.time_source

    @property
    def time_source_detail(self) -> str:
        self._tables  # noqa: B018 (fills the notes)
        notes = "; ".join(f"{r}: {n}" for r, n in self.notes.items() if n != "replayed")
        return self.scenario.detail + (f" | {notes}" if notes else "") + f" | {self.cost_model.label}"

    def prompt_tokens(self, role: str) -> int:
        return int(self.scenario.role(role).prompt_tokens)

    def check_simulatable(self) -> None:
        self.base.check_simulatable()

    def provenance(self) -> str:
        return f"{self.base.provenance()} | what-if ({self.time_source}): {self.scenario.detail}"

    def with_acceptance_run(self, run_id: str) -> "ScenarioTraceSet":
        base = self.base.with_acceptance_run(run_id)
        return _build(base, self.scenario, self.cost_model, self.fit_sets, self.scenario_key)

    def contention_source(self, placement: str, concurrency: str) -> TraceSet:
        """The set whose factors this scenario uses: the base or the cost-model set of the
        nearest target prompt with concurrent rows of ``placement`` / ``concurrency``."""
        conc = self.base.simulated_concurrency(concurrency)
        prompt = self.scenario.target.prompt_tokens
        best = (abs(np.log(prompt / self.base.prompt_tokens("target"))), 0, self.base)
        for i, ts in enumerate(self.fit_sets[1:], start=1):
            r = ts.ok_rows
            conc_rows = r[(r["placement"] == placement) & (r["concurrency"] == conc)]
            alone = r[(r["role"] == "target") & (r["stage"] == "prefill") & (r["placement"] == "alone")]
            if conc_rows.empty or alone.empty or set(conc_rows["role"]) != {"target", "drafter"}:
                continue
            dist = abs(np.log(prompt / float(alone["prompt_tokens"].median())))
            best = min(best, (dist, i, ts), key=lambda b: (round(b[0], 9), b[1]))
        return best[2]

    def contention(self, placement: str = "shared_gpu", concurrency: str = "auto", missing: str = "pooled"):
        conc = self.base.simulated_concurrency(concurrency)
        return self.contention_source(placement, conc).contention(placement, conc, missing)


def _build(base: TraceSet, scenario: Scenario, cm: C.CostModel, fit_sets: tuple, key: tuple) -> ScenarioTraceSet:
    return ScenarioTraceSet(base.stage_timings, base.acceptance, base.metadata, f"{base.path} [what-if]",
                            base=base, scenario=scenario, cost_model=cm, fit_sets=tuple(fit_sets), scenario_key=key)


def scenario_traces(cfg, traces: TraceSet) -> TraceSet:
    """The trace set ``cfg`` simulates: ``traces`` itself when its shape is the recorded
    one (``time_source`` trace), else a cached :class:`ScenarioTraceSet`."""
    key = cfg.scenario_key
    if isinstance(traces, ScenarioTraceSet):
        if traces.scenario_key == key:
            return traces
        traces = traces.base
    if key is None:
        return traces
    cache = ("scenario", key)
    if cache not in traces._cache:
        scenario = resolve_scenario(cfg, traces)
        if scenario.time_source == "trace":
            traces._cache[cache] = traces
        else:
            cm = cost_model_for(traces, cfg.cost_model)
            traces._cache[cache] = _build(traces, scenario, cm, tuple(traces._cache[("costmodel", cfg.cost_model)][1]), key)
    return traces._cache[cache]


def time_source_of(traces: TraceSet, strategy: str | None = None) -> str:
    """Where a result's stage times came from: ``trace`` for a recorded trace set; for a
    :class:`ScenarioTraceSet` the target's source for ``target_only`` (it runs the target
    alone), else the scenario's (``model`` when either role is modelled: every other
    strategy's latency or its target_only baseline uses both)."""
    scenario = getattr(traces, "scenario", None)
    if scenario is None:
        return "trace"
    return scenario.target.source if strategy == "target_only" else scenario.time_source
