"""ImageNet-1k names for a classifier's outputs (KerasHub's table); the
ranking itself is `keras_cait_base.predictions`."""

import keras
import keras_hub
import numpy as np

from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.predictions import IMAGENET_CLASSES, probabilities


def imagenet_labels(num_classes):
    """The class names of a `num_classes` head: KerasHub's ImageNet-1k
    names (a list of 1000 str) for 1000 classes, else `None`."""
    if num_classes != IMAGENET_CLASSES:
        return None
    return [keras_hub.utils.imagenet_id_to_name(i) for i in range(IMAGENET_CLASSES)]


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
    logits = np.asarray(keras.ops.convert_to_numpy(logits), dtype="float32")
    if logits.ndim != 2 or logits.shape[1] != IMAGENET_CLASSES:
        raise CaiTConfigError(
            "decode_predictions: `logits` must be (batch, 1000) ImageNet-1k "
            f"logits, got shape {logits.shape}."
        )
    scores = probabilities(logits).astype("float32")
    return keras_hub.utils.decode_imagenet_predictions(scores, top=top)
