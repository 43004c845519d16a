"""Position-embedding resampling for running CaiT at another resolution.

The embedding is a `(rows, columns, dim)` image resized with antialiased
bicubic interpolation, as timm's `resample_abs_pos_embed` does (PyTorch
`interpolate(mode="bicubic", antialias=True, align_corners=False)`), in
NumPy on the checkpoint's weights, so every backend gets the same numbers:
along each axis, a matrix of Keys cubic weights (`a = -0.5`), stretched when
shrinking, each row normalised to sum to one.
"""

import numpy as np

from keras_cait_base.errors import CaiTConfigError, CaiTWeightsError

# Keys' cubic convolution coefficient. PyTorch's antialiased bicubic path (like
# Pillow's) uses -0.5; its plain (non-antialiased) bicubic uses -0.75.
CUBIC_COEFFICIENT = -0.5
# Half-width of the cubic kernel, in input pixels, before any stretching.
CUBIC_SUPPORT = 2.0


def cubic_kernel(x, a=CUBIC_COEFFICIENT):
    """Keys' cubic convolution kernel at the distances `x` (pixels), as a
    float64 array; `a` is `-0.5` for Pillow and antialiased PyTorch."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def resize_weights(input_size, output_size, a=CUBIC_COEFFICIENT):
    """The float64 `(output_size, input_size)` matrix of an antialiased
    bicubic resize along one axis: output pixel `i` is centred at `(i + 0.5)
    * scale` (`align_corners=False`); when shrinking the kernel is stretched
    by `scale`; each row covers the inputs in the kernel's support (clipped
    at the borders) and sums to one."""

    scale = input_size / output_size
    stretch = max(scale, 1.0)
    support = CUBIC_SUPPORT * stretch
    weights = np.zeros((output_size, input_size), dtype=np.float64)
    for i in range(output_size):
        center = scale * (i + 0.5)
        # Truncation (not floor) mirrors the reference's integer conversion;
        # both ends are clipped to the input.
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), input_size)
        taps = np.arange(first, last)
        row = cubic_kernel((taps - center + 0.5) / stretch, a)
        weights[i, first:last] = row / row.sum()
    return weights


def _check_grid(name, grid):
    try:
        rows, columns = (int(v) for v in grid)
        valid = rows >= 1 and columns >= 1 and tuple(grid) == (rows, columns)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise CaiTConfigError(
            f"`{name}` must be a pair (rows, columns) of positive integers, "
            f"got {grid!r}."
        )
    return rows, columns


def resample_position_embedding(pos_embed, old_grid, new_grid):
    """Resamples a CaiT position embedding from one patch grid to another.

    Matches timm's `resample_abs_pos_embed(pos_embed, new_size, old_size,
    num_prefix_tokens=0, interpolation="bicubic", antialias=True)` within
    float32 rounding. Tokens are in row-major order (as the patch embedding
    emits them); CaiT's position embedding has no class-token entry.

    Args:
        pos_embed: array-like of shape `(1, old_rows * old_columns, dim)` (or
            `(old_rows * old_columns, dim)`): the checkpoint's embedding, e.g.
            timm's `pos_embed` or a backbone's
            `patch_embedding.position_embedding`.
        old_grid: pair `(rows, columns)` the embedding was made for.
        new_grid: pair `(rows, columns)` to resample to, e.g.
            `(height // patch_size, width // patch_size)`.

    Returns:
        A float32 NumPy array of shape `(1, new_rows * new_columns, dim)`.
        When the grids are equal it is the input, unchanged (as float32).

    Raises:
        CaiTConfigError: a grid is not a pair of positive integers.
        CaiTWeightsError: `pos_embed` does not have `rows * columns` tokens
            of `old_grid`, or is not finite.

    Example:
    ```python
    # A 224x224 checkpoint (14x14 patches of 16) used at 384x288.
    new = resample_position_embedding(state_dict["pos_embed"], (14, 14), (24, 18))
    new.shape  # (1, 432, dim)
    ```
    """
    old_rows, old_columns = _check_grid("old_grid", old_grid)
    new_rows, new_columns = _check_grid("new_grid", new_grid)
    array = np.asarray(pos_embed)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] != 1:
        raise CaiTWeightsError(
            "The position embedding must have shape (1, num_patches, dim), "
            f"got {tuple(np.shape(pos_embed))}."
        )
    if array.shape[1] != old_rows * old_columns:
        raise CaiTWeightsError(
            f"The position embedding has {array.shape[1]} tokens, but "
            f"`old_grid={tuple(old_grid)}` needs {old_rows * old_columns}."
        )
    if not np.all(np.isfinite(array)):
        raise CaiTWeightsError("The position embedding has non-finite values.")
    if (old_rows, old_columns) == (new_rows, new_columns):
        return array.astype(np.float32)
    dim = array.shape[2]
    grid = array[0].astype(np.float64).reshape(old_rows, old_columns, dim)
    row_weights = resize_weights(old_rows, new_rows)
    column_weights = resize_weights(old_columns, new_columns)
    # (new_rows, old_rows) x (old_rows, old_columns, dim), then the columns.
    grid = np.einsum("ri,icd->rcd", row_weights, grid)
    grid = np.einsum("cj,rjd->rcd", column_weights, grid)
    return grid.reshape(1, new_rows * new_columns, dim).astype(np.float32)
