"""Preset files, the registry, and `from_preset` on local directories
(no Hugging Face Hub involved; see test_presets_hub.py for `hf://`)."""

import json
import shutil

import keras_hub
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_cait
from keras_cait.convert.timm_config import (
    TIMM_ARCHITECTURES,
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
)
from keras_cait.loading import loader
from keras_cait_base import registry
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.files import SHA256_PATTERN
from keras_cait_base.schema import (
    BACKBONE_DEFAULTS,
    INTERPOLATIONS,
    check_backbone_config,
)
from tests.support import TIMM, TINY_BACKBONE, expected, to_numpy, variants

TINY = TIMM / "tiny_token_head"
HEADLESS = TIMM / "tiny_avg_headless"
STATE = load_file(TINY / "model.safetensors")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test goes online."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


# --- the preset files -------------------------------------------------------


PRESET_KEYS = dict(
    top=["architecture", "description", "imagenet_top1", "license", "name",
         "num_params", "preprocessing", "weights"],
    weights=["format", "sha256", "source"],
    preprocessing=["crop_pct", "image_size", "interpolation", "mean", "std"],
)


def test_every_preset_file_matches_the_schema_and_timm():
    """The shipped JSON files (checked here, not at import) against the schema
    (docs/presets.md) and timm's configs; hyper-parameters come from the architecture."""
    files = sorted(registry.PRESETS_DIR.glob("*.json"))
    assert [f.stem for f in files] == sorted(TIMM_ARCHITECTURES)
    counts = variants()
    for name in (path.stem for path in files):
        preset = registry.get_preset(name)
        assert sorted(preset) == PRESET_KEYS["top"], name
        for part in ("weights", "preprocessing"):
            assert sorted(preset[part]) == PRESET_KEYS[part], (name, part)
        assert preset["name"] == name
        assert preset["description"].strip() and "\n" not in preset["description"]
        assert preset["weights"]["format"] == "timm"
        sha256 = preset["weights"]["sha256"]
        assert sha256 is None or SHA256_PATTERN.fullmatch(sha256)
        backbone, head = loader.model_arguments(name)
        # Every backbone argument; the input layout is keras.config's (None).
        assert sorted(backbone) == sorted(BACKBONE_DEFAULTS), name
        assert backbone["data_format"] is None
        assert check_backbone_config(backbone, name) == backbone
        # The architecture's arguments build what timm's config.json builds.
        timm = json.loads((TIMM / "configs" / f"{name}.json").read_text())
        arguments = resolve_timm_arguments(timm["architecture"], timm["model_args"])
        assert backbone == backbone_kwargs_from_timm(arguments), name
        assert head == classifier_kwargs_from_timm(arguments), name
        assert preset["architecture"] == timm["architecture"] == name
        cfg, prep = timm["pretrained_cfg"], preset["preprocessing"]
        assert prep["image_size"] == cfg["input_size"][1:]
        assert prep["image_size"] == list(backbone["image_shape"][:2])
        assert prep["crop_pct"] == cfg["crop_pct"]
        assert prep["interpolation"] == cfg["interpolation"] in INTERPOLATIONS
        assert prep["mean"] == cfg["mean"] and prep["std"] == cfg["std"]
        assert head["num_classes"] == cfg["num_classes"]
        assert preset["license"] == cfg["license"]
        assert preset["num_params"] == counts[name]["num_params"]
        assert preset["weights"]["source"] == f"hf://timm/{name}.fb_dist_in1k"
        assert 70 < preset["imagenet_top1"] < 90


def test_presets_are_registered_everywhere():
    names = set(TIMM_ARCHITECTURES)
    assert set(keras_cait.list_presets()) == names
    assert set(keras_cait.CaiTBackbone.presets) == names
    assert set(keras_cait.CaiTImageClassifier.presets) == names
    assert names <= set(keras_hub.models.ImageClassifier.presets)
    metadata = keras_cait.CaiTBackbone.presets["cait_s36_384"]["metadata"]
    assert metadata["params"] == 68366632 and metadata["imagenet_top1"] == 85.46


def test_unknown_preset_lists_and_suggests():
    with pytest.raises(CaiTConfigError) as info:
        keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_244")
    message = str(info.value)
    assert "'cait_xxs24_244'" in message
    assert "Did you mean 'cait_xxs24_224'?" in message
    assert all(name in message for name in TIMM_ARCHITECTURES)


@pytest.mark.openvino
def test_presets_from_the_shipped_json_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr("keras_cait_base.io.hub.download_file", no_network)
    monkeypatch.setattr("keras_cait_base.io.hub.download_repo", no_network)
    model = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224", load_weights=False)
    assert model.count_params() == registry.get_preset("cait_xxs24_224")["num_params"]
    assert model.backbone.num_layers == 24 and model.num_classes == 1000
    converter = model.preprocessor.image_converter
    assert tuple(converter.image_size) == (224, 224)
    assert converter.crop_pct == 1.0 and converter.interpolation == "bicubic"
    converter = keras_cait.CaiTImageConverter.from_preset("cait_xs24_384")
    assert tuple(converter.image_size) == (384, 384)
    preprocessor = keras_cait.CaiTImageClassifierPreprocessor.from_preset("cait_m48_448")
    assert tuple(preprocessor.image_converter.image_size) == (448, 448)


# --- timm-format local directories ------------------------------------------


