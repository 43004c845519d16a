"""Each layer: config round trip, output shapes, and its own behaviour."""

import keras
import numpy as np
import pytest

import keras_cait
from tests.support import to_numpy

TOKENS = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")

LAYER_CASES = {
    "LayerScale": (lambda: keras_cait.LayerScale(0.1), TOKENS),
    "DropPath": (lambda: keras_cait.DropPath(0.2, seed=3), TOKENS),
    "CaiTMLP": (lambda: keras_cait.CaiTMLP(16, 32, dropout_rate=0.1), TOKENS),
    "TalkingHeadsAttention": (
        lambda: keras_cait.TalkingHeadsAttention(
            16, 4, use_qkv_bias=False, attention_dropout=0.1,
            projection_dropout=0.1,
        ),
        TOKENS,
    ),
    "ClassAttention": (lambda: keras_cait.ClassAttention(16, 2), TOKENS),
    "SelfAttentionBlock": (
        lambda: keras_cait.SelfAttentionBlock(
            16, 4, mlp_ratio=2.0, layer_scale_init_value=0.1,
            dropout_rate=0.1, attention_dropout=0.1, drop_path_rate=0.1,
            seed=7,
        ),
        TOKENS,
    ),
    "PatchEmbedding": (
        lambda: keras_cait.PatchEmbedding((8, 12), 4, 16, dropout_rate=0.1),
        np.ones((2, 8, 12, 3), "float32"),
    ),
    "ClassToken": (lambda: keras_cait.ClassToken(16), TOKENS),
}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_config_round_trip_and_output_shape(name):
    make, inputs = LAYER_CASES[name]
    layer = make()
    outputs = to_numpy(layer(inputs))
    assert tuple(layer.compute_output_shape(inputs.shape)) == outputs.shape

    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # Every constructor argument is in the config.
    import inspect

    arguments = set(inspect.signature(type(layer).__init__).parameters)
    assert arguments - {"self", "kwargs"} <= set(config)
    # The clone computes the same thing with the same weights.
    clone(inputs)
    clone.set_weights(layer.get_weights())
    if name != "DropPath":
        np.testing.assert_allclose(to_numpy(clone(inputs)), outputs, atol=1e-6)
    # Registered for deserialization by name.
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is type(layer)


def test_class_attention_block_round_trip_and_shape():
    block = keras_cait.ClassAttentionBlock(16, 4, mlp_ratio=3.0)
    cls = TOKENS[:, :1]
    outputs = to_numpy(block(TOKENS, cls))
    assert outputs.shape == (2, 1, 16)
    assert tuple(block.compute_output_shape(TOKENS.shape, cls.shape)) == (2, 1, 16)
    clone = keras_cait.ClassAttentionBlock.from_config(block.get_config())
    clone(TOKENS, cls)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(to_numpy(clone(TOKENS, cls)), outputs, atol=1e-6)


def test_attention_maps_shapes_and_normalisation():
    attention = keras_cait.TalkingHeadsAttention(16, 4)
    _, maps = attention(TOKENS, return_attention=True)
    assert tuple(maps.shape) == (2, 4, 5, 5)
    block = keras_cait.ClassAttentionBlock(16, 4)
    _, class_maps = block(TOKENS, TOKENS[:, :1], return_attention=True)
    class_maps = to_numpy(class_maps)
    assert class_maps.shape == (2, 4, 1, 6)
    np.testing.assert_allclose(class_maps.sum(-1), 1.0, atol=1e-5)


def test_layer_scale_multiplies_by_gamma():
    layer = keras_cait.LayerScale(0.5)
    np.testing.assert_allclose(to_numpy(layer(TOKENS)), TOKENS * 0.5, atol=1e-7)


def test_drop_path_is_identity_at_inference_and_rescales_in_training():
    layer = keras_cait.DropPath(0.5, seed=1)
    x = np.ones((256, 3, 4), "float32")
    np.testing.assert_array_equal(to_numpy(layer(x)), x)
    y = to_numpy(layer(x, training=True))
    per_sample = y.reshape(256, -1)
    # Whole samples are dropped or kept, the kept ones scaled by 1/keep_prob.
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert 0.3 < (per_sample[:, 0] == 0).mean() < 0.7


def test_seeded_drop_path_is_reproducible():
    x = np.ones((64, 2, 2), "float32")
    first = to_numpy(keras_cait.DropPath(0.3, seed=11)(x, training=True))
    second = to_numpy(keras_cait.DropPath(0.3, seed=11)(x, training=True))
    other = to_numpy(keras_cait.DropPath(0.3, seed=12)(x, training=True))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_drop_path_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        keras_cait.DropPath(1.0)


def test_mlp_uses_exact_gelu():
    mlp = keras_cait.CaiTMLP(16, 32)
    mlp.build(TOKENS.shape)
    hidden = TOKENS @ to_numpy(mlp.fc1.kernel) + to_numpy(mlp.fc1.bias)
    from math import erf, sqrt

    exact = hidden * 0.5 * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(hidden))
    expected = exact @ to_numpy(mlp.fc2.kernel) + to_numpy(mlp.fc2.bias)
    np.testing.assert_allclose(to_numpy(mlp(TOKENS)), expected, atol=1e-5)


