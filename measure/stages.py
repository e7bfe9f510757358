"""Per-sample stage measurements of both pipelines, alone or sharing the hardware.

One protocol serves every placement (see :func:`role_protocol`): stages 1-2 on the CPU, then
vision encoding, prefill, ``verify`` passes for each gamma (each on the prefill cache, rolled
back after), then decode steps. Every GPU activity is one call of :mod:`measure.activities`
inside one span of :mod:`measure.timing` — the same definitions the executor uses.

* ``alone``: one model at a time on its device (``concurrency="none"``).
* ``shared_gpu`` / ``separate_gpu``: both models at once, the way the strategies run them.
  Both roles start stage 1 together and then run freely, as the executor runs them
  (``cpu_stages="overlap"``, the default: CPU stages of two workers slow each other, and that is
  measured), or stages 1-2 run one role after the other, drafter first, with a barrier before
  stage 3 (``"serial"``: the protocol of every set recorded before this option). The drafter keeps drafting (decode steps; its KV wraps back to the prompt when
  its cache is full) until the target has finished its **last** timed step, so target
  prefill, verify and decode all have a busy peer — the regime ``parallel_sd`` lives in.
  ``concurrency="streams"``: two threads of this process, each on its own CUDA stream, streams
  created once per run; ``"processes"``: two spawned worker processes (:class:`ProcessPair`)
  kept for the whole run. Each row records ``peer_activity`` (the peer's stage overlapping it
  most) and ``overlap_frac`` (see :func:`measure.writer.peer_overlap`).
* Configurations are **interleaved per sample** (:func:`run_interleaved`): sample i runs alone,
  then shared (threads), then shared (processes), ... before sample i + 1, so a contention factor
  compares rows measured minutes apart at most, never blocks of a drifting host.

Every function takes devices from the pipelines; nothing assumes ``cuda:0``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from measure import activities as act
from measure.dataset import Sample
from measure.errors import one_line
from measure.models import Pipeline
from measure.timing import Clock, StageTimer, gpu_method, is_cuda, synchronize
from measure.writer import NoSamplesError, TraceWriter, outcome_rows

DEFAULT_GAMMAS = (1, 2, 4, 8, 16, 32, 64)
_DRAFT_TOKEN_BASE = 100  # arbitrary in-vocabulary ids standing in for draft tokens
_START_MS_METHOD = {
    "cuda_event": "CUDA event vs one origin event per device (CPU stages: perf_counter vs host origin)",
    "perf_counter": "perf_counter vs the sample's host origin",
    "perf_counter_sync": "perf_counter (CLOCK_MONOTONIC) vs the sample's host origin; processes aligned on host0",
}
SPAN_DEFINITION = ("host-visible: stream sync, perf_counter, work incl. token pick + host read "
                   "(+ KV rollback in verify), stream sync, perf_counter; gpu_ms = CUDA events inside "
                   "(measure.timing, measure.activities)")


@dataclass
class StageConfig:
    """Knobs of one measurement run (units in the names)."""

    placement: str = "alone"
    concurrency: str = "none"
    decode_steps: int = 20
    gammas: tuple[int, ...] = DEFAULT_GAMMAS
    warmup_samples: int = 1
    max_draft_steps: int = 4096    # safety cap on the drafter's steps while the target works
    barrier_timeout_s: float = 600.0
    backend: str = "eager"         # recorded in every row (the pipelines carry the backend itself)
    cpu_stages: str = "overlap"    # concurrent placements: "overlap" (both roles' load/preprocess at
    #                                once, as the executor runs them) or "serial" (drafter's, then target's)

    def query_lengths(self, role: str, concurrent: bool) -> list[int]:
        """Forward lengths a role needs captured (graphs/compiled): 1, and gamma + 1 per verify."""
        if role == "drafter" and concurrent:
            return [1]
        return sorted({1} | {g + 1 for g in self.gammas})


@dataclass
class RoleOutcome:
    """Resolved result of one role on one sample (plain data: crosses process boundaries)."""

    role: str
    frames: int
    spans: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    kv_bytes: int | None = None
    peak_mem_mb: float = float("nan")       # device peak of the process (all resident models)
    peak_extra_mb: float = float("nan")     # peak above what was allocated when the sample began
    peak_reserved_mb: float = float("nan")  # caching allocator's reserved peak (what the GPU lost)
    error: str | None = None
    failed_stage: str = "load"
    host0_s: float = 0.0


class _Sync:
    """Barrier + "target finished its last timed step" flag (threading or multiprocessing objects)."""

    def __init__(self, barrier: Any, target_done: Any, timeout_s: float):
        self.barrier, self.target_done, self.timeout_s = barrier, target_done, timeout_s

    def wait(self) -> None:
        self.barrier.wait(self.timeout_s)


def role_protocol(pipe: Pipeline, sample: Sample, timer: Any, cfg: StageConfig,
                  sync: _Sync | None = None) -> RoleOutcome:
    """Run all stages of ``pipe.role`` on ``sample``; exceptions become ``outcome.error``.

    ``sync=None`` is the ``alone`` placement; otherwise the barrier/flag protocol above.
    """
    out = RoleOutcome(pipe.role, pipe.frames, host0_s=timer.clock.host0_s if hasattr(timer, "clock") else 0.0)
    inputs, drafter, ok = None, pipe.role == "drafter", True
    overlap = sync is not None and cfg.cpu_stages == "overlap"
    turns = (pipe.role,) if not sync or overlap else ("drafter", "target")
    try:
        if overlap:  # both roles start stage 1 together and run freely, as the executor does
            sync.wait()
        for turn in turns:  # "serial": stages 1-2 one role at a time, then a barrier before stage 3
            if turn == pipe.role:
                try:
                    with timer.span("load", gpu=False):
                        loaded = pipe.load(sample)
                    with timer.span("preprocess", gpu=False, sync_cpu_end=True):
                        inputs = pipe.preprocess(loaded, sample.query)
                except Exception as exc:  # noqa: BLE001 - recorded as a failed row; keep the barrier
                    ok = _fail(out, timer, exc)
            if sync and not overlap:
                sync.wait()
        if ok:
            _gpu_stages(pipe, inputs, timer, cfg, out, sync, verify=not (sync and drafter))
    except Exception as exc:  # noqa: BLE001 - incl. a broken barrier (peer died / timed out)
        _fail(out, timer, exc)
    finally:
        if sync and not drafter:
            sync.target_done.set()  # never leave the drafter drafting
    return out


def _fail(out: RoleOutcome, timer: Any, exc: BaseException) -> bool:
    out.error, out.failed_stage = one_line(exc), timer.current or "load"
    return False


def _gpu_stages(pipe: Pipeline, inputs: dict, timer: Any, cfg: StageConfig, out: RoleOutcome,
                sync: _Sync | None, verify: bool) -> None:
    with timer.span("vision_encode"):
        embeds = pipe.vision_encode(inputs)
    n = int(embeds.shape[1])
    with timer.span("prefill", query_tokens=n):
        cache, token = act.prefill_first_token(pipe, embeds)
    out.prompt_tokens, out.kv_bytes = pipe.prompt_tokens, pipe.kv_bytes(cache)
    if not pipe.backend.prepared:  # graphs/compiled: capture outside every span (warm-up sample)
        pipe.prepare_backend(cfg.query_lengths(pipe.role, sync is not None))
    if verify and cfg.gammas:
        drafts = list(range(_DRAFT_TOKEN_BASE, _DRAFT_TOKEN_BASE + max(cfg.gammas)))
        for i, gamma in enumerate(cfg.gammas):
            with timer.span("verify", step=i, gamma=gamma, kv_tokens=n, query_tokens=gamma + 1):
                act.verify_pass(pipe, cache, token, drafts[:gamma], kv_before=n)
            pipe.crop(cache, n)
    if sync and pipe.role == "drafter":
        _draft_until_target_done(pipe, cache, token, n, timer, cfg, sync)
        return
    for step in range(cfg.decode_steps):
        with timer.span("decode_step", step=step, kv_tokens=n + step, query_tokens=1):
            cache, token = act.decode_token(pipe, cache, token, n + step + 2)
    if sync:
        sync.target_done.set()


def _draft_until_target_done(pipe: Pipeline, cache: Any, token: int, n: int, timer: Any,
                             cfg: StageConfig, sync: _Sync) -> None:
    """Drafter beside a working target: decode steps until the target's last timed step ended.

    The KV wraps back to the prompt (rollback, outside any span) before it would exceed the
    pipeline's ``max_new_tokens``, so a long wait never outgrows a static cache.
    """
    kv = n
    for step in range(cfg.max_draft_steps):
        if sync.target_done.is_set():
            return
        if kv - n >= pipe.max_new_tokens - 1:
            pipe.crop(cache, n)
            kv = n
        with timer.span("decode_step", step=step, kv_tokens=kv, query_tokens=1):
            cache, token = act.decode_token(pipe, cache, token, kv - n + 2)
        kv += 1


def finish_outcome(out: RoleOutcome, timer: Any, device: torch.device, base_mb: dict | None = None) -> RoleOutcome:
    """Resolve the timer's spans into plain dicts and read the device's peak memory (MiB)."""
    for sp in timer.resolve():
        out.spans.append({"stage": sp.stage, "step": sp.step, "start_ms": sp.start_ms,
                          "duration_ms": max(sp.duration_ms, 0.0), "gpu_ms": sp.gpu_ms, **sp.info})
    if is_cuda(device):
        out.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
        out.peak_extra_mb = out.peak_mem_mb - (base_mb or {}).get(torch.device(device), 0.0)
        out.peak_reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
    return out


def reset_peak(*devices: torch.device) -> dict[torch.device, float]:
    """Reset the peak-memory counters; return what each CUDA device holds now (MiB)."""
    base = {}
    for d in {torch.device(x) for x in devices}:
        if d.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d)
            base[d] = torch.cuda.memory_allocated(d) / 2**20
    return base


# --------------------------------------------------------------------------- placements


def run_alone(pipe: Pipeline, sample: Sample, cfg: StageConfig) -> RoleOutcome:
    """``alone``: one role by itself on its device."""
    base = reset_peak(pipe.device)
    timer = StageTimer(pipe.device, Clock((pipe.device,)))
    return finish_outcome(role_protocol(pipe, sample, timer, cfg), timer, pipe.device, base)


class AloneRunner:
    """``alone`` runs of every role in ``pipes``, one after the other (``runner(sample)``)."""

    def __init__(self, pipes: dict[str, Pipeline], cfg: StageConfig, frames: int):
        self.pipes, self.cfg, self.frames = pipes, cfg, frames

    def __call__(self, sample: Sample) -> dict[str, RoleOutcome]:
        _set_frames(self.pipes, self.frames)
        return {r: run_alone(p, sample, self.cfg) for r, p in self.pipes.items()}


class ThreadsRunner:
    """Both roles at once from two threads, each on its own CUDA stream — created once per run
    (a fresh stream per sample defeats the caching allocator: +1.6 GB reserved per sample)."""

    def __init__(self, pipes: dict[str, Pipeline], cfg: StageConfig, frames: int):
        if set(pipes) != {"target", "drafter"}:
            raise ValueError(f"placement {cfg.placement!r} needs both a target and a drafter")
        self.pipes, self.cfg, self.frames = pipes, cfg, frames
        self.streams = {r: torch.cuda.Stream(p.device) if is_cuda(p.device) else None for r, p in pipes.items()}

    def __call__(self, sample: Sample) -> dict[str, RoleOutcome]:
        _set_frames(self.pipes, self.frames)
        devices = tuple(p.device for p in self.pipes.values())
        base, clock = reset_peak(*devices), Clock(devices)
        sync = _Sync(threading.Barrier(2), threading.Event(), self.cfg.barrier_timeout_s)
        results: dict[str, RoleOutcome] = {}

        def work(role: str) -> None:
            pipe, ctx = self.pipes[role], contextlib.ExitStack()
            if self.streams[role] is not None:
                ctx.enter_context(torch.cuda.device(pipe.device))
                ctx.enter_context(torch.cuda.stream(self.streams[role]))
            with ctx:
                timer = StageTimer(pipe.device, clock)
                out = role_protocol(pipe, sample, timer, self.cfg, sync)
                results[role] = finish_outcome(out, timer, pipe.device, base)

        threads = [threading.Thread(target=work, args=(r,), name=f"measure-{r}") for r in ("drafter", "target")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        synchronize(*devices)
        return results


def _set_frames(pipes: dict[str, Pipeline], frames: int) -> None:
    for p in pipes.values():
        p.frames = frames if p.spec.video else 1


def align_processes(outcomes: dict[str, RoleOutcome]) -> None:
    """Shift per-process ``start_ms`` onto one axis (origin = earliest ``host0_s``)."""
    origin = min(o.host0_s for o in outcomes.values())
    for o in outcomes.values():
        shift = (o.host0_s - origin) * 1000.0
        for s in o.spans:
            s["start_ms"] += shift


# --------------------------------------------------------------------------- runs


@dataclass
class MeasuredRun:
    """One configuration of a plan: its id, knobs, sample runner and writer."""

    run_id: str
    cfg: StageConfig
    runner: Callable[[Sample], dict[str, RoleOutcome]]
    writer: TraceWriter


def run_interleaved(runs: list[MeasuredRun], samples: list[Sample], progress: bool = True) -> dict[str, Any]:
    """Measure every run on every sample, **sample-major**: all runs of sample i before sample i+1.

    Warm-up: the first ``cfg.warmup_samples`` samples go once untimed through every run that
    has work left (graphs are captured there, outside any span). Returns run_id -> sample
    counts, or the one-line error of a run that ended with no OK sample.
    """
    from tqdm.auto import tqdm

    done = {r.run_id: r.writer.done_samples() for r in runs}
    todo = [r for r in runs if any(s.sample_id not in done[r.run_id] for s in samples)]
    seen: dict[str, set] = {r.run_id: set() for r in runs}
    for r in todo:
        for s in samples[:r.cfg.warmup_samples]:
            seen[r.run_id] |= prompt_shapes(r.runner(s))
    for s in tqdm(samples, desc="samples", unit="sample", disable=not progress):
        for r in todo:
            if s.sample_id in done[r.run_id]:
                continue
            base = {"run_id": r.run_id, "placement": r.cfg.placement, "concurrency": r.cfg.concurrency,
                    "sample_id": s.sample_id, "backend": r.cfg.backend}
            r.writer.write_sample(s.sample_id, outcome_rows(warm_outcomes(r, s, seen[r.run_id]), base,
                                                            r.cfg.placement != "alone"))
    result: dict[str, Any] = {}
    for r in runs:
        try:
            result[r.run_id] = r.writer.finish()
        except NoSamplesError as exc:
            result[r.run_id] = str(exc)
    return result


def prompt_shapes(outcomes: dict[str, RoleOutcome]) -> set[tuple[str, int]]:
    """(role, prompt tokens) of the roles that reached their prefill in one sample's outcomes."""
    return {(role, o.prompt_tokens) for role, o in outcomes.items() if o.prompt_tokens > 0}


