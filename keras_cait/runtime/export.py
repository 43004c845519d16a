"""`export()` for keras-cait models: Keras's `model.export` for CaiT in every
format and backend it can (docs/export.md). Each override writes a format Keras's
default fails to write for CaiT, or keeps a dynamic batch; what Keras cannot write
for any model raises `CaiTConfigError` saying so."""

import functools
import os
import shutil
import tempfile

import keras
import numpy as np

from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.files import staged_path

FORMATS = ("tf_saved_model", "onnx", "openvino", "litert", "torch")

# The file name each format needs (Keras checks the same suffixes).
SUFFIXES = {"openvino": ".xml", "litert": ".tflite", "torch": ".pt2"}

# (format, backend) pairs that Keras cannot write for any model, with why.
KERAS_LIMITS = {
    ("tf_saved_model", "torch"): "Keras needs `torch_xla` to write a SavedModel "
    "from PyTorch, and torch_xla has no build for this torch",
    ("litert", "jax"): "Keras's LiteRT export needs the TensorFlow or PyTorch backend",
    ("torch", "tensorflow"): "a PyTorch ExportedProgram needs the PyTorch backend",
    ("torch", "jax"): "a PyTorch ExportedProgram needs the PyTorch backend",
}

# The backends that can write each format (the table in docs/export.md).
SUPPORTED_BACKENDS = {
    format: tuple(
        b for b in ("tensorflow", "jax", "torch") if (format, b) not in KERAS_LIMITS
    )
    for format in FORMATS
}

# OpenVINO runs bf16 by default on CPUs that have it; CaiT's parity with
# timm needs float32.
OPENVINO_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@functools.cache
def _register_tf2onnx_erfc():
    """Teaches tf2onnx (1.17) TensorFlow's `Erfc` op, which TensorFlow writes
    for CaiT's exact GELU, as `1 - Erf(x)`, once (`tf_op`: its handler API)."""
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


def _single_spec(input_signature):
    """The one image spec of `input_signature`, or None (another structure)."""
    specs = keras.tree.flatten(input_signature)
    if len(specs) == 1 and getattr(specs[0], "shape", None) is not None:
        return specs[0]
    return None


def _torch_exported_program(model, spec):
    """`torch.export` of `model` for inputs like `spec`; a `None` batch,
    height or width becomes a dynamic dimension."""
    import torch  # optional dependency: only on the PyTorch backend

    shape = tuple(spec.shape)
    dims = {}
    if shape[0] is None:
        dims[0] = torch.export.Dim("batch", min=1, max=65536)
    # Any image size: height and width in whole patches, traced at twice the grid.
    backbone = getattr(model, "backbone", model)
    patch, stored = backbone.patch_size, backbone.grid_size
    axes = (2, 3) if backbone.data_format == "channels_first" else (1, 2)
    sample_shape = list(shape)
    for axis, name, grid in zip(axes, ("rows", "columns"), stored):
        if shape[axis] is None:
            dims[axis] = patch * torch.export.Dim(name, min=1, max=1024)
            sample_shape[axis] = 2 * grid * patch
    # torch.export specialises a size-1 dimension: trace a batch of 2.
    if shape[0] is None:
        sample_shape[0] = 2
    dtype = getattr(torch, keras.backend.standardize_dtype(spec.dtype))
    sample = torch.zeros(tuple(sample_shape), dtype=dtype)
    # A Keras model's `forward(*args)`: one entry for the args tuple.
    dynamic_shapes = ((dims,),) if dims else None
    model.eval()
    return torch.export.export(model, (sample,), dynamic_shapes=dynamic_shapes, strict=False)


def _save_openvino(ov_model, filepath, spec):
    import openvino  # optional dependency: keras-cait[export]

    name = getattr(spec, "name", None) or "images"
    ov_model.inputs[0].get_tensor().set_names({name})
    # The images' shape as `spec` says: -1 for a dynamic batch.
    ov_model.reshape({0: openvino.PartialShape([-1 if d is None else d for d in spec.shape])})
    # In the model's own precision, as Keras writes it (not float16).
    openvino.save_model(ov_model, filepath, compress_to_fp16=False)


