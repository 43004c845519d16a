"""Hypothesis fuzzing: mutated weight files (1,000 examples), timm `config.json` and Keras
configs (500 each) give a result or a documented keras-cait exception, nothing else."""

import copy
import json
import struct
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from keras_cait.loading import timm_repo
from keras_cait.loading.safe_loading import check_model_config
from keras_cait_base import errors
from keras_cait_base.io.safetensors_io import read_safetensors
from tests.support import TIMM

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="backend-independent NumPy/JSON code: fuzzed once, under JAX",
)

# What each target documents it raises (CaiTUnsafeModelError is a CaiTConfigError).
SAFETENSORS_ERRORS = (errors.CaiTWeightsError, errors.CaiTFileNotFoundError,
                      errors.CaiTIntegrityError, errors.CaiTConfigError)
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORKDIR = Path(tempfile.mkdtemp(prefix="keras-cait-fuzz-"))

VALID_TENSORS = {"a": np.arange(6, dtype="float32").reshape(2, 3),
                 "b": np.array([1.0, -2.0], dtype="float16"),
                 "c": np.array([[7]], dtype="int64")}
VALID_FILE = save(VALID_TENSORS)
HEADER_LENGTH = struct.unpack("<Q", VALID_FILE[:8])[0]
VALID_HEADER = json.loads(VALID_FILE[8 : 8 + HEADER_LENGTH])
VALID_TIMM_CONFIG = json.loads((TIMM / "tiny_token_head" / "config.json").read_text())
VALID_KERAS_CONFIG = {
    "module": "keras_cait.models.cait_backbone", "class_name": "CaiTBackbone",
    "config": {
        "name": "cait", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                  "registered_name": None},
        "image_shape": [32, 32, 3], "patch_size": 8, "hidden_dim": 48, "num_layers": 2,
        "num_heads": 4, "num_class_attention_layers": 2, "mlp_ratio": 4.0,
        "class_attention_mlp_ratio": 4.0, "use_qkv_bias": True, "layer_scale_init_value": 1e-5,
        "dropout_rate": 0.0, "attention_dropout": 0.0, "drop_path_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
    },
    "registered_name": "keras_cait>CaiTBackbone",
}

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def mutate(draw, tree):
    """Applies 1-3 random edits (replace, delete, add) somewhere in `tree`."""
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(1, 3))):
        node = tree
        while True:  # walk down a random path of containers
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[key] = draw(json_values)
            elif action == "delete":
                del node[key]
            elif isinstance(node, dict):
                node[draw(st.text(max_size=8))] = draw(json_values)
            else:
                node.append(draw(json_values))
            break
    return tree


@FUZZ
@given(data=st.data())
def test_fuzz_weight_files(data):
    draw = data.draw
    raw = bytearray(VALID_FILE)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "header", "random"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "insert":
        position = draw(st.integers(0, len(raw)))
        raw[position:position] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "header":
        encoded = json.dumps(mutate(draw, VALID_HEADER)).encode()
        length = len(encoded) if draw(st.booleans()) else draw(st.integers(0, 2**64 - 1))
        raw = struct.pack("<Q", length) + encoded + bytes(VALID_FILE[8 + HEADER_LENGTH :])
    else:
        raw = draw(st.binary(max_size=256))
    path = WORKDIR / "fuzz.safetensors"
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float64 conversion warnings
        try:
            result = read_safetensors(path)
        except SAFETENSORS_ERRORS as error:
            assert str(path) in str(error)
            return
    assert all(isinstance(v, np.ndarray) for v in result.values())


@pytest.mark.parametrize("check, valid", [
    (timm_repo.TimmCheckpoint.from_config, VALID_TIMM_CONFIG),
    (check_model_config, VALID_KERAS_CONFIG),
], ids=["timm_config", "keras_config"])
@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_fuzz_config(check, valid, data):
    try:
        check(mutate(data.draw, valid), "fuzzed/config.json")
    except errors.CaiTConfigError as error:
        assert "fuzzed/config.json" in str(error)


def test_the_fuzzed_targets_accept_their_valid_inputs():
    """The unmutated inputs pass: the fuzz tests reach the error paths only by mutation."""
    path = WORKDIR / "valid.safetensors"
    path.write_bytes(VALID_FILE)
    np.testing.assert_array_equal(read_safetensors(path)["a"], VALID_TENSORS["a"])
    timm_repo.TimmCheckpoint.from_config(VALID_TIMM_CONFIG, "config.json")
    check_model_config(VALID_KERAS_CONFIG)


@pytest.mark.parametrize("edit", [
    lambda c: c["pretrained_cfg"].__setitem__("mean", [None, 0.4, 0.4]),
    lambda c: c["model_args"].__setitem__("img_size", [32, "32"]),
], ids=["mean_not_numbers", "img_size_string"])
def test_fuzz_regressions_timm_config(edit):
    """Inputs the fuzzer once found to escape as TypeError."""
    config = copy.deepcopy(VALID_TIMM_CONFIG)
    edit(config)
    with pytest.raises(errors.CaiTConfigError, match="fuzzed/config.json"):
        timm_repo.TimmCheckpoint.from_config(config, "fuzzed/config.json")
