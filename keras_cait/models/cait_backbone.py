"""CaiTBackbone: the CaiT feature extractor as a KerasHub backbone."""

import keras
from keras_hub.models import Backbone

from keras_cait import attention as attention_lib
from keras_cait.layers.class_attention_block import ClassAttentionBlock
from keras_cait.layers.embedding import ClassToken, PatchEmbedding
from keras_cait.layers.self_attention_block import SelfAttentionBlock
from keras_cait.models.fast_inference import FastInferenceMixin
from keras_cait.serialization import register


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_image_shape(image_shape, patch_size):
    if len(image_shape) != 3:
        raise ValueError(
            "`image_shape` must be (height, width, channels), got "
            f"{image_shape!r}."
        )
    height, width, channels = image_shape
    for axis, size in (("height", height), ("width", width)):
        _check_positive_int(f"image_shape {axis}", size)
        if size % patch_size != 0:
            raise ValueError(
                f"The image {axis} ({size}) in `image_shape={image_shape}` "
                f"must be divisible by `patch_size` ({patch_size})."
            )
    _check_positive_int("image_shape channels", channels)


def _connect_layers(
    images,
    patch_embedding,
    class_token_layer,
    self_attention_blocks,
    class_attention_blocks,
    concatenate,
    final_norm,
    return_attention,
):
    """Wires CaiT's layers on a symbolic `images` tensor.

    Returns:
        `(features, block_outputs, attention_maps)`: the final-normalised
        tokens, each self-attention block's output by layer name, and (when
        `return_attention`) every block's attention weights by map name.
    """
    patches = patch_embedding(images)
    block_outputs = {}
    attention_maps = {}
    for i, block in enumerate(self_attention_blocks):
        if return_attention:
            patches, attention = block(patches, return_attention=True)
            attention_maps[f"talking_head_attention_{i}"] = attention
        else:
            patches = block(patches)
        block_outputs[block.name] = patches
    class_token = class_token_layer(patches)
    for i, block in enumerate(class_attention_blocks):
        if return_attention:
            class_token, attention = block(
                patches, class_token, return_attention=True
            )
            attention_maps[f"class_attention_{i}"] = attention
        else:
            class_token = block(patches, class_token)
    tokens = concatenate([class_token, patches])
    return final_norm(tokens), block_outputs, attention_maps


