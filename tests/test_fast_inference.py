"""The runtime's `predict()`: the model's outputs, Keras's batching and fallbacks, XLA on TF."""

import inspect

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.layers import _fast_paths
from keras_cait.model_extensions.image_lists import ImageListPredict
from keras_cait.runtime import RuntimeMixin
from tests.support import TINY_BACKBONE, to_numpy


def _classifier(**kwargs):
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=5, **kwargs)


@pytest.fixture(scope="module")
def classifier():
    return _classifier()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((5, 32, 32, 3), dtype=np.float32)


@pytest.mark.openvino
def test_predict_matches_the_model_and_callbacks_use_keras_predict(classifier, images):
    expected = to_numpy(classifier(images, training=False))
    outputs = classifier.predict(images, batch_size=2, verbose=0)  # 2 + 2 + 1
    assert isinstance(outputs, np.ndarray) and outputs.shape == (5, 5)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    np.testing.assert_allclose(classifier.predict(images[:1], verbose=0), expected[:1], atol=1e-5)
    # The backbone takes backend tensors.
    backbone = classifier.backbone
    tokens = backbone.predict(keras.ops.convert_to_tensor(images), verbose=0)
    assert isinstance(tokens, np.ndarray)
    np.testing.assert_allclose(tokens, to_numpy(backbone(images, training=False)), atol=1e-5)
    # Callbacks (and steps, datasets, generators) go to Keras's loop.
    seen = []
    count = keras.callbacks.LambdaCallback(on_predict_batch_end=lambda b, logs: seen.append(b))
    outputs = classifier.predict(images, batch_size=2, callbacks=[count], verbose=0)
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


def test_bad_batch_size_and_empty_input_are_named(classifier, images):
    with pytest.raises(ValueError, match="`batch_size`"):
        classifier.predict(images, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="0 samples"):
        classifier.predict(images[:0], verbose=0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="XLA default is TensorFlow's")
def test_xla_is_the_default_on_tensorflow(classifier):
    assert keras_cait.CaiTBackbone(**TINY_BACKBONE).jit_compile is True
    assert classifier.jit_compile is True
    model = _classifier(compile=False)
    model.compile(jit_compile=False)
    assert model.jit_compile is False


def test_switch_off_gives_keras_predict(images, monkeypatch):
    monkeypatch.setattr(_fast_paths, "_enabled", False)
    model = _classifier()
    if keras.backend.backend() == "tensorflow":  # Keras's own "auto": no XLA without a GPU
        assert model.jit_compile is keras.Model._resolve_auto_jit_compile(model)
    expected = to_numpy(model(images, training=False))

    def refuse(x):
        raise AssertionError("the fast path ran")

    # Keras's loop does not go through `_predict_batch`; the fast path does.
    monkeypatch.setattr(model, "_predict_batch", refuse)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    # The switch is read when the predict function is made, not per call.
    monkeypatch.setattr(_fast_paths, "_enabled", True)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    model.make_predict_function(force=True)
    with pytest.raises(AssertionError, match="fast path"):
        model.predict(images, verbose=0)


def test_pinned_private_keras_api():
    """Keras 3.15: compile() asks `_resolve_auto_jit_compile`, which reads `_flatten_layers`."""
    calls = []

    class Model(keras.Model):
        def _resolve_auto_jit_compile(self):
            calls.append(len(list(self._flatten_layers())))
            return False

    inputs = keras.Input((2,))
    Model(inputs, keras.layers.Dense(1)(inputs)).compile()
    assert calls and calls[0] >= 2
    if keras.backend.backend() == "tensorflow":  # None outside tf.distribute
        assert keras.Model(inputs, inputs)._distribute_strategy is None


def _keras_predict_on_batch(model, x):
    """Keras's own `predict_on_batch`: the task's preprocessing, then the trainer's."""
    return keras.Model.predict_on_batch(model, model.preprocess_samples(x))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's predict step")
