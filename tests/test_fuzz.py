"""Fuzzing with Hypothesis: mutated weight files, timm `config.json` and
Keras configs give either a result or one of keras-cait's documented
exceptions, never anything else.

The targets are pure NumPy/JSON code, identical on every backend, so the
suite runs once (under JAX) to keep CI time down; 1,000 examples for the
weight files (read through `safetensors.safe_open`: the wrapper must turn
every refusal into a keras-cait error), 500 for each config target.
"""

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
from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTIntegrityError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from keras_cait_base.io.safetensors_io import read_safetensors
from tests.support import TIMM

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="backend-independent NumPy/JSON code: fuzzed once, under JAX",
)

# What each target documents it raises.
SAFETENSORS_ERRORS = (
    CaiTWeightsError, CaiTFileNotFoundError, CaiTIntegrityError, CaiTConfigError
)
CONFIG_ERRORS = (CaiTConfigError,)  # CaiTUnsafeModelError is a subclass

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,  # reproducible in CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

WORKDIR = Path(tempfile.mkdtemp(prefix="keras-cait-fuzz-"))

VALID_TENSORS = {
    "a": np.arange(6, dtype="float32").reshape(2, 3),
    "b": np.array([1.0, -2.0], dtype="float16"),
    "c": np.array([[7]], dtype="int64"),
}
VALID_FILE = save(VALID_TENSORS)
HEADER_LENGTH = struct.unpack("<Q", VALID_FILE[:8])[0]
VALID_HEADER = json.loads(VALID_FILE[8 : 8 + HEADER_LENGTH])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def mutate(data, draw, tree):
    """Applies 1-3 random edits (replace, delete, add) somewhere in `tree`."""
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(1, 3))):
        node = tree
        # Walk down a random path of containers.
        while True:
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


def check_safetensors_bytes(raw):
    path = WORKDIR / "fuzz.safetensors"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float64 conversion warnings
        try:
            result = read_safetensors(path)
        except SAFETENSORS_ERRORS as error:
            assert str(path) in str(error)
            return
    # Whatever is returned is consistent with the header that was read.
    assert all(isinstance(v, np.ndarray) for v in result.values())


@FUZZ
@given(data=st.data())
def test_fuzz_weight_files(data):
    draw = data.draw
    raw = bytearray(VALID_FILE)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "header", "random"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(raw) - 1))
            raw[position] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "insert":
        position = draw(st.integers(0, len(raw)))
        raw[position:position] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "header":
        header = mutate(data, draw, VALID_HEADER)
        encoded = json.dumps(header).encode()
        if draw(st.booleans()):
            length = len(encoded)
        else:
            length = draw(st.integers(0, 2**64 - 1))
        raw = struct.pack("<Q", length) + encoded + bytes(VALID_FILE[8 + HEADER_LENGTH :])
    else:
        raw = draw(st.binary(max_size=256))
    check_safetensors_bytes(bytes(raw))


VALID_TIMM_CONFIG = json.loads((TIMM / "tiny_token_head" / "config.json").read_text())


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_fuzz_timm_config(data):
    config = mutate(data, data.draw, VALID_TIMM_CONFIG)
    try:
        timm_repo.TimmCheckpoint.from_config(config, "fuzzed/config.json")
    except CONFIG_ERRORS as error:
        assert "fuzzed/config.json" in str(error)


VALID_KERAS_CONFIG = {
    "module": "keras_cait.models.cait_backbone",
    "class_name": "CaiTBackbone",
    "config": {
        "name": "cait", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy",
                  "config": {"name": "float32"}, "registered_name": None},
        "image_shape": [32, 32, 3], "patch_size": 8, "hidden_dim": 48,
        "num_layers": 2, "num_heads": 4, "num_class_attention_layers": 2,
        "mlp_ratio": 4.0, "class_attention_mlp_ratio": 4.0,
        "use_qkv_bias": True, "layer_scale_init_value": 1e-5,
        "dropout_rate": 0.0, "attention_dropout": 0.0, "drop_path_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
    },
    "registered_name": "keras_cait>CaiTBackbone",
}


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_fuzz_keras_config(data):
    config = mutate(data, data.draw, VALID_KERAS_CONFIG)
    try:
        check_model_config(config, "fuzzed/config.json")
    except CONFIG_ERRORS as error:
        assert "fuzzed/config.json" in str(error)


def test_the_fuzzed_targets_accept_their_valid_inputs():
    """The unmutated inputs pass, so the fuzz tests above exercise the
    error paths only through the mutations."""
    path = WORKDIR / "valid.safetensors"
    path.write_bytes(VALID_FILE)
    result = read_safetensors(path)
    np.testing.assert_array_equal(result["a"], VALID_TENSORS["a"])
    timm_repo.TimmCheckpoint.from_config(VALID_TIMM_CONFIG, "config.json")
    check_model_config(VALID_KERAS_CONFIG)
    with pytest.raises(CaiTUnsafeModelError):
        hostile = copy.deepcopy(VALID_KERAS_CONFIG)
        hostile["config"]["num_layers"] = 10**6
        check_model_config(hostile)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["pretrained_cfg"].__setitem__("mean", [None, 0.4, 0.4]),
        lambda c: c["model_args"].__setitem__("img_size", [32, "32"]),
        lambda c: c["model_args"].__setitem__("depth", 10**12),
    ],
    ids=["mean_not_numbers", "img_size_string", "depth_huge"],
)
def test_fuzz_regressions_timm_config(edit):
    """Inputs the fuzzer once found to escape as TypeError (kept as cases)."""
    config = copy.deepcopy(VALID_TIMM_CONFIG)
    edit(config)
    with pytest.raises(CaiTConfigError, match="fuzzed/config.json"):
        timm_repo.TimmCheckpoint.from_config(config, "fuzzed/config.json")
