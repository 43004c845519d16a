"""Each layer's own behaviour (configs and shapes: test_keras_hub_harness.py), and the
speed paths."""

import importlib
import sys
from math import erf, sqrt

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.layers import _fast_paths
from tests.support import TINY_BACKBONE, to_numpy

TOKENS = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
BACKEND = keras.backend.backend()


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def fast_paths(request):
    """Layers built in the test take the speed paths or not."""
    previous = _fast_paths.use_fast_paths()
    _fast_paths.set_fast_paths(request.param)
    yield request.param
    _fast_paths.set_fast_paths(previous)


def test_layer_scale_multiplies_by_gamma():
    layer = keras_cait.LayerScale(0.5)
    np.testing.assert_allclose(to_numpy(layer(TOKENS)), TOKENS * 0.5, atol=1e-7)


def test_drop_path_is_identity_at_inference_and_rescales_in_training():
    layer = keras_cait.DropPath(0.5, seed=1)
    x = np.ones((256, 3, 4), "float32")
    np.testing.assert_array_equal(to_numpy(layer(x)), x)
    per_sample = to_numpy(layer(x, training=True)).reshape(256, -1)
    # Whole samples are dropped or kept, the kept ones scaled by 1/keep_prob.
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert 0.3 < (per_sample[:, 0] == 0).mean() < 0.7


def test_seeded_drop_path_is_reproducible():
    x = np.ones((64, 2, 2), "float32")
    first, second, other = (
        to_numpy(keras_cait.DropPath(0.3, seed=s)(x, training=True)) for s in (11, 11, 12)
    )
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: keras_cait.DropPath(1.0), "rate"),
        (lambda: keras_cait.TalkingHeadsAttention(10, 4), "divisible"),
        (lambda: keras_cait.ClassAttention(10, 4), "divisible"),
    ],
)
def test_bad_layer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mlp_uses_exact_gelu():
    mlp = keras_cait.CaiTMLP(16, 32)
    mlp.build(TOKENS.shape)
    hidden = TOKENS @ to_numpy(mlp.fc1.kernel) + to_numpy(mlp.fc1.bias)
    exact = hidden * 0.5 * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(hidden))
    expected = exact @ to_numpy(mlp.fc2.kernel) + to_numpy(mlp.fc2.bias)
    np.testing.assert_allclose(to_numpy(mlp(TOKENS)), expected, atol=1e-5)


def test_class_attention_uses_class_token_query_and_all_keys():
    layer = keras_cait.ClassAttention(16, 2)
    outputs = to_numpy(layer(TOKENS))
    # Patches feed keys and values; the class token is query, key and value.
    for tokens in (slice(1, None), 0):
        changed = TOKENS.copy()
        changed[:, tokens] += 1.0
        assert not np.allclose(to_numpy(layer(changed)), outputs)


def _random_talking_heads(seed, proj_l_bias_scale):
    """A talking-heads layer with random weights, its tokens, and its outputs
    and attention in NumPy (timm's order: scale, logits, proj_l with bias,
    softmax, proj_w with bias, attention @ values, proj)."""
    layer = keras_cait.TalkingHeadsAttention(24, 4)
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((2, 7, 24)).astype("float32")
    layer(tokens)
    for variable in layer.weights:
        scale = proj_l_bias_scale if "proj_l/bias" in variable.path else 0.3
        variable.assign(scale * rng.standard_normal(variable.shape))
    w = {v.path.split("/", 1)[1]: to_numpy(v) for v in layer.weights}
    heads, dim = layer.num_heads, layer.hidden_dim
    qkv = (tokens @ w["qkv/kernel"] + w["qkv/bias"]).reshape(2, 7, 3, heads, dim // heads)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    logits = np.einsum("bhqk,hg->bgqk", (q * layer.scale) @ k.transpose(0, 1, 3, 2),
                       w["proj_l/kernel"]) + w["proj_l/bias"][None, :, None, None]
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention = attention / attention.sum(-1, keepdims=True)
    attention = np.einsum("bhqk,hg->bgqk", attention, w["proj_w/kernel"])
    attention = attention + w["proj_w/bias"][None, :, None, None]
    outputs = (attention @ v).transpose(0, 2, 1, 3).reshape(2, 7, dim)
    return layer, tokens, outputs @ w["proj/kernel"] + w["proj/bias"], attention


@pytest.mark.parametrize("training", [False, True])
def test_talking_heads_matches_numpy_with_large_head_mix_biases(training, fast_paths):
    layer, tokens, expected, expected_attention = _random_talking_heads(0, 5.0)
    outputs, attention = layer(tokens, return_attention=True, training=training)
    np.testing.assert_allclose(to_numpy(outputs), expected, atol=2e-5)
    np.testing.assert_allclose(to_numpy(attention), expected_attention, atol=2e-5)


