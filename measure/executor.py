"""Real parallel-prefill executor: one request end-to-end, drafter and target concurrently.

Strategies (the same semantics as :mod:`egpt_sim.sim.processes` / :mod:`egpt_sim.sim.strategies`):

* ``target_only`` — target stages 1-4 (prefill commits position 1), then decode steps.
* ``prefill_then_verify`` — both models run stages 1-4 at once; the drafter drafts until
  the target's prefill ends or it holds ``gamma`` drafts. At that instant the target takes
  the drafts available; ONE pass over ``[t1, d2..dk]`` commits ``L + 1`` tokens; then decode
  steps. The drafter stops (its in-flight step finishes and is discarded).
* ``adaptive_budget`` — ``prefill_then_verify`` with a window budget ``B`` chosen at request
  start by the caller (``window_budget``; the rule lives in ``egpt_sim``): at most ``B``
  drafts; ``B = 0`` runs exactly ``target_only`` (the drafter is never started).
* ``parallel_sd`` — the same window, then the drafter keeps drafting (up to
  ``lookahead_blocks * gamma`` ahead of the committed prefix) while the target, whenever
  free, verifies ``k = min(gamma, available, N - committed - 1)`` drafts (k = 0: decode
  step). After each pass the drafter keeps its lookahead only if it has drafted the new
  last committed position and agrees with every committed token; otherwise it re-syncs
  (generation bump: its in-flight step is discarded when it completes).

One protocol, two transports. The two roles run :func:`target_request` and
:func:`drafter_request`, which talk only by messages (drafter -> target: ``("draft", request,
generation, position, token)``; target -> drafter: ``("state", request, generation, committed,
window_open, stop)``). :class:`Executor` runs them as two **threads** of this process (each on
its own CUDA stream, created once), :class:`ProcessExecutor` as two **worker processes** that
keep their model for every request (``--workers processes``; on one GPU the two contexts
time-slice it, MPS state is in the metadata). Every span is timed by
:class:`measure.timing.StageTimer` in host mode on one host clock (``perf_counter``, the
parent's request start as origin), with CUDA events inside for ``gpu_ms``; what each span
contains is :mod:`measure.activities`, shared with the stage runs.

Acceptance: ``"model"`` (the drafter's greedy tokens) or ``"replay"`` (vLLM-style synthetic
acceptance, kept lossless): every forward pass still runs, but at each (re-)sync the drafter
draws a run length R from an acceptance source (``egpt_sim.acceptance``: ``runs(u, first,
sample_u)``) and proposes, for the i-th position since the sync, the reference (target_only)
token if i <= R, else a token that differs from it. The target's verify decides as usual.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from measure import activities as act
from measure.errors import one_line
from measure.timing import Clock, StageTimer, is_cuda

STRATEGIES = ("target_only", "prefill_then_verify", "adaptive_budget", "parallel_sd")
CPU_STAGES = ("load", "preprocess")
WAIT_TIMEOUT_S = 600.0


def placement_of(target_device, drafter_device) -> str:
    if drafter_device is None:
        return "shared_gpu"
    return "separate_gpu" if torch.device(drafter_device) != torch.device(target_device) else "shared_gpu"


@dataclass
class RequestSpec:
    """One request, as both roles see it (plain data: crosses process boundaries)."""

    request_id: int
    strategy: str
    output_tokens: int
    gamma: int
    lookahead: int
    window_budget: int | None = None
    reference: list[int] | None = None
    replay: Any = None
    replay_seed: int = 0
    host0_s: float = 0.0
    record_gaps: bool = False  # top-1 minus top-2 logit of every committed position (after each span)

    @property
    def uses_drafter(self) -> bool:
        return self.strategy != "target_only" and self.window_cap > 0

    @property
    def window_cap(self) -> int:
        """Drafts allowed while the target prefills."""
        if self.strategy == "adaptive_budget":
            return max(0, min(self.gamma, self.gamma if self.window_budget is None else self.window_budget))
        return self.gamma


# --------------------------------------------------------------------------- channels


class QueueChannel:
    """One direction of messages between two threads."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def send(self, msg: tuple) -> None:
        self.q.put(msg)

    def poll(self) -> list[tuple]:
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout_s: float) -> list[tuple]:
        try:
            first = self.q.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no message for {timeout_s:.0f} s (peer stuck or dead)") from None
        return [first] + self.poll()