class Export:
    """`export()` override; see `keras_cait.runtime.RuntimeMixin`."""

    def export(
        self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
        **kwargs,
    ):
        """Exports the model as an artefact for inference, as
        `keras.Model.export`.

        The artefact takes normalised float32 images, `(batch, height,
        width, channels)` at the model's image shape, and returns what the
        model returns (logits for a classifier, tokens for a backbone). It
        does not preprocess: run the `preprocessor` (or
        `CaiTImageConverter`) first. The batch axis is dynamic unless
        `input_signature` fixes it, except for `"litert"` on PyTorch (batch
        1 unless `input_signature` says otherwise).

        Args:
            filepath: string or path: a directory (`"tf_saved_model"`), a
                `.onnx`, `.xml` (`.bin` beside it), `.tflite` or `.pt2` file.
                An existing artefact is replaced once the new one is complete.
            format: `"tf_saved_model"`, `"onnx"`, `"openvino"`, `"litert"` or
                `"torch"`; which backend writes which: docs/export.md.
            verbose: bool or `None` (Keras's default: print where the
                artefact went).
            input_signature: `None` for float32 images with a dynamic batch,
                or what `keras.Model.export` accepts (e.g.
                `[keras.InputSpec(shape=(8, 224, 224, 3), dtype="float32")]`
                for a fixed batch of 8).
            **kwargs: the format's own options, as `keras.Model.export`.

        Returns:
            `filepath`.

        Raises:
            CaiTConfigError: an unknown `format`, a `filepath` with the
                wrong suffix, or a combination Keras cannot write for any
                model (e.g. `"tf_saved_model"` on PyTorch), naming the
                backends that can.

        Example:
        ```python
        classifier = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224")
        classifier.export("cait_xxs24_224.onnx", format="onnx")
        ```
        """
        backend = keras.backend.backend()
        filepath = os.fspath(filepath)
        _check_format(format, backend, filepath)
        if input_signature is None:
            batch = 1 if (format, backend) == ("litert", "torch") else None
            image = self.inputs[0]
            shape = (batch,) + tuple(image.shape[1:])
            input_signature = [keras.InputSpec(shape=shape, dtype=image.dtype, name="images")]
        spec = _single_spec(input_signature)
        if backend == "jax" and spec is not None and None in tuple(spec.shape)[1:]:
            raise CaiTConfigError(
                "Exporting with a dynamic image height or width needs the "
                "TensorFlow or PyTorch backend (jax2tf cannot prove the patch "
                "grid's sizes); on JAX pass a fixed `input_signature`, e.g. "
                "[keras.InputSpec(shape=(None, 224, 224, 3))]."
            )
        with staged_path(filepath) as staged:
            self._export_staged(
                staged, format, backend, spec, verbose, input_signature, kwargs
            )
            if format == "openvino":
                # The weights file goes first; the .xml names the artefact.
                os.replace(
                    os.path.splitext(staged)[0] + ".bin",
                    os.path.splitext(filepath)[0] + ".bin",
                )
        if verbose is None or verbose:
            print(f"Saved artifact at '{filepath}'.")
        return filepath

    def _export_staged(
        self, staged, format, backend, spec, verbose, input_signature, kwargs
    ):
        # Keras's own messages name the staging path: silence them.
        quiet = dict(verbose=False, input_signature=input_signature, **kwargs)
        if spec is not None and backend == "torch" and format in ("onnx", "openvino"):
            # Reason: Keras's TorchScript trace cannot trace Keras variables.
            program = _torch_exported_program(self, spec)
            if format == "onnx":
                import torch  # optional dependency: only on PyTorch

                onnx_program = torch.onnx.export(
                    program, dynamo=True, input_names=[spec.name or "images"],
                    output_names=["outputs"], verbose=bool(verbose), **kwargs,
                )
                onnx_program.optimize()
                onnx_program.save(staged)
            else:
                import openvino  # optional dependency: keras-cait[export]

                _save_openvino(openvino.convert_model(program), staged, spec)
            return
        if spec is not None and backend == format == "openvino" and spec.shape[0] is None:
            import openvino  # optional dependency: only on the OpenVINO backend

            # Reason: Keras traces a batch of 1, which OpenVINO folds into the
            # reshapes. Private (Keras 3.15): `OpenVINOTrainer._parameterize_data`,
            # the dynamic-batch images parameter of Keras's `predict`.
            sample = np.zeros((1,) + tuple(spec.shape[1:]), spec.dtype)
            images = self._parameterize_data(sample)
            outputs = keras.tree.flatten(self(images, training=False))
            graph = openvino.Model(
                results=[openvino.opset16.result(o.output) for o in outputs],
                parameters=[images.output.get_node()],
            )
            _save_openvino(graph, staged, spec)
            return
        if spec is not None and (format, backend) == ("openvino", "jax"):
            import openvino  # optional dependency: keras-cait[export]

            # Reason: OpenVINO cannot read jax2tf's `XlaCallModule`.
            folder = tempfile.mkdtemp()
            try:
                onnx_path = os.path.join(folder, "model.onnx")
                super().export(onnx_path, format="onnx", **quiet)
                _save_openvino(openvino.convert_model(onnx_path), staged, spec)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        if format == "onnx" and backend == "tensorflow":
            _register_tf2onnx_erfc()
        dynamic = spec is not None and spec.shape[0] is None
        if format == "torch" and dynamic and "dynamic_shapes" not in kwargs:
            import torch  # optional dependency: only on PyTorch

            # Reason: Keras's torch export fixes the batch at 1.
            quiet["dynamic_shapes"] = {0: torch.export.Dim("batch", min=1, max=65536)}
        if (format, backend) == ("litert", "torch"):
            try:
                import litert_torch  # noqa: F401  optional: keras-cait[litert-torch]
            except ImportError as error:
                raise CaiTConfigError(
                    "format='litert' on the PyTorch backend needs the `litert-torch` "
                    "package: pip install litert-torch (from a clone: pip install -e "
                    "'.[litert-torch]'; in its own environment: it pins "
                    "typing-extensions<4.13), or export from the TensorFlow backend."
                ) from error
        super().export(staged, format=format, **quiet)


def _check_format(format, backend, filepath):
    if format not in FORMATS:
        raise CaiTConfigError(f"`format` must be one of {FORMATS}, got {format!r}.")
    limit = KERAS_LIMITS.get((format, backend))
    if limit is not None:
        others = " or ".join(SUPPORTED_BACKENDS[format])
        raise CaiTConfigError(
            f"format={format!r} cannot be written from the {backend} backend: "
            f"{limit}. This is a Keras limit, not CaiT's (KerasHub's ViT "
            f"fails the same way). Export from {others} instead: set "
            "KERAS_BACKEND and load the same preset or .keras file there."
        )
    suffix = SUFFIXES.get(format)
    if suffix is not None and not filepath.endswith(suffix):
        raise CaiTConfigError(
            f"format={format!r} needs a `filepath` ending in {suffix!r}, got {filepath!r}."
        )