def test_query_row_blocks_cover_the_rows_within_the_byte_budget():
    module = _fast_paths
    budget = module.ATTENTION_BLOCK_BYTES.get(BACKEND, module.ATTENTION_BLOCK_BYTES["default"])
    assert budget == (2 if BACKEND == "jax" else 8) * 2**20
    for batch, heads, tokens in [(1, 4, 197), (32, 4, 197), (7, 3, 50), (64, 8, 577)]:
        blocks = module.query_row_blocks(batch, heads, tokens)
        assert blocks[0][0] == 0 and blocks[-1][1] == tokens
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(start < stop for start, stop in blocks)
        assert len(blocks) <= module.MAX_ATTENTION_BLOCKS
        largest = max(stop - start for start, stop in blocks)
        if len(blocks) < module.MAX_ATTENTION_BLOCKS:
            assert 4 * batch * heads * largest * tokens <= budget
    # Batch 1 at 224 px is one block; batch 32 (20 MB of logits) is split
    # in 2 MiB blocks on JAX, 8 MiB ones elsewhere.
    assert module.query_row_blocks(1, 4, 197) == [(0, 197)]
    assert len(module.query_row_blocks(32, 4, 197)) == (10 if BACKEND == "jax" else 3)
    # Never more blocks than rows, and symbolic sizes are not split.
    assert len(module.query_row_blocks(10**6, 4, 3)) == 3
    assert module.query_row_blocks(None, 4, 197) == [(0, 197)]
    assert module.query_row_blocks(32, 4, None) == [(0, None)]


def _spy_attended_rows(monkeypatch, rows_budget):
    """Sets a budget of `rows_budget` bytes; returns the list of query rows
    attended at once, as they happen (`_attend`, or eager PyTorch's `proj_l` mix)."""
    from keras_cait.layers.talking_heads_attention import TalkingHeadsAttention

    monkeypatch.setitem(_fast_paths.ATTENTION_BLOCK_BYTES, BACKEND, rows_budget)
    rows = []
    attend, mix_heads = TalkingHeadsAttention._attend, _fast_paths._mix_heads

    def spy_attend(self, query, *args):
        rows.append(int(query.shape[2]))
        return attend(self, query, *args)

    def spy_mix_heads(dense, attn):
        if dense.name == "proj_l":
            rows.append(int(attn.shape[2]))
        return mix_heads(dense, attn)

    monkeypatch.setattr(TalkingHeadsAttention, "_attend", spy_attend)
    monkeypatch.setattr(_fast_paths, "_mix_heads", spy_mix_heads)
    return rows


@pytest.mark.parametrize("training", [False, True])
def test_talking_heads_in_row_blocks_matches_numpy(monkeypatch, training):
    # A budget of a few rows' logits splits 7 tokens into uneven blocks; the
    # outputs and the concatenated attention weights are still exact.
    attended_rows = _spy_attended_rows(monkeypatch, 4 * 2 * 4 * 3 * 7)
    assert _fast_paths.query_row_blocks(2, 4, 7) == [(0, 3), (3, 6), (6, 7)]
    layer, tokens, expected, expected_attention = _random_talking_heads(1, 0.3)
    attended_rows.clear()
    outputs, attention = layer(tokens, return_attention=True, training=training)
    assert attended_rows == [3, 3, 1]
    np.testing.assert_allclose(to_numpy(outputs), expected, atol=2e-5)
    np.testing.assert_allclose(to_numpy(attention), expected_attention, atol=2e-5)
    np.testing.assert_allclose(to_numpy(layer(tokens, training=training)), expected, atol=2e-5)


def test_query_row_blocks_only_on_a_cpu(monkeypatch):
    tokens = keras.ops.convert_to_tensor(TOKENS)
    assert _fast_paths.computes_on_cpu(tokens)
    if BACKEND == "torch":
        class OnGPU:
            class device:
                type = "cuda"

        assert not _fast_paths.computes_on_cpu(OnGPU())
    else:
        monkeypatch.setattr(keras.distribution, "list_devices", lambda: ["gpu:0"])
        assert not _fast_paths.computes_on_cpu(tokens)
    # 2 x 4 x 5 x 5 logits against a one-row budget: 5 blocks on a CPU.
    rows = _spy_attended_rows(monkeypatch, 4 * 2 * 4 * 5)
    layer = keras_cait.TalkingHeadsAttention(16, 4)
    for on_cpu, expected_rows in ((True, [1] * 5), (False, [5])):
        monkeypatch.setattr(_fast_paths, "computes_on_cpu", lambda x, c=on_cpu: c)
        rows.clear()
        layer(TOKENS)
        assert rows == expected_rows


def test_sublayers_called_through_keras_when_traced(monkeypatch):
    """The eager PyTorch path skips `Layer.__call__`; traced, every sublayer goes through it."""
    block = keras_cait.SelfAttentionBlock(16, 4)
    block(TOKENS)
    calls = []
    call = keras.layers.LayerNormalization.__call__

    def spy_call(self, *args, **kwargs):
        calls.append(self.name)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.LayerNormalization, "__call__", spy_call)
    tokens = keras.ops.convert_to_tensor(TOKENS)
    eager = block(tokens)
    assert calls == ([] if BACKEND == "torch" else ["norm1", "norm2"])
    calls.clear()
    tracers = {
        "jax": lambda f: importlib.import_module("jax").jit(f),
        "tensorflow": lambda f: importlib.import_module("tensorflow").function(f),
        "torch": lambda f: importlib.import_module("torch").compile(f, backend="eager"),
    }
    traced = tracers[BACKEND](lambda x: block(x))
    np.testing.assert_allclose(to_numpy(traced(tokens)), to_numpy(eager), atol=1e-6)
    assert calls == ["norm1", "norm2"]


