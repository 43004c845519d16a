"""CaiTImageConverter: timm's evaluation transform as a KerasHub converter."""

import keras
import numpy as np

# Private Keras/KerasHub helpers: the backend switch Keras's `tf.data`-safe
# layers use, and KerasHub's graph test (versions pinned in pyproject.toml).
from keras.src.utils.backend_utils import DynamicBackend
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.keras_utils import standardize_data_format
from keras_hub.src.utils.tensor_utils import (
    convert_preprocessing_outputs_grain,
    in_grain_data_pipeline,
    in_tf_function,
)
from keras_hub.src.utils.tensor_utils import tf as optional_tensorflow

from keras_cait.loading.loader import load_preset
from keras_cait.models.cait_backbone import CaiTBackbone
from keras_cait.serialization import register
from keras_cait_base.errors import CaiTImageError
from keras_cait_base.image_geometry import (
    center_crop_offset,
    resized_shape,
    round_to_multiple,
)
from keras_cait_base.schema import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_converter_config,
)


def _is_ragged(inputs):
    return optional_tensorflow is not None and isinstance(
        inputs, optional_tensorflow.RaggedTensor
    )


def _one_image(image):
    """An element of a list of images of different sizes: one image."""
    if np.ndim(image) != 3:
        raise CaiTImageError(
            "CaiTImageConverter: a list of images of different sizes must "
            "hold single images (height, width, channels); received an "
            f"element of shape {np.shape(image)}."
        )
    return image


