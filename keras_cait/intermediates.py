"""Outputs of intermediate self-attention blocks, for probes and dense heads.

The counterpart of timm's `forward_intermediates`: a `CaiTBackbone` keeps the
symbolic outputs of its self-attention blocks, so a derived `keras.Model`
sharing the backbone's layers (and weights) returns any of them in one
forward pass, as patch tokens `(batch, num_patches, hidden_dim)` or as a
spatial grid `(batch, rows, columns, hidden_dim)` for dense tasks.
"""

import weakref

import keras

from keras_cait.errors import CaiTConfigError

OUTPUT_FORMATS = ("tokens", "grid")

# Derived models, per backbone and per request. A weak mapping outside the
# backbone: storing models as backbone attributes would make Keras track them
# as sublayers (and change the backbone's saved weights).
_CACHE = weakref.WeakKeyDictionary()


def resolve_block_indices(num_layers, blocks=None):
    """Normalises a selection of self-attention blocks to sorted indices.

    Args:
        num_layers: int. The backbone's number of self-attention blocks.
        blocks: `None` (every block), an int `n` (the last `n` blocks, as
            timm's `indices=n`), or a sequence of block indices (negative
            indices count from the end).

    Returns:
        A tuple of distinct, increasing non-negative indices.

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


def intermediate_model(backbone, blocks=None, output_format="tokens", norm=False):
    """A model returning the outputs of chosen self-attention blocks.

    The model shares the backbone's layers and weights (fine-tuning it
    fine-tunes the backbone) and is cached: asking twice for the same outputs
    returns the same model.

    Args:
        backbone: a `keras_cait.CaiTBackbone`.
        blocks: `None` (all blocks), an int `n` (the last `n` blocks) or a
            list of block indices (negative counts from the end).
        output_format: `"tokens"` for `(batch, num_patches, hidden_dim)` or
            `"grid"` for `(batch, rows, columns, hidden_dim)`, rows and
            columns being `backbone.grid_size`.
        norm: bool. If `True`, pass each output through the backbone's final
            LayerNorm (timm's `norm=True`), as the backbone does to its own
            output.

    Returns:
        A `keras.Model` taking the backbone's images and returning a dict
        `{"self_attention_block_{i}": tensor}` in block order.

    Example:
    ```python
    model = intermediate_model(backbone, blocks=[-4, -1], output_format="grid")
    features = model(images)
    features["self_attention_block_23"].shape  # (batch, 14, 14, 192)
    ```
    """
    if output_format not in OUTPUT_FORMATS:
        raise CaiTConfigError(
            f"`output_format` must be one of {OUTPUT_FORMATS}, got "
            f"{output_format!r}."
        )
    block_outputs = getattr(backbone, "_block_outputs", None)
    if block_outputs is None:
        raise CaiTConfigError(
            "`backbone` must be a keras_cait.CaiTBackbone, got "
            f"{type(backbone).__name__}."
        )
    indices = resolve_block_indices(backbone.num_layers, blocks)
    key = (indices, output_format, bool(norm))
    cached = _CACHE.setdefault(backbone, {})
    if key in cached:
        return cached[key]

    outputs = {}
    final_norm = backbone.get_layer("final_layernorm")
    rows, columns = backbone.grid_size
    for index in indices:
        name = f"self_attention_block_{index}"
        tokens = block_outputs[name]
        if norm:
            tokens = final_norm(tokens)
        if output_format == "grid":
            tokens = keras.layers.Reshape(
                (rows, columns, backbone.hidden_dim),
                dtype=backbone.dtype_policy,
                name=f"{name}_grid",
            )(tokens)
        outputs[name] = tokens
    model = keras.Model(
        backbone.input,
        outputs,
        name=f"{backbone.name}_intermediates",
    )
    cached[key] = model
    return model


def get_intermediate_outputs(
    backbone, images, blocks=None, output_format="tokens", norm=False
):
    """Runs the backbone once and returns chosen self-attention block outputs.

    Args:
        backbone: a `keras_cait.CaiTBackbone`.
        images: NHWC images of the backbone's `image_shape` (normalised as the
            backbone expects).
        blocks: see `intermediate_model`.
        output_format: `"tokens"` or `"grid"`; see `intermediate_model`.
        norm: bool. Apply the final LayerNorm; see `intermediate_model`.

    Returns:
        A dict `{"self_attention_block_{i}": tensor}` in block order.

    Example:
    ```python
    outputs = get_intermediate_outputs(backbone, images, blocks=2)
    ```
    """
    model = intermediate_model(backbone, blocks, output_format, norm)
    return model(images)
