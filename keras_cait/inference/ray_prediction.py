"""Predictions on image collections with Ray Data: the paths become a Ray
Dataset, `map_batches` runs `RayBatchPredictor` actors (each loads the model
once, on the backend chosen for the run), and the driver writes the records
to one `.jsonl` or `.csv` file, in input order, as they arrive.

The records are those of `keras_cait.write_predictions` (same formats, same
error records, same order); Ray is an optional dependency:
`pip install "keras-cait[ray]"`.
"""

import json
import os

import keras

from keras_cait.inference.batch_prediction import (
    BatchPredictor,
    load_classifier,
    make_predictor,
)
from keras_cait.inference.image_pipeline import converter_image_batches
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait.models.cait_image_converter import CaiTImageConverter
from keras_cait_base import engines
from keras_cait_base.collection_runs import RecordsActor, write_record_stream
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.image_paths import expand_image_paths
from keras_cait_base.io.records import check_output
from keras_cait_base.pillow_pipeline import pillow_supports
from keras_cait_base.schema import DEFAULT_BATCH_SIZE, check_batch_size


def _import_ray():
    try:
        import ray  # optional dependency: keras-cait[ray]
        import ray.data  # optional dependency: keras-cait[ray]
    except ImportError:
        raise CaiTConfigError(
            'Predictions on Ray need Ray Data: pip install "ray[data]" '
            '(from a clone of keras-cait: pip install -e ".[ray]").'
        ) from None
    return ray


class RayBatchPredictor(RecordsActor):
    """`RecordsActor` that loads a classifier once per actor: the Keras
    engine, or an engine whose converter the Pillow pipeline cannot run
    (the artefact then reads images through the converter's `tf.data`
    pipeline). An engine run with the Pillow pipeline uses
    `keras_cait_base.engines.EngineRecordsActor`, which imports no Keras.

    Args:
        model: str. A preset (name, directory or `hf://` handle) the actor
            loads with `CaiTImageClassifier.from_preset` (through the
            Hugging Face cache of its node).
        top: int. Predictions per record.
        embeddings: bool. Add each image's pooled features.
        batch_size, directory: as `RecordsActor`.
        engine: `"keras"`, or the engine running `artifact`.
        precision: as in `keras_cait.predict_files`.
        artifact: `None`, or (with an engine other than `"keras"`) the
            folder of the artefact the driver made
            (`artifact_export.make_artifact`).
    """

    def __init__(self, model, top, embeddings, batch_size, directory=None,
                 engine="keras", precision="float32", artifact=None):
        super().__init__(batch_size, directory)
        if engine == "keras":
            self.predictor = BatchPredictor(load_classifier(model), top, embeddings)
            return
        converter = CaiTImageConverter.from_preset(model)
        self.predictor = engines.EnginePredictor(
            artifact, engine, top, embeddings, precision,
            image_batches=converter_image_batches(converter),
        )


