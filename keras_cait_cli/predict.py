"""`keras-cait predict`: classify image files, folders, globs and lists
with a preset.

Imported by `keras_cait_cli.main` only when the command runs: this module
imports `keras_cait`, and with it Keras and a backend.
"""

import os
import pathlib
import sys

import keras

from keras_cait import load_image
from keras_cait.inference.batch_prediction import (
    BatchPredictor,
    load_classifier,
    make_predictor,
)
from keras_cait.inference.ray_prediction import write_predictions_on_ray
from keras_cait_base import artifact_cache
from keras_cait_base.engines import check_engine
from keras_cait_base.io.image_paths import expand_image_paths
from keras_cait_base.io.records import check_output
from keras_cait_cli.cached_predict import completed_summary, run_predictor


def _unique_stems(paths):
    stems, seen = [], {}
    for path in paths:
        stem = pathlib.Path(path).stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


class _AttentionPredictor(BatchPredictor):
    """Also saves each image's attention PNGs under `directory`."""

    def __init__(self, classifier, top, directory, paths):
        super().__init__(classifier, top, attention_maps=True)
        self.directory = directory
        self.stems = _unique_stems(paths)

    def records(self, batch, outputs):
        """The records of `BatchPredictor`, each with `"attention"`: the
        paths of the PNGs written for its image."""
        from keras_cait.explain import visualization  # optional dependency: matplotlib

        converter = self.converter
        records = super().records(batch, outputs)
        for offset, (path, error) in enumerate(zip(batch.paths, batch.errors)):
            if error is not None:
                continue
            picture = visualization.display_image(
                batch.images[offset], converter.mean, converter.std
            )
            written = visualization.save_attention_figures(
                {name: value[offset] for name, value in outputs.items()},
                self.directory,
                self.stems[batch.start + offset],
                picture,
                self.classifier.backbone.grid_size,
                original=load_image(path),
                crop_pct=converter.crop_pct,
                title=os.path.basename(path),
            )
            for figure_path in written:
                print(f"wrote {figure_path}", file=sys.stderr)
            records[offset]["attention"] = [str(f) for f in written]
        return records


def predict(args):
    """Runs `keras-cait predict` on parsed arguments.

    Returns:
        `(records, summary)`: without `--output`, the list of records and
        `None`; with it, `None` and the summary of
        `keras_cait_base.collection_runs.write_records` (the records are in the
        file). Records with an `error` are inputs that failed.
    """
    print(
        f"keras-cait: preset {args.preset}, backend {keras.config.backend()}"
        + ("" if args.engine == "keras" else f", engine {args.engine} ({args.precision})"),
        file=sys.stderr,
    )
    check_engine(args.engine, args.precision)  # before the model loads
    if args.engine != "keras":
        print(
            f"keras-cait: {args.engine} artefacts are kept in "
            f"{artifact_cache.default_cache_dir(args.cache_dir)} (a model's first "
            "run exports one: a minute or more; later runs reuse it)",
            file=sys.stderr,
        )
    done = args.resume and not args.ray and completed_summary(
        args.output, args.inputs, args.top, args.embeddings
    )
    if done:
        return None, done
    if args.ray:
        return None, write_predictions_on_ray(
            args.inputs, args.output, args.preset, args.top, args.batch_size,
            args.embeddings, args.resume, address=args.ray_address,
            actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
            engine=args.engine, precision=args.precision, cache_dir=args.cache_dir,
        )
    paths = expand_image_paths(args.inputs)
    if args.output:
        check_output(args.output, args.resume)  # before the model loads
    if args.attention:
        from keras_cait.explain import visualization  # optional dependency: matplotlib

        visualization.require_matplotlib()  # fail now, not after the model
    if args.attention:
        predictor = _AttentionPredictor(
            load_classifier(args.preset), args.top, args.attention, paths
        )
    else:  # with an engine, from the cache without the model when it can
        predictor = make_predictor(
            args.preset, args.top, args.embeddings, args.engine, args.precision,
            args.cache_dir, keep_aspect_ratio=args.keep_aspect,
        )
    return run_predictor(predictor, paths, args)
