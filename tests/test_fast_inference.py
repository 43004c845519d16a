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

    # Keras's loop does not go through `predict_on_batch`; the fast path does.
    monkeypatch.setattr(model, "predict_on_batch", refuse)
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