class PipeChannel:
    """One direction of messages between two processes (``multiprocessing`` connection ends)."""

    def __init__(self, recv_end: Any = None, send_end: Any = None) -> None:
        self.recv_end, self.send_end = recv_end, send_end

    def send(self, msg: tuple) -> None:
        self.send_end.send(msg)

    def poll(self) -> list[tuple]:
        out = []
        while self.recv_end.poll():
            out.append(self.recv_end.recv())
        return out

    def wait(self, timeout_s: float) -> list[tuple]:
        if not self.recv_end.poll(timeout_s):
            raise TimeoutError(f"no message for {timeout_s:.0f} s (peer stuck or dead)")
        return self.poll()


# --------------------------------------------------------------------------- acceptance replay


class _Replay:
    """Forced draft choice for acceptance replay (see module docstring)."""

    def __init__(self, source, reference: Sequence[int], seed: int, sample_u: float = 0.5):
        self.source, self.reference = source, list(reference)
        self.rng = np.random.default_rng(seed)
        self.sample_u = sample_u
        self.sync_pos, self.run = 0, 0

    def resync(self, position: int, first: bool) -> None:
        u = np.array([1.0 - self.rng.random()])  # (0, 1], as egpt_sim.sim.draws
        self.run = int(self.source.runs(u, np.array([first]), np.array([self.sample_u]))[0])
        self.sync_pos = position

    def pick(self, logits: torch.Tensor, position: int) -> int:
        own = int(logits.argmax())
        if position > len(self.reference):
            return own
        want = self.reference[position - 1]
        if position - self.sync_pos <= self.run:
            return want
        return own if own != want else int(logits.reshape(-1).topk(2).indices[1])


# --------------------------------------------------------------------------- the two roles


def prefill_phase(pipe, timer: StageTimer, sample, pick: act.Pick, stash: dict | None = None) -> tuple[Any, int, int]:
    """Stages 1-4 -> (cache, token for position 1, prompt tokens); graphs captured after, outside spans."""
    with timer.span("load", gpu=False):
        loaded = pipe.load(sample)
    with timer.span("preprocess", gpu=False, sync_cpu_end=True):
        inputs = pipe.preprocess(loaded, sample.query)
    with timer.span("vision_encode"):
        embeds = pipe.vision_encode(inputs)
    with timer.span("prefill", tokens=1):
        cache, token = act.prefill_first_token(pipe, embeds, pick, stash)
    return cache, token, int(embeds.shape[1])


class _Gaps:
    """Top-1/top-2 logit gaps of the committed positions, collected on the device after each
    span (one small async kernel, no host read) and read once when the request has ended."""

    def __init__(self, on: bool):
        self.on, self.stash, self.parts = on, ({} if on else None), []

    def keep(self, n_committed: int) -> None:
        """The last span's logits decided ``n_committed`` positions (its first rows)."""
        if self.on:
            self.parts.append(act.top2_gap(self.stash.pop("logits"))[:n_committed])

    def values(self) -> list[float] | None:
        return torch.cat(self.parts).tolist() if self.on and self.parts else None


@dataclass
class _TargetView:
    """What the target knows: committed tokens, the drafter's chain (positions 1..), generation."""

    req: RequestSpec
    committed: list[int] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)
    generation: int = 0

    def receive(self, msgs: list[tuple]) -> None:
        for kind, rid, gen, pos, tok in msgs:
            if kind == "draft" and rid == self.req.request_id and gen == self.generation and pos == len(self.drafts) + 1:
                self.drafts.append(tok)

    def available(self) -> list[int]:
        """Drafts beyond the committed prefix, if the chain agrees with it (else none)."""
        m = len(self.committed)
        return self.drafts[m:] if self.drafts[:m] == self.committed else []

    def commit(self, tokens: Sequence[int]) -> None:
        """Append committed tokens; re-sync the drafter unless its chain covers and agrees."""
        self.committed += list(tokens)
        m = len(self.committed)
        if not (len(self.drafts) >= m and self.drafts[:m] == self.committed):
            self.generation += 1
            self.drafts = list(self.committed)

    def state(self, window_open: bool, stop: bool) -> tuple:
        return ("state", self.req.request_id, self.generation, list(self.committed), window_open, stop)


