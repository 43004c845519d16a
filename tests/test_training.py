"""Training: `fit` learns; dropout and drop path act only in training."""

import keras
import numpy as np

import keras_cait
from tests.support import TINY_BACKBONE, to_numpy


def test_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 3, size=16)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    classifier = keras_cait.CaiTImageClassifier(backbone, num_classes=3)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = classifier.fit(images, labels, epochs=6, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] * 0.8


def test_dropout_and_drop_path_only_in_training_and_not_in_class_attention():
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, dropout_rate=0.3, attention_dropout=0.3,
                                       drop_path_rate=0.3, layer_scale_init_value=1.0)
    for i in range(backbone.num_class_attention_layers):
        for layer in backbone.get_layer(f"class_attention_block_{i}")._flatten_layers():
            assert not isinstance(layer, keras_cait.DropPath)
            if isinstance(layer, keras.layers.Dropout):
                assert layer.rate == 0.0, layer.path
    # Drop path is the same (constant) in every self-attention block.
    rates = {backbone.get_layer(f"self_attention_block_{i}").drop_path_1.rate
             for i in range(backbone.num_layers)}
    assert rates == {0.3}
    classifier = keras_cait.CaiTImageClassifier(backbone, num_classes=3, dropout=0.3)
    images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    first = to_numpy(classifier(images, training=False))
    np.testing.assert_array_equal(to_numpy(classifier(images, training=False)), first)
    np.testing.assert_allclose(to_numpy(classifier.predict(images, verbose=0)), first, atol=1e-5)
    assert not np.allclose(to_numpy(classifier(images, training=True)), first, atol=1e-4)
