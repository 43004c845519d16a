"""Making the engines' artefact from a Keras classifier: its own
`model.export` (ONNX or OpenVINO) of a graph with the predictions and the
pooled features, checked against the Keras model, then kept in the
artefact cache (`keras_cait_base.artifact_cache`) under a key that covers
everything that changes its numbers. Running it is
`keras_cait_base.engines`.
"""

import hashlib
import importlib.metadata
import json
import os

import keras
import numpy as np

from keras_cait.inference.predictions import imagenet_labels
from keras_cait_base import artifact_cache, engines
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.version import __version__

# An export whose outputs differ from Keras's by more than this (relative to
# the outputs' scale) is refused.
EXPORT_TOLERANCE = 1e-3


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
    """Everything that changes the artefact of `classifier` for `engine`,
    or the records made from it: the model's configuration (layer names
    left out), its weights' digest, its image shape and dtype policy, its
    image converter's configuration, its head (`num_classes`, `activation`)
    and class names, and the keras-cait, Keras, engine and export backend
    versions. (OpenVINO's bfloat16 is applied when the float32 artefact is
    compiled, so both precisions share it.) `EnginePredictor` reads the
    converter, head and names from these fields, which the artefact's key
    covers."""
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
        "engine_version": engines.engine_version(engine),
        "format": engines.FORMATS[engine],
        "export_backend": backend,
        "backend_version": _backend_version(backend),
        "layout": engines.ARTIFACT_LAYOUT,
        "converter": _converter_config(classifier.preprocessor.image_converter),
        "num_classes": classifier.num_classes,
        "activation": _activation_name(classifier.activation),
        "labels": imagenet_labels(classifier.num_classes),
    }


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
        path = os.path.join(folder, engines.FILES[engine])
        graph.export(path, format=engines.FORMATS[engine], verbose=False)
        shape = (2, *classifier.input.shape[1:])
        images = np.random.default_rng(0).normal(size=shape).astype("float32")
        expected = dict(zip(engines.OUTPUTS, graph.predict_on_batch(images)))
        expected = {k: np.asarray(v, "float32") for k, v in expected.items()}
        session = engines.open_session(engine, path, "float32")
        order = _output_order(session(images), expected)
        return {"file": engines.FILES[engine], "outputs": order}

    source = None if preset is None else engines.preset_source_fields(preset, engine)
    folder, _ = artifact_cache.ensure_artifact(
        artifact_cache.default_cache_dir(cache_dir), fields, export, source
    )
    return folder