TORCH_ONLY = pytest.mark.skipif(BACKEND != "torch", reason="an eager PyTorch path")


@TORCH_ONLY
@pytest.mark.parametrize("variant", ["plain", "no_bias", "lora", "int8", "mixed"])
def test_fast_dense_and_head_mix_equal_calling_the_layer(variant):
    layer = keras.layers.Dense(4, use_bias=variant != "no_bias", bias_initializer="glorot_uniform")
    layer.build((None, 4))
    if variant == "lora":
        layer.enable_lora(2)
        layer.lora_kernel_b.assign(np.ones(layer.lora_kernel_b.shape))
    if variant == "int8":
        layer.quantize("int8")
    if variant == "mixed":
        layer.dtype_policy = "mixed_bfloat16"
    attn = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype("float32")
    attn = keras.ops.convert_to_tensor(attn, layer.compute_dtype)
    expected = to_numpy(layer(attn))
    # One fused `addmm` (as `torch.nn.Linear`): the bias add may round 1 ulp differently.
    tolerance = dict(rtol=1e-6, atol=1e-7) if variant == "plain" else dict(rtol=0)
    np.testing.assert_allclose(to_numpy(_fast_paths._dense(layer, attn)), expected, **tolerance)
    if variant != "no_bias":  # timm's mix, across the heads axis
        mixed = to_numpy(_fast_paths._mix_heads(layer, attn.permute(0, 3, 1, 2)))
        np.testing.assert_allclose(mixed.transpose(0, 2, 3, 1), expected, rtol=1e-5, atol=1e-6)


@TORCH_ONLY
def test_eager_torch_attention_calls_no_keras_ops(monkeypatch, fast_paths):
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    _fast_paths.set_fast_paths(not fast_paths)
    other = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    other.set_weights(backbone.get_weights())
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    expected = to_numpy(other(images))
    calls = []

    def spy(name, original):
        def op(*args, **kwargs):
            calls.append((name, sys._getframe(1).f_code.co_filename))
            return original(*args, **kwargs)
        return op

    for name in ("reshape", "transpose", "swapaxes", "softmax", "matmul", "cast"):
        monkeypatch.setattr(keras.ops, name, spy(name, getattr(keras.ops, name)))
    # Built with the switch on or off, the same numbers; with it on, the
    # self-attention blocks use PyTorch's own ops.
    np.testing.assert_allclose(to_numpy(backbone(images)), expected, rtol=1e-6, atol=1e-6)
    files = ("talking_heads_attention.py", "self_attention_block.py", "_fast_paths.py")
    attention = [c for c in calls if c[1].endswith(files)]
    assert bool(attention) == (not fast_paths), attention


@pytest.mark.parametrize(
    "value, expected",
    [("1", True), ("on", True), ("", True), ("0", False), (" OFF ", False), ("no", False)],
)
def test_switch_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("KERAS_CAIT_FAST_PATHS", value)
    assert _fast_paths._from_environment() is expected
    monkeypatch.delenv("KERAS_CAIT_FAST_PATHS")
    assert _fast_paths._from_environment() is True
    monkeypatch.setenv("KERAS_CAIT_FAST_PATHS", "maybe")
    with pytest.raises(ValueError, match="KERAS_CAIT_FAST_PATHS='maybe'"):
        _fast_paths._from_environment()


def test_switch_is_read_when_a_layer_is_built(monkeypatch, fast_paths):
    with pytest.raises(TypeError, match="enable"):
        _fast_paths.set_fast_paths(1)
    assert _fast_paths.use_fast_paths() is fast_paths
    taken = []
    for name in ("talking_heads_attention", "self_attention_block", "eager_torch"):
        original = getattr(_fast_paths, name)
        monkeypatch.setattr(
            _fast_paths, name, lambda *a, _f=original, _n=name: taken.append(_n) or _f(*a)
        )
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    images = np.zeros((1, 32, 32, 3), "float32")
    backbone(images)
    assert bool(taken) is fast_paths
    # Built layers keep their choice.
    _fast_paths.set_fast_paths(not fast_paths)
    taken.clear()
    backbone(images)
    assert bool(taken) is fast_paths


def test_layers_made_in_a_remat_scope_take_no_fast_path():
    # Pins Keras's private `_remat_mode` (read in `_fast_paths.enabled_for`).
    with keras.RematScope(mode="full"):
        remat = keras_cait.SelfAttentionBlock(16, 4)
        remat.build(TOKENS.shape)
    plain = keras_cait.SelfAttentionBlock(16, 4)
    plain.build(TOKENS.shape)
    assert remat._fast_paths is False and remat.attn._fast_paths is False
    assert plain._fast_paths is _fast_paths.use_fast_paths()
