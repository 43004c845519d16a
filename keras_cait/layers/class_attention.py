"""Class attention: the class token attends to itself and all patches."""

import keras
from keras import ops

from keras_cait.layers import tensor_ops
from keras_cait.layers.sublayers import apply_dense, attention_output_spec
from keras_cait.serialization import register


@register
class ClassAttention(keras.layers.Layer):
    """Multi-head attention with a single query, the class token.

    The query comes from the class token only; keys and values come from the
    class token and all patch tokens. Only the class token is updated, which
    is what makes CaiT's class-attention stage cheap and its attention maps
    readable.

    Args:
        hidden_dim: int. The token dimension; must be divisible by `num_heads`.
        num_heads: int. The number of attention heads.
        use_qkv_bias: bool. Whether the query, key and value projections have
            a bias.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor of shape `(batch, 1 + num_patches, hidden_dim)`, the
            class token first.
        return_attention: bool. If `True`, also return the attention weights,
            `(batch, heads, 1, 1 + num_patches)`.
    """

    def __init__(self, hidden_dim, num_heads, use_qkv_bias=True, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.use_qkv_bias = use_qkv_bias
        self.head_dim = hidden_dim // num_heads
        self.scale = self.head_dim**-0.5

    def build(self, input_shape):
        token_shape = (None, None, self.hidden_dim)
        for name in ("q", "k", "v"):
            dense = keras.layers.Dense(
                self.hidden_dim,
                use_bias=self.use_qkv_bias,
                dtype=self.dtype_policy,
                name=name,
            )
            dense.build(token_shape)
            setattr(self, name, dense)
        self.proj = keras.layers.Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="proj"
        )
        self.proj.build(token_shape)

    def _split_heads(self, tokens):
        """`(batch, n, hidden_dim)` -> `(batch, heads, n, head_dim)`."""
        tokens = tensor_ops.reshape(
            tokens, (-1, ops.shape(tokens)[1], self.num_heads, self.head_dim)
        )
        return tensor_ops.transpose(tokens, (0, 2, 1, 3))

    def call(self, inputs, return_attention=False):
        # timm's ClassAttn.forward (without fused attention), step by step.
        query = self._split_heads(apply_dense(self.q, inputs[:, :1]))
        key = self._split_heads(apply_dense(self.k, inputs))
        value = self._split_heads(apply_dense(self.v, inputs))
        attention = (query * self.scale) @ tensor_ops.swapaxes(key, -1, -2)
        attention = tensor_ops.softmax(
            tensor_ops.cast(attention, "float32"), axis=-1
        )
        attention = tensor_ops.cast(attention, self.compute_dtype)
        x_cls = tensor_ops.transpose(attention @ value, (0, 2, 1, 3))
        x_cls = tensor_ops.reshape(x_cls, (-1, 1, self.hidden_dim))
        x_cls = apply_dense(self.proj, x_cls)
        if return_attention:
            return x_cls, attention
        return x_cls

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.hidden_dim)

    def compute_attention_shape(self, input_shape):
        """The shape of the attention weights for an input of `input_shape`."""
        return (input_shape[0], self.num_heads, 1, input_shape[1])

    def compute_output_spec(self, inputs, return_attention=False):
        return attention_output_spec(self, inputs, return_attention)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "use_qkv_bias": self.use_qkv_bias,
            }
        )
        return config
