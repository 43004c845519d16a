"""The streamed input pipeline of the ONNX Runtime and OpenVINO engines:
image files read and transformed with Pillow and NumPy in a thread pool, in
order, in bounded batches, with no deep-learning framework.

The transform is `CaiTImageConverter`'s (timm's evaluation transform) with
the same sizes (`resized_shape`, `center_crop_offset`): Pillow's
antialiased resize of each channel in float (mode `"F"`, no rounding to
uint8), clipped to `[0, 255]`, center-cropped and normalised; its pixels
are the converter's within about 1e-6. A file that cannot be read becomes an error, never a
dropped element, as in `keras_cait.inference.image_pipeline`.
"""

import collections
import concurrent.futures
import os

import numpy as np
from PIL import Image

from keras_cait_base.collection_runs import PREFETCH_BATCHES, ImageBatch, read_image
from keras_cait_base.image_geometry import center_crop_offset, resized_shape
from keras_cait_base.schema import check_batch_size

_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def pillow_supports(config):
    """Whether a converter configuration (the engine artefact's
    `"converter"`) can run here: antialiased bicubic or bilinear resizing,
    channels last. Others go through `tf.data`."""
    return (
        config["antialias"]
        and config["interpolation"] in _FILTERS
        and config["data_format"] == "channels_last"
    )


def transform(image, config):
    """timm's evaluation transform of one image with Pillow and NumPy.

    Args:
        image: uint8 array `(height, width, 3)` (`load_image`).
        config: dict with `image_size` (`[height, width]`), `crop_pct`,
            `interpolation`, `mean` and `std`, as a `CaiTImageConverter`'s.

    Returns:
        float32 array `(image_size[0], image_size[1], 3)`, normalised.
    """
    height, width = image.shape[:2]
    size = tuple(config["image_size"])
    new_height, new_width = resized_shape(height, width, size, config["crop_pct"])
    image = image.astype(np.float32)
    if (new_height, new_width) != (height, width):
        channels = [
            Image.fromarray(np.ascontiguousarray(image[..., c]), "F").resize(
                (new_width, new_height), _FILTERS[config["interpolation"]]
            )
            for c in range(3)
        ]
        image = np.stack([np.asarray(c) for c in channels], axis=-1)
    top = center_crop_offset(new_height, size[0])
    left = center_crop_offset(new_width, size[1])
    image = np.clip(image[top : top + size[0], left : left + size[1]], 0.0, 255.0)
    mean = np.asarray(config["mean"], np.float32)
    std = np.asarray(config["std"], np.float32)
    return (image / np.float32(255.0) - mean) / std


def _load(path, config):
    image, error = read_image(path)
    return transform(image, config), error


def pillow_image_batches(paths, config, batch_size, start=0):
    """Yields the `ImageBatch`es of `paths[start:]`, in order, as
    `image_batches` does, read and transformed by one thread per CPU core,
    `PREFETCH_BATCHES` batches ahead of the caller.

    Args:
        paths: sequence of str image paths.
        config: the converter configuration (see `transform`).
        batch_size: int. Images per batch (the last one may be smaller).
        start: int. Index of the first path to read.

    Raises:
        CaiTConfigError: `batch_size` is not a positive int.
    """
    check_batch_size(batch_size)
    paths = list(paths)
    ahead = (PREFETCH_BATCHES + 1) * batch_size
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        pending = collections.deque()
        submitted = position = start
        while position < len(paths):
            while submitted < len(paths) and len(pending) < ahead:
                pending.append(pool.submit(_load, paths[submitted], config))
                submitted += 1
            count = min(batch_size, len(paths) - position)
            loaded = [pending.popleft().result() for _ in range(count)]
            yield ImageBatch(
                position,
                paths[position : position + count],
                np.stack([image for image, _ in loaded]),
                [error for _, error in loaded],
            )
            position += count
