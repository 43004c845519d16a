"""The fast `predict()` path (keras_cait/models/fast_inference.py): same
outputs as the model, batching and fallbacks as in Keras, XLA by default on
TensorFlow."""

import keras
import numpy as np
import pytest

import keras_cait
from tests.support import TINY_BACKBONE, to_numpy


@pytest.fixture(scope="module")
def classifier():
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=5)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((5, 32, 32, 3), dtype=np.float32)


@pytest.mark.openvino
def test_predict_matches_the_model_over_uneven_batches(classifier, images):
    expected = to_numpy(classifier(images, training=False))
    outputs = classifier.predict(images, batch_size=2, verbose=0)  # 2 + 2 + 1
    assert isinstance(outputs, np.ndarray) and outputs.shape == (5, 5)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    single = classifier.predict(images[:1], verbose=0)
    np.testing.assert_allclose(single, expected[:1], atol=1e-5)


@pytest.mark.openvino
def test_backbone_predict_takes_backend_tensors(classifier, images):
    backbone = classifier.backbone
    tokens = backbone.predict(keras.ops.convert_to_tensor(images), verbose=0)
    assert isinstance(tokens, np.ndarray)
    np.testing.assert_allclose(
        tokens, to_numpy(backbone(images, training=False)), atol=1e-5
    )


@pytest.mark.openvino
def test_other_inputs_use_keras_predict(classifier, images):
    expected = classifier.predict(images, verbose=0)
    seen = []

    class Count(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            seen.append(batch)

    # Callbacks (and steps, datasets, generators) go to Keras's loop.
    outputs = classifier.predict(images, batch_size=2, callbacks=[Count()], verbose=0)
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


def test_bad_batch_size_and_empty_input_are_named(classifier, images):
    with pytest.raises(ValueError, match="`batch_size`"):
        classifier.predict(images, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="0 samples"):
        classifier.predict(images[:0], verbose=0)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="XLA default is TensorFlow's"
)
def test_xla_is_the_default_on_tensorflow(classifier):
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    assert backbone.jit_compile is True
    assert classifier.jit_compile is True
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=5, compile=False)
    model.compile(jit_compile=False)
    assert model.jit_compile is False


jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the JAX predict path"
)


def keras_predict_on_batch(model, x):
    """What Keras's own `predict_on_batch` returns (KerasHub's task first
    preprocesses, then the backend trainer's)."""
    return keras.Model.predict_on_batch(model, model.preprocess_samples(x)
                                        if hasattr(model, "preprocess_samples") else x)


@jax_only
def test_jax_predict_skips_keras_state_round_trip_and_keeps_its_numbers(
    images, monkeypatch
):
    from keras.src.backend.jax.trainer import JAXTrainer

    backbone = keras_cait.CaiTBackbone(**{**TINY_BACKBONE, "layer_scale_init_value": 0.1})
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=5)
    calls = []
    original = JAXTrainer.predict_on_batch
    monkeypatch.setattr(
        JAXTrainer, "predict_on_batch",
        lambda self, x: calls.append(1) or original(self, x),
    )
    model.predict(images, batch_size=2, verbose=0)
    fast = model.predict(images, verbose=0)
    assert calls == []  # Keras's per-call state round trip was skipped
    np.testing.assert_allclose(fast, keras_predict_on_batch(model, images), atol=1e-6)

    # A weight assigned between calls is seen (values are read per call).
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel.value * 2)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), keras_predict_on_batch(model, images),
        atol=1e-6,
    )

    # quantize() resets Keras's predict_function, and so the compiled step;
    # LoRA adds variables, which retraces it: both as Keras's own predict.
    float_logits = model.predict(images, verbose=0)
    model.quantize("int8")
    quantized = model.predict(images, verbose=0)
    assert np.abs(quantized - float_logits).max() > 0
    np.testing.assert_allclose(quantized, keras_predict_on_batch(model, images), atol=1e-6)
    model.get_layer("predictions").enable_lora(2)
    lora = model.get_layer("predictions")
    lora.lora_kernel_b.assign(np.ones(lora.lora_kernel_b.shape, "float32"))
    with_lora = model.predict(images, verbose=0)
    assert np.abs(with_lora - quantized).max() > 1e-3
    np.testing.assert_allclose(with_lora, keras_predict_on_batch(model, images), atol=1e-5)


@jax_only
def test_jax_predict_writes_back_state_the_step_changes(images):
    from keras_cait.models.fast_inference import FastInferenceMixin

    class CountCalls(keras.layers.Layer):
        def build(self, input_shape):
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

        def call(self, x):
            self.count.assign(self.count + 1.0)
            return x

    class Counting(FastInferenceMixin, keras.Model):
        pass

    inputs = keras.Input((32, 32, 3))
    model = Counting(inputs, CountCalls()(inputs))
    model.predict(images, batch_size=2, verbose=0)  # 3 batches
    assert float(model.layers[-1].count.value) == 3.0
