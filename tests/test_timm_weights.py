"""timm <-> keras-cait: checkpoint layout, keyword mapping, state-dict loading and its errors."""

import math
import re
import warnings

import numpy as np
import pytest

import keras_cait
from keras_cait.convert.timm_config import (
    TIMM_ARCHITECTURES,
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
    timm_arguments_from_keras,
)
from keras_cait.convert.timm_weights import model_weight_map
from keras_cait_base.schema import checkpoint_layout, keras_shape
from tests.support import (
    TINY_BACKBONE,
    build_from_timm_config,
    timm_config,
    timm_state_dict,
    to_numpy,
    variants,
)

WeightsError = keras_cait.CaiTWeightsError


@pytest.mark.parametrize("kwargs, num_classes", [
    (TINY_BACKBONE, 10),
    (dict(TINY_BACKBONE, use_qkv_bias=False, mlp_ratio=2.0), 7),
    (dict(TINY_BACKBONE, image_shape=(32, 48, 1), class_attention_mlp_ratio=3.0,
          num_class_attention_layers=1), 0),
])
def test_the_checkpoint_layout_is_the_models(kwargs, num_classes):
    """Every variable, and nothing else, has a layout entry of its (Keras) shape."""
    backbone = keras_cait.CaiTBackbone(**kwargs)
    model = (keras_cait.CaiTImageClassifier(backbone, num_classes=num_classes)
             if num_classes else backbone)
    entries = model_weight_map(model)
    assert len(entries) == len(model.weights)
    for tensor, variable in entries:
        assert keras_shape(tensor) == tuple(variable.shape), tensor.key
    assert [t for t, _ in entries] == checkpoint_layout(kwargs, num_classes)


def test_the_layout_gives_timm_keys_and_parameter_counts():
    config = timm_config("tiny_token_head")
    arguments = resolve_timm_arguments(config["architecture"], config["model_args"])
    layout = checkpoint_layout(backbone_kwargs_from_timm(arguments), 10)
    reference = timm_state_dict("tiny_token_head")
    assert {t.key: t.shape for t in layout} == {k: v.shape for k, v in reference.items()}
    for name in TIMM_ARCHITECTURES:
        arguments = resolve_timm_arguments(name)
        layout = checkpoint_layout(backbone_kwargs_from_timm(arguments), arguments["num_classes"])
        assert sum(math.prod(t.shape) for t in layout) == variants()[name]["num_params"]


@pytest.mark.parametrize("name", sorted(TIMM_ARCHITECTURES))
def test_timm_keywords_round_trip(name):
    arguments = resolve_timm_arguments(name, {"drop_rate": 0.1, "global_pool": "avg"})
    backbone = backbone_kwargs_from_timm(arguments)
    head = classifier_kwargs_from_timm(arguments)
    keywords = timm_arguments_from_keras(backbone, head)
    assert keywords == {k: arguments[k] for k in keywords}
    again = resolve_timm_arguments(name, keywords)
    assert backbone_kwargs_from_timm(again) == backbone
    assert classifier_kwargs_from_timm(again) == head


def test_keras_arguments_timm_cannot_express_are_refused():
    with pytest.raises(keras_cait.CaiTConfigError, match="layer_norm_epsilon"):
        timm_arguments_from_keras(dict(TINY_BACKBONE, layer_norm_epsilon=1e-5))
    keywords = timm_arguments_from_keras(dict(TINY_BACKBONE, image_shape=(32, 48, 3)))
    assert keywords["img_size"] == [32, 48] and keywords["in_chans"] == 3


@pytest.fixture(scope="module")
def state_dict():
    return timm_state_dict("tiny_token_head")


@pytest.fixture
def classifier():
    return build_from_timm_config(timm_config("tiny_token_head"))


@pytest.mark.parametrize("changes, error, message", [
    ({"blocks.1.attn.proj_l.weight": None}, WeightsError,
     "missing tensors ['blocks.1.attn.proj_l.weight']"),
    ({"dist_token": np.zeros((1, 1, 48), "float32")}, ValueError,
     "unexpected tensors ['dist_token']"),
    ({"blocks.0.attn.qkv.weight": np.zeros((48, 144), "float32")}, WeightsError,
     "tensor 'blocks.0.attn.qkv.weight' has shape (48, 144); the model expects (144, 48)"),
    ({"norm.bias": np.zeros((3,), "float32")}, WeightsError, "'norm.bias'"),
    ({"head.bias": np.full((10,), np.nan, "float32")}, WeightsError, "'head.bias' holds 10 NaN"),
    ({"cls_token": np.zeros((1, 1, 48), "int32")}, WeightsError, "'cls_token' has dtype int32"),
])
def test_bad_tensor_is_named_and_leaves_the_model_untouched(
    classifier, state_dict, changes, error, message
):
    broken = {k: v for k, v in {**state_dict, **changes}.items() if v is not None}
    before = [to_numpy(w).copy() for w in classifier.weights]
    with pytest.raises(error, match=re.escape(message)):
        keras_cait.load_timm_state_dict(classifier, broken)
    for old, new in zip(before, classifier.weights):
        np.testing.assert_array_equal(old, to_numpy(new))


def test_non_finite_allowed_and_float64_converted_with_a_warning(classifier, state_dict):
    keras_cait.load_timm_state_dict(
        classifier, {**state_dict, "head.bias": np.full((10,), np.nan, "float32")},
        allow_non_finite=True)
    assert np.isnan(to_numpy(classifier.output_dense.bias)).all()
    converted = {key: value.astype(np.float64) for key, value in state_dict.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_cait.load_timm_state_dict(classifier, converted)
    assert any("float64" in str(w.message) for w in caught)
    assert classifier.weights[0].dtype == "float32"


def test_headless_classifier_takes_no_head(state_dict):
    config = timm_config("tiny_token_head")
    config["model_args"]["num_classes"] = 0
    headless = build_from_timm_config(config)
    message = re.escape("unexpected tensors ['head.bias', 'head.weight']")
    with pytest.raises(WeightsError, match=message):
        keras_cait.load_timm_state_dict(headless, state_dict)
    trimmed = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    keras_cait.load_timm_state_dict(headless, trimmed)
    keras_cait.load_timm_state_dict(headless.backbone, trimmed)


def test_timm_config_rejects_unknown_keyword_and_wrong_type():
    with pytest.raises(keras_cait.CaiTConfigError, match="`model_args.act_layer` is not"):
        resolve_timm_arguments("cait_xxs24_224", {"act_layer": "relu"})
    with pytest.raises(keras_cait.CaiTConfigError, match="`model_args.depth` must be int"):
        backbone_kwargs_from_timm(resolve_timm_arguments("cait_xxs24_224", {"depth": "24"}))
    with pytest.raises(keras_cait.CaiTConfigError, match="'vit_base_patch16_224' is not a CaiT"):
        resolve_timm_arguments("vit_base_patch16_224")
