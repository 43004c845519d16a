"""Deprecated: `export_model(model, ...)` is `model.export(...)`.

keras-cait models export through Keras's own `model.export(filepath,
format=...)`, which `keras_cait.models.cait_export.CaiTExportMixin` makes
work for CaiT in every format and backend it can (docs/export.md).
"""

import warnings

import keras

from keras_cait.errors import CaiTConfigError
from keras_cait.models.cait_backbone import cait_backbone_of


def export_model(model, filepath, format="onnx", batch_size=None, verbose=False):
    """Deprecated alias of `model.export(filepath, format=...)`.

    Args:
        model: a `keras_cait.CaiTImageClassifier` or `keras_cait.CaiTBackbone`.
        filepath: where to write (see `CaiTBackbone.export`).
        format: a format of `model.export`.
        batch_size: `None` (dynamic) or a fixed int, turned into an
            `input_signature`.
        verbose: bool.

    Returns:
        `filepath`.

    Raises:
        CaiTConfigError: `model` is not a keras-cait model, a bad
            `batch_size`, or what `model.export` raises.
    """
    warnings.warn(
        "keras_cait.export_model is deprecated: call "
        "model.export(filepath, format=...) (Keras's own API), with "
        "input_signature=[keras.InputSpec(shape=(batch_size, height, width, "
        "3), dtype='float32')] for a fixed batch.",
        DeprecationWarning,
        stacklevel=2,
    )
    backbone = cait_backbone_of(model)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise CaiTConfigError(
            f"`batch_size` must be None (dynamic) or a positive integer, got "
            f"{batch_size!r}."
        )
    signature = [
        keras.InputSpec(
            shape=(batch_size,) + tuple(backbone.image_shape),
            dtype="float32",
            name="images",
        )
    ]
    return model.export(
        filepath, format=format, verbose=verbose, input_signature=signature
    )
