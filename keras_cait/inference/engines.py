"""Inference engines for collection runs: ONNX Runtime and OpenVINO run the
artefact that the classifier's own `model.export` writes, made once per
model and engine in the artefact cache (`keras_cait.inference.artifact_cache`).

`EnginePredictor` has the interface of `BatchPredictor`, with the engine's
forward pass, and images read and transformed with Pillow and NumPy
(`keras_cait.inference.pillow_pipeline`); it needs only the artefact's
folder, so a Ray actor runs it without loading the Keras model.
"""

import hashlib
import importlib.metadata
import json
import os

import huggingface_hub
import keras
import numpy as np

from keras_cait.errors import CaiTConfigError
from keras_cait.inference import artifact_cache
from keras_cait.inference.image_pipeline import image_batches
from keras_cait.inference.pillow_pipeline import pillow_image_batches, pillow_supports
from keras_cait.inference.predictions import batch_records
from keras_cait.io.files import sha256_file
from keras_cait.loading import handles, registry
from keras_cait.version import __version__

ENGINES = ("keras", "onnxruntime", "openvino")
PRECISIONS = ("float32", "bfloat16")
# The export format each engine runs, and the artefact's file in its folder.
FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
FILES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# Outputs of the exported graph, in order.
OUTPUTS = ("predictions", "embedding")
# An export whose outputs differ from Keras's by more than this (relative to
# the outputs' scale) is refused.
EXPORT_TOLERANCE = 1e-3


def _engine_version(engine):
    try:
        return importlib.metadata.version(_PACKAGES[engine])
    except importlib.metadata.PackageNotFoundError:
        raise CaiTConfigError(
            f"engine={engine!r} needs the `{_PACKAGES[engine]}` package: "
            f'pip install {_PACKAGES[engine]} (from a clone of keras-cait: pip install -e ".[export]").'
        ) from None


def bfloat16_supported():
    """Whether OpenVINO's CPU plugin runs bfloat16 here (`"BF16"` in its
    `OPTIMIZATION_CAPABILITIES`: AVX-512 BF16 or AMX)."""
    import openvino  # optional dependency: keras-cait[export]

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_engine(engine, precision="float32", attention=False):
    """Raises `CaiTConfigError` unless `engine` and `precision` can run here.

    Args:
        engine: one of `ENGINES`.
        precision: `"float32"`, or `"bfloat16"` (OpenVINO on a CPU with
            bfloat16 only).
        attention: bool. Whether attention maps are asked for (Keras engine
            only).
    """
    if engine not in ENGINES:
        raise CaiTConfigError(f"`engine` must be one of {ENGINES}, got {engine!r}.")
    if precision not in PRECISIONS:
        raise CaiTConfigError(
            f"`precision` must be one of {PRECISIONS}, got {precision!r}."
        )
    if attention and engine != "keras":
        raise CaiTConfigError(
            f"Attention maps need engine='keras' (the {engine} artefact "
            "returns the predictions and embeddings only)."
        )
    if engine != "keras":
        _engine_version(engine)
    if precision == "bfloat16":
        if engine != "openvino":
            raise CaiTConfigError(
                f"precision='bfloat16' is for engine='openvino' only, got "
                f"engine={engine!r}; use precision='float32'."
            )
        if not bfloat16_supported():
            raise CaiTConfigError(
                "precision='bfloat16': this CPU has no bfloat16 support in "
                "OpenVINO (no 'BF16' in its OPTIMIZATION_CAPABILITIES; it "
                "needs AVX-512 BF16 or AMX); use precision='float32'."
            )


def _without_names(value):
    if isinstance(value, dict):
        return {k: _without_names(v) for k, v in value.items() if k != "name"}
    if isinstance(value, (list, tuple)):
        return [_without_names(v) for v in value]
    return value


