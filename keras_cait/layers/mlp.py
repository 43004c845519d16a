"""The transformer MLP with exact GELU."""

import keras

from keras_cait.serialization import register


@register
class CaiTMLP(keras.layers.Layer):
    """Two dense layers with an exact (erf) GELU between them.

    Args:
        hidden_dim: int. Input and output dimension.
        intermediate_dim: int. The dimension of the first dense layer.
        dropout_rate: float. Dropout after the activation and after the
            second dense layer (timm's `Mlp(drop=...)`).
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.
    """

    def __init__(self, hidden_dim, intermediate_dim, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout_rate = dropout_rate

    def build(self, input_shape):
        self.fc1 = keras.layers.Dense(
            self.intermediate_dim, dtype=self.dtype_policy, name="fc1"
        )
        self.fc1.build((None, None, self.hidden_dim))
        self.fc2 = keras.layers.Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="fc2"
        )
        self.fc2.build((None, None, self.intermediate_dim))
        self.dropout = keras.layers.Dropout(
            self.dropout_rate, dtype=self.dtype_policy, name="dropout"
        )

    def call(self, inputs, training=None):
        # timm's Mlp.forward: fc1, act, drop1, fc2, drop2.
        x = keras.activations.gelu(self.fc1(inputs), approximate=False)
        x = self.fc2(self.dropout(x, training=training))
        return self.dropout(x, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        names = ("hidden_dim", "intermediate_dim", "dropout_rate")
        config.update({name: getattr(self, name) for name in names})
        return config
