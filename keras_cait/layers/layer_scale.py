"""LayerScale: a learned per-channel scale on a residual branch."""

import keras

from keras_cait.serialization import register


@register
class LayerScale(keras.layers.Layer):
    """Multiplies its input by a learned per-channel vector `gamma` (timm's
    `gamma_1`/`gamma_2`; Touvron et al., 2021), every entry initialised to
    `init_values`, which lets very deep transformers train."""

    def __init__(self, init_values=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_values = init_values

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_values),
            trainable=True,
        )

    def call(self, inputs):
        return inputs * self.gamma

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"init_values": self.init_values})
        return config
