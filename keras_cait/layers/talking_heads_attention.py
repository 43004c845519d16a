"""Talking-heads self-attention (timm's `TalkingHeadAttn`)."""

import keras
from keras import ops

from keras_cait.layers import tensor_ops
from keras_cait.layers.sublayers import (
    apply_dense,
    attention_output_spec,
    call_sublayer,
    dense_is_plain,
)
from keras_cait.serialization import register

# On a CPU: the largest float32 logits `(batch, heads, rows, tokens)`
# attended at once, by backend (the default for any other), and the most
# row blocks per layer.
ATTENTION_BLOCK_BYTES = {"jax": 2 * 2**20, "default": 8 * 2**20}
MAX_ATTENTION_BLOCKS = 16


def mix_heads(attention, head_mixer):
    """timm's `proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)` on a
    float32 `(batch, heads, queries, keys)` tensor: a built `Dense(heads)`
    across the heads axis. Where it is a plain product (`dense_is_plain`),
    one `(heads, heads)` product per image without transposing the tensor,
    the bias added in the product on PyTorch (docs/performance.md, "Head
    mixes"); otherwise the layer's call.
    """
    if not dense_is_plain(head_mixer):
        mixed = head_mixer(ops.transpose(attention, (0, 2, 3, 1)))
        return ops.cast(ops.transpose(mixed, (0, 3, 1, 2)), "float32")
    kernel = tensor_ops.cast(head_mixer.kernel.value, "float32")
    bias = tensor_ops.cast(head_mixer.bias.value, "float32")[:, None]
    shape = ops.shape(attention)
    # One kernel per image: a batched product of equal batches (with a 2-D
    # kernel PyTorch transposes copies of the attention tensor).
    kernel = tensor_ops.broadcast_to(
        tensor_ops.transpose(kernel, (1, 0)), (shape[0], shape[1], shape[1])
    )
    flat = tensor_ops.reshape(attention, (shape[0], shape[1], -1))
    return tensor_ops.reshape(tensor_ops.matmul_add(kernel, flat, bias), shape)


def computes_on_cpu(x):
    """Whether the backend computes `x` on a CPU (PyTorch: where `x` is;
    JAX and TensorFlow: their default devices)."""
    backend = keras.backend.backend()
    if backend == "torch":
        return x.device.type == "cpu"
    if backend in ("jax", "tensorflow"):
        return keras.distribution.list_devices()[0].startswith("cpu")
    return False


def attention_block_bytes():
    """The active backend's entry of `ATTENTION_BLOCK_BYTES` (its default
    for a backend without one)."""
    return ATTENTION_BLOCK_BYTES.get(
        keras.backend.backend(), ATTENTION_BLOCK_BYTES["default"]
    )


