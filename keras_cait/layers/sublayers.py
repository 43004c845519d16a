"""Calling a composite layer's own sublayers with little Python overhead.

Inside a parent layer's `call`, `Layer.__call__` of a sublayer that is
already built mostly adds Python work: argument binding, input conversion,
name scopes, training-flag resolution and autocast-scope bookkeeping. In eager
execution (the PyTorch backend) that work costs as much as the arithmetic of
a small batch: about 40 ms per `cait_xxs24_224` forward pass, for ~240 layer
calls. The helpers here call `layer.call` directly whenever that is exactly
equivalent to `layer(...)`, and fall back to `__call__` otherwise.
"""

import keras
from keras import ops


def _direct_call_is_equivalent(layer):
    """Whether `layer.call(...)` does what `layer(...)` would.

    It does for a built layer that is not quantized or rematerialized and
    whose variables are read the same way in the parent's autocast scope:
    either the layer autocasts (as the parent does), or its policy is not
    mixed (so no scope is active).
    """
    policy = layer.dtype_policy
    if policy.quantization_mode is not None:
        return False
    if getattr(layer, "_remat_mode", None) is not None:
        return False
    if not layer.built:
        return False
    return layer.autocast or policy.compute_dtype == policy.variable_dtype


def apply_sublayer(layer, *args, **kwargs):
    """Calls a sublayer, skipping `Layer.__call__` where that is safe.

    The parent passes every call argument explicitly (`training` too), so
    nothing needs resolving from the call context.

    Args:
        layer: a built `keras.layers.Layer` owned by the caller.
        *args: positional call arguments.
        **kwargs: keyword call arguments.

    Returns:
        What `layer(*args, **kwargs)` returns.
    """
    if _direct_call_is_equivalent(layer):
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


def apply_dense(layer, inputs):
    """Applies a `keras.layers.Dense` sublayer with the fewest ops.

    A plain `Dense` (no activation, LoRA or quantization) is
    `inputs @ kernel + bias`; written with the tensors' own operators this
    skips the per-op dispatch of `keras.ops` (argument flattening, dtype
    promotion, device checks), which in eager PyTorch costs more than the
    product of a batch-1 token matrix. Variables are read through `.value`,
    which applies the caller's autocast scope exactly as `Dense.call` does.
    Any other `Dense` goes through `apply_sublayer`.

    Args:
        layer: a built `keras.layers.Dense` owned by the caller.
        inputs: tensor `(..., input_dim)` in the layer's compute dtype.

    Returns:
        What `layer(inputs)` returns.
    """
    plain = (
        _direct_call_is_equivalent(layer)
        and not layer.lora_enabled
        and layer.activation in (None, keras.activations.linear)
    )
    if not plain:
        return apply_sublayer(layer, inputs)
    outputs = inputs @ layer.kernel.value
    if layer.use_bias:
        outputs = outputs + layer.bias.value
    return outputs


def apply_dropout(layer, inputs, training):
    """Applies a `Dropout` sublayer only when it can change its input.

    Args:
        layer: a `keras.layers.Dropout`.
        inputs: tensor.
        training: bool or `None`.

    Returns:
        `inputs`, with dropout applied when `training` and `layer.rate > 0`.
    """
    if training and layer.rate > 0:
        return layer(inputs, training=training)
    return inputs


def cast_if_needed(x, dtype):
    """`ops.cast(x, dtype)`, skipped when `x` already has that dtype.

    Args:
        x: tensor or variable.
        dtype: string dtype.

    Returns:
        `x` in `dtype`.
    """
    if ops.dtype(x) == dtype:
        return x
    return ops.cast(x, dtype)
