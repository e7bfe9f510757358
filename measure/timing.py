"""The one place that decides how a stage is timed (all times in milliseconds).

Rules, and why:

* GPU work is asynchronous: a Python ``perf_counter`` around a kernel launch measures the
  launch, not the kernel. GPU stages are therefore bracketed by ``torch.cuda.Event``
  (``enable_timing=True``) recorded on the *current* stream, so the duration is the device
  time between the two points of that stream, including any gap the host left.
* CPU stages (``load``, ``preprocess``) use ``time.perf_counter``; when the stage ends with a
  host-to-device copy the stream is synchronised first so the copy is inside the stage.
* On a CPU device everything uses ``perf_counter`` (no asynchrony to hide).
* ``mode="sync"`` (used when two *processes* share a GPU, whose CUDA events cannot be compared)
  synchronises the stream at both ends of a GPU stage and uses ``perf_counter`` instead.
* Every span also gets ``start_ms`` against a common origin (:class:`Clock`): a host
  ``perf_counter`` reading plus one origin CUDA event per device, recorded on an idle device
  right after a synchronise, so host and device time agree to within a launch latency.
  ``perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, system-wide, so different processes can
  be put on one axis by shifting with their ``Clock.host0_s``.
* Events are reused (:class:`_EventPool`): creating one cost ~70 us of host time on an H100
  VM, more than a small kernel, so a fresh pair per span inflated tiny-model decode steps.
* First calls pay for CUDA context set-up, cuBLAS heuristics, allocator growth and lazy
  imports: run :func:`warmup` (or one untimed sample) before timing, and summarise with
  medians / IQR (:func:`median_iqr`), which a single slow outlier does not move.
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
PERF_COUNTER_SYNC = "perf_counter_sync"


def as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def is_cuda(device: str | torch.device) -> bool:
    return as_device(device).type == "cuda"


def synchronize(*devices: str | torch.device) -> None:
    """Wait for all queued work on every CUDA device given (no-op for CPU devices)."""
    for d in {as_device(x) for x in devices}:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def gpu_method(device: str | torch.device, mode: str = "events") -> str:
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

    ``host0_s`` is the ``perf_counter`` reading at creation; for each CUDA device an origin
    event is recorded on that device's current stream after a full synchronise.
    """

    def __init__(self, devices: tuple[str | torch.device, ...] = ("cpu",)):
        self.devices = tuple(as_device(d) for d in devices)
        synchronize(*self.devices)
        self.origin_events: dict[torch.device, torch.cuda.Event] = {}
        for d in self.devices:
            if d.type == "cuda" and d not in self.origin_events:
                ev = torch.cuda.Event(enable_timing=True)
                with torch.cuda.device(d):
                    ev.record()
                self.origin_events[d] = ev
        self.host0_s = time.perf_counter()

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
    _ev: tuple[Any, Any] | None = None
    _host: tuple[float, float] | None = None

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


class StageTimer:
    """Times stages on one device. ``with timer.span("prefill"): ...``; then :meth:`resolve`.

    ``gpu=True`` spans on a CUDA device use CUDA events (or host time + sync in ``"sync"``
    mode); other spans use ``perf_counter``. ``sync_cpu_end`` makes CPU spans wait for the
    stream at exit (stage 2 ends with a host-to-device copy).
    """

    def __init__(self, device: str | torch.device, clock: Clock | None = None, mode: str = "events"):
        if mode not in ("events", "sync"):
            raise ValueError(f"timer mode must be 'events' or 'sync', got {mode!r}")
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
        use_events = gpu and self.mode == "events" and is_cuda(self.device)
        if use_events:
            stream = torch.cuda.current_stream(self.device)
            a, b = _POOL.get(self.device), _POOL.get(self.device)
            a.record(stream)
            yield sp
            b.record(stream)
            sp._ev = (a, b)
        else:
            if gpu and is_cuda(self.device):
                torch.cuda.current_stream(self.device).synchronize()
            t0 = time.perf_counter()
            yield sp
            if (gpu or sync_cpu_end) and is_cuda(self.device):
                torch.cuda.current_stream(self.device).synchronize()
            sp._host = (t0, time.perf_counter())
        self.spans.append(sp)

    def resolve(self) -> list[Span]:
        """Fill ``start_ms``/``duration_ms`` of every span (synchronises the device)."""
        synchronize(self.device)
        origin = self.clock.origin_events.get(self.device)
        for sp in self.spans:
            if sp._ev is not None:
                a, b = sp._ev
                sp.duration_ms = float(a.elapsed_time(b))
                sp.start_ms = float(origin.elapsed_time(a)) if origin is not None else float("nan")
                _POOL.put(self.device, [a, b])
                sp._ev = None
            elif sp._host is not None:
                t0, t1 = sp._host
                sp.duration_ms = (t1 - t0) * 1000.0
                sp.start_ms = self.clock.host_ms(t0)
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