def warm_outcomes(r: MeasuredRun, sample: Sample, seen: set) -> dict[str, RoleOutcome]:
    """One sample of run ``r``, measured warm: a sample whose prompt length a role has not run
    before is run twice and the second pass is recorded (``seen`` is updated).

    Why: kernels that plan per shape (cuDNN attention builds an execution plan for every new
    sequence length, ~30-50 ms on an H200 for a 4.6k-token prefill) would otherwise put a
    one-off cost into the first prefill of every new length, while an executor serving that
    length again pays it once. The first pass's stage times are kept in the run metadata
    (``first_pass_ms``: sample -> role -> stage -> ms), so nothing measured is lost.
    """
    outs = r.runner(sample)
    shapes = prompt_shapes(outs)
    if shapes <= seen or any(o.error for o in outs.values()):
        return outs
    seen |= shapes
    first = {role: {sp["stage"]: round(float(sp["duration_ms"]), 3) for sp in o.spans
                    if sp["stage"] in ("vision_encode", "prefill")} for role, o in outs.items()}
    r.writer.run_meta.setdefault("first_pass_ms", {})[sample.sample_id] = first
    return r.runner(sample)


def run_samples(pipes: dict[str, Pipeline], samples: list[Sample], cfg: StageConfig, writer: TraceWriter,
                run_id: str, progress: bool = True, sample_runner: Callable | None = None) -> dict[str, int]:
    """One configuration over ``samples`` (see :func:`run_interleaved`); raises ``NoSamplesError``."""
    frames = next(iter(pipes.values())).frames if pipes else 1
    runner = sample_runner or (ThreadsRunner(pipes, cfg, frames) if cfg.placement != "alone"
                               else AloneRunner(pipes, cfg, frames))
    counts = run_interleaved([MeasuredRun(run_id, cfg, runner, writer)], samples, progress)[run_id]
    if isinstance(counts, str):
        raise NoSamplesError(counts)
    return counts


