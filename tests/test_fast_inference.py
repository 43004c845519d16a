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
