"""The attention layers' tensor ops, each computing what its `keras.ops`
namesake computes. On a PyTorch tensor they are the tensor's own methods:
there a `keras.ops` call's dispatch costs more than a shape op's work at
batch 1 (docs/performance.md, "PyTorch tensor ops"). On anything else
(JAX, TensorFlow, symbolic `KerasTensor`s) they are `keras.ops`.

They hold no state and touch no layer, so quantization, LoRA and dtype
policies see the same calls either way.
"""

import keras
from keras import ops


def _is_torch_tensor(x):
    if keras.backend.backend() != "torch":
        return False
    import torch  # optional: only the active backend is imported

    return isinstance(x, torch.Tensor)


def reshape(x, shape):
    """`keras.ops.reshape(x, shape)`."""
    return x.reshape(shape) if _is_torch_tensor(x) else ops.reshape(x, shape)


def transpose(x, axes):
    """`keras.ops.transpose(x, axes)`."""
    return x.permute(axes) if _is_torch_tensor(x) else ops.transpose(x, axes)


def swapaxes(x, axis1, axis2):
    """`keras.ops.swapaxes(x, axis1, axis2)`."""
    if _is_torch_tensor(x):
        return x.transpose(axis1, axis2)
    return ops.swapaxes(x, axis1, axis2)


def broadcast_to(x, shape):
    """`keras.ops.broadcast_to(x, shape)` (a view on PyTorch)."""
    return x.expand(shape) if _is_torch_tensor(x) else ops.broadcast_to(x, shape)


def cast(x, dtype):
    """`keras.ops.cast(x, dtype)`; a PyTorch tensor that already has
    `dtype` is returned as it is."""
    if _is_torch_tensor(x) and keras.backend.standardize_dtype(x.dtype) == dtype:
        return x
    return ops.cast(x, dtype)


def softmax(x, axis):
    """`keras.ops.softmax(x, axis)` of a float32 tensor (Keras casts float16
    on a PyTorch CPU; these layers take the softmax in float32)."""
    if _is_torch_tensor(x) and x.dtype.is_floating_point and x.itemsize >= 4:
        import torch  # optional: only the active backend is imported

        return torch.softmax(x, axis)
    return ops.softmax(x, axis=axis)


def linear(x, kernel, bias):
    """`x @ kernel + bias` (`bias` may be `None`) on backend tensors, as a
    plain `Dense` computes it; on PyTorch one fused product and bias add
    (`torch.nn.functional.linear`, as `torch.nn.Linear`)."""
    if _is_torch_tensor(x):
        import torch  # optional: only the active backend is imported

        return torch.nn.functional.linear(x, kernel.T, bias)
    outputs = x @ kernel
    return outputs if bias is None else outputs + bias


def matmul_add(x, y, bias):
    """`x @ y + bias` for 3-D `x` and `y` (`bias` broadcasts against the
    product); on PyTorch one fused product and add (`torch.baddbmm`)."""
    if _is_torch_tensor(x):
        import torch  # optional: only the active backend is imported

        return torch.baddbmm(bias, x, y)
    return x @ y + bias


def layer_norm(x, gamma, beta, epsilon):
    """`keras.ops.layer_normalization(x, gamma, beta, axis=-1,
    epsilon=epsilon)`; on a float32 PyTorch tensor the same kernel
    (`torch.nn.functional.layer_norm`) without the `keras.ops` dispatch."""
    if _is_torch_tensor(x) and keras.backend.standardize_dtype(x.dtype) == "float32":
        import torch  # optional: only the active backend is imported

        return torch.nn.functional.layer_norm(
            x, (x.shape[-1],), gamma, beta, epsilon
        )
    return ops.layer_normalization(x, gamma, beta, axis=-1, epsilon=epsilon)
