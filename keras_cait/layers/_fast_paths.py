"""keras-cait's speed paths, behind one switch read once when a layer is built.

As timm's `use_fused_attn()`: the environment variable `KERAS_CAIT_FAST_PATHS`
(`1` on, `0` off; default on) sets the start value, `set_fast_paths(enable)`
changes it for layers built afterwards. A layer stores `enabled_for(self)` in
`build()` and keeps one `if` in `call()`. Each path computes what the layer's
`call()` computes; why each is here and its gain: docs/performance.md. The only
module of `keras_cait.layers` that uses a backend (PyTorch) directly.
"""

import os

import keras
from keras import ops

_ENV_VAR = "KERAS_CAIT_FAST_PATHS"
_VALUES = {"1": True, "true": True, "on": True, "yes": True, "": True,
           "0": False, "false": False, "off": False, "no": False}


def _from_environment():
    value = os.environ.get(_ENV_VAR, "1").strip().lower()
    if value not in _VALUES:
        raise ValueError(
            f"Environment variable {_ENV_VAR}={value!r}: expected 1 (on) or 0 (off)."
        )
    return _VALUES[value]


_enabled = _from_environment()


def use_fast_paths():
    """Whether layers built from now on take keras-cait's speed paths: `True`
    unless `KERAS_CAIT_FAST_PATHS=0` or `set_fast_paths(False)`."""
    return _enabled


def set_fast_paths(enable):
    """Turn keras-cait's speed paths on or off (bool `enable`) for layers
    built and models compiled afterwards; built layers keep their choice.
    Raises `TypeError` if `enable` is not a bool."""
    global _enabled
    if not isinstance(enable, bool):
        raise TypeError(f"`enable` must be a bool, got {enable!r}.")
    _enabled = enable


def enabled_for(layer):
    """`use_fast_paths()` for `layer` at its build; off for a layer made in a
    `keras.RematScope` (its sublayers must go through `Layer.__call__`)."""
    # Private (Keras 3.15): `Operation._remat_mode`, set in a RematScope
    # (pinned by tests/test_layers.py).
    return _enabled and getattr(layer, "_remat_mode", None) is None


# Query-row blocks on a CPU: the most bytes of float32 logits attended at
# once, by backend, and the most blocks per layer.
ATTENTION_BLOCK_BYTES = {"jax": 2 * 2**20, "default": 8 * 2**20}
MAX_ATTENTION_BLOCKS = 16


