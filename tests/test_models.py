"""CaiTBackbone and CaiTImageClassifier: construction, validation, configs."""

import copy
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


@pytest.mark.parametrize("image_shape, grid", [((32, 32, 3), (4, 4)), ((16, 40, 3), (2, 5))])
def test_backbone_output_is_class_token_then_patches(image_shape, grid):
    backbone = _backbone(image_shape=image_shape)
    images = np.random.default_rng(0).standard_normal((2, *image_shape))
    assert to_numpy(backbone(images)).shape == (2, 1 + grid[0] * grid[1], 48)
    assert backbone.num_patches == grid[0] * grid[1] and backbone.grid_size == grid


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


def test_backbone_config_round_trip():
    backbone = _backbone(
        mlp_ratio=3.0, class_attention_mlp_ratio=2.0, use_qkv_bias=False,
        layer_scale_init_value=0.1, dropout_rate=0.1, attention_dropout=0.1,
        drop_path_rate=0.1, layer_norm_epsilon=1e-5,
    )
    config = backbone.get_config()
    clone = keras_cait.CaiTBackbone.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == backbone.count_params()
    clone.set_weights(backbone.get_weights())
    np.testing.assert_allclose(to_numpy(clone(IMAGES)), to_numpy(backbone(IMAGES)), atol=1e-6)


@pytest.mark.parametrize("pooling", ["token", "avg"])
def test_classifier_config_round_trip(pooling):
    classifier = keras_cait.CaiTImageClassifier(
        _backbone(), num_classes=7, pooling=pooling, activation="softmax", dropout=0.2
    )
    config = classifier.get_config()
    clone = keras_cait.CaiTImageClassifier.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    clone.set_weights(classifier.get_weights())
    outputs = to_numpy(classifier(IMAGES))
    assert outputs.shape == (2, 7)
    np.testing.assert_allclose(outputs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(to_numpy(clone(IMAGES)), outputs, atol=1e-6)


def test_pooling_selects_tokens():
    backbone = _backbone()
    tokens = to_numpy(backbone(IMAGES))
    for pooling, expected in (("token", tokens[:, 0]), ("avg", tokens[:, 1:].mean(1))):
        model = keras_cait.CaiTImageClassifier(backbone, num_classes=0, pooling=pooling)
        np.testing.assert_allclose(to_numpy(model(IMAGES)), expected, atol=1e-6)


@pytest.mark.parametrize("activation, from_logits", [(None, True), ("softmax", False)])
def test_default_compile_follows_activation_and_call_returns_one_tensor(activation, from_logits):
    classifier = keras_cait.CaiTImageClassifier(_backbone(), num_classes=3, activation=activation)
    assert isinstance(classifier.loss, keras.losses.SparseCategoricalCrossentropy)
    assert classifier.loss.from_logits is from_logits
    # `__call__` never preprocesses and returns one tensor.
    outputs = classifier(IMAGES)
    assert not isinstance(outputs, (list, tuple, dict))
    assert tuple(outputs.shape) == (2, 3)


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
