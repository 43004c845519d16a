"""From a classifier's outputs to records: probabilities, top-k and class
names, with NumPy only."""

import numpy as np

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
    outputs = np.asarray(outputs, dtype=np.float64)
    if activation is not None:
        return outputs
    outputs = outputs - outputs.max(axis=-1, keepdims=True)
    exp = np.exp(outputs)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_predictions(scores, top, labels=None):
    """The `top` classes of each row of `scores`, best first.

    Args:
        scores: array `(batch, num_classes)` (e.g. from `probabilities`).
        top: int. Classes per row (at most `num_classes`).
        labels: `None`, or the `num_classes` class names.

    Returns:
        One list per row of dicts `{"label", "class_id", "probability"}`;
        `label` is the class's name in `labels`, else `None`. Ties keep
        the lower class id first.
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
                    "label": None if labels is None else labels[i],
                    "class_id": int(i),
                    "probability": float(row[i]),
                }
                for i in ids
            ]
        )
    return results


def batch_records(batch, outputs, activation, top, embeddings=False, labels=None):
    """One record per image of a collection batch, in order: its path and
    top predictions (and embedding), or its error.

    Args:
        batch: an `ImageBatch` (its `paths` and `errors`).
        outputs: dict of NumPy arrays: `"predictions"` `(batch,
            num_classes)` and, with `embeddings`, `"embedding"`.
        activation: the classifier's `activation` (see `probabilities`).
        top: int. Predictions per record.
        embeddings: bool. Add `"embedding"` (a list of floats).
        labels: `None`, or the class names (`top_predictions`).

    Returns:
        A list of records (see `keras_cait.predict_files`).
    """
    ranked = top_predictions(
        probabilities(outputs["predictions"], activation), top, labels
    )
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