# --------------------------------------------------------------------------- processes


def _proc_worker(role: str, build: dict[str, Any], cfg: StageConfig, tasks: Any, results: Any,
                 barrier: Any, flag: Any) -> None:
    """Worker process: build one pipeline, then run the role protocol on every sample sent."""
    from measure.models import build_pipeline

    try:
        pipe = build_pipeline(role, **build)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(("error", role, one_line(exc)))
        return
    results.put(("ready", role, pipe.info))
    sync = _Sync(barrier, flag, cfg.barrier_timeout_s)
    stream = torch.cuda.Stream(pipe.device) if is_cuda(pipe.device) else None  # once per run
    while (item := tasks.get()) is not None:
        sample, frames = item
        pipe.frames = frames if pipe.spec.video else 1
        base = reset_peak(pipe.device)
        ctx = contextlib.ExitStack()
        if stream is not None:
            ctx.enter_context(torch.cuda.device(pipe.device))
            ctx.enter_context(torch.cuda.stream(stream))
        with ctx:
            timer = StageTimer(pipe.device, Clock((pipe.device,)))
            out = role_protocol(pipe, sample, timer, cfg, sync)
            results.put(("sample", role, finish_outcome(out, timer, pipe.device, base)))


class ProcessPair:
    """Drafter and target in two spawned processes, kept for a whole run.

    ``pair(sample)`` runs one sample concurrently and returns ``{role: RoleOutcome}`` with
    ``start_ms`` on one axis. ``build`` maps role -> :func:`build_pipeline` keyword arguments.
    """

    def __init__(self, build: dict[str, dict[str, Any]], cfg: StageConfig, frames: int, poll_s: float = 2.0):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.frames, self.poll_s = frames, poll_s
        self.flag, self.results = ctx.Event(), ctx.Queue()
        barrier = ctx.Barrier(2)
        self.tasks = {r: ctx.Queue() for r in ("drafter", "target")}
        self.procs = {r: ctx.Process(target=_proc_worker, name=f"measure-{r}", daemon=True,
                                     args=(r, build[r], cfg, self.tasks[r], self.results, barrier, self.flag))
                      for r in self.tasks}
        for p in self.procs.values():
            p.start()
        self.info: dict[str, Any] = {}
        try:
            while len(self.info) < 2:
                kind, role, payload = self._get()
                if kind == "error":
                    raise RuntimeError(f"{role} worker failed to build its model: {payload}")
                self.info[role] = payload
        except BaseException:
            self.close()
            raise

    def _get(self) -> tuple:
        import queue

        while True:
            try:
                return self.results.get(timeout=self.poll_s)
            except queue.Empty:
                dead = [r for r, p in self.procs.items() if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker process(es) {dead} died (exit codes "
                                       f"{[self.procs[r].exitcode for r in dead]})") from None

    def __call__(self, sample: Sample) -> dict[str, RoleOutcome]:
        self.flag.clear()
        for q in self.tasks.values():
            q.put((sample, self.frames))
        outs: dict[str, RoleOutcome] = {}
        while len(outs) < 2:
            kind, role, payload = self._get()
            outs[role] = payload
        align_processes(outs)
        return outs

    def close(self) -> None:
        for q in self.tasks.values():
            q.put(None)
        for p in self.procs.values():
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)

    def __enter__(self) -> "ProcessPair":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- run plans


