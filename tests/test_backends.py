"""measure.backends: static / graphs / compiled decode against eager on the CPU tiny preset."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not (importlib.util.find_spec("av") or importlib.util.find_spec("cv2")):
    pytest.skip("needs PyAV or OpenCV to write/read MP4s", allow_module_level=True)

from measure import backends  # noqa: E402
from measure.dataset import load_dataset  # noqa: E402
from measure.models import build_pipeline  # noqa: E402
from measure.synthetic import SynthConfig, generate  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    generate(out, SynthConfig(n_samples=1, width=96, height=72, duration_s=0.5, fps=20))
    return load_dataset(out)[0]


def _pipe(backend: str):
    return build_pipeline("target", "random:tiny", dtype="fp32", device="cpu", frames=2, backend=backend,
                          compile_backend="eager", seed=0)


def _script(pipe, sample):
    """prefill; decode; verify 4 (k+1 = 4 tokens); roll back 2 of them; decode — all logits."""
    emb = pipe.vision_encode(pipe.preprocess(pipe.load(sample), sample.query))
    cache, l0 = pipe.prefill(emb)
    n = pipe.kv_tokens(cache)
    if not pipe.backend.prepared:
        pipe.prepare_backend([1, 4])
    cache, l1 = pipe.decode_step(cache, int(l0.argmax()))
    v = pipe.verify(cache, [int(l1.argmax()), 5, 6, 7])
    assert pipe.kv_tokens(cache) == n + 5
    pipe.crop(cache, n + 2)
    cache, l2 = pipe.decode_step(cache, 5)
    assert pipe.kv_tokens(cache) == n + 3
    return [l0, l1, v, l2]


@pytest.fixture(scope="module")
def eager_logits(sample):
    return _script(_pipe("eager"), sample)


@pytest.mark.parametrize("backend", ["static", "graphs", "compiled"])
def test_backend_logits_equal_eager_in_fp32(backend, sample, eager_logits):
    pipe = _pipe(backend)
    got = _script(pipe, sample)
    for a, b in zip(got, eager_logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    info = pipe.backend.info
    assert info["backend"] == backend and info["cache_buckets"]
    if backend != "static":
        assert info["late_captures"] == 0 and f"{info['cache_buckets'][0]}:4" in info["captured"]


def test_static_rollback_then_decode_equals_a_fresh_decode_of_the_prefix(sample):
    """After rejecting drafts (write position moved back), the next logits are those of a fresh
    decode of the same prefix — stale keys beyond the position are masked, not read."""
    pipe = _pipe("static")
    emb = pipe.vision_encode(pipe.preprocess(pipe.load(sample), sample.query))
    cache, l0 = pipe.prefill(emb)
    n, t1 = pipe.kv_tokens(cache), int(l0.argmax())
    pipe.verify(cache, [t1, 11, 12, 13, 14])  # 4 drafts, all "rejected"
    pipe.crop(cache, n + 1)  # keep t1 only
    _, after_rollback = pipe.decode_step(cache, 21)
    cache, _ = pipe.prefill(emb)  # fresh: same cache buffers, position reset to 0
    pipe.decode_step(cache, t1)
    _, fresh = pipe.decode_step(cache, 21)
    torch.testing.assert_close(after_rollback, fresh, rtol=1e-5, atol=1e-5)


def test_graph_shapes_seen_late_are_counted(sample):
    pipe = _pipe("graphs")
    _script(pipe, sample)
    emb = pipe.vision_encode(pipe.preprocess(pipe.load(sample), sample.query))
    cache, _ = pipe.prefill(emb)
    pipe.verify(cache, [1, 2, 3, 4, 5, 6])  # q = 6 was never prepared
    assert pipe.backend.info["late_captures"] == 1


def test_cache_kwarg_adapter_names_the_installed_transformers_argument():
    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None):
            return input_ids

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    assert backends.cache_kwarg(New()) == "cache" and backends.cache_kwarg(Old()) == "past_key_values"
    import inspect

    decoder = _pipe("eager").parts.decoder  # the installed transformers: 5.17 on the GPU host, 5.2x in CI
    assert backends.cache_kwarg(decoder) in inspect.signature(decoder.forward).parameters


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown backend 'fast'; choose one of"):
        backends.make_backend("fast", None, None, "cpu")
