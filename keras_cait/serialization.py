"""Keras serialization registration shared by every keras-cait class."""

import keras

PACKAGE = "keras_cait"

register = keras.saving.register_keras_serializable(package=PACKAGE)
