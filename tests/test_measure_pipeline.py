"""measure.models / presets / timing / provenance on the CPU ``random:tiny`` preset."""

from __future__ import annotations

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not (importlib.util.find_spec("av") or importlib.util.find_spec("cv2")):
    pytest.skip("needs PyAV or OpenCV to write/read MP4s", allow_module_level=True)

from measure import presets, provenance, timing  # noqa: E402
from measure.dataset import load_dataset  # noqa: E402
from measure.models import ROLES, build_pipeline, configure_sdpa, resolve_sdpa  # noqa: E402
from measure.synthetic import SynthConfig, generate  # noqa: E402

pytestmark = pytest.mark.torch

TINY_TOKENS_PER_FRAME = (56 // 14) ** 2  # tiny preset: 56 px images, 14 px patches


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    generate(out, SynthConfig(n_samples=1, width=96, height=72, duration_s=0.5, fps=20))
    return load_dataset(out)[0]


@pytest.fixture(scope="module")
def pipes():
    return {r: build_pipeline(r, "random:tiny", dtype="fp32", device="cpu", frames=4) for r in ROLES}


def _text_tokens(pipe, query):
    text = pipe.spec.template.format(query=query)
    return len(pipe.tokenizer(text, add_special_tokens=True)["input_ids"]) - 1  # minus the placeholder


@pytest.mark.parametrize("frames", [1, 4])
def test_target_prompt_is_frames_times_patches_plus_cls_plus_text(pipes, sample, frames):
    pipe = pipes["target"]
    pipe.frames = frames
    try:
        inputs = pipe.preprocess(pipe.load(sample), sample.query)
        assert inputs["pixel_values"].shape == (1, frames, 3, 56, 56)  # 5-D video tensor
        embeds = pipe.vision_encode(inputs)
        cache, logits = pipe.prefill(embeds)
    finally:
        pipe.frames = 4
    expected = frames * (TINY_TOKENS_PER_FRAME + 1) + _text_tokens(pipe, sample.query)
    assert pipe.prompt_tokens == expected == embeds.shape[1] == pipe.kv_tokens(cache)
    assert logits.shape == (1, 32100)


def test_drafter_prompt_drops_cls_of_its_single_event_frame(pipes, sample):
    pipe = pipes["drafter"]
    assert pipe.frames == 1  # the drafter ignores frames: one event frame
    inputs = pipe.preprocess(pipe.load(sample), sample.query)
    assert inputs["pixel_values"].shape == (1, 3, 56, 56)
    pipe.prefill(pipe.vision_encode(inputs))
    assert pipe.prompt_tokens == TINY_TOKENS_PER_FRAME + _text_tokens(pipe, sample.query)


@pytest.mark.parametrize("role", ROLES)
def test_split_stages_equal_the_fused_hf_forward(pipes, sample, role):
    pipe = pipes[role]
    inputs = pipe.preprocess(pipe.load(sample), sample.query)
    key = "pixel_values_videos" if role == "target" else "pixel_values"
    with torch.inference_mode():
        fused = pipe.model(input_ids=inputs["input_ids"], **{key: inputs["pixel_values"]}).logits[:, -1]
    _, logits = pipe.prefill(pipe.vision_encode(inputs))
    torch.testing.assert_close(logits, fused, rtol=1e-4, atol=1e-4)


def test_decode_verify_crop_keep_the_cache_consistent(pipes, sample):
    pipe = pipes["drafter"]
    cache, logits = pipe.prefill(pipe.vision_encode(pipe.preprocess(pipe.load(sample), sample.query)))
    n = pipe.kv_tokens(cache)
    bytes0 = pipe.kv_bytes(cache)
    # 2 layers x (K + V) x 4 heads x 16 dims x n tokens x 4 bytes (fp32)
    assert bytes0 == 2 * 2 * 64 * n * 4
    tok = logits.argmax(-1)
    cache, step_logits = pipe.decode_step(cache, tok)
    assert step_logits.shape == (1, 32100) and pipe.kv_tokens(cache) == n + 1
    ver = pipe.verify(cache, [int(tok), 5, 6, 7])
    assert ver.shape == (1, 4, 32100) and pipe.kv_tokens(cache) == n + 5
    pipe.crop(cache, n + 1)
    assert pipe.kv_tokens(cache) == n + 1
    # verifying the same token after a crop gives the logits of a plain decode step
    again = pipe.verify(cache, [7])[:, -1]
    pipe.crop(cache, n + 1)
    _, direct = pipe.decode_step(cache, 7)
    torch.testing.assert_close(again, direct, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot crop"):
        pipe.crop(cache, n + 10)


def test_offline_tokenizer_is_deterministic_and_maps_multimodal_tokens():
    a, b = presets.offline_tokenizer(), presets.offline_tokenizer()
    text = "USER: <video>\nWhat is happening in this driving scene? ASSISTANT:"
    ids = a(text)["input_ids"]
    assert ids == b(text)["input_ids"] and 32001 in ids and ids.count(32001) == 1
    assert a.convert_tokens_to_ids("<image>") == 32000
    assert len(ids) < 2 * len(text.split()) + 4  # word-like lengths, not characters


def test_presets_have_the_7b_shapes():
    cfg = presets.random_config("vicuna7b-clip336", "target")
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size, t.vocab_size) == \
        (4096, 32, 32, 11008, 32064)
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.image_size, v.patch_size) == \
        (1024, 24, 16, 336, 14)
    assert cfg.model_type == "video_llava" and cfg.video_token_index == 32001
    assert presets.random_config("vicuna7b-clip224", "drafter").model_type == "llava"


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no config.json"),
    (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "LLaVA-family 'video_llava'"),
    (lambda d: (d / "config.json").write_text('{"model_type": "video_llava"}'), "no tokenizer"),
])
def test_checkpoint_errors_are_one_line_and_name_what_is_missing(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(presets.ModelSourceError, match=message) as e:
        build_pipeline("target", str(tmp_path), device="cpu")
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_bad_sources_and_options():
    with pytest.raises(presets.ModelSourceError, match="unknown preset 'random:huge'"):
        build_pipeline("target", "random:huge", device="cpu")
    with pytest.raises(presets.ModelSourceError, match="needs a CUDA device"):
        build_pipeline("target", "random:tiny", quant="4bit", device="cpu")
    with pytest.raises(ValueError, match="unknown role"):
        build_pipeline("verifier", "random:tiny", device="cpu")


def test_checkpoint_directory_round_trip(tmp_path, pipes):
    """A saved checkpoint (config, weights, tokenizer, image processor) loads offline."""
    pipe = pipes["drafter"]
    pipe.model.save_pretrained(tmp_path)
    pipe.tokenizer.save_pretrained(tmp_path)
    pipe.processor.save_pretrained(tmp_path)
    loaded = build_pipeline("drafter", str(tmp_path), dtype="fp32", device="cpu")
    assert loaded.info["kind"] == "checkpoint" and len(loaded.info["config_sha256"]) == 64
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llava"


def test_cpu_timer_orders_spans_and_uses_perf_counter():
    t = timing.StageTimer("cpu")
    with t.span("load", gpu=False):
        sum(range(10000))
    with t.span("prefill", query_tokens=3):
        torch.ones(64, 64) @ torch.ones(64, 64)
    a, b = t.resolve()
    assert t.gpu_method == timing.PERF_COUNTER and t.current == "prefill"
    assert 0 <= a.start_ms <= a.end_ms <= b.start_ms and b.duration_ms > 0 and b.info == {"query_tokens": 3}
    assert timing.median_iqr([1, 2, 3, 4, 100]) == (3.0, 2.0)
    with pytest.raises(ValueError):
        timing.StageTimer("cpu", mode="bogus")


def test_sdpa_configuration_is_recorded(pipes):
    flags = configure_sdpa("no-cudnn")
    assert flags["cudnn"] is False and flags["flash"] and flags["math"]
    assert pipes["target"].info["sdpa_enabled"]["cudnn"] is False
    with pytest.raises(ValueError):
        configure_sdpa("fastest")


def test_sdpa_auto_keeps_cudnn_off_for_eager_only():
    assert resolve_sdpa("auto", "eager") == "no-cudnn"
    assert {resolve_sdpa("auto", b) for b in ("static", "graphs", "compiled")} == {"default"}
    assert resolve_sdpa("math", "graphs") == "math"  # an explicit choice wins
    configure_sdpa("no-cudnn")
    assert configure_sdpa("default")["cudnn"] is True  # "default" undoes an earlier process-wide choice
    configure_sdpa("no-cudnn")
    with pytest.raises(ValueError):
        configure_sdpa("auto")  # resolved by build_pipeline, never applied as such


def test_run_metadata_has_the_schema_keys(pipes):
    from egpt_sim.traces.schema import RUN_METADATA_KEYS

    meta = provenance.run_metadata(model_info={r: p.info for r, p in pipes.items()}, devices=["cpu"],
                                   dtype="fp32", quant=None, timing={"gpu_stages": "perf_counter"}, placement="alone")
    assert set(RUN_METADATA_KEYS) <= set(meta) and meta["source"] == "measured"
    assert meta["quantization"] == "none" and meta["versions"]["torch"] == torch.__version__
    assert meta["models"]["target"]["preset"] == "tiny" and meta["placement"] == "alone"
    json.dumps(meta)  # serialisable as is
