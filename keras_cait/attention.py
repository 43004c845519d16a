"""CaiT attention maps: one-pass attention models and NumPy helpers.

A `CaiTBackbone`'s own graph computes no attention maps (PyTorch, running
eagerly, would pay for them). It also wires the same layers a second time
with `return_attention=True` (`backbone.attention_graph()`); the models
built here are plain `keras.Model`s over that graph: they share the
backbone's layers and weights, run one forward pass, and return the maps
next to the features or the classifier's predictions.

Output names (keys of the dicts returned):
- `"class_attention_{i}"`: class-attention block `i`, the class token's
  softmaxed attention over `[class token, patches]`,
  `(batch, heads, 1, 1 + num_patches)` (timm's `ClassAttn` weights).
- `"talking_head_attention_{i}"`: self-attention block `i` after the
  post-softmax head mixing (timm's `proj_w`),
  `(batch, heads, num_patches, num_patches)`. Only for the blocks asked for.
- `"features"` (backbone): the final-normalised tokens, the backbone's
  output. `"predictions"` (classifier): the classifier's output (logits,
  unless the classifier was built with an `activation`).

The NumPy helpers (`class_attention_grid`, `upsample_maps`, `head_maps`,
`saliency_map`) take these arrays and return arrays; they never plot.
"""

import weakref

import keras
import numpy as np

from keras_cait.errors import CaiTConfigError

# Derived attention models, per backbone or classifier and per set of
# self-attention blocks. Kept outside the model objects: an attribute would
# be tracked by Keras and change how the model saves its weights.
_MODEL_CACHE = weakref.WeakKeyDictionary()

RESAMPLING = ("nearest", "bilinear", "bicubic")


def _backbone_of(model):
    """The `CaiTBackbone` of a backbone or a CaiT classifier."""
    from keras_cait.models.cait_backbone import CaiTBackbone

    if isinstance(model, CaiTBackbone):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, CaiTBackbone):
        return backbone
    raise CaiTConfigError(
        "`model` must be a keras_cait.CaiTBackbone or a model with a "
        f"CaiTBackbone `backbone` (e.g. CaiTImageClassifier), got "
        f"{type(model).__name__}."
    )


def normalize_block_indices(self_attention_blocks, num_layers):
    """Checks self-attention block indices and returns them sorted, unique.

    Args:
        self_attention_blocks: an int, an iterable of ints, `"all"`, or
            `None`/`()` for none. Negative indices count from the end
            (`-1` is the last block).
        num_layers: int. The number of self-attention blocks.

    Returns:
        A tuple of non-negative ints in increasing order.
    """
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


def _classifier_head(model, backbone):
    """The part of `model`'s graph after its backbone, as a `keras.Model`.

    It maps the backbone's output tokens to the model's outputs (pooling,
    dropout, dense head, ...), reusing the model's own layers, so that it can
    be applied to the backbone's internal output tensor without a second
    backbone pass.
    """
    nodes = [
        node
        for depth_nodes in model._nodes_by_depth.values()
        for node in depth_nodes
        if node.operation is backbone
    ]
    if len(nodes) != 1:
        raise CaiTConfigError(
            f"`{model.name}` must call its backbone exactly once to expose "
            f"attention maps; it calls it {len(nodes)} times."
        )
    (tokens,) = nodes[0].output_tensors
    return keras.Model(tokens, model.output, name=f"{model.name}_head")


