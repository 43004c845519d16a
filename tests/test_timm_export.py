"""`export_to_timm`: models written in timm's format, loaded by timm itself (through
tests/stubs) and by `from_preset`, and what timm cannot express."""

import json
import os
from unittest import mock

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

import keras_cait
from keras_cait.convert import timm_export
from keras_cait_base.errors import CaiTConfigError
from tests.hf_cache import write_seeded_timm_repo
from tests.support import TIMM, TINY_BACKBONE, to_numpy
from tests.timm_support import import_timm, timm_logits

RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    return str(write_seeded_timm_repo(tmp_path_factory.mktemp("cait_xxs24_224")))


@pytest.fixture(scope="module")
def preset_model(preset_dir):
    return keras_cait.CaiTImageClassifier.from_preset(preset_dir)


def _tiny_classifier(**kwargs):
    return keras_cait.CaiTImageClassifier(keras_cait.CaiTBackbone(**TINY_BACKBONE), num_classes=3,
                                          **kwargs)


def _relative_error(model, directory, take=lambda outputs: outputs):
    """Largest |keras - timm| over largest |timm|, on two random images."""
    shape = getattr(model, "backbone", model).image_shape
    images = np.random.default_rng(0).standard_normal((2, *shape)).astype("float32")
    timm_output = timm_logits(directory, images)
    error = np.abs(take(to_numpy(model(images))) - timm_output).max()
    return float(error / np.abs(timm_output).max())


def _round_trip(model, directory, take=lambda outputs: outputs, **kwargs):
    """Exports; checks timm's outputs and `from_preset`'s weights; returns config.json."""
    timm_export.export_to_timm(model, directory, **kwargs)
    assert sorted(os.listdir(directory)) == ["README.md", "config.json", "model.safetensors"]
    error = _relative_error(model, directory, take)
    # Shown with `pytest -s`: the figure the README quotes.
    print(f"round trip {os.path.basename(directory)} on {keras.config.backend()}: {error:.2e}")
    assert error < RELATIVE_TOLERANCE, error
    reloaded = type(model).from_preset(directory)
    assert [w.path for w in model.weights] == [w.path for w in reloaded.weights]
    for a, b in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def test_preset_round_trip(preset_dir, preset_model, tmp_path):
    config = _round_trip(preset_model, str(tmp_path / "preset"))
    assert config["architecture"] == "cait_xxs24_224" and config["num_classes"] == 1000
    # Only timm's own `save_for_hf` keywords: the architecture says the rest.
    assert set(config["model_args"]) == {"img_size", "in_chans", "num_classes", "global_pool"}
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ([3, 224, 224], 1.0, "bicubic")
    # The weights are timm's own tensors, bit for bit.
    np.testing.assert_equal(load_file(tmp_path / "preset" / "model.safetensors"),
                            load_file(os.path.join(preset_dir, "model.safetensors")))


def test_custom_shape_round_trip(preset_model, tmp_path):
    model = keras_cait.with_image_shape(preset_model, (160, 96, 3))
    config = _round_trip(model, str(tmp_path / "custom"))
    assert config["model_args"]["img_size"] == [160, 96]
    assert config["pretrained_cfg"]["input_size"] == [3, 160, 96]


def test_finetuned_round_trip_with_label_names(tmp_path):
    model = keras_cait.CaiTImageClassifier.from_preset(str(TIMM / "tiny_token_head"), num_classes=7)
    head_before = to_numpy(model.output_dense.kernel)
    raw = np.random.default_rng(0).uniform(0, 255, (4, 40, 40, 3)).astype("float32")
    model.fit(raw, np.array([0, 3, 6, 2]), epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(head_before, to_numpy(model.output_dense.kernel))
    names = [f"class {i}" for i in range(7)]
    config = _round_trip(model, str(tmp_path / "finetuned"), label_names=names)
    assert (config["num_classes"], config["label_names"]) == (7, names)
    assert config["model_args"]["num_classes"] == 7
    loaded = import_timm().create_model(f"local-dir:{tmp_path / 'finetuned'}", pretrained=True)
    assert loaded.pretrained_cfg["label_names"] == names
    # The exported folder, as a preset, carries its names to the next export.
    reloaded = keras_cait.CaiTImageClassifier.from_preset(str(tmp_path / "finetuned"))
    assert reloaded.label_names == names
    assert timm_export.timm_config(reloaded)["label_names"] == names
    card = (tmp_path / "finetuned" / "README.md").read_text()
    for text in ("cait_xxs24_224", "7 classes (class 0, class 1", "bicubic", "crop_pct=1.0",
                 "local-dir:", "timm.create_model", "CaiTImageClassifier.from_preset"):
        assert text in card, text


def test_backbone_and_avg_pooling(tmp_path):
    # timm's headless model returns the pooled class token.
    _round_trip(keras_cait.CaiTBackbone(**TINY_BACKBONE), str(tmp_path / "backbone"),
                take=lambda tokens: tokens[:, 0])
    config = _round_trip(_tiny_classifier(pooling="avg", dropout=0.1), str(tmp_path / "avg"))
    assert config["global_pool"] == "avg" and config["model_args"]["drop_rate"] == 0.1


def test_lora_is_refused_unless_merged(tmp_path):
    classifier = _tiny_classifier()
    classifier.backbone.enable_lora(2)
    for variable in classifier.backbone.weights:
        if "lora_kernel" in variable.path:  # adapters that change the outputs
            variable.assign(np.full(variable.shape, 0.05, "float32"))
    with pytest.raises(CaiTConfigError, match="merge_lora=True"):
        timm_export.export_to_timm(classifier, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    timm_export.export_to_timm(classifier, tmp_path / "merged", merge_lora=True)
    assert _relative_error(classifier, tmp_path / "merged") < RELATIVE_TOLERANCE


@pytest.mark.parametrize("change, message", [
    (lambda m: m.quantize("int8"), "quantized"),
    (lambda m: setattr(m, "activation", "softmax"), "logits"),
    (lambda m: setattr(m.preprocessor.image_converter, "image_size", (64, 64)), "image_size"),
])
def test_refuses_what_timm_cannot_express(change, message, tmp_path):
    converter = keras_cait.CaiTImageConverter(image_size=32)
    classifier = _tiny_classifier(preprocessor=keras_cait.CaiTImageClassifierPreprocessor(converter))
    change(classifier)
    with pytest.raises(CaiTConfigError, match=message):
        timm_export.export_to_timm(classifier, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_refuses_bad_arguments_and_is_public(tmp_path):
    assert keras_cait.export_to_timm is timm_export.export_to_timm
    classifier = _tiny_classifier()
    (tmp_path / "exists").mkdir()
    for model, folder, names, error, message in [
        (classifier, "out", ["a", 2, "c"], CaiTConfigError, r"label_names\[1\]"),
        (keras.Sequential([keras.layers.Dense(2)]), "out", None, CaiTConfigError, "CaiTBackbone or"),
        (classifier, "exists", None, FileExistsError, "exists"),
    ]:
        with pytest.raises(error, match=message):
            timm_export.export_to_timm(model, tmp_path / folder, label_names=names)
    assert sorted(os.listdir(tmp_path)) == ["exists"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(timm_export, "save_file", mock.Mock(side_effect=OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        timm_export.export_to_timm(keras_cait.CaiTBackbone(**TINY_BACKBONE), tmp_path / "out")
    assert os.listdir(tmp_path) == []