def query_row_blocks(batch_size, num_heads, num_tokens):
    """`(start, stop)` query-row ranges covering `range(num_tokens)`, each with
    at most `ATTENTION_BLOCK_BYTES` of logits (one if a size is symbolic)."""
    if not isinstance(batch_size, int) or not isinstance(num_tokens, int):
        return [(0, num_tokens)]
    backend = keras.backend.backend()
    budget = ATTENTION_BLOCK_BYTES.get(backend, ATTENTION_BLOCK_BYTES["default"])
    blocks = -(-4 * batch_size * num_heads * num_tokens**2 // budget)
    rows = -(-num_tokens // max(1, min(blocks, MAX_ATTENTION_BLOCKS, num_tokens)))
    return [(a, min(a + rows, num_tokens)) for a in range(0, num_tokens, rows)]


def computes_on_cpu(x):
    """Whether `x` is computed on a CPU (PyTorch: its device; JAX and
    TensorFlow: their default device)."""
    if keras.backend.backend() == "torch":
        return x.device.type == "cpu"
    return keras.distribution.list_devices()[0].startswith("cpu")


def eager_torch(x, layer):
    """Whether `x` is a PyTorch tensor outside `torch.compile` and `layer`
    computes in float32: there a sublayer's `call()` computes what its
    `Layer.__call__` would (no autocast)."""
    if keras.backend.backend() != "torch" or layer.dtype_policy.name != "float32":
        return False
    import torch  # optional: only the active backend is imported

    return isinstance(x, torch.Tensor) and not torch.compiler.is_compiling()


def _plain(dense):  # not quantized (e.g. "int8_from_float32"), no LoRA
    return dense.dtype_policy.name == "float32" and not dense.lora_enabled


def _dense(dense, x):
    """`dense(x)`; if `_plain(dense)`, one `torch.nn.functional.linear`."""
    if not _plain(dense):
        return dense(x)
    import torch  # optional: only the active backend is imported

    bias = dense.bias.value if dense.use_bias else None
    return torch.nn.functional.linear(x, dense.kernel.value.T, bias)


def _mix_heads(dense, attn):
    """timm's `proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)`; if
    `_plain(dense)`, one `(heads, heads)` product per image, bias included."""
    if not _plain(dense):
        return dense(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    import torch  # optional: only the active backend is imported

    kernel = dense.kernel.value.T.expand(attn.shape[0], -1, -1)
    flat = attn.reshape(attn.shape[0], attn.shape[1], -1)
    return torch.baddbmm(dense.bias.value[:, None], kernel, flat).reshape(attn.shape)


def _cat(tensors, concatenate):
    return tensors[0] if len(tensors) == 1 else concatenate(tensors, 2)


def talking_heads_attention(layer, x, return_attention, training):
    """`TalkingHeadsAttention.call`, the query rows in blocks on a CPU (each
    row attends on its own: the same numbers); eager PyTorch in torch ops."""
    eager = eager_torch(x, layer)
    batch, tokens = (x.shape if eager else ops.shape(x))[:2]
    rows = [(0, tokens)]
    if computes_on_cpu(x):
        rows = query_row_blocks(batch, layer.num_heads, tokens)
    if eager:
        return _talking_heads_torch(layer, x, rows, return_attention, training)
    qkv = ops.reshape(layer.qkv(x), (-1, tokens, 3, layer.num_heads, layer.head_dim))
    qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
    q, k, v = qkv[0], qkv[1], qkv[2]
    parts = [layer._attend(q[:, :, a:b], k, v, training) for a, b in rows]
    x, attn = (_cat(p, ops.concatenate) for p in zip(*parts))
    x = ops.reshape(ops.swapaxes(x, 1, 2), (-1, tokens, layer.hidden_dim))
    x = layer.projection_dropout_layer(layer.proj(x), training=training)
    return (x, attn) if return_attention else x


def _talking_heads_torch(layer, x, rows, return_attention, training):
    import torch  # optional: only the active backend is imported

    batch, tokens, dim = x.shape
    qkv = _dense(layer.qkv, x).reshape(batch, tokens, 3, layer.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    q, k = q * layer.scale, k.transpose(-2, -1)
    outputs, attention = [], []
    for a, b in rows:
        attn = torch.softmax(_mix_heads(layer.proj_l, q[:, :, a:b] @ k), -1)
        attention.append(_mix_heads(layer.proj_w, attn))
        dropped = layer.attention_dropout_layer.call(attention[-1], training=training)
        outputs.append(dropped @ v)
    x = _cat(outputs, torch.cat).transpose(1, 2).reshape(batch, tokens, dim)
    x = layer.projection_dropout_layer.call(_dense(layer.proj, x), training=training)
    return (x, _cat(attention, torch.cat)) if return_attention else x


def class_attention(layer, x, return_attention):
    """`ClassAttention.call` on eager PyTorch, in torch ops."""
    batch, tokens, dim = x.shape
    heads = layer.num_heads
    q = _dense(layer.q, x[:, :1]).reshape(batch, 1, heads, -1).transpose(1, 2)
    k = _dense(layer.k, x).reshape(batch, tokens, heads, -1).transpose(1, 2)
    v = _dense(layer.v, x).reshape(batch, tokens, heads, -1).transpose(1, 2)
    attn = ((q * layer.scale) @ k.transpose(-2, -1)).softmax(-1)
    x_cls = _dense(layer.proj, (attn @ v).transpose(1, 2).reshape(batch, 1, dim))
    return (x_cls, attn) if return_attention else x_cls


def _mlp(mlp, x, training):
    import torch  # optional: only the active backend is imported

    x = torch.nn.functional.gelu(_dense(mlp.fc1, x))
    x = _dense(mlp.fc2, mlp.dropout.call(x, training=training))
    return mlp.dropout.call(x, training=training)


def self_attention_block(block, x, return_attention, training):
    """`SelfAttentionBlock.call` on eager PyTorch: sublayers' `call()`
    without `Layer.__call__`'s Python."""
    out = block.attn.call(
        block.norm1.call(x), return_attention=return_attention, training=training
    )
    attended, attention = out if return_attention else (out, None)
    x = x + block.drop_path_1.call(block.layer_scale_1.call(attended), training)
    branch = block.layer_scale_2.call(_mlp(block.mlp, block.norm2.call(x), training))
    x = x + block.drop_path_2.call(branch, training)
    return (x, attention) if return_attention else x


def class_attention_block(block, patch_tokens, class_token, return_attention):
    """`ClassAttentionBlock.call` on eager PyTorch (as above)."""
    u = ops.concatenate([class_token, patch_tokens], axis=1)
    out = block.attn.call(block.norm1.call(u), return_attention=return_attention)
    attended, attention = out if return_attention else (out, None)
    x_cls = class_token + block.layer_scale_1.call(attended)
    branch = _mlp(block.mlp, block.norm2.call(x_cls), None)
    x_cls = x_cls + block.layer_scale_2.call(branch)
    return (x_cls, attention) if return_attention else x_cls
