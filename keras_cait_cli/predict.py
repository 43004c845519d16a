"""`keras-cait predict`: classify image files with a preset.

Imported by `keras_cait_cli.main` only when the command runs: this module
imports `keras_cait`, and with it Keras and a backend.
"""

import os
import pathlib
import sys

import keras
import numpy as np
from huggingface_hub.utils import tqdm

from keras_cait import CaiTImageClassifier, load_image
from keras_cait.errors import CaiTConfigError, CaiTFileNotFoundError, CaiTImageError
from keras_cait.predictions import probabilities, top_predictions


def _check_image_paths(paths):
    """Fails early, before loading a model, for missing paths."""
    for path in paths:
        if not os.path.exists(path):
            raise CaiTFileNotFoundError(f"image file not found: '{path}'")
        if os.path.isdir(path):
            raise CaiTImageError(f"'{path}' is a directory, not an image file")


def _load_classifier(preset):
    classifier = CaiTImageClassifier.from_preset(preset)
    if not classifier.num_classes:
        raise CaiTConfigError(
            f"preset '{preset}' has no classification head (num_classes=0); "
            "it cannot classify images"
        )
    converter = getattr(classifier.preprocessor, "image_converter", None)
    if converter is None:
        raise CaiTConfigError(
            f"preset '{preset}' has no image converter; it cannot "
            "preprocess image files"
        )
    return classifier, converter


def _unique_stems(paths):
    stems, seen = [], {}
    for path in paths:
        stem = pathlib.Path(path).stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


def predict(args):
    """Runs `keras-cait predict` on parsed arguments; returns the results
    (one dict per image: `image` and its top `predictions`)."""
    print(
        f"keras-cait: preset {args.preset}, backend {keras.config.backend()}",
        file=sys.stderr,
    )
    _check_image_paths(args.images)
    if args.attention:
        from keras_cait import visualization  # optional dependency: matplotlib

        visualization.require_matplotlib()  # fail now, not after the model
    classifier, converter = _load_classifier(args.preset)
    model = classifier.attention_model()
    grid_size = classifier.backbone.grid_size
    stems = _unique_stems(args.images)
    results = []
    many = len(args.images) > args.batch_size
    with tqdm(
        total=len(args.images), desc="classifying", unit="image",
        file=sys.stderr, disable=not many,
    ) as bar:
        for start in range(0, len(args.images), args.batch_size):
            paths = args.images[start : start + args.batch_size]
            originals = [load_image(path) for path in paths]
            inputs = np.stack([np.asarray(converter(image)) for image in originals])
            # A direct call: no compilation step (much faster than
            # `predict()` for the few images a command line gets).
            outputs = {
                name: keras.ops.convert_to_numpy(value)
                for name, value in model(inputs, training=False).items()
            }
            scores = probabilities(outputs["predictions"], classifier.activation)
            for offset, (path, top) in enumerate(
                zip(paths, top_predictions(scores, args.top))
            ):
                results.append({"image": path, "predictions": top})
                if args.attention:
                    _save_attention(
                        args.attention,
                        stems[start + offset],
                        path,
                        {k: v[offset] for k, v in outputs.items()},
                        inputs[offset],
                        originals[offset],
                        converter,
                        grid_size,
                    )
            bar.update(len(paths))
    return results


def _save_attention(directory, stem, path, maps, model_input, original, converter, grid_size):
    from keras_cait import visualization  # optional dependency: matplotlib

    picture = visualization.display_image(model_input, converter.mean, converter.std)
    paths = visualization.save_attention_figures(
        maps,
        directory,
        stem,
        picture,
        grid_size,
        original=original,
        crop_pct=converter.crop_pct,
        title=os.path.basename(path),
    )
    for written in paths:
        print(f"wrote {written}", file=sys.stderr)


def format_table(results):
    """The results as the text table `keras-cait predict` prints."""
    lines = []
    for result in results:
        lines.append(result["image"])
        for rank, prediction in enumerate(result["predictions"], 1):
            label = prediction["label"]
            name = label if label is not None else f"class {prediction['class_id']}"
            lines.append(
                f"  {rank}. {name:<30} {prediction['probability'] * 100:6.2f}%"
                f"  (class {prediction['class_id']})"
            )
    return "\n".join(lines)
