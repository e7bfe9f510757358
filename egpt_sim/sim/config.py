"""Scenario configuration: one frozen, validated dataclass per simulated scenario."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..traces.contention import CPU_LANE_MODES, parse_missing

STRATEGY_NAMES = (
    "target_only",
    "drafter_only",
    "serial_sd",
    "prefill_then_verify",
    "parallel_sd",
    "adaptive_budget",
)


@dataclass(frozen=True)
class SimConfig:
    """One scenario. Every time is in ms; token counts in tokens.

    Parameters
    ----------
    strategy : name of a registered strategy (see :mod:`egpt_sim.sim.strategies`).
    output_tokens : tokens the request must emit (the target's answer length).
    gamma : max drafts per verification pass; also the draft budget of the
        parallel-prefill window.
    n_gpus : 1 = drafter and target share one GPU (same-GPU contention applies);
        >= 2 = drafter on its own GPU (host contention applies when the two models
        run as threads, see :mod:`egpt_sim.traces.contention`).
    acceptance : ``"trace"`` (replay recorded verifications), a per-token rate
        alpha in [0, 1] (i.i.d. prefix model), a tuple of conditional per-position
        rates, or None (only for target_only / drafter_only, which never verify;
        those two run without acceptance data whatever this says).
    n_requests : simulated requests (each with its own resampled times).
    seed : root seed; request i uses ``SeedSequence(seed).spawn`` streams.
    contention : ``"fitted"`` (from concurrent vs alone rows) or ``"none"``.
    contention_scale : what-if multiplier on the excess slow-down (factor - 1).
    contention_concurrency : how the simulated system runs the two models, and so
        which rows the factors come from: ``streams`` (two threads of one process),
        ``processes``, ``any`` (pooled) or ``auto`` (processes when measured, else
        streams).
    contention_missing : a factor that was not measured: ``"pooled"`` (default:
        borrow the nearest measured factor, labelled assumed), ``"error"``, or
        ``"assume:<x>"`` (e.g. ``"assume:1.0"``). Every result's ``contention``
        says which factors were measured and which assumed.
    cpu_lane : how the CPU stages of two prefill phases that start together share the
        host (:class:`egpt_sim.traces.contention.CpuLane`): ``"serial"`` (drafter first),
        ``"overlap"`` (both at once, each slowed by its measured factor) or ``"auto"``
        (overlap when the concurrent stage runs recorded overlapping CPU stages).
    drafter_speed : what-if speed-up of the drafter's GPU stages (vision, prefill,
        decode; times are divided). Its CPU stages keep their measured times.
    include_cpu_stages : count stage 1-2 (load, preprocess) in latency.
    pass_gap_ms : host time (ms) before every decode step, verify pass and draft step of
        both roles (the serving loop's bookkeeping, in no stage span); None = the trace
        set's recorded serving-loop gaps (:attr:`TraceSet.pass_gap_ms`; 0 without them).
    lookahead_blocks : parallel_sd drafts up to this many gamma-blocks ahead.
    window_budget : adaptive_budget only: a fixed window budget (drafts) instead of the
        expected-latency choice — what a validation uses to score the mechanics at the
        budget the real executor ran with; None (default) lets the rule decide.

    What-if shapes (None = as recorded; see :mod:`egpt_sim.whatif`):

    target_frames, drafter_frames : frames given to each vision tower.
    target_resolution : 224 or 336 px (257 or 577 prompt tokens per target frame).
    target_prompt_tokens, drafter_prompt_tokens : the LLM prompt length directly (tokens;
        overrides frames x tokens per frame + the recorded text tokens).
    drafter_params_b : drafter size in billions of parameters; its prefill, decode and
        verify times are scaled by weight bytes (GPU-bound backends only).
    stage_times : where stage times come from: ``"auto"`` (replay a role whose shape was
        measured, else draw it from the cost model), ``"model"`` (always the cost model) or
        ``"trace"`` (error where a role was not measured). Results say which was used in
        their ``time_source`` column (``trace`` | ``model``).
    cost_model : trace sets the cost model is fitted on besides the simulated one:
        ``"auto"`` (bundled sets measured on the same GPU with the same decode backend)
        or a comma list of bundled names / folders.
    """

    strategy: str = "prefill_then_verify"
    output_tokens: int = 50
    gamma: int = 8
    n_gpus: int = 1
    acceptance: Any = "trace"
    n_requests: int = 200
    seed: int = 0
    contention: str = "fitted"
    contention_scale: float = 1.0
    contention_concurrency: str = "auto"
    contention_missing: str = "pooled"
    cpu_lane: str = "auto"
    drafter_speed: float = 1.0
    include_cpu_stages: bool = True
    pass_gap_ms: float | None = None
    lookahead_blocks: int = 2
    window_budget: int | None = None
    target_frames: int | None = None
    drafter_frames: int | None = None
    target_resolution: int | None = None
    target_prompt_tokens: int | None = None
    drafter_prompt_tokens: int | None = None
    drafter_params_b: float | None = None
    stage_times: str = "auto"
    cost_model: str = "auto"
    label: str = field(default="", compare=False)

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"SimConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.strategy not in STRATEGY_NAMES:
            bad("strategy", f"unknown strategy; choose from {list(STRATEGY_NAMES)}")
        if int(self.output_tokens) < 1:
            bad("output_tokens", "must be >= 1")
        if int(self.gamma) < 1:
            bad("gamma", "must be >= 1")
        if int(self.n_gpus) < 1:
            bad("n_gpus", "must be >= 1")
        if int(self.n_requests) < 1:
            bad("n_requests", "must be >= 1 (a run with zero requests has nothing to report)")
        if self.contention not in ("fitted", "none"):
            bad("contention", "must be 'fitted' or 'none'")
        if self.contention_concurrency not in ("auto", "any", "streams", "processes"):
            bad("contention_concurrency", "must be 'auto', 'any', 'streams' or 'processes'")
        try:
            parse_missing(self.contention_missing)
        except ValueError:
            bad("contention_missing", "must be 'pooled', 'error' or 'assume:<x>' with x > 0")
        if self.cpu_lane not in CPU_LANE_MODES:
            bad("cpu_lane", f"must be one of {list(CPU_LANE_MODES)}")
        if self.contention_scale < 0:
            bad("contention_scale", "must be >= 0")
        if self.drafter_speed <= 0:
            bad("drafter_speed", "must be > 0")
        if self.pass_gap_ms is not None and not float(self.pass_gap_ms) >= 0:
            bad("pass_gap_ms", "must be None or >= 0 ms")
        if self.lookahead_blocks < 1:
            bad("lookahead_blocks", "must be >= 1")
        if self.window_budget is not None and not 0 <= int(self.window_budget) <= int(self.gamma):
            bad("window_budget", "must be None or an integer in 0..gamma")
        self._check_shape(bad)
        if isinstance(self.acceptance, list):
            object.__setattr__(self, "acceptance", tuple(self.acceptance))
        a = self.acceptance
        if a is None and self.strategy not in ("target_only", "drafter_only"):
            bad("acceptance", f"strategy {self.strategy!r} verifies drafts and needs 'trace', a rate or a curve")
        if isinstance(a, str) and a != "trace":
            try:
                a = float(a)
            except ValueError:
                bad("acceptance", "must be 'trace', a per-token rate in [0, 1] or a tuple of rates")
            object.__setattr__(self, "acceptance", a)
        if isinstance(a, bool) or (isinstance(a, (int, float)) and not 0.0 <= float(a) <= 1.0):
            bad("acceptance", "a per-token rate must be in [0, 1]")
        if isinstance(a, tuple) and (not a or any(not 0.0 <= float(x) <= 1.0 for x in a)):
            bad("acceptance", "a curve needs conditional rates, each in [0, 1]")

    def _check_shape(self, bad) -> None:
        """The what-if shape fields: positive integers / sizes, known resolutions and sources."""
        for name in ("target_frames", "drafter_frames", "target_prompt_tokens", "drafter_prompt_tokens"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not float(v).is_integer() or int(v) < 1:
                    bad(name, "must be None or an integer >= 1")
                object.__setattr__(self, name, int(v))
        if self.target_resolution is not None:
            if self.target_resolution not in (224, 336):
                bad("target_resolution", "must be None, 224 or 336 (px)")
            object.__setattr__(self, "target_resolution", int(self.target_resolution))
        if self.drafter_params_b is not None:
            if isinstance(self.drafter_params_b, bool) or not 0 < float(self.drafter_params_b) < 1e4:
                bad("drafter_params_b", "must be None or a size in billions of parameters > 0")
            object.__setattr__(self, "drafter_params_b", float(self.drafter_params_b))
        if self.stage_times not in ("auto", "trace", "model"):
            bad("stage_times", "must be 'auto', 'trace' or 'model'")
        if not isinstance(self.cost_model, str) or not self.cost_model.strip():
            bad("cost_model", "must be 'auto' or a comma list of trace sets")

    @property
    def scenario_key(self) -> tuple | None:
        """The what-if shape fields, or None when the recorded shape is simulated as is."""
        key = (self.target_frames, self.drafter_frames, self.target_resolution, self.target_prompt_tokens,
               self.drafter_prompt_tokens, self.drafter_params_b, self.stage_times, self.cost_model)
        return None if key == (None,) * 6 + ("auto", "auto") else key

    @property
    def acceptance_label(self) -> str:
        a = self.acceptance
        if a is None:
            return "none"
        if isinstance(a, str):
            return a
        if isinstance(a, tuple):
            return "curve"
        if hasattr(a, "name"):  # an AcceptanceSource object (e.g. a scaled curve)
            return a.name
        return f"{float(a):.3g}"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["acceptance"] = self.acceptance_label if not isinstance(self.acceptance, str) else self.acceptance
        if isinstance(self.acceptance, (int, float)):
            d["acceptance"] = float(self.acceptance)
        return d

    def replace(self, **changes: Any) -> "SimConfig":
        return dataclasses.replace(self, **changes)


def factorial(base: SimConfig, factors: dict[str, Iterable[Any]]) -> list[SimConfig]:
    """All combinations of ``factors`` applied to ``base`` (never mutates ``base``)."""
    names = list(factors)
    for n in names:
        if n not in {f.name for f in dataclasses.fields(SimConfig)}:
            raise ValueError(f"factorial: unknown SimConfig field {n!r}")
    values: Sequence[Sequence[Any]] = [list(factors[n]) for n in names]
    return [base.replace(**dict(zip(names, combo))) for combo in itertools.product(*values)]
