"""`keras-cait predict` with an engine, from the artefact cache, without
Keras: when the preset's ONNX Runtime or OpenVINO artefact is already
cached (found from the preset's files, `keras_cait_base.engines`), the run
imports neither Keras nor KerasHub nor a backend, only the engine, Pillow
and NumPy. Otherwise `keras_cait_cli.predict` loads the model and makes
the artefact.
"""

import os
import sys

from keras_cait_base import artifact_cache, engines
from keras_cait_base.collection_runs import predict_batches, write_records
from keras_cait_base.io.image_paths import expand_image_paths
from keras_cait_base.io.records import RecordWriter, check_output


def runs_without_keras(args):
    """Whether these `predict` arguments can run from a cached artefact:
    an engine, without `--attention`, `--keep-aspect` or `--ray`."""
    return args.engine != "keras" and not (args.attention or args.keep_aspect or args.ray)


def predict_from_cache(args):
    """Runs `keras-cait predict` on the cached artefact of `args.preset`.

    Returns:
        `None` when the cache has no valid artefact for the preset's files
        (the caller loads the model), else `(records, summary)` as
        `keras_cait_cli.predict.predict`.
    """
    engines.check_engine(args.engine, args.precision)
    folder = engines.artifact_of_preset(args.preset, args.engine, args.cache_dir)
    if folder is None:
        return None
    print(
        f"keras-cait: preset {args.preset}, engine {args.engine} ({args.precision}), "
        f"its artefact cached in {artifact_cache.default_cache_dir(args.cache_dir)} "
        "(Keras is not loaded)",
        file=sys.stderr,
    )
    done = args.resume and completed_summary(
        args.output, args.inputs, args.top, args.embeddings
    )
    if done:
        return None, done
    paths = expand_image_paths(args.inputs)
    if args.output:
        check_output(args.output, args.resume)
    predictor = engines.EnginePredictor(
        folder, args.engine, args.top, args.embeddings, args.precision
    )
    return run_predictor(predictor, paths, args)


def run_predictor(predictor, paths, args):
    """`(records, summary)` of `keras-cait predict` with `predictor` (a
    `BatchPredictor` or an `EnginePredictor`) on `paths`: the records with
    no `--output`, else the summary of `write_records`."""
    progress = len(paths) > args.batch_size
    if args.output:
        summary = write_records(
            predictor, paths, args.output, args.batch_size, args.resume, progress
        )
        return None, summary
    batches = predict_batches(predictor, paths, args.batch_size, progress=progress)
    return [record for _, _, records in batches for record in records], None


def completed_summary(output, inputs, top, embeddings):
    """The summary of a `--resume` run with nothing left to do (`complete`,
    and `failed` counting the kept error records), when `output` already
    holds a record for every input; else `None` (the model is then needed).
    Records written with another `--top` or `--embeddings` are refused, as
    a resumed run refuses them."""
    if not os.path.exists(output):
        return None
    paths = list(expand_image_paths(inputs))
    writer = RecordWriter(output, top, embeddings, resume=True, expected_images=paths)
    if writer.kept != len(paths):
        return None
    return {"output": output, "images": len(paths), "kept": writer.kept, "written": 0,
            "failed": writer.kept_failures, "complete": True}


def format_table(records):
    """The records as the text table `keras-cait predict` prints."""
    lines = []
    for record in records:
        lines.append(record["image"])
        if "error" in record:
            lines.append(f"  error: {record['error']}")
            continue
        for rank, prediction in enumerate(record["predictions"], 1):
            label, class_id = prediction["label"], prediction["class_id"]
            name = f"class {class_id}" if label is None else label
            line = f"  {rank}. {name:<30} {prediction['probability'] * 100:6.2f}%"
            lines.append(line if label is None else f"{line}  (class {class_id})")
    return "\n".join(lines)
