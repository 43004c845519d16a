"""keras.distribution: DataParallel and ModelParallel on 8 virtual CPU devices.

JAX only (Keras distributes on JAX); run once per CI, on the jax pass, in a
subprocess that asks XLA for 8 host devices.
"""

import json

import keras
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


def build():
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=4, compile=False)


def train(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []
    for step in range(3):
        batch = slice(16 * step, 16 * (step + 1))
        logs = model.train_on_batch(x[batch], y[batch], return_dict=True)
        losses.append(float(logs["loss"]))
    return losses


keras.utils.set_random_seed(0)
reference = build()
weights = reference.get_weights()
result = {"single_losses": train(reference)}
result["single_logits"] = reference.predict(x[:16], verbose=0).tolist()

devices = keras.distribution.list_devices()
data_parallel = keras.distribution.DataParallel(devices=devices)
with data_parallel.scope():
    model = build()
    model.set_weights(weights)
    result["dp_losses"] = train(model)
    result["dp_logits"] = model.predict(x[:16], verbose=0).tolist()
    kernel = model.backbone.get_layer("self_attention_block_0").attn.qkv.kernel
    result["dp_kernel_devices"] = len(kernel.value.sharding.device_set)
    result["dp_kernel_replicated"] = kernel.value.sharding.is_fully_replicated

mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layout_map = keras_cait.CaiTBackbone.get_layout_map(mesh)
model_parallel = keras.distribution.ModelParallel(
    layout_map=layout_map, batch_dim_name="batch"
)
with model_parallel.scope():
    model = build()
    model.set_weights(weights)
    result["mp_losses"] = train(model)
    result["mp_logits"] = model.predict(x[:16], verbose=0).tolist()
    backbone = model.backbone
    sa = backbone.get_layer("self_attention_block_1")
    ca = backbone.get_layer("class_attention_block_0")
    variables = {
        "qkv": sa.attn.qkv.kernel,
        "qkv_bias": sa.attn.qkv.bias,
        "proj": sa.attn.proj.kernel,
        "fc1": sa.mlp.fc1.kernel,
        "fc2": sa.mlp.fc2.kernel,
        "ca_q": ca.attn.q.kernel,
        "ca_v": ca.attn.v.kernel,
        "proj_l": sa.attn.proj_l.kernel,
        "position_embedding": backbone.get_layer("patch_embedding").position_embedding,
    }
    result["mp_specs"] = {
        name: [str(axis) for axis in v.value.sharding.spec]
        for name, v in variables.items()
    }
    result["mp_shard_shapes"] = {
        name: list(v.value.addressable_shards[0].data.shape)
        for name, v in variables.items()
    }
    result["mp_replicated"] = {
        name: v.value.sharding.is_fully_replicated for name, v in variables.items()
    }
print("RESULT" + json.dumps(result))
"""


@pytest.fixture(scope="module")
def result():
    out = run_python(
        SCRIPT,
        "jax",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    line = [line for line in out.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_data_parallel_matches_single_device(result):
    import numpy as np

    assert result["dp_kernel_devices"] == 8 and result["dp_kernel_replicated"]
    np.testing.assert_allclose(
        result["dp_logits"], result["single_logits"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        result["dp_losses"], result["single_losses"], rtol=1e-5, atol=1e-5
    )
    # Training did something (the equality above is not trivially true).
    assert result["single_losses"][0] != result["single_losses"][-1]


def test_model_parallel_shards_kernels_and_matches(result):
    import numpy as np

    specs, shapes = result["mp_specs"], result["mp_shard_shapes"]
    assert specs["qkv"] == ["batch", "model"] and shapes["qkv"] == [24, 36]
    assert specs["qkv_bias"] == ["model"] and shapes["qkv_bias"] == [36]
    assert specs["fc1"] == ["batch", "model"] and shapes["fc1"] == [24, 48]
    assert specs["proj"] == ["model", "batch"] and shapes["proj"] == [12, 24]
    assert specs["fc2"] == ["model", "batch"] and shapes["fc2"] == [48, 24]
    assert specs["ca_q"] == ["batch", "model"] and specs["ca_v"] == ["batch", "model"]
    assert result["mp_replicated"]["proj_l"]
    assert result["mp_replicated"]["position_embedding"]
    assert not result["mp_replicated"]["qkv"]
    np.testing.assert_allclose(
        result["mp_logits"], result["single_logits"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        result["mp_losses"], result["single_losses"], rtol=1e-5, atol=1e-5
    )


def test_layout_map_rejects_unknown_axis():
    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1,), ["data"], devices)
    with pytest.raises(CaiTConfigError, match="model_parallel_dim_name='model'"):
        keras_cait.CaiTBackbone.get_layout_map(mesh)
    with pytest.raises(CaiTConfigError, match="DeviceMesh"):
        keras_cait.CaiTBackbone.get_layout_map("mesh")
    layout = keras_cait.CaiTBackbone.get_layout_map(
        mesh, model_parallel_dim_name="data", data_parallel_dim_name=None
    )
    assert tuple(layout["self_attention_block_0/attn/qkv/kernel"].axes) == (
        None,
        "data",
    )
    assert layout["self_attention_block_0/norm1/gamma"] is None
