"""CaiTBackbone: the CaiT feature extractor as a KerasHub backbone."""

import keras
from keras_hub.models import FeaturePyramidBackbone

# KerasHub's own `data_format` check (private, keras-hub 0.32).
from keras_hub.src.utils.keras_utils import standardize_data_format

from keras_cait.layers.class_attention_block import ClassAttentionBlock
from keras_cait.layers.embedding import ClassToken, PatchEmbedding
from keras_cait.layers.self_attention_block import SelfAttentionBlock
from keras_cait.loading.loader import load_preset
from keras_cait.model_extensions.derived_models import (
    TokenGrid,
    block_indices,
    derived_model,
    run_in_batches,
)
from keras_cait.model_extensions.layout_map import cait_layout_map
from keras_cait.runtime import RuntimeMixin
from keras_cait.serialization import register
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.schema import BACKBONE_DEFAULTS, check_backbone_config

INTERMEDIATE_FORMATS = ("tokens", "grid")
# Blocks in `pyramid_outputs`: timm's `features_only` default for CaiT.
PYRAMID_BLOCKS = 3


def _connect_layers(images, layers, return_attention):
    """Wires CaiT's layers on a symbolic `images` tensor.

    Returns:
        `(features, block_outputs, attention_maps)`: the final-normalised
        tokens, each self-attention block's output by layer name, and (when
        `return_attention`) every block's attention weights by map name.
    """
    patch_embedding, class_token_layer, self_attention_blocks = layers[:3]
    class_attention_blocks, concatenate, final_norm = layers[3:]
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


def cait_backbone_of(model):
    """The `CaiTBackbone` of a backbone or of a model with a `backbone`.

    Raises:
        CaiTConfigError: `model` is neither.
    """
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, CaiTBackbone):
        raise CaiTConfigError(
            "`model` must be a keras_cait.CaiTBackbone or a model with a "
            "CaiTBackbone `backbone` (e.g. CaiTImageClassifier), got "
            f"{type(model).__name__}."
        )
    return backbone


