"""Stochastic depth (per-sample drop path)."""

import keras
from keras import ops

from keras_cait.serialization import register


@register
class DropPath(keras.layers.Layer):
    """Drops the whole residual branch for a random subset of samples.

    During training each sample's input is zeroed with probability `rate`
    and the survivors are rescaled by `1 / (1 - rate)`, so the expectation
    is unchanged. At inference the layer is the identity.

    Args:
        rate: float in `[0, 1)`. The probability of dropping a sample's branch.
        seed: int or `None`. Seed of the layer's random generator; the same
            seed gives the same masks.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1), got rate={rate}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        # Stateless, so built at creation as Keras's `Dropout` (private
        # `Layer._build_at_init`, Keras 3.15).
        self._build_at_init()

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep_prob = 1.0 - self.rate
        mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        random = keras.random.uniform(
            mask_shape, seed=self.seed_generator, dtype=inputs.dtype
        )
        mask = ops.cast(random < keep_prob, inputs.dtype)
        return inputs * mask / ops.cast(keep_prob, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
