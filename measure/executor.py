"""Real parallel-prefill executor: one request end-to-end, drafter and target concurrently.

Strategies (the same semantics as :mod:`egpt_sim.processes` / :mod:`egpt_sim.strategies`):

* ``target_only`` — target stages 1-4 (prefill commits position 1), then decode steps.
* ``prefill_then_verify`` — both models run stages 1-4 at once; the drafter drafts until
  the target's prefill ends or it holds ``gamma`` drafts. At that instant the target takes
  the drafts available; if the draft for position 1 equals its own token, ONE pass over
  ``[t1, d2..dk]`` commits ``L + 1`` tokens; then decode steps. The drafter stops (its
  in-flight step finishes and is discarded).
* ``parallel_sd`` — the same window, then the drafter keeps drafting (up to
  ``lookahead_blocks * gamma`` ahead of the committed prefix) while the target, whenever
  free, verifies ``k = min(gamma, available, N - committed - 1)`` drafts (k = 0: decode
  step). After each pass the drafter keeps its lookahead only if it has drafted the new
  last committed position and agrees with every committed token; otherwise it re-syncs
  (generation bump: its in-flight step is discarded when it completes).

Concurrency: one Python thread per model, each on its own ``torch.cuda.Stream`` (shared
GPU) or device (separate GPUs); drafts are handed over as host ints under a
``threading.Condition``. Timing: :class:`measure.timing.StageTimer` in ``"sync"`` mode per
thread on one shared :class:`~measure.timing.Clock`: the thread's stream is synchronised at
both ends of every activity and ``perf_counter`` read, so ``start_ms``/``end_ms`` are host
times relative to the request start. These syncs are not extra: every activity ends with
``.item()``/``.tolist()`` of its token(s) anyway, because the hand-off needs them on the host.
CPU stages (load, preprocess) use ``perf_counter`` (preprocess ends with its H2D copy).

Caveat measured on an H100 (random 7B presets, HF eager, fp16): while both threads decode,
each step takes ~63 ms instead of ~31 ms alone; an eager 7B step needs only ~5 ms of HBM
traffic, so this is most likely the two threads' kernel launches serialising on the GIL
(``parallel_sd`` at N = 100: ~6.4 s vs ~3.3 s for ``target_only``). Processes or CUDA
graphs would remove it; the simulator's contention factors (measure.stages, same threads)
carry the same effect.

Acceptance: ``"model"`` (the drafter's greedy tokens) or ``"replay"`` (vLLM-style synthetic
acceptance, kept lossless): every forward pass still runs, but at each (re-)sync the drafter
draws a run length R from an acceptance source (``egpt_sim.acceptance``: ``runs(u, first,
sample_u)``) and proposes, for the i-th position since the sync, the reference (target_only)
token if i <= R, else a token that differs from it. The target's verify decides as usual.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from measure.acceptance import leading_matches
from measure.timing import Clock, StageTimer, is_cuda

STRATEGIES = ("target_only", "prefill_then_verify", "parallel_sd")
CPU_STAGES = ("load", "preprocess")


def placement_of(target, drafter) -> str:
    return "separate_gpu" if drafter is not None and drafter.device != target.device else "shared_gpu"


def _gpu_index(device: torch.device, stage: str) -> int:
    if stage in CPU_STAGES or device.type != "cuda":
        return -1
    return device.index if device.index is not None else torch.cuda.current_device()


@dataclass
class _Board:
    """State shared by the two threads (guarded by ``cond``); tokens are 1-based positions."""

    n_tokens: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    committed: list[int] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)  # drafter's chain, positions 1..len
    generation: int = 0  # bumped on every re-sync of the drafter
    window_open: bool = True  # target prefill not finished
    stop: bool = False
    error: BaseException | None = None

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
            self.drafts = []
        if m >= self.n_tokens:
            self.stop = True
        self.cond.notify_all()


def _argmax(logits: torch.Tensor, position: int) -> int:
    return int(logits.argmax())


class _Replay:
    """Forced draft choice for acceptance replay (see module docstring)."""

    def __init__(self, source, reference: Sequence[int], seed: int, sample_u: float = 0.5):
        self.source, self.reference = source, list(reference)
        self.rng = np.random.default_rng(seed)
        self.sample_u = sample_u
        self.sync_pos, self.run = 0, 0

    def resync(self, position: int, first: bool) -> None:
        u = np.array([1.0 - self.rng.random()])  # (0, 1], as egpt_sim.draws
        self.run = int(self.source.runs(u, np.array([first]), np.array([self.sample_u]))[0])
        self.sync_pos = position

    def pick(self, logits: torch.Tensor, position: int) -> int:
        own = int(logits.argmax())
        if position > len(self.reference):
            return own
        want = self.reference[position - 1]
        if position - self.sync_pos <= self.run:
            return want
        return own if own != want else int(logits[0].topk(2).indices[1])


@dataclass
class RequestResult:
    row: dict[str, Any]
    timeline: pd.DataFrame
    tokens: list[int]


class Executor:
    """Runs requests on a target (and drafter) pipeline; streams are created once and reused."""

    def __init__(self, target, drafter=None, gamma: int = 8, lookahead_blocks: int = 2):
        if gamma < 1 or lookahead_blocks < 1:
            raise ValueError(f"gamma and lookahead_blocks must be >= 1 (got {gamma}, {lookahead_blocks})")
        self.target, self.drafter = target, drafter
        self.gamma, self.lookahead = gamma, lookahead_blocks * gamma
        self.placement = placement_of(target, drafter)
        self.streams = {role: torch.cuda.Stream(p.device) if is_cuda(p.device) else None
                        for role, p in (("target", target), ("drafter", drafter)) if p is not None}

    # ------------------------------------------------------------------ public
    def run(self, sample, strategy: str, output_tokens: int, request_id: int = 0,
            reference: Sequence[int] | None = None, replay=None, replay_seed: int = 0,
            sigma: float = float("nan")) -> RequestResult:
        """One request. ``reference`` = target_only tokens (lossless check; needed by replay).

        ``replay`` is an acceptance source (``runs(u, first, sample_u)``) or None (model mode).
        Returns the per-request row, the TIMELINE rows and the N committed tokens. Row columns
        (times in ms from the request start; counts in tokens): strategy, request_id,
        sample_id, output_tokens (N), gamma (0 for target_only), latency_ms (end of the
        target's last pass), ttft_ms (end of the target's prefill), drafted (drafts produced:
        prefill + draft steps), wasted_drafts (of those, discarded by a re-sync or the stop),
        window_drafts (drafts held when the target's prefill ended), accepted (drafts equal
        to committed tokens: d1 == t1 plus those accepted by passes, as egpt_sim's
        accepted_tokens), verify_passes, target_passes, tokens_from_window (accepted prefix
        of the window's drafts: d1 + the first pass's, as egpt_sim's window_accepted),
        first_draft_matched, lossless (tokens == reference; None without one),
        acceptance_mode ("model" | "replay"), sigma, placement ("shared_gpu" | "separate_gpu").
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
        if output_tokens < 1:
            raise ValueError(f"output_tokens must be >= 1, got {output_tokens}")
        spec = strategy != "target_only"
        if spec and self.drafter is None:
            raise ValueError(f"strategy {strategy!r} needs a drafter pipeline")
        if replay is not None and (reference is None or len(reference) < output_tokens):
            raise ValueError("acceptance replay needs the target_only reference tokens (>= N)")
        board = _Board(output_tokens)
        devices = [self.target.device] + ([self.drafter.device] if spec else [])
        clock = Clock(tuple(devices))
        stats: dict[str, Any] = {"drafted": 0, "wasted_drafts": 0, "window_drafts": 0, "accepted": 0,
                                 "verify_passes": 0, "tokens_from_window": 0, "first_draft_matched": False}
        timers = {"target": StageTimer(self.target.device, clock, mode="sync")}
        jobs = [threading.Thread(target=self._guard, args=(board, self._target_loop, board, strategy,
                                                            timers["target"], sample, stats), daemon=True)]
        if spec:
            rp = None if replay is None else _Replay(replay, reference, replay_seed)
            timers["drafter"] = StageTimer(self.drafter.device, clock, mode="sync")
            jobs.append(threading.Thread(target=self._guard, args=(board, self._drafter_loop, board,
                                                                    timers["drafter"], sample, stats, rp),
                                         daemon=True))
        for j in jobs:
            j.start()
        for j in jobs:
            j.join()
        if board.error is not None:
            raise board.error
        tokens = board.committed[:output_tokens]
        timeline = self._timeline(timers, request_id)
        tgt = timeline[timeline["actor"] == "target"]
        row = {"strategy": strategy, "request_id": request_id, "sample_id": sample.sample_id,
               "output_tokens": output_tokens, "gamma": self.gamma if spec else 0,
               "latency_ms": float(tgt["end_ms"].max()),
               "ttft_ms": float(tgt.loc[tgt["activity"] == "prefill", "end_ms"].iloc[0]),
               **stats, "lossless": None if reference is None else tokens == list(reference[:output_tokens]),
               "acceptance_mode": "replay" if replay is not None else "model",
               "sigma": float(sigma), "placement": self.placement,
               "target_passes": int(tgt["activity"].isin(["decode_step", "verify"]).sum())}
        return RequestResult(row, timeline, tokens)

    # ------------------------------------------------------------------ threads
    @staticmethod
    def _guard(board: _Board, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            with board.cond:
                board.error = board.error or exc
                board.stop = True
                board.cond.notify_all()

    def _context(self, role: str) -> contextlib.ExitStack:
        """This thread's current device and stream (thread-local in torch)."""
        pipe = self.target if role == "target" else self.drafter
        stack = contextlib.ExitStack()
        if is_cuda(pipe.device):
            stack.enter_context(torch.cuda.device(pipe.device))
            stack.enter_context(torch.cuda.stream(self.streams[role]))
        return stack

    @staticmethod
    def _prefill_phase(pipe, timer: StageTimer, sample, pick) -> tuple[Any, int, int]:
        """Stages 1-4 -> (cache, token for position 1 = pick(logits, 1), prompt tokens)."""
        with timer.span("load", gpu=False):
            loaded = pipe.load(sample)
        with timer.span("preprocess", gpu=False, sync_cpu_end=True):
            inputs = pipe.preprocess(loaded, sample.query)
        with timer.span("vision_encode"):
            embeds = pipe.vision_encode(inputs)
        with timer.span("prefill", tokens=1):
            cache, logits = pipe.prefill(embeds)
            token = pick(logits, 1)  # host sync: the hand-off needs the token
        return cache, token, int(embeds.shape[1])

    def _target_loop(self, board: _Board, strategy: str, timer: StageTimer, sample, stats) -> None:
        t = self.target
        with self._context("target"):
            cache, t1, prompt = self._prefill_phase(t, timer, sample, _argmax)
            with board.cond:  # the window closes: take the drafts available at this instant
                board.window_open = False
                stats["window_drafts"] = len(board.drafts)
                if board.drafts[:1] == [t1]:  # d1 accepted (saves no pass), as in egpt_sim
                    stats.update(first_draft_matched=True, accepted=1, tokens_from_window=1)
                if strategy == "prefill_then_verify":
                    board.stop = True  # the drafter's in-flight step is discarded
                board.commit([t1])
                avail = board.available()
            first = True
            while True:
                with board.cond:
                    m = len(board.committed)
                    if m >= board.n_tokens or board.error is not None:
                        break
                    if not first:
                        avail = board.available() if strategy == "parallel_sd" else []
                    last = board.committed[-1]
                drafts = list(avail[: max(0, min(self.gamma, board.n_tokens - m - 1))])
                k = len(drafts)
                with timer.span("verify" if k else "decode_step", tokens=k + 1 if k else 1):
                    if k:
                        logits = t.verify(cache, [last] + drafts)[0]
                    else:
                        cache, logits = t.decode_step(cache, last)
                    tt = logits.argmax(-1).reshape(-1).tolist()
                    n_acc = leading_matches(drafts, tt)
                    if k:  # keep the KV of [last] + accepted drafts; drop the rejected ones
                        t.crop(cache, prompt + m + n_acc)
                stats["accepted"] += n_acc
                stats["verify_passes"] += int(k > 0)
                if first and k:
                    stats["tokens_from_window"] += n_acc
                first = False
                with board.cond:
                    board.commit(drafts[:n_acc] + [tt[n_acc]])

    def _drafter_loop(self, board: _Board, timer: StageTimer, sample, stats, rp: _Replay | None) -> None:
        d = self.drafter
        with self._context("drafter"):
            if rp is not None:
                rp.resync(0, first=True)
            pick = _argmax if rp is None else rp.pick
            gen = 0
            cache, tok, prompt = self._prefill_phase(d, timer, sample, pick)
            seq, fed = [], 0  # chain (positions 1..len); KV holds prompt + seq[:fed]
            while True:
                with board.cond:
                    if tok is not None:  # result of the step that just finished
                        stats["drafted"] += 1
                        if board.generation == gen and not board.stop:
                            seq.append(tok)
                            board.drafts = list(seq)
                            board.cond.notify_all()
                        else:
                            stats["wasted_drafts"] += 1
                    tok = None
                    while True:
                        if board.stop:
                            return
                        if board.generation != gen:  # re-sync from the committed prefix
                            gen, committed = board.generation, list(board.committed)
                            fed = leading_matches(seq[:fed], committed)
                            seq = committed
                            if rp is not None:
                                rp.resync(len(seq), first=False)
                        cap = self.gamma if board.window_open else self.lookahead
                        if len(seq) - len(board.committed) < cap and len(seq) < board.n_tokens:
                            break
                        board.cond.wait()
                d.crop(cache, prompt + fed)  # no-op unless a re-sync dropped tokens
                todo = seq[fed:]
                assert todo, "drafter chain has nothing to feed"
                with timer.span("draft_step", tokens=1):
                    if len(todo) == 1:
                        cache, logits = d.decode_step(cache, todo[0])
                    else:  # catch up on committed tokens it has not fed, in one forward
                        logits = d.verify(cache, todo)[:, -1]
                    tok = pick(logits, len(seq) + 1)
                fed = len(seq)

    # ------------------------------------------------------------------ output
    def _timeline(self, timers: dict[str, StageTimer], request_id: int) -> pd.DataFrame:
        rows = []
        for actor, timer in timers.items():
            device = (self.target if actor == "target" else self.drafter).device
            for sp in timer.resolve():
                rows.append({"request_id": request_id, "actor": actor, "activity": sp.stage,
                             "start_ms": sp.start_ms, "end_ms": sp.end_ms,
                             "gpu": _gpu_index(device, sp.stage), "tokens": int(sp.info.get("tokens", 0))})
        return pd.DataFrame(rows).sort_values(["start_ms", "actor"], kind="stable").reset_index(drop=True)