@dataclass
class RunPlan:
    """Everything ``python -m measure stages`` asks for (see :func:`execute`)."""

    target: str
    drafter: str
    dataset: str
    out: str
    n_samples: int | None = None
    dtype: str = "fp16"
    quant: str | None = None
    placements: tuple[str, ...] = ("alone",)
    concurrency: tuple[str, ...] = ("streams",)
    frames: tuple[int, ...] = (8,)
    roles: tuple[str, ...] = ("target", "drafter")
    target_device: str = "cuda:0"
    drafter_device: str | None = None  # every placement's drafter device (default: the target's)
    separate_device: str = "cuda:1"    # the drafter's device in separate_gpu runs (unless drafter_device)
    attn_implementation: str = "sdpa"
    sdpa_backends: str = "auto"
    video_decoder: str = "auto"
    backend: str = "eager"
    compile_backend: str = "inductor"
    max_new_tokens: int = 256
    run_prefix: str = ""
    resume: bool = False
    consolidate: bool = False
    progress: bool = True
    stage: StageConfig = field(default_factory=StageConfig)

    def configs(self) -> list[tuple[str, str, int, tuple[str, ...]]]:
        """(placement, concurrency, frames, roles) of each run, in the order a sample visits them.

        Several frame counts make a token-scaling sweep: the target alone at each count (the
        drafter always encodes one event frame).
        """
        if len(self.frames) > 1:
            return [("alone", "none", f, ("target",)) for f in self.frames]
        f, runs = self.frames[0], []
        for pl in self.placements:
            runs += [("alone", "none", f, self.roles)] if pl == "alone" else [(pl, c, f, ("target", "drafter"))
                                                                           for c in self.concurrency]
        return runs

    def device(self, role: str, placement: str) -> str:
        if role == "target":
            return self.target_device
        if self.drafter_device:
            return self.drafter_device
        return self.separate_device if placement == "separate_gpu" else self.target_device

    def build_args(self, role: str, placement: str, frames: int, decoder: str) -> dict[str, Any]:
        """Keyword arguments of :func:`measure.models.build_pipeline` for ``role`` in ``placement``."""
        return dict(source=self.target if role == "target" else self.drafter, dtype=self.dtype, quant=self.quant,
                    device=self.device(role, placement), frames=frames, attn_implementation=self.attn_implementation,
                    video_decoder=decoder, sdpa_backends=self.sdpa_backends, backend=self.backend,
                    max_new_tokens=self.max_new_tokens, compile_backend=self.compile_backend)


