"""The ONNX Runtime and OpenVINO engines of collection runs, without Keras:
which engines and precisions run here, finding a preset's cached artefact
from its files alone, and `EnginePredictor`, which runs an artefact on
images read with Pillow and NumPy (`keras_cait_base.pillow_pipeline`).

A run whose artefact is cached therefore imports no deep-learning
framework: only the engine, Pillow and NumPy. The artefact is made from
the Keras model by `keras_cait.inference.artifact_export.make_artifact`.
"""

import importlib.metadata
import os

import huggingface_hub
import numpy as np

from keras_cait_base import artifact_cache, handles, registry
from keras_cait_base.collection_runs import RecordsActor
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.files import sha256_file
from keras_cait_base.pillow_pipeline import pillow_image_batches, pillow_supports
from keras_cait_base.predictions import batch_records
from keras_cait_base.version import __version__

ENGINES = ("keras", "onnxruntime", "openvino")
PRECISIONS = ("float32", "bfloat16")
# The export format each engine runs, and the artefact's file in its folder.
FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
FILES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# Outputs of the exported graph, in order.
OUTPUTS = ("predictions", "embedding")
# What an artefact's manifest holds; a change makes new keys, so that an
# artefact of an older layout is never used.
ARTIFACT_LAYOUT = 3


def engine_version(engine):
    """The installed version of `engine`'s package; `CaiTConfigError` when
    it is not installed."""
    try:
        return importlib.metadata.version(PACKAGES[engine])
    except importlib.metadata.PackageNotFoundError:
        raise CaiTConfigError(
            f"engine={engine!r} needs the `{PACKAGES[engine]}` package: "
            f'pip install {PACKAGES[engine]} (from a clone of keras-cait: pip install -e ".[export]").'
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
        engine_version(engine)
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
        "engine_version": engine_version(engine),
        "layout": ARTIFACT_LAYOUT,
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
    if found is None or not pillow_supports(found[1]["fields"]["converter"]):
        return None
    return found[0]


def open_session(engine, path, precision):
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

    core = openvino.Core()
    model = core.read_model(path)
    config = {"INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[precision]}
    compiled = {}  # the input shape last run: `(compiled model, request)`

    def run(images):
        # Compiled for the batch's static shape: a dynamic batch dimension
        # needs more than twice the memory (docs/performance.md).
        if images.shape not in compiled:
            compiled.clear()
            model.reshape({model.inputs[0]: list(images.shape)})
            program = core.compile_model(model, "CPU", config)
            compiled[images.shape] = (program, program.create_infer_request())
        program, request = compiled[images.shape]
        results = request.infer({0: images})
        return [results[output] for output in program.outputs]

    return run


class EnginePredictor:
    """`BatchPredictor` on an exported artefact run by ONNX Runtime or
    OpenVINO: the same records, from the engine's forward pass.

    Images are read with Pillow and transformed with NumPy (timm's
    evaluation transform, `pillow_pipeline`) where the converter allows it
    (antialiased resizing, channels last), else by `image_batches`.

    Args:
        artifact: str. The artefact's folder
            (`keras_cait.inference.artifact_export.make_artifact`); checked
            against its manifest when opened.
        engine: `"onnxruntime"` or `"openvino"`.
        top: int. Predictions per record.
        embeddings: bool. Add each image's pooled features.
        precision: `"float32"`, or `"bfloat16"` for OpenVINO (see
            `check_engine`).
        image_batches: `None`, or a function `(paths, batch_size, start)`
            giving the `ImageBatch`es of a converter the Pillow pipeline
            cannot run (the Keras side passes its `tf.data` pipeline).

    Raises:
        CaiTConfigError: a bad argument, or an artefact that does not match
            its manifest.
    """

    def __init__(self, artifact, engine, top=5, embeddings=False,
                 precision="float32", image_batches=None):
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise CaiTConfigError(f"`top` must be a positive integer, got {top!r}.")
        check_engine(engine, precision)
        if engine == "keras":
            raise CaiTConfigError("EnginePredictor runs 'onnxruntime' or 'openvino'.")
        manifest = artifact_cache.verify_artifact(artifact)
        fields, metadata = manifest["fields"], manifest["metadata"]
        self.engine = engine
        self.precision = precision
        self.activation = fields["activation"]
        self.num_classes = fields["num_classes"]
        self.top = min(top, fields["num_classes"])
        self.embeddings = embeddings
        self.converter_config = fields["converter"]
        self.labels = fields["labels"]
        self.fallback_batches = image_batches
        self.order = metadata["outputs"]
        self.artifact = artifact
        self.run = open_session(engine, os.path.join(artifact, metadata["file"]), precision)

    def image_batches(self, paths, batch_size, start=0):
        if pillow_supports(self.converter_config) or self.fallback_batches is None:
            return pillow_image_batches(paths, self.converter_config, batch_size, start)
        return self.fallback_batches(paths, batch_size, start)

    def outputs(self, images, batch_size=None):
        count = len(images)
        images = np.ascontiguousarray(images, dtype=np.float32)
        if batch_size is not None and count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), np.float32)
            images = np.concatenate([images, padding])
        results = self.run(images)
        names = ("predictions", "embedding") if self.embeddings else ("predictions",)
        outputs = {name: np.asarray(results[self.order[name]])[:count] for name in names}
        if outputs["predictions"].shape[1:] != (self.num_classes,):
            raise artifact_cache.CorruptArtifactError(
                f"Artefact '{self.artifact}': its predictions have shape "
                f"{outputs['predictions'].shape[1:]}, not ({self.num_classes},); "
                "its manifest was edited. Delete the folder to export it again."
            )
        return outputs

    def records(self, batch, outputs):
        """The records of `batch`, as `BatchPredictor.records`."""
        return batch_records(batch, outputs, self.activation, self.top,
                             self.embeddings, self.labels)



class EngineRecordsActor(RecordsActor):
    """`RecordsActor` on a cached artefact (`EnginePredictor`, Pillow
    pipeline): a Ray actor that imports no Keras, KerasHub or backend.

    Args:
        artifact, engine, top, embeddings, precision: as `EnginePredictor`.
        batch_size, directory: as `RecordsActor`.
    """

    def __init__(self, artifact, engine, top, embeddings, precision, batch_size,
                 directory=None):
        super().__init__(batch_size, directory)
        self.predictor = EnginePredictor(artifact, engine, top, embeddings, precision)
