"""Model sources: a local LLaVA-family checkpoint directory or ``random:<preset>``.

``random:<preset>`` builds the real transformers architecture (``VideoLlavaForConditionalGeneration``
for the target, ``LlavaForConditionalGeneration`` for the drafter) with random weights, so
shapes, kernels and token counts are those of the 7B models while nothing is downloaded.
There is no tokenizer on disk for them: :func:`offline_tokenizer` builds a deterministic
WordPiece tokenizer in code (common words whole, others in 1-3 character pieces: roughly
1.3-2 tokens per English word, close to Llama's 1.3) whose ``<image>``/``<video>`` ids are the
config's. The hub is never contacted (``local_files_only=True``, ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ROLE_MODEL_TYPE = {"target": "video_llava", "drafter": "llava"}

_VICUNA7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                 max_position_embeddings=4096, rms_norm_eps=1e-5)
_CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, patch_size=14, projection_dim=768)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # CPU tests: 56 px / 14 px patches = 16 patches per frame (+1 CLS kept for video).
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=32100, max_position_embeddings=8192),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       patch_size=14, image_size=56, projection_dim=32),
    },
    "vicuna7b-clip224": {"text": _VICUNA7B, "vision": dict(_CLIP_L14, image_size=224)},
    "vicuna7b-clip336": {"text": _VICUNA7B, "vision": dict(_CLIP_L14, image_size=336)},
}

# Whole-word vocabulary entries: prompt templates and common words of driving-scene queries.
_COMMON_WORDS = """a an the of to in on at for with and or is are was be this that it its what
which who where when how why do does there any scene image video event camera frame describe
happening key elements see visible car cars vehicle vehicles road street lane traffic light
lights sign signs pedestrian pedestrians people person driving driver ahead front left right
moving motion direction speed turn stop should can you your please detail details answer
question user assistant chat between curious human artificial intelligence gives helpful
detailed polite answers questions s main objects object weather condition conditions time day
night building buildings tree trees sky color colors many number safe safely next""".split()


class ModelSourceError(RuntimeError):
    """A model source cannot be used; the message is one line naming what is missing."""


@dataclass
class Components:
    """What :func:`load_components` returns: the model plus its text/image front-end."""

    model: Any
    tokenizer: Any
    image_processor: Any
    info: dict[str, Any] = field(default_factory=dict)  # provenance of this model


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelSourceError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def random_config(preset: str, role: str):
    """Config of ``random:<preset>`` for ``role`` (VideoLlavaConfig / LlavaConfig)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, VideoLlavaConfig

    if preset not in PRESETS:
        raise ModelSourceError(f"unknown preset 'random:{preset}'; available: "
                               + ", ".join(f"random:{p}" for p in PRESETS))
    p = PRESETS[preset]
    text, vision = LlamaConfig(**p["text"]), CLIPVisionConfig(**p["vision"])
    common = dict(text_config=text, vision_config=vision, projector_hidden_act="gelu",
                  vision_feature_layer=-2, vision_feature_select_strategy="default",
                  image_token_index=32000)
    if role == "target":
        return VideoLlavaConfig(video_token_index=32001, **common)
    if role == "drafter":
        return LlavaConfig(**common)
    raise ModelSourceError(f"unknown role {role!r}; expected 'target' or 'drafter'")


def offline_tokenizer(image_token_id: int = 32000, video_token_id: int = 32001):
    """Deterministic WordPiece tokenizer built in code (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    lo = string.ascii_lowercase
    pieces = ["<unk>", "<s>", "</s>"] + _COMMON_WORDS + list(string.digits + string.punctuation)
    pieces += list(lo) + [a + b for a in lo for b in lo] + [a + b + c for a in lo for b in lo for c in lo]
    pieces += ["##" + a for a in lo + string.digits] + ["##" + a + b for a in lo for b in lo]
    vocab: dict[str, int] = {}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    first_special = min(image_token_id, video_token_id)
    if len(vocab) > first_special:
        raise ModelSourceError(f"offline tokenizer needs {len(vocab)} ids below {first_special}")
    while len(vocab) < first_special:  # keep ids contiguous up to the multimodal tokens
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    vocab["<image>"], vocab["<video>"] = image_token_id, video_token_id
    vocab["<pad>"] = max(image_token_id, video_token_id) + 1
    tk = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<image>", "<video>"])


def random_image_processor(role: str, image_size: int):
    """CLIP-style resize (shortest edge) + centre crop + normalise, as the real processors do."""
    from transformers import CLIPImageProcessor, VideoLlavaImageProcessor

    cls = VideoLlavaImageProcessor if role == "target" else CLIPImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_checkpoint(path: Path, role: str) -> dict[str, Any]:
    """Validate a checkpoint directory for ``role``; return its provenance fields."""
    if not path.is_dir():
        raise ModelSourceError(f"model source {path}: not a directory (and not 'random:<preset>')")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelSourceError(f"model source {path}: no config.json")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type", "")
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"model source {path}: config.json is not valid JSON ({exc.msg})") from exc
    want = ROLE_MODEL_TYPE[role]
    if model_type != want:
        raise ModelSourceError(f"model source {path}: config model_type is {model_type!r}, "
                               f"the {role} needs a LLaVA-family {want!r} config")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ModelSourceError(f"model source {path}: no tokenizer (tokenizer.json / tokenizer.model)")
    if not (path / "preprocessor_config.json").exists():
        raise ModelSourceError(f"model source {path}: no preprocessor_config.json (image processor)")
    weights = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise ModelSourceError(f"model source {path}: no weights (*.safetensors / *.bin)")
    index = next((path / f for f in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (path / f).exists()), None)
    return {"kind": "checkpoint", "path": str(path.resolve()), "model_type": model_type,
            "config_sha256": sha256_file(cfg_file),
            "weight_index_sha256": sha256_file(index) if index else None,
            "weight_files": {w: (path / w).stat().st_size for w in weights}}


def bnb_config():
    """4-bit NF4 with fp16 compute; bitsandbytes is optional and imported only here."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelSourceError("--quant 4bit needs bitsandbytes (pip install bitsandbytes), "
                               "which is not importable here") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.float16)


