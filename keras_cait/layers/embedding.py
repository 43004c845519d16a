"""Patch embedding with a learned position embedding, and the class token."""

import keras
from keras import ops

from keras_cait.serialization import register


@register
class PatchEmbedding(keras.layers.Layer):
    """Splits NHWC images into patches, projects them, adds positions.

    A strided convolution projects each `patch_size x patch_size` patch to
    `hidden_dim`; a learned position embedding of shape
    `(1, num_patches, hidden_dim)` is added to the patch tokens. (CaiT's class
    token has no position embedding.)

    Args:
        image_size: tuple `(height, width)`; both divisible by `patch_size`.
        patch_size: int. Side of the square patches.
        hidden_dim: int. The token dimension.
        dropout_rate: float. Dropout after adding the position embedding
            (timm's `pos_drop`).
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.
    """

    def __init__(
        self, image_size, patch_size, hidden_dim, dropout_rate=0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.image_size = tuple(image_size)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.dropout_rate = dropout_rate
        self.grid_size = (
            self.image_size[0] // patch_size,
            self.image_size[1] // patch_size,
        )
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
        self.projection.build((None,) + self.image_size + (input_shape[-1],))
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
        patches = self.projection(images)
        patches = ops.reshape(patches, (-1, self.num_patches, self.hidden_dim))
        patches = patches + ops.cast(self.position_embedding, patches.dtype)
        return self.dropout(patches, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "dropout_rate": self.dropout_rate,
            }
        )
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
