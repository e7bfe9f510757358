"""Measurement half of the simulator validation: the real executor over a grid, plus the
stage-timing and acceptance trace sets the simulator needs, all recorded on one machine.

Output folder (a trace set plus executor tables; parts are written as samples finish and
merged into one parquet per table by :func:`consolidate`)::

    OUT/dataset/                    synthetic DSEC-style samples (unless --dataset)
    OUT/stage_timings(.parquet)     measure.stages (alone + the executor's placement)
    OUT/acceptance(.parquet)        one run per sigma: acc-sigma<s> (drafter_context="target",
                                    what the executor replays; filter by run_id or ``sigma``)
                                    and acc-own-sigma0 (the drafter's own prompt)
    OUT/executor_results.parquet    one row per request (see measure.executor.Executor.run)
    OUT/executor_timeline.parquet   TIMELINE rows of every request (+ strategy/sigma/N columns)
    OUT/metadata.json               runs: stage runs, acceptance runs, "executor-<first>-<last>"

Grid: for each sample (one request per sample and cell), for each N, ``target_only`` runs
ONCE (it does not depend on sigma; its tokens are the lossless reference and the replay
oracle) and each speculative strategy runs once per sigma. Acceptance is *replayed* from the
acc-sigma<s> trace of the same sample: with random weights a drafter on its own prompt
accepts ~nothing at every sigma (see :mod:`measure.perturb`), so only replay gives several
acceptance levels while every forward pass stays real. Samples are the outer loop, so a
time-out leaves complete cells for the samples done. ``lossless`` is recorded, not asserted:
fp16 verify and decode kernels may legitimately disagree on a near-tie.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from egpt_sim.traces import schema
from measure.acceptance import check_vocab, record_acceptance, run_parts, write_part
from measure.errors import one_line
from measure.executor import STRATEGIES, Executor, ProcessExecutor, mismatch_gaps

RESULTS, TIMELINE, PARTS = "executor_results", "executor_timeline", "executor_parts"
MONITOR = "gpu_monitor.csv"  # nvidia-smi clocks, temperature and power once a second (scripts/gpu_h200.sh)


@dataclass(frozen=True)
class ValidationConfig:
    """Grid and models of one validation run (units in the names; devices as torch strings)."""

    target: str = "random:vicuna7b-clip336"
    drafter: str = "random:vicuna7b-clip336"
    dataset: str | None = None          # None: synthesise n_requests samples under OUT/dataset
    n_requests: int = 10                # samples = requests per grid cell
    first_sample: int = 0               # run samples first_sample .. first_sample + n_requests - 1
    lengths: tuple[int, ...] = (5, 20, 50, 100)
    sigmas: tuple[float, ...] = (0.01, 0.03, 0.1)
    strategies: tuple[str, ...] = STRATEGIES
    gamma: int = 8
    lookahead_blocks: int = 2
    acceptance_blocks: int = 3          # verification blocks recorded per sample and sigma
    target_device: str = "cuda:0"
    drafter_device: str | None = None   # None: the target's device (shared_gpu)
    dtype: str = "fp16"
    backend: str = "eager"              # measure.backends: eager | static | graphs | compiled
    workers: str | None = None          # threads | processes; None: processes for graphs/compiled
    stage_samples: int = 3              # samples of measure.stages per placement (0: skip)
    stage_decode_steps: int = 20
    seed: int = 0
    max_minutes: float | None = None    # stop starting new samples after this wall time
    stage_prefix: str = ""              # prefix of the stage run ids (a top-up call keeps its own runs)
    shuffle: bool = True                # timed cells of a sample in a seeded random order (CELL_ORDER)

    @property
    def worker_kind(self) -> str:
        return self.workers or ("processes" if self.backend in ("graphs", "compiled") else "threads")

    @property
    def concurrency(self) -> str:
        """The stage runs' name for the same kind of peer (threads run on CUDA streams)."""
        return "processes" if self.worker_kind == "processes" else "streams"


