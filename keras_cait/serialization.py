"""Keras serialization registration shared by every keras-cait class."""

import keras

PACKAGE = "keras_cait"

register = keras.saving.register_keras_serializable(package=PACKAGE)


def registered_class(name):
    """The keras-cait class registered with Keras as `name`.

    Lets lower layers (loaders, safety checks) use the model classes without
    importing them. The classes register when `keras_cait` is imported.

    Args:
        name: string, e.g. `"CaiTBackbone"`.

    Raises:
        LookupError: no keras-cait class of that name is registered.
    """
    cls = keras.saving.get_registered_object(f"{PACKAGE}>{name}")
    if cls is None:
        raise LookupError(
            f"{PACKAGE}>{name} is not registered with Keras; import keras_cait first."
        )
    return cls