def attention_model(model, self_attention_blocks=()):
    """A `keras.Model` returning attention maps with the model's output.

    The returned model takes the same (preprocessed) images as `model` and
    returns a dict: `"features"` (for a backbone) or `"predictions"` (for a
    classifier), `"class_attention_{i}"` for every class-attention block,
    and `"talking_head_attention_{i}"` for each requested self-attention
    block. It shares `model`'s layers and weights and computes everything in
    one forward pass. Models are cached per `model` and block set.

    Args:
        model: a `keras_cait.CaiTBackbone`, or a `keras_cait.CaiTImageClassifier`
            (any functional model that calls a `CaiTBackbone` once).
        self_attention_blocks: int, iterable of ints, `"all"` or `()`. The
            self-attention blocks whose talking-heads attention to return;
            negative indices count from the end.

    Returns:
        A `keras.Model` with a dict output.

    Example:
    ```python
    model = keras_cait.attention_model(backbone, self_attention_blocks=(0, -1))
    outputs = model.predict(images)
    outputs["class_attention_1"].shape  # (batch, heads, 1, 1 + num_patches)
    ```
    """
    backbone = _backbone_of(model)
    blocks = normalize_block_indices(self_attention_blocks, backbone.num_layers)
    cache = _MODEL_CACHE.setdefault(model, {})
    if blocks in cache:
        return cache[blocks]

    images, features, maps = backbone.attention_graph()
    outputs = {}
    if model is backbone:
        outputs["features"] = features
    else:
        outputs["predictions"] = _classifier_head(model, backbone)(features)
    for i in range(backbone.num_class_attention_layers):
        outputs[f"class_attention_{i}"] = maps[f"class_attention_{i}"]
    for i in blocks:
        outputs[f"talking_head_attention_{i}"] = maps[f"talking_head_attention_{i}"]
    derived = keras.Model(images, outputs, name=f"{model.name}_attention")
    cache[blocks] = derived
    return derived


def get_attention_maps(
    model, images, self_attention_blocks=(), batch_size=8, preprocess=None
):
    """Runs `model` once on `images` and returns its outputs and maps.

    Args:
        model: a `keras_cait.CaiTBackbone` or `keras_cait.CaiTImageClassifier`.
        images: array `(batch, height, width, channels)`. Model-ready images,
            or raw images when they are preprocessed (see `preprocess`).
        self_attention_blocks: int, iterable of ints, `"all"` or `()`: the
            self-attention blocks whose talking-heads maps to return.
        batch_size: int. Images per forward pass.
        preprocess: bool or `None`. Whether to run `model.preprocessor` on
            `images` first. `None` (default) does so when the model has a
            preprocessor, like `model.predict()`.

    Returns:
        A dict of NumPy arrays, see `attention_model()` for the keys.

    The model is called eagerly, batch by batch (no compilation step, so the
    first result comes fast). For large datasets, compile once with
    `attention_model(model, blocks).predict(dataset)`.

    Example:
    ```python
    maps = classifier.get_attention_maps(images, self_attention_blocks=[-1])
    maps["predictions"].shape        # (batch, num_classes)
    maps["talking_head_attention_23"].shape  # (batch, heads, N, N)
    ```
    """
    derived = attention_model(model, self_attention_blocks)
    preprocessor = getattr(model, "preprocessor", None)
    if preprocess is None:
        preprocess = preprocessor is not None
    if preprocess:
        if preprocessor is None:
            raise CaiTConfigError(
                "`preprocess=True` but the model has no `preprocessor`."
            )
        images = preprocessor(images)
    images = keras.ops.convert_to_numpy(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
        batch_size < 1
    ):
        raise CaiTConfigError(
            f"`batch_size` must be a positive integer, got {batch_size!r}."
        )
    # Direct calls, batch by batch: no compilation step, which makes the
    # first maps much faster than `predict()` (use
    # `attention_model(...).predict(...)` to compile for large datasets).
    pieces = {}
    for start in range(0, len(images), batch_size):
        outputs = derived(images[start : start + batch_size], training=False)
        for name, value in outputs.items():
            pieces.setdefault(name, []).append(keras.ops.convert_to_numpy(value))
    return {name: np.concatenate(values) for name, values in pieces.items()}


def _as_pair(size, name):
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise CaiTConfigError(
            f"`{name}` must be a positive int or (height, width), got {size!r}."
        )
    return size


