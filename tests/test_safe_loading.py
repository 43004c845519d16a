"""`keras_cait.load_model`: crafted `.keras` files are refused with a clear
keras-cait error and no side effect; intact files load exactly."""

import json
import zipfile

import h5py
import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.loading.safe_loading import check_model_config, load_model
from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from tests.support import TINY_BACKBONE, to_numpy

IMAGES = np.random.default_rng(3).standard_normal((1, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny classifier saved once: `(path, model)`."""
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=3)
    path = tmp_path_factory.mktemp("saved") / "cait.keras"
    model.save(path)
    return path, model


def members(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_archive(path, contents, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in contents.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def with_config(saved, tmp_path, edit):
    """A copy of the saved archive whose config.json went through `edit`."""
    contents = members(saved[0])
    config = json.loads(contents["config.json"])
    edit(config)
    contents["config.json"] = json.dumps(config).encode()
    return write_archive(tmp_path / "crafted.keras", contents)


def test_an_intact_file_loads_bit_identically(saved):
    path, model = saved
    restored = load_model(path, compile=False)
    assert isinstance(restored, keras_cait.CaiTImageClassifier)
    for a, b in zip(model.weights, restored.weights):
        assert a.path == b.path and a.dtype == b.dtype
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(restored(IMAGES)), to_numpy(model(IMAGES)))


def marker_lambda(marker):
    """A serialised lambda (marshalled bytecode) that creates `marker`."""
    with pytest.warns(UserWarning, match="lambda"):
        return keras.saving.serialize_keras_object(
            lambda x, m=str(marker): (__import__("pathlib").Path(m).touch(), x)[1]
        )


def hostile_objects(marker):
    """Serialised objects that would create `marker` (or worse) if loaded."""
    command = f"touch {marker}"
    return {
        "lambda": marker_lambda(marker),
        "lambda_layer": {
            "module": "keras.layers", "class_name": "Lambda",
            "config": {"function": marker_lambda(marker)}, "registered_name": None,
        },
        "os_system": {"module": "os", "class_name": "system",
                      "config": {"command": command}, "registered_name": None},
        "subprocess": {"module": "subprocess", "class_name": "Popen",
                       "config": {"args": ["touch", str(marker)]},
                       "registered_name": None},
        "os_function": {"module": "os", "class_name": "function",
                        "config": "system", "registered_name": "function"},
        "foreign_registered": {"module": "evil", "class_name": "Thing",
                               "config": {}, "registered_name": "evil>Thing"},
        "keras_non_modeling_api": {
            "module": "keras.utils", "class_name": "get_file",
            "config": {"fname": str(marker), "origin": "http://x"},
            "registered_name": None,
        },
        "keras_function_not_activation": {
            "module": "keras.src.utils.file_utils", "class_name": "function",
            "config": "rmtree", "registered_name": "function"},
        "tfsm_layer": {"module": "keras.layers", "class_name": "TFSMLayer",
                       "config": {"filepath": str(marker)}, "registered_name": None},
        "typespec": {"class_name": "__typespec__", "spec_name": "TensorSpec",
                     "module": "os", "registered_name": None, "config": []},
    }


@pytest.mark.parametrize("kind", sorted(hostile_objects("m")))
def test_hostile_objects_are_refused_without_side_effect(saved, tmp_path, kind):
    marker = tmp_path / "marker"
    hostile = hostile_objects(marker)[kind]

    def edit(config):
        config["config"]["activation"] = hostile

    path = with_config(saved, tmp_path, edit)
    with pytest.raises(CaiTUnsafeModelError) as info:
        load_model(path)
    assert "crafted.keras" in str(info.value)
    assert not marker.exists()


def test_refused_even_when_keras_unsafe_deserialization_is_enabled(saved, tmp_path):
    marker = tmp_path / "marker"

    def edit(config):
        config["config"]["activation"] = marker_lambda(marker)

    path = with_config(saved, tmp_path, edit)
    from keras.src.backend.common import global_state

    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(CaiTUnsafeModelError, match="Lambda"):
            load_model(path)
    finally:
        global_state.set_global_attribute("safe_mode_saving", None)
    assert not marker.exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_layers", 10**9, r"`num_layers` must be in \[1, 512\]"),
        ("hidden_dim", -48, "hidden_dim"),
        ("num_heads", "4", "`num_heads` must be int, got str"),
        ("image_shape", [10**6, 10**6, 3], "image_shape height"),
        ("image_shape", "32x32", "image_shape"),
        ("mlp_ratio", float("nan"), "mlp_ratio"),
        ("dropout_rate", 1.5, "dropout_rate"),
        ("use_qkv_bias", "yes", "use_qkv_bias"),
        ("evil_argument", 1, "unexpected arguments"),
        # Within every per-argument bound, but 512 layers of width 16384
        # would be ~1.6e12 parameters.
        ("__huge__", None, "parameters"),
    ],
)
def test_registered_class_with_hostile_arguments(saved, tmp_path, key, value, message):
    def edit(config):
        backbone = config["config"]["backbone"]["config"]
        if key == "__huge__":
            backbone.update(hidden_dim=16384, num_layers=512, num_heads=16)
        else:
            backbone[key] = value

    path = with_config(saved, tmp_path, edit)
    with pytest.raises(CaiTUnsafeModelError, match=message) as info:
        load_model(path)
    assert "CaiTBackbone" in str(info.value) and "crafted.keras" in str(info.value)


@pytest.mark.parametrize(
    "key, value", [("num_classes", 10**12), ("num_classes", 2.5),
                   ("pooling", "max"), ("dropout", -1)])
def test_classifier_with_hostile_arguments(saved, tmp_path, key, value):
    def edit(config):
        config["config"][key] = value

    path = with_config(saved, tmp_path, edit)
    with pytest.raises(CaiTUnsafeModelError, match=key):
        load_model(path)


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/abs/evil.txt", "assets/../../evil.txt",
             "C:/evil.txt", "payload.py"])
def test_unsafe_member_names_are_refused(saved, tmp_path, name):
    contents = members(saved[0])
    contents[name] = b"print('owned')"
    path = write_archive(tmp_path / "members.keras", contents)
    with pytest.raises(CaiTUnsafeModelError, match="member"):
        load_model(path)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_decompression_bomb_is_refused(saved, tmp_path):
    contents = members(saved[0])
    contents["assets/bomb.bin"] = b"\0" * (64 * 2**20)
    path = write_archive(tmp_path / "bomb.keras", contents, zipfile.ZIP_DEFLATED)
    with pytest.raises(CaiTUnsafeModelError, match="decompression bomb"):
        load_model(path)


def test_hdf5_external_link_is_refused(saved, tmp_path):
    contents = members(saved[0])
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(contents["model.weights.h5"])
    with h5py.File(weights, "a") as h5:
        h5["stolen"] = h5py.ExternalLink("/etc/passwd", "/")
    contents["model.weights.h5"] = weights.read_bytes()
    path = write_archive(tmp_path / "link.keras", contents)
    with pytest.raises(CaiTUnsafeModelError, match="ExternalLink"):
        load_model(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_archive(saved, tmp_path, fraction):
    data = saved[0].read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CaiTWeightsError, match="truncated.keras.*truncated"):
        load_model(path)


def test_truncated_weights_member_gets_a_clear_weights_error(saved, tmp_path):
    """Keras 3.15 reports this file with a bare h5py `OSError` (the issue
    quotes `UnboundLocalError: weights_store` from other code paths)."""
    contents = members(saved[0])
    contents["model.weights.h5"] = contents["model.weights.h5"][:5000]
    path = write_archive(tmp_path / "short_weights.keras", contents)
    with pytest.raises(CaiTWeightsError, match="model.weights.h5.*truncated"):
        load_model(path)


def test_weights_of_another_model_are_a_weights_error(saved, tmp_path):
    keras.utils.set_random_seed(1)
    other = keras_cait.CaiTImageClassifier(
        keras_cait.CaiTBackbone(**{**TINY_BACKBONE, "num_layers": 1}), num_classes=3
    )
    other_path = tmp_path / "other.keras"
    other.save(other_path)
    contents = members(saved[0])
    contents["model.weights.h5"] = members(other_path)["model.weights.h5"]
    path = write_archive(tmp_path / "mismatch.keras", contents)
    with pytest.raises(CaiTWeightsError, match="mismatch.keras"):
        load_model(path)


def test_nan_weights_are_refused_unless_allowed(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    variable = model.get_layer("final_layernorm").gamma
    variable.assign(np.full(variable.shape, np.nan, "float32"))
    path = tmp_path / "nan.keras"
    model.save(path)
    with pytest.raises(CaiTWeightsError, match="final_layernorm/gamma.*NaN"):
        load_model(path)
    restored = load_model(path, allow_non_finite=True)
    assert np.isnan(to_numpy(restored.get_layer("final_layernorm").gamma)).all()


def test_plain_file_errors(tmp_path):
    with pytest.raises(CaiTFileNotFoundError, match="absent.keras"):
        load_model(tmp_path / "absent.keras")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(CaiTWeightsError, match="empty.keras.*empty"):
        load_model(tmp_path / "empty.keras")
    (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CaiTWeightsError, match="random.keras"):
        load_model(tmp_path / "random.keras")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(CaiTConfigError, match=r"\.keras"):
        load_model(tmp_path / "model.h5")


def test_invalid_config_json_names_the_member(saved, tmp_path):
    contents = members(saved[0])
    contents["config.json"] = b'{"module": "keras_cait", '
    path = write_archive(tmp_path / "badjson.keras", contents)
    with pytest.raises(CaiTConfigError, match="badjson.keras: config.json is not valid JSON"):
        load_model(path)


def test_check_model_config_accepts_what_keras_cait_saves(saved):
    config = json.loads(members(saved[0])["config.json"])
    check_model_config(config)  # no error
    dense = keras.saving.serialize_keras_object(keras.layers.Dense(3, activation="gelu"))
    check_model_config(dense)


def test_control_the_crafted_lambda_really_runs_when_loaded_unsafely(saved, tmp_path):
    """Proves the crafted files above are live: loaded by Keras with
    `safe_mode=False`, the model runs the lambda and the marker appears."""
    marker = tmp_path / "marker"

    def edit(config):
        config["config"]["activation"] = marker_lambda(marker)

    path = with_config(saved, tmp_path, edit)
    restored = keras.saving.load_model(path, compile=False, safe_mode=False)
    restored(IMAGES)
    assert marker.exists()


@pytest.mark.parametrize("image_size", [[10**9, 10**9], [float("inf"), 32]])
def test_other_keras_cait_classes_with_hostile_numbers(image_size):
    converter = {
        "module": "keras_cait.models.cait_image_converter",
        "class_name": "CaiTImageConverter",
        "config": {"name": "converter", "image_size": image_size},
        "registered_name": "keras_cait>CaiTImageConverter",
    }
    with pytest.raises(CaiTUnsafeModelError, match=r"preprocessor\.json.*image_size\[\d\]"):
        check_model_config({"config": {"image_converter": converter}}, "preprocessor.json")
    converter["config"]["image_size"] = [384, 384]
    check_model_config(converter, "preprocessor.json")