def _build_runner(plan: RunPlan, placement: str, conc: str, frames: int, roles: tuple[str, ...],
                  cfg: StageConfig, decoder: str, cache: dict, log: Callable[[str], None]) -> tuple[Any, dict]:
    """(sample runner, role -> pipeline info) of one configuration; in-process pipelines are cached."""
    from measure.models import build_pipeline

    build = {r: plan.build_args(r, placement, frames, decoder) for r in roles}
    devices = {r: b["device"] for r, b in build.items()}
    if placement == "separate_gpu" and len(set(devices.values())) == 1 and "cuda" in devices["target"]:
        raise RuntimeError("separate_gpu needs two different devices (--drafter-device)")
    if conc == "processes":
        t0 = time.perf_counter()
        pair = ProcessPair(build, cfg, frames)
        log(f"started drafter + target worker processes in {time.perf_counter() - t0:.1f} s")
        return pair, pair.info
    pipes = {}
    for r in roles:
        key = (r, devices[r])
        if key not in cache:
            t0 = time.perf_counter()
            cache[key] = build_pipeline(r, **build[r])
            log(f"built {r} {build[r]['source']} ({plan.backend}) on {devices[r]} in {time.perf_counter() - t0:.1f} s")
        pipes[r] = cache[key]
    runner = AloneRunner(pipes, cfg, frames) if placement == "alone" else ThreadsRunner(pipes, cfg, frames)
    return runner, {r: p.info for r, p in pipes.items()}


