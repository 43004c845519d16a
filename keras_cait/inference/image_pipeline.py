"""The streamed input pipeline of a collection run: image files read with
Pillow (`load_image`) and preprocessed by the preset's image converter in
parallel `tf.data` workers, in order, in bounded batches; a file that
cannot be read becomes an error, never a dropped element.

`tf.data` runs whatever the Keras backend (TensorFlow comes with KerasHub
on Linux and macOS). The converter runs inside the `tf.data` graph with
TensorFlow ops, as in a KerasHub preprocessor's `predict()` pipeline.
"""


from keras_cait_base.collection_runs import PREFETCH_BATCHES, ImageBatch, read_image
from keras_cait_base.errors import CaiTConfigError

_ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def converter_image_batches(converter):
    """`image_batches` with `converter` bound: a function `(paths, batch_size,
    start=0)`, as `engines.EnginePredictor(image_batches=...)` takes."""
    return lambda paths, batch_size, start=0: image_batches(paths, converter, batch_size, start)


def image_batches(paths, converter, batch_size, start=0, one_size=True):
    """Yields the `ImageBatch`es of `paths[start:]`, in order.

    Files are read (Pillow, `load_image`: EXIF orientation, any mode to RGB)
    and converted (`converter`, in the `tf.data` graph) by parallel
    `tf.data` workers (one per CPU core, `deterministic=True`),
    `PREFETCH_BATCHES` batches ahead of the caller, so that decoding
    overlaps with whatever the caller does with a batch. Memory is bounded
    by the batches in flight, whatever the number of paths.

    Args:
        paths: sequence of str image paths (see `expand_image_paths`).
        converter: the preset's `CaiTImageConverter`: a Keras layer turning a
            uint8 `(height, width, 3)` image into a `(size, size, 3)` model
            input, inside a `tf.data` graph.
        batch_size: int `>= 1` (checked by the callers, see
            `keras_cait_base.schema.check_batch_size`). Images per batch (the
            last one may be smaller).
        start: int. Index of the first path to read (to resume a run).
        one_size: bool. `False` for a converter whose outputs differ in
            size (`keep_aspect_ratio`): each `ImageBatch.images` is then a
            list of arrays, one per image.

    Yields:
        `ImageBatch`es covering `paths[start:]`; every path appears once,
        with its image or its error.

    Raises:
        CaiTConfigError: TensorFlow (for `tf.data`) is not installed.
    """
    try:
        import tensorflow as tf  # optional dependency: tf.data (comes with keras-hub)
    except ImportError:
        raise CaiTConfigError(
            "Reading image collections uses tf.data, which needs TensorFlow: "
            'pip install tensorflow-cpu (from a clone of keras-cait: pip install -e ".[tensorflow]").'
        ) from None
    paths = list(paths)

    def read(index):
        image, error = read_image(paths[int(index)])
        return image, (error or "").encode(**_ENCODING)

    def load(index):
        image, error = tf.numpy_function(
            read, [index], (tf.uint8, tf.string), stateful=False
        )
        image.set_shape((None, None, 3))
        error.set_shape(())
        return converter(image), error

    # Autotuning off: AUTOTUNE parallelism is then one worker per core, and
    # the end of the run no longer stalls (docs/performance.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.range(start, len(paths)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if one_size:
        dataset = dataset.batch(batch_size).prefetch(PREFETCH_BATCHES)
        batches = dataset.with_options(options).as_numpy_iterator()
    else:
        dataset = dataset.prefetch(PREFETCH_BATCHES * batch_size)
        batches = _lists_of(dataset.with_options(options).as_numpy_iterator(), batch_size)
    position = start
    for images, errors in batches:
        count = len(errors)
        yield ImageBatch(
            position,
            paths[position : position + count],
            images,
            [error.decode(**_ENCODING) or None for error in errors],
        )
        position += count


def _lists_of(elements, size):
    """`(images, errors)` lists of up to `size` `(image, error)` elements."""
    images, errors = [], []
    for image, error in elements:
        images.append(image)
        errors.append(error)
        if len(images) == size:
            yield images, errors
            images, errors = [], []
    if images:
        yield images, errors
