"""Patch embedding with a learned position embedding, and the class token."""

import keras
from keras import ops

# KerasHub's own `data_format` check (private, keras-hub 0.32).
from keras_hub.src.utils.keras_utils import standardize_data_format

from keras_cait.layers.position_embedding_resample import resample_to_grid
from keras_cait.serialization import register


@register
class PatchEmbedding(keras.layers.Layer):
    """Splits images into patches, projects them, adds positions.

    A strided convolution projects each `patch_size x patch_size` patch to
    `hidden_dim`; a learned position embedding of shape
    `(1, num_patches, hidden_dim)` is added to the patch tokens. (CaiT's class
    token has no position embedding.) The patch grid follows the input:
    the position embedding, stored for `position_embedding_size`, is
    resampled in the graph to `(height // patch_size, width // patch_size)`
    with timm's `resample_abs_pos_embed` numerics (antialiased bicubic,
    `keras_cait.layers.position_embedding_resample`); at the stored grid it
    is added as it is. Rows and columns of pixels beyond a multiple of
    `patch_size` are dropped by the strided convolution, as timm does
    without `dynamic_img_pad`. Channels-first images are transposed
    to channels-last first (TensorFlow has no NCHW `Conv2D` on CPU), so the
    weights and outputs are the same in either layout.

    Args:
        image_size: tuple `(height, width)`; both divisible by `patch_size`,
            or `(None, None)` for any size at call time.
        patch_size: int. Side of the square patches.
        hidden_dim: int. The token dimension.
        dropout_rate: float. Dropout after adding the position embedding
            (timm's `pos_drop`).
        data_format: `"channels_last"` (NHWC images), `"channels_first"`
            (NCHW) or `None` for `keras.config.image_data_format()`.
        position_embedding_size: `None` (`image_size`) or `(height, width)`
            in pixels: the size the position embedding is stored for, of
            `(height // patch_size) * (width // patch_size)` tokens.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.
    """

    def __init__(
        self,
        image_size,
        patch_size,
        hidden_dim,
        dropout_rate=0.0,
        data_format=None,
        position_embedding_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(data_format)
        self.image_size = tuple(image_size)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.dropout_rate = dropout_rate
        self.position_embedding_size = (
            None if position_embedding_size is None else tuple(position_embedding_size)
        )
        stored = self.position_embedding_size or self.image_size
        # The grid the position embedding is stored for.
        self.grid_size = (stored[0] // patch_size, stored[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def build(self, input_shape):
        self.projection = keras.layers.Conv2D(
            self.hidden_dim,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
            dtype=self.dtype_policy,
            name="projection",
        )
        channels_axis = 1 if self.data_format == "channels_first" else -1
        self.projection.build(
            (None,) + self.image_size + (input_shape[channels_axis],)
        )
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(1, self.num_patches, self.hidden_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            trainable=True,
        )
        self.dropout = keras.layers.Dropout(
            self.dropout_rate, dtype=self.dtype_policy, name="dropout"
        )

    def call(self, images, training=None):
        if self.data_format == "channels_first":
            images = ops.transpose(images, (0, 2, 3, 1))
        patches = self.projection(images)
        grid = tuple(patches.shape[1:3])
        if not all(isinstance(side, int) for side in grid):
            # Sizes known at call time only, counted as vectors of ones.
            grid = (ops.ones_like(patches[0, :, 0, 0]), ops.ones_like(patches[0, 0, :, 0]))
        patches = ops.reshape(patches, (ops.shape(patches)[0], -1, self.hidden_dim))
        position = resample_to_grid(self.position_embedding, self.grid_size, grid)
        patches = patches + ops.cast(position, patches.dtype)
        return self.dropout(patches, training=training)

    def compute_output_shape(self, input_shape):
        channels_last = self.data_format == "channels_last"
        height, width = input_shape[1:3] if channels_last else input_shape[2:4]
        if height is None or width is None:
            return (input_shape[0], None, self.hidden_dim)
        tokens = (height // self.patch_size) * (width // self.patch_size)
        return (input_shape[0], tokens, self.hidden_dim)

    def compute_output_spec(self, images, training=None):
        # Keras's default finds no shape on NumPy inputs, which
        # `Functional.compute_output_spec` passes on as they are.
        return keras.KerasTensor(
            self.compute_output_shape(images.shape), dtype=self.compute_dtype
        )

    def get_config(self):
        config = super().get_config()
        names = (
            "image_size", "patch_size", "hidden_dim", "dropout_rate", "data_format",
            "position_embedding_size",
        )
        config.update({name: getattr(self, name) for name in names})
        return config


@register
class ClassToken(keras.layers.Layer):
    """A learned class token, broadcast to the batch of its input.

    Args:
        hidden_dim: int. The token dimension.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: any tensor whose first axis is the batch (the patch tokens);
            only its batch size is used.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        self.class_token = self.add_weight(
            name="class_token",
            shape=(1, 1, self.hidden_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            trainable=True,
        )

    def call(self, inputs):
        batch_size = ops.shape(inputs)[0]
        token = ops.cast(self.class_token, self.compute_dtype)
        return ops.broadcast_to(token, (batch_size, 1, self.hidden_dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim})
        return config
