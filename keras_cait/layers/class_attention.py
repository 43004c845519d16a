"""Class attention: the class token attends to itself and all patches."""

import keras
from keras import ops

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
        tokens = ops.reshape(
            tokens, (-1, ops.shape(tokens)[1], self.num_heads, self.head_dim)
        )
        return ops.transpose(tokens, (0, 2, 1, 3))

    def call(self, inputs, return_attention=False):
        # timm's ClassAttn.forward (without fused attention).
        q = ops.cast(self._split_heads(self.q(inputs[:, :1])), "float32")
        k = ops.cast(self._split_heads(self.k(inputs)), "float32")
        v = self._split_heads(self.v(inputs))
        attn = ops.softmax((q * self.scale) @ ops.swapaxes(k, -1, -2), axis=-1)
        attn = ops.cast(attn, self.compute_dtype)
        x_cls = ops.reshape(ops.swapaxes(attn @ v, 1, 2), (-1, 1, self.hidden_dim))
        x_cls = self.proj(x_cls)
        return (x_cls, attn) if return_attention else x_cls

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.hidden_dim)

    def compute_attention_shape(self, input_shape):
        """The shape of the attention weights for an input of `input_shape`."""
        return (input_shape[0], self.num_heads, 1, input_shape[1])

    def compute_output_spec(self, inputs, return_attention=False):
        outputs = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention:
            return outputs
        shape = self.compute_attention_shape(inputs.shape)
        return outputs, keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        names = ("hidden_dim", "num_heads", "use_qkv_bias")
        config.update({name: getattr(self, name) for name in names})
        return config
