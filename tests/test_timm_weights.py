"""Loading timm state dicts: precise errors that quote timm's keys."""

import re
import warnings

import numpy as np
import pytest

import keras_cait
from keras_cait.convert.timm_config import resolve_timm_arguments
from tests.support import build_from_timm_config, timm_config, timm_state_dict, to_numpy


@pytest.fixture(scope="module")
def state_dict():
    return timm_state_dict("tiny_token_head")


@pytest.fixture
def classifier():
    return build_from_timm_config(timm_config("tiny_token_head"))


def test_missing_tensor_is_named(classifier, state_dict):
    broken = dict(state_dict)
    del broken["blocks.1.attn.proj_l.weight"]
    with pytest.raises(keras_cait.CaiTWeightsError, match=re.escape("missing tensors ['blocks.1.attn.proj_l.weight']")):
        keras_cait.load_timm_state_dict(classifier, broken)


def test_unexpected_tensor_is_named(classifier, state_dict):
    broken = {**state_dict, "dist_token": np.zeros((1, 1, 48), "float32")}
    with pytest.raises(ValueError, match=re.escape("unexpected tensors ['dist_token']")):
        keras_cait.load_timm_state_dict(classifier, broken)


def test_misshaped_tensor_quotes_both_shapes(classifier, state_dict):
    broken = {**state_dict, "blocks.0.attn.qkv.weight": np.zeros((48, 144), "float32")}
    with pytest.raises(
        keras_cait.CaiTWeightsError,
        match=re.escape("tensor 'blocks.0.attn.qkv.weight' has shape (48, 144); the model expects (144, 48)"),
    ):
        keras_cait.load_timm_state_dict(classifier, broken)


def test_failed_load_leaves_the_model_untouched(classifier, state_dict):
    before = [to_numpy(w).copy() for w in classifier.weights]
    broken = {**state_dict, "norm.bias": np.zeros((3,), "float32")}
    with pytest.raises(keras_cait.CaiTWeightsError):
        keras_cait.load_timm_state_dict(classifier, broken)
    for old, new in zip(before, classifier.weights):
        np.testing.assert_array_equal(old, to_numpy(new))


def test_non_finite_refused_unless_allowed(classifier, state_dict):
    broken = dict(state_dict)
    broken["head.bias"] = np.full((10,), np.nan, "float32")
    with pytest.raises(keras_cait.CaiTWeightsError, match="'head.bias' contains NaN"):
        keras_cait.load_timm_state_dict(classifier, broken)
    keras_cait.load_timm_state_dict(classifier, broken, allow_non_finite=True)


def test_float64_is_converted_with_a_warning(classifier, state_dict):
    converted = {key: value.astype(np.float64) for key, value in state_dict.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_cait.load_timm_state_dict(classifier, converted)
    assert any("float64" in str(w.message) for w in caught)
    assert classifier.weights[0].dtype == "float32"


def test_integer_tensor_refused(classifier, state_dict):
    broken = {**state_dict, "cls_token": np.zeros((1, 1, 48), "int32")}
    with pytest.raises(keras_cait.CaiTWeightsError, match="'cls_token' has dtype int32"):
        keras_cait.load_timm_state_dict(classifier, broken)


def test_headless_classifier_takes_no_head(state_dict):
    config = timm_config("tiny_token_head")
    config["model_args"]["num_classes"] = 0
    headless = build_from_timm_config(config)
    with pytest.raises(keras_cait.CaiTWeightsError, match="unexpected tensors \\['head.bias', 'head.weight'\\]"):
        keras_cait.load_timm_state_dict(headless, state_dict)
    trimmed = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    keras_cait.load_timm_state_dict(headless, trimmed)
    keras_cait.load_timm_state_dict(headless.backbone, trimmed)


def test_timm_config_rejects_unknown_keyword_and_wrong_type():
    with pytest.raises(keras_cait.CaiTConfigError, match="`model_args.act_layer` is not"):
        resolve_timm_arguments("cait_xxs24_224", {"act_layer": "relu"})
    with pytest.raises(keras_cait.CaiTConfigError, match="`model_args.depth` must be int"):
        resolve_timm_arguments("cait_xxs24_224", {"depth": "24"})
    with pytest.raises(keras_cait.CaiTConfigError, match="'vit_base_patch16_224' is not a CaiT"):
        resolve_timm_arguments("vit_base_patch16_224")
