"""One :class:`Pipeline` per role, with the same five-stage API for the target and the drafter.

Stages are separated explicitly, so each can be timed on its own (the seed reports counted
vision encoding inside prefill):

1. ``load``           read the event PNG (drafter) / decode the MP4 or frame folder (target)  [CPU]
2. ``preprocess``     image processor + tokenizer + placeholder expansion, copy to the device
3. ``vision_encode``  vision tower + projector, features scattered into the token embeddings
4. ``prefill``        language model over ``inputs_embeds`` (no vision inside), KV cache out
5. ``decode_step``    one token through the language model + ``lm_head`` with the cache

plus ``verify`` (one forward over ``k = gamma + 1`` tokens) and ``crop`` (drop rejected drafts).
Role differences are data (:data:`ROLES`), not code: the target's video keeps the CLS token of
every frame (``frames x (patches + 1)`` tokens, as ``VideoLlavaModel.get_video_features``); the
drafter's single event frame follows ``vision_feature_select_strategy`` (``"default"`` drops
CLS: 576 tokens at 336 px). Only the last position goes through ``lm_head`` in prefill (as
``generate`` does with ``logits_to_keep=1``), so no ``L x vocab`` logits are materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from measure import dataset as ds
from measure.backends import make_backend
from measure.presets import load_components

DRAFTER_TEMPLATE = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's "
                    "questions. USER: <image>\n{query} ASSISTANT:")
TARGET_TEMPLATE = "USER: <video>\n{query} ASSISTANT:"


@dataclass(frozen=True)
class RoleSpec:
    """What differs between the roles (everything else is shared code)."""

    tower_attr: str        # vision tower attribute of the LLaVA model
    token_attr: str        # config attribute holding the placeholder token id
    placeholder: str       # placeholder string in the prompt template
    template: str
    video: bool            # pixel_values is (1, F, 3, H, W) and CLS is kept per frame


ROLES = {
    "target": RoleSpec("video_tower", "video_token_index", "<video>", TARGET_TEMPLATE, video=True),
    "drafter": RoleSpec("vision_tower", "image_token_index", "<image>", DRAFTER_TEMPLATE, video=False),
}


@dataclass
class LoadedInputs:
    """Stage-1 output: decoded RGB frames, (F, H, W, 3) uint8 (F = 1 for the drafter)."""

    role: str
    sample_id: str
    frames: np.ndarray
    decoder: str  # "png" | "pyav" | "opencv" | "frames"


@dataclass
class _Parts:
    """Sub-modules resolved once (layouts differ between transformers releases)."""

    tower: Any
    projector: Any
    decoder: Any
    embed: Any
    lm_head: Any


def _resolve_parts(model: Any, tower_attr: str) -> _Parts:
    inner = getattr(model, "model", None)

    def find(name: str) -> Any:
        for holder in (inner, model):
            mod = getattr(holder, name, None) if holder is not None else None
            if mod is not None:
                return mod
        raise AttributeError(f"{type(model).__name__} has no {name!r} (unsupported transformers layout)")

    lm = find("language_model")
    lm_head = getattr(model, "lm_head", None)
    if lm_head is None:  # older layout: language_model is a *ForCausalLM
        lm_head, lm = lm.lm_head, lm.model
    return _Parts(find(tower_attr), find("multi_modal_projector"), lm, lm.get_input_embeddings(), lm_head)


def _float_dtype(module: torch.nn.Module) -> torch.dtype:
    """dtype activations must have: the first floating parameter (4-bit weights are uint8)."""
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


class Pipeline:
    """Five timed stages of one model; built by :func:`build_pipeline`.

    ``frames`` is the number of video frames for the target; the drafter always encodes one
    event frame (``frames == 1``). ``prompt_tokens`` is the length of the last prefill.
    """

    def __init__(self, role: str, components: Any, device: torch.device, frames: int,
                 video_decoder: str = "auto", backend: str = "eager", max_new_tokens: int = 256,
                 compile_backend: str = "inductor"):
        self.role, self.spec = role, ROLES[role]
        self.model, self.tokenizer = components.model, components.tokenizer
        self.processor = components.image_processor
        self.info: dict[str, Any] = dict(components.info)
        self.device = device
        self.frames = frames if self.spec.video else 1
        self.video_decoder = video_decoder
        self.prompt_tokens = 0
        cfg = self.model.config
        self.placeholder_id = int(getattr(cfg, self.spec.token_attr))
        self.feature_layer = cfg.vision_feature_layer
        self.keep_cls = self.spec.video or cfg.vision_feature_select_strategy == "full"
        vcfg = cfg.vision_config
        self.tokens_per_frame = (vcfg.image_size // vcfg.patch_size) ** 2 + (1 if self.keep_cls else 0)
        self.parts = _resolve_parts(self.model, self.spec.tower_attr)
        self.dtype = _float_dtype(self.parts.tower)
        self.max_new_tokens = int(max_new_tokens)  # static caches hold prompt + this many tokens
        self.backend = make_backend(backend, self.parts.decoder, self.parts.lm_head, device,
                                    compile_backend=compile_backend)
        self.info["decode_backend"] = self.backend.info  # live dict: capture/compile seconds land here

    # ------------------------------------------------------------------ stage 1 (CPU)
    def load(self, sample: ds.Sample) -> LoadedInputs:
        """Read the inputs of ``sample`` from disk (decode only; no resizing)."""
        if self.spec.video:
            frames, decoder = ds.read_video(sample, self.frames, self.video_decoder)
        else:
            frames, decoder = ds.read_image(sample.event_images[0], sample.sample_id)[None], "png"
        return LoadedInputs(self.role, sample.sample_id, frames, decoder)

    # ------------------------------------------------------------------ stage 2 (CPU + H2D)
    def preprocess(self, loaded: LoadedInputs, query: str) -> dict[str, Any]:
        """Resize/crop/normalise frames, tokenise the prompt, expand the placeholder, copy to device.

        The placeholder is expanded at the id level (one id -> ``frames x tokens_per_frame``
        ids), which gives the same ids as the HF processors' string repetition.
        """
        out = self.processor(images=list(loaded.frames), return_tensors="pt")
        pixels = next(v for k, v in out.items() if k.startswith("pixel_values"))
        if self.spec.video:
            pixels = pixels.unsqueeze(0)  # (1, F, 3, H, W)
        text = self.spec.template.format(query=query)
        ids = self.tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"][0]
        where = (ids == self.placeholder_id).nonzero().flatten()
        if len(where) != 1:
            raise ValueError(f"prompt must hold exactly one {self.spec.placeholder} token, found {len(where)}")
        n_visual = len(loaded.frames) * self.tokens_per_frame
        i = int(where[0])
        ids = torch.cat([ids[:i], ids.new_full((n_visual,), self.placeholder_id), ids[i + 1:]])
        return {"input_ids": ids[None].to(self.device),
                "pixel_values": pixels.to(self.device, self.dtype),
                "visual_tokens": n_visual, "text_tokens": len(ids) - n_visual,
                "frames": len(loaded.frames)}

    # ------------------------------------------------------------------ stage 3 (GPU)
    @torch.no_grad()
    def vision_encode(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Vision tower + projector; returns ``inputs_embeds`` (1, L, hidden) with features in place."""
        p = self.parts
        pixels = inputs["pixel_values"]
        pixels = pixels.flatten(0, 1) if pixels.dim() == 5 else pixels
        hidden = p.tower(pixels, output_hidden_states=True).hidden_states
        layers = self.feature_layer if isinstance(self.feature_layer, (list, tuple)) else [self.feature_layer]
        start = 0 if self.keep_cls else 1
        feats = torch.cat([hidden[i][:, start:] for i in layers], dim=-1)
        feats = p.projector(feats)  # (frames, tokens_per_frame, hidden)
        if feats.shape[0] * feats.shape[1] != inputs["visual_tokens"]:
            raise ValueError(f"{self.role}: {feats.shape[0] * feats.shape[1]} visual features for "
                             f"{inputs['visual_tokens']} placeholder tokens")
        ids = inputs["input_ids"]
        embeds = p.embed(ids)
        mask = (ids == self.placeholder_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, feats.to(embeds.dtype).reshape(-1, embeds.shape[-1]))

    # ------------------------------------------------------------------ stage 4 (GPU)
    @torch.no_grad()
    def prefill(self, inputs_embeds: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Language model over the prompt embeddings -> (cache, last logits (1, vocab)).

        The cache type is the backend's (``DynamicCache`` for eager, the pipeline's one
        ``StaticCache`` otherwise, sized for ``max_new_tokens`` more tokens).
        """
        self.prompt_tokens = int(inputs_embeds.shape[1])
        return self.backend.prefill(inputs_embeds, self.max_new_tokens)

    # ------------------------------------------------------------------ stage 5 (GPU)
    @torch.no_grad()
    def decode_step(self, cache: Any, token_id: int | torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One token with the cache -> (cache, logits (1, vocab)). ``token_id`` may stay on the GPU."""
        cache, logits = self.backend.forward(cache, self._ids(token_id))
        return cache, logits[:, -1]

    @torch.no_grad()
    def verify(self, cache: Any, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """One forward over ``k`` tokens (last committed + drafts) -> logits (1, k, vocab).

        The cache grows by ``k``; :meth:`crop` it back to drop rejected drafts.
        """
        return self.backend.forward(cache, self._ids(token_ids))[1]

    @torch.no_grad()
    def crop(self, cache: Any, length: int) -> Any:
        """Roll the KV cache back to its first ``length`` tokens (static: move the write position)."""
        return self.backend.crop(cache, length)

    def kv_tokens(self, cache: Any) -> int:
        return self.backend.kv_tokens(cache)

    def kv_bytes(self, cache: Any) -> int:
        """Bytes held by the cache's key/value tensors for its tokens (all layers)."""
        return self.backend.kv_bytes(cache)

    @torch.no_grad()
    def prepare_backend(self, query_lengths: Sequence[int]) -> None:
        """Capture / compile the decode and verify steps (``graphs``/``compiled``) before timing.

        Needs one prefill first (run a warm-up sample). Seconds spent go to ``backend.info``.
        """
        self.backend.prepare(query_lengths)

    def _ids(self, tokens: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        t = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(tokens, dtype=torch.long)
        return t.reshape(1, -1).to(self.device, torch.long)


SDPA_BACKENDS = ("auto", "no-cudnn", "default", "flash", "efficient", "math")


def resolve_sdpa(backends: str, decode_backend: str) -> str:
    """``"auto"``: cuDNN attention off for ``eager`` (its KV length changes every step, and cuDNN
    plans per shape), torch's default choice (cuDNN on) for the static-cache backends, whose
    shapes are fixed per cache bucket: on an H200 (torch 2.11) a graph decode step of the 7B
    target took 7.37 ms with cuDNN and 10.38 ms without (benchmarks/results/h200_sdpa.json)."""
    if backends != "auto":
        return backends
    return "no-cudnn" if decode_backend == "eager" else "default"


def configure_sdpa(backends: str = "no-cudnn") -> dict[str, bool]:
    """Choose the kernels behind ``torch.nn.functional.scaled_dot_product_attention`` (process-wide).

    ``"no-cudnn"`` (the default) keeps flash / memory-efficient / math and disables cuDNN
    attention: on an H100 (torch 2.11) cuDNN builds an execution plan for every new sequence
    length, ~50 ms for a 2-layer model and ~700 ms for 7B on first sight, so with the KV length
    growing every step it measured 70-100 ms per 7B decode step instead of ~27 ms. ``"default"``
    enables every kernel (torch's state at start) and leaves the choice to torch; ``"flash"`` /
    ``"efficient"`` / ``"math"`` enable only that kernel. Returns the resulting flags (for run metadata).
    """
    if backends not in SDPA_BACKENDS or backends == "auto":
        raise ValueError(f"unknown SDPA backends {backends!r}; choose one of {SDPA_BACKENDS}")
    cuda = torch.backends.cuda
    only = {"flash": "flash", "efficient": "mem_efficient", "math": "math"}.get(backends)
    for name in ("flash", "mem_efficient", "math", "cudnn"):  # "default" re-enables all (torch's state at start)
        on = name == only if only else (backends == "default" or name != "cudnn")
        getattr(cuda, f"enable_{name}_sdp")(on)
    return {name: bool(getattr(cuda, f"{name}_sdp_enabled")()) for name in ("flash", "mem_efficient", "math", "cudnn")}


def build_pipeline(role: str, source: str, dtype: str = "fp16", quant: str | None = None,
                   device: str | torch.device = "cuda:0", frames: int = 8,
                   attn_implementation: str = "sdpa", video_decoder: str = "auto",
                   sdpa_backends: str = "auto", backend: str = "eager",
                   max_new_tokens: int = 256, compile_backend: str = "inductor",
                   seed: int | None = None) -> Pipeline:
    """Load/build the ``role`` model from ``source`` (``random:<preset>`` or a checkpoint dir).

    ``sdpa_backends`` (resolved by :func:`resolve_sdpa`) is applied process-wide (see
    :func:`configure_sdpa`) and recorded in ``info``.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")
    device = torch.device(device)
    sdpa_backends = resolve_sdpa(sdpa_backends, backend)
    flags = configure_sdpa(sdpa_backends)
    comps = load_components(role, source, dtype=dtype, quant=quant, device=device,
                            attn_implementation=attn_implementation, seed=seed)
    comps.info.update(sdpa_backends=sdpa_backends, sdpa_enabled=flags)
    return Pipeline(role, comps, device, frames, video_decoder, backend=backend,
                    max_new_tokens=max_new_tokens, compile_backend=compile_backend)
