"""Decode backends: how a pipeline's language model runs prefill, decode steps and verify passes.

One :class:`Backend` per :class:`~measure.models.Pipeline`; the pipeline's ``prefill`` /
``decode_step`` / ``verify`` / ``crop`` delegate here, so the stage runs, the acceptance
recorder and the executor all get the same backend from one option (``--backend``).

* ``eager``    — today's path: ``DynamicCache``, every forward launched op by op from Python
  (host-bound: ~22-34 ms per 7B step on H100/H200).
* ``static``   — ``StaticCache`` (KV buffers of ``max_cache_len`` allocated once per pipeline
  and reused for every sample), forwards still eager.
* ``graphs``   — ``static`` + one CUDA graph per query length ``q`` (``q = 1`` decode, ``q =
  gamma + 1`` verify, drafter catch-up lengths), captured by :meth:`Backend.prepare` before any
  timed stage; a replay copies the input ids into the graph's buffer and returns a copy of
  its logits. A shape first seen after ``prepare`` is captured on the spot and counted in
  ``info["late_captures"]`` (never silently inside a timed stage: the count is metadata).
* ``compiled`` — ``torch.compile(mode="reduce-overhead", fullgraph=True)`` of the same step
  function per query length (compile seconds in ``info``); ``compile_backend`` may name
  another dynamo backend (tests use ``"eager"`` on the CPU).

Prefill and vision stay eager in every backend (their shapes change per sample). The static
cache's write position lives in a device tensor per layer (``cumulative_length``, transformers
5.17 and 5.24 alike): setting it back is how rejected drafts are rolled back
(:func:`set_cache_length`) and how a captured graph replays at the right position — the
attention mask and rotary positions are computed on the device from it, so a graph captured at
one position is valid at every position. Stale keys beyond the write position are masked.
On a CPU device ``graphs`` falls back to calling the step function (same buffers, no capture),
so its buffer logic is testable without a GPU.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Iterable

import torch

BACKENDS = ("eager", "static", "graphs", "compiled")
CACHE_BUCKET_TOKENS = 256  # static caches: prompt + max_new_tokens rounded up to this


# --------------------------------------------------------------------------- transformers adapters


def cache_kwarg(decoder: torch.nn.Module) -> str:
    """Name of the decoder's cache argument: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_static_cache(config: Any, max_cache_len: int) -> Any:
    """A ``StaticCache`` for ``config`` (a text config) holding ``max_cache_len`` tokens."""
    from transformers import StaticCache

    return StaticCache(config=config, max_cache_len=int(max_cache_len))


def _length_tensors(cache: Any) -> list[torch.Tensor]:
    lens = [layer.cumulative_length for layer in cache.layers]
    if not all(torch.is_tensor(t) for t in lens):
        raise TypeError("StaticCache layers keep no tensor write position (unsupported transformers)")
    return lens


def set_cache_length(cache: Any, n_tokens: int) -> None:
    """Next write of a static cache goes to position ``n_tokens`` (rollback of rejected drafts).

    Two multi-tensor kernels for all layers (not one ``fill_`` per layer); no host sync.
    """
    lens = _length_tensors(cache)
    torch._foreach_mul_(lens, 0)
    torch._foreach_add_(lens, int(n_tokens))


def cache_length(cache: Any) -> int:
    """Tokens held by a static cache (reads the device: a sync)."""
    return int(_length_tensors(cache)[0])


# --------------------------------------------------------------------------- backends


