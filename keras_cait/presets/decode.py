"""Top-k ImageNet class names for the pretrained presets' logits."""

import keras
import numpy as np

from keras_cait.errors import CaiTConfigError


def decode_predictions(logits, top=5):
    """Top-`top` ImageNet-1k classes of a batch of logits.

    The presets return logits (timm's); this applies the softmax and hands
    the probabilities to `keras_hub.utils.decode_imagenet_predictions`.

    Args:
        logits: array-like `(batch, 1000)`: a preset classifier's output.
        top: int. How many classes per image.

    Returns:
        One list per image of `(class_name, probability)` tuples, most
        likely first.

    Raises:
        CaiTConfigError: `logits` is not `(batch, 1000)`.

    Example:
    ```python
    model = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224")
    keras_cait.decode_predictions(model.predict(photos), top=3)
    # [[('tabby', 0.61), ('tiger_cat', 0.22), ('Egyptian_cat', 0.09)], ...]
    ```
    """
    import keras_hub

    logits = np.asarray(keras.ops.convert_to_numpy(logits), dtype="float32")
    if logits.ndim != 2 or logits.shape[1] != 1000:
        raise CaiTConfigError(
            "decode_predictions: `logits` must be (batch, 1000) ImageNet-1k "
            f"logits, got shape {logits.shape}."
        )
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    return keras_hub.utils.decode_imagenet_predictions(np.asarray(probabilities), top=top)
