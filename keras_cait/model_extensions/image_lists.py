"""Lists of photos of any sizes for a KerasHub task: each photo is preprocessed
on its own; `predict()` runs one batch per preprocessed size (the converter's
`keep_aspect_ratio`) and returns rows in input order, `get_attention_maps()`
takes photos that preprocess to one size. Attached to `CaiTImageClassifier` by
its `TaskMixin`."""

import keras
import numpy as np

from keras_cait_base.errors import CaiTConfigError, CaiTImageError


def is_image_list(images):
    """Whether `images` is a non-empty list or tuple of single images
    `(height, width, channels)` (arrays, tensors or nested lists), of any
    sizes."""
    return (
        isinstance(images, (list, tuple))
        and len(images) > 0
        and all(
            not isinstance(x, (dict, str, bytes)) and np.ndim(x) == 3
            for x in images
        )
    )


def stack_images(images):
    """A converter's output as one batch: a list of preprocessed images
    (one per photo of a list of different sizes) is stacked; a batch is
    returned as it is."""
    if isinstance(images, (list, tuple)):
        return np.stack([keras.ops.convert_to_numpy(x) for x in images])
    return images


def preprocess_image_list(preprocessor, images):
    """A list of photos of any sizes through `preprocessor` (a KerasHub
    preprocessor or image converter), each photo on its own, as one
    batch `(len(images), height, width, 3)` (a NumPy array); a list of
    NumPy arrays, one per photo, where the preprocessed sizes differ (a
    converter with `keep_aspect_ratio`)."""
    arrays = []
    for image in images:  # a batch of one each: KerasHub reads a list through tf.ragged
        outputs = preprocessor(keras.ops.convert_to_numpy(image)[None])
        outputs, _, _ = keras.utils.unpack_x_y_sample_weight(outputs)
        if isinstance(outputs, tuple) and len(outputs) == 1:
            outputs = outputs[0]
        arrays.append(np.asarray(keras.ops.convert_to_numpy(outputs))[0])
    return arrays if len({a.shape for a in arrays}) > 1 else np.stack(arrays)


def run_by_size(run, images):
    """`run` (a batch in, an array out) on images of several sizes: one
    batch per size, the outputs stacked back in the images' order."""
    groups = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    outputs = None
    for indices in groups.values():
        result = np.asarray(run(np.stack([images[i] for i in indices])))
        if outputs is None:
            outputs = np.empty((len(images), *result.shape[1:]), result.dtype)
        outputs[indices] = result
    return outputs


def check_one_size(images, what):
    """Raises `CaiTImageError` naming the sizes when a list of images that
    is not preprocessed here holds images of different sizes."""
    shapes = sorted({tuple(np.shape(x)) for x in images})
    if len(shapes) > 1:
        raise CaiTImageError(
            f"{what}: the images have different sizes {shapes} and are not "
            "preprocessed here, so they cannot form one batch; resize them "
            "to the model's input size, or pass raw photos with "
            "preprocessing on (each is then preprocessed on its own)."
        )


def model_inputs(task, images, preprocess, method):
    """`images` as one batch for `task`'s model: run through its
    `preprocessor` when `preprocess` is true (default: when it has one), a
    list of photos each on its own; a list of preprocessed images stacked.

    Raises:
        CaiTConfigError: `preprocess=True` without a preprocessor.
        CaiTImageError: the images, or the preprocessed photos, differ in
            size, naming `method`.
    """
    if preprocess is None:
        preprocess = task.preprocessor is not None
    if not preprocess:
        if is_image_list(images):
            check_one_size(images, f"{task.name}.{method}")
            images = np.stack([keras.ops.convert_to_numpy(x) for x in images])
        return images
    if task.preprocessor is None:
        raise CaiTConfigError("`preprocess=True` but the model has no `preprocessor`.")
    if not is_image_list(images):
        return task.preprocessor(images)
    images = preprocess_image_list(task.preprocessor, images)
    if isinstance(images, list):  # `keep_aspect_ratio`
        raise CaiTImageError(
            f"{task.name}.{method}: the photos preprocess to different sizes "
            f"{sorted({x.shape for x in images})} (keep_aspect_ratio); pass the "
            "photos of one size at a time."
        )
    return images


class ImageListPredict:
    """`predict()` that also takes a list of photos of any sizes. Put it
    before the runtime's and KerasHub's `predict()`."""

    def predict(
        self, x=None, batch_size=None, verbose="auto", steps=None, callbacks=None,
        **kwargs,
    ):
        """`keras.Model.predict` with this model's preprocessor; `x` may also
        be a list of photos `(height, width, channels)` of any sizes, each
        preprocessed on its own (a list of images of one size is a batch
        too)."""
        if is_image_list(x) and self.preprocessor is not None:
            images = preprocess_image_list(self.preprocessor, x)

            # Already preprocessed: Keras's own loop, without the
            # preprocessor that KerasHub's `predict` would apply again.
            def run(batch):
                return keras.Model.predict(
                    self, batch, batch_size=batch_size, verbose=verbose,
                    steps=steps, callbacks=callbacks, **kwargs,
                )

            # Sizes that differ (`keep_aspect_ratio`): one batch per size.
            if not isinstance(images, list):
                return run(images)
            if None not in tuple(self.backbone.image_shape[:2]):
                raise CaiTConfigError(
                    f"{self.name}.predict: the photos preprocess to different "
                    f"sizes {sorted({x.shape for x in images})} (the converter "
                    "keeps the aspect ratio), but the model takes "
                    f"{tuple(self.backbone.image_shape)}: load it with "
                    "`image_shape=(None, None, 3)`."
                )
            return run_by_size(run, images)
        return super().predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps,
            callbacks=callbacks, **kwargs,
        )
