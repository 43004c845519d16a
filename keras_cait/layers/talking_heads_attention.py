"""Talking-heads self-attention (timm's `TalkingHeadAttn`)."""

import keras
from keras import ops

from keras_cait.layers import _fast_paths
from keras_cait.serialization import register


@register
class TalkingHeadsAttention(keras.layers.Layer):
    """Self-attention whose heads exchange information before and after the
    softmax (Shazeer et al., 2020), as used by CaiT (timm's `TalkingHeadAttn`).

    `proj_l` mixes the attention logits across heads before the softmax and
    `proj_w` mixes the probabilities after it. The logits `q @ k^T`, both
    mixes and the softmax run in float32 whatever the compute dtype (float16
    logits overflow above 65504; a quantized or LoRA mix runs in the compute
    dtype); `attn @ v` runs in the compute dtype.

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
        self._fast_paths = _fast_paths.enabled_for(self)

    def call(self, inputs, return_attention=False, training=None):
        if self._fast_paths:
            return _fast_paths.talking_heads_attention(self, inputs, return_attention, training)
        # timm's TalkingHeadAttn.forward.
        tokens = ops.shape(inputs)[1]
        qkv = ops.reshape(
            self.qkv(inputs), (-1, tokens, 3, self.num_heads, self.head_dim)
        )
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        x, attn = self._attend(qkv[0], qkv[1], qkv[2], training)
        x = ops.reshape(ops.swapaxes(x, 1, 2), (-1, tokens, self.hidden_dim))
        x = self.projection_dropout_layer(self.proj(x), training=training)
        return (x, attn) if return_attention else x

    def _attend(self, q, k, v, training):
        """timm's steps from `q * scale @ k^T` to `attn @ v` for the query
        rows `q`, in float32 up to `attn`; returns `(attn @ v, attn)`."""
        q = ops.cast(q, "float32") * self.scale
        attn = q @ ops.swapaxes(ops.cast(k, "float32"), -1, -2)
        attn = self._mix(self.proj_w, ops.softmax(self._mix(self.proj_l, attn), axis=-1))
        attn = ops.cast(attn, self.compute_dtype)
        return self.attention_dropout_layer(attn, training=training) @ v, attn

    def _mix(self, dense, attn):
        """timm's `proj(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)`, in
        float32: `dense` across the heads axis. A plain `dense` is one
        `(heads, heads)` product per image on the flattened maps, with its
        weights in float32 (the transposed form miscompiles in OpenVINO
        2026.4's CPU plugin; a 2-D kernel is slower in XLA); a quantized or
        LoRA `dense` is called as timm writes it."""
        if dense.quantization_mode or dense.lora_enabled:
            attn = dense(ops.transpose(attn, (0, 2, 3, 1)))
            return ops.cast(ops.transpose(attn, (0, 3, 1, 2)), "float32")
        shape = ops.shape(attn)
        kernel = ops.transpose(ops.cast(dense.kernel, "float32"))
        kernel = ops.broadcast_to(kernel, (shape[0], shape[1], shape[1]))
        flat = ops.reshape(attn, (shape[0], shape[1], shape[2] * shape[3]))
        mixed = ops.matmul(kernel, flat) + ops.cast(dense.bias, "float32")[:, None]
        return ops.reshape(mixed, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def compute_attention_shape(self, input_shape):
        """The shape of the attention weights for an input of `input_shape`."""
        tokens = input_shape[1]
        return (input_shape[0], self.num_heads, tokens, tokens)

    def compute_output_spec(self, inputs, return_attention=False, training=None):
        outputs = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention:
            return outputs
        shape = self.compute_attention_shape(inputs.shape)
        return outputs, keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        names = (
            "hidden_dim", "num_heads", "use_qkv_bias", "attention_dropout",
            "projection_dropout",
        )
        config.update({name: getattr(self, name) for name in names})
        return config
