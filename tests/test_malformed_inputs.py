"""Malformed inputs give a keras-cait exception naming the file (or handle, key, tensor)
and what is wrong; never an `UnboundLocalError`, a bare `JSONDecodeError` or a crash."""

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from huggingface_hub import constants as hf_constants
from safetensors.numpy import load_file, save_file

import keras_cait
from keras_cait.loading import loader, timm_repo
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
from tests.support import TIMM, to_numpy

TINY = TIMM / "tiny_token_head"
REPO = "timm/tiny_token_head"
TIMM_CONFIG, WEIGHTS = "tiny_timm/config.json", "tiny_timm/model.safetensors"
PRESET_CONFIG = "preset/config.json"


@pytest.fixture
def timm_dir(tmp_path):
    """A private copy of the tiny timm repo (config.json, model.safetensors)."""
    return shutil.copytree(TINY, tmp_path / "tiny_timm", ignore=shutil.ignore_patterns("*.npz"))


@pytest.fixture
def preset_dir(tiny_preset, tmp_path):
    """A private copy of a keras-cait preset directory (`save_to_preset`)."""
    return shutil.copytree(tiny_preset, tmp_path / "preset")


def from_preset(preset):
    return keras_cait.CaiTImageClassifier.from_preset(str(preset))


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def save_tensors(path, edit):
    tensors = load_file(TINY / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(path))


def _nan(t):
    t["blocks.0.attn.qkv.weight"][0, 0] = np.nan


def put(name, data):
    """A setup writing `data` (text, a function of the old bytes, or None to delete)
    to `tmp_path / name`; the folder is loaded."""
    def setup(tmp_path):
        path = tmp_path / name
        if data is None:
            path.unlink()
        elif isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data(path.read_bytes()))
        return path.parent
    return setup


def edit(name, change):
    """A setup applying `change` to a JSON file or a safetensors file's tensors."""
    def setup(tmp_path):
        path = tmp_path / name
        (save_tensors if name.endswith(".safetensors") else edit_json)(path, change)
        return path.parent
    return setup


def hostile_backbone(tmp_path):
    folder = edit(PRESET_CONFIG, lambda c: c["config"].update(num_layers=10**9))(tmp_path)
    return lambda: keras_cait.CaiTBackbone.from_preset(str(folder))


def shard(name):
    return put("preset/model.weights.json",
               json.dumps({"metadata": {}, "weight_map": {"layer/0": name}}))


def handle(preset):
    return lambda tmp_path: preset


# {exception type: [(id, setup(tmp_path) -> preset to load or a callable, message regex)]}
CASES = {
    CaiTFileNotFoundError: [
        ("empty_directory", lambda t: (t / "empty").mkdir() or t / "empty",
         r"empty.*config\.json.*missing"),
        ("weights_missing", put(WEIGHTS, None), r"model\.safetensors' is missing"),
        ("missing_local_directory", lambda t: t / "nowhere" / "x", r"nowhere/x.*does not exist"),
    ],
    CaiTConfigError: [
        ("timm_config_invalid_json", put(TIMM_CONFIG, '{"architecture": '),
         r"tiny_timm/config\.json.*not valid JSON"),
        ("timm_config_not_an_object", put(TIMM_CONFIG, "[1, 2]"), r"config\.json.*JSON object"),
        ("timm_config_missing_architecture", edit(TIMM_CONFIG, lambda c: c.pop("architecture")),
         r"config\.json.*architecture"),
        ("timm_config_wrong_type", edit(TIMM_CONFIG, lambda c: c["model_args"].update(depth="2")),
         r"config\.json.*`model_args\.depth` must be int, got str"),
        ("timm_config_not_cait", edit(TIMM_CONFIG, lambda c: c.update(architecture="resnet50")),
         r"config\.json.*'resnet50' is not a CaiT architecture"),
        ("hf_handle_empty", handle("hf://"), r"'hf://'"),
        ("hf_handle_too_many_parts", handle("hf://a/b/c"), r"'hf://a/b/c'.*expected 'hf://owner/repo'"),
        ("hf_handle_empty_revision", handle("hf://timm/x@"), r"'hf://timm/x@'.*nothing after '@'"),
        ("other_scheme", handle("s3://bucket/model"), r"'s3://bucket/model'.*only 'hf://'"),
        ("preset_config_invalid_json", put(PRESET_CONFIG, '{"module": '),
         r"preset/config\.json.*not valid JSON"),
        ("preset_task_json_invalid_json", put("preset/task.json", "{nope"),
         r"preset/task\.json.*not valid JSON"),
        ("preset_config_missing", edit(PRESET_CONFIG, lambda c: c.pop("config")),
         r"config\.json.*`config` must be an object"),
        ("preset_config_not_an_object", edit(PRESET_CONFIG, lambda c: c.update(config="x")),
         r"config\.json.*`config` must be an object"),
        ("preset_class_name_wrong_type", edit(PRESET_CONFIG, lambda c: c.update(class_name=3)),
         r"config\.json.*`class_name`"),
        ("preset_registered_name_wrong_type",
         edit(PRESET_CONFIG, lambda c: c.update(registered_name=["x"])),
         r"config\.json.*`registered_name`"),
        ("preset_backbone_argument_missing",
         edit(PRESET_CONFIG, lambda c: c["config"].pop("hidden_dim")),
         r"config\.json.*`hidden_dim` is missing"),
    ],
    CaiTUnsafeModelError: [
        ("timm_config_hostile_size", edit(TIMM_CONFIG, lambda c: c["model_args"].update(depth=10**9)),
         r"config\.json.*`model_args\.depth` must be in \[1, 512\]"),
        ("preset_hostile_backbone_arguments", hostile_backbone, r"config\.json.*num_layers"),
        *[(f"preset_shard_name_{i}", shard(name), r"model\.weights\.json.*shard name")
          for i, name in enumerate(["../outside.weights.h5", "/etc/passwd", "sub/x.h5"])],
    ],
    CaiTWeightsError: [
        ("weights_truncated", put(WEIGHTS, lambda data: data[:-100]), r"model\.safetensors.*truncated"),
        ("tensor_missing", edit(WEIGHTS, lambda t: t.pop("head.bias")),
         r"model\.safetensors.*missing tensors \['head\.bias'\]"),
        ("tensor_wrong_shape",
         edit(WEIGHTS, lambda t: t.update({"head.weight": np.zeros((10, 47), "float32")})),
         r"model\.safetensors: tensor 'head\.weight' has shape \(10, 47\)"),
        ("weights_nan", edit(WEIGHTS, _nan),
         r"model\.safetensors: tensor 'blocks\.0\.attn\.qkv\.weight' holds 1 NaN"),
        ("preset_weights_truncated", put("preset/model.weights.h5", lambda data: data[:2000]),
         r"model\.weights\.h5.*truncated"),
    ],
}