def weights_digest(model):
    """SHA-256 (hex) of a model's weights: each weight's path, shape, dtype
    and bytes, in the model's order."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy()))
        digest.update(f"{weight.path}|{value.shape}|{value.dtype}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def artifact_fields(classifier, engine):
    """Everything that changes the artefact of `classifier` for `engine`:
    the model's configuration (layer names left out), its weights' digest,
    its image shape and dtype policy, and the keras-cait, Keras, engine and
    export backend versions. (OpenVINO's bfloat16 is applied when the
    float32 artefact is compiled, so both precisions share it.)"""
    backend = keras.backend.backend()
    config = json.loads(
        json.dumps(
            {"backbone": classifier.backbone.get_config(),
             "num_classes": classifier.num_classes,
             "pooling": classifier.pooling,
             "activation": _activation_name(classifier.activation)},
            default=str,
        )
    )
    return {
        "config": _without_names(config),
        "weights": weights_digest(classifier),
        "image_shape": list(classifier.input.shape[1:]),
        "dtype_policy": classifier.dtype_policy.name,
        "keras_cait": __version__,
        "keras": keras.__version__,
        "engine": engine,
        "engine_version": _engine_version(engine),
        "format": FORMATS[engine],
        "export_backend": backend,
        "backend_version": _backend_version(backend),
    }


def _preset_files(preset):
    """`{name: local path}` of the files `from_preset(preset)` reads, or
    `None` where they are not all on this machine already (an `hf://`
    handle, or a named preset whose weights are not in the Hugging Face
    cache)."""
    handle = handles.parse_handle(preset)
    if handle.kind == "local":
        files = {}
        for root, _, names in os.walk(handle.path):
            for name in names:
                path = os.path.join(root, name)
                files[os.path.relpath(path, handle.path).replace(os.sep, "/")] = path
        return files
    if handle.kind != "name":
        return None
    source = handles.parse_hf_handle(registry.get_preset(handle.name)["weights"]["source"])
    path = huggingface_hub.try_to_load_from_cache(
        source.repo_id, "model.safetensors", revision=source.revision
    )
    return {"model.safetensors": path} if isinstance(path, str) else None


def preset_source_fields(preset, engine):
    """What names the artefact of a preset for `engine` without loading
    the model: the SHA-256 of each file the preset loads from (and a named
    preset's JSON), and the keras-cait and engine versions. `None` where
    the files are not all local (`ensure_artifact` then keys on the loaded
    model only)."""
    files = _preset_files(preset)
    if files is None:
        return None
    handle = handles.parse_handle(preset)
    return {
        "preset": registry.get_preset(handle.name) if handle.kind == "name" else None,
        "files": {name: sha256_file(path) for name, path in sorted(files.items())},
        "keras_cait": __version__,
        "engine": engine,
        "engine_version": _engine_version(engine),
    }


def artifact_of_preset(preset, engine, cache_dir=None):
    """The folder of the cached artefact made from `preset`'s files for
    `engine` (see `preset_source_fields`), if there is a valid one whose
    images the Pillow pipeline can prepare; else `None` (load the model).
    """
    source = preset_source_fields(preset, engine)
    if source is None:
        return None
    found = artifact_cache.artifact_of_source(
        artifact_cache.default_cache_dir(cache_dir), source
    )
    if found is None or not pillow_supports(found[1]["metadata"]["converter"]):
        return None
    return found[0]


def _backend_version(backend):
    package = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow",
               "openvino": "openvino"}[backend]
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _activation_name(activation):
    if activation is None:
        return None
    return getattr(activation, "__name__", None) or str(activation)


def _converter_config(converter):
    return {
        "image_size": list(converter.image_size),
        "crop_pct": converter.crop_pct,
        "interpolation": converter.interpolation,
        "mean": list(converter.mean),
        "std": list(converter.std),
        "antialias": bool(converter.antialias),
        "data_format": converter.data_format,
    }


def _export_graph(classifier):
    """A Keras model with the classifier's layers and two outputs: the
    classifier's output and its head's input (the pooled features)."""
    # The class that gives the classifier its `export` (CaiT's fixes to
    # Keras's exporter), on a functional model with both outputs.
    exporter = next(k for k in type(classifier).__mro__ if "export" in vars(k))
    # `backbone`: what the exporter reads for a model of any image size.
    backbone = property(lambda self: classifier.backbone)
    graph_class = type("CaiTEngineGraph", (exporter, keras.Model), {"backbone": backbone})
    return graph_class(
        inputs=classifier.input,
        outputs=[classifier.output, classifier.output_dropout.input],
        name="cait_engine_graph",
    )


def _output_order(engine_outputs, expected):
    """`{name: index}` of each expected output among the engine's outputs
    (matched by shape and values); raises when one has no match."""
    order = {}
    for name, reference in expected.items():
        scale = max(1.0, float(np.abs(reference).max()))
        for index, value in enumerate(engine_outputs):
            value = np.asarray(value)
            if index in order.values() or value.shape != reference.shape:
                continue
            if float(np.abs(value - reference).max()) <= EXPORT_TOLERANCE * scale:
                order[name] = index
                break
        else:
            raise CaiTConfigError(
                f"The exported artefact's '{name}' output differs from the "
                "Keras model's by more than "
                f"{EXPORT_TOLERANCE} (relative); it is not cached."
            )
    return order


def make_artifact(classifier, engine, cache_dir=None, preset=None):
    """The cached artefact of `classifier` for `engine`, exported with the
    classifier's `model.export` (on the current Keras backend) if the cache
    has no valid one.

    Before it is cached, the artefact runs on two random images and must
    give the Keras model's outputs (within `EXPORT_TOLERANCE`).

    Args:
        classifier: a `CaiTImageClassifier` with an image converter.
        engine: `"onnxruntime"` or `"openvino"`.
        cache_dir: `None` (see `artifact_cache.default_cache_dir`) or a
            folder.
        preset: `None`, or the preset `classifier` was loaded from: the
            artefact is then also found from the preset's files
            (`artifact_of_preset`), without loading the model.

    Returns:
        The artefact's folder (str).

    Raises:
        CaiTConfigError: the engine is not installed, or the export is
            wrong or fails.
    """
    fields = artifact_fields(classifier, engine)

    def export(folder):
        graph = _export_graph(classifier)
        path = os.path.join(folder, FILES[engine])
        graph.export(path, format=FORMATS[engine], verbose=False)
        shape = (2, *classifier.input.shape[1:])
        images = np.random.default_rng(0).normal(size=shape).astype("float32")
        expected = dict(zip(OUTPUTS, graph.predict_on_batch(images)))
        expected = {k: np.asarray(v, "float32") for k, v in expected.items()}
        session = _open(engine, path, "float32")
        order = _output_order(session(images), expected)
        return {
            "file": FILES[engine],
            "outputs": order,
            "num_classes": classifier.num_classes,
            "activation": _activation_name(classifier.activation),
            "converter": _converter_config(
                classifier.preprocessor.image_converter
            ),
        }

    source = None if preset is None else preset_source_fields(preset, engine)
    folder, _ = artifact_cache.ensure_artifact(
        artifact_cache.default_cache_dir(cache_dir), fields, export, source
    )
    return folder


def _open(engine, path, precision):
    """A callable running the artefact at `path`: float32 images in, the
    list of the graph's outputs (NumPy arrays) out."""
    if engine == "onnxruntime":
        import onnxruntime  # optional dependency: keras-cait[export]

        session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})
    import openvino  # optional dependency: keras-cait[export]

    hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
    compiled = openvino.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": hint}
    )
    request = compiled.create_infer_request()

    def run(images):
        results = request.infer({0: images})
        return [results[output] for output in compiled.outputs]

    return run


