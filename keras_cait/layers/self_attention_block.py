"""CaiT's self-attention block: talking-heads attention and MLP with LayerScale."""

import keras

from keras_cait.layers import _fast_paths
from keras_cait.layers.drop_path import DropPath
from keras_cait.layers.layer_scale import LayerScale
from keras_cait.layers.mlp import CaiTMLP
from keras_cait.layers.talking_heads_attention import TalkingHeadsAttention
from keras_cait.serialization import register


def build_branches(block, attention, mlp_dropout=0.0):
    """Builds a CaiT block's two residual branches in timm's order: `norm1`,
    `attn` (the given attention layer), `layer_scale_1`, `norm2`, `mlp`,
    `layer_scale_2`, as attributes of `block` (names its weights keep)."""
    token_shape = (None, None, block.hidden_dim)
    policy = block.dtype_policy
    block.norm1 = keras.layers.LayerNormalization(
        epsilon=block.layer_norm_epsilon, dtype=policy, name="norm1"
    )
    block.attn = attention
    block.layer_scale_1 = LayerScale(
        block.layer_scale_init_value, dtype=policy, name="layer_scale_1"
    )
    block.norm2 = keras.layers.LayerNormalization(
        epsilon=block.layer_norm_epsilon, dtype=policy, name="norm2"
    )
    block.mlp = CaiTMLP(
        block.hidden_dim,
        int(block.hidden_dim * block.mlp_ratio),
        dropout_rate=mlp_dropout,
        dtype=policy,
        name="mlp",
    )
    block.layer_scale_2 = LayerScale(
        block.layer_scale_init_value, dtype=policy, name="layer_scale_2"
    )
    for layer in (block.norm1, block.attn, block.layer_scale_1, block.norm2,
                  block.mlp, block.layer_scale_2):
        layer.build(token_shape)


@register
class SelfAttentionBlock(keras.layers.Layer):
    """A pre-norm transformer block over all patch tokens (timm's
    `LayerScaleBlock`):

    `x = x + drop_path(gamma_1 * attention(norm1(x)))`,
    `x = x + drop_path(gamma_2 * mlp(norm2(x)))`.

    Args:
        hidden_dim: int. The token dimension.
        num_heads: int. The number of attention heads.
        mlp_ratio: float. The MLP's hidden size as a multiple of `hidden_dim`.
        use_qkv_bias: bool. Whether the query/key/value projection has a bias.
        layer_scale_init_value: float. Initial value of LayerScale's `gamma`.
        dropout_rate: float. Dropout after the attention projection and in
            the MLP.
        attention_dropout: float. Dropout on the attention weights.
        drop_path_rate: float. Stochastic depth rate of both branches.
        layer_norm_epsilon: float. Epsilon of both LayerNorms.
        seed: int or `None`. Seed of the drop-path masks.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor of shape `(batch, num_patches, hidden_dim)`.
        return_attention: bool. If `True`, also return the talking-heads
            attention weights `(batch, heads, num_patches, num_patches)`.
        training: bool. Whether dropout and drop path are active.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_ratio=4.0,
        use_qkv_bias=True,
        layer_scale_init_value=1e-5,
        dropout_rate=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.use_qkv_bias = use_qkv_bias
        self.layer_scale_init_value = layer_scale_init_value
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.seed = seed

    def build(self, input_shape):
        token_shape = (None, None, self.hidden_dim)
        policy = self.dtype_policy
        attention = TalkingHeadsAttention(
            self.hidden_dim,
            self.num_heads,
            use_qkv_bias=self.use_qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.dropout_rate,
            dtype=policy,
            name="attn",
        )
        build_branches(self, attention, mlp_dropout=self.dropout_rate)
        seed_2 = None if self.seed is None else self.seed + 1
        self.drop_path_1 = DropPath(
            self.drop_path_rate, seed=self.seed, dtype=policy,
            name="drop_path_1",
        )
        self.drop_path_1.build(token_shape)
        self.drop_path_2 = DropPath(
            self.drop_path_rate, seed=seed_2, dtype=policy, name="drop_path_2"
        )
        self.drop_path_2.build(token_shape)
        self._fast_paths = _fast_paths.enabled_for(self)

    def call(self, inputs, return_attention=False, training=None):
        if self._fast_paths and _fast_paths.eager_torch(inputs, self):
            return _fast_paths.self_attention_block(self, inputs, return_attention, training)
        # timm's LayerScaleBlock.forward.
        x = self.norm1(inputs)
        out = self.attn(x, return_attention=return_attention, training=training)
        attended, attention = out if return_attention else (out, None)
        x = inputs + self.drop_path_1(self.layer_scale_1(attended), training=training)
        branch = self.layer_scale_2(self.mlp(self.norm2(x), training=training))
        x = x + self.drop_path_2(branch, training=training)
        return (x, attention) if return_attention else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, inputs, return_attention=False, training=None):
        # The attention's output has the block's (its input's) shape.
        return self.attn.compute_output_spec(inputs, return_attention)

    def get_config(self):
        config = super().get_config()
        names = (
            "hidden_dim", "num_heads", "mlp_ratio", "use_qkv_bias",
            "layer_scale_init_value", "dropout_rate", "attention_dropout",
            "drop_path_rate", "layer_norm_epsilon", "seed",
        )
        config.update({name: getattr(self, name) for name in names})
        return config
