"""load_image: read an image file into a uint8 RGB NumPy array."""

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from keras_cait_base.errors import CaiTFileNotFoundError, CaiTImageError

# Modes holding 16-bit (or 32-bit integer) samples, scaled down to 8 bits.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _has_alpha(image):
    return image.mode in _ALPHA_MODES or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


def _to_rgb(image, background):
    """Converts an opened Pillow image to mode RGB."""
    if image.mode in _WIDE_INTEGER_MODES:
        # Pillow's own "I;16" -> "RGB" conversion clips instead of scaling.
        samples = np.asarray(image, dtype=np.float64)
        samples = np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(samples, mode="L")
    elif image.mode == "F":
        raise CaiTImageError(
            "32-bit floating-point images (Pillow mode 'F') have no standard "
            "pixel range; convert the image to 8-bit first."
        )
    if background is not None and _has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _check_background(background):
    if background is None:
        return None
    try:
        values = tuple(int(v) for v in background)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise CaiTImageError(
            "load_image: `background` must be None or an (r, g, b) triple of "
            f"ints in [0, 255]. Received: {background!r}"
        )
    return values


def load_image(path, background=None):
    """Reads an image file into a uint8 `(height, width, 3)` RGB array.

    The image is read with Pillow and turned upright with its EXIF
    orientation tag (as a phone's camera app shows it). Any mode becomes RGB:
    greyscale and palette images are expanded, CMYK and YCbCr converted,
    16-bit greyscale scaled to 8 bits. By default an alpha channel is dropped,
    keeping the stored colour of transparent pixels, exactly as timm's and
    torchvision's `Image.convert("RGB")` do; pass `background` to composite
    the image onto a solid colour instead.

    Args:
        path: str or path-like. The image file (JPEG, PNG, GIF, WebP, BMP,
            TIFF, ...; whatever Pillow reads). Only the first frame of an
            animation is read.
        background: `None` (drop alpha) or an `(r, g, b)` triple of ints in
            `[0, 255]`: composite transparent images onto this colour, e.g.
            `(255, 255, 255)` for white.

    Returns:
        A C-contiguous `numpy.ndarray` of dtype uint8 and shape
        `(height, width, 3)`.

    Raises:
        keras_cait.CaiTFileNotFoundError: the file does not exist.
        keras_cait.CaiTImageError: the path is a directory, or the file is
            not an image Pillow can read, or it is truncated or corrupt.

    Example:
    ```python
    image = keras_cait.load_image("cat.jpg")            # (H, W, 3) uint8
    logo = keras_cait.load_image("logo.png", background=(255, 255, 255))
    ```
    """
    background = _check_background(background)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaiTFileNotFoundError(f"Image file not found: '{path}'.")
    if os.path.isdir(path):
        raise CaiTImageError(f"'{path}' is a directory, not an image file.")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image, background)
            array = np.array(image, dtype=np.uint8)
    except CaiTImageError as error:
        raise CaiTImageError(f"Cannot read image '{path}': {error}") from None
    except UnidentifiedImageError:
        raise CaiTImageError(
            f"'{path}' is not an image file Pillow can read (unknown or "
            "unsupported format)."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports truncated and corrupt data as OSError ("image file
        # is truncated", "broken data stream"), SyntaxError or ValueError.
        raise CaiTImageError(
            f"Cannot read image '{path}': the file is truncated or corrupt "
            f"({type(error).__name__}: {error})."
        ) from None
    except Image.DecompressionBombError as error:
        raise CaiTImageError(
            f"Cannot read image '{path}': {error}"
        ) from None
    if array.ndim != 3 or array.shape[-1] != 3:
        raise CaiTImageError(
            f"Cannot read image '{path}': decoded to shape {array.shape}, "
            "expected (height, width, 3)."
        )
    return np.ascontiguousarray(array)