@register
class CaiTBackbone(RuntimeMixin, FeaturePyramidBackbone):
    """CaiT (Class-Attention in Image Transformers) backbone.

    Patch embedding with a learned position embedding, `num_layers`
    self-attention blocks with talking-heads attention and LayerScale over
    the patches, then `num_class_attention_layers` class-attention blocks in
    which a class token reads the patches, and a final LayerNorm over
    `concat(class_token, patches)`. The output equals timm's
    `Cait.forward_features`: `(batch, 1 + num_patches, hidden_dim)`, class
    token first. As a KerasHub `FeaturePyramidBackbone`, `pyramid_outputs`
    maps `"self_attention_block_{i}"` to the patch-token grids of the last
    three blocks (timm's `features_only` blocks).

    Args:
        image_shape: tuple `(height, width, channels)`; height and width must
            be divisible by `patch_size`. Always in this order, whatever
            `data_format` (the model's geometry, as presets store it).
            `(None, None, channels)` takes any height and width at call
            time: the patch grid follows the input and the position
            embedding is resampled to it in the graph, as timm's
            `resample_abs_pos_embed` does (antialiased bicubic); pixels
            beyond a multiple of `patch_size` are dropped, as timm does
            without `dynamic_img_pad`.
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
        data_format: `"channels_last"` (NHWC images), `"channels_first"`
            (NCHW images: the input is `(batch, channels, height, width)`)
            or `None` for `keras.config.image_data_format()`. The weights and
            outputs are the same either way.
        position_embedding_shape: `None` (the `image_shape`'s height and
            width) or `(height, width)` in pixels, divisible by `patch_size`:
            the size the position embedding is stored for (timm's
            `img_size`). Required when `image_shape` is `(None, None, c)`;
            `from_preset(..., image_shape=(None, None, 3))` sets it to the
            checkpoint's size.
        dtype: `None`, string or `keras.DTypePolicy`. The dtype policy.
        **kwargs: other keyword arguments passed to `keras.Model`.

    Raises:
        CaiTConfigError: (a `ValueError`) an argument is of the wrong type or
            out of range, or the sizes do not divide (see
            `keras_cait_base.schema.check_backbone_config`).

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
        data_format=None,
        position_embedding_shape=None,
        dtype=None,
        **kwargs,
    ):
        data_format = standardize_data_format(data_format)
        given = dict(locals())
        arguments = check_backbone_config(
            {key: given[key] for key in BACKBONE_DEFAULTS}, "CaiTBackbone", limits=False
        )
        image_shape = arguments["image_shape"]

        # === Layers ===
        patch_embedding = PatchEmbedding(
            image_size=image_shape[:2],
            patch_size=patch_size,
            hidden_dim=hidden_dim,
            dropout_rate=dropout_rate,
            data_format=data_format,
            position_embedding_size=arguments["position_embedding_shape"],
            dtype=dtype,
            name="patch_embedding",
        )
        class_token_layer = ClassToken(hidden_dim, dtype=dtype, name="class_token")
        common = dict(
            use_qkv_bias=use_qkv_bias,
            layer_scale_init_value=layer_scale_init_value,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=dtype,
        )
        self_attention_blocks = [
            SelfAttentionBlock(
                hidden_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                dropout_rate=dropout_rate,
                attention_dropout=attention_dropout,
                drop_path_rate=drop_path_rate,
                name=f"self_attention_block_{i}",
                **common,
            )
            for i in range(num_layers)
        ]
        class_attention_blocks = [
            ClassAttentionBlock(
                hidden_dim,
                num_heads,
                mlp_ratio=class_attention_mlp_ratio,
                name=f"class_attention_block_{i}",
                **common,
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
        layers = (patch_embedding, class_token_layer, self_attention_blocks)
        layers += (class_attention_blocks, concatenate, final_norm)
        if data_format == "channels_first":
            input_shape = (image_shape[2],) + image_shape[:2]
        else:
            input_shape = image_shape
        attention_images = keras.Input(shape=input_shape, name="images")
        attention_features, _, attention_maps = _connect_layers(
            attention_images, layers, return_attention=True
        )
        images = keras.Input(shape=input_shape, name="images")
        outputs, block_outputs, _ = _connect_layers(images, layers, False)
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        for key in BACKBONE_DEFAULTS:
            setattr(self, key, arguments[key])

        # Symbolic tensors of the graphs above, for derived models.
        self._block_outputs = block_outputs
        self.pyramid_outputs = self._build_pyramid_outputs()
        self._attention_graph = (attention_images, attention_features, attention_maps)

    def _build_pyramid_outputs(self):
        """KerasHub's `pyramid_outputs`: the last `PYRAMID_BLOCKS` blocks' patch
        tokens (timm's `features_only`, not normalised) as grids `(batch, rows,
        columns, hidden_dim)` (`channels_first`: `(batch, hidden_dim, rows,
        columns)`), named by block (`self_attention_block_{i}`, timm's
        `blocks.{i}`): a ViT's one stride cannot tell KerasHub's `P{level}`s apart."""
        rows, columns = self.grid_size
        outputs = {}
        for index in block_indices(self.num_layers, min(PYRAMID_BLOCKS, self.num_layers)):
            name = f"self_attention_block_{index}"
            grid = keras.layers.Reshape(
                (rows, columns, self.hidden_dim), dtype=self.dtype_policy, name=f"{name}_pyramid"
            )(self._block_outputs[name])
            if self.data_format == "channels_first":
                grid = keras.layers.Permute(
                    (3, 1, 2), dtype=self.dtype_policy, name=f"{name}_pyramid_nchw"
                )(grid)
            outputs[name] = grid
        return outputs

    @property
    def grid_size(self):
        """The patch grid `(rows, columns)` the position embedding is
        stored for: the input's for a fixed `image_shape`. A model of
        `image_shape=(None, None, c)` called at `(height, width)` works on
        `(height // patch_size, width // patch_size)`."""
        rows, columns = self.position_embedding_shape or self.image_shape[:2]
        return rows // self.patch_size, columns // self.patch_size

    @property
    def num_patches(self):
        """The number of patch tokens of `grid_size`."""
        rows, columns = self.grid_size
        return rows * columns

    def attention_model(self, indices=()):
        """A `keras.Model` returning features and attention maps in one
        pass, sharing this backbone's weights (cached per selection):
        - `"features"`: the backbone's output `(batch, 1 + N, hidden_dim)`;
        - `"class_attention_{i}"` for every class-attention block: the class
          token's softmaxed attention over `[class token, patches]`,
          `(batch, heads, 1, 1 + N)` (timm's `ClassAttn` weights);
        - `"talking_head_attention_{i}"` for the self-attention blocks that
          `indices` chooses: the weights after the post-softmax head mix
          (timm's `proj_w`), `(batch, heads, N, N)`.

        Args:
            indices: the self-attention blocks, as timm's
                `forward_intermediates`: `None` (every block), an int `n`
                (the last `n` blocks) or a list of indices (negative count
                from the end); `()` for none.

        Example:
        ```python
        model = backbone.attention_model(indices=[0, -1])
        outputs = model.predict(images)
        outputs["class_attention_1"].shape  # (batch, heads, 1, 1 + N)
        ```
        """
        blocks = block_indices(self.num_layers, indices, allow_empty=True)
        return derived_model(
            self, ("attention", blocks), lambda: self._build_attention_model(blocks)
        )

    def _build_attention_model(self, blocks):
        images, features, maps = self._attention_graph
        outputs = {"features": features}
        for i in range(self.num_class_attention_layers):
            outputs[f"class_attention_{i}"] = maps[f"class_attention_{i}"]
        for i in blocks:
            outputs[f"talking_head_attention_{i}"] = maps[f"talking_head_attention_{i}"]
        return keras.Model(images, outputs, name=f"{self.name}_attention")

    def get_attention_maps(self, images, indices=(), batch_size=8):
        """`attention_model(indices)`'s outputs for the normalised `images`
        `(batch, height, width, channels)`, as NumPy arrays, computed
        eagerly `batch_size` images at a time (for large datasets,
        `attention_model(...).predict(dataset)` compiles once)."""
        return run_in_batches(self.attention_model(indices), images, batch_size)

    def intermediate_model(self, indices=None, output_format="tokens", norm=False):
        """A model returning chosen self-attention block outputs (timm's
        `forward_intermediates`), sharing this backbone's weights (cached
        per request).

        Args:
            indices: as timm's: `None` (every block), an int `n` (the last
                `n` blocks) or a list of block indices (negative count from
                the end).
            output_format: `"tokens"` for `(batch, num_patches, hidden_dim)`
                or `"grid"` for `(batch, rows, columns, hidden_dim)`, the
                input's patch grid.
            norm: bool. Pass each output through the final LayerNorm
                (timm's `norm=True`).

        Returns:
            A `keras.Model` taking the backbone's images and returning a
            dict `{"self_attention_block_{i}": tensor}` in block order.

        Example:
        ```python
        model = backbone.intermediate_model(indices=[-4, -1], output_format="grid")
        model(images)["self_attention_block_23"].shape  # (batch, 14, 14, 192)
        ```
        """
        if output_format not in INTERMEDIATE_FORMATS:
            raise CaiTConfigError(
                f"`output_format` must be one of {INTERMEDIATE_FORMATS}, got "
                f"{output_format!r}."
            )
        indices = block_indices(self.num_layers, indices)
        key = ("intermediates", indices, output_format, bool(norm))
        return derived_model(
            self, key, lambda: self._build_intermediate_model(indices, output_format, norm)
        )

    def _build_intermediate_model(self, indices, output_format, norm):
        outputs = {}
        final_norm = self.get_layer("final_layernorm")
        images = self.input
        for index in indices:
            name = f"self_attention_block_{index}"
            tokens = self._block_outputs[name]
            if norm:
                tokens = final_norm(tokens)
            if output_format == "grid":
                tokens = TokenGrid(
                    self.patch_size,
                    data_format=self.data_format,
                    dtype=self.dtype_policy,
                    name=f"{name}_grid",
                )(tokens, images)
            outputs[name] = tokens
        return keras.Model(self.input, outputs, name=f"{self.name}_intermediates")

    def get_intermediate_outputs(self, images, indices=None, output_format="tokens", norm=False):
        """`intermediate_model(...)(images)`: a dict
        `{"self_attention_block_{i}": tensor}` in block order."""
        model = self.intermediate_model(indices, output_format, norm)
        return model(images)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Instantiates a `CaiTBackbone` from a preset.

        Args:
            preset: string. A preset name (`keras_cait.list_presets()`), an
                `hf://owner/repo[@revision]` handle (a timm repo or a
                keras-cait preset) or a local directory of either kind.
            load_weights: bool. `False` builds the architecture alone.
            **kwargs: `CaiTBackbone` arguments overriding the preset's, e.g.
                `image_shape` (the position embedding is resampled).

        Example:
        ```python
        backbone = keras_cait.CaiTBackbone.from_preset("cait_xxs24_224")
        tokens = backbone(np.zeros((1, 224, 224, 3)))  # (1, 197, 192)
        ```
        """
        return load_preset(cls, preset, load_weights=load_weights, **kwargs)

    def default_lora_layer_names(self):
        """The layers `enable_lora(rank)` adapts by default (as
        `Gemma3Backbone` extends KerasHub's list): the self-attention
        blocks' fused `qkv` projections and the class-attention blocks'
        query `q` and value `v` projections (timm's names)."""
        return super().default_lora_layer_names() + ["qkv", "q", "v"]

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in BACKBONE_DEFAULTS})
        return config

    @staticmethod
    def get_layout_map(
        device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
    ):
        """A `keras.distribution.LayoutMap` sharding CaiT's large kernels,
        for `keras.distribution.ModelParallel`, as KerasHub's
        `GemmaBackbone.get_layout_map`; see
        `keras_cait.model_extensions.layout_map.cait_layout_map` for the
        arguments and the layout (docs/finetuning.md, "Multi-device
        training")."""
        return cait_layout_map(device_mesh, model_parallel_dim_name, data_parallel_dim_name)
