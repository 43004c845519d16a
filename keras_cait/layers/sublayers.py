"""A composite layer's calls of its own built sublayers, and the output
spec of an attention layer.

In eager execution a sublayer's `Layer.__call__` costs more Python than a
small batch's arithmetic (docs/performance.md, "Eager sublayer calls"). There,
and only where the sublayer itself says that this computes the same thing,
`call_sublayer` runs `layer.call` and `apply_dense` the plain product;
everywhere else they call the layer.
"""

import keras
from keras.src import backend as keras_backend

from keras_cait.layers import tensor_ops


def executing_eagerly(x):
    """Whether ops on the backend tensor `x` run eagerly: not traced by
    `tf.function`, `jax.jit` or `torch.compile`."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch  # optional: only the active backend is imported

        return not torch.compiler.is_compiling()
    if backend == "jax":
        import jax  # optional: only the active backend is imported

        return not isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf  # optional: only the active backend is imported

        return tf.executing_eagerly()
    return False


def call_is_plain(layer):
    """Whether `layer.call(...)` computes what `layer(...)` would here: the
    layer is built, not quantized or rematerialised, has no activity
    regulariser, `Layer.__call__` would keep the current autocast scope and
    no distribution may relayout its output."""
    # Private keras.src APIs (Keras 3.15): the autocast scope that
    # `Layer.__call__` enters, and `Operation._remat_mode` (set when the
    # layer is created inside a `keras.RematScope`).
    scope = keras_backend.get_autocast_scope()
    if scope is None:
        same_scope = layer.compute_dtype == layer.variable_dtype
    else:
        same_scope = layer.autocast and scope.dtype == layer.compute_dtype
    return (
        same_scope
        and layer.built
        and layer.quantization_mode is None
        and getattr(layer, "_remat_mode", None) is None
        and layer.activity_regularizer is None
        and keras.distribution.distribution() is None
    )


def dense_is_plain(layer):
    """Whether a `keras.layers.Dense` computes `inputs @ kernel + bias`, as
    it says itself: `call_is_plain`, no LoRA and no activation."""
    return (
        call_is_plain(layer)
        and not layer.lora_enabled
        and layer.activation is keras.activations.linear
    )


def call_sublayer(layer, *args, **kwargs):
    """`layer(*args, **kwargs)`; in eager execution `layer.call(...)` where
    `call_is_plain(layer)`. The caller passes every call argument itself
    (`training` too): nothing is resolved from the call context."""
    if call_is_plain(layer) and executing_eagerly(args[0]):
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


def apply_dense(layer, inputs):
    """`layer(inputs)` for a `keras.layers.Dense`; in eager execution
    `inputs @ kernel + bias` (`tensor_ops.linear`) where
    `dense_is_plain(layer)`."""
    if dense_is_plain(layer) and executing_eagerly(inputs):
        bias = layer.bias.value if layer.use_bias else None
        return tensor_ops.linear(inputs, layer.kernel.value, bias)
    return call_sublayer(layer, inputs)


def apply_layer_norm(layer, inputs):
    """`layer(inputs)` for a `keras.layers.LayerNormalization`; in eager
    execution, where `call_is_plain(layer)` and the layer normalises the
    last axis in float32, `tensor_ops.layer_norm` with its weights (on
    PyTorch the kernel Keras's call runs, without its `keras.ops` dispatch:
    docs/performance.md, "PyTorch tensor ops")."""
    if (
        layer.axis == [-1]
        and not layer.rms_scaling
        and layer.compute_dtype == "float32"
        and call_is_plain(layer)
        and executing_eagerly(inputs)
    ):
        outputs = tensor_ops.layer_norm(
            inputs,
            None if layer.gamma is None else layer.gamma.value,
            None if layer.beta is None else layer.beta.value,
            layer.epsilon,
        )
        return tensor_ops.cast(outputs, "float32")
    return call_sublayer(layer, inputs)


def attention_output_spec(layer, inputs, return_attention):
    """An attention layer's `compute_output_spec`: its output and, with
    `return_attention`, its weights (`layer.compute_attention_shape`), in
    its compute dtype."""
    outputs = keras.KerasTensor(
        layer.compute_output_shape(inputs.shape), dtype=layer.compute_dtype
    )
    if not return_attention:
        return outputs
    shape = layer.compute_attention_shape(inputs.shape)
    return outputs, keras.KerasTensor(shape, dtype=layer.compute_dtype)