class Backend:
    """Base class: the ``eager`` backend (DynamicCache). Subclasses override the cache parts."""

    name = "eager"

    def __init__(self, decoder: torch.nn.Module, lm_head: torch.nn.Module, device: torch.device):
        self.decoder, self.lm_head, self.device = decoder, lm_head, torch.device(device)
        self.kw = cache_kwarg(decoder)
        self.info: dict[str, Any] = {"backend": self.name, "cache_kwarg": self.kw}

    # ---- prefill: eager in every backend
    def prefill(self, inputs_embeds: torch.Tensor, max_new_tokens: int = 0) -> tuple[Any, torch.Tensor]:
        """LM over the prompt embeddings -> (cache, last-position logits (1, vocab))."""
        cache = self._prefill_cache(int(inputs_embeds.shape[1]) + max_new_tokens)
        out = self.decoder(inputs_embeds=inputs_embeds, use_cache=True, **{self.kw: cache})
        cache = cache if cache is not None else _out_cache(out)
        return cache, self.lm_head(out.last_hidden_state[:, -1])

    def _prefill_cache(self, needed_tokens: int) -> Any:
        return None  # the decoder makes a DynamicCache

    # ---- decode / verify
    def forward(self, cache: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """``ids`` (1, q) after the cache's tokens -> (cache, logits (1, q, vocab))."""
        out = self.decoder(input_ids=ids, use_cache=True, **{self.kw: cache})
        return _out_cache(out), self.lm_head(out.last_hidden_state)

    def crop(self, cache: Any, length: int) -> Any:
        """Keep the first ``length`` tokens (negative ``crop``: the form every 5.x accepts)."""
        remove = self.kv_tokens(cache) - int(length)
        if remove < 0:
            raise ValueError(f"cannot crop a {self.kv_tokens(cache)}-token cache up to {length} tokens")
        if remove:
            cache.crop(-remove)
        return cache

    def kv_tokens(self, cache: Any) -> int:
        return int(cache.get_seq_length())

    def kv_bytes(self, cache: Any) -> int:
        """Bytes of key/value tensors holding the cache's tokens (all layers)."""
        return _tensor_bytes(cache)

    def prepare(self, query_lengths: Iterable[int]) -> None:
        """Capture/compile the step for each query length (no-op for eager/static)."""

    @property
    def prepared(self) -> bool:
        """Nothing left to capture before timing (eager/static: always)."""
        return True


class StaticBackend(Backend):
    """``StaticCache`` per size bucket (prompt + ``max_new_tokens``, rounded up to
    :data:`CACHE_BUCKET_TOKENS`), allocated on first use and reused by every later sample of that
    size. HF's static-cache attention reads the whole buffer (masked, not skipped), so a buffer
    sized for the longest prompt would slow every short one: hence buckets, not one big cache.
    """

    name = "static"

    def __init__(self, decoder, lm_head, device, max_cache_len: int = 0):
        super().__init__(decoder, lm_head, device)
        self.caches: dict[int, Any] = {}
        self.size = 0                       # bucket of the last prefill
        self.min_cache_len = int(max_cache_len)
        self.info.update(cache_buckets=[])

    @property
    def cache(self) -> Any:
        return self.caches.get(self.size)

    def _prefill_cache(self, needed_tokens: int) -> Any:
        size = max(self.min_cache_len, -(-needed_tokens // CACHE_BUCKET_TOKENS) * CACHE_BUCKET_TOKENS)
        self.size = size
        if size not in self.caches:
            self.caches[size] = new_static_cache(self.decoder.config, size)
            self.info["cache_buckets"] = sorted(self.caches)
        elif self.cache.layers[0].is_initialized:
            set_cache_length(self.cache, 0)
        return self.cache

    def crop(self, cache: Any, length: int) -> Any:
        set_cache_length(cache, length)
        return cache

    def kv_tokens(self, cache: Any) -> int:
        return cache_length(cache)

    def kv_bytes(self, cache: Any) -> int:
        """Bytes of the tokens held (the buffer holds its whole bucket: ``info["cache_buckets"]``)."""
        return int(_tensor_bytes(cache) * self.kv_tokens(cache) / max(1, cache.layers[0].max_cache_len))

    @property
    def prepared(self) -> bool:
        return True


class GraphBackend(StaticBackend):
    """``static`` + one CUDA graph per (cache bucket, query length), sharing one memory pool."""

    name = "graphs"

    def __init__(self, decoder, lm_head, device, max_cache_len: int = 0):
        super().__init__(decoder, lm_head, device, max_cache_len)
        self.steps: dict[tuple[int, int], tuple[Any, torch.Tensor, Any]] = {}
        self.prepared_sizes: set[int] = set()
        self.pool = None
        self.info.update(captured=[], capture_s=0.0, late_captures=0)

    @property
    def prepared(self) -> bool:
        """The current bucket's steps were captured by :meth:`prepare`."""
        return self.size in self.prepared_sizes

    def _step_fn(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.decoder(input_ids=ids, use_cache=True, **{self.kw: self.cache})
        return self.lm_head(out.last_hidden_state)

    def prepare(self, query_lengths: Iterable[int]) -> None:
        if self.cache is None or not self.cache.layers[0].is_initialized:
            raise RuntimeError(f"{self.name}: prepare() needs one prefill first (the static cache is lazy)")
        pos = cache_length(self.cache)
        t0 = time.perf_counter()
        for q in sorted({int(q) for q in query_lengths} - {q for s, q in self.steps if s == self.size}):
            if pos + q > self.size:
                raise ValueError(f"{self.name}: cannot capture q={q} at position {pos} (cache {self.size})")
            self._capture(q, pos)
        set_cache_length(self.cache, pos)
        self.info["capture_s"] += time.perf_counter() - t0
        self.prepared_sizes.add(self.size)

    def _capture(self, q: int, pos: int) -> None:
        ids = torch.zeros((1, q), dtype=torch.long, device=self.device)
        if self.device.type != "cuda":  # CPU: same buffers, no capture
            self.steps[(self.size, q)] = (None, ids, None)
        else:
            with torch.cuda.device(self.device):  # capture on the model's device, whatever is current
                self._capture_cuda(q, pos, ids)
        self.info["captured"] = [f"{s}:{q}" for s, q in sorted(self.steps)]

    def _capture_cuda(self, q: int, pos: int, ids: torch.Tensor) -> None:
        """Warm up on a side stream, then capture one step into a graph (shared memory pool)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (cuBLAS handles, allocator)
                set_cache_length(self.cache, pos)
                self._step_fn(ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        set_cache_length(self.cache, pos)
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # an explicit capture stream on this device: torch.cuda.graph's default capture stream is a
        # class attribute made on the device current at its first use (cuda:1 models captured empty
        # graphs on cuda:0); thread_local: the peer thread's syncs/launches don't break this capture
        with torch.cuda.graph(graph, pool=self.pool, stream=side, capture_error_mode="thread_local"):
            out = self._step_fn(ids)
        self.steps[(self.size, q)] = (graph, ids, out)

    def _late_capture(self, cache: Any, q: int) -> None:
        """A shape not captured by :meth:`prepare`: capture now, count it (metadata)."""
        self.info["late_captures"] += int(self.prepared)
        pos = cache_length(cache)
        t0 = time.perf_counter()
        self._capture(q, pos)
        set_cache_length(cache, pos)
        self.info["capture_s"] += time.perf_counter() - t0

    def forward(self, cache: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        q = int(ids.shape[1])
        if (self.size, q) not in self.steps:
            self._late_capture(cache, q)
        graph, buf, out = self.steps[(self.size, q)]
        buf.copy_(ids)
        if graph is None:
            return cache, self._step_fn(buf)
        with torch.cuda.device(self.device):  # replay on the model's device (the current one may differ)
            graph.replay()
        return cache, out.clone()  # the graph's output buffer is overwritten by the next replay


class CompiledBackend(GraphBackend):
    """``torch.compile(mode="reduce-overhead")`` of the step function, per (bucket, query length)."""

    name = "compiled"

    def __init__(self, decoder, lm_head, device, max_cache_len: int = 0, compile_backend: str = "inductor"):
        super().__init__(decoder, lm_head, device, max_cache_len)
        self.compile_backend = compile_backend
        self.info.update(compile_s=0.0, compile_backend=compile_backend,
                         mode="reduce-overhead" if compile_backend == "inductor" else "default")

    def _capture(self, q: int, pos: int) -> None:
        kwargs = {"mode": "reduce-overhead"} if self.compile_backend == "inductor" else {}
        fn = torch.compile(self._step_fn, backend=self.compile_backend, fullgraph=True, dynamic=False, **kwargs)
        ids = torch.zeros((1, q), dtype=torch.long, device=self.device)
        t0 = time.perf_counter()
        for _ in range(3):  # compile, then the cudagraph warm-up and recording runs
            set_cache_length(self.cache, pos)
            fn(ids)
        self.info["compile_s"] += time.perf_counter() - t0
        self.steps[(self.size, q)] = (fn, ids, None)
        self.info["captured"] = [f"{s}:{q}" for s, q in sorted(self.steps)]

    def forward(self, cache: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        q = int(ids.shape[1])
        if (self.size, q) not in self.steps:
            self._late_capture(cache, q)
        fn, buf, _ = self.steps[(self.size, q)]
        buf.copy_(ids)
        return cache, fn(buf).clone()


def make_backend(name: str, decoder: torch.nn.Module, lm_head: torch.nn.Module, device: torch.device,
                 max_cache_len: int = 0, compile_backend: str = "inductor") -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`) for one pipeline."""
    if name == "eager":
        return Backend(decoder, lm_head, device)
    if name == "static":
        return StaticBackend(decoder, lm_head, device, max_cache_len)
    if name == "graphs":
        return GraphBackend(decoder, lm_head, device, max_cache_len)
    if name == "compiled":
        return CompiledBackend(decoder, lm_head, device, max_cache_len, compile_backend)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def _out_cache(out: Any) -> Any:
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else out.past_key_values


def _tensor_bytes(cache: Any) -> int:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        tensors = [t for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))]
    else:  # older transformers: parallel key/value lists
        tensors = list(getattr(cache, "key_cache", [])) + list(getattr(cache, "value_cache", []))
    return int(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))
