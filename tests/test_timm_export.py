"""`export_to_timm`: keras-cait models written in timm's format, loaded by
timm itself (`timm.create_model("local-dir:...", pretrained=True)`, imported
through tests/stubs) and by `from_preset`, and what timm cannot express.

The models: a preset (`cait_xxs24_224` from a local timm directory: timm's
config.json and the seeded recipe's weights), that preset at a custom image
shape (160, 96, 3), and a preset fine-tuned with a new 7-class head (the
tiny timm repo, one `fit` step)."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_cait
from keras_cait.convert import timm_export
from keras_cait.testing import seeded_state_dict
from keras_cait_base.errors import CaiTConfigError
from tests.support import TIMM, TINY_BACKBONE, to_numpy, variants
from tests.timm_support import import_timm, timm_logits

RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    """`cait_xxs24_224` as its timm Hub repo holds it: timm's config.json and
    a model.safetensors of the seeded recipe."""
    directory = tmp_path_factory.mktemp("cait_xxs24_224")
    shutil.copyfile(TIMM / "configs" / "cait_xxs24_224.json", directory / "config.json")
    info = variants()["cait_xxs24_224"]
    save_file(seeded_state_dict(info["state_dict"], info["seed"]), directory / "model.safetensors")
    return str(directory)


@pytest.fixture(scope="module")
def preset_model(preset_dir):
    return keras_cait.CaiTImageClassifier.from_preset(preset_dir)


def _images(shape, count=2, seed=0):
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype("float32")


def _relative_error(keras_logits, timm_output):
    return float(np.abs(keras_logits - timm_output).max() / np.abs(timm_output).max())


def _assert_weights_equal(model, reloaded):
    assert [w.path for w in model.weights] == [w.path for w in reloaded.weights]
    for a, b in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


def _round_trip(model, directory, **kwargs):
    """Exports `model`, checks timm's logits and `from_preset`'s weights;
    returns the written config.json and the relative logit error."""
    timm_export.export_to_timm(model, directory, **kwargs)
    assert sorted(os.listdir(directory)) == ["README.md", "config.json", "model.safetensors"]
    images = _images(model.backbone.image_shape)
    error = _relative_error(to_numpy(model(images)), timm_logits(directory, images))
    # Shown with `pytest -s`: the figure the README quotes.
    print(f"round trip {os.path.basename(directory)} on {keras.config.backend()}: {error:.2e}")
    assert error < RELATIVE_TOLERANCE, error
    _assert_weights_equal(model, keras_cait.CaiTImageClassifier.from_preset(directory))
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def test_preset_round_trip(preset_dir, preset_model, tmp_path):
    config = _round_trip(preset_model, str(tmp_path / "preset"))
    assert config["architecture"] == "cait_xxs24_224"
    assert config["num_classes"] == 1000
    # Only timm's own `save_for_hf` keywords: the architecture says the rest.
    assert set(config["model_args"]) == {"img_size", "in_chans", "num_classes", "global_pool"}
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ([3, 224, 224], 1.0, "bicubic")
    # The weights are timm's own tensors, bit for bit.
    np.testing.assert_equal(
        load_file(tmp_path / "preset" / "model.safetensors"),
        load_file(os.path.join(preset_dir, "model.safetensors")),
    )


def test_custom_shape_round_trip(preset_model, tmp_path):
    model = keras_cait.with_image_shape(preset_model, (160, 96, 3))
    config = _round_trip(model, str(tmp_path / "custom"))
    assert config["model_args"]["img_size"] == [160, 96]
    assert config["pretrained_cfg"]["input_size"] == [3, 160, 96]
    timm = import_timm()
    assert timm.create_model(f"local-dir:{tmp_path / 'custom'}").pos_embed.shape == (1, 60, 192)


def test_finetuned_round_trip_with_label_names(tmp_path):
    model = keras_cait.CaiTImageClassifier.from_preset(
        str(TIMM / "tiny_token_head"), num_classes=7
    )
    head_before = to_numpy(model.output_dense.kernel)
    raw = np.random.default_rng(0).uniform(0, 255, (4, 40, 40, 3)).astype("float32")
    model.fit(raw, np.array([0, 3, 6, 2]), epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(head_before, to_numpy(model.output_dense.kernel))
    names = [f"class {i}" for i in range(7)]
    config = _round_trip(model, str(tmp_path / "finetuned"), label_names=names)
    assert (config["num_classes"], config["label_names"]) == (7, names)
    assert config["model_args"]["num_classes"] == 7
    timm = import_timm()
    loaded = timm.create_model(f"local-dir:{tmp_path / 'finetuned'}", pretrained=True)
    assert loaded.pretrained_cfg["label_names"] == names
    # The exported folder, as a preset, carries its names to the next export.
    reloaded = keras_cait.CaiTImageClassifier.from_preset(str(tmp_path / "finetuned"))
    assert reloaded.label_names == names
    again = timm_export.timm_config(reloaded)
    assert again["label_names"] == names
    card = (tmp_path / "finetuned" / "README.md").read_text()
    assert "7 classes (class 0, class 1" in card and "local-dir:" in card


def test_backbone_and_avg_pooling(tmp_path):
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    timm_export.export_to_timm(backbone, tmp_path / "backbone")
    images = _images((32, 32, 3))
    # timm's headless model returns the pooled class token.
    tokens = to_numpy(backbone(images))
    error = _relative_error(tokens[:, 0], timm_logits(tmp_path / "backbone", images))
    assert error < RELATIVE_TOLERANCE
    _assert_weights_equal(backbone, keras_cait.CaiTBackbone.from_preset(str(tmp_path / "backbone")))

    classifier = keras_cait.CaiTImageClassifier(
        keras_cait.CaiTBackbone(**TINY_BACKBONE), num_classes=3, pooling="avg", dropout=0.1
    )
    config = _round_trip(classifier, str(tmp_path / "avg"))
    assert config["global_pool"] == "avg" and config["model_args"]["drop_rate"] == 0.1


def test_lora_is_refused_unless_merged(tmp_path):
    classifier = keras_cait.CaiTImageClassifier(keras_cait.CaiTBackbone(**TINY_BACKBONE), num_classes=3)
    classifier.backbone.enable_lora(2)
    for variable in classifier.backbone.weights:
        if "lora_kernel" in variable.path:  # adapters that change the outputs
            variable.assign(np.full(variable.shape, 0.05, "float32"))
    with pytest.raises(CaiTConfigError, match="merge_lora=True"):
        timm_export.export_to_timm(classifier, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    timm_export.export_to_timm(classifier, tmp_path / "merged", merge_lora=True)
    images = _images((32, 32, 3))
    error = _relative_error(to_numpy(classifier(images)), timm_logits(tmp_path / "merged", images))
    assert error < RELATIVE_TOLERANCE


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.quantize("int8"), "quantized"),
        (lambda m: setattr(m, "activation", "softmax"), "logits"),
        (lambda m: setattr(m.preprocessor.image_converter, "image_size", (64, 64)), "image_size"),
    ],
)
def test_refuses_what_timm_cannot_express(change, message, tmp_path):
    classifier = keras_cait.CaiTImageClassifier(
        keras_cait.CaiTBackbone(**TINY_BACKBONE),
        num_classes=3,
        preprocessor=keras_cait.CaiTImageClassifierPreprocessor(
            keras_cait.CaiTImageConverter(image_size=32)
        ),
    )
    change(classifier)
    with pytest.raises(CaiTConfigError, match=message):
        timm_export.export_to_timm(classifier, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_refuses_bad_arguments(tmp_path):
    epsilon = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_norm_epsilon=1e-5)
    with pytest.raises(CaiTConfigError, match="layer_norm_epsilon"):
        timm_export.export_to_timm(epsilon, tmp_path / "out")
    classifier = keras_cait.CaiTImageClassifier(keras_cait.CaiTBackbone(**TINY_BACKBONE), num_classes=3)
    with pytest.raises(CaiTConfigError, match="has 2 names; the model has num_classes=3"):
        timm_export.export_to_timm(classifier, tmp_path / "out", label_names=["a", "b"])
    with pytest.raises(CaiTConfigError, match=r"label_names\[1\]"):
        timm_export.export_to_timm(classifier, tmp_path / "out", label_names=["a", 2, "c"])
    with pytest.raises(CaiTConfigError, match="CaiTBackbone or"):
        timm_export.export_to_timm(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        timm_export.export_to_timm(classifier, tmp_path / "exists")
    assert sorted(os.listdir(tmp_path)) == ["exists"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(timm_export, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        timm_export.export_to_timm(keras_cait.CaiTBackbone(**TINY_BACKBONE), tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_public_api():
    assert keras_cait.export_to_timm is timm_export.export_to_timm