def executor_run_id(cfg: ValidationConfig) -> str:
    """Metadata key of an executor run: its sample range (disjoint ranges merge cleanly)."""
    return f"executor-{cfg.first_sample}-{cfg.first_sample + cfg.n_requests - 1}"


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def _stage_timings(cfg: ValidationConfig, data: str, out: Path, resume: bool, log: Callable) -> list[str]:
    """Stage timings of both models, alone and in the executor's placement (measure.stages)."""
    from measure.stages import RunPlan, StageConfig, execute

    placement = "separate_gpu" if cfg.drafter_device not in (None, cfg.target_device) else "shared_gpu"
    plan = RunPlan(target=cfg.target, drafter=cfg.drafter, dataset=data, out=str(out), n_samples=cfg.stage_samples,
                   dtype=cfg.dtype, placements=("alone", placement), concurrency=(cfg.concurrency,),
                   target_device=cfg.target_device, drafter_device=cfg.drafter_device, resume=resume,
                   backend=cfg.backend, progress=False, run_prefix=cfg.stage_prefix,
                   stage=StageConfig(decode_steps=cfg.stage_decode_steps, gammas=(1, 2, 4, 8, 16)))
    ok, errors = execute(plan, log=log)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return ok, errors


SERVING_GAMMAS = (1, 2, 4, 8)  # verify lengths of the serving-process stage rows (the executor captured 1..gamma+1)


def serving_stage_run_id(cfg: ValidationConfig, frames: int = 8) -> str:
    return f"{cfg.stage_prefix}{cfg.dtype}-{cfg.backend}-alone-serving-f{frames}"


def _stage_timings_serving(cfg: ValidationConfig, ex, infos: dict, data: str, stage_runs: list[str], out: Path,
                           resume: bool, log: Callable) -> list[str]:
    """The stage protocol (``alone``) once more, run by the executor's own workers on their models,
    graphs and streams, over the stage runs' samples: run ``<prefix><dtype>-<backend>-alone-serving-f8``,
    metadata ``harness="serving_workers"`` and ``harness_of`` (this call's stage runs).

    Why: the same graph decode step measured 6.9-7.1 ms in measure.stages' interleaved runs and
    7.5-7.9 ms in every standalone process and executor worker on the same leases (README,
    validation item 3); the simulator rescales this call's stage rows by serving / stage-run
    medians (``egpt_sim.traces.harness``), keeping their contention factors.
    """
    from measure import dataset as ds
    from measure import provenance
    from measure.stages import SPAN_DEFINITION, MeasuredRun, StageConfig, run_interleaved
    from measure.timing import gpu_method
    from measure.writer import TraceWriter

    run_id = serving_stage_run_id(cfg)
    scfg = StageConfig(decode_steps=cfg.stage_decode_steps, gammas=SERVING_GAMMAS, placement="alone",
                       concurrency="none", backend=cfg.backend, warmup_samples=0)
    method = gpu_method(cfg.target_device, "host")
    meta = provenance.run_metadata(
        model_info=infos, devices=[cfg.target_device, cfg.drafter_device or cfg.target_device], dtype=cfg.dtype,
        quant=None, timing={"gpu_stages": method, "cpu_stages": "perf_counter", "span": SPAN_DEFINITION},
        placement="alone", concurrency="none", workers=ex.workers, harness="serving_workers",
        harness_of=list(stage_runs), frames=8, roles=["target", "drafter"], decode_steps=scfg.decode_steps,
        gammas=list(scfg.gammas), warmup_samples=0, decode_backend=cfg.backend, dataset=str(data),
        warm_shapes="a sample whose prompt length is new to the run is run twice and its second pass recorded")
    samples = ds.load_dataset(data, cfg.stage_samples)
    res = run_interleaved([MeasuredRun(run_id, scfg, lambda s: ex.stage_alone(s, scfg),
                                       TraceWriter(out, run_id, meta, resume=resume))], samples, progress=False)[run_id]
    if isinstance(res, str):
        return [f"{run_id}: NoSamplesError: {res}"]
    log(f"{run_id}: {res['samples_ok']} samples OK, {res['samples_failed']} failed (serving workers)")
    return []