@register
class CaiTBackbone(FastInferenceMixin, Backbone):
    """CaiT (Class-Attention in Image Transformers) backbone.

    Patch embedding with a learned position embedding, `num_layers`
    self-attention blocks with talking-heads attention and LayerScale over
    the patches, then `num_class_attention_layers` class-attention blocks in
    which a class token reads the patches, and a final LayerNorm over
    `concat(class_token, patches)`. The output equals timm's
    `Cait.forward_features`: `(batch, 1 + num_patches, hidden_dim)`, class
    token first.

    Args:
        image_shape: tuple `(height, width, channels)`; height and width must
            be divisible by `patch_size`. Images are NHWC.
        patch_size: int. Side of the square patches.
        hidden_dim: int. Token dimension (timm's `embed_dim`).
        num_layers: int. Number of self-attention blocks (timm's `depth`).
        num_heads: int. Attention heads; must divide `hidden_dim`.
        num_class_attention_layers: int. Number of class-attention blocks
            (timm's `depth_token_only`).
        mlp_ratio: float. MLP width of the self-attention blocks, as a
            multiple of `hidden_dim`.
        class_attention_mlp_ratio: float. MLP width of the class-attention
            blocks (timm's `mlp_ratio_token_only`).
        use_qkv_bias: bool. Whether query/key/value projections have biases.
        layer_scale_init_value: float. Initial LayerScale value (timm's
            `init_values`).
        dropout_rate: float. Dropout after the position embedding, the
            attention projection and in the MLPs of the self-attention blocks
            (timm's `pos_drop_rate` and `proj_drop_rate`).
        attention_dropout: float. Dropout on the self-attention weights.
        drop_path_rate: float. Stochastic depth rate, the same for every
            self-attention block (as in timm's CaiT). The class-attention
            blocks have no dropout and no drop path.
        layer_norm_epsilon: float. Epsilon of every LayerNorm.
        dtype: `None`, string or `keras.DTypePolicy`. The dtype policy.
        **kwargs: other keyword arguments passed to `keras.Model`.

    Example:
    ```python
    backbone = keras_cait.CaiTBackbone(
        image_shape=(224, 224, 3), patch_size=16, hidden_dim=192,
        num_layers=24, num_heads=4,
    )
    tokens = backbone(np.zeros((1, 224, 224, 3)))  # (1, 197, 192)
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_layers,
        num_heads,
        image_shape=(224, 224, 3),
        patch_size=16,
        num_class_attention_layers=2,
        mlp_ratio=4.0,
        class_attention_mlp_ratio=4.0,
        use_qkv_bias=True,
        layer_scale_init_value=1e-5,
        dropout_rate=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        dtype=None,
        **kwargs,
    ):
        image_shape = tuple(image_shape)
        for name, value in (
            ("patch_size", patch_size),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("num_class_attention_layers", num_class_attention_layers),
        ):
            _check_positive_int(name, value)
        _check_image_shape(image_shape, patch_size)
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        for name, value in (("mlp_ratio", mlp_ratio), (
            "class_attention_mlp_ratio", class_attention_mlp_ratio
        )):
            if value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value!r}.")

        # === Layers ===
        patch_embedding = PatchEmbedding(
            image_size=image_shape[:2],
            patch_size=patch_size,
            hidden_dim=hidden_dim,
            dropout_rate=dropout_rate,
            dtype=dtype,
            name="patch_embedding",
        )
        class_token_layer = ClassToken(hidden_dim, dtype=dtype, name="class_token")
        self_attention_blocks = [
            SelfAttentionBlock(
                hidden_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                use_qkv_bias=use_qkv_bias,
                layer_scale_init_value=layer_scale_init_value,
                dropout_rate=dropout_rate,
                attention_dropout=attention_dropout,
                drop_path_rate=drop_path_rate,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"self_attention_block_{i}",
            )
            for i in range(num_layers)
        ]
        class_attention_blocks = [
            ClassAttentionBlock(
                hidden_dim,
                num_heads,
                mlp_ratio=class_attention_mlp_ratio,
                use_qkv_bias=use_qkv_bias,
                layer_scale_init_value=layer_scale_init_value,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"class_attention_block_{i}",
            )
            for i in range(num_class_attention_layers)
        ]
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_layernorm"
        )

        # === Functional model ===
        # The model's own graph computes no attention maps: PyTorch runs
        # eagerly and would pay for them. A second wiring of the same layers
        # with `return_attention=True` serves the attention models. It comes
        # first because Keras checks a functional graph's connectivity with
        # each layer's first call's outputs, so that call must be the one
        # with more outputs.
        concatenate = keras.layers.Concatenate(axis=1, name="tokens", dtype=dtype)
        layers = (
            patch_embedding,
            class_token_layer,
            self_attention_blocks,
            class_attention_blocks,
            concatenate,
            final_norm,
        )
        attention_images = keras.Input(shape=image_shape, name="images")
        attention_features, _, attention_maps = _connect_layers(
            attention_images, *layers, return_attention=True
        )
        images = keras.Input(shape=image_shape, name="images")
        outputs, block_outputs, _ = _connect_layers(
            images, *layers, return_attention=False
        )
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_class_attention_layers = num_class_attention_layers
        self.mlp_ratio = mlp_ratio
        self.class_attention_mlp_ratio = class_attention_mlp_ratio
        self.use_qkv_bias = use_qkv_bias
        self.layer_scale_init_value = layer_scale_init_value
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon

        # Symbolic tensors of the graphs above, for derived models.
        self._block_outputs = block_outputs
        self._attention_graph = (
            attention_images,
            attention_features,
            attention_maps,
        )

    @property
    def grid_size(self):
        """The patch grid `(rows, columns)`."""
        return (
            self.image_shape[0] // self.patch_size,
            self.image_shape[1] // self.patch_size,
        )

    @property
    def num_patches(self):
        """The number of patch tokens."""
        rows, columns = self.grid_size
        return rows * columns

    def attention_graph(self):
        """This backbone's layers wired with their attention maps.

        Returns:
            `(images, features, attention_maps)`: a `keras.Input`, the
            features computed from it (as the backbone's output) and a dict
            of every block's attention weights (`"talking_head_attention_{i}"`,
            `"class_attention_{i}"`), all symbolic, over this backbone's
            layers and weights. `keras_cait.attention_model` builds on it.
        """
        return self._attention_graph

    def attention_model(self, self_attention_blocks=()):
        """A cached `keras.Model` returning features and attention maps.

        Its dict output holds `"features"`, `"class_attention_{i}"` for every
        class-attention block and `"talking_head_attention_{i}"` for the
        chosen self-attention blocks, in one forward pass over this
        backbone's layers. See `keras_cait.attention_model`.

        Args:
            self_attention_blocks: int, iterable of ints, `"all"` or `()`.
        """
        return attention_lib.attention_model(self, self_attention_blocks)

    def get_attention_maps(self, images, self_attention_blocks=(), batch_size=8):
        """Features and attention maps of `images` as NumPy arrays.

        Args:
            images: array `(batch, height, width, channels)`, normalised.
            self_attention_blocks: int, iterable of ints, `"all"` or `()`.
            batch_size: int. Images per forward pass.

        Returns:
            A dict of NumPy arrays named as in `attention_model()`.
        """
        return attention_lib.get_attention_maps(
            self, images, self_attention_blocks, batch_size=batch_size
        )

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Instantiates a `CaiTBackbone` from a preset.

        Args:
            preset: string. A preset name from `keras_cait.list_presets()`
                (e.g. `"cait_xxs24_224"`), an `hf://owner/repo[@revision]`
                handle of a timm repo (`config.json` + `model.safetensors`)
                or of a keras-cait preset saved with `save_to_preset`, or a
                local directory of either kind.
            load_weights: bool. Load the pretrained weights. `False` builds
                the architecture alone (for a preset name, without network).
            **kwargs: `CaiTBackbone` arguments overriding the preset's, e.g.
                `dtype` or `image_shape` (the position embedding is then
                resampled).

        Example:
        ```python
        backbone = keras_cait.CaiTBackbone.from_preset("cait_xxs24_224")
        tokens = backbone(np.zeros((1, 224, 224, 3)))  # (1, 197, 192)
        ```
        """
        from keras_cait.presets.loader import load_preset

        return load_preset(cls, preset, load_weights=load_weights, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_shape": self.image_shape,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "num_class_attention_layers": self.num_class_attention_layers,
                "mlp_ratio": self.mlp_ratio,
                "class_attention_mlp_ratio": self.class_attention_mlp_ratio,
                "use_qkv_bias": self.use_qkv_bias,
                "layer_scale_init_value": self.layer_scale_init_value,
                "dropout_rate": self.dropout_rate,
                "attention_dropout": self.attention_dropout,
                "drop_path_rate": self.drop_path_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config

    def intermediate_model(self, blocks=None, output_format="tokens", norm=False):
        """A cached model returning chosen self-attention block outputs.

        Shares this backbone's layers. See `keras_cait.intermediate_model`.

        Args:
            blocks: `None` (all), an int `n` (the last `n` blocks) or a list
                of block indices (negative counts from the end).
            output_format: `"tokens"` `(batch, num_patches, hidden_dim)` or
                `"grid"` `(batch, rows, columns, hidden_dim)`.
            norm: bool. Apply the final LayerNorm to each output.
        """
        from keras_cait import intermediates

        return intermediates.intermediate_model(self, blocks, output_format, norm)

    def get_intermediate_outputs(
        self, images, blocks=None, output_format="tokens", norm=False
    ):
        """Chosen self-attention block outputs for `images`, in one pass.

        Like timm's `forward_intermediates`. See `intermediate_model()`.

        Returns:
            A dict `{"self_attention_block_{i}": tensor}`.
        """
        from keras_cait import intermediates

        return intermediates.get_intermediate_outputs(
            self, images, blocks, output_format, norm
        )

    @staticmethod
    def get_layout_map(
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """A `keras.distribution.LayoutMap` for `ModelParallel`.

        Splits the attention and MLP kernels over the `"model"` mesh axis.
        See `keras_cait.distribution.get_layout_map`.

        Args:
            device_mesh: a `keras.distribution.DeviceMesh`.
            model_parallel_dim_name: str. The tensor-parallel mesh axis.
            data_parallel_dim_name: str or `None`. The batch mesh axis.
        """
        from keras_cait import distribution

        return distribution.get_layout_map(
            device_mesh, model_parallel_dim_name, data_parallel_dim_name
        )