def test_class_attention_uses_class_token_query_and_all_keys():
    layer = keras_cait.ClassAttention(16, 2)
    outputs = to_numpy(layer(TOKENS))
    changed = TOKENS.copy()
    changed[:, 1:] += 1.0  # patches feed keys and values
    assert not np.allclose(to_numpy(layer(changed)), outputs)
    changed = TOKENS.copy()
    changed[:, 0] += 1.0  # the class token is query, key and value
    assert not np.allclose(to_numpy(layer(changed)), outputs)


def test_attention_heads_must_divide_dim():
    with pytest.raises(ValueError, match="divisible"):
        keras_cait.TalkingHeadsAttention(10, 4)
    with pytest.raises(ValueError, match="divisible"):
        keras_cait.ClassAttention(10, 4)


def _talking_heads_reference(layer, tokens):
    """Talking-heads attention written out in NumPy from the layer's weights
    (timm's order: scale, logits, proj_l with bias, softmax, proj_w with
    bias, attention @ values, proj)."""
    w = {v.path.split("/", 1)[1]: to_numpy(v) for v in layer.weights}
    heads, dim = layer.num_heads, layer.hidden_dim
    batch, tokens_n, _ = tokens.shape
    qkv = tokens @ w["qkv/kernel"] + w["qkv/bias"]
    qkv = qkv.reshape(batch, tokens_n, 3, heads, dim // heads)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    logits = (q * layer.scale) @ k.transpose(0, 1, 3, 2)
    logits = np.einsum("bhqk,hg->bgqk", logits, w["proj_l/kernel"])
    logits = logits + w["proj_l/bias"][None, :, None, None]
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention = attention / attention.sum(-1, keepdims=True)
    attention = np.einsum("bhqk,hg->bgqk", attention, w["proj_w/kernel"])
    attention = attention + w["proj_w/bias"][None, :, None, None]
    outputs = (attention @ v).transpose(0, 2, 1, 3).reshape(batch, tokens_n, dim)
    return outputs @ w["proj/kernel"] + w["proj/bias"], attention


@pytest.mark.parametrize("training", [False, True])
def test_talking_heads_matches_numpy_with_large_head_mix_biases(training):
    layer = keras_cait.TalkingHeadsAttention(24, 4)
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((2, 7, 24)).astype("float32")
    layer(tokens)
    for variable in layer.weights:
        scale = 5.0 if "proj_l/bias" in variable.path else 0.3
        variable.assign(scale * rng.standard_normal(variable.shape))
    expected, expected_attention = _talking_heads_reference(layer, tokens)
    outputs, attention = layer(tokens, return_attention=True, training=training)
    np.testing.assert_allclose(to_numpy(outputs), expected, atol=2e-5)
    np.testing.assert_allclose(to_numpy(attention), expected_attention, atol=2e-5)


def test_query_row_blocks_cover_the_rows_within_the_byte_budget():
    from keras_cait.layers import talking_heads_attention as module

    budget = module.attention_block_bytes()
    assert budget == (2 if keras.backend.backend() == "jax" else 8) * 2**20
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
    assert len(module.query_row_blocks(32, 4, 197)) == (
        10 if keras.backend.backend() == "jax" else 3
    )
    # Never more blocks than rows, and symbolic sizes are not split.
    assert len(module.query_row_blocks(10**6, 4, 3)) == 3
    assert module.query_row_blocks(None, 4, 197) == [(0, 197)]
    assert module.query_row_blocks(32, 4, None) == [(0, None)]


def _spy_attended_rows(monkeypatch):
    """The number of query rows of each `_attend` call, as they happen."""
    from keras_cait.layers.talking_heads_attention import TalkingHeadsAttention

    rows = []
    attend = TalkingHeadsAttention._attend

    def spy_attend(self, query, *args):
        rows.append(int(query.shape[2]))
        return attend(self, query, *args)

    monkeypatch.setattr(TalkingHeadsAttention, "_attend", spy_attend)
    return rows


@pytest.mark.parametrize("training", [False, True])
def test_talking_heads_in_row_blocks_matches_numpy(monkeypatch, training):
    # A budget of a few rows' logits splits 7 tokens into uneven blocks; the
    # outputs and the concatenated attention weights are still exact.
    from keras_cait.layers import talking_heads_attention as module

    monkeypatch.setitem(
        module.ATTENTION_BLOCK_BYTES, keras.backend.backend(), 4 * 2 * 4 * 3 * 7
    )
    assert module.query_row_blocks(2, 4, 7) == [(0, 3), (3, 6), (6, 7)]
    attended_rows = _spy_attended_rows(monkeypatch)
    layer = keras_cait.TalkingHeadsAttention(24, 4)
    rng = np.random.default_rng(1)
    tokens = rng.standard_normal((2, 7, 24)).astype("float32")
    layer(tokens)
    for variable in layer.weights:
        variable.assign(0.3 * rng.standard_normal(variable.shape))
    expected, expected_attention = _talking_heads_reference(layer, tokens)
    attended_rows.clear()
    outputs, attention = layer(tokens, return_attention=True, training=training)
    assert attended_rows == [3, 3, 1]
    np.testing.assert_allclose(to_numpy(outputs), expected, atol=2e-5)
    np.testing.assert_allclose(to_numpy(attention), expected_attention, atol=2e-5)
    plain = layer(tokens, training=training)
    np.testing.assert_allclose(to_numpy(plain), expected, atol=2e-5)


def test_query_row_blocks_only_on_a_cpu(monkeypatch):
    from keras_cait.layers import talking_heads_attention as module

    tokens = keras.ops.convert_to_tensor(TOKENS)
    assert module.computes_on_cpu(tokens)
    if keras.backend.backend() == "torch":
        class OnGPU:
            class device:
                type = "cuda"

        assert not module.computes_on_cpu(OnGPU())
    else:
        monkeypatch.setattr(keras.distribution, "list_devices", lambda: ["gpu:0"])
        assert not module.computes_on_cpu(tokens)

    # 2 x 4 x 5 x 5 logits against a one-row budget: 5 blocks on a CPU.
    monkeypatch.setitem(
        module.ATTENTION_BLOCK_BYTES, keras.backend.backend(), 4 * 2 * 4 * 5
    )
    rows = _spy_attended_rows(monkeypatch)
    layer = keras_cait.TalkingHeadsAttention(16, 4)
    for on_cpu, expected_rows in ((True, [1] * 5), (False, [5])):
        monkeypatch.setattr(module, "computes_on_cpu", lambda x, on_cpu=on_cpu: on_cpu)
        rows.clear()
        layer(TOKENS)
        assert rows == expected_rows


def test_sublayers_called_through_keras_when_traced(monkeypatch):
    """The eager fast path (`layer.call`, no `Layer.__call__`) is for eager
    execution only: traced, every sublayer goes through `__call__`."""
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
    assert calls == []
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        traced = jax.jit(lambda x: block(x))
    elif backend == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda x: block(x))
    else:
        import torch

        traced = torch.compile(lambda x: block(x), backend="eager")
    np.testing.assert_allclose(to_numpy(traced(tokens)), to_numpy(eager), atol=1e-6)
    assert calls == ["norm1", "norm2"]