def query_row_blocks(batch_size, num_heads, num_tokens):
    """`(start, stop)` query-row ranges covering `range(num_tokens)`, each
    with at most the backend's `ATTENTION_BLOCK_BYTES` of float32 logits (at
    most `MAX_ATTENTION_BLOCKS` blocks; one when a size is symbolic): on a
    CPU, large attention tensors cost page faults on every call
    (docs/performance.md, "Query-row blocks")."""
    if not isinstance(batch_size, int) or not isinstance(num_tokens, int):
        return [(0, num_tokens)]
    logits_bytes = 4 * batch_size * num_heads * num_tokens * num_tokens
    num_blocks = -(-logits_bytes // attention_block_bytes())
    num_blocks = max(1, min(num_blocks, MAX_ATTENTION_BLOCKS, num_tokens))
    rows = -(-num_tokens // num_blocks)
    return [
        (start, min(start + rows, num_tokens))
        for start in range(0, num_tokens, rows)
    ]


def _concatenate_rows(blocks):
    return blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=2)


@register
class TalkingHeadsAttention(keras.layers.Layer):
    """Self-attention whose heads exchange information before and after the
    softmax (Shazeer et al., 2020), as used by CaiT (timm's `TalkingHeadAttn`).

    `proj_l` mixes the attention logits across heads before the softmax and
    `proj_w` mixes the probabilities after it. The softmax and both mixes run
    in float32 whatever the compute dtype.

    Args:
        hidden_dim: int. The token dimension; must be divisible by `num_heads`.
        num_heads: int. The number of attention heads.
        use_qkv_bias: bool. Whether the fused query/key/value projection has
            a bias.
        attention_dropout: float. Dropout rate on the mixed attention weights.
        projection_dropout: float. Dropout rate after the output projection.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor of shape `(batch, tokens, hidden_dim)`.
        return_attention: bool. If `True`, also return the attention weights
            after the post-softmax mix, `(batch, heads, tokens, tokens)`.
        training: bool. Whether dropout is active.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        use_qkv_bias=True,
        attention_dropout=0.0,
        projection_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.use_qkv_bias = use_qkv_bias
        self.attention_dropout = attention_dropout
        self.projection_dropout = projection_dropout
        self.head_dim = hidden_dim // num_heads
        self.scale = self.head_dim**-0.5

    def build(self, input_shape):
        token_shape = (None, None, self.hidden_dim)
        self.qkv = keras.layers.Dense(
            3 * self.hidden_dim,
            use_bias=self.use_qkv_bias,
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(token_shape)
        self.proj_l = keras.layers.Dense(
            self.num_heads, dtype=self.dtype_policy, name="proj_l"
        )
        self.proj_l.build((None, self.num_heads))
        self.proj_w = keras.layers.Dense(
            self.num_heads, dtype=self.dtype_policy, name="proj_w"
        )
        self.proj_w.build((None, self.num_heads))
        self.attention_dropout_layer = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy,
            name="attention_dropout",
        )
        self.proj = keras.layers.Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="proj"
        )
        self.proj.build(token_shape)
        self.projection_dropout_layer = keras.layers.Dropout(
            self.projection_dropout, dtype=self.dtype_policy,
            name="projection_dropout",
        )

    def call(self, inputs, return_attention=False, training=None):
        # timm's TalkingHeadAttn.forward, step by step.
        num_tokens = ops.shape(inputs)[1]
        qkv = apply_dense(self.qkv, inputs)
        qkv = tensor_ops.reshape(
            qkv, (-1, num_tokens, 3, self.num_heads, self.head_dim)
        )
        qkv = tensor_ops.transpose(qkv, (2, 0, 3, 1, 4))
        query, key, value = qkv[0] * self.scale, qkv[1], qkv[2]
        blocks = [(0, num_tokens)]
        if computes_on_cpu(inputs):
            blocks = query_row_blocks(ops.shape(inputs)[0], self.num_heads, num_tokens)
        # Each query row attends on its own: blocks of rows give the same numbers.
        outputs, attention = zip(*(
            self._attend(query[:, :, start:stop], key, value, training)
            for start, stop in blocks
        ))
        x = _concatenate_rows(outputs)
        x = tensor_ops.reshape(
            tensor_ops.transpose(x, (0, 2, 1, 3)), (-1, num_tokens, self.hidden_dim)
        )
        x = apply_dense(self.proj, x)
        x = call_sublayer(self.projection_dropout_layer, x, training=training)
        if return_attention:
            return x, _concatenate_rows(attention)
        return x

    def _attend(self, query, key, value, training):
        """timm's steps from `q @ k.T` to `attn @ v` for the rows of the
        scaled `query` (the head mixes and the softmax in float32); returns
        `(attn @ v, attn)`."""

        attention = tensor_ops.cast(query @ tensor_ops.swapaxes(key, -1, -2), "float32")
        attention = mix_heads(attention, self.proj_l)
        attention = tensor_ops.softmax(attention, axis=-1)
        attention = mix_heads(attention, self.proj_w)
        attention = tensor_ops.cast(attention, self.compute_dtype)
        dropped = call_sublayer(
            self.attention_dropout_layer, attention, training=training
        )
        return dropped @ value, attention

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def compute_attention_shape(self, input_shape):
        """The shape of the attention weights for an input of `input_shape`."""
        tokens = input_shape[1]
        return (input_shape[0], self.num_heads, tokens, tokens)

    def compute_output_spec(self, inputs, return_attention=False, training=None):
        return attention_output_spec(self, inputs, return_attention)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "use_qkv_bias": self.use_qkv_bias,
                "attention_dropout": self.attention_dropout,
                "projection_dropout": self.projection_dropout,
            }
        )
        return config