@pytest.mark.openvino
def test_local_timm_directories_reproduce_timm_through_keras_hub_base_classes():
    ref = expected("tiny_token_head")
    model = keras_hub.models.ImageClassifier.from_preset(str(TINY))
    assert isinstance(model, keras_cait.CaiTImageClassifier)
    np.testing.assert_allclose(to_numpy(model(ref["images"])), ref["logits"], atol=1e-4)
    # The backbone alone gets the same (checked) weights, without the head.
    backbone = keras_hub.models.Backbone.from_preset(str(TINY))
    assert isinstance(backbone, keras_cait.CaiTBackbone)
    _assert_same_weights(backbone.weights, model.backbone.weights)
    ref = expected("tiny_avg_headless")
    model = keras_cait.CaiTImageClassifier.from_preset(str(HEADLESS))
    assert model.num_classes == 0 and model.pooling == "avg"
    np.testing.assert_allclose(to_numpy(model(ref["images"])), ref["pre_logits"], atol=1e-4)
    # Other timm architectures still reach KerasHub's own loader.
    from keras_hub.src.utils.timm.preset_loader import TimmPresetLoader

    with pytest.raises(ValueError, match="no converter for timm models"):
        TimmPresetLoader("x", {"architecture": "swin_tiny"})


def test_new_head_dtype_and_image_shape_pass_through():
    pretrained = keras_cait.CaiTImageClassifier.from_preset(str(TINY))
    model = keras_cait.CaiTImageClassifier.from_preset(str(TINY), num_classes=3, name="small")
    assert model.output_dense.kernel.shape == (48, 3) and model.name == "small"
    _assert_same_weights(model.backbone.weights, pretrained.backbone.weights)
    # A backbone of the caller's stays untouched; the head is timm's.
    own = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    before = [to_numpy(w).copy() for w in own.weights]
    custom = keras_cait.CaiTImageClassifier.from_preset(str(TINY), backbone=own)
    assert custom.backbone is own
    _assert_same_weights(own.weights, before)
    _assert_same_weights([custom.output_dense.kernel], [pretrained.output_dense.kernel])
    half = keras_cait.CaiTBackbone.from_preset(str(TINY), dtype="bfloat16")
    assert half.dtype_policy.name == "bfloat16"
    np.testing.assert_allclose(
        to_numpy(half.weights[0]).astype("float32"),
        to_numpy(pretrained.backbone.weights[0]),
        atol=1e-2,
    )
    # 32x32 -> 48x48 (the resampled weights: test_resample.py), the converter follows.
    wider = keras_cait.CaiTImageClassifier.from_preset(str(TINY), image_shape=(48, 48, 3))
    assert tuple(wider.preprocessor.image_converter.image_size) == (48, 48)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_load_as_load_timm_state_dict(tmp_path, dtype):
    """float16/bfloat16 files (`safe_open` with `ml_dtypes`) load as `load_timm_state_dict`."""
    cast = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    state = {k: v.astype(cast) for k, v in STATE.items()}
    repo = shutil.copytree(TINY, tmp_path / "repo", ignore=shutil.ignore_patterns("*.safetensors"))
    # `load_weights=False` needs no weights file.
    reference = keras_cait.CaiTImageClassifier.from_preset(str(repo), load_weights=False)
    keras_cait.load_timm_state_dict(reference, state)
    save_file(state, str(repo / "model.safetensors"))
    model = keras_cait.CaiTImageClassifier.from_preset(str(repo))
    _assert_same_weights(model.weights, reference.weights)
    head = to_numpy(model.output_dense.bias)
    np.testing.assert_array_equal(head, state["head.bias"].astype("float32"))


def test_save_to_preset_round_trip(tiny_preset, tiny_classifier):
    """conftest.py's `tiny_preset` (`save_to_preset`), loaded back as `tiny_classifier`."""
    ref = expected("tiny_token_head")
    assert isinstance(tiny_classifier.preprocessor, keras_cait.CaiTImageClassifierPreprocessor)
    np.testing.assert_allclose(to_numpy(tiny_classifier(ref["images"])), ref["logits"], atol=1e-4)
    backbone = keras_cait.CaiTBackbone.from_preset(tiny_preset)
    np.testing.assert_allclose(to_numpy(backbone(ref["images"])), ref["features"], atol=1e-4)
    fresh = keras_cait.CaiTImageClassifier.from_preset(tiny_preset, num_classes=2)
    assert fresh.output_dense.kernel.shape == (48, 2)
    # Another image_shape (the resampled weights: test_resample.py): the converter follows.
    wider = keras_cait.CaiTImageClassifier.from_preset(tiny_preset, image_shape=(48, 48, 3))
    assert tuple(wider.preprocessor.image_converter.image_size) == (48, 48)


# --- predictions and the KerasHub version ------------------------------------


@pytest.mark.openvino
def test_decode_predictions():
    logits = np.zeros((2, 1000), "float32")
    logits[0, 281] = 5.0  # tabby
    logits[1, 817] = 3.0  # sports_car
    logits[1, 281] = 2.0
    decoded = keras_cait.decode_predictions(logits, top=2)
    assert [name for name, _ in decoded[0]][0] == "tabby"
    assert [name for name, _ in decoded[1]] == ["sports_car", "tabby"]
    probability = np.exp(5.0) / (np.exp(5.0) + 999)
    np.testing.assert_allclose(decoded[0][0][1], probability, rtol=1e-5)
    with pytest.raises(CaiTConfigError, match=r"\(batch, 1000\)"):
        keras_cait.decode_predictions(np.zeros((1, 10)))


def test_keras_hub_dispatch_is_version_pinned(monkeypatch):
    from keras_cait.loading import keras_hub_dispatch

    assert keras_hub_dispatch.install()  # idempotent on the checked version
    monkeypatch.setattr(keras_hub, "__version__", "0.40.0")
    with pytest.warns(UserWarning, match="KerasHub 0.40.0 is not a version"):
        assert keras_hub_dispatch.install() is False