def class_attention_grid(attention, grid_size):
    """The class token's attention to the patches, on the patch grid.

    Drops the class token's attention to itself and reshapes the rest
    (row-major patch order, as the patch embedding makes it) to the grid.

    Args:
        attention: array `(..., heads, 1, 1 + num_patches)`, a
            `"class_attention_{i}"` map; leading batch axes are kept.
        grid_size: int or `(rows, columns)`, the backbone's `grid_size`.

    Returns:
        Array `(..., heads, rows, columns)`.

    Example:
    ```python
    grid = keras_cait.class_attention_grid(maps["class_attention_1"], (14, 14))
    grid.shape  # (batch, heads, 14, 14)
    ```
    """
    rows, columns = _as_pair(grid_size, "grid_size")
    attention = np.asarray(attention)
    if attention.ndim < 3 or attention.shape[-2] != 1 or (
        attention.shape[-1] != 1 + rows * columns
    ):
        raise CaiTConfigError(
            "`attention` must be a class-attention map of shape "
            f"(..., heads, 1, {1 + rows * columns}) for a {rows}x{columns} "
            f"patch grid, got shape {attention.shape}."
        )
    patches = attention[..., 0, 1:]
    return patches.reshape(attention.shape[:-2] + (rows, columns))


def upsample_maps(maps, image_size, resample="bilinear"):
    """Resizes maps on the patch grid to an image size.

    Args:
        maps: array `(..., rows, columns)`.
        image_size: int or `(height, width)`.
        resample: `"nearest"` (one flat square per patch), `"bilinear"` or
            `"bicubic"` (PIL's filters).

    Returns:
        float32 array `(..., height, width)`.

    Example:
    ```python
    big = keras_cait.upsample_maps(grid, (224, 224), resample="nearest")
    ```
    """
    from PIL import Image

    if resample not in RESAMPLING:
        raise CaiTConfigError(
            f"`resample` must be one of {RESAMPLING}, got {resample!r}."
        )
    height, width = _as_pair(image_size, "image_size")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim < 2:
        raise CaiTConfigError(
            f"`maps` must have shape (..., rows, columns), got {maps.shape}."
        )
    filters = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }
    flat = maps.reshape((-1,) + maps.shape[-2:])
    resized = np.stack(
        [
            np.asarray(
                Image.fromarray(m, mode="F").resize(
                    (width, height), filters[resample]
                )
            )
            for m in flat
        ]
    )
    return resized.reshape(maps.shape[:-2] + (height, width))


def head_maps(attention, grid_size, image_size=None, resample="bilinear"):
    """Per-head class-attention maps, optionally upsampled to the image.

    Args:
        attention: array `(..., heads, 1, 1 + num_patches)`.
        grid_size: int or `(rows, columns)`.
        image_size: `None` (stay on the patch grid), int or
            `(height, width)`.
        resample: see `upsample_maps()`.

    Returns:
        Array `(..., heads, rows, columns)` or `(..., heads, height, width)`,
        the raw attention probabilities (not rescaled).

    Example:
    ```python
    per_head = keras_cait.head_maps(
        maps["class_attention_0"][0], backbone.grid_size, (224, 224)
    )  # (heads, 224, 224)
    ```
    """
    grid = class_attention_grid(attention, grid_size)
    if image_size is None:
        return grid
    return upsample_maps(grid, image_size, resample=resample)


def normalize_maps(maps):
    """Rescales each map (last two axes) to [0, 1]; a flat map becomes 0."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    high = maps.max(axis=(-2, -1), keepdims=True)
    span = high - low
    scaled = np.divide(
        maps - low, span, out=np.zeros_like(maps), where=span > 0
    )
    return np.clip(scaled, 0.0, 1.0)


def saliency_map(attention, grid_size, image_size=None, resample="bilinear"):
    """The head-averaged class attention, normalised to [0, 1].

    Averages the class token's attention to the patches over the heads,
    upsamples it if asked, and rescales each map so that its minimum is 0
    and its maximum 1.

    Args:
        attention: array `(..., heads, 1, 1 + num_patches)`, usually the last
            class-attention block's map.
        grid_size: int or `(rows, columns)`.
        image_size: `None`, int or `(height, width)`.
        resample: see `upsample_maps()`.

    Returns:
        float32 array `(..., rows, columns)` or `(..., height, width)` in
        [0, 1].

    Example:
    ```python
    saliency = keras_cait.saliency_map(
        maps["class_attention_1"], backbone.grid_size, (224, 224)
    )  # (batch, 224, 224)
    ```
    """
    grid = class_attention_grid(attention, grid_size).mean(axis=-3)
    if image_size is not None:
        grid = upsample_maps(grid, image_size, resample=resample)
    return normalize_maps(grid)