def target_request(pipe, sample, req: RequestSpec, timer: StageTimer, inbox, outbox) -> dict[str, Any]:
    """The target's side of one request -> stats and the committed tokens (key ``tokens``)."""
    view, stats = _TargetView(req), {"window_drafts": 0, "accepted": 0, "verify_passes": 0,
                                     "tokens_from_window": 0, "first_draft_matched": False}
    spec, keep = req.uses_drafter, req.strategy == "parallel_sd"
    gaps = _Gaps(req.record_gaps)
    try:
        cache, t1, prompt = prefill_phase(pipe, timer, sample, act.argmax_pick, gaps.stash)
        gaps.keep(1)
        _prepare(pipe, range(1, req.gamma + 2))
        if spec:
            view.receive(inbox.poll())  # the window closes: the drafts available at this instant
        stats["window_drafts"] = len(view.drafts)
        if view.drafts[:1] == [t1]:  # d1 accepted (saves no pass), as in egpt_sim
            stats.update(first_draft_matched=True, accepted=1, tokens_from_window=1)
        view.commit([t1])
        window = view.available()
        if spec:
            outbox.send(view.state(False, stop=not keep))
        first = True
        while len(view.committed) < req.output_tokens:
            if keep and not first:
                view.receive(inbox.poll())
            avail = window if first else (view.available() if keep else [])
            m = len(view.committed)
            drafts = list(avail[: max(0, min(req.gamma, req.output_tokens - m - 1))])
            with timer.span("verify" if drafts else "decode_step", tokens=len(drafts) + 1):
                if drafts:
                    n_acc, tt = act.verify_pass(pipe, cache, view.committed[-1], drafts, prompt + m - 1, gaps.stash)
                else:
                    cache, tok = act.decode_token(pipe, cache, view.committed[-1], m + 1, stash=gaps.stash)
                    n_acc, tt = 0, [tok]
            gaps.keep(n_acc + 1)
            stats["accepted"] += n_acc
            stats["verify_passes"] += int(bool(drafts))
            stats["tokens_from_window"] += n_acc if first and drafts else 0
            first = False
            if keep:
                view.receive(inbox.poll())  # drafts finished during the pass (as a shared board would hold)
            view.commit(drafts[:n_acc] + [tt[n_acc]])
            if keep:
                outbox.send(view.state(False, stop=len(view.committed) >= req.output_tokens))
    finally:
        if spec:
            outbox.send(view.state(False, stop=True))  # never leave the drafter waiting
    return {**stats, "tokens": view.committed[: req.output_tokens], "gaps": gaps.values()}


def _prepare(pipe, query_lengths) -> None:
    if not pipe.backend.prepared:  # graphs/compiled: first request only (a warm-up), outside spans
        pipe.prepare_backend(list(query_lengths))


@dataclass
class _DrafterState:
    """What the drafter knows from the target's last ``state`` message."""

    generation: int = 0
    committed: list[int] = field(default_factory=list)
    window_open: bool = True
    stop: bool = False

    def receive(self, msgs: list[tuple], request_id: int) -> None:
        for kind, rid, gen, committed, window_open, stop in msgs:
            if kind == "state" and rid == request_id:
                self.generation, self.committed = gen, committed
                self.window_open, self.stop = window_open, self.stop or stop


