"""The malformed-input suite: every bad input gives one of keras-cait's own
exception types, whose message names the file (or handle, key, tensor) and
what is wrong; never an `UnboundLocalError`, a bare `JSONDecodeError`, a
`KeyError` or a crash.

Hugging Face handles are served from an offline cache built in `tmp_path`
(`huggingface_hub.constants` patched in-process).
"""

import hashlib
import json
import re
import shutil
import struct
import zipfile

import keras
import numpy as np
import pytest
from huggingface_hub import constants as hf_constants
from safetensors.numpy import load_file, save_file

import keras_cait
from keras_cait.loading import loader, timm_repo
from keras_cait.loading.safe_loading import load_model
from keras_cait_base import registry
from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTError,
    CaiTFileNotFoundError,
    CaiTIntegrityError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from tests import hf_cache
from tests.support import TIMM, TINY_BACKBONE, to_numpy

TINY = TIMM / "tiny_token_head"
REPO = "timm/tiny_token_head"


@pytest.fixture
def timm_dir(tmp_path):
    """A private copy of the tiny timm repo (config.json, model.safetensors)."""
    folder = tmp_path / "tiny_timm"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(TINY / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def saved_preset(tmp_path_factory):
    """A keras-cait preset directory (`save_to_preset`) of a tiny model."""
    keras.utils.set_random_seed(0)
    model = keras_cait.CaiTImageClassifier(
        keras_cait.CaiTBackbone(**TINY_BACKBONE), num_classes=3, compile=False
    )
    folder = tmp_path_factory.mktemp("saved") / "preset"
    model.save_to_preset(str(folder))
    return folder


@pytest.fixture
def preset_dir(saved_preset, tmp_path):
    folder = tmp_path / "preset"
    shutil.copytree(saved_preset, folder)
    return folder


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline HF cache holding `timm/tiny_token_head` (files copied, so
    they can be tampered with)."""
    cache = tmp_path / "hf"
    commit = hf_cache.add_snapshot(
        cache,
        REPO,
        {name: (TINY / name).read_bytes() for name in ("config.json", "model.safetensors")},
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit


def from_preset(preset):
    return keras_cait.CaiTImageClassifier.from_preset(str(preset))


def write_json(path, value):
    path.write_text(json.dumps(value))


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


def save_tensors(path, edit):
    tensors = load_file(TINY / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(path))


def _no_architecture(c):
    del c["architecture"]


def _depth_str(c):
    c["model_args"]["depth"] = "2"


def _depth_huge(c):
    c["model_args"]["depth"] = 10**9


def _not_cait(c):
    c["architecture"] = "resnet50"


def _drop_head(t):
    del t["head.bias"]


def _head_shape(t):
    t["head.weight"] = np.zeros((10, 47), "float32")


def _head_int(t):
    t["head.bias"] = np.zeros(10, "int32")


def _nan(t):
    t["blocks.0.attn.qkv.weight"][0, 0] = np.nan


def _inf(t):
    t["norm.weight"][3] = np.inf


def _lying_header(path):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    begin, end = header["head.bias"]["data_offsets"]
    header["head.bias"]["shape"] = [1000]
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def quiet(*_):
    """Evaluates its arguments (the setup's side effects) and returns None."""


# (id, setup(tmp_path, timm_dir) -> callable, exception type, message regex)
CASES = [
    # --- directories and JSON files ---
    ("empty_directory",
     lambda t, d: quiet((t / "empty").mkdir()) or (lambda: from_preset(t / "empty")),
     CaiTFileNotFoundError, r"empty.*config\.json.*missing"),
    ("timm_config_invalid_json",
     lambda t, d: quiet((d / "config.json").write_text('{"architecture": ')
    ) or (lambda: from_preset(d)),
     CaiTConfigError, r"tiny_timm/config\.json.*not valid JSON"),
    ("timm_config_not_an_object",
     lambda t, d: quiet((d / "config.json").write_text("[1, 2]")) or (lambda: from_preset(d)),
     CaiTConfigError, r"config\.json.*JSON object"),
    ("timm_config_missing_architecture",
     lambda t, d: quiet(edit_json(d / "config.json", _no_architecture)) or (lambda: from_preset(d)),
     CaiTConfigError, r"config\.json.*architecture"),
    ("timm_config_wrong_type",
     lambda t, d: quiet(edit_json(d / "config.json", _depth_str)) or (lambda: from_preset(d)),
     CaiTConfigError, r"config\.json.*`model_args\.depth` must be int, got str"),
    ("timm_config_not_cait",
     lambda t, d: quiet(edit_json(d / "config.json", _not_cait)) or (lambda: from_preset(d)),
     CaiTConfigError, r"config\.json.*'resnet50' is not a CaiT architecture"),
    ("timm_config_hostile_size",
     lambda t, d: quiet(edit_json(d / "config.json", _depth_huge)) or (lambda: from_preset(d)),
     CaiTUnsafeModelError, r"config\.json.*`model_args\.depth` must be in \[1, 512\]"),
    # --- model.safetensors ---
    ("weights_missing",
     lambda t, d: quiet((d / "model.safetensors").unlink()) or (lambda: from_preset(d)),
     CaiTFileNotFoundError, r"model\.safetensors' is missing"),
    ("weights_empty",
     lambda t, d: quiet((d / "model.safetensors").write_bytes(b"")) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors: the file is empty"),
    ("weights_truncated",
     lambda t, d: quiet((d / "model.safetensors").write_bytes(
         (TINY / "model.safetensors").read_bytes()[:-100])) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors.*truncated"),
    ("weights_random_bytes",
     lambda t, d: quiet((d / "model.safetensors").write_bytes(
         np.random.default_rng(0).bytes(10_000))) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors"),
    ("weights_header_lies_about_sizes",
     lambda t, d: quiet(_lying_header(d / "model.safetensors")) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors: not a valid safetensors file: the header lies"),
    ("tensor_missing",
     lambda t, d: quiet(save_tensors(d / "model.safetensors", _drop_head)) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors.*missing tensors \['head\.bias'\]"),
    ("tensor_wrong_shape",
     lambda t, d: quiet(save_tensors(d / "model.safetensors", _head_shape)) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors: tensor 'head\.weight' has shape \(10, 47\)"),
    ("tensor_wrong_dtype",
     lambda t, d: quiet(save_tensors(d / "model.safetensors", _head_int)) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors: tensor 'head\.bias' has dtype int32"),
    ("weights_nan",
     lambda t, d: quiet(save_tensors(d / "model.safetensors", _nan)) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors: tensor 'blocks\.0\.attn\.qkv\.weight' holds 1 NaN"),
    ("weights_inf",
     lambda t, d: quiet(save_tensors(d / "model.safetensors", _inf)) or (lambda: from_preset(d)),
     CaiTWeightsError, r"model\.safetensors: tensor 'norm\.weight' holds 1 NaN or Inf"),
    # --- handles ---
    ("hf_handle_empty", lambda t, d: lambda: from_preset("hf://"),
     CaiTConfigError, r"'hf://'"),
    ("hf_handle_too_many_parts", lambda t, d: lambda: from_preset("hf://a/b/c"),
     CaiTConfigError, r"'hf://a/b/c'.*expected 'hf://owner/repo'"),
    ("hf_handle_empty_revision", lambda t, d: lambda: from_preset("hf://timm/x@"),
     CaiTConfigError, r"'hf://timm/x@'.*nothing after '@'"),
    ("other_scheme", lambda t, d: lambda: from_preset("s3://bucket/model"),
     CaiTConfigError, r"'s3://bucket/model'.*only 'hf://'"),
    ("missing_local_directory", lambda t, d: lambda: from_preset(t / "nowhere" / "x"),
     CaiTFileNotFoundError, r"nowhere/x.*does not exist"),
    ("unknown_preset_name", lambda t, d: lambda: from_preset("cait_xxs24_225"),
     CaiTConfigError, r"cait_xxs24_225.*cait_xxs24_224"),
    # --- .keras ---
    ("keras_file_truncated",
     lambda t, d: quiet(_truncated_keras(t)) or (lambda: load_model(t / "model.keras")),
     CaiTWeightsError, r"model\.keras: not a readable \.keras archive \(truncated"),
    ("keras_weights_member_truncated",
     lambda t, d: quiet(_truncated_keras_weights(t)) or (lambda: load_model(t / "short.keras")),
     CaiTWeightsError, r"short\.keras: model\.weights\.h5 is not a readable HDF5"),
]


def _tiny_keras(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_cait.CaiTBackbone(**{**TINY_BACKBONE, "num_layers": 1})
    model.save(tmp_path / "model.keras")
    return tmp_path / "model.keras"


def _truncated_keras(tmp_path):
    path = _tiny_keras(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_keras_weights(tmp_path):
    path = _tiny_keras(tmp_path)
    with zipfile.ZipFile(path) as source:
        contents = {name: source.read(name) for name in source.namelist()}
    contents["model.weights.h5"] = contents["model.weights.h5"][:3000]
    with zipfile.ZipFile(tmp_path / "short.keras", "w") as target:
        for name, data in contents.items():
            target.writestr(name, data)


@pytest.mark.parametrize(
    "setup, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_input(tmp_path, timm_dir, setup, error, message):
    action = setup(tmp_path, timm_dir)
    with pytest.raises(CaiTError) as info:
        action()
    assert isinstance(info.value, error), repr(info.value)
    assert info.value.__class__.__module__ == "keras_cait_base.errors"
    assert re.search(message, str(info.value)), f"{message!r} not in {info.value}"


# --- Hugging Face cache: revisions and integrity ---


def test_revision_not_in_the_cache(offline_hub):
    with pytest.raises(CaiTFileNotFoundError, match=r"hf://timm/tiny_token_head@nope"):
        from_preset("hf://timm/tiny_token_head@nope")
    with pytest.raises(CaiTFileNotFoundError, match=r"hf://timm/absent_repo"):
        from_preset("hf://timm/absent_repo")


def tiny_checkpoint():
    return timm_repo.TimmCheckpoint.from_config(
        json.loads((TINY / "config.json").read_text()), "tiny config.json"
    )


def tiny_named_preset(sha256):
    checkpoint = tiny_checkpoint()
    return {
        "name": "cait_tiny_test",
        "architecture": checkpoint.architecture,
        "weights": {"format": "timm", "source": f"hf://{REPO}", "sha256": sha256},
        "preprocessing": checkpoint.preprocessing,
    }


@pytest.fixture
def named_tiny(offline_hub, monkeypatch):
    """A preset name `cait_tiny_test` whose JSON carries the sha256 of the
    tiny repo's weights, and the tiny model's hyper-parameters (a preset's
    come from its timm architecture); returns the cached weights file."""
    weights = offline_hub / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    preset = tiny_named_preset(digest)
    checkpoint = tiny_checkpoint()
    tiny_arguments = (checkpoint.backbone_kwargs, checkpoint.classifier_kwargs)
    monkeypatch.setattr(
        registry, "get_preset",
        lambda name: preset if name == "cait_tiny_test" else registry_get(name),
    )
    monkeypatch.setattr(
        loader, "model_arguments",
        lambda name: tiny_arguments if name == "cait_tiny_test" else arguments_get(name),
    )
    return weights


registry_get = registry.get_preset
arguments_get = loader.model_arguments


def test_sha256_in_preset_json_accepts_the_right_file(named_tiny):
    model = from_preset("cait_tiny_test")
    reference = load_file(TINY / "model.safetensors")
    np.testing.assert_array_equal(
        to_numpy(model.output_dense.bias), reference["head.bias"]
    )


@pytest.mark.parametrize("tamper", ["one_byte_flip", "truncation"])
def test_sha256_in_preset_json_catches_tampering(named_tiny, tamper):
    data = bytearray(named_tiny.read_bytes())
    if tamper == "one_byte_flip":
        data[-5] ^= 0x40  # inside the last tensor: still a valid file
    else:
        data = data[:-4096]
    named_tiny.write_bytes(bytes(data))
    with pytest.raises(CaiTIntegrityError, match="SHA-256 mismatch") as info:
        from_preset("cait_tiny_test")
    assert "model.safetensors" in str(info.value)
    assert "cait_tiny_test" in str(info.value)


# --- keras-cait preset directories (save_to_preset) ---


def test_keras_cait_preset_loads(preset_dir):
    model = from_preset(preset_dir)
    assert isinstance(model, keras_cait.CaiTImageClassifier)


def test_keras_cait_config_invalid_json(preset_dir):
    (preset_dir / "config.json").write_text('{"module": ')
    with pytest.raises(CaiTConfigError, match=r"preset/config\.json.*not valid JSON"):
        from_preset(preset_dir)


def test_keras_cait_task_json_invalid_json(preset_dir):
    (preset_dir / "task.json").write_text("{nope")
    with pytest.raises(CaiTConfigError, match=r"preset/task\.json.*not valid JSON"):
        from_preset(preset_dir)


@pytest.mark.parametrize(
    "key, value, message",
    [("config", None, "`config` must be an object"),
     ("config", "x", "`config` must be an object"),
     ("class_name", 3, "`class_name`"),
     ("registered_name", ["x"], "`registered_name`")],
)
def test_keras_cait_config_key_missing_or_wrong_type(preset_dir, key, value, message):
    def edit(config):
        if value is None:
            del config[key]
        else:
            config[key] = value

    edit_json(preset_dir / "config.json", edit)
    with pytest.raises(CaiTConfigError, match=rf"config\.json.*{message}"):
        from_preset(preset_dir)


def test_keras_cait_backbone_argument_missing(preset_dir):
    edit_json(preset_dir / "config.json", lambda c: c["config"].pop("hidden_dim"))
    with pytest.raises(CaiTConfigError, match=r"config\.json.*`hidden_dim` is missing"):
        from_preset(preset_dir)


def _lambda_activation(marker):
    with pytest.warns(UserWarning, match="lambda"):
        return keras.saving.serialize_keras_object(
            lambda x, m=str(marker): (__import__("pathlib").Path(m).touch(), x)[1]
        )


@pytest.mark.parametrize("kind", ["lambda", "os_system", "subprocess"])
def test_hostile_preset_config_is_refused_without_side_effect(preset_dir, tmp_path, kind):
    marker = tmp_path / "marker"
    hostile = {
        "lambda": _lambda_activation(marker),
        "os_system": {"module": "os", "class_name": "system",
                      "config": {"command": f"touch {marker}"}, "registered_name": None},
        "subprocess": {"module": "subprocess", "class_name": "run",
                       "config": {"args": ["touch", str(marker)]},
                       "registered_name": None},
    }[kind]
    edit_json(preset_dir / "task.json",
              lambda c: c["config"].__setitem__("activation", hostile))
    with pytest.raises(CaiTUnsafeModelError, match=r"task\.json"):
        from_preset(preset_dir)
    assert not marker.exists()


def test_hostile_backbone_arguments_in_preset_config(preset_dir):
    edit_json(preset_dir / "config.json",
              lambda c: c["config"].__setitem__("num_layers", 10**9))
    with pytest.raises(CaiTUnsafeModelError, match=r"config\.json.*num_layers"):
        keras_cait.CaiTBackbone.from_preset(str(preset_dir))


@pytest.mark.parametrize("shard", ["../outside.weights.h5", "/etc/passwd", "sub/x.h5"])
def test_shard_names_with_paths_are_refused(preset_dir, shard):
    write_json(preset_dir / "model.weights.json",
               {"metadata": {}, "weight_map": {"layer/0": shard}})
    with pytest.raises(CaiTUnsafeModelError, match=r"model\.weights\.json.*shard name"):
        from_preset(preset_dir)


def test_preset_weights_truncated(preset_dir):
    path = preset_dir / "model.weights.h5"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CaiTWeightsError, match=r"model\.weights\.h5.*truncated"):
        from_preset(preset_dir)


# --- explicit opt-ins ---


def test_non_finite_weights_load_when_the_caller_opts_in(timm_dir):
    save_tensors(timm_dir / "model.safetensors", _nan)
    from keras_cait_base.io.safetensors_io import read_safetensors

    state = read_safetensors(timm_dir / "model.safetensors", allow_non_finite=True)
    model = keras_cait.CaiTImageClassifier.from_preset(str(TINY), load_weights=False)
    keras_cait.load_timm_state_dict(model, state, allow_non_finite=True)
    assert np.isnan(to_numpy(model.backbone.get_layer("self_attention_block_0")
                             .attn.qkv.kernel)[0, 0])


def test_float64_weights_are_converted_explicitly(timm_dir):
    tensors = load_file(TINY / "model.safetensors")
    save_file({k: v.astype("float64") for k, v in tensors.items()},
              str(timm_dir / "model.safetensors"))
    with pytest.warns(UserWarning, match="float64; converted to float32"):
        model = from_preset(timm_dir)
    np.testing.assert_array_equal(
        to_numpy(model.output_dense.bias), tensors["head.bias"]
    )