@register
class CaiTImageConverter(ImageConverter):
    """timm's evaluation transform for CaiT, as a KerasHub image converter.

    Turns raw images (pixels in `[0, 255]`) into the normalised inputs the
    CaiT checkpoints were evaluated on, as timm does (docs/preprocessing.md):
    resize (`resized_shape`; bicubic with antialias by default), center-crop
    `image_size`, clip to `[0, 255]`, divide by 255, subtract `mean`, divide
    by `std`.

    Inputs: one image `(height, width, channels)` or a batch (channels
    first with `data_format="channels_first"`), uint8 or float, any size,
    with 1 (repeated to RGB), 3 or 4 (alpha dropped) channels. A list of
    images of one size is stacked into a batch first; a list of images of
    different sizes is transformed one image at a time and returned as a
    list, as KerasHub's converters do. The
    output is `(…, image_size[0], image_size[1], 3)` (or `(…, 3, height,
    width)`) in the layer's compute dtype. It computes with TensorFlow's ops
    whenever TensorFlow is installed, whatever the backend, so that direct
    calls, `tf.data` and Grain pipelines give the same numbers (with the
    backend's ops otherwise); the result is a backend tensor, a TensorFlow
    tensor inside `tf.data` and a NumPy array inside Grain.

    Args:
        image_size: int or `(height, width)`. The output size.
        crop_pct: float in `(0, 1]`. The fraction of the resized image kept
            by the center crop. All CaiT checkpoints use `1.0`; `0.875` is
            the classic "resize 256, crop 224".
        interpolation: `"bicubic"` (timm's choice for CaiT), `"bilinear"`
            or `"nearest"`.
        mean: float or three floats. Per-channel mean of `[0, 1]` pixels.
            Defaults to ImageNet's.
        std: float or three floats. Per-channel standard deviation of
            `[0, 1]` pixels. Defaults to ImageNet's.
        antialias: bool. Whether to low-pass filter when downsampling, as
            PIL does. Defaults to `True`.
        keep_aspect_ratio: bool. `False` (default): resize and center-crop
            to `image_size`, as timm. `True`: the same resize (the shorter
            side to `floor(min(image_size) / crop_pct)`), each side then
            rounded to a multiple of `size_multiple`, and no crop: the
            output size follows each image's aspect ratio. For a model of
            any image size (`image_shape=(None, None, 3)`).
        size_multiple: int. With `keep_aspect_ratio`, the multiple each
            side is rounded to: the model's patch size, so that no pixel is
            dropped and images of similar shapes share a size. Defaults to
            1.
        data_format: `"channels_last"`, `"channels_first"` or `None` for
            `keras.config.image_data_format()`: the layout of the inputs
            and outputs.
        **kwargs: other keyword arguments of `keras.layers.Layer` (`name`,
            `dtype`).

    Example:
    ```python
    converter = keras_cait.CaiTImageConverter(image_size=224)
    image = keras_cait.load_image("cat.jpg")   # uint8 (H, W, 3)
    x = converter(image)                       # (224, 224, 3), normalised
    batch = converter(np.stack([image, image]))  # (2, 224, 224, 3)
    ```
    """

    backbone_cls = CaiTBackbone

    def __init__(
        self,
        image_size=224,
        crop_pct=1.0,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        antialias=True,
        data_format=None,
        keep_aspect_ratio=False,
        size_multiple=1,
        **kwargs,
    ):
        data_format = standardize_data_format(data_format)
        arguments = check_converter_config(
            image_size, crop_pct, interpolation, mean, std, keep_aspect_ratio, size_multiple
        )
        image_size, crop_pct, mean, std = (
            arguments[key] for key in ("image_size", "crop_pct", "mean", "std")
        )
        super().__init__(
            image_size=image_size, scale=None, offset=None, crop_to_aspect_ratio=False,
            interpolation=interpolation, antialias=bool(antialias), data_format=data_format,
            **kwargs,
        )
        # The inherited `Resizing` sublayer is never called (the transform
        # resizes itself); built, so that `Model.quantize` can walk it.
        self.resizing.build((None, None, None, 3))
        self.crop_pct = crop_pct
        self.keep_aspect_ratio = keep_aspect_ratio
        self.size_multiple = arguments["size_multiple"]
        self.mean = mean
        self.std = std

    def _call_python(self, inputs):
        # Called by `ImageConverter.call`; inside a `tf.data` graph the
        # inputs are TensorFlow tensors whatever the backend.
        if in_tf_function():
            return self._transform_all(inputs, DynamicBackend("tensorflow"))
        if optional_tensorflow is None:
            outputs = self._transform_all(inputs, DynamicBackend(None))
        else:
            with optional_tensorflow.device("cpu"):
                tensors = self._transform_all(inputs, DynamicBackend("tensorflow"))
                outputs = keras.tree.map_structure(lambda x: x.numpy(), tensors)
        if in_grain_data_pipeline():
            return convert_preprocessing_outputs_grain(outputs)
        return keras.tree.map_structure(keras.ops.convert_to_tensor, outputs)

    def _transform_all(self, inputs, ops):
        # A Python list of images of different sizes (a ragged tensor once
        # KerasHub's preprocessing wrapper has converted it): each image on
        # its own, returned as a list, as KerasHub's converters do.
        if isinstance(inputs, (list, tuple)):
            try:
                inputs = np.stack([np.asarray(x) for x in inputs])
            except ValueError:
                return [self._transform(_one_image(x), ops) for x in inputs]
        elif _is_ragged(inputs):
            if in_tf_function():
                raise CaiTImageError(
                    "CaiTImageConverter: the images of this batch have "
                    "different sizes (a ragged tensor), which a traced "
                    "tf.data graph cannot preprocess together; preprocess "
                    "each image before batching, or call the converter "
                    "outside tf.data with a list of images."
                )
            return [self._transform(image.to_tensor(), ops) for image in inputs]
        return self._transform(inputs, ops)

    def _transform(self, images, ops):
        if isinstance(images, dict):
            raise CaiTImageError(
                "CaiTImageConverter takes images, not a dict (bounding boxes "
                "are not supported)."
            )
        images = ops.convert_to_tensor(images)
        rank = len(images.shape)
        if rank not in (3, 4):
            raise CaiTImageError(
                "CaiTImageConverter: images must have shape (height, width, "
                "channels) or (batch, height, width, channels). Received "
                f"shape {tuple(images.shape)}."
            )
        input_shape = tuple(images.shape)
        unbatched = rank == 3
        if unbatched:
            images = ops.numpy.expand_dims(images, 0)
        channels_first = self.data_format == "channels_first"
        if channels_first:
            images = ops.numpy.transpose(images, (0, 2, 3, 1))
        channels = images.shape[-1]
        if channels is None:
            raise CaiTImageError(
                "CaiTImageConverter: the number of channels (last axis) must "
                "be known when the graph is traced, e.g. "
                "`tf.io.decode_image(data, channels=3)`. Received shape "
                f"{input_shape}."
            )
        if channels == 1:
            images = ops.numpy.concatenate([images] * 3, axis=-1)
        elif channels == 4:
            images = images[..., :3]
        elif channels != 3:
            raise CaiTImageError(
                "CaiTImageConverter: images must have 1, 3 or 4 channels "
                f"(last axis). Received shape {input_shape}."
            )
        images = ops.cast(images, "float32")

        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:  # only in a traced graph
            dynamic_shape = ops.shape(images)
            height = height if height is not None else dynamic_shape[1]
            width = width if width is not None else dynamic_shape[2]
        new_height, new_width = resized_shape(
            height, width, self.image_size, self.crop_pct, ops
        )
        if self.keep_aspect_ratio:  # each side a multiple, no crop
            new_height, new_width = (
                round_to_multiple(v, self.size_multiple, ops) for v in (new_height, new_width)
            )
        sizes = (height, width, new_height, new_width)
        static = all(isinstance(v, (int, np.integer)) for v in sizes)
        if not static or (new_height, new_width) != (height, width):
            images = ops.image.resize(
                images,
                (new_height, new_width),
                interpolation=self.interpolation,
                antialias=self.antialias,
                data_format="channels_last",
            )
        if not self.keep_aspect_ratio:
            images = self._center_crop(images, new_height, new_width, static, ops)
        return self._normalize(images, ops, channels_first, unbatched)

    def _center_crop(self, images, new_height, new_width, static, ops):
        crop_height, crop_width = self.image_size
        top = center_crop_offset(new_height, crop_height)
        left = center_crop_offset(new_width, crop_width)
        images = images[:, top : top + crop_height, left : left + crop_width, :]
        if not static:
            images = ops.numpy.reshape(images, (-1, crop_height, crop_width, 3))
        return images

    def _normalize(self, images, ops, channels_first, unbatched):
        images = ops.numpy.clip(images, 0.0, 255.0)
        mean = ops.convert_to_tensor(np.array(self.mean, "float32"))
        std = ops.convert_to_tensor(np.array(self.std, "float32"))
        images = (images / 255.0 - mean) / std
        images = ops.cast(images, self.compute_dtype)
        if channels_first:
            images = ops.numpy.transpose(images, (0, 3, 1, 2))
        if unbatched:
            images = images[0]
        return images

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.keep_aspect_ratio:
            if self.data_format == "channels_first":
                return input_shape[:-3] + (3, None, None)
            return input_shape[:-3] + (None, None, 3)
        if self.data_format == "channels_first":
            return input_shape[:-3] + (3,) + tuple(self.image_size)
        return input_shape[:-3] + tuple(self.image_size) + (3,)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Instantiates the image converter of a preset (a preset name
        needs no network); see `CaiTBackbone.from_preset`. `**kwargs`
        override the preset's arguments."""
        return load_preset(cls, preset, **kwargs)

    def get_config(self):
        # Skips `ImageConverter.get_config`: scale/offset/resizing options
        # are derived from the arguments below.
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "image_size": tuple(self.image_size),
                "crop_pct": self.crop_pct,
                "keep_aspect_ratio": self.keep_aspect_ratio,
                "size_multiple": self.size_multiple,
                "interpolation": self.interpolation,
                "mean": tuple(self.mean),
                "std": tuple(self.std),
                "antialias": self.antialias,
                "data_format": self.data_format,
            }
        )
        return config