def write_predictions_on_ray(
    inputs, output, model, top=5, batch_size=DEFAULT_BATCH_SIZE,
    embeddings=False, resume=False, backend=None, address=None, actors=1,
    gpus_per_actor=0, progress=True, engine="keras", precision="float32",
    cache_dir=None,
):
    """`keras_cait.write_predictions` on Ray Data: the model runs in Ray
    actors (on this machine, or on the nodes of a cluster), the records
    come back to this process, which writes them to `output` in input order
    as they arrive.

    Uses the Ray runtime this process is connected to (`ray.init()` called
    before); else connects to `address`; else starts a local Ray, shut down
    at the end. Paths are sent to the actors, not pixels: every node must
    see the files at the same paths (a shared file system).

    Args:
        inputs: as in `write_predictions` (expanded here, on the driver).
        output: str or path-like ending in `.jsonl` or `.csv`.
        model: str or path-like. A preset name, directory or `hf://` handle,
            loaded once per actor (a directory must exist at that path on
            every node).
        top, batch_size, embeddings: as in `write_predictions`;
            `batch_size` is also the size of Ray's batches.
        resume: bool. Continue `output`: its complete records are kept
            (checked as in `write_predictions`) and only the images after
            them go to Ray.
        backend: `"tensorflow"`, `"jax"`, `"torch"` or `None` (this
            process's Keras backend): the actors' `KERAS_BACKEND`.
        address: `None` or the address of a running Ray cluster
            (`"auto"`, `"ray://head:10001"`, `"head:6379"`), when this
            process is not connected yet.
        actors: int. Model replicas (Ray actors, each with one CPU).
        gpus_per_actor: float. GPUs reserved per actor (`0`: none).
        progress: bool. Show a progress bar on stderr.
        engine, precision, cache_dir: as in `write_predictions`. With an
            engine other than `"keras"`, this process exports the artefact
            once (or finds it in the cache) and every actor runs it; the
            cache folder must be at the same path on every node (a shared
            file system, as for the images).

    Returns:
        The summary dict of `write_predictions`: `output`, `images`,
        `kept`, `written` and `failed`.

    Raises:
        CaiTConfigError: Ray is not installed; `model` is not a preset; a
            bad argument; or as `write_predictions`.

    Example:
    ```python
    summary = keras_cait.write_predictions_on_ray(
        "/shared/photos/", "results.jsonl", "cait_xxs24_224",
        address="auto", actors=8, gpus_per_actor=1, backend="jax")
    ```
    """
    check_batch_size(batch_size)
    engines.check_engine(engine, precision)
    if not isinstance(model, (str, os.PathLike)):
        raise CaiTConfigError(
            "On Ray, `model` must be a preset name, directory or hf:// handle "
            f"(each actor loads it), got {type(model).__name__}."
        )
    for name, value, minimum in (("actors", actors, 1), ("gpus_per_actor", gpus_per_actor, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise CaiTConfigError(f"`{name}` must be a number >= {minimum}, got {value!r}.")
    if not isinstance(actors, int):
        raise CaiTConfigError(f"`actors` must be an integer, got {actors!r}.")
    model = os.fspath(model)
    output = os.fspath(output)
    paths = expand_image_paths([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
    check_output(output, resume)  # before Ray starts
    ray = _import_ray()
    backend = backend or keras.backend.backend()
    # The configuration only (no weights), to check the preset and size
    # the records before any actor starts; with an engine, the whole model,
    # to make the artefact once, here.
    actor = RayBatchPredictor, dict(model=model, engine=engine, precision=precision)
    if engine != "keras":  # the artefact, made once here
        predictor = make_predictor(model, top, embeddings, engine, precision, cache_dir)
        top = predictor.top
        actor[1]["artifact"] = predictor.artifact
        if pillow_supports(predictor.converter_config):  # actors without Keras
            actor = engines.EngineRecordsActor, dict(
                artifact=predictor.artifact, engine=engine, precision=precision)
        del predictor
    else:  # the configuration only, to check the preset and `top`
        described = load_classifier(
            CaiTImageClassifier.from_preset(model, load_weights=False)
        )
        top = BatchPredictor(described, top, embeddings).top
        del described

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        return write_record_stream(
            output, paths, top, embeddings, resume, progress,
            lambda kept: _ray_records(
                ray, paths[kept:], actor[0], dict(actor[1], top=top, embeddings=embeddings),
                batch_size, backend, actors, gpus_per_actor,
            ),
        )
    finally:
        if started:
            ray.shutdown()


def _ray_records(ray, paths, actor_class, actor_kwargs, batch_size, backend, actors,
                 gpus_per_actor):
    """The records of `paths` from Ray Data actors of `actor_class` (a
    `RecordsActor`, made with `actor_kwargs`), in order, one list per
    record (as they arrive)."""
    if not paths:
        return
    # Order kept (Ray Data's default gives up order for speed); the caller's
    # settings are restored at the end.
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        dataset = ray.data.from_items([{"image": path} for path in paths]).map_batches(
            actor_class,
            fn_constructor_kwargs=dict(
                actor_kwargs, batch_size=batch_size, directory=os.getcwd()
            ),
            batch_size=batch_size,
            concurrency=actors,
            num_cpus=1,
            num_gpus=gpus_per_actor or None,
            runtime_env={"env_vars": {"KERAS_BACKEND": backend}},
        )
        for row in dataset.iter_rows():
            yield [json.loads(row["record"])]
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