def _run_meta(plan: RunPlan, cfg: StageConfig, infos: dict, placement: str, conc: str, frames: int,
              roles: tuple[str, ...], decoder: str, in_process: list[str], run_ids: list[str]) -> dict[str, Any]:
    from measure import provenance

    devices = [plan.device(r, placement) for r in roles]
    method = gpu_method(devices[0], "host")
    return provenance.run_metadata(
        model_info=infos, devices=devices, dtype=plan.dtype, quant=plan.quant,
        timing={"gpu_stages": method, "cpu_stages": "perf_counter", "start_ms": _START_MS_METHOD[method],
                "span": SPAN_DEFINITION},
        placement=placement, concurrency=conc, workers="processes" if conc == "processes" else "threads",
        frames=frames, roles=list(roles), decode_steps=cfg.decode_steps, gammas=list(cfg.gammas),
        warmup_samples=cfg.warmup_samples, warm_shapes="a sample whose prompt length is new to the run is run twice "
        "and its second pass recorded (first pass: first_pass_ms)", decode_backend=plan.backend, max_new_tokens=plan.max_new_tokens,
        drafter_schedule="drafts until the target's last timed step" if placement != "alone" else "n/a",
        cpu_stages=cfg.cpu_stages if placement != "alone" else "n/a",
        interleaved_with=run_ids, sdpa_backends=plan.sdpa_backends, video_decoder=decoder, dataset=str(plan.dataset),
        peak_mem_scope="peak_mem_mb: device peak of the measuring process (every model it holds: "
        + ("its own" if conc == "processes" else ", ".join(sorted(in_process)))
        + "); peak_extra_mb: above the allocation at sample start; peak_reserved_mb: allocator reserve")


