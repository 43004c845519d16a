"""Pictures of CaiT's class attention, and evaluation confusion matrices,
drawn with matplotlib and saved as PNG.

matplotlib is imported inside the functions that draw (it is an optional
dependency: `pip install -e ".[viz]"` from a clone), so `import keras_cait` never
imports it. Figures are plain `matplotlib.figure.Figure` objects rendered
with the Agg canvas: no pyplot, no window, no global state.
"""

import json
import os

import numpy as np

from keras_cait.explain.saliency import (
    class_attention_grid,
    normalize_maps,
    saliency_map,
    upsample_maps,
)
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.files import staged_path


def require_matplotlib(purpose="Drawing attention maps"):
    """matplotlib's `Figure` class.

    Args:
        purpose: what needs it, for the error message.

    Raises:
        CaiTConfigError: matplotlib is not installed (with the install
            command).
    """
    try:
        from matplotlib.figure import Figure  # optional dependency: keras-cait[viz]
    except ImportError:
        raise CaiTConfigError(
            f"{purpose} needs matplotlib, which is not installed: "
            'pip install matplotlib (from a clone of keras-cait: pip install -e ".[viz]").'
        ) from None
    return Figure


def display_image(image, mean=None, std=None):
    """An image as float32 RGB in [0, 1], ready to draw.

    Args:
        image: array `(height, width, 3)` (or `(height, width)` greyscale):
            uint8 pixels, floats in [0, 255] or [0, 1], or a normalised model
            input when `mean` and `std` are given.
        mean: `None` or the per-channel mean the image was normalised with
            (`CaiTImageConverter.mean`).
        std: `None` or the per-channel std (`CaiTImageConverter.std`).

    Returns:
        float32 array `(height, width, 3)` in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise CaiTConfigError(
            "`image` must have shape (height, width, 3), got "
            f"{image.shape}."
        )
    image = image[..., :3]
    if (mean is None) != (std is None):
        raise CaiTConfigError("Pass both `mean` and `std`, or neither.")
    if mean is not None:
        picture = image.astype(np.float32) * np.asarray(std, np.float32)
        picture = picture + np.asarray(mean, np.float32)
    elif image.dtype == np.uint8 or image.max(initial=0) > 1.0:
        picture = image.astype(np.float32) / 255.0
    else:
        picture = image.astype(np.float32)
    return np.clip(picture, 0.0, 1.0)


def crop_box(image_shape, map_shape, crop_pct=1.0):
    """The centred region `(top, left, height, width)` of an original image
    of `image_shape` that the model saw: the largest centred box with the
    aspect ratio of `map_shape` (the model input's, or any map's with it),
    scaled by the converter's `crop_pct`."""
    height, width = int(image_shape[0]), int(image_shape[1])
    rows, columns = int(map_shape[0]), int(map_shape[1])
    if not 0.0 < crop_pct <= 1.0:
        raise CaiTConfigError(f"`crop_pct` must be in (0, 1], got {crop_pct!r}.")
    fit = min(height / rows, width / columns) * crop_pct
    box_height = max(1, int(round(rows * fit)))
    box_width = max(1, int(round(columns * fit)))
    top = int(round((height - box_height) / 2))
    left = int(round((width - box_width) / 2))
    return top, left, box_height, box_width


def _check_single_attention(attention):
    attention = np.asarray(attention)
    if attention.ndim != 3 or attention.shape[1] != 1:
        raise CaiTConfigError(
            "`attention` must be one image's class-attention map, shape "
            f"(heads, 1, 1 + num_patches), got {attention.shape}; index the "
            "batch first, e.g. maps['class_attention_0'][0]."
        )
    return attention


