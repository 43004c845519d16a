"""`keras_cait.load_model`: crafted `.keras` files refused cleanly; intact ones load exactly."""

import json
import zipfile

import h5py
import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

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


def _classifier(seed=0, **backbone):
    keras.utils.set_random_seed(seed)
    backbone = keras_cait.CaiTBackbone(**{**TINY_BACKBONE, **backbone})
    return keras_cait.CaiTImageClassifier(backbone, num_classes=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny classifier saved once: `(path, model)`."""
    model = _classifier()
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


def with_activation(saved, tmp_path, activation):
    return with_config(saved, tmp_path, lambda config: config["config"].update(activation=activation))


def test_an_intact_file_loads_bit_identically(saved):
    path, model = saved
    restored = load_model(path, compile=False)
    assert isinstance(restored, keras_cait.CaiTImageClassifier)
    for a, b in zip(model.weights, restored.weights):
        assert a.path == b.path and a.dtype == b.dtype
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(to_numpy(restored(IMAGES)), to_numpy(model(IMAGES)))
    check_model_config(keras.saving.serialize_keras_object(keras.layers.Dense(3, "gelu")))


def marker_lambda(marker):
    """A serialised lambda (marshalled bytecode) that creates `marker`."""
    with pytest.warns(UserWarning, match="lambda"):
        return keras.saving.serialize_keras_object(
            lambda x, m=str(marker): (__import__("pathlib").Path(m).touch(), x)[1]
        )


def _object(module, class_name, config, registered_name=None):
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": registered_name}


def hostile_objects(marker):
    """Serialised objects that would create `marker` (or worse) if loaded."""
    return {
        "lambda": marker_lambda(marker),
        "lambda_layer": _object("keras.layers", "Lambda", {"function": marker_lambda(marker)}),
        "os_system": _object("os", "system", {"command": f"touch {marker}"}),
        "subprocess": _object("subprocess", "Popen", {"args": ["touch", str(marker)]}),
        "os_function": _object("os", "function", "system", "function"),
        "foreign_registered": _object("evil", "Thing", {}, "evil>Thing"),
        "keras_non_modeling_api": _object(
            "keras.utils", "get_file", {"fname": str(marker), "origin": "http://x"}),
        "keras_function_not_activation": _object(
            "keras.src.utils.file_utils", "function", "rmtree", "function"),
        "tfsm_layer": _object("keras.layers", "TFSMLayer", {"filepath": str(marker)}),
        "typespec": {**_object("os", "__typespec__", []), "spec_name": "TensorSpec"},
    }


@pytest.mark.parametrize("kind", sorted(hostile_objects("m")))
def test_hostile_objects_are_refused_without_side_effect(saved, tmp_path, kind):
    marker = tmp_path / "marker"
    path = with_activation(saved, tmp_path, hostile_objects(marker)[kind])
    with pytest.raises(CaiTUnsafeModelError, match=r"crafted\.keras"):
        load_model(path)
    assert not marker.exists()


def test_a_crafted_lambda_runs_only_in_keras_unsafe_mode(saved, tmp_path):
    """Refused even with Keras's unsafe deserialization on; Keras's `safe_mode=False` runs it."""
    marker = tmp_path / "marker"
    path = with_activation(saved, tmp_path, marker_lambda(marker))
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(CaiTUnsafeModelError, match="Lambda"):
            load_model(path)
    finally:
        global_state.set_global_attribute("safe_mode_saving", None)
    assert not marker.exists()
    # Control: the crafted files are live.
    keras.saving.load_model(path, compile=False, safe_mode=False)(IMAGES)
    assert marker.exists()


@pytest.mark.parametrize(
    "where, key, value, message",
    [
        ("backbone", "num_layers", 10**9, r"`num_layers` must be in \[1, 512\]"),
        ("backbone", "hidden_dim", -48, "hidden_dim"),
        ("backbone", "num_heads", "4", "`num_heads` must be int, got str"),
        ("backbone", "image_shape", [10**6, 10**6, 3], "image_shape height"),
        ("backbone", "image_shape", "32x32", "image_shape"),
        ("backbone", "mlp_ratio", float("nan"), "mlp_ratio"),
        ("backbone", "dropout_rate", 1.5, "dropout_rate"),
        ("backbone", "use_qkv_bias", "yes", "use_qkv_bias"),
        ("backbone", "evil_argument", 1, "unexpected arguments"),
        # Within every per-argument bound, but ~1.6e12 parameters.
        ("backbone", "__huge__", None, "parameters"),
        ("classifier", "num_classes", 10**12, "num_classes"),
        ("classifier", "num_classes", 2.5, "num_classes"),
        ("classifier", "pooling", "max", "pooling"),
        ("classifier", "dropout", -1, "dropout"),
    ],
)
def test_keras_cait_classes_with_hostile_arguments(saved, tmp_path, where, key, value, message):
    def edit(config):
        target = config["config"]["backbone"]["config"] if where == "backbone" else config["config"]
        if key == "__huge__":
            target.update(hidden_dim=16384, num_layers=512, num_heads=16)
        else:
            target[key] = value

    path = with_config(saved, tmp_path, edit)
    with pytest.raises(CaiTUnsafeModelError, match=message) as info:
        load_model(path)
    if where == "backbone":
        assert "CaiTBackbone" in str(info.value) and "crafted.keras" in str(info.value)


def _add_external_link(contents, tmp_path):
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(contents["model.weights.h5"])
    with h5py.File(weights, "a") as h5:
        h5["stolen"] = h5py.ExternalLink("/etc/passwd", "/")
    return {"model.weights.h5": weights.read_bytes()}


def _other_models_weights(contents, tmp_path):
    _classifier(seed=1, num_layers=1).save(tmp_path / "other.keras")
    return {"model.weights.h5": members(tmp_path / "other.keras")["model.weights.h5"]}


@pytest.mark.parametrize(
    "change, error, message",
    [
        *[(lambda c, t, n=name: {n: b"print('owned')"}, CaiTUnsafeModelError, "member")
          for name in ["../escape.txt", "/abs/evil.txt", "assets/../../evil.txt",
                       "C:/evil.txt", "payload.py"]],
        (lambda c, t: {"assets/bomb.bin": b"\0" * (64 * 2**20)}, CaiTUnsafeModelError,
         "decompression bomb"),
        (_add_external_link, CaiTUnsafeModelError, "ExternalLink"),
        # Keras 3.15 reports this with a bare h5py `OSError`.
        (lambda c, t: {"model.weights.h5": c["model.weights.h5"][:5000]}, CaiTWeightsError,
         "model.weights.h5.*truncated"),
        (_other_models_weights, CaiTWeightsError, "crafted.keras"),
        (lambda c, t: {"config.json": b'{"module": "keras_cait", '}, CaiTConfigError,
         "crafted.keras: config.json is not valid JSON"),
    ],
)
def test_crafted_archive_members_are_refused(saved, tmp_path, change, error, message):
    contents = members(saved[0])
    contents.update(change(contents, tmp_path))
    bomb = "assets/bomb.bin" in contents
    compression = zipfile.ZIP_DEFLATED if bomb else zipfile.ZIP_STORED
    path = write_archive(tmp_path / "crafted.keras", contents, compression)
    with pytest.raises(error, match=message):
        load_model(path)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_nan_weights_are_refused_unless_allowed(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    variable = model.get_layer("final_layernorm").gamma
    variable.assign(np.full(variable.shape, np.nan, "float32"))
    model.save(tmp_path / "nan.keras")
    with pytest.raises(CaiTWeightsError, match="final_layernorm/gamma.*NaN"):
        load_model(tmp_path / "nan.keras")
    restored = load_model(tmp_path / "nan.keras", allow_non_finite=True)
    assert np.isnan(to_numpy(restored.get_layer("final_layernorm").gamma)).all()


@pytest.mark.parametrize(
    "name, data, error, message",
    [
        ("absent.keras", None, CaiTFileNotFoundError, "absent.keras"),
        ("empty.keras", lambda saved: b"", CaiTWeightsError, "empty.keras.*empty"),
        ("random.keras", lambda saved: np.random.default_rng(0).bytes(5000), CaiTWeightsError,
         "random.keras"),
        ("model.h5", lambda saved: b"x", CaiTConfigError, r"\.keras"),
        *[("truncated.keras", lambda saved, f=fraction: saved[: int(len(saved) * f)],
           CaiTWeightsError, "truncated.keras.*truncated") for fraction in [0.1, 0.5, 0.99]],
    ],
)
def test_plain_file_errors(saved, tmp_path, name, data, error, message):
    if data is not None:
        (tmp_path / name).write_bytes(data(saved[0].read_bytes()))
    with pytest.raises(error, match=message):
        load_model(tmp_path / name)


@pytest.mark.parametrize("image_size", [[10**9, 10**9], [float("inf"), 32]])
def test_other_keras_cait_classes_with_hostile_numbers(image_size):
    converter = _object("keras_cait.models.cait_image_converter", "CaiTImageConverter",
                        {"name": "converter", "image_size": image_size},
                        "keras_cait>CaiTImageConverter")
    with pytest.raises(CaiTUnsafeModelError, match=r"preprocessor\.json.*image_size\[\d\]"):
        check_model_config({"config": {"image_converter": converter}}, "preprocessor.json")
    converter["config"]["image_size"] = [384, 384]
    check_model_config(converter, "preprocessor.json")