def drafter_request(pipe, sample, req: RequestSpec, timer: StageTimer, inbox, outbox) -> dict[str, Any]:
    """The drafter's side of one request -> stats (drafted, wasted_drafts)."""
    rp = None if req.replay is None else _Replay(req.replay, req.reference, req.replay_seed)
    if rp is not None:
        rp.resync(0, first=True)
    pick = act.argmax_pick if rp is None else rp.pick
    st, gen, stats = _DrafterState(), 0, {"drafted": 0, "wasted_drafts": 0}
    cache, tok, prompt = prefill_phase(pipe, timer, sample, pick)
    _prepare(pipe, range(1, 2 * req.gamma + 3))
    seq, fed, step_gen = [], 0, 0  # chain (positions 1..len); KV holds prompt + seq[:fed]
    while True:
        st.receive(inbox.poll(), req.request_id)
        if tok is not None:  # the step that just finished
            stats["drafted"] += 1
            if st.generation == step_gen and not st.stop:
                seq.append(tok)
                outbox.send(("draft", req.request_id, gen, len(seq), tok))
            else:
                stats["wasted_drafts"] += 1
            tok = None
        while True:
            if st.stop:
                return stats
            if st.generation != gen:  # re-sync from the committed prefix
                gen, committed = st.generation, list(st.committed)
                fed = act.leading_matches(seq[:fed], committed)
                seq = committed
                fed = min(fed, len(seq) - 1)  # a draft the target had not yet received: re-feed the last token
                if rp is not None:
                    rp.resync(len(seq), first=False)
            cap = req.window_cap if st.window_open else req.lookahead
            if len(seq) - len(st.committed) < cap and len(seq) < req.output_tokens:
                break
            st.receive(inbox.wait(WAIT_TIMEOUT_S), req.request_id)
        pipe.crop(cache, prompt + fed)  # no-op unless a re-sync dropped tokens
        step_gen = gen
        with timer.span("draft_step", tokens=1):
            cache, tok = act.draft_token(pipe, cache, seq[fed:], len(seq) + 1, pick)
        fed = len(seq)


# --------------------------------------------------------------------------- results


@dataclass
class RequestResult:
    row: dict[str, Any]
    timeline: pd.DataFrame
    tokens: list[int]
    gaps: list[float] | None = None  # top-1 minus top-2 target logit per committed position (record_gaps)


def _gpu_index(device: torch.device, stage: str) -> int:
    if stage in CPU_STAGES or device.type != "cuda":
        return -1
    return device.index if device.index is not None else torch.cuda.current_device()


def span_rows(spans: list, actor: str, device: torch.device, request_id: int) -> list[dict[str, Any]]:
    """TIMELINE rows of resolved spans (+ ``gpu_ms``)."""
    return [{"request_id": request_id, "actor": actor, "activity": sp.stage, "start_ms": sp.start_ms,
             "end_ms": sp.start_ms + sp.duration_ms, "gpu": _gpu_index(torch.device(device), sp.stage),
             "tokens": int(sp.info.get("tokens", 0)), "gpu_ms": sp.gpu_ms} for sp in spans]


def build_result(req: RequestSpec, sample_id: str, rows: list[dict], t_out: dict, d_out: dict | None,
                 placement: str, workers: str, sigma: float) -> RequestResult:
    """Per-request row (see :meth:`Executor.run`) + timeline from both roles' outputs."""
    timeline = pd.DataFrame(rows).sort_values(["start_ms", "actor"], kind="stable").reset_index(drop=True)
    t0 = float(timeline["start_ms"].min())  # times from the request's first activity (dispatch excluded)
    timeline["start_ms"] -= t0
    timeline["end_ms"] -= t0
    tgt = timeline[timeline["actor"] == "target"]
    tokens, gaps = t_out.pop("tokens"), t_out.pop("gaps", None)
    d_out = d_out or {"drafted": 0, "wasted_drafts": 0}
    row = {"strategy": req.strategy, "request_id": req.request_id, "sample_id": sample_id,
           "output_tokens": req.output_tokens, "gamma": req.gamma if req.strategy != "target_only" else 0,
           "window_budget": req.window_cap if req.strategy != "target_only" else 0,
           "latency_ms": float(tgt["end_ms"].max()),
           "ttft_ms": float(tgt.loc[tgt["activity"] == "prefill", "end_ms"].iloc[0]),
           **d_out, **t_out,
           "lossless": None if req.reference is None else tokens == list(req.reference[: req.output_tokens]),
           "acceptance_mode": "replay" if req.replay is not None else "model",
           "sigma": float(sigma), "placement": placement, "workers": workers,
           "target_passes": int(tgt["activity"].isin(["decode_step", "verify"]).sum())}
    if gaps is not None:
        gaps = gaps[: req.output_tokens]
    return RequestResult(row, timeline, tokens, gaps)