@pytest.mark.parametrize(
    "variant", ["plain", "no_bias", "activation", "lora", "int8", "mixed"]
)
def test_apply_dense_equals_calling_the_layer(variant):
    from keras_cait.layers.sublayers import apply_dense

    layer = keras.layers.Dense(
        6,
        use_bias=variant != "no_bias",
        activation="relu" if variant == "activation" else None,
        bias_initializer="glorot_uniform",
    )
    layer.build((None, None, 5))
    if variant == "lora":
        layer.enable_lora(2)
        layer.lora_kernel_b.assign(np.ones(layer.lora_kernel_b.shape))
    if variant == "int8":
        layer.quantize("int8")
    if variant == "mixed":
        layer.dtype_policy = "mixed_bfloat16"
    tokens = np.random.default_rng(0).standard_normal((2, 3, 5)).astype("float32")
    tokens = keras.ops.convert_to_tensor(tokens, layer.compute_dtype)
    expected = to_numpy(layer(tokens))
    outputs = to_numpy(apply_dense(layer, tokens))
    if keras.backend.backend() == "torch" and variant == "plain":
        # One fused `addmm`, as `torch.nn.Linear`: the bias add may round
        # differently (1 float32 ulp).
        np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(outputs, expected)


@pytest.mark.parametrize("variant", ["plain", "no_center", "axis", "mixed"])
def test_apply_layer_norm_equals_calling_the_layer(variant, monkeypatch):
    from keras_cait.layers import tensor_ops
    from keras_cait.layers.sublayers import apply_layer_norm

    layer = keras.layers.LayerNormalization(
        axis=(-2, -1) if variant == "axis" else -1,
        center=variant != "no_center",
        gamma_initializer="glorot_uniform",
        beta_initializer="glorot_uniform",
        dtype="mixed_bfloat16" if variant == "mixed" else None,
    )
    layer.build((None, 3, 5))
    tokens = np.random.default_rng(0).standard_normal((2, 3, 5)).astype("float32")
    tokens = keras.ops.convert_to_tensor(tokens)
    expected = to_numpy(layer(tokens))
    through_keras_ops = []
    original = tensor_ops.ops.layer_normalization
    monkeypatch.setattr(
        tensor_ops.ops, "layer_normalization",
        lambda *a, **k: through_keras_ops.append(1) or original(*a, **k),
    )
    np.testing.assert_array_equal(to_numpy(apply_layer_norm(layer, tokens)), expected)
    fast = variant in ("plain", "no_center")
    # On PyTorch the plain cases skip `keras.ops`; elsewhere they use it.
    assert bool(through_keras_ops) == (
        fast and keras.backend.backend() != "torch"
    )
