"""Predictions on image collections: files, folders, globs and lists in,
one record per image out, in order, streamed (see `keras_cait_base.io.records`
for the record formats and `keras_cait.inference.image_pipeline` for the input
pipeline).

`BatchPredictor` is the forward pass and the records of one batch; a Ray
Data `map_batches` worker or a benchmark can use it on batches of their own.
"""

import os

import keras
import numpy as np

from keras_cait.inference import artifact_export
from keras_cait.inference.image_pipeline import converter_image_batches, image_batches
from keras_cait.inference.predictions import imagenet_labels
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait_base import engines
from keras_cait_base.collection_runs import predict_batches, write_records
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.image_paths import expand_image_paths
from keras_cait_base.io.records import check_output
from keras_cait_base.predictions import batch_records
from keras_cait_base.schema import DEFAULT_BATCH_SIZE, check_batch_size


def load_classifier(model):
    """A classifier that can classify image files.

    Args:
        model: a `CaiTImageClassifier`, or a preset (name, local directory or
            `hf://` handle) loaded with `CaiTImageClassifier.from_preset`.

    Returns:
        The `CaiTImageClassifier`.

    Raises:
        CaiTConfigError: `model` is neither, or it has no classification
            head (`num_classes=0`) or no image converter in its
            preprocessor.
    """
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        model = CaiTImageClassifier.from_preset(name)
    elif isinstance(model, CaiTImageClassifier):
        name = model.name
    else:
        raise CaiTConfigError(
            "`model` must be a keras_cait.CaiTImageClassifier or a preset "
            f"name, directory or hf:// handle, got {type(model).__name__}."
        )
    if not model.num_classes:
        raise CaiTConfigError(
            f"'{name}' has no classification head (num_classes=0); it cannot "
            "classify images."
        )
    if getattr(model.preprocessor, "image_converter", None) is None:
        raise CaiTConfigError(
            f"'{name}' has no image converter (its `preprocessor` is missing "
            "or has none); it cannot preprocess image files."
        )
    return model


class BatchPredictor:
    """A classifier's forward pass on batches of a collection, and the
    batch's records.

    The forward pass runs a Keras model sharing the classifier's layers
    through Keras's `predict_on_batch`, so every layer runs through its
    `__call__` (quantization, LoRA and dtype policies apply).

    Args:
        classifier: a `CaiTImageClassifier` with an image converter (see
            `load_classifier`).
        top: int. Predictions per record (at most `num_classes`).
        embeddings: bool. Also return the pooled features (the input of the
            classifier's head: the class token or the patch mean, timm's
            `forward_head(pre_logits=True)`) as each record's
            `"embedding"`.
        attention_maps: bool. Also return the class-attention maps
            (`classifier.attention_model()`); they are not part of the
            records. Not with `embeddings`.

    Example:
    ```python
    predictor = BatchPredictor(classifier, top=5)
    for batch in image_batches(paths, predictor.converter, 32):
        records = predictor.records(batch, predictor.outputs(batch.images))
    ```
    """

    def __init__(self, classifier, top=5, embeddings=False, attention_maps=False):
        self.check_top(top)
        if embeddings and attention_maps:
            raise CaiTConfigError("`embeddings` and `attention_maps` cannot be combined.")
        self.classifier = classifier
        self.converter = classifier.preprocessor.image_converter
        self.num_classes = classifier.num_classes
        self.top = min(top, classifier.num_classes)
        self.embeddings = embeddings
        self.labels = imagenet_labels(classifier.num_classes)
        if attention_maps:
            self.model = classifier.attention_model()
        else:
            outputs = {"predictions": classifier.output}
            if embeddings:
                # The head's input: the pooled features (Keras's `Layer.input`).
                outputs["embedding"] = classifier.output_dropout.input
            self.model = keras.Model(classifier.input, outputs)

    @staticmethod
    def check_top(top):
        """Raises `CaiTConfigError` unless `top` is a positive int."""
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise CaiTConfigError(f"`top` must be a positive integer, got {top!r}.")

    def outputs(self, images, batch_size=None):
        """The model's outputs on a batch of model inputs.

        The batch goes through `predict_on_batch` (Keras's compiled predict
        function). With `batch_size`, a shorter batch is padded with zeros
        to that size (and the padding's outputs dropped), so that every
        call has one shape and compiles once.

        Args:
            images: float array `(batch, height, width, 3)`, e.g.
                `ImageBatch.images`.
            batch_size: `None` or an int `>= batch`.

        Returns:
            A dict of NumPy arrays: `"predictions"` `(batch, num_classes)`,
            and `"embedding"` `(batch, hidden_dim)` or the attention maps
            when asked for.
        """
        count = len(images)
        if batch_size is not None and count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        outputs = self.model.predict_on_batch(images)
        return {name: np.asarray(value)[:count] for name, value in outputs.items()}

    def image_batches(self, paths, batch_size, start=0):
        """The `ImageBatch`es of `paths[start:]` for this predictor: the
        `tf.data` pipeline with the classifier's converter
        (`image_pipeline.image_batches`)."""
        return image_batches(paths, self.converter, batch_size, start)

    def records(self, batch, outputs):
        """One record per image of `batch` (an `ImageBatch`), in order: its
        path and top predictions (and embedding), or its error."""
        return batch_records(
            batch, outputs, self.classifier.activation, self.top,
            self.embeddings, self.labels,
        )