class EnginePredictor:
    """`BatchPredictor` on an exported artefact run by ONNX Runtime or
    OpenVINO: the same records, from the engine's forward pass.

    Images are read with Pillow and transformed with NumPy (timm's
    evaluation transform, `pillow_pipeline`) where the converter allows it
    (antialiased resizing, channels last), else by the `tf.data` pipeline.

    Args:
        artifact: str. The artefact's folder (`make_artifact`); checked
            against its manifest when opened.
        engine: `"onnxruntime"` or `"openvino"`.
        top: int. Predictions per record.
        embeddings: bool. Add each image's pooled features.
        precision: `"float32"`, or `"bfloat16"` for OpenVINO (see
            `check_engine`).
        converter: `None`, or the classifier's `CaiTImageConverter` for the
            `tf.data` fallback.

    Raises:
        CaiTConfigError: a bad argument, or an artefact that does not match
            its manifest.
    """

    def __init__(self, artifact, engine, top=5, embeddings=False,
                 precision="float32", converter=None):
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise CaiTConfigError(f"`top` must be a positive integer, got {top!r}.")
        check_engine(engine, precision)
        if engine == "keras":
            raise CaiTConfigError("EnginePredictor runs 'onnxruntime' or 'openvino'.")
        manifest = artifact_cache.verify_artifact(artifact)
        metadata = manifest["metadata"]
        self.engine = engine
        self.precision = precision
        self.activation = metadata["activation"]
        self.num_classes = metadata["num_classes"]
        self.top = min(top, metadata["num_classes"])
        self.embeddings = embeddings
        self.converter_config = metadata["converter"]
        self.converter = converter
        self.order = metadata["outputs"]
        self.artifact = artifact
        self.run = _open(engine, os.path.join(artifact, metadata["file"]), precision)

    def image_batches(self, paths, batch_size, start=0):
        if pillow_supports(self.converter_config) or self.converter is None:
            return pillow_image_batches(paths, self.converter_config, batch_size, start)
        return image_batches(paths, self.converter, batch_size, start)

    def outputs(self, images, batch_size=None):
        count = len(images)
        images = np.ascontiguousarray(images, dtype=np.float32)
        if batch_size is not None and count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), np.float32)
            images = np.concatenate([images, padding])
        results = self.run(images)
        names = ("predictions", "embedding") if self.embeddings else ("predictions",)
        return {name: np.asarray(results[self.order[name]])[:count] for name in names}

    def records(self, batch, outputs):
        """The records of `batch`, as `BatchPredictor.records`."""
        return batch_records(batch, outputs, self.activation, self.top, self.embeddings)

