"""Per-sample stage measurements of both pipelines, alone or sharing the hardware.

One protocol serves every placement (see :func:`role_protocol`): stages 1-2 on the CPU, then
vision encoding, prefill, ``verify`` passes for each gamma (each on the prefill cache, cropped
back after), then decode steps. After every decode step the host reads the new token (as a
real decoding loop does for its stop check), so steps are host-visible.

* ``alone``: one model at a time on its device (``concurrency="none"``).
* ``shared_gpu`` / ``separate_gpu``: both models at once, the way parallel prefill runs them.
  Stages 1-2 run one role after the other (drafter first), then both start stage 3 together
  (barrier). The drafter decodes until the target's prefill has finished, then ``tail_steps``
  more; the target verifies and decodes. ``concurrency="streams"``: two threads, each on its own
  CUDA stream, spans timed with CUDA events against one origin event per device;
  ``"processes"``: two spawned worker processes (:class:`ProcessPair`), spans timed with
  ``perf_counter`` around a stream synchronise, put on one axis via ``Clock.host0_s``.
  ``peer_busy`` is True when the peer's spans cover at least half of a span.

Every function takes devices from the pipelines; nothing assumes ``cuda:0``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from measure.dataset import Sample
from measure.models import Pipeline
from measure.timing import Clock, StageTimer, gpu_method, is_cuda, synchronize
from measure.writer import TraceWriter, outcome_rows

DEFAULT_GAMMAS = (1, 2, 4, 8, 16, 32, 64)
_DRAFT_TOKEN_BASE = 100  # arbitrary in-vocabulary ids standing in for draft tokens
_START_MS_METHOD = {
    "cuda_event": "CUDA event vs one origin event per device (CPU stages: perf_counter vs host origin)",
    "perf_counter": "perf_counter vs the sample's host origin",
    "perf_counter_sync": "perf_counter (CLOCK_MONOTONIC) after stream sync; processes aligned on their host0",
}


@dataclass
class StageConfig:
    """Knobs of one measurement run (units in the names)."""

    placement: str = "alone"
    concurrency: str = "none"
    decode_steps: int = 20
    gammas: tuple[int, ...] = DEFAULT_GAMMAS
    warmup_samples: int = 1
    tail_steps: int = 4            # drafter decode steps after the target's prefill ended
    max_draft_steps: int = 512     # safety cap on the drafter's steps while it waits
    barrier_timeout_s: float = 600.0


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
    error: str | None = None
    failed_stage: str = "load"
    host0_s: float = 0.0


class _Sync:
    """Barrier + "target prefill finished" flag (threading or multiprocessing objects)."""

    def __init__(self, barrier: Any, target_prefilled: Any, timeout_s: float):
        self.barrier, self.target_prefilled, self.timeout_s = barrier, target_prefilled, timeout_s

    def wait(self) -> None:
        self.barrier.wait(self.timeout_s)


def role_protocol(pipe: Pipeline, sample: Sample, timer: Any, cfg: StageConfig,
                  sync: _Sync | None = None) -> RoleOutcome:
    """Run all stages of ``pipe.role`` on ``sample``; exceptions become ``outcome.error``.

    ``sync=None`` is the ``alone`` placement; otherwise the barrier/flag protocol above.
    """
    out = RoleOutcome(pipe.role, pipe.frames, host0_s=timer.clock.host0_s if hasattr(timer, "clock") else 0.0)
    inputs, drafter, ok = None, pipe.role == "drafter", True
    try:
        for turn in ("drafter", "target") if sync else (pipe.role,):  # stages 1-2, one role at a time
            if turn == pipe.role:
                try:
                    with timer.span("load", gpu=False):
                        loaded = pipe.load(sample)
                    with timer.span("preprocess", gpu=False, sync_cpu_end=True):
                        inputs = pipe.preprocess(loaded, sample.query)
                except Exception as exc:  # noqa: BLE001 - recorded as a failed row; keep the barrier
                    ok = _fail(out, timer, exc)
            if sync:
                sync.wait()
        if ok:
            _gpu_stages(pipe, inputs, timer, cfg, out, sync, verify=not (sync and drafter))
    except Exception as exc:  # noqa: BLE001 - incl. a broken barrier (peer died / timed out)
        _fail(out, timer, exc)
    finally:
        if sync and not drafter:
            sync.target_prefilled.set()  # never leave the drafter waiting
    return out


def _fail(out: RoleOutcome, timer: Any, exc: BaseException) -> bool:
    msg = (str(exc).strip().splitlines() or [""])[0]
    out.error, out.failed_stage = f"{type(exc).__name__}: {msg}", timer.current or "load"
    return False


def _gpu_stages(pipe: Pipeline, inputs: dict, timer: Any, cfg: StageConfig, out: RoleOutcome,
                sync: _Sync | None, verify: bool) -> None:
    with timer.span("vision_encode"):
        embeds = pipe.vision_encode(inputs)
    n = int(embeds.shape[1])
    with timer.span("prefill", query_tokens=n):
        cache, logits = pipe.prefill(embeds)
        token = logits.argmax(-1)
    int(token)  # host needs the first token (and, for the target, "prefill done" is now true)
    out.prompt_tokens, out.kv_bytes = pipe.prompt_tokens, pipe.kv_bytes(cache)
    if sync and pipe.role == "target":
        sync.target_prefilled.set()
    if verify and cfg.gammas:
        drafts = torch.arange(_DRAFT_TOKEN_BASE, _DRAFT_TOKEN_BASE + max(cfg.gammas), device=pipe.device)
        for i, gamma in enumerate(cfg.gammas):
            ids = torch.cat([token.reshape(1), drafts[:gamma]])
            with timer.span("verify", step=i, gamma=gamma, kv_tokens=n, query_tokens=gamma + 1):
                pipe.verify(cache, ids)
            pipe.crop(cache, n)
    for step in _decode_schedule(pipe.role, cfg, sync):
        with timer.span("decode_step", step=step, kv_tokens=n + step, query_tokens=1):
            cache, logits = pipe.decode_step(cache, token)
            token = logits.argmax(-1)
        int(token)  # per-token host sync, as a real loop's stop check


def _decode_schedule(role: str, cfg: StageConfig, sync: _Sync | None):
    """Step indices to decode: fixed count, or (drafter, concurrent) until the target prefilled + tail."""
    if sync is None or role == "target":
        yield from range(cfg.decode_steps)
        return
    step, tail = 0, cfg.tail_steps
    while step < cfg.max_draft_steps and (not sync.target_prefilled.is_set() or tail > 0):
        if sync.target_prefilled.is_set():
            tail -= 1
        yield step
        step += 1


def finish_outcome(out: RoleOutcome, timer: Any, device: torch.device, base_mb: dict | None = None) -> RoleOutcome:
    """Resolve the timer's spans into plain dicts and read the device's peak memory (MiB)."""
    for sp in timer.resolve():
        out.spans.append({"stage": sp.stage, "step": sp.step, "start_ms": sp.start_ms,
                          "duration_ms": max(sp.duration_ms, 0.0), **sp.info})
    if is_cuda(device):
        out.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
        out.peak_extra_mb = out.peak_mem_mb - (base_mb or {}).get(torch.device(device), 0.0)
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


def run_threads(pipes: dict[str, Pipeline], sample: Sample, cfg: StageConfig) -> dict[str, RoleOutcome]:
    """Both roles at once from two threads, each on its own CUDA stream (CPU: plain threads)."""
    devices = tuple(p.device for p in pipes.values())
    base = reset_peak(*devices)
    clock = Clock(devices)
    sync = _Sync(threading.Barrier(2), threading.Event(), cfg.barrier_timeout_s)
    results: dict[str, RoleOutcome] = {}

    def work(role: str) -> None:
        pipe = pipes[role]
        ctx = contextlib.ExitStack()
        if is_cuda(pipe.device):
            ctx.enter_context(torch.cuda.device(pipe.device))
            ctx.enter_context(torch.cuda.stream(torch.cuda.Stream(pipe.device)))
        with ctx:
            timer = StageTimer(pipe.device, clock)
            results[role] = finish_outcome(role_protocol(pipe, sample, timer, cfg, sync), timer, pipe.device, base)

    threads = [threading.Thread(target=work, args=(r,), name=f"measure-{r}") for r in ("drafter", "target")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    synchronize(*devices)
    return results


def align_processes(outcomes: dict[str, RoleOutcome]) -> None:
    """Shift per-process ``start_ms`` onto one axis (origin = earliest ``host0_s``)."""
    origin = min(o.host0_s for o in outcomes.values())
    for o in outcomes.values():
        shift = (o.host0_s - origin) * 1000.0
        for s in o.spans:
            s["start_ms"] += shift


# --------------------------------------------------------------------------- runs


def run_samples(pipes: dict[str, Pipeline], samples: list[Sample], cfg: StageConfig, writer: TraceWriter,
                run_id: str, progress: bool = True, sample_runner: Callable | None = None) -> dict[str, int]:
    """Measure ``samples`` with ``cfg``, writing one part per sample; returns sample counts.

    ``pipes`` holds the roles to measure (``alone`` may have one). Warm-up: the first
    ``cfg.warmup_samples`` samples are run once untimed before the first timed sample.
    ``sample_runner(sample) -> {role: RoleOutcome}`` overrides the in-process runners
    (used by the processes mode).
    """
    from tqdm.auto import tqdm

    concurrent = cfg.placement != "alone"
    if concurrent and set(pipes) != {"target", "drafter"} and sample_runner is None:
        raise ValueError(f"placement {cfg.placement!r} needs both a target and a drafter")
    runner = sample_runner or (lambda s: run_threads(pipes, s, cfg) if concurrent
                               else {r: run_alone(p, s, cfg) for r, p in pipes.items()})
    done = writer.done_samples()
    todo = [s for s in samples if s.sample_id not in done]
    for s in samples[:cfg.warmup_samples] if todo else []:
        runner(s)
    base = {"run_id": run_id, "placement": cfg.placement, "concurrency": cfg.concurrency}
    for s in tqdm(todo, desc=run_id, unit="sample", disable=not progress):
        outcomes = runner(s)
        writer.write_sample(s.sample_id, outcome_rows(outcomes, {**base, "sample_id": s.sample_id}, concurrent))
    return writer.finish()


# --------------------------------------------------------------------------- processes


def _proc_worker(role: str, build: dict[str, Any], cfg: StageConfig, tasks: Any, results: Any,
                 barrier: Any, flag: Any) -> None:
    """Worker process: build one pipeline, then run the role protocol on every sample sent."""
    from measure.models import build_pipeline

    try:
        pipe = build_pipeline(role, **build)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(("error", role, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"))
        return
    results.put(("ready", role, pipe.info))
    sync = _Sync(barrier, flag, cfg.barrier_timeout_s)
    while (item := tasks.get()) is not None:
        sample, frames = item
        pipe.frames = frames if pipe.spec.video else 1
        base = reset_peak(pipe.device)
        timer = StageTimer(pipe.device, Clock((pipe.device,)), mode="sync")
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
    drafter_device: str | None = None  # separate_gpu: default cuda:1; else the target's device
    attn_implementation: str = "sdpa"
    sdpa_backends: str = "no-cudnn"
    video_decoder: str = "auto"
    run_prefix: str = ""
    resume: bool = False
    consolidate: bool = False
    progress: bool = True
    stage: StageConfig = field(default_factory=StageConfig)

    def configs(self) -> list[tuple[str, str, int, tuple[str, ...]]]:
        """(placement, concurrency, frames, roles) of each run; in-process runs first.

        Several frame counts make a token-scaling sweep: the target alone at each count.
        """
        if len(self.frames) > 1:
            return [("alone", "none", f, ("target",)) for f in self.frames]
        f, runs = self.frames[0], []
        for pl in self.placements:
            runs += [("alone", "none", f, self.roles)] if pl == "alone" else [(pl, c, f, ("target", "drafter"))
                                                                           for c in self.concurrency]
        return sorted(runs, key=lambda r: r[1] == "processes")

    def device(self, role: str, placement: str) -> str:
        if role == "target":
            return self.target_device
        if self.drafter_device:
            return self.drafter_device
        return "cuda:1" if placement == "separate_gpu" else self.target_device


def execute(plan: RunPlan, log: Callable[[str], None] = print) -> tuple[list[str], list[str]]:
    """Run every config of ``plan``; one failing config never stops the others.

    Returns (run ids that finished with OK samples, one-line errors of the others).
    """
    import gc

    from measure import dataset as ds
    from measure import provenance
    from measure.models import build_pipeline

    samples = ds.load_dataset(plan.dataset, plan.n_samples)
    decoder = ds.available_decoder(plan.video_decoder)
    tag = "4bit" if plan.quant and plan.quant != "none" else plan.dtype
    cache: dict[tuple[str, str], Pipeline] = {}
    ok, errors = [], []
    for placement, conc, frames, roles in plan.configs():
        run_id = f"{plan.run_prefix}{tag}-{placement}-{conc}-f{frames}"
        devices = {r: plan.device(r, placement) for r in roles}
        try:
            if placement == "separate_gpu" and len(set(devices.values())) == 1 and "cuda" in devices["target"]:
                raise RuntimeError("separate_gpu needs two different devices (--drafter-device)")
            build = {r: dict(source=plan.target if r == "target" else plan.drafter, dtype=plan.dtype,
                             quant=plan.quant, device=devices[r], frames=frames,
                             attn_implementation=plan.attn_implementation, video_decoder=decoder,
                             sdpa_backends=plan.sdpa_backends) for r in roles}
            cfg = StageConfig(**{**plan.stage.__dict__, "placement": placement, "concurrency": conc})
            pair, pipes = None, {}
            if conc == "processes":
                cache.clear()  # the workers load their own copies: free the GPU first
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                t0 = time.perf_counter()
                pair = ProcessPair(build, cfg, frames)
                log(f"started drafter + target worker processes in {time.perf_counter() - t0:.1f} s")
                infos = pair.info
            else:
                for r in roles:
                    key = (r, devices[r])
                    if key not in cache:
                        t0 = time.perf_counter()
                        cache[key] = build_pipeline(r, **build[r])
                        log(f"built {r} {build[r]['source']} on {devices[r]} in {time.perf_counter() - t0:.1f} s")
                    pipes[r] = cache[key]
                    pipes[r].frames = frames if pipes[r].spec.video else 1
                infos = {r: p.info for r, p in pipes.items()}
            method = gpu_method(devices["target"], "sync" if conc == "processes" else "events")
            meta = provenance.run_metadata(
                model_info=infos, devices=list(devices.values()), dtype=plan.dtype, quant=plan.quant,
                timing={"gpu_stages": method, "cpu_stages": "perf_counter", "start_ms": _START_MS_METHOD[method]},
                placement=placement, concurrency=conc, frames=frames, roles=list(roles),
                decode_steps=cfg.decode_steps, gammas=list(cfg.gammas), warmup_samples=cfg.warmup_samples,
                tail_steps=cfg.tail_steps, decode_backend="dynamic (DynamicCache, eager)",
                sdpa_backends=plan.sdpa_backends,
                video_decoder=decoder, dataset=str(plan.dataset),
                peak_mem_scope="peak_mem_mb: device peak of the measuring process (every model it holds: "
                + ("its own" if conc == "processes" else ", ".join(sorted({r for r, _ in cache} | set(roles))))
                + "); peak_extra_mb: peak above the allocation at sample start")
            writer = TraceWriter(plan.out, run_id, meta, resume=plan.resume)
            try:
                counts = run_samples(pipes, samples, cfg, writer, run_id, plan.progress, sample_runner=pair)
            finally:
                if pair is not None:
                    pair.close()
            ok.append(run_id)
            log(f"{run_id}: {counts['samples_ok']} samples OK, {counts['samples_failed']} failed")
        except Exception as exc:  # noqa: BLE001 - keep going with the next config
            errors.append(f"{run_id}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
            log(f"FAILED {errors[-1]}")
    if plan.consolidate:
        from measure.writer import consolidate

        consolidate(plan.out)
    return ok, errors
