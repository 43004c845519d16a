"""Array inputs of `fit()` as a dataset reshuffled each epoch.

KerasHub 0.32's `Task.fit()` turns arrays into an unshuffled, batched
dataset before Keras sees `shuffle`, so `shuffle=True` does nothing
(docs/keras_hub_upstream.md). `TrainingState.fit()` (training_state.py) hands it one of
these instead; KerasHub then maps its preprocessing over the batches.
"""

import functools
import math

import keras
import numpy as np


def is_array_input(x, y=None, sample_weight=None):
    """Whether `fit()`'s data are arrays or tensors of numbers (not a
    dataset, a generator or a `PyDataset`): what Keras shuffles."""
    leaves = [leaf for leaf in keras.tree.flatten((x, y, sample_weight)) if leaf is not None]
    return x is not None and all(_is_numeric_array(leaf) for leaf in leaves)


def _is_numeric_array(leaf):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "__array__")):
        return False
    try:
        kind = np.dtype(keras.backend.standardize_dtype(leaf.dtype)).kind
    except (TypeError, ValueError):
        return False
    return len(leaf.shape) > 0 and kind in "biuf"


def _to_numpy(leaf):
    try:
        return keras.ops.convert_to_numpy(leaf)
    except Exception:  # a tensor of another framework than the backend
        return np.asarray(leaf)


def split_validation(arrays, validation_split):
    """`(train, validation)`: the last `validation_split` of the samples
    for validation, before shuffling, as Keras's `fit()` splits them.

    Raises:
        ValueError: too few samples to split.
    """
    count = _length(arrays)
    split_at = int(math.floor(count * (1.0 - validation_split)))
    if split_at in (0, count):
        raise ValueError(
            f"`validation_split={validation_split}` leaves no training or no "
            f"validation sample out of {count}."
        )

    def part(start, end):
        return keras.tree.map_structure(
            lambda a: None if a is None else a[start:end], arrays
        )

    return part(0, split_at), part(split_at, count)


def _length(arrays):
    lengths = {
        int(leaf.shape[0]) for leaf in keras.tree.flatten(arrays) if leaf is not None
    }
    if len(lengths) != 1:
        raise ValueError(
            "`x`, `y` and `sample_weight` must have the same number of "
            f"samples; got {sorted(lengths)}."
        )
    return lengths.pop()


def shuffled_batches(arrays, batch_size, seed, epochs, steps_per_epoch=None):
    """`arrays` (`(x, y, sample_weight)` packed by
    `keras.utils.pack_x_y_sample_weight`) as batches in a new random order
    each pass, and the `steps_per_epoch` to give `fit()`.

    A `grain.MapDataset` of the passes' batches in a row (KerasHub runs one
    iterator across epochs, so it is told each epoch's steps) when Grain is
    installed, as KerasHub prefers; else a `tf.data.Dataset` that
    reshuffles each time Keras iterates it (each epoch).

    Args:
        arrays: nested arrays or tensors, of `(samples, ...)`.
        batch_size: int. The last batch of a pass may be smaller.
        seed: int. The orders are a function of the seed and the pass.
        epochs: int. `fit()`'s epochs.
        steps_per_epoch: `None` (one pass an epoch) or int.

    Returns:
        `(dataset, steps_per_epoch)`.

    Raises:
        ValueError: the leaves hold different numbers of samples.
    """
    arrays = keras.tree.map_structure(_to_numpy, arrays)
    count = _length(arrays)
    batches = math.ceil(count / batch_size)
    try:
        import grain  # optional: KerasHub's data pipeline without TensorFlow
    except ImportError:
        import tensorflow as tf  # optional: KerasHub's fallback pipeline

        dataset = tf.data.Dataset.from_tensor_slices(arrays).shuffle(
            count, seed=seed, reshuffle_each_iteration=True
        )
        return dataset.batch(batch_size), steps_per_epoch

    @functools.lru_cache(maxsize=2)
    def order(epoch):
        return np.random.default_rng([seed, epoch]).permutation(count)

    def batch(index):
        epoch, step = divmod(int(index), batches)
        rows = order(epoch)[step * batch_size : (step + 1) * batch_size]
        return keras.tree.map_structure(lambda a: a[rows], arrays)

    steps = steps_per_epoch or batches
    passes = math.ceil(epochs * steps / batches)
    return grain.MapDataset.range(passes * batches).map(batch), steps
