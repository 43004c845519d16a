"""Mixed precision: every layer and both models under bfloat16, mixed_bfloat16 and
mixed_float16, softmax and talking-heads logits in float32, training without NaNs."""

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.layers import _fast_paths
from tests.support import TINY_BACKBONE, to_numpy
from tests.test_keras_hub_harness import LAYERS, TOKENS

POLICIES = ("bfloat16", "mixed_bfloat16", "mixed_float16")
COMPUTE = {"bfloat16": "bfloat16", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# Relative tolerance against float32, by compute dtype (8 / 11 mantissa bits, a few layers).
RTOL = {"bfloat16": 5e-2, "float16": 1e-2}
SMALL = dict(TINY_BACKBONE, num_layers=1, num_class_attention_layers=1)


def _rng_array(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _with_policy(policy, make):
    keras.config.set_dtype_policy(policy)
    try:
        return make()
    finally:
        keras.config.set_dtype_policy("float32")


def _close(actual, expected, compute_dtype):
    actual = to_numpy(actual).astype("float32")
    expected = to_numpy(expected)
    assert np.all(np.isfinite(actual))
    scale = max(float(np.abs(expected).max()), 1e-3)
    assert np.abs(actual - expected).max() <= RTOL[compute_dtype] * scale


def _small_classifier():
    backbone = keras_cait.CaiTBackbone(**SMALL, layer_scale_init_value=0.5)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=3, compile=False)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_float32(policy, name):
    cls, kwargs, shapes, _ = LAYERS[name]
    shapes = list(shapes.values()) if isinstance(shapes, dict) else [shapes]
    inputs = [_rng_array(shape, seed) for seed, shape in enumerate(shapes)]
    reference = cls(**kwargs)
    expected = reference(*inputs)
    layer = _with_policy(policy, lambda: cls(**kwargs))
    assert layer.compute_dtype == COMPUTE[policy]
    layer(*inputs)  # builds
    assert len(layer.weights) == len(reference.weights)
    for target, source in zip(layer.weights, reference.weights):
        assert target.path.split("/", 1)[1] == source.path.split("/", 1)[1]
        target.assign(to_numpy(source))
    if policy.startswith("mixed"):
        assert {w.dtype for w in layer.weights} <= {"float32"}
    outputs = layer(*inputs)
    assert keras.backend.standardize_dtype(outputs.dtype) == COMPUTE[policy]
    _close(outputs, expected, COMPUTE[policy])


@pytest.mark.parametrize("policy", POLICIES)
def test_softmax_and_head_mixing_run_in_float32(policy, monkeypatch):
    seen, softmax = [], keras.ops.softmax
    monkeypatch.setattr(keras.ops, "softmax", lambda x, **k: seen.append(
        keras.backend.standardize_dtype(x.dtype)) or softmax(x, **k))
    talking = _with_policy(policy, lambda: keras_cait.TalkingHeadsAttention(16, 4))
    class_attention = _with_policy(policy, lambda: keras_cait.ClassAttention(16, 4))
    tokens = _rng_array(TOKENS)
    _, attention = talking(tokens, return_attention=True)
    class_attention(tokens)
    assert seen == ["float32", "float32"]
    # The mixes keep the layer's policy and compute in float32 from its weights.
    assert talking.proj_l.dtype_policy.name == talking.dtype_policy.name
    assert keras.backend.standardize_dtype(attention.dtype) == COMPUTE[policy]


def _large_logits(layer):
    """Exact float16 weights whose logits `q @ k^T * scale` exceed 65504 with q and k
    entries at most 512 (q = 512, k = 64 or 64.5 by token)."""
    dim = layer.hidden_dim
    names = ("q", "k", "v") if isinstance(layer, keras_cait.ClassAttention) else ("qkv",)
    kernels = {"q": np.zeros((dim, dim)), "k": 0.5 * np.eye(dim),
               "v": np.round(4 * _rng_array((dim, dim), seed=2)) / 4}
    biases = {"q": np.full(dim, 512.0), "k": np.full(dim, 64.0), "v": np.zeros(dim)}
    for name in names:
        parts = ("q", "k", "v") if name == "qkv" else (name,)
        dense = getattr(layer, name)
        dense.kernel.assign(np.concatenate([kernels[p] for p in parts], axis=1))
        dense.bias.assign(np.concatenate([biases[p] for p in parts]))
    head_dim = dim // layer.num_heads
    assert 512 * 64 * head_dim * head_dim**-0.5 > 65504


@pytest.mark.parametrize("policy", ["mixed_float16", "float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["TalkingHeadsAttention", "ClassAttention"])
@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast", "plain"])
def test_logits_above_float16_range_stay_finite(policy, name, fast_paths, monkeypatch):
    monkeypatch.setattr(_fast_paths, "_enabled", fast_paths)
    tokens = (np.random.default_rng(3).random(TOKENS) < 0.5).astype("float32")
    reference = getattr(keras_cait, name)(16, 2)
    reference(tokens)
    _large_logits(reference)
    expected = reference(tokens)
    layer = _with_policy(policy, lambda: getattr(keras_cait, name)(16, 2))
    layer(tokens)
    layer.set_weights(reference.get_weights())
    _close(layer(tokens), expected, "bfloat16" if "bfloat16" in policy else "float16")


@pytest.mark.parametrize("policy", POLICIES)
def test_models_match_float32_and_train_without_nans(policy):
    keras.utils.set_random_seed(0)
    reference = _small_classifier()
    images = _rng_array((2, 32, 32, 3))
    expected, expected_features = to_numpy(reference(images)), to_numpy(reference.backbone(images))
    model = _with_policy(policy, _small_classifier)
    model.set_weights(reference.get_weights())
    compute = COMPUTE[policy]
    assert model.backbone.compute_dtype == compute
    _close(model.backbone(images), expected_features, compute)
    logits = model(images)
    assert keras.backend.standardize_dtype(logits.dtype) == compute
    _close(logits, expected, compute)
    # Adam in bfloat16 variables rounds beta_2 = 0.999 to 1 and takes no step: SGD there.
    optimizer = keras.optimizers.SGD(0.05) if policy == "bfloat16" else keras.optimizers.AdamW(1e-3)
    # Eager steps on TF/torch (compiling costs more than three tiny steps); JAX compiles.
    _with_policy(policy, lambda: model.compile(
        optimizer=optimizer, run_eagerly=keras.backend.backend() != "jax",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
    if policy == "mixed_float16":  # Keras wraps the optimizer for dynamic loss scaling.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    images, labels = _rng_array((8, 32, 32, 3)), np.arange(8) % 3
    before = [to_numpy(w).astype("float32") for w in model.trainable_weights]
    losses = [float(model.train_on_batch(images, labels, return_dict=True)["loss"]) for _ in range(3)]
    after = [to_numpy(w).astype("float32") for w in model.trainable_weights]
    assert np.all(np.isfinite(losses))
    assert all(np.all(np.isfinite(w)) for w in after)
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
    assert changed > len(before) // 2
