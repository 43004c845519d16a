"""From a classifier's outputs to ranked classes: probabilities, top-k and
ImageNet-1k names (KerasHub's table)."""

import keras
import keras_hub
import numpy as np

from keras_cait.errors import CaiTConfigError

IMAGENET_CLASSES = 1000


def probabilities(outputs, activation=None):
    """Class probabilities of a batch of classifier outputs.

    Args:
        outputs: array-like `(batch, num_classes)`.
        activation: the classifier's `activation`. `None` means `outputs`
            are logits and the softmax is applied; otherwise the head's own
            activation already made them scores, returned as they are.

    Returns:
        float64 NumPy array `(batch, num_classes)`.
    """
    outputs = np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float64)
    if activation is not None:
        return outputs
    outputs = outputs - outputs.max(axis=-1, keepdims=True)
    exp = np.exp(outputs)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_predictions(scores, top):
    """The `top` classes of each row of `scores`, best first.

    Args:
        scores: array `(batch, num_classes)` (e.g. from `probabilities`).
        top: int. Classes per row (at most `num_classes`).

    Returns:
        One list per row of dicts `{"label", "class_id", "probability"}`;
        `label` is the ImageNet-1k name when there are 1000 classes, else
        `None`. Ties keep the lower class id first.
    """
    scores = np.asarray(scores)
    num_classes = scores.shape[-1]
    top = min(top, num_classes)
    results = []
    for row in scores:
        ids = np.argsort(-row, kind="stable")[:top]
        results.append(
            [
                {
                    "label": keras_hub.utils.imagenet_id_to_name(int(i))
                    if num_classes == IMAGENET_CLASSES
                    else None,
                    "class_id": int(i),
                    "probability": float(row[i]),
                }
                for i in ids
            ]
        )
    return results


def batch_records(batch, outputs, activation, top, embeddings=False):
    """One record per image of a collection batch, in order: its path and
    top predictions (and embedding), or its error.

    Args:
        batch: an `ImageBatch` (its `paths` and `errors`).
        outputs: dict of NumPy arrays: `"predictions"` `(batch,
            num_classes)` and, with `embeddings`, `"embedding"`.
        activation: the classifier's `activation` (see `probabilities`).
        top: int. Predictions per record.
        embeddings: bool. Add `"embedding"` (a list of floats).

    Returns:
        A list of records (see `keras_cait.predict_files`).
    """
    ranked = top_predictions(probabilities(outputs["predictions"], activation), top)
    records = []
    for index, (path, error) in enumerate(zip(batch.paths, batch.errors)):
        if error is not None:
            records.append({"image": path, "error": error})
            continue
        record = {"image": path, "predictions": ranked[index]}
        if embeddings:
            record["embedding"] = outputs["embedding"][index].tolist()
        records.append(record)
    return records


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
