"""The one place that decides how a stage is timed (all times in milliseconds).

One span definition, used by stage runs (alone, threads, processes) and the executor alike:

* **GPU spans** (vision, prefill, decode_step, verify, draft_step) are *host-visible*:
  the stream is synchronised, ``perf_counter`` read, the work launched and — because every
  activity ends with a host read of its token(s) anyway (a stop check, a hand-off) — the stream
  synchronised again and ``perf_counter`` read. ``duration_ms`` is that host interval: what a
  decoding loop on the host experiences (launch latency, Python, graph replay, host read).
  Inside the span two CUDA events bracket the GPU work; their interval is ``gpu_ms`` (device
  time, kept beside it, so host overhead = ``duration_ms - gpu_ms`` is visible per row).
  What each activity contains (forward, argmax, host read, KV rollback) is fixed in
  :mod:`measure.activities`, not here.
* **CPU spans** (``load``, ``preprocess``) use ``perf_counter``; ``preprocess`` ends with its
  host-to-device copy, so the stream is synchronised before the span closes.
* On a CPU device everything is ``perf_counter`` (nothing asynchronous to hide).
* ``start_ms`` of every span is ``perf_counter`` relative to the :class:`Clock`'s ``host0_s``.
  ``perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, system-wide, so worker *processes* given the
  parent's ``host0_s`` put their spans on the parent's axis without any shifting.
* Legacy ``mode="events"`` (the H100 sets before schema 1.1): device time between two events
  of the stream, ``start_ms`` against an origin event. Kept for the instrumentation benchmark.
* Events are reused (:class:`_EventPool`): creating one cost ~70 us of host time on an H100
  VM, more than a small kernel.
* First calls pay for CUDA context set-up, cuBLAS heuristics, allocator growth, graph capture
  and lazy imports: run :func:`warmup` (or one untimed sample) before timing, and summarise
  with medians / IQR (:func:`median_iqr`), which a single slow outlier does not move.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

CUDA_EVENT = "cuda_event"
PERF_COUNTER = "perf_counter"
PERF_COUNTER_SYNC = "perf_counter_sync"  # host-visible span + CUDA events inside (gpu_ms)
TIMER_MODES = ("host", "events")


def as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def is_cuda(device: str | torch.device) -> bool:
    return as_device(device).type == "cuda"


def synchronize(*devices: str | torch.device) -> None:
    """Wait for all queued work on every CUDA device given (no-op for CPU devices)."""
    for d in {as_device(x) for x in devices}:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def gpu_method(device: str | torch.device, mode: str = "host") -> str:
    """Timing method of GPU stages on ``device`` in timer ``mode`` (recorded in run metadata)."""
    if not is_cuda(device):
        return PERF_COUNTER
    return CUDA_EVENT if mode == "events" else PERF_COUNTER_SYNC


class _EventPool:
    """Timing events per device, handed back after :meth:`StageTimer.resolve` (thread-safe)."""

    def __init__(self) -> None:
        self._free: dict[torch.device, list[torch.cuda.Event]] = {}
        self._lock = threading.Lock()

    def get(self, device: torch.device) -> torch.cuda.Event:
        with self._lock:
            free = self._free.get(device)
            if free:
                return free.pop()
        return torch.cuda.Event(enable_timing=True)

    def put(self, device: torch.device, events: list[torch.cuda.Event]) -> None:
        with self._lock:
            self._free.setdefault(device, []).extend(events)


_POOL = _EventPool()


class Clock:
    """Common time origin for one sample (possibly several devices / threads).

    ``host0_s`` is the ``perf_counter`` reading at creation (or the one given: a worker
    process uses its parent's, so both share one axis); for each CUDA device an origin event is
    recorded on that device's current stream after a full synchronise (legacy events mode).
    """

    def __init__(self, devices: tuple[str | torch.device, ...] = ("cpu",), host0_s: float | None = None):
        self.devices = tuple(as_device(d) for d in devices)
        synchronize(*self.devices)
        self.origin_events: dict[torch.device, torch.cuda.Event] = {}
        for d in self.devices:
            if d.type == "cuda" and d not in self.origin_events:
                ev = torch.cuda.Event(enable_timing=True)
                with torch.cuda.device(d):
                    ev.record()
                self.origin_events[d] = ev
        self.host0_s = time.perf_counter() if host0_s is None else float(host0_s)

    def host_ms(self, t_s: float) -> float:
        return (t_s - self.host0_s) * 1000.0


@dataclass
class Span:
    """One timed interval. Resolved (``start_ms``/``duration_ms`` set) by :meth:`StageTimer.resolve`."""

    stage: str
    step: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    start_ms: float = float("nan")
    duration_ms: float = float("nan")
    gpu_ms: float = float("nan")
    _ev: tuple[Any, Any] | None = None
    _host: tuple[float, float] | None = None

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


class StageTimer:
    """Times stages on one device. ``with timer.span("prefill"): ...``; then :meth:`resolve`.

    ``mode="host"`` (default): the host-visible span of the module docstring, with ``gpu_ms``
    from events inside it; ``mode="events"``: legacy device-time spans. ``gpu=False`` spans
    are CPU stages (``sync_cpu_end`` waits for the stream at exit: stage 2 ends with an H2D copy).
    """

    def __init__(self, device: str | torch.device, clock: Clock | None = None, mode: str = "host"):
        if mode not in TIMER_MODES:
            raise ValueError(f"timer mode must be one of {TIMER_MODES}, got {mode!r}")
        self.device = as_device(device)
        self.clock = clock if clock is not None else Clock((self.device,))
        self.mode = mode
        self.spans: list[Span] = []
        self.current = ""  # stage entered last (names the stage of a failure)

    @property
    def gpu_method(self) -> str:
        return gpu_method(self.device, self.mode)

    @contextlib.contextmanager
    def span(self, stage: str, step: int = 0, gpu: bool = True, sync_cpu_end: bool = False,
             **info: Any) -> Iterator[Span]:
        sp = Span(stage=stage, step=step, info=dict(info))
        self.current = stage
        cuda = is_cuda(self.device)
        stream = torch.cuda.current_stream(self.device) if cuda else None
        events = (_POOL.get(self.device), _POOL.get(self.device)) if cuda and gpu else None
        if events and self.mode == "host":
            stream.synchronize()
        t0 = time.perf_counter()
        if events:
            events[0].record(stream)
        yield sp
        if events:
            events[1].record(stream)
        if cuda and (gpu and self.mode == "host" or sync_cpu_end):
            stream.synchronize()
        sp._host, sp._ev = (t0, time.perf_counter()), events
        self.spans.append(sp)

    def resolve(self) -> list[Span]:
        """Fill ``start_ms``/``duration_ms``/``gpu_ms`` of every span (synchronises the device)."""
        synchronize(self.device)
        origin = self.clock.origin_events.get(self.device)
        for sp in self.spans:
            t0, t1 = sp._host
            sp.start_ms, sp.duration_ms = self.clock.host_ms(t0), (t1 - t0) * 1000.0
            if sp._ev is not None:
                a, b = sp._ev
                sp.gpu_ms = float(a.elapsed_time(b))
                if self.mode == "events":
                    sp.duration_ms = sp.gpu_ms
                    sp.start_ms = float(origin.elapsed_time(a)) if origin is not None else float("nan")
                _POOL.put(self.device, [a, b])
                sp._ev = None
        return self.spans


class NullTimer:
    """Same interface as :class:`StageTimer`, records nothing (the uninstrumented baseline)."""

    gpu_method = "none"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = as_device(device)
        self.spans: list[Span] = []
        self.current = ""

    @contextlib.contextmanager
    def span(self, stage: str, step: int = 0, gpu: bool = True, sync_cpu_end: bool = False,
             **info: Any) -> Iterator[Span]:
        self.current = stage
        yield Span(stage=stage, step=step)

    def resolve(self) -> list[Span]:
        return []


def warmup(fn: Callable[[], Any], n: int = 2, device: str | torch.device = "cpu") -> None:
    """Call ``fn`` ``n`` times untimed, then synchronise (context, kernels, allocator warm)."""
    for _ in range(n):
        fn()
    synchronize(device)


def median_iqr(values: Any) -> tuple[float, float]:
    """(median, inter-quartile range) of ``values``; NaN for an empty input."""
    v = np.asarray(values, dtype="float64")
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(med), float(q3 - q1)
