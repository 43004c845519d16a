"""Exporting keras-cait models for inference: TensorFlow SavedModel and ONNX.

`export_model` wraps `keras.Model.export` with what CaiT needs: an input
signature built from the model's image shape (with a dynamic batch axis by
default), a dynamic-batch ONNX export on the PyTorch backend (where Keras
itself falls back to a TorchScript exporter that cannot trace Keras
variables), and an atomic write, so an interrupted export never leaves a
half-written artefact at `filepath`.

| format | TensorFlow | JAX | PyTorch |
| --- | --- | --- | --- |
| `"tf_saved_model"` | yes | yes (jax2tf, needs TensorFlow) | no (Keras needs `torch_xla`) |
| `"onnx"` | yes (`tf2onnx`; `Erfc`, in exact GELU, is added as `1 - Erf`) | yes (`jax2onnx`) | yes (`torch.onnx`, dynamo, needs `onnxscript`) |
"""

import os

import keras
import numpy as np

from keras_cait.errors import CaiTConfigError
from keras_cait.io.files import staged_path
from keras_cait.models.cait_backbone import cait_backbone_of

FORMATS = ("tf_saved_model", "onnx")

# Backends that can write each format.
SUPPORTED_BACKENDS = {
    "tf_saved_model": ("tensorflow", "jax"),
    "onnx": ("tensorflow", "jax", "torch"),
}


def _check_arguments(format, batch_size):
    if format not in FORMATS:
        raise CaiTConfigError(
            f"`format` must be one of {FORMATS}, got {format!r}."
        )
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS[format]:
        raise CaiTConfigError(
            f"`format={format!r}` cannot be written from the {backend} "
            "backend (Keras needs `torch_xla` for it); export from "
            f"{' or '.join(SUPPORTED_BACKENDS[format])} instead (set "
            "KERAS_BACKEND and load the same preset or .keras file there)."
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise CaiTConfigError(
            f"`batch_size` must be None (dynamic) or a positive integer, got "
            f"{batch_size!r}."
        )


_TF2ONNX_ERFC_REGISTERED = []


def _register_tf2onnx_erfc():
    """Teaches tf2onnx TensorFlow's `Erfc` op as `1 - Erf(x)`.

    TensorFlow's exact GELU (`keras.activations.gelu(approximate=False)`,
    CaiT's MLP activation) is written with `Erfc`, which tf2onnx has no
    converter for. ONNX has `Erf`.
    """
    if _TF2ONNX_ERFC_REGISTERED:
        return
    from tf2onnx import utils  # optional dependency: keras-cait[export]
    from tf2onnx.handler import tf_op  # optional dependency: keras-cait[export]

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            x = node.input[0]
            np_dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
            erf = ctx.make_node("Erf", [x], op_name_scope=node.name, name="erf")
            one = ctx.make_const(utils.make_name("erfc_one"), np.array(1, np_dtype))
            output, name = node.output[0], node.name
            shapes, dtypes = node.output_shapes, node.output_dtypes
            ctx.remove_node(name)
            ctx.make_node(
                "Sub", [one.output[0], erf.output[0]], outputs=[output],
                name=name, shapes=shapes, dtypes=dtypes,
            )

    _TF2ONNX_ERFC_REGISTERED.append(Erfc)


def _export_onnx_torch(model, filepath, image_shape, batch_size, verbose):
    import torch  # optional dependency: only on the PyTorch backend

    sample = torch.zeros((batch_size or 2,) + image_shape, dtype=torch.float32)
    dynamic_shapes = None
    if batch_size is None:
        batch = torch.export.Dim("batch", min=1, max=65536)
        # A Keras model's `forward(*args)`: the first positional argument
        # is the images tensor.
        dynamic_shapes = (({0: batch},),)
    model.eval()
    program = torch.onnx.export(
        model,
        (sample,),
        dynamo=True,
        input_names=["images"],
        output_names=["outputs"],
        dynamic_shapes=dynamic_shapes,
        verbose=verbose,
    )
    program.optimize()
    program.save(filepath)


def export_model(model, filepath, format="onnx", batch_size=None, verbose=False):
    """Exports a keras-cait backbone or classifier for inference.

    The artefact takes normalised NHWC float32 images, `(batch, height,
    width, channels)` with the model's image shape, and returns what the
    model returns (logits for a classifier, tokens for a backbone). It does
    not preprocess: run the `preprocessor` (or `CaiTImageConverter`) first.

    Args:
        model: a `keras_cait.CaiTImageClassifier` or `keras_cait.CaiTBackbone`
            (e.g. from `from_preset`).
        filepath: string. Where to write: a directory for
            `"tf_saved_model"`, a `.onnx` file for `"onnx"`. An existing
            artefact there is replaced only once the new one is complete.
        format: `"onnx"` or `"tf_saved_model"`.
        batch_size: `None` for a dynamic batch axis, or a fixed int.
        verbose: bool. Let the exporter print its progress.

    Returns:
        `filepath`.

    Raises:
        CaiTConfigError: unknown `format`, a format the current backend
            cannot write, or a bad `batch_size`.

    Example:
    ```python
    classifier = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224")
    export_model(classifier, "cait_xxs24_224.onnx", format="onnx")

    import onnxruntime
    session = onnxruntime.InferenceSession("cait_xxs24_224.onnx")
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    ```
    """
    _check_arguments(format, batch_size)
    image_shape = tuple(cait_backbone_of(model).image_shape)
    filepath = os.fspath(filepath)
    with staged_path(filepath) as staged:
        if format == "onnx" and keras.backend.backend() == "torch":
            _export_onnx_torch(model, staged, image_shape, batch_size, verbose)
        else:
            if format == "onnx" and keras.backend.backend() == "tensorflow":
                _register_tf2onnx_erfc()
            signature = [
                keras.InputSpec(
                    shape=(batch_size,) + image_shape, dtype="float32", name="images"
                )
            ]
            model.export(
                staged, format=format, input_signature=signature, verbose=verbose
            )
    return filepath
