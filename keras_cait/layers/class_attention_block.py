"""CaiT's class-attention block: updates the class token only."""

import keras
from keras import ops

from keras_cait.layers.class_attention import ClassAttention
from keras_cait.layers.self_attention_block import build_branches
from keras_cait.serialization import register


@register
class ClassAttentionBlock(keras.layers.Layer):
    """A pre-norm block that refines the class token from frozen patches
    (timm's `LayerScaleBlockClassAttn`):

    `u = concat(cls, patches)`,
    `cls = cls + gamma_1 * class_attention(norm1(u))`,
    `cls = cls + gamma_2 * mlp(norm2(cls))`.

    As in timm's CaiT, there is no dropout and no drop path here.

    Args:
        hidden_dim: int. The token dimension.
        num_heads: int. The number of attention heads.
        mlp_ratio: float. The MLP's hidden size as a multiple of `hidden_dim`.
        use_qkv_bias: bool. Whether the query/key/value projections have a
            bias.
        layer_scale_init_value: float. Initial value of LayerScale's `gamma`.
        layer_norm_epsilon: float. Epsilon of both LayerNorms.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        patch_tokens: tensor `(batch, num_patches, hidden_dim)`; not updated.
        class_token: tensor `(batch, 1, hidden_dim)`.
        return_attention: bool. If `True`, also return the class-attention
            weights `(batch, heads, 1, 1 + num_patches)`.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_ratio=4.0,
        use_qkv_bias=True,
        layer_scale_init_value=1e-5,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.use_qkv_bias = use_qkv_bias
        self.layer_scale_init_value = layer_scale_init_value
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, patch_tokens_shape, class_token_shape=None):
        attention = ClassAttention(
            self.hidden_dim,
            self.num_heads,
            use_qkv_bias=self.use_qkv_bias,
            dtype=self.dtype_policy,
            name="attn",
        )
        build_branches(self, attention)

    def call(self, patch_tokens, class_token, return_attention=False):
        # timm's LayerScaleBlockClassAttn.forward (no drop path here).
        u = ops.concatenate([class_token, patch_tokens], axis=1)
        out = self.attn(self.norm1(u), return_attention=return_attention)
        attended, attention = out if return_attention else (out, None)
        x_cls = class_token + self.layer_scale_1(attended)
        x_cls = x_cls + self.layer_scale_2(self.mlp(self.norm2(x_cls)))
        return (x_cls, attention) if return_attention else x_cls

    def compute_output_shape(self, patch_tokens_shape, class_token_shape=None):
        return (patch_tokens_shape[0], 1, self.hidden_dim)

    def compute_output_spec(
        self, patch_tokens, class_token, return_attention=False
    ):
        # The attention's output has the class token's shape.
        batch, num_patches, _ = patch_tokens.shape
        num_keys = None if num_patches is None else num_patches + 1
        tokens = keras.KerasTensor((batch, num_keys, self.hidden_dim))
        return self.attn.compute_output_spec(tokens, return_attention)

    def get_config(self):
        config = super().get_config()
        names = (
            "hidden_dim", "num_heads", "mlp_ratio", "use_qkv_bias",
            "layer_scale_init_value", "layer_norm_epsilon",
        )
        config.update({name: getattr(self, name) for name in names})
        return config
