"""Calling a composite layer's own sublayers with little Python overhead.

Inside a parent layer's `call`, `Layer.__call__` of a sublayer that is
already built mostly adds Python work: argument binding, input conversion,
name scopes, training-flag resolution and autocast-scope bookkeeping. In eager
execution (the PyTorch backend) that work costs as much as the arithmetic of
a small batch: about 40 ms per `cait_xxs24_224` forward pass, for ~240 layer
calls. The helpers here call `layer.call` directly whenever that is exactly
equivalent to `layer(...)`, and fall back to `__call__` otherwise.
"""

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
