"""The sizes of timm's evaluation transform (resize, then center crop), in
integer arithmetic, shared by `CaiTImageConverter` (on tensors) and the
engines' Pillow pipeline (on Python ints)."""

import math

import numpy as np


def _select(condition, if_true, if_false, backend):
    """`if_true if condition else if_false` for Python ints or tensors."""
    if isinstance(condition, (bool, np.bool_)):
        return if_true if condition else if_false
    return backend.numpy.where(condition, if_true, if_false)


def _round_half_even_ratio(numerator, denominator, backend):
    """`round(numerator / denominator)` as Python's `round` (ties to even),
    in exact integer arithmetic."""
    quotient = numerator // denominator
    twice_remainder = 2 * (numerator - quotient * denominator)
    round_up = _select(
        twice_remainder == denominator,
        quotient % 2 == 1,
        twice_remainder > denominator,
        backend,
    )
    return quotient + _select(round_up, 1, 0, backend)


def resized_shape(height, width, image_size, crop_pct, backend=None):
    """The `(height, width)` an image is resized to before the center crop,
    as timm's evaluation transform: with `scale = floor(size / crop_pct)`, a
    square `image_size` resizes the shorter side to `scale` and the longer to
    `int(scale * long / short)` (torchvision's `Resize(int)`); a non-square
    one scales both sides by the largest of `scale_h / height` and `scale_w /
    width`, rounded ties-to-even (timm's `ResizeKeepRatio`).

    `height` and `width` are ints (then so is the result) or scalar integer
    tensors of the ops namespace `backend`. Example: `resized_shape(300, 451,
    (224, 224), 0.875)` is `(256, 384)`.
    """
    scale_height = math.floor(image_size[0] / crop_pct)
    scale_width = math.floor(image_size[1] / crop_pct)
    if all(isinstance(v, (int, np.integer)) for v in (height, width)):
        # Python ints: timm's own floating-point formulas, so that the rare
        # sizes where float rounding moves a side by one pixel match too.
        if scale_height == scale_width:
            if width <= height:
                return int(scale_height * height / width), scale_height
            return scale_height, int(scale_height * width / height)
        ratio = min(height / scale_height, width / scale_width)
        return round(height / ratio), round(width / ratio)
    if scale_height == scale_width:
        scale = scale_height
        width_is_short = width <= height
        new_height = _select(
            width_is_short, scale * height // width, scale, backend
        )
        new_width = _select(
            width_is_short, scale, scale * width // height, backend
        )
        return new_height, new_width
    # The height binds when height / scale_height <= width / scale_width.
    height_binds = height * scale_width <= width * scale_height
    new_height = _select(
        height_binds,
        scale_height,
        _round_half_even_ratio(height * scale_width, width, backend),
        backend,
    )
    new_width = _select(
        height_binds,
        _round_half_even_ratio(width * scale_height, height, backend),
        scale_width,
        backend,
    )
    return new_height, new_width


def round_to_multiple(size, multiple, backend=None):
    """`size` rounded to the nearest multiple of `multiple` (ties up), at
    least `multiple`; for ints or integer tensors."""
    rounded = (size + multiple // 2) // multiple * multiple
    return _select(rounded < multiple, multiple, rounded, backend)


def center_crop_offset(size, crop, backend=None):
    """`int(round((size - crop) / 2))` with Python's ties-to-even `round`
    (torchvision's `center_crop`), for ints or integer tensors."""
    difference = size - crop
    half = difference // 2
    return half + (difference % 2) * (half % 2)