def _replay_sources(out: Path, run_id: str, pooled: bool = False):
    """Per-sample acceptance sources of one acceptance run (tail rate pooled over samples), or
    one source over every sample (``pooled``)."""
    from egpt_sim.traces.acceptance import TraceAcceptance, conditional_tail_rate

    acc = schema.read_table(out, schema.ACCEPTANCE_FILE)
    blocks = (acc[acc["run_id"] == run_id].groupby(["run_id", "sample_id", "verify_id"], as_index=False)
              .agg(gamma=("gamma", "first"), accepted_len=("accepted_len", "first")))
    tail = conditional_tail_rate(blocks)
    if pooled:
        return TraceAcceptance(blocks, tail_alpha=tail, label=run_id)
    return {sid: TraceAcceptance(g, tail_alpha=tail, label=run_id) for sid, g in blocks.groupby("sample_id")}


def adaptive_window_budget(out: Path, cfg: ValidationConfig, source) -> int:
    """Window budget of ``adaptive_budget`` from this run's *alone* stage medians (what a scheduler
    knows before a request): the drafts that fit in the expected window (target stages 1-4 minus
    the drafter's stages 1-4, divided by a drafter step), kept only if the expected saving
    sum_{i=2..B} P(R >= i) x target decode ms beats the verify pass's overhead over a decode step.
    The simulator is scored at the budget each request recorded (``window_budget`` column).
    """
    import numpy as np

    st = schema.read_table(out, schema.STAGE_TIMINGS_FILE)
    alone = st[(st["status"] == "ok") & (st["placement"] == "alone")]
    med = alone.groupby(["role", "stage"])["duration_ms"].median()
    phase = {r: sum(float(med.get((r, s), 0.0)) for s in schema.PREFILL_PHASE_STAGES)
             for r in ("target", "drafter")}
    step, decode = float(med.get(("drafter", "decode_step"), np.inf)), float(med.get(("target", "decode_step"), 0.0))
    fit = 1 + int(max(0.0, phase["target"] - phase["drafter"]) // step) if np.isfinite(step) else cfg.gamma
    budget = max(0, min(cfg.gamma, fit))
    ver = alone[(alone["role"] == "target") & (alone["stage"] == "verify")].groupby("gamma")["duration_ms"].median()
    g = ver.index[ver.index >= budget - 1].min() if len(ver) and budget > 1 else None
    overhead = float(ver[g]) - decode if g is not None and np.isfinite(g) else 0.0
    surv = source.survival(cfg.gamma) if hasattr(source, "survival") else None
    if surv is not None and budget > 1:
        saving = float(np.sum(np.asarray(surv)[2: budget + 1]) * decode)
        if saving <= overhead:
            budget = 0
    return int(budget)


def _tail_of(per_sample: dict) -> float:
    """The tail rate shared by a sigma's per-sample replay sources (recorded for the validation)."""
    return float(next(iter(per_sample.values())).tail_alpha)


def _request_seed(seed: int, *keys) -> int:
    return zlib.crc32(json.dumps([seed, *keys]).encode()) & 0x7FFF_FFFF


def run_validation(cfg: ValidationConfig, out_dir: str | Path, resume: bool = False,
                   log: Callable[[str], None] = _log_default) -> Path:
    """Run the whole measurement (see module docstring); return ``out_dir``."""
    from measure import dataset as ds
    from measure import provenance, synthetic
    from measure.models import build_pipeline

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = cfg.first_sample + cfg.n_requests
    data = cfg.dataset or str(synthetic.generate(out / "dataset", synthetic.SynthConfig(n_samples=last, seed=cfg.seed)))
    samples = ds.load_dataset(data, last)[cfg.first_sample:]
    stage_runs, errors = _stage_timings(cfg, data, out, resume, log) if cfg.stage_samples > 0 else ([], [])

    # seeded random: weights -> the parent (acceptance) and the workers (executor) hold the same
    # models, and so do later calls topping the grid up (unseeded, two calls' weights differed and
    # so did their acceptance: parallel_sd at sigma 0.03 accepted 23 vs 6.6 tokens per request)
    build = {r: dict(source=cfg.target if r == "target" else cfg.drafter, dtype=cfg.dtype, backend=cfg.backend,
                     device=cfg.target_device if r == "target" else cfg.drafter_device or cfg.target_device,
                     seed=cfg.seed)
             for r in ("target", "drafter")}
    target, drafter = (build_pipeline(r, **build[r]) for r in ("target", "drafter"))
    check_vocab(target, drafter)
    log(f"[{time.perf_counter() - t_start:6.1f}s] models built; recording acceptance")
    acc_runs = {s: f"acc-sigma{s:g}" for s in cfg.sigmas}
    common = dict(gamma=cfg.gamma, n_blocks=cfg.acceptance_blocks, out_dir=out, resume=resume, seed=cfg.seed)
    record_acceptance(target, drafter, samples, sigma=0.0, run_id="acc-own-sigma0", drafter_context="own",
                      **{**common, "n_blocks": 1})
    sources = {}
    for sigma, rid in acc_runs.items():  # the drafter ends with the last sigma's weights
        try:
            record_acceptance(target, drafter, samples, sigma=sigma, run_id=rid, drafter_context="target", **common)
            sources[sigma] = _replay_sources(out, rid)
        except Exception as exc:  # noqa: BLE001 - a sigma level without a trace is left out of the grid
            errors.append(f"acceptance sigma={sigma}: {one_line(exc)}")
            log(f"FAILED {errors[-1]}")
    if not sources:
        raise RuntimeError(f"no acceptance trace could be recorded: {errors[-len(acc_runs):]}")

    budgets = {s: adaptive_window_budget(out, cfg, _replay_sources(out, acc_runs[s], pooled=True))
               for s in sources}
    log(f"adaptive_budget window budgets per sigma: {budgets}")
    if cfg.worker_kind == "processes":
        del target, drafter  # the workers build their own copies
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        ex = ProcessExecutor(build, gamma=cfg.gamma, lookahead_blocks=cfg.lookahead_blocks)
        infos = ex.info
    else:
        ex = Executor(target, drafter, gamma=cfg.gamma, lookahead_blocks=cfg.lookahead_blocks)
        infos = {"target": target.info, "drafter": drafter.info}
    try:
        _warmup(ex, samples[0], cfg, sources)
        if stage_runs:
            errors += _stage_timings_serving(cfg, ex, infos, data, stage_runs, out, resume, log)
        _run_grid(cfg, ex, infos, samples, sources, budgets, out, resume, errors, t_start, log)
    finally:
        if isinstance(ex, ProcessExecutor):
            ex.close()
    return out


def _run_grid(cfg: ValidationConfig, ex, infos: dict, samples: list, sources: dict, budgets: dict, out: Path,
              resume: bool, errors: list[str], t_start: float, log: Callable) -> None:
    """Warm-up, then every sample's cells (see :func:`_run_sample`); metadata before and after."""
    from measure import provenance

    devices = [cfg.target_device, cfg.drafter_device or cfg.target_device]
    meta = provenance.run_metadata(
        model_info=infos, devices=devices,
        dtype=cfg.dtype, quant=None, kind="executor", placement=ex.placement, config=asdict(cfg),
        workers=ex.workers, decode_backend=cfg.backend, window_budgets={str(k): v for k, v in budgets.items()},
        timing={"all": "host-visible spans on one host clock (perf_counter after a stream sync at both ends; "
                "gpu_ms from CUDA events inside), times from the request's first activity (measure.timing)"},
        acceptance_replay={f"{k:g}": {"run_id": f"acc-sigma{k:g}", "tail_alpha": _tail_of(sources[k])}
                           for k in sources},
        acceptance={"mode": "replay", "runs": {str(k): f"acc-sigma{k:g}" for k in sources}, "method": "per-sample run lengths from the trace; "
                    "drafter proposes the target_only token for positions <= R since its last sync"},
        reuse="target_only runs once per (sample, N) and is the baseline of every sigma (sigma = NaN)",
        sample_warmup=SAMPLE_WARMUP, cell_order=CELL_ORDER if cfg.shuffle else "N by N, target_only first")
    run_key = executor_run_id(cfg)
    schema.write_metadata(out, {run_key: meta})
    log(f"[{time.perf_counter() - t_start:6.1f}s] warm-up done; grid of {len(samples)} samples")

    done = _done_samples(out) if resume else set()
    reference = ReferenceLog()
    for i, sample in enumerate(samples):
        if sample.sample_id in done:
            continue
        if cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes:
            log(f"time budget of {cfg.max_minutes} min spent: stopping before sample {i + 1}")
            break
        rows = _run_sample(ex, cfg, sample, cfg.first_sample + i, sources, budgets, out, errors, log, reference)
        ok = sum(bool(r["lossless"]) for r in rows)
        log(f"[{time.perf_counter() - t_start:6.1f}s] sample {i + 1}/{len(samples)}: {len(rows)} requests, "
            f"lossless {ok}/{len(rows)}")
    schema.write_metadata(out, {run_key: {**meta, "errors": errors, "models_after": infos,
                                             "wall_s": round(time.perf_counter() - t_start, 1)}})
    _record_reference(out, serving_stage_run_id(cfg), reference)


def _record_reference(out: Path, run_id: str, reference: "ReferenceLog") -> None:
    """Add what the reference requests showed of the serving loop (raw, ms) to the serving stage
    run's metadata, when that run exists: ``serving_loop_gaps_ms`` (the simulator's per-pass host
    gap) and ``serving_reference_stage_ms`` (the serving harness's prefill-phase activities)."""
    runs = schema.read_metadata(out).get("runs", {})
    if run_id in runs and (reference.gaps_ms or reference.stage_ms):
        schema.write_metadata(out, {run_id: {**runs[run_id], "serving_loop_gaps_ms": reference.gaps_ms,
                                             "serving_reference_stage_ms": reference.stage_ms,
                                             "serving_loop_source": "the untimed reference request (target_only, longest N) "
                                             "of every sample (measure.validation_run)"}})


def sample_cells(cfg: ValidationConfig, index: int, sources: dict) -> list[tuple[int, str, float, int]]:
    """One sample's timed cells as (output tokens, strategy, sigma, request id), in a seeded random
    order (:data:`CELL_ORDER`) unless ``cfg.shuffle`` is off (then N by N, ``target_only`` first).

    Request ids are ``index * per_sample + j`` whatever the order, so runs over disjoint sample
    ranges merge and a re-run of a sample re-records the same ids.
    """
    import random

    spec = [s for s in cfg.strategies if s != "target_only"]
    per_n = 1 + len(cfg.sigmas) * len(spec)  # fixed by the config, so ids do not shift
    cells = []
    for a, n in enumerate(cfg.lengths):
        rid = index * len(cfg.lengths) * per_n + a * per_n
        grid = [("target_only", float("nan"))] + [(st, sg) for sg in cfg.sigmas for st in spec]
        cells += [(n, st, sg, rid + j) for j, (st, sg) in enumerate(grid)
                  if st in cfg.strategies and (st == "target_only" or sg in sources)]
    if cfg.shuffle:
        random.Random(_request_seed(cfg.seed, "order", index)).shuffle(cells)
    return cells


CELL_ORDER = ("per sample: an untimed target_only request of the longest N is the reference (lossless check, "
              "acceptance replay); then every timed cell in a seeded random order (order_in_sample). Fixed order "
              "(target_only first at each N) put target_only's TTFT 4-6 ms above the others' on 2 GPUs "
              "(validation-graphs-2gpu-cudnn), biasing short-output speed-ups")


def _run_sample(ex, cfg: ValidationConfig, sample, index: int, sources: dict, budgets: dict, out: Path,
                errors: list[str], log: Callable, reference: "ReferenceLog | None" = None) -> list[dict]:
    """Every cell of one sample (:func:`sample_cells`); writes one results and one timeline part;
    returns the rows. Each request is checked against the untimed reference (:func:`_warm_sample`)."""
    ref = _warm_sample(ex, sample, cfg, sources, reference)
    results = []
    for k, (n, strategy, sigma, rid) in enumerate(sample_cells(cfg, index, sources)):
        try:  # reference: the executor's lossless check (and, for speculative cells, the replay oracle)
            r = ex.run(sample, strategy, n, rid, reference=ref.tokens[:n],
                       replay=sources[sigma][sample.sample_id] if strategy != "target_only" else None,
                       replay_seed=_request_seed(cfg.seed, rid), sigma=sigma,
                       window_budget=budgets.get(sigma), record_gaps=True)
        except Exception as exc:  # noqa: BLE001 - one failed request must not end the run
            errors.append(f"{sample.sample_id} N={n} {strategy} sigma={sigma}: {one_line(exc)}")
            log(f"FAILED {errors[-1]}")
            continue
        # a mismatch must be a near-tie: the target's top-1/top-2 gap there, in both runs
        r.row.update(order_in_sample=k, **mismatch_gaps(r.tokens, ref.tokens, r.gaps, ref.gaps))
        results.append(r)
    if results:
        rows = pd.DataFrame([r.row for r in results])
        keys = ("strategy", "sigma", "output_tokens", "sample_id", "placement")
        tl = pd.concat([r.timeline.assign(**{k: r.row[k] for k in keys}) for r in results], ignore_index=True)
        write_part(rows, out / PARTS, RESULTS, "executor", sample.sample_id)
        write_part(tl, out / PARTS, TIMELINE, "executor", sample.sample_id)
    return [r.row for r in results]


def _done_samples(out: Path) -> set[str]:
    """Samples whose executor rows are on disk (parts or the consolidated file)."""
    files = run_parts(out / PARTS, RESULTS, "executor")
    if (out / f"{RESULTS}.parquet").exists():
        files.append(out / f"{RESULTS}.parquet")
    return {str(x) for f in files for x in pd.read_parquet(f, columns=["sample_id"])["sample_id"]}


SAMPLE_WARMUP = ("untimed, per sample before its cells: the reference target_only request of the longest N and one "
                 "prefill_then_verify request of 2 tokens: per-shape first calls (cuDNN attention plans a new prompt "
                 "length once, +35-40 ms on the first 4.6k-token prefill on an H200) stay out of the timed requests")


def loop_gaps_ms(timeline: pd.DataFrame | None) -> dict[str, list[float]]:
    """actor -> host time (ms) between each two consecutive passes (decode, verify, draft) of that
    actor in one request's timeline: what the serving loop does between GPU spans."""
    if timeline is None or len(timeline) == 0:
        return {}
    out = {}
    for actor, rows in timeline[timeline["activity"].isin(schema.PASS_ACTIVITIES)].groupby("actor"):
        rows = rows.sort_values("start_ms")
        gaps = rows["start_ms"].to_numpy()[1:] - rows["end_ms"].to_numpy()[:-1]
        if len(gaps):
            out[str(actor)] = [round(float(g), 4) for g in gaps]
    return out


def reference_stage_ms(timeline: pd.DataFrame | None) -> dict[str, dict[str, list[float]]]:
    """actor -> activity of :data:`schema.REFERENCE_STAGES` (the prefill phase and the decode
    steps) -> durations (ms) in one request's timeline. The executor's ``load`` span starts when
    the parent hands the request over, so it holds the dispatch to the worker that a stage run's
    ``load`` does not; its decode steps are the serving loop's own, timed while the grid runs."""
    if timeline is None or len(timeline) == 0:
        return {}
    rows = timeline[timeline["activity"].isin(schema.REFERENCE_STAGES)]
    out: dict[str, dict[str, list[float]]] = {}
    for (actor, activity), g in rows.groupby(["actor", "activity"]):
        out.setdefault(str(actor), {})[str(activity)] = [round(float(d), 4) for d in g["end_ms"] - g["start_ms"]]
    return out


@dataclass
class ReferenceLog:
    """What the untimed reference requests (one per sample, no grid cell, no peer at work) show of
    the serving loop, raw and pooled over samples: gaps between passes (:func:`loop_gaps_ms`) and
    prefill-phase and decode-step durations (:func:`reference_stage_ms`), actor -> [activity ->] list of ms."""
    gaps_ms: dict = field(default_factory=dict)
    stage_ms: dict = field(default_factory=dict)

    def add(self, timeline: pd.DataFrame | None) -> None:
        for actor, gaps in loop_gaps_ms(timeline).items():
            self.gaps_ms.setdefault(actor, []).extend(gaps)
        for actor, acts in reference_stage_ms(timeline).items():
            for activity, ms in acts.items():
                self.stage_ms.setdefault(actor, {}).setdefault(activity, []).extend(ms)


def _warm_sample(ex: Executor, sample, cfg: ValidationConfig, sources: dict, reference: ReferenceLog | None = None):
    """Both roles prefill this sample's prompt once, untimed (:data:`SAMPLE_WARMUP`); returns the
    reference request (target_only at the longest N, ``record_gaps``), whose timeline ``reference``
    collects (:class:`ReferenceLog`): the serving loop with no peer at work, from a request that is
    no grid cell. (The warm-up drafter drafts beside the target's prefill: on one GPU its gaps hold
    GPU time-slice waits, 2.3 ms, that the contention factors already charge.)"""
    ref = ex.run(sample, "target_only", max(cfg.lengths), record_gaps=True)
    src = next(iter(sources.values()), {}).get(sample.sample_id) if sources else None
    if src is not None and any(s != "target_only" for s in cfg.strategies):
        ex.run(sample, "prefill_then_verify", 2, reference=ref.tokens, replay=src, window_budget=cfg.gamma)
    if reference is not None:
        reference.add(getattr(ref, "timeline", None))
    return ref


def _warmup(ex: Executor, sample, cfg: ValidationConfig, sources: dict) -> None:
    """Untimed requests of every strategy (CUDA context, cuBLAS heuristics, allocator, streams)."""
    n = max(cfg.gamma + 2, 10)
    ref = ex.run(sample, "target_only", n)
    src = next(iter(sources.values())).get(sample.sample_id)
    for strategy in cfg.strategies:
        if strategy != "target_only":
            ex.run(sample, strategy, n, reference=ref.tokens, replay=src, window_budget=cfg.gamma)


def consolidate(out_dir: str | Path) -> list[Path]:
    """Merge every part folder of ``out_dir`` into one parquet file per table; parts are removed.

    stage_timings via :func:`measure.writer.consolidate`; acceptance, executor results and
    timeline here (earlier consolidated rows are kept; a re-recorded key replaces them).
    """
    from measure.writer import consolidate as consolidate_stages

    out, written = Path(out_dir), []
    if any((out / schema.STAGE_TIMINGS_FILE).glob("*.parquet")):
        written.append(consolidate_stages(out))
    # (part folder, output name, schema table or None, de-duplication key)
    tables = [(out / schema.ACCEPTANCE_FILE, schema.ACCEPTANCE_FILE, schema.ACCEPTANCE_FILE,
               ["run_id", "sample_id", "verify_id", "position"]),
              (out / PARTS / RESULTS, RESULTS, None, ["request_id"]),
              (out / PARTS / TIMELINE, TIMELINE, schema.TIMELINE_FILE, None)]
    for folder, name, table, key in tables:
        files = sorted(folder.glob("*.parquet"))
        if not files:
            continue
        single = out / f"{name}.parquet"
        frames = ([pd.read_parquet(single)] if single.exists() else []) + [pd.read_parquet(f) for f in files]
        df = pd.concat(frames, ignore_index=True).drop(columns="schema_version", errors="ignore")
        if key:
            df = df.drop_duplicates(subset=key, keep="last")
        if table:
            schema.write_table(df, single, table)
        else:
            df.to_parquet(single, index=False)
        for f in files:
            f.unlink()
        written.append(single)
    return written


def merge(dest: str | Path, *sources: str | Path) -> Path:
    """Merge consolidated validation folders (calls over disjoint sample ranges) into ``dest``.

    Every call records acceptance for all its samples up front, so sample ranges of acceptance
    runs may overlap: a later source's rows replace an earlier one's for the same (run, sample,
    block, position) -- the executor of that later call replayed exactly those. A source's
    ``gpu_monitor.csv`` is kept as ``gpu_monitor_<source folder name>.csv``.
    """
    dest = Path(dest)
    tables = ((schema.STAGE_TIMINGS_FILE, schema.STAGE_TIMINGS_FILE, None),
              (schema.ACCEPTANCE_FILE, schema.ACCEPTANCE_FILE, ["run_id", "sample_id", "verify_id", "position"]),
              (RESULTS, None, None), (TIMELINE, schema.TIMELINE_FILE, None))
    for name, table, key in tables:
        frames = [pd.read_parquet(p) for p in (Path(s) / f"{name}.parquet" for s in sources) if p.exists()]
        if not frames:
            continue
        df = pd.concat(frames, ignore_index=True).drop(columns="schema_version", errors="ignore")
        df = df.drop_duplicates(subset=key, keep="last")
        if table:
            schema.write_table(df, dest / f"{name}.parquet", table)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            df.to_parquet(dest / f"{name}.parquet", index=False)
    runs: dict = {}
    top: dict = {}
    for s in sources:  # a run recorded by two calls (acceptance runs of new samples) keeps both entries
        meta = schema.read_metadata(s)
        for key, run in meta["runs"].items():
            runs[key if runs.get(key, run) == run else f"{key}@{Path(s).name}"] = run
        for key, value in meta.items():  # label, note, ...: the first source's, distinct notes joined
            if key not in ("runs", "schema_version"):
                top[key] = value if key not in top else (
                    f"{top[key]} | {value}" if key == "note" and value not in str(top[key]) else top[key])
    schema.write_metadata(dest, runs, **top)
    for s in sources:  # each call's GPU clock log (scripts/gpu_h200.sh), named after its folder
        if (Path(s) / MONITOR).exists():
            shutil.copyfile(Path(s) / MONITOR, dest / f"{Path(MONITOR).stem}_{Path(s).name}.csv")
    return dest


def summary(out_dir: str | Path) -> pd.DataFrame:
    """Median latency / TTFT, mean accepted and lossless share per (strategy, N, sigma)."""
    df = pd.read_parquet(Path(out_dir) / f"{RESULTS}.parquet")
    return (df.groupby(["strategy", "output_tokens", "sigma"], dropna=False)
            .agg(n=("latency_ms", "size"), latency_ms=("latency_ms", "median"), ttft_ms=("ttft_ms", "median"),
                 accepted=("accepted", "mean"), window=("tokens_from_window", "mean"),
                 lossless=("lossless", "mean")).reset_index())


def main(argv: list[str] | None = None) -> int:
    """``python -m measure.validation_run --out DIR [...]``; exit 1 if any request failed."""
    p = argparse.ArgumentParser(prog="python -m measure.validation_run", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--target", default=ValidationConfig.target)
    p.add_argument("--drafter", default=ValidationConfig.drafter)
    p.add_argument("--dataset", default=None)
    p.add_argument("--n-requests", type=int, default=ValidationConfig.n_requests, help="samples (requests per cell)")
    p.add_argument("--first-sample", type=int, default=0, help="skip the first samples (split a grid over calls)")
    p.add_argument("--lengths", default="5,20,50,100")
    p.add_argument("--sigmas", default="0.01,0.03,0.1")
    p.add_argument("--gamma", type=int, default=ValidationConfig.gamma)
    p.add_argument("--acceptance-blocks", type=int, default=ValidationConfig.acceptance_blocks)
    p.add_argument("--device", default="cuda:0", help="target device")
    p.add_argument("--drafter-device", default=None, help="drafter device (separate_gpu), default: the target's")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    p.add_argument("--backend", default="eager", choices=("eager", "static", "graphs", "compiled"))
    p.add_argument("--workers", default=None, choices=("threads", "processes"),
                   help="default: processes for graphs/compiled, threads otherwise")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--stage-samples", type=int, default=ValidationConfig.stage_samples)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--stage-prefix", default="", help="prefix of the stage run ids (top-up calls: keep both runs)")
    p.add_argument("--no-shuffle", action="store_true", help="timed cells N by N, target_only first (older folders)")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    cfg = ValidationConfig(target=a.target, drafter=a.drafter, dataset=a.dataset, n_requests=a.n_requests,
                           first_sample=a.first_sample,
                           lengths=tuple(int(x) for x in a.lengths.split(",")),
                           sigmas=tuple(float(x) for x in a.sigmas.split(",")), gamma=a.gamma,
                           acceptance_blocks=a.acceptance_blocks, target_device=a.device,
                           drafter_device=a.drafter_device, dtype=a.dtype, stage_samples=a.stage_samples,
                           max_minutes=a.max_minutes, backend=a.backend, workers=a.workers,
                           stage_prefix=a.stage_prefix, shuffle=not a.no_shuffle,
                           strategies=tuple(x for x in a.strategies.split(",") if x))
    out = run_validation(cfg, a.out, resume=a.resume)
    consolidate(out)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(summary(out).to_string(index=False))
    errors = schema.read_metadata(out)["runs"][executor_run_id(cfg)].get("errors", [])
    for e in errors:
        print(f"error: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
