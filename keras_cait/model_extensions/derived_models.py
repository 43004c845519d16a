"""Models derived from a backbone or classifier (attention maps,
intermediate blocks): the block selection, as timm's
`forward_intermediates(indices=...)`, a cache of the derived models, and an
eager batch loop over them, and `TokenGrid` for intermediates as grids."""

import weakref

import keras
import numpy as np
from keras import ops

# KerasHub's own `data_format` check (private, keras-hub 0.32).
from keras_hub.src.utils.keras_utils import standardize_data_format

from keras_cait.serialization import register
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.schema import check_batch_size

# Derived models, cached per model and request. A weak mapping outside the
# model: a model attribute would be tracked by Keras and change its weights.
_DERIVED_MODELS = weakref.WeakKeyDictionary()


def derived_model(owner, key, build):
    """`build()`'s model for `owner` and `key`, built once."""
    cache = _DERIVED_MODELS.setdefault(owner, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def block_indices(num_layers, indices, allow_empty=False):
    """Self-attention block indices, sorted and unique, as timm's
    `forward_intermediates(indices=...)` selects them: `None` for every
    block, an int `n` for the last `n` blocks, a sequence for those blocks
    (negative ones count from the end).

    Args:
        num_layers: int. The backbone's self-attention blocks.
        indices: `None`, an int or a sequence of ints.
        allow_empty: bool. Whether an empty sequence (no block) is valid.

    Raises:
        CaiTConfigError: an index out of range, another type, or an empty
            selection where `allow_empty` is False.
    """
    if indices is None:
        return tuple(range(num_layers))
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
        if not 1 <= indices <= num_layers:
            raise CaiTConfigError(
                f"`indices={indices}` asks for the last {indices} blocks; it "
                f"must be between 1 and num_layers={num_layers}."
            )
        return tuple(range(num_layers - int(indices), num_layers))
    if isinstance(indices, (str, bool)) or not hasattr(indices, "__iter__"):
        raise CaiTConfigError(
            f"`indices` must be None, an int or a list of ints, got {indices!r}."
        )
    selected = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise CaiTConfigError(f"Block indices must be ints, got {index!r}.")
        if not -num_layers <= index < num_layers:
            raise CaiTConfigError(
                f"Block index {int(index)} is out of range for a backbone with "
                f"num_layers={num_layers} (0 to {num_layers - 1}, or negative "
                "from the end)."
            )
        selected.add(int(index) % num_layers)
    if not selected and not allow_empty:
        raise CaiTConfigError("`indices` must not be empty.")
    return tuple(sorted(selected))


def run_in_batches(model, images, batch_size):
    """Calls `model` (dict outputs) on `images` batch by batch, eagerly.

    Returns:
        A dict of NumPy arrays, concatenated over the batches.
    """
    check_batch_size(batch_size)
    images = keras.ops.convert_to_numpy(images)
    pieces = {}
    for start in range(0, len(images), batch_size):
        outputs = model(images[start : start + batch_size], training=False)
        for name, value in outputs.items():
            pieces.setdefault(name, []).append(keras.ops.convert_to_numpy(value))
    return {name: np.concatenate(values) for name, values in pieces.items()}


@register
class TokenGrid(keras.layers.Layer):
    """Patch tokens as the images' patch grid.

    Args:
        patch_size: int. Side of the square patches.
        data_format: `"channels_last"`, `"channels_first"` or `None`: the
            layout of the images passed alongside the tokens.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        tokens: tensor `(batch, rows * columns, dim)` in row-major order.
        images: the images the tokens come from, `(batch, height, width,
            channels)` (or channels-first); only their size is used.

    Returns:
        A tensor `(batch, height // patch_size, width // patch_size, dim)`.
    """

    def __init__(self, patch_size, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.data_format = standardize_data_format(data_format)

    def _grid(self, image_shape):
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        return tuple(
            None if image_shape[axis] is None else image_shape[axis] // self.patch_size
            for axis in axes
        )

    def call(self, tokens, images):
        rows, columns = self._grid(tuple(images.shape))
        shape = ops.shape(images)
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        if rows is None:
            rows = shape[axes[0]] // self.patch_size
        if columns is None:
            columns = shape[axes[1]] // self.patch_size
        return ops.reshape(tokens, (ops.shape(tokens)[0], rows, columns, tokens.shape[-1]))

    def compute_output_shape(self, tokens_shape, images_shape):
        return (tokens_shape[0], *self._grid(images_shape), tokens_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "data_format": self.data_format})
        return config