@pytest.mark.parametrize("setup, error, message", [
    pytest.param(setup, error, message, id=name)
    for error, cases in CASES.items() for name, setup, message in cases
])
def test_malformed_input(tmp_path, timm_dir, preset_dir, setup, error, message):
    target = setup(tmp_path)
    with pytest.raises(CaiTError) as info:
        target() if callable(target) else from_preset(target)
    assert isinstance(info.value, error), repr(info.value)
    assert info.value.__class__.__module__ == "keras_cait_base.errors"
    assert re.search(message, str(info.value)), f"{message!r} not in {info.value}"


@pytest.fixture
def named_tiny(tmp_path, monkeypatch):
    """A preset name `cait_tiny_test` for copies of `timm/tiny_token_head`'s files in an
    offline HF cache, its JSON carrying their sha256; returns the cached weights file."""
    cache = tmp_path / "hf"
    files = {name: (TINY / name).read_bytes() for name in ("config.json", "model.safetensors")}
    commit = hf_cache.add_snapshot(cache, REPO, files)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    weights = hf_cache.repo_folder(cache, REPO) / "snapshots" / commit / "model.safetensors"
    checkpoint = timm_repo.TimmCheckpoint.from_config(
        json.loads((TINY / "config.json").read_text()), "tiny config.json")
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    preset = {"name": "cait_tiny_test", "architecture": checkpoint.architecture,
              "weights": {"format": "timm", "source": f"hf://{REPO}", "sha256": sha256},
              "preprocessing": checkpoint.preprocessing}
    tiny_arguments = (checkpoint.backbone_kwargs, checkpoint.classifier_kwargs)
    get_preset, model_arguments = registry.get_preset, loader.model_arguments
    monkeypatch.setattr(registry, "get_preset",
                        lambda name: preset if name == "cait_tiny_test" else get_preset(name))
    monkeypatch.setattr(loader, "model_arguments", lambda name: tiny_arguments
                        if name == "cait_tiny_test" else model_arguments(name))
    return weights


def test_sha256_in_preset_json_accepts_the_right_file_and_catches_tampering(named_tiny):
    model = from_preset("cait_tiny_test")
    reference = load_file(TINY / "model.safetensors")
    np.testing.assert_array_equal(to_numpy(model.output_dense.bias), reference["head.bias"])
    data = named_tiny.read_bytes()  # a flipped bit (truncation: test_safe_io.py)
    named_tiny.write_bytes(data[:-5] + bytes([data[-5] ^ 0x40]) + data[-4:])
    with pytest.raises(CaiTIntegrityError, match="SHA-256 mismatch") as info:
        from_preset("cait_tiny_test")
    assert "model.safetensors" in str(info.value) and "cait_tiny_test" in str(info.value)


def test_hostile_preset_config_is_refused_without_side_effect(preset_dir, tmp_path):
    # The other hostile objects (lambda, subprocess...): test_safe_loading.py, same check.
    marker = tmp_path / "marker"
    hostile = {"module": "os", "class_name": "system",
               "config": {"command": f"touch {marker}"}, "registered_name": None}
    edit_json(preset_dir / "task.json", lambda c: c["config"].update(activation=hostile))
    with pytest.raises(CaiTUnsafeModelError, match=r"task\.json"):
        from_preset(preset_dir)
    assert not marker.exists()