def test_jax_predict_skips_keras_variable_round_trip_with_the_same_numbers(images, monkeypatch):
    from keras.src.backend.jax.trainer import JAXTrainer  # private (Keras 3.15)

    assert list(inspect.signature(JAXTrainer.predict_step).parameters) == ["self", "state", "data"]
    model = keras_cait.CaiTImageClassifier(
        keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1), num_classes=5
    )
    calls = []
    original = JAXTrainer.predict_on_batch
    monkeypatch.setattr(
        JAXTrainer, "predict_on_batch", lambda self, x: calls.append(1) or original(self, x)
    )
    fast = model.predict(images, verbose=0)
    assert calls == []  # Keras's per-call round trip was skipped
    np.testing.assert_allclose(fast, _keras_predict_on_batch(model, images), atol=1e-6)
    # A weight assigned between calls is seen: values are read per call.
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel.value * 2)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), _keras_predict_on_batch(model, images), atol=1e-6
    )
    # quantize() resets Keras's predict function, and so the compiled step;
    # LoRA adds variables, which retraces it.
    float_logits = model.predict(images, verbose=0)
    model.quantize("int8")
    quantized = model.predict(images, verbose=0)
    assert np.abs(quantized - float_logits).max() > 0
    np.testing.assert_allclose(quantized, _keras_predict_on_batch(model, images), atol=1e-6)
    head = model.get_layer("predictions")
    head.enable_lora(2)
    head.lora_kernel_b.assign(np.ones(head.lora_kernel_b.shape, "float32"))
    with_lora = model.predict(images, verbose=0)
    assert np.abs(with_lora - quantized).max() > 1e-3
    np.testing.assert_allclose(with_lora, _keras_predict_on_batch(model, images), atol=1e-5)
    calls.clear()
    model.compile(jit_compile=False)  # then Keras's own predict_on_batch
    model.predict(images[:1], verbose=0)
    assert calls == [1]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's predict step")
def test_jax_predict_writes_back_the_state_the_step_changes(images):
    class CountCalls(keras.layers.Layer):
        def build(self, input_shape):
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

        def call(self, x):
            self.count.assign(self.count + 1.0)
            return x

    class Counting(RuntimeMixin, keras.Model):
        pass

    inputs = keras.Input((32, 32, 3))
    model = Counting(inputs, CountCalls()(inputs))
    model.predict(images, batch_size=2, verbose=0)  # 3 batches
    assert float(model.layers[-1].count.value) == 3.0


def test_pinned_private_openvino_trainer_api():
    """Keras 3.15's OpenVINO trainer: what runtime/predict.py and runtime/export.py use."""
    pytest.importorskip("openvino")
    from keras.src.backend.openvino import trainer

    source = inspect.getsource(trainer.OpenVINOTrainer)
    for name in ("struct_params", "struct_outputs", "_output_mask_indices", "ov_device"):
        assert f"self.{name} =" in source, name
    for method in ("_get_compiled_model", "_parameterize_data"):
        parameters = inspect.signature(getattr(trainer.OpenVINOTrainer, method)).parameters
        assert list(parameters) == ["self", "data"]


def test_runtime_is_attached_in_one_place():
    for cls in (keras_cait.CaiTBackbone, keras_cait.CaiTImageClassifier):
        assert RuntimeMixin in cls.__bases__
        for name in ("predict", "export", "_resolve_auto_jit_compile", "fit"):
            assert name not in vars(cls), (cls, name)  # no override in models/
        for name in ("predict", "export", "_resolve_auto_jit_compile"):
            owners = [c for c in cls.__mro__ if name in vars(c)]
            if cls is keras_cait.CaiTImageClassifier and name == "predict":
                # TaskMixin's `predict` only preprocesses lists of photos.
                assert owners[0] is ImageListPredict
                owners = owners[1:]
            assert owners[0].__module__.startswith("keras_cait.runtime"), (cls, name)
