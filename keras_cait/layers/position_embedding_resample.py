"""Resampling the position embedding to the input's patch grid, in the graph.

The same antialiased bicubic resize as `keras_cait.convert.resample` (timm's
`resample_abs_pos_embed`), written in `keras.ops` so that the output grid may
be known only at call time: along each axis a matrix of Keys cubic weights
(`a = -0.5`), stretched when shrinking, each row normalised to sum to one;
the grid is then `W_rows @ grid @ W_columns^T`. Output pixel `i` is centred
at `(i + 0.5) * scale` in the input (`align_corners=False`); input taps
outside the kernel's support get a zero weight, so no clipping is needed.
At equal sizes the matrix is the identity and the result exact.
"""

from keras import ops

from keras_cait.convert.resample import CUBIC_COEFFICIENT, resize_weights


def _cubic(x, a=CUBIC_COEFFICIENT):
    x = ops.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    zero = ops.zeros_like(x)
    return ops.where(x < 1.0, near, ops.where(x < 2.0, far, zero))


def resize_matrix(input_size, output_size, dtype="float32"):
    """The `(output_size, input_size)` weights of an antialiased bicubic
    resize along one axis, as a tensor.

    Args:
        input_size: int. The stored grid's side.
        output_size: int, scalar integer tensor, or a 1-D tensor of
            `output_size` ones (a size known only at call time: under
            `torch.export` a size is not a tensor, so it is counted). A
            Python int gives NumPy's float64 weights, cast to `dtype`; a
            tensor computes them in `dtype`.
        dtype: the weights' dtype.
    """
    if isinstance(output_size, int):
        return ops.convert_to_tensor(resize_weights(input_size, output_size), dtype)
    if len(getattr(output_size, "shape", ())) == 0:
        output_size = ops.ones((output_size,), dtype)
    ones = ops.cast(output_size, dtype)
    output = ops.sum(ones)
    scale = float(input_size) / output
    stretch = ops.maximum(scale, 1.0)
    centers = scale * (ops.cumsum(ones) - 0.5)
    taps = ops.cast(ops.arange(input_size), dtype) + 0.5
    weights = _cubic((taps[None, :] - centers[:, None]) / stretch)
    return weights / ops.sum(weights, axis=1, keepdims=True)


def resample_to_grid(embedding, stored_grid, grid):
    """Resamples a `(1, rows * columns, dim)` position embedding stored for
    `stored_grid` to `grid`.

    Args:
        embedding: tensor `(1, stored_rows * stored_columns, dim)`.
        stored_grid: pair of ints, the grid `embedding` is stored for.
        grid: the input's patch grid: a pair of ints, or of sizes known
            only at call time as `resize_matrix` takes them.

    Returns:
        A tensor `(1, rows * columns, dim)` of `embedding`'s dtype; the
        embedding itself when both grids are the same ints.
    """
    if all(isinstance(side, int) for side in grid) and tuple(grid) == tuple(
        stored_grid
    ):
        return embedding
    stored_rows, stored_columns = stored_grid
    dim = embedding.shape[-1]
    compute = "float32"
    image = ops.reshape(ops.cast(embedding, compute), (stored_rows, stored_columns, dim))
    rows = resize_matrix(stored_rows, grid[0], compute)
    columns = resize_matrix(stored_columns, grid[1], compute)
    image = ops.einsum("ri,icd->rcd", rows, image)
    image = ops.einsum("cj,rjd->rcd", columns, image)
    return ops.cast(ops.reshape(image, (1, -1, dim)), embedding.dtype)