class SizeGroupingPredictor(BatchPredictor):
    """`BatchPredictor` for photos kept at their aspect ratio (a converter
    with `keep_aspect_ratio`, a model of any image size): the pipeline
    yields windows of `WINDOW_BATCHES` batches, whose images run one size
    per batch of `batch_size`; records stay in input order.

    Args:
        classifier: a `CaiTImageClassifier` with `image_shape=(None, None,
            3)` (see `load_classifier`).
        top, embeddings: as `BatchPredictor`.
    """

    WINDOW_BATCHES = 8

    def __init__(self, classifier, top=5, embeddings=False):
        if tuple(classifier.backbone.image_shape[:2]) != (None, None):
            raise CaiTConfigError(
                "Keeping the aspect ratio needs a model of any image size: "
                "load it with `image_shape=(None, None, 3)`; "
                f"'{classifier.name}' takes {classifier.backbone.image_shape}."
            )
        super().__init__(classifier, top, embeddings)
        config = dict(self.converter.get_config(), keep_aspect_ratio=True,
                      size_multiple=classifier.backbone.patch_size)
        self.converter = type(self.converter).from_config(config)
        self.batch_size = None

    def image_batches(self, paths, batch_size, start=0):
        self.batch_size = batch_size
        window = batch_size * self.WINDOW_BATCHES
        return image_batches(paths, self.converter, window, start, one_size=False)

    def outputs(self, images, batch_size=None):
        """`BatchPredictor.outputs` on a list of images of several sizes:
        batches of one size, the outputs in the images' order. A short
        batch is padded to the next power of two (at most the run's batch
        size): few shapes to compile, at most twice the work."""
        size = self.batch_size or len(images)
        groups = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        outputs = {}
        for indices in groups.values():
            for first in range(0, len(indices), size):
                chunk = indices[first : first + size]
                batch = np.stack([images[i] for i in chunk])
                padded = min(size, 1 << (len(chunk) - 1).bit_length())
                for name, value in super().outputs(batch, padded).items():
                    if name not in outputs:
                        outputs[name] = np.empty((len(images), *value.shape[1:]), value.dtype)
                    outputs[name][chunk] = value
        return outputs


def make_predictor(model, top=5, embeddings=False, engine="keras",
                   precision="float32", cache_dir=None, keep_aspect_ratio=False):
    """The predictor of a collection run on `engine`: a `BatchPredictor`
    for `"keras"`, else an `engines.EnginePredictor` on the model's cached
    artefact (exported on first use, `artifact_export.make_artifact`).

    Args:
        model: a `CaiTImageClassifier`, or a preset (see `load_classifier`).
            With an engine, a preset whose artefact is cached is not loaded:
            no Keras model is built (`engines.artifact_of_preset`).
        top, embeddings: as `BatchPredictor`.
        engine, precision: see `engines.check_engine`.
        cache_dir: the artefact cache (`artifact_cache.default_cache_dir`).
        keep_aspect_ratio: bool. Classify each photo at its own aspect
            ratio (`SizeGroupingPredictor`; the Keras engine only): a preset
            is loaded with `image_shape=(None, None, 3)`.

    Raises:
        CaiTConfigError: see `load_classifier`, `engines.check_engine` and
            `artifact_export.make_artifact`.
    """
    engines.check_engine(engine, precision)
    preset = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if keep_aspect_ratio:
        if engine != "keras":
            raise CaiTConfigError(
                f"keep_aspect_ratio=True needs engine='keras', got {engine!r}."
            )
        if preset is not None:
            model = CaiTImageClassifier.from_preset(preset, image_shape=(None, None, 3))
        return SizeGroupingPredictor(load_classifier(model), top, embeddings)
    if engine != "keras":
        BatchPredictor.check_top(top)
        folder = preset and engines.artifact_of_preset(preset, engine, cache_dir)
        if folder:
            return engines.EnginePredictor(folder, engine, top, embeddings, precision)
    classifier = load_classifier(model)
    if engine == "keras":
        return BatchPredictor(classifier, top, embeddings)
    folder = artifact_export.make_artifact(classifier, engine, cache_dir, preset=preset)
    converter = classifier.preprocessor.image_converter
    return engines.EnginePredictor(
        folder, engine, top, embeddings, precision,
        image_batches=converter_image_batches(converter),
    )


def _as_list(inputs):
    return [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)