def mismatch_gaps(tokens: Sequence[int], reference: Sequence[int], gaps: Sequence[float] | None,
                  reference_gaps: Sequence[float] | None) -> dict[str, Any]:
    """Where a speculative answer first differs from ``target_only``'s, and how close to a tie
    the target's choice was there in both runs (top-1 minus top-2 logit): a lossless mismatch
    must be a near-tie. Empty dict when the tokens agree."""
    p = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    if p is None:
        return {}
    pick = lambda g: float(g[p]) if g is not None and p < len(g) else float("nan")  # noqa: E731
    return {"first_mismatch_position": p + 1, "gap_at_mismatch": pick(gaps), "reference_gap_at_mismatch": pick(reference_gaps)}


def make_request(strategy: str, output_tokens: int, request_id: int, gamma: int, lookahead: int,
                 reference=None, replay=None, replay_seed: int = 0, window_budget: int | None = None,
                 has_drafter: bool = True, record_gaps: bool = False) -> RequestSpec:
    """Validated :class:`RequestSpec` (one-line ``ValueError`` on bad input)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    if output_tokens < 1:
        raise ValueError(f"output_tokens must be >= 1, got {output_tokens}")
    req = RequestSpec(request_id, strategy, output_tokens, gamma, lookahead, window_budget,
                      None if reference is None else [int(t) for t in reference], replay, replay_seed,
                      time.perf_counter(), bool(record_gaps))
    if req.uses_drafter and not has_drafter:
        raise ValueError(f"strategy {strategy!r} needs a drafter pipeline")
    if replay is not None and (reference is None or len(reference) < output_tokens):
        raise ValueError("acceptance replay needs the target_only reference tokens (>= N)")
    return req


# --------------------------------------------------------------------------- threads


class Executor:
    """Runs requests on a target (and drafter) pipeline as two threads; streams created once."""

    workers = "threads"

    def __init__(self, target, drafter=None, gamma: int = 8, lookahead_blocks: int = 2):
        if gamma < 1 or lookahead_blocks < 1:
            raise ValueError(f"gamma and lookahead_blocks must be >= 1 (got {gamma}, {lookahead_blocks})")
        self.target, self.drafter = target, drafter
        self.gamma, self.lookahead = gamma, lookahead_blocks * gamma
        self.placement = placement_of(target.device, None if drafter is None else drafter.device)
        self.streams = {role: torch.cuda.Stream(p.device) if is_cuda(p.device) else None
                        for role, p in (("target", target), ("drafter", drafter)) if p is not None}

    def run(self, sample, strategy: str, output_tokens: int, request_id: int = 0,
            reference: Sequence[int] | None = None, replay=None, replay_seed: int = 0,
            sigma: float = float("nan"), window_budget: int | None = None,
            record_gaps: bool = False) -> RequestResult:
        """One request. ``reference`` = target_only tokens (lossless check; needed by replay).
        ``record_gaps``: also return the target's top-1/top-2 logit gap per position (``gaps``).

        Row columns (times in ms from the request start; counts in tokens): strategy,
        request_id, sample_id, output_tokens (N), gamma (0 for target_only), window_budget,
        latency_ms (end of the target's last pass), ttft_ms (end of the target's prefill),
        drafted (drafts produced), wasted_drafts (of those, discarded by a re-sync or the
        stop), window_drafts (drafts held when the target's prefill ended), accepted (drafts
        equal to committed tokens: d1 == t1 plus those accepted by passes), verify_passes,
        target_passes, tokens_from_window, first_draft_matched, lossless (tokens ==
        reference; None without one), acceptance_mode, sigma, placement, workers.
        """
        req = make_request(strategy, output_tokens, request_id, self.gamma, self.lookahead, reference, replay,
                           replay_seed, window_budget, self.drafter is not None, record_gaps)
        to_target, to_drafter = QueueChannel(), QueueChannel()
        devices = [self.target.device] + ([self.drafter.device] if req.uses_drafter else [])
        clock = Clock(tuple(devices), host0_s=req.host0_s)
        timers = {r: StageTimer(p.device, clock) for r, p in (("target", self.target), ("drafter", self.drafter))
                  if r == "target" or req.uses_drafter}
        outs: dict[str, Any] = {}
        jobs = [threading.Thread(target=self._guard, daemon=True, args=(
            outs, "target", target_request, self.target, sample, req, timers["target"], to_target, to_drafter))]
        if req.uses_drafter:
            jobs.append(threading.Thread(target=self._guard, daemon=True, args=(
                outs, "drafter", drafter_request, self.drafter, sample, req, timers["drafter"], to_drafter,
                to_target)))
        for j in jobs:
            j.start()
        for j in jobs:
            j.join()
        for role in ("target", "drafter"):
            if isinstance(outs.get(role), BaseException):
                raise outs[role]
        rows = [r for role, t in timers.items()
                for r in span_rows(t.resolve(), role, (self.target if role == "target" else self.drafter).device,
                                   request_id)]
        return build_result(req, sample.sample_id, rows, outs["target"], outs.get("drafter"), self.placement,
                            self.workers, sigma)

    def stage_alone(self, sample, cfg) -> dict[str, Any]:
        """role -> RoleOutcome of the stage protocol, alone, on the executor's pipelines and
        streams (see :meth:`ProcessExecutor.stage_alone`)."""
        from measure.stages import run_alone

        outs = {}
        for role, pipe in (("target", self.target), ("drafter", self.drafter)):
            if pipe is not None:
                with self._on_stream(role, pipe):
                    outs[role] = run_alone(pipe, sample, cfg)
        return outs

    def _on_stream(self, role: str, pipe) -> contextlib.ExitStack:
        """Context: ``pipe``'s device and ``role``'s stream current (nothing on a CPU device)."""
        stack = contextlib.ExitStack()
        if self.streams.get(role) is not None:
            stack.enter_context(torch.cuda.device(pipe.device))
            stack.enter_context(torch.cuda.stream(self.streams[role]))
        return stack

    def _guard(self, outs: dict, role: str, fn, pipe, *args) -> None:
        """Run one role in this thread, on its stream; an exception is handed to the caller."""
        try:
            with self._on_stream(role, pipe):
                outs[role] = fn(pipe, *args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outs[role] = exc  # (the target never waits for the drafter; a failing target stops it)


# --------------------------------------------------------------------------- processes


def _worker(role: str, build: dict[str, Any], commands, results, inbox_end, outbox_end) -> None:
    """Worker process: build one pipeline, then serve requests until ``None`` arrives."""
    from measure.models import build_pipeline

    try:
        pipe = build_pipeline(role, **build)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(("error", role, -1, one_line(exc)))
        return
    results.put(("ready", role, -1, pipe.info))
    inbox, outbox = PipeChannel(recv_end=inbox_end), PipeChannel(send_end=outbox_end)
    fn = target_request if role == "target" else drafter_request
    stack = contextlib.ExitStack()
    if is_cuda(pipe.device):
        stack.enter_context(torch.cuda.device(pipe.device))
        stack.enter_context(torch.cuda.stream(torch.cuda.Stream(pipe.device)))  # once per worker
    with stack:
        while (item := commands.get()) is not None:
            if item[0] == STAGES_COMMAND:  # the stage protocol, alone, in this serving process
                _worker_stages(role, pipe, item[1], item[2], results)
                continue
            sample, req = item
            inbox.poll()  # drop what earlier requests left (messages carry request ids anyway)
            timer = StageTimer(pipe.device, Clock((pipe.device,), host0_s=req.host0_s))
            try:
                out = fn(pipe, sample, req, timer, inbox, outbox)
                results.put(("done", role, req.request_id, (timer.resolve(), out, dict(pipe.backend.info))))
            except Exception as exc:  # noqa: BLE001 - one failed request must not end the worker
                results.put(("error", role, req.request_id, one_line(exc)))


STAGES_COMMAND = "stages"  # worker command: (STAGES_COMMAND, sample, measure.stages.StageConfig)
STAGES_REQUEST_ID = -2      # request id of its reply


def _worker_stages(role: str, pipe, sample, cfg, results) -> None:
    """One sample of :func:`measure.stages.run_alone` in a worker; the outcome (or a one-line
    error) goes back on ``results`` under :data:`STAGES_REQUEST_ID`."""
    from measure.stages import run_alone

    try:
        results.put(("stages", role, STAGES_REQUEST_ID, run_alone(pipe, sample, cfg)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        results.put(("error", role, STAGES_REQUEST_ID, one_line(exc)))


class ProcessExecutor:
    """The same requests as :class:`Executor`, with each model in its own worker process.

    ``build`` maps role -> :func:`measure.models.build_pipeline` keyword arguments (each worker
    builds its own model; pass ``seed`` to make ``random:`` weights equal to an in-process copy).
    Drafts and verdicts travel through two one-way pipes between the workers; the parent only
    dispatches requests and collects spans. Use as a context manager (workers are closed).
    """

    workers = "processes"

    def __init__(self, build: dict[str, dict[str, Any]], gamma: int = 8, lookahead_blocks: int = 2,
                 poll_s: float = 2.0):
        import torch.multiprocessing as mp

        if gamma < 1 or lookahead_blocks < 1:
            raise ValueError(f"gamma and lookahead_blocks must be >= 1 (got {gamma}, {lookahead_blocks})")
        ctx = mp.get_context("spawn")
        self.gamma, self.lookahead, self.poll_s = gamma, lookahead_blocks * gamma, poll_s
        self.devices = {r: torch.device(b["device"]) for r, b in build.items()}
        self.placement = placement_of(self.devices["target"], self.devices.get("drafter"))
        self.results = ctx.Queue()
        self.commands = {r: ctx.Queue() for r in build}
        d2t, t2d = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)  # (recv end, send end)
        ends = {"target": (d2t[0], t2d[1]), "drafter": (t2d[0], d2t[1])}
        self.procs = {r: ctx.Process(target=_worker, name=f"executor-{r}", daemon=True,
                                     args=(r, build[r], self.commands[r], self.results, *ends[r])) for r in build}
        for p in self.procs.values():
            p.start()
        self.info: dict[str, Any] = {}
        try:
            while len(self.info) < len(self.procs):
                kind, role, _, payload = self._get()
                if kind == "error":
                    raise RuntimeError(f"{role} worker failed to build its model: {payload}")
                self.info[role] = payload
        except BaseException:
            self.close()
            raise

    def _get(self) -> tuple:
        while True:
            try:
                return self.results.get(timeout=self.poll_s)
            except queue.Empty:
                dead = [r for r, p in self.procs.items() if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker process(es) {dead} died (exit codes "
                                       f"{[self.procs[r].exitcode for r in dead]})") from None

    def run(self, sample, strategy: str, output_tokens: int, request_id: int = 0,
            reference: Sequence[int] | None = None, replay=None, replay_seed: int = 0,
            sigma: float = float("nan"), window_budget: int | None = None,
            record_gaps: bool = False) -> RequestResult:
        """One request (arguments and row as :meth:`Executor.run`)."""
        req = make_request(strategy, output_tokens, request_id, self.gamma, self.lookahead, reference, replay,
                           replay_seed, window_budget, "drafter" in self.procs, record_gaps)
        roles = ["target", "drafter"] if req.uses_drafter else ["target"]
        for r in roles:
            self.commands[r].put((sample, req))
        outs, errors = {}, []
        while len(outs) + len(errors) < len(roles):
            kind, role, rid, payload = self._get()
            if rid != request_id:
                continue
            if kind == "error":
                errors.append(f"{role}: {payload}")
            else:
                outs[role] = payload
                self.info[role]["decode_backend"] = payload[2]
        if errors:
            raise RuntimeError("; ".join(errors))
        rows = [r for role in roles for r in span_rows(outs[role][0], role, self.devices[role], request_id)]
        return build_result(req, sample.sample_id, rows, outs["target"][1], outs.get("drafter", (0, None))[1],
                            self.placement, self.workers, sigma)

    def stage_alone(self, sample, cfg) -> dict[str, Any]:
        """role -> :class:`measure.stages.RoleOutcome`: the stage protocol (``alone``: one role
        at a time, the other idle) run by the serving workers themselves, in their processes,
        on their models, graphs and streams (``cfg``: a ``measure.stages.StageConfig``)."""
        outs = {}
        for role in ("target", "drafter"):
            if role not in self.procs:
                continue
            self.commands[role].put((STAGES_COMMAND, sample, cfg))
            while role not in outs:
                kind, r, rid, payload = self._get()
                if rid != STAGES_REQUEST_ID or r != role:
                    continue
                if kind == "error":
                    raise RuntimeError(f"{role} worker, stage protocol: {payload}")
                outs[role] = payload
        return outs

    def close(self) -> None:
        for q in self.commands.values():
            q.put(None)
        for p in self.procs.values():
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