def plot_attention_heads(
    attention,
    grid_size,
    image=None,
    title=None,
    columns=None,
    cmap="inferno",
    alpha=0.6,
    panel_size=2.5,
):
    """A figure with one panel per head of a class-attention map.

    Each panel shows the class token's attention to the patches for one
    head, on the patch grid (nearest upsampling: one square per patch),
    over `image` when given. Each panel has its own colour range.

    Args:
        attention: array `(heads, 1, 1 + num_patches)`: one image's
            `"class_attention_{i}"` map.
        grid_size: int or `(rows, columns)`: the backbone's `grid_size`.
        image: `None` or the model's view of the image (see
            `display_image()`), any size: maps are stretched to it.
        title: `None` or the figure's title.
        columns: panels per row; defaults to `min(heads, 4)`.
        cmap: matplotlib colormap name.
        alpha: opacity of the map over `image`.
        panel_size: inches per panel.

    Returns:
        A `matplotlib.figure.Figure`.
    """
    Figure = require_matplotlib()
    attention = _check_single_attention(attention)
    grid = class_attention_grid(attention, grid_size)
    heads = grid.shape[0]
    picture = None
    if image is not None:
        picture = display_image(image)
        grid = upsample_maps(grid, picture.shape[:2], resample="nearest")
    columns = columns or min(heads, 4)
    rows = -(-heads // columns)
    figure = Figure(
        figsize=(panel_size * columns, panel_size * rows + (0.4 if title else 0)),
        layout="constrained",
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for head, ax in enumerate(axes):
        ax.set_axis_off()
        if head >= heads:
            continue
        if picture is not None:
            ax.imshow(picture)
            ax.imshow(grid[head], cmap=cmap, alpha=alpha, interpolation="nearest")
        else:
            ax.imshow(grid[head], cmap=cmap, interpolation="nearest")
        ax.set_title(f"head {head}", fontsize=10)
    if title:
        figure.suptitle(title)
    return figure


def plot_saliency(
    image,
    attention_or_saliency,
    grid_size=None,
    crop_pct=None,
    title=None,
    cmap="jet",
    alpha=0.5,
    panel_size=4.0,
):
    """A figure with the image and the saliency map overlaid on it.

    Args:
        image: the picture to draw on (see `display_image()`): the model's
            view of the image (its preprocessed input, denormalised), or the
            original photo when `crop_pct` is given.
        attention_or_saliency: one image's class-attention map
            `(heads, 1, 1 + num_patches)` (then `grid_size` is needed and the
            head-averaged, normalised saliency is computed), or a saliency map
            `(rows, columns)` in [0, 1] (see `keras_cait.saliency_map`).
        grid_size: int or `(rows, columns)`, for an attention map.
        crop_pct: `None` if `image` is what the model saw: the map covers the
            whole image. A float for an original photo: the map covers the
            centred region the converter kept (`crop_box()`), the rest is
            dimmed.
        title: `None` or the figure's title.
        cmap: matplotlib colormap name.
        alpha: opacity of the saliency map.
        panel_size: inches per panel (height).

    Returns:
        A `matplotlib.figure.Figure` with two panels.
    """
    Figure = require_matplotlib()
    picture = display_image(image)
    values = np.asarray(attention_or_saliency)
    if values.ndim == 3:
        if grid_size is None:
            raise CaiTConfigError(
                "`grid_size` is needed to draw a class-attention map."
            )
        saliency = saliency_map(_check_single_attention(values), grid_size)
    elif values.ndim == 2:
        saliency = normalize_maps(values)
    else:
        raise CaiTConfigError(
            "`attention_or_saliency` must be (heads, 1, 1 + num_patches) or "
            f"(rows, columns), got shape {values.shape}."
        )
    height, width = picture.shape[:2]
    if crop_pct is None:
        top, left, box_height, box_width = 0, 0, height, width
    else:
        top, left, box_height, box_width = crop_box(
            picture.shape, saliency.shape, crop_pct
        )
    overlay = np.zeros((height, width), np.float32)
    # Normalised again after upsampling: the interpolated map spans [0, 1].
    overlay[top : top + box_height, left : left + box_width] = normalize_maps(
        upsample_maps(saliency, (box_height, box_width), resample="bilinear")
    )[: height - top, : width - left]
    outside = np.ones((height, width), bool)
    outside[top : top + box_height, left : left + box_width] = False

    aspect = width / height
    figure = Figure(
        figsize=(2 * panel_size * aspect + 0.3, panel_size + (0.4 if title else 0)),
        layout="constrained",
    )
    original_ax, overlay_ax = figure.subplots(1, 2)
    original_ax.imshow(picture)
    original_ax.set_title("image", fontsize=10)
    dimmed = picture.copy()
    dimmed[outside] *= 0.3
    overlay_ax.imshow(dimmed)
    masked = np.ma.masked_array(overlay, mask=outside)
    overlay_ax.imshow(masked, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    overlay_ax.set_title("class-attention saliency", fontsize=10)
    for ax in (original_ax, overlay_ax):
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure


def save_figure(figure, path, dpi=100, metadata=None):
    """Saves a figure as PNG, atomically (temporary file, then rename).

    Args:
        figure: a `matplotlib.figure.Figure`.
        path: str or path-like; its directory is created if missing.
        dpi: resolution.
        metadata: `None` or a dict of str: PNG text chunks (keyword ->
            text; Pillow reads them back as `Image.open(path).text`).

    Returns:
        The path, as a string.
    """
    path = os.fspath(path)
    with staged_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, metadata=metadata)
    return path


# The colour map of confusion matrices (white to dark blue).
CONFUSION_COLORMAP = "Blues"


def plot_confusion_matrix(counts, rows, columns, title=None):
    """A confusion matrix as a figure: one cell per (true, predicted) pair,
    coloured by its count (`CONFUSION_COLORMAP`, 0 to the largest count)
    and labelled with it.

    Args:
        counts: int array-like `(len(rows), len(columns))`.
        rows: the true classes' names.
        columns: the predicted classes' names.
        title: `None` or the figure title.

    Returns:
        A `matplotlib.figure.Figure`.
    """
    Figure = require_matplotlib("Drawing a confusion matrix")
    counts = np.asarray(counts, np.int64)
    if counts.shape != (len(rows), len(columns)):
        raise CaiTConfigError(
            f"`counts` has shape {counts.shape}; expected "
            f"({len(rows)}, {len(columns)}) for the row and column names."
        )
    side = 2.5 + 0.45 * max(len(rows), len(columns))
    figure = Figure(figsize=(side, side), layout="constrained")
    ax = figure.add_subplot()
    largest = max(int(counts.max(initial=0)), 1)
    ax.imshow(
        counts, cmap=CONFUSION_COLORMAP, vmin=0, vmax=largest,
        interpolation="nearest",
    )
    for (row, column), count in np.ndenumerate(counts):
        ax.text(
            column, row, str(count), ha="center", va="center", fontsize=8,
            color="white" if count > largest / 2 else "black",
        )
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    return figure


def save_confusion_matrix(counts, rows, columns, path, title=None, dpi=100):
    """Draws `plot_confusion_matrix` and saves it as a PNG whose text chunk
    `confusion_matrix` holds the counts and names as JSON (`{"rows",
    "columns", "counts"}`).

    Returns:
        The path, as a string.

    Raises:
        CaiTConfigError: matplotlib is not installed.

    Example:
    ```python
    save_confusion_matrix([[5, 1], [0, 6]], ["cat", "dog"], ["cat", "dog"],
                          "confusion_matrix.png")
    ```
    """
    figure = plot_confusion_matrix(counts, rows, columns, title)
    data = {"rows": list(rows), "columns": list(columns),
            "counts": np.asarray(counts, np.int64).tolist()}
    return save_figure(figure, path, dpi, metadata={"confusion_matrix": json.dumps(data)})


def save_attention_figures(
    maps,
    directory,
    stem,
    image,
    grid_size,
    original=None,
    crop_pct=1.0,
    title=None,
    dpi=100,
):
    """Writes one image's attention PNGs: per-head figures and the saliency.

    Writes `<stem>_class_attention_<i>.png` (one panel per head, over
    `image`) for every `"class_attention_<i>"` in `maps`, and
    `<stem>_saliency.png` (the head-averaged map of the last class-attention
    block over `original`, or over `image` when no original is given).

    Args:
        maps: dict of one image's maps, e.g. `{k: v[0] for k, v in
            classifier.get_attention_maps(images).items()}`; other entries
            are ignored.
        directory: output folder (created if missing).
        stem: file name prefix.
        image: the model's view of the image (see `display_image()`).
        grid_size: int or `(rows, columns)`.
        original: `None` or the original photo, for the saliency figure.
        crop_pct: the converter's `crop_pct`, to place the map on
            `original` (see `plot_saliency()`).
        title: `None` or a prefix for the figure titles.
        dpi: resolution.

    Returns:
        The list of written paths.
    """

    names = sorted(
        (name for name in maps if name.startswith("class_attention_")),
        key=lambda name: int(name.rsplit("_", 1)[1]),
    )
    if not names:
        raise CaiTConfigError(
            "`maps` holds no 'class_attention_<i>' entry to draw."
        )
    prefix = f"{title}: " if title else ""
    paths = []
    for name in names:
        figure = plot_attention_heads(
            maps[name],
            grid_size,
            image=image,
            title=f"{prefix}{name.replace('_', ' ')} (per head)",
        )
        paths.append(
            save_figure(figure, os.path.join(directory, f"{stem}_{name}.png"), dpi)
        )
    figure = plot_saliency(
        image if original is None else original,
        maps[names[-1]],
        grid_size,
        crop_pct=None if original is None else crop_pct,
        title=f"{prefix}{names[-1].replace('_', ' ')}, mean over heads",
    )
    path = os.path.join(directory, f"{stem}_saliency.png")
    paths.append(save_figure(figure, path, dpi))
    return paths
