"""CaiTBackbone and CaiTImageClassifier: construction and validation (output shapes and
config round trips: test_keras_hub_harness.py; the tokens and pooling: test_parity.py)."""

import inspect

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait_base import schema
from tests.support import TINY_BACKBONE, to_numpy

IMAGES = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")


def _backbone(**overrides):
    return keras_cait.CaiTBackbone(**{**TINY_BACKBONE, **overrides})


@pytest.mark.parametrize(
    "override, match",
    [
        ({"image_shape": (30, 32, 3)}, "height .*divisible by `patch_size`"),
        ({"image_shape": (32, 36, 3)}, "width .*divisible by `patch_size`"),
        ({"hidden_dim": 50}, "`hidden_dim` \\(50\\) must be divisible by `num_heads`"),
        ({"num_layers": 0}, "`num_layers` must be a positive integer"),
        ({"num_heads": -1}, "`num_heads` must be a positive integer"),
        ({"num_class_attention_layers": 0}, "`num_class_attention_layers`"),
        ({"patch_size": 0}, "`patch_size` must be a positive integer"),
        ({"mlp_ratio": 0}, "`mlp_ratio` must be positive"),
        ({"image_shape": (32, 32)}, "`image_shape` must be"),
    ],
)
def test_backbone_rejects_bad_arguments(override, match):
    with pytest.raises(ValueError, match=match):
        _backbone(**override)


@pytest.mark.parametrize(
    "kwargs, match", [(dict(pooling="gap"), "`pooling`"), (dict(num_classes=-1), "`num_classes`")]
)
def test_classifier_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_cait.CaiTImageClassifier(_backbone(), **{"num_classes": 3, **kwargs})


@pytest.mark.parametrize("activation, from_logits", [(None, True), ("softmax", False)])
def test_default_compile_follows_activation_and_call_returns_one_tensor(activation, from_logits):
    classifier = keras_cait.CaiTImageClassifier(_backbone(), num_classes=3, activation=activation)
    assert isinstance(classifier.loss, keras.losses.SparseCategoricalCrossentropy)
    assert classifier.loss.from_logits is from_logits
    # `__call__` never preprocesses and returns one tensor.
    outputs = classifier(IMAGES)
    assert not isinstance(outputs, (list, tuple, dict))
    assert tuple(outputs.shape) == (2, 3)
    if activation == "softmax":
        np.testing.assert_allclose(to_numpy(outputs).sum(-1), 1.0, atol=1e-5)


def test_the_schema_lists_the_constructors_arguments():
    parameters = inspect.signature(keras_cait.CaiTBackbone.__init__).parameters
    defaults = {
        name: None if p.default is inspect.Parameter.empty else p.default
        for name, p in parameters.items()
        if name not in ("self", "dtype", "kwargs")
    }
    assert defaults == schema.BACKBONE_DEFAULTS
    parameters = inspect.signature(keras_cait.CaiTImageClassifier.__init__).parameters
    assert tuple(parameters)[1:-1] == schema.CLASSIFIER_ARGUMENTS