def predict_files(
    inputs, model, top=5, batch_size=DEFAULT_BATCH_SIZE, embeddings=False,
    progress=False, engine="keras", precision="float32", cache_dir=None,
    keep_aspect_ratio=False,
):
    """Classifies a collection of image files; an iterator of records.

    Files are read with Pillow and preprocessed by the preset's converter
    in parallel `tf.data` workers while the model runs, in batches of
    `batch_size`, so memory stays flat on any number of files.

    Args:
        inputs: str, path-like or a list of them: image files, directories
            (recursive), glob patterns and `@list.txt` files, expanded by
            `keras_cait_base.io.image_paths.expand_image_paths` (a file named
            twice is read once).
        model: a `CaiTImageClassifier` or a preset (name, directory,
            `hf://` handle).
        top: int. Predictions per record.
        batch_size: int. Images per forward pass.
        embeddings: bool. Add each image's pooled features (`"embedding"`,
            `hidden_dim` floats).
        progress: bool. Show a progress bar on stderr.
        engine: `"keras"` (the Keras model, `tf.data` preprocessing),
            `"onnxruntime"` or `"openvino"`: the engine runs the artefact of
            the classifier's `model.export`, made once and kept in the
            artefact cache, on images preprocessed with Pillow and NumPy
            (docs/cli.md, "Fast CPU inference").
        precision: `"float32"`, or `"bfloat16"` with `engine="openvino"` on
            a CPU that has it (AVX-512 BF16 or AMX).
        cache_dir: `None` (`$KERAS_CAIT_CACHE`, else
            `$XDG_CACHE_HOME/keras-cait/engines`, else
            `~/.cache/keras-cait/engines`) or the artefact cache folder.
        keep_aspect_ratio: bool. Classify each photo at its own aspect
            ratio: the shorter side resized as the preset's converter does,
            the other in proportion (rounded to the patch size), no crop;
            batches of one size, records in input order. A preset is loaded
            with `image_shape=(None, None, 3)`; the Keras engine only.

    Returns:
        An iterator of records, one per image, in input order:
        `{"image": path, "predictions": [{"label", "class_id",
        "probability"}, ...]}` (best first; `label` is the ImageNet-1k name
        for 1000 classes, else `None`), or `{"image": path, "error":
        reason}` for a file that cannot be read. The inputs are expanded and
        the model loaded when this is called; images are read as the
        iterator is consumed.

    Raises:
        CaiTFileNotFoundError: the inputs hold no image file, or an `@list`
            file is missing.
        CaiTConfigError: a bad argument, or a model that cannot classify
            files.

    Example:
    ```python
    for record in keras_cait.predict_files("photos/", "cait_xxs24_224"):
        print(record["image"], record.get("error") or record["predictions"][0])
    ```
    """
    check_batch_size(batch_size)
    engines.check_engine(engine, precision)
    paths = expand_image_paths(_as_list(inputs))
    predictor = make_predictor(
        model, top, embeddings, engine, precision, cache_dir, keep_aspect_ratio
    )

    def records():
        for _, _, records_of_batch in predict_batches(
            predictor, paths, batch_size, progress=progress
        ):
            yield from records_of_batch

    return records()


def write_predictions(
    inputs, output, model, top=5, batch_size=DEFAULT_BATCH_SIZE,
    embeddings=False, resume=False, progress=True, engine="keras",
    precision="float32", cache_dir=None, keep_aspect_ratio=False,
):
    """Classifies a collection of image files into a records file, written
    as the run goes.

    `output` (`.jsonl` or `.csv`, see `keras_cait_base.io.records`) gets one
    record per image, in input order, flushed batch by batch. A run that
    stops (a crash, Ctrl-C, a killed job) leaves its complete records; with
    `resume=True` a second run keeps them, drops an incomplete last line and
    continues. It restarts at the first image of the batch the kept records
    end in (same `batch_size`: the same batches as one uninterrupted run, so
    the same numbers).

    Args:
        inputs: as in `predict_files`.
        output: str or path-like ending in `.jsonl` or `.csv`. It must not
            exist, unless `resume`.
        model: a `CaiTImageClassifier` or a preset.
        top: int. Predictions per record.
        batch_size: int. Images per forward pass.
        embeddings: bool. Add each image's pooled features.
        resume: bool. Continue `output` if it exists; its records must be
            those of the first inputs, written with the same `top` and
            `embeddings`.
        progress: bool. Show a progress bar on stderr.
        engine, precision, cache_dir, keep_aspect_ratio: as in
            `predict_files`.

    Returns:
        A dict: `output`, `images` (inputs), `kept` (records kept from an
        earlier run), `written` (records this run wrote) and `failed`
        (records with an `error`, kept ones included).

    Raises:
        CaiTConfigError: `output` exists without `resume`, or its records do
            not continue these inputs or options; or as `predict_files`.

    Example:
    ```python
    summary = keras_cait.write_predictions("photos/", "results.jsonl",
                                           "cait_xxs24_224", resume=True)
    ```
    """
    check_batch_size(batch_size)
    engines.check_engine(engine, precision)
    output = os.fspath(output)
    paths = expand_image_paths(_as_list(inputs))
    check_output(output, resume)  # before the model loads
    predictor = make_predictor(
        model, top, embeddings, engine, precision, cache_dir, keep_aspect_ratio
    )
    return write_records(predictor, paths, output, batch_size, resume, progress)
