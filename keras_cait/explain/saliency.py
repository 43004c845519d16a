"""Class-attention maps as pictures: NumPy helpers on the arrays that
`get_attention_maps()` returns (figures: `keras_cait.explain.visualization`)."""


import numpy as np
from PIL import Image

from keras_cait_base.errors import CaiTConfigError

RESAMPLING = ("nearest", "bilinear", "bicubic")


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
    flat = maps.reshape((-1,) + maps.shape[-2:])
    resampling = getattr(Image.Resampling, resample.upper())
    resized = np.stack([
        np.asarray(Image.fromarray(m, mode="F").resize((width, height), resampling))
        for m in flat
    ])
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
