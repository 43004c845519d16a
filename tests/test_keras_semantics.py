"""Keras's own machinery on a CaiT: `quantize` (int8, int4, float8), a
quantized `.keras` round trip, LoRA, and the fast paths that must not skip
any of it: every test runs with the speed switch on and off. LayerScale is
0.1 (with timm's 1e-5 a wrong branch hides)."""

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.layers import _fast_paths
from tests.support import TINY_BACKBONE, to_numpy

IMAGES = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
# Largest logit error against the float model, as a fraction of the largest
# float logit: about twice what Keras's own layers give on this model (0.023
# in int8, 0.24 in int4, 0.12 in float8 on the three backends).
QUANTIZATION_NOISE = {"int8": 0.05, "int4": 0.5, "float8": 0.25}


@pytest.fixture(scope="module", autouse=True, params=[True, False], ids=["fast", "plain"])
def fast_paths(request):
    """Every model of the test is built with the speed switch on, or off."""
    previous = _fast_paths.use_fast_paths()
    _fast_paths.set_fast_paths(request.param)
    yield request.param
    _fast_paths.set_fast_paths(previous)


def _classifier():
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=10, compile=False)


@pytest.fixture(scope="module")
def float_model(fast_paths):
    model = _classifier()
    return model, to_numpy(model(IMAGES))


def _without_fast_paths(model):
    """`model(IMAGES)` with the layers' speed paths off."""
    layers = [x for x in model._flatten_layers() if hasattr(x, "_fast_paths")]
    choices = [layer._fast_paths for layer in layers]
    for layer in layers:
        layer._fast_paths = False
    try:
        return to_numpy(model(IMAGES))
    finally:
        for layer, choice in zip(layers, choices):
            layer._fast_paths = choice


@pytest.mark.parametrize("mode", sorted(QUANTIZATION_NOISE))
def test_quantized_model_is_keras_quantized_model(mode, float_model):
    reference, expected = float_model
    model = _classifier()
    model.set_weights(reference.get_weights())
    model.quantize(mode)
    assert model.get_layer("predictions").quantization_mode == mode
    logits = to_numpy(model(IMAGES))
    # The fast paths compute what Keras's layers compute...
    keras_logits = _without_fast_paths(model)
    np.testing.assert_allclose(logits, keras_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), logits, atol=1e-4)
    # ...which is the float model within the quantization noise.
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    assert 0 < error <= QUANTIZATION_NOISE[mode], error


@pytest.mark.parametrize("mode", sorted(QUANTIZATION_NOISE))
def test_quantized_keras_file_round_trip_is_bit_exact(mode, float_model, tmp_path):
    model = _classifier()
    model.set_weights(float_model[0].get_weights())
    model.quantize(mode)
    path = tmp_path / "quantized.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    # Reloaded, the policies are a DTypePolicyMap: each layer still knows.
    layer = restored.backbone.get_layer("self_attention_block_0").attn.proj_l
    assert isinstance(restored.backbone.dtype_policy, keras.dtype_policies.DTypePolicyMap)
    assert layer.quantization_mode == mode
    assert restored.get_layer("predictions").quantization_mode == mode
    np.testing.assert_array_equal(to_numpy(restored(IMAGES)), to_numpy(model(IMAGES)))
    np.testing.assert_array_equal(
        restored.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0)
    )


def test_lora_trains_the_adapters_only():
    model = _classifier()
    before = to_numpy(model(IMAGES))
    model.backbone.enable_lora(2, target_layer_names=["qkv", "q", "v", "proj_l"])
    lora = [v for v in model.trainable_weights if "lora_kernel" in v.path]
    # A and B of qkv and proj_l in 2 blocks, of q and v in 2 class-attention blocks.
    assert len(lora) == 2 * (2 * 2 + 2 * 2)
    for variable in lora:  # B starts at zero: make the adapters matter now
        variable.assign(0.1 * np.ones(variable.shape))
    # KerasHub's enable_lora freezes every backbone variable but the adapters
    # and the biases of the layers they adapt.
    frozen = {v.path: to_numpy(v) for v in model.backbone.weights if not v.trainable}
    assert len(frozen) == len(model.backbone.weights) - len(lora) - 8  # 8 biases
    adapted = to_numpy(model(IMAGES))
    keras_adapted = _without_fast_paths(model)
    np.testing.assert_allclose(adapted, keras_adapted, atol=1e-5, rtol=0)
    assert np.abs(adapted - before).max() > 1e-3

    adapters = [to_numpy(v) for v in lora]
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=keras.backend.backend() != "jax",
    )
    labels = np.arange(4) % 10
    model.fit(IMAGES, labels, epochs=2, batch_size=4, verbose=0)
    assert all(not np.array_equal(to_numpy(v), a) for v, a in zip(lora, adapters))
    for variable in model.backbone.weights:
        if variable.path in frozen:
            np.testing.assert_array_equal(
                to_numpy(variable), frozen[variable.path], err_msg=variable.path
            )


def test_quantize_collects_garbage_once_and_gives_keras_numbers(float_model, monkeypatch):
    import gc
    import inspect

    from keras.src.layers.layer import Layer  # private (Keras 3.15)

    # The reason for the override: Keras collects once per replaced weight.
    assert "gc.collect()" in inspect.getsource(Layer.__delattr__)
    ours, keras_own = _classifier(), _classifier()
    for model in (ours, keras_own):
        model.set_weights(float_model[0].get_weights())
    calls = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(1) or collect(*args))
    ours.quantize("int8")
    assert calls == [1]
    keras.Model.quantize(keras_own, "int8")
    assert len(calls) > 10
    np.testing.assert_array_equal(to_numpy(ours(IMAGES)), to_numpy(keras_own(IMAGES)))
    calls.clear()
    keras_cait.CaiTBackbone(**TINY_BACKBONE).quantize("int8")
    assert calls == [1]
