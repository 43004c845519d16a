"""Speed paths behind one switch read at build, as timm's `use_fused_attn()`: env
`KERAS_CAIT_FAST_PATHS` (1 on, default; 0 off) or `set_fast_paths`. Each computes what
the layer's `call()` does (docs/performance.md); the only PyTorch use in `layers`."""

import os

import keras
from keras import ops

_ENV_VAR = "KERAS_CAIT_FAST_PATHS"
_VALUES = {**dict.fromkeys(("1", "true", "on", "yes", ""), True),
           **dict.fromkeys(("0", "false", "off", "no"), False)}


def _from_environment():
    value = os.environ.get(_ENV_VAR, "1").strip().lower()
    if value not in _VALUES:
        raise ValueError(f"{_ENV_VAR}={value!r}: expected 1 (on) or 0 (off).")
    return _VALUES[value]


_enabled = _from_environment()


def use_fast_paths():
    """Whether layers built from now on take the speed paths."""
    return _enabled


def set_fast_paths(enable):
    """Speed paths on or off (a bool, else `TypeError`) for layers built afterwards."""
    global _enabled
    if not isinstance(enable, bool):
        raise TypeError(f"`enable` must be a bool, got {enable!r}.")
    _enabled = enable


def enabled_for(layer):
    """`use_fast_paths()` at `layer`'s build; off in a `keras.RematScope`."""
    # Private (Keras 3.15): `Operation._remat_mode` (tests/test_layers.py).
    return _enabled and getattr(layer, "_remat_mode", None) is None


# Query-row blocks: most bytes of logits at once, by backend; most blocks.
ATTENTION_BLOCK_BYTES = {"jax": 2 * 2**20, "default": 8 * 2**20}
MAX_ATTENTION_BLOCKS = 16


def query_row_blocks(batch_size, num_heads, num_tokens):
    """`(start, stop)` query rows with at most `ATTENTION_BLOCK_BYTES` of logits each."""
    if not isinstance(batch_size, int) or not isinstance(num_tokens, int):
        return [(0, num_tokens)]
    backend = keras.backend.backend()
    budget = ATTENTION_BLOCK_BYTES.get(backend, ATTENTION_BLOCK_BYTES["default"])
    blocks = -(-4 * batch_size * num_heads * num_tokens**2 // budget)
    rows = -(-num_tokens // max(1, min(blocks, MAX_ATTENTION_BLOCKS, num_tokens)))
    return [(a, min(a + rows, num_tokens)) for a in range(0, num_tokens, rows)]


def computes_on_cpu(x):
    """Whether `x` is on a CPU; false on OpenVINO (it compiles the whole graph)."""
    if keras.backend.backend() == "torch":
        return x.device.type == "cpu"
    if keras.backend.backend() not in ("jax", "tensorflow"):
        return False
    return keras.distribution.list_devices()[0].startswith("cpu")


def eager_torch(x, layer):
    """Whether `x` is eager PyTorch (not `torch.compile`) and `layer` float32."""
    if keras.backend.backend() != "torch" or layer.dtype_policy.name != "float32":
        return False
    import torch  # optional: the active backend only (Keras has imported it)

    return isinstance(x, torch.Tensor) and not torch.compiler.is_compiling()


def _plain(dense):  # not quantized (policy "int8_from_float32"...), no LoRA
    return dense.dtype_policy.name == "float32" and not dense.lora_enabled


def _dense(dense, x):  # `dense(x)`; one `linear` if `_plain(dense)`
    import torch  # optional: the active backend only (Keras has imported it)

    if not _plain(dense):
        return dense(x)
    bias = dense.bias.value if dense.use_bias else None
    return torch.nn.functional.linear(x, dense.kernel.value.T, bias)


def _mix_heads(dense, attn):
    """timm's `proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)`, one `baddbmm`."""
    import torch  # optional: the active backend only (Keras has imported it)

    if not _plain(dense):
        return dense(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    kernel = dense.kernel.value.T.expand(attn.shape[0], -1, -1)
    flat = attn.reshape(attn.shape[0], attn.shape[1], -1)
    return torch.baddbmm(dense.bias.value[:, None], kernel, flat).reshape(attn.shape)


def _cat(tensors, concatenate):
    return tensors[0] if len(tensors) == 1 else concatenate(tensors, 2)


def talking_heads_attention(layer, x, return_attention, training):
    """`TalkingHeadsAttention.call`, query rows in blocks on a CPU; eager torch ops."""
    eager = eager_torch(x, layer)
    batch, tokens = (x.shape if eager else ops.shape(x))[:2]
    cpu = computes_on_cpu(x)
    rows = query_row_blocks(batch, layer.num_heads, tokens) if cpu else [(0, tokens)]
    if not eager:
        qkv = ops.reshape(layer.qkv(x), (-1, tokens, 3, layer.num_heads, layer.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        parts = [layer._attend(qkv[0][:, :, a:b], qkv[1], qkv[2], training) for a, b in rows]
        x, attn = (_cat(p, ops.concatenate) for p in zip(*parts))
        x = ops.reshape(ops.swapaxes(x, 1, 2), (-1, tokens, layer.hidden_dim))
        x = layer.projection_dropout_layer(layer.proj(x), training=training)
        return (x, attn) if return_attention else x
    import torch  # optional: the active backend only (Keras has imported it)

    qkv = _dense(layer.qkv, x).reshape(batch, tokens, 3, layer.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    q, k = q * layer.scale, k.transpose(-2, -1)
    outputs, attention = [], []
    for a, b in rows:
        attn = torch.softmax(_mix_heads(layer.proj_l, q[:, :, a:b] @ k), -1)
        attention.append(_mix_heads(layer.proj_w, attn))
        outputs.append(layer.attention_dropout_layer.call(attention[-1], training=training) @ v)
    x = _cat(outputs, torch.cat).transpose(1, 2).reshape(batch, tokens, -1)
    x = layer.projection_dropout_layer.call(_dense(layer.proj, x), training=training)
    return (x, _cat(attention, torch.cat)) if return_attention else x


def _mlp(mlp, x, training):  # `Mlp.call` on eager PyTorch
    import torch  # optional: the active backend only (Keras has imported it)

    x = torch.nn.functional.gelu(_dense(mlp.fc1, x))
    x = _dense(mlp.fc2, mlp.dropout.call(x, training=training))
    return mlp.dropout.call(x, training=training)


def self_attention_block(block, x, return_attention, training):
    """`SelfAttentionBlock.call` on eager PyTorch, without `Layer.__call__`."""
    out = block.attn.call(block.norm1.call(x), return_attention=return_attention, training=training)
    attended, attention = out if return_attention else (out, None)
    x = x + block.drop_path_1.call(block.layer_scale_1.call(attended), training)
    branch = block.layer_scale_2.call(_mlp(block.mlp, block.norm2.call(x), training))
    x = x + block.drop_path_2.call(branch, training)
    return (x, attention) if return_attention else x
