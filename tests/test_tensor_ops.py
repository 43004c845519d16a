"""`keras_cait.layers.tensor_ops`: each op computes its `keras.ops`
namesake; on PyTorch tensors the attention layers call no `keras.ops` shape
op at all, and the model's numbers stay those of `keras.ops`."""

import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_cait
from keras_cait.layers import tensor_ops
from tests.support import TINY_BACKBONE, to_numpy

RNG = np.random.default_rng(0)
ATTENTION_MODULES = ("talking_heads_attention.py", "class_attention.py", "tensor_ops.py")
X = RNG.standard_normal((2, 3, 5, 4)).astype("float32")


@pytest.mark.parametrize(
    "name, args, reference",
    [
        ("reshape", ((2, 3, -1),), lambda x: ops.reshape(x, (2, 3, -1))),
        ("transpose", ((0, 2, 3, 1),), lambda x: ops.transpose(x, (0, 2, 3, 1))),
        ("swapaxes", (-1, -2), lambda x: ops.swapaxes(x, -1, -2)),
        ("softmax", (-1,), lambda x: ops.softmax(x, axis=-1)),
        ("cast", ("float16",), lambda x: ops.cast(x, "float16")),
        ("cast", ("float32",), lambda x: x),
    ],
)
def test_op_computes_its_keras_ops_namesake(name, args, reference):
    x = ops.convert_to_tensor(X)
    result = getattr(tensor_ops, name)(x, *args)
    expected = reference(x)
    assert keras.backend.standardize_dtype(result.dtype) == (
        keras.backend.standardize_dtype(expected.dtype)
    )
    np.testing.assert_array_equal(to_numpy(result), to_numpy(expected))


def test_broadcast_to_and_linear():
    kernel = ops.convert_to_tensor(RNG.standard_normal((4, 6)).astype("float32"))
    bias = ops.convert_to_tensor(RNG.standard_normal((6,)).astype("float32"))
    x = ops.convert_to_tensor(X)
    np.testing.assert_allclose(
        to_numpy(tensor_ops.linear(x, kernel, bias)),
        X @ to_numpy(kernel) + to_numpy(bias), rtol=1e-5, atol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(tensor_ops.linear(x, kernel, None)), X @ to_numpy(kernel),
        rtol=1e-5, atol=1e-5,
    )
    small = ops.convert_to_tensor(X[:1, :1, :1])
    np.testing.assert_array_equal(
        to_numpy(tensor_ops.broadcast_to(small, (2, 3, 5, 4))),
        np.broadcast_to(X[:1, :1, :1], (2, 3, 5, 4)),
    )


def test_matmul_add_is_a_batched_product_plus_bias(monkeypatch):
    a = RNG.standard_normal((2, 4, 4)).astype("float32")
    b = RNG.standard_normal((2, 4, 15)).astype("float32")
    bias = RNG.standard_normal((4, 1)).astype("float32")
    fused = []
    if keras.backend.backend() == "torch":
        import torch

        monkeypatch.setattr(
            torch, "baddbmm",
            lambda *args, _f=torch.baddbmm: fused.append(1) or _f(*args),
        )
    result = tensor_ops.matmul_add(*map(ops.convert_to_tensor, (a, b, bias)))
    np.testing.assert_allclose(to_numpy(result), a @ b + bias, rtol=1e-5, atol=1e-5)
    # On PyTorch the product and the bias add are one fused op.
    assert fused == ([1] if keras.backend.backend() == "torch" else [])


def test_symbolic_tensors_go_through_keras_ops():
    x = keras.KerasTensor((None, 3, 5, 4))
    assert tensor_ops.reshape(x, (-1, 3, 20)).shape == (None, 3, 20)
    assert tensor_ops.transpose(x, (0, 2, 1, 3)).shape == (None, 5, 3, 4)
    assert tensor_ops.swapaxes(x, 1, 2).shape == (None, 5, 3, 4)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the tensor methods are PyTorch's"
)
def test_eager_torch_forward_calls_no_keras_shape_op(monkeypatch):
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    images = RNG.standard_normal((2, 32, 32, 3)).astype("float32")
    expected = to_numpy(backbone(images))
    calls = []
    for name in (
        "reshape", "transpose", "swapaxes", "softmax", "broadcast_to",
        "layer_normalization",
    ):
        original = getattr(tensor_ops.ops, name)
        monkeypatch.setattr(
            tensor_ops.ops, name,
            lambda *a, _name=name, _original=original, **k: (
                calls.append((_name, sys._getframe(1).f_code.co_filename)),
                _original(*a, **k),
            )[1],
        )
    np.testing.assert_array_equal(to_numpy(backbone(images)), expected)
    assert not [c for c in calls if c[1].endswith(ATTENTION_MODULES)], calls
    # Where the fast path is off, the same ops go through keras.ops.
    monkeypatch.setattr(tensor_ops, "_is_torch_tensor", lambda x: False)
    np.testing.assert_allclose(
        to_numpy(backbone(images)), expected, rtol=1e-6, atol=1e-6
    )
    assert {
        "reshape", "transpose", "swapaxes", "softmax", "layer_normalization"
    } <= {c[0] for c in calls}