def execute(plan: RunPlan, log: Callable[[str], None] = print) -> tuple[list[str], list[str]]:
    """Build every config of ``plan``, measure them interleaved per sample, record drift.

    One failing config never stops the others. Returns (run ids that finished with OK
    samples, one-line errors of the others).
    """
    from measure import dataset as ds
    from measure import provenance

    samples = ds.load_dataset(plan.dataset, plan.n_samples)
    decoder = ds.available_decoder(plan.video_decoder)
    tag = "4bit" if plan.quant and plan.quant != "none" else plan.dtype
    tag += "" if plan.backend == "eager" else f"-{plan.backend}"
    cache: dict[tuple[str, str], Pipeline] = {}
    runs, pairs, errors = [], [], []
    run_ids = [f"{plan.run_prefix}{tag}-{pl}-{c}-f{f}" for pl, c, f, _ in plan.configs()]
    for run_id, (placement, conc, frames, roles) in zip(run_ids, plan.configs()):
        try:
            cfg = StageConfig(**{**plan.stage.__dict__, "placement": placement, "concurrency": conc,
                                 "backend": plan.backend})
            runner, infos = _build_runner(plan, placement, conc, frames, roles, cfg, decoder, cache, log)
            pairs += [runner] if isinstance(runner, ProcessPair) else []
            meta = _run_meta(plan, cfg, infos, placement, conc, frames, roles, decoder, [r for r, _ in cache], run_ids)
            runs.append(MeasuredRun(run_id, cfg, runner, TraceWriter(plan.out, run_id, meta, resume=plan.resume)))
        except Exception as exc:  # noqa: BLE001 - keep going with the next config
            errors.append(f"{run_id}: {one_line(exc)}")
            log(f"FAILED {errors[-1]}")
    try:
        results = run_interleaved(runs, samples, plan.progress) if runs else {}
    finally:
        for pair in pairs:
            pair.close()
    ok = []
    for run_id, res in results.items():
        if isinstance(res, str):
            errors.append(f"{run_id}: NoSamplesError: {res}")
            log(f"FAILED {errors[-1]}")
            continue
        ok.append(run_id)
        drift = provenance.record_drift(plan.out, run_id, [s.sample_id for s in samples])
        log(f"{run_id}: {res['samples_ok']} samples OK, {res['samples_failed']} failed; drift {drift}")
    if plan.consolidate:
        from measure.writer import consolidate

        consolidate(plan.out)
    return ok, errors
