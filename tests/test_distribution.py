"""keras.distribution on JAX: DataParallel and ModelParallel on 8 virtual CPU devices."""

import json

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait_base.errors import CaiTConfigError
from tests.support import run_python

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution runs on JAX; tested on the jax pass only",
)

SCRIPT = r"""
import json
import jax
import keras
import numpy as np
import keras_cait
from tests.support import TINY_BACKBONE

assert len(jax.devices()) == 8, jax.devices()
rng = np.random.default_rng(0)
x = rng.standard_normal((48, 32, 32, 3)).astype("float32")
y = rng.integers(0, 4, size=48)


def build(weights=None):
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=4, compile=False)
    if weights is not None:
        model.set_weights(weights)
    return model


def run(prefix, model):
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result[prefix + "_losses"] = []
    for batch in (slice(0, 16), slice(16, 32), slice(32, 48)):
        logs = model.train_on_batch(x[batch], y[batch], return_dict=True)
        result[prefix + "_losses"].append(float(logs["loss"]))
    result[prefix + "_logits"] = model.predict(x[:16], verbose=0).tolist()
    return model


keras.utils.set_random_seed(0)
result, reference = {}, build()
weights = reference.get_weights()
run("single", reference)
devices = keras.distribution.list_devices()
with keras.distribution.DataParallel(devices=devices).scope():
    kernel = run("dp", build(weights)).backbone.get_layer("self_attention_block_0").attn.qkv.kernel
    result["dp_kernel_devices"] = len(kernel.value.sharding.device_set)
    result["dp_kernel_replicated"] = kernel.value.sharding.is_fully_replicated

mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layout_map = keras_cait.CaiTBackbone.get_layout_map(mesh)
with keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch").scope():
    backbone = run("mp", build(weights)).backbone
    sa = backbone.get_layer("self_attention_block_1")
    ca = backbone.get_layer("class_attention_block_0")
    variables = {
        "qkv": sa.attn.qkv.kernel, "qkv_bias": sa.attn.qkv.bias, "proj": sa.attn.proj.kernel,
        "fc1": sa.mlp.fc1.kernel, "fc2": sa.mlp.fc2.kernel, "ca_q": ca.attn.q.kernel,
        "ca_v": ca.attn.v.kernel, "proj_l": sa.attn.proj_l.kernel,
        "position_embedding": backbone.get_layer("patch_embedding").position_embedding,
    }
    result["mp"] = {name: {"spec": [str(axis) for axis in v.value.sharding.spec],
                           "shard": list(v.value.addressable_shards[0].data.shape),
                           "replicated": v.value.sharding.is_fully_replicated}
                    for name, v in variables.items()}
print("RESULT" + json.dumps(result))
"""


@pytest.fixture(scope="module")
def result():
    out = run_python(SCRIPT, "jax", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    line = [line for line in out.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("prefix", ["dp", "mp"])
def test_distributed_training_matches_single_device(result, prefix):
    for key in ("logits", "losses"):
        np.testing.assert_allclose(
            result[f"{prefix}_{key}"], result[f"single_{key}"], rtol=1e-5, atol=1e-5)
    # Training did something (the equality above is not trivially true).
    assert result["single_losses"][0] != result["single_losses"][-1]


def test_data_parallel_replicates_and_model_parallel_shards_kernels(result):
    assert result["dp_kernel_devices"] == 8 and result["dp_kernel_replicated"]
    mp = result["mp"]
    for name, spec, shard in (("qkv", ["batch", "model"], [24, 36]), ("qkv_bias", ["model"], [36]),
                              ("fc1", ["batch", "model"], [24, 48]),
                              ("proj", ["model", "batch"], [12, 24]),
                              ("fc2", ["model", "batch"], [48, 24])):
        assert (mp[name]["spec"], mp[name]["shard"]) == (spec, shard), name
    assert mp["ca_q"]["spec"] == mp["ca_v"]["spec"] == ["batch", "model"]
    assert mp["proj_l"]["replicated"] and mp["position_embedding"]["replicated"]
    assert not mp["qkv"]["replicated"]


def test_layout_map_rejects_unknown_axis():
    mesh = keras.distribution.DeviceMesh((1,), ["data"], keras.distribution.list_devices()[:1])
    with pytest.raises(CaiTConfigError, match="model_parallel_dim_name='model'"):
        keras_cait.CaiTBackbone.get_layout_map(mesh)
    with pytest.raises(CaiTConfigError, match="DeviceMesh"):
        keras_cait.CaiTBackbone.get_layout_map("mesh")
    layout = keras_cait.CaiTBackbone.get_layout_map(
        mesh, model_parallel_dim_name="data", data_parallel_dim_name=None)
    assert tuple(layout["self_attention_block_0/attn/qkv/kernel"].axes) == (None, "data")
    assert layout["self_attention_block_0/norm1/gamma"] is None
