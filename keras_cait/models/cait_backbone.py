"""CaiTBackbone: the CaiT feature extractor as a KerasHub backbone."""

import weakref

import keras
import numpy as np
from keras_hub.models import Backbone

from keras_cait.errors import CaiTConfigError
from keras_cait.layers.class_attention_block import ClassAttentionBlock
from keras_cait.layers.embedding import ClassToken, PatchEmbedding
from keras_cait.layers.self_attention_block import SelfAttentionBlock
from keras_cait.loading.loader import load_preset
from keras_cait.models.fast_inference import FastInferenceMixin
from keras_cait.schema import check_backbone_config
from keras_cait.serialization import register

INTERMEDIATE_FORMATS = ("tokens", "grid")


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


# Models derived from a backbone or classifier (attention maps,
# intermediates), cached per model and request. A weak mapping outside the
# model: a model attribute would be tracked by Keras and change its weights.
_DERIVED_MODELS = weakref.WeakKeyDictionary()


def derived_model(owner, key, build):
    """`build()`'s model for `owner` and `key`, built once."""
    cache = _DERIVED_MODELS.setdefault(owner, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


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


def attention_block_indices(self_attention_blocks, num_layers):
    """Self-attention block indices of an `attention_model()` request, sorted
    and unique: an int, an iterable of ints, `"all"`, or `None`/`()` for
    none; negative indices count from the end."""
    if self_attention_blocks is None:
        return ()
    if isinstance(self_attention_blocks, str):
        if self_attention_blocks == "all":
            return tuple(range(num_layers))
        raise CaiTConfigError(
            "`self_attention_blocks` must be block indices or 'all', got "
            f"{self_attention_blocks!r}."
        )
    if isinstance(self_attention_blocks, (int, np.integer)):
        self_attention_blocks = (self_attention_blocks,)
    indices = set()
    for index in self_attention_blocks:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise CaiTConfigError(
                "`self_attention_blocks` must hold integer block indices, "
                f"got {index!r}."
            )
        if not -num_layers <= index < num_layers:
            raise CaiTConfigError(
                f"`self_attention_blocks` index {int(index)} is out of range: "
                f"the model has {num_layers} self-attention blocks "
                f"(0 to {num_layers - 1}, or negative from the end)."
            )
        indices.add(int(index) % num_layers)
    return tuple(sorted(indices))


def intermediate_block_indices(num_layers, blocks=None):
    """Block indices of an `intermediate_model()` request, sorted: `None`
    (every block), an int `n` (the last `n` blocks, as timm's `indices=n`),
    or a sequence of indices (negative counts from the end).

    Raises:
        CaiTConfigError: `blocks` is empty, out of range or of another type.
    """
    if blocks is None:
        return tuple(range(num_layers))
    if isinstance(blocks, bool):
        raise CaiTConfigError(
            f"`blocks` must be None, an int or a list of ints, got {blocks!r}."
        )
    if isinstance(blocks, int):
        if not 1 <= blocks <= num_layers:
            raise CaiTConfigError(
                f"`blocks={blocks}` asks for the last {blocks} blocks; it must "
                f"be between 1 and num_layers={num_layers}."
            )
        return tuple(range(num_layers - blocks, num_layers))
    try:
        requested = list(blocks)
    except TypeError:
        raise CaiTConfigError(
            f"`blocks` must be None, an int or a list of ints, got {blocks!r}."
        ) from None
    if not requested:
        raise CaiTConfigError("`blocks` must not be empty.")
    indices = set()
    for index in requested:
        if isinstance(index, bool) or not isinstance(index, int):
            raise CaiTConfigError(
                f"Block indices must be ints, got {index!r} in `blocks`."
            )
        if not -num_layers <= index < num_layers:
            raise CaiTConfigError(
                f"Block index {index} in `blocks` is out of range for a "
                f"backbone with num_layers={num_layers}."
            )
        indices.add(index % num_layers)
    return tuple(sorted(indices))


def run_in_batches(model, images, batch_size):
    """Calls `model` (dict outputs) on `images` batch by batch, eagerly.

    Returns:
        A dict of NumPy arrays, concatenated over the batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
        batch_size < 1
    ):
        raise CaiTConfigError(
            f"`batch_size` must be a positive integer, got {batch_size!r}."
        )
    images = keras.ops.convert_to_numpy(images)
    pieces = {}
    for start in range(0, len(images), batch_size):
        outputs = model(images[start : start + batch_size], training=False)
        for name, value in outputs.items():
            pieces.setdefault(name, []).append(keras.ops.convert_to_numpy(value))
    return {name: np.concatenate(values) for name, values in pieces.items()}



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

    Raises:
        CaiTConfigError: (a `ValueError`) an argument is of the wrong type or
            out of range, or the sizes do not divide (see
            `keras_cait.schema.check_backbone_config`).

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
        arguments = check_backbone_config(
            dict(
                image_shape=image_shape,
                patch_size=patch_size,
                hidden_dim=hidden_dim,
                num_layers=num_layers,
                num_heads=num_heads,
                num_class_attention_layers=num_class_attention_layers,
                mlp_ratio=mlp_ratio,
                class_attention_mlp_ratio=class_attention_mlp_ratio,
                use_qkv_bias=use_qkv_bias,
                layer_scale_init_value=layer_scale_init_value,
                dropout_rate=dropout_rate,
                attention_dropout=attention_dropout,
                drop_path_rate=drop_path_rate,
                layer_norm_epsilon=layer_norm_epsilon,
            ),
            "CaiTBackbone",
            limits=False,
        )
        image_shape = arguments["image_shape"]

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
            layers and weights. `attention_model()` builds on it.
        """
        return self._attention_graph

    def attention_model(self, self_attention_blocks=()):
        """A `keras.Model` returning features and attention maps in one pass.

        It shares this backbone's layers and weights and is cached per block
        selection. Its dict output holds:
        - `"features"`: the backbone's output `(batch, 1 + N, hidden_dim)`;
        - `"class_attention_{i}"` for every class-attention block: the class
          token's softmaxed attention over `[class token, patches]`,
          `(batch, heads, 1, 1 + N)` (timm's `ClassAttn` weights);
        - `"talking_head_attention_{i}"` for each chosen self-attention
          block: the weights after the post-softmax head mix (timm's
          `proj_w`), `(batch, heads, N, N)`.

        Args:
            self_attention_blocks: int (one block), iterable of ints,
                `"all"` or `()`; negative indices count from the end.

        Example:
        ```python
        model = backbone.attention_model(self_attention_blocks=(0, -1))
        outputs = model.predict(images)
        outputs["class_attention_1"].shape  # (batch, heads, 1, 1 + N)
        ```
        """
        blocks = attention_block_indices(self_attention_blocks, self.num_layers)
        return derived_model(
            self, ("attention", blocks), lambda: self._build_attention_model(blocks)
        )

    def _build_attention_model(self, blocks, head=None):
        images, features, maps = self.attention_graph()
        if head is None:
            outputs = {"features": features}
        else:
            outputs = {"predictions": head(features)}
        for i in range(self.num_class_attention_layers):
            outputs[f"class_attention_{i}"] = maps[f"class_attention_{i}"]
        for i in blocks:
            outputs[f"talking_head_attention_{i}"] = maps[f"talking_head_attention_{i}"]
        return keras.Model(images, outputs, name=f"{self.name}_attention")

    def get_attention_maps(self, images, self_attention_blocks=(), batch_size=8):
        """Features and attention maps of `images`, as NumPy arrays.

        Calls `attention_model()` eagerly, batch by batch (no compilation,
        so the first maps come fast); for large datasets compile once with
        `attention_model(...).predict(dataset)`.

        Args:
            images: array `(batch, height, width, channels)`, normalised.
            self_attention_blocks: see `attention_model()`.
            batch_size: int. Images per forward pass.

        Returns:
            A dict of NumPy arrays named as in `attention_model()`.
        """
        return run_in_batches(
            self.attention_model(self_attention_blocks), images, batch_size
        )

    def intermediate_model(self, blocks=None, output_format="tokens", norm=False):
        """A model returning chosen self-attention block outputs (timm's
        `forward_intermediates`).

        It shares this backbone's layers and weights (fine-tuning it
        fine-tunes the backbone) and is cached per request.

        Args:
            blocks: `None` (all blocks), an int `n` (the last `n` blocks, as
                timm's `indices=n`) or a list of block indices (negative
                counts from the end).
            output_format: `"tokens"` for `(batch, num_patches, hidden_dim)`
                or `"grid"` for `(batch, rows, columns, hidden_dim)`.
            norm: bool. Pass each output through the final LayerNorm
                (timm's `norm=True`).

        Returns:
            A `keras.Model` taking the backbone's images and returning a
            dict `{"self_attention_block_{i}": tensor}` in block order.

        Example:
        ```python
        model = backbone.intermediate_model(blocks=[-4, -1], output_format="grid")
        model(images)["self_attention_block_23"].shape  # (batch, 14, 14, 192)
        ```
        """
        if output_format not in INTERMEDIATE_FORMATS:
            raise CaiTConfigError(
                f"`output_format` must be one of {INTERMEDIATE_FORMATS}, got "
                f"{output_format!r}."
            )
        indices = intermediate_block_indices(self.num_layers, blocks)
        key = ("intermediates", indices, output_format, bool(norm))
        return derived_model(
            self, key, lambda: self._build_intermediate_model(indices, output_format, norm)
        )

    def _build_intermediate_model(self, indices, output_format, norm):
        outputs = {}
        final_norm = self.get_layer("final_layernorm")
        rows, columns = self.grid_size
        for index in indices:
            name = f"self_attention_block_{index}"
            tokens = self._block_outputs[name]
            if norm:
                tokens = final_norm(tokens)
            if output_format == "grid":
                tokens = keras.layers.Reshape(
                    (rows, columns, self.hidden_dim),
                    dtype=self.dtype_policy,
                    name=f"{name}_grid",
                )(tokens)
            outputs[name] = tokens
        return keras.Model(self.input, outputs, name=f"{self.name}_intermediates")

    def get_intermediate_outputs(
        self, images, blocks=None, output_format="tokens", norm=False
    ):
        """Chosen self-attention block outputs for `images`, in one pass.

        See `intermediate_model()` for the arguments.

        Returns:
            A dict `{"self_attention_block_{i}": tensor}` in block order.
        """
        return self.intermediate_model(blocks, output_format, norm)(images)

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

    @staticmethod
    def get_layout_map(
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """A `keras.distribution.LayoutMap` sharding CaiT's large kernels,
        for `keras.distribution.ModelParallel` (as KerasHub's
        `GemmaBackbone.get_layout_map`).

        The usual tensor-parallel pattern: projections that fan out (`qkv`,
        `q`/`k`/`v`, the MLP's `fc1`) are split along their output features,
        those that fan back in (`proj`, `fc2`) along their input features;
        everything small (norms, LayerScale, the head mixes, embeddings, the
        head) stays replicated. Dense kernels are `(in_features,
        out_features)`:

        | variables (variable path ends with) | layout |
        | --- | --- |
        | `attn/(qkv|q|k|v)/kernel`, `mlp/fc1/kernel` | `(batch, model)` |
        | `attn/(qkv|q|k|v)/bias`, `mlp/fc1/bias` | `(model,)` |
        | `attn/proj/kernel`, `mlp/fc2/kernel` | `(model, batch)` |
        | everything else | replicated |

        Every sharded axis must be divisible by the size of its mesh axis:
        `hidden_dim`, `3 * hidden_dim` and the MLP width by the `"model"` axis,
        `hidden_dim` and the MLP width by the `"batch"` axis. All CaiT variants
        have `hidden_dim` a multiple of 96 (m36/m48: 768, MLP 3072), so any
        power-of-two axis up to 32 works.

        Args:
            device_mesh: a `keras.distribution.DeviceMesh`.
            model_parallel_dim_name: str. The mesh axis the kernels are split
                over for tensor parallelism.
            data_parallel_dim_name: str. The mesh axis the batch is split over;
                the kernels' other axis is split over it too (fully sharded
                weights). Pass `None` to keep the kernels replicated across it.

        Returns:
            A `keras.distribution.LayoutMap`, for
            `keras.distribution.ModelParallel(layout_map=...,
            batch_dim_name=data_parallel_dim_name)`.

        Raises:
            CaiTConfigError: a dimension name is not an axis of `device_mesh`.

        Example:
        ```python
        devices = keras.distribution.list_devices()
        mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
        layout_map = CaiTBackbone.get_layout_map(mesh)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(
                layout_map=layout_map, batch_dim_name="batch"
            )
        )
        classifier = CaiTImageClassifier.from_preset("cait_m36_384", num_classes=10)
        ```
        """
        if not isinstance(device_mesh, keras.distribution.DeviceMesh):
            raise CaiTConfigError(
                "`device_mesh` must be a keras.distribution.DeviceMesh, got "
                f"{type(device_mesh).__name__}."
            )
        axis_names = tuple(device_mesh.axis_names)
        for argument, name in (
            ("model_parallel_dim_name", model_parallel_dim_name),
            ("data_parallel_dim_name", data_parallel_dim_name),
        ):
            if name is None and argument == "data_parallel_dim_name":
                continue
            if name not in axis_names:
                raise CaiTConfigError(
                    f"`{argument}={name!r}` is not an axis of the device mesh; "
                    f"its axes are {axis_names}."
                )
        model_dim = model_parallel_dim_name
        data_dim = data_parallel_dim_name

        layout_map = keras.distribution.LayoutMap(device_mesh)
        # Fan-out projections: split the output features.
        layout_map[r".*attn/(qkv|q|k|v)/kernel"] = (data_dim, model_dim)
        layout_map[r".*attn/(qkv|q|k|v)/bias"] = (model_dim,)
        layout_map[r".*mlp/fc1/kernel"] = (data_dim, model_dim)
        layout_map[r".*mlp/fc1/bias"] = (model_dim,)
        # Fan-in projections: split the input features.
        layout_map[r".*attn/proj/kernel"] = (model_dim, data_dim)
        layout_map[r".*mlp/fc2/kernel"] = (model_dim, data_dim)
        return layout_map