def _model_class(role: str):
    from transformers import LlavaForConditionalGeneration, VideoLlavaForConditionalGeneration

    return VideoLlavaForConditionalGeneration if role == "target" else LlavaForConditionalGeneration


def load_components(role: str, source: str, dtype: str = "fp16", quant: str | None = None,
                    device: str | torch.device = "cuda:0", attn_implementation: str = "sdpa",
                    seed: int | None = None) -> Components:
    """Build or load the ``role`` model from ``source`` on ``device`` (eval mode).

    ``seed`` seeds a ``random:`` preset's initialisation (None: whatever the global RNG holds).
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    if role not in ROLE_MODEL_TYPE:
        raise ModelSourceError(f"unknown role {role!r}; expected 'target' or 'drafter'")
    torch_dtype, device = parse_dtype(dtype), torch.device(device)
    quant = None if quant in (None, "none") else quant
    if quant not in (None, "4bit"):
        raise ModelSourceError(f"unknown quantization {quant!r}; choose 'none' or '4bit'")
    if quant and device.type != "cuda":
        raise ModelSourceError("--quant 4bit needs a CUDA device (bitsandbytes kernels)")
    cls = _model_class(role)
    info: dict[str, Any] = {"role": role, "source": source, "dtype": str(torch_dtype).replace("torch.", ""),
                            "quantization": "none", "attn_implementation_requested": attn_implementation}
    if source.startswith("random:"):
        preset = source.split(":", 1)[1]
        config = random_config(preset, role)
        info.update(kind="random", preset=preset, model_type=config.model_type)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch_dtype)  # build directly in the target dtype, on the device
        if seed is not None:  # same seed, same role, same device type -> the same weights (worker processes)
            torch.manual_seed(int(seed))
            info["init_seed"] = int(seed)
        try:
            with torch.device(device):
                model = cls._from_config(config, dtype=torch_dtype, attn_implementation=attn_implementation)
        finally:
            torch.set_default_dtype(prev)
        if quant:
            model = _quantize_random(model, cls, device, attn_implementation)
            info["quantization"] = "bnb-nf4 (random fp16 weights saved to a temp dir, reloaded with BitsAndBytesConfig)"
        tokenizer = offline_tokenizer(config.image_token_index, getattr(config, "video_token_index", 32001))
        image_processor = random_image_processor(role, config.vision_config.image_size)
        info["tokenizer"] = "offline WordPiece (measure.presets.offline_tokenizer)"
    else:
        path = Path(source).expanduser()
        info.update(check_checkpoint(path, role))
        kw: dict[str, Any] = dict(local_files_only=True, attn_implementation=attn_implementation)
        if quant:
            kw.update(quantization_config=bnb_config(), device_map={"": device}, dtype=torch.float16)
            info["quantization"] = "bnb-nf4 (BitsAndBytesConfig at load)"
        else:
            kw.update(dtype=torch_dtype)
        model = cls.from_pretrained(path, **kw)
        if not quant:
            model = model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        info["tokenizer"] = type(tokenizer).__name__
    model.eval()
    info["image_processor"] = type(image_processor).__name__
    info["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    info.update(parameter_counts(model, quant))
    return Components(model=model, tokenizer=tokenizer, image_processor=image_processor, info=info)


def parameter_counts(model: torch.nn.Module, quant: str | None) -> dict[str, Any]:
    """``n_params`` (logical parameters: a packed 4-bit tensor counts 2 per byte), the dtypes that
    hold them, and what was asked for (``dtype_requested`` differs from storage under 4-bit)."""
    n, stored = 0, {}
    for p in model.parameters():
        packed = quant and p.dtype == torch.uint8  # bitsandbytes Params4bit: two weights per byte
        n += p.numel() * (2 if packed else 1)
        key = "nf4 (packed uint8)" if packed else str(p.dtype).replace("torch.", "")
        stored[key] = stored.get(key, 0) + p.numel() * (2 if packed else 1)
    return {"n_params": int(n), "param_storage": stored,
            "weight_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters()))}


def _quantize_random(model, cls, device: torch.device, attn_implementation: str):
    """Quantize random weights the same way a checkpoint is: save, reload with bnb 4-bit."""
    qcfg = bnb_config()
    need = sum(p.numel() * p.element_size() for p in model.parameters()) * 1.1
    shm = "/dev/shm"  # RAM-backed when it exists and has room (containers often give it 64 MB)
    root = shm if os.path.isdir(shm) and shutil.disk_usage(shm).free > need else None
    tmp = tempfile.mkdtemp(prefix="egpt_random_", dir=root)
    try:
        model.save_pretrained(tmp)
        model.to("meta")  # drop the fp16 copy before the 4-bit one is loaded
        torch.cuda.empty_cache()
        return cls.from_pretrained(tmp, quantization_config=qcfg, device_map={"": device},
                                   dtype=torch.float16, local_files_only=True,
                                   attn_implementation=attn_implementation)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
