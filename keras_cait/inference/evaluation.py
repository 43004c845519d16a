"""Top-1/top-5 accuracy of a classifier on a labelled folder (ImageFolder
layout), as timm's `validate.py` reports it, with a per-class table and a
confusion matrix."""

import csv
import io
import json
import os
import re
import time
import warnings

import keras
import numpy as np

# Private KerasHub table (index -> (WordNet id, name)); keras-hub is pinned
# in pyproject.toml.
from keras_hub.src.utils.imagenet.imagenet_utils import IMAGENET_NAMES

from keras_cait.explain import visualization
from keras_cait.inference.batch_prediction import make_predictor
from keras_cait_base import engines
from keras_cait_base.collection_runs import predict_batches
from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError
from keras_cait_base.io.files import read_json, staged_path
from keras_cait_base.io.image_paths import image_files_under
from keras_cait_base.schema import DEFAULT_BATCH_SIZE, check_batch_size

TOP_K = 5
# A confusion-matrix picture is drawn for at most this many classes.
MAX_CONFUSION_CLASSES = 50
_WORDNET_ID = re.compile(r"n\d{8}")
_IMAGENET_INDEX = {wnid: index for index, (wnid, _) in IMAGENET_NAMES.items()}


def read_label_map(path):
    """Reads a class map: class folder name -> class index.

    Args:
        path: a `.json` file holding an object `{"folder": index, ...}`, or
            a text file with one folder name per line, line `k` (from 0)
            naming class `k` (timm's `class_map` format; blank lines only
            advance the count).

    Returns:
        A dict `{folder name: int}`.

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTConfigError: malformed JSON or values that are not integers.
    """
    path = os.fspath(path)
    if path.lower().endswith(".json"):
        mapping = read_json(path)
        bad = [k for k, v in mapping.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise CaiTConfigError(
                f"Label map '{path}': class indices must be integers; "
                f"{bad[0]!r} maps to {mapping[bad[0]]!r}."
            )
        return mapping
    if not os.path.isfile(path):
        raise CaiTFileNotFoundError(f"Label map '{path}' not found.")
    with open(path, encoding="utf-8") as f:
        return {line.strip(): index for index, line in enumerate(f) if line.strip()}


def class_indices(folders, num_classes, label_map=None):
    """The class index of each class folder.

    Without a label map the folder names must all be ImageNet-1k WordNet ids
    (`n01440764`; KerasHub's `IMAGENET_NAMES`, for a 1000-class model) or
    all class indices (`0`, `1`, ...).

    Args:
        folders: list of folder names.
        num_classes: int. The classifier's number of classes.
        label_map: `None`, a dict `{folder: index}` or a path for
            `read_label_map`.

    Returns:
        A dict `{folder: index}`.

    Raises:
        CaiTConfigError: a folder that cannot be mapped, two folders of one
            class, or an index outside `[0, num_classes)`.
    """
    if label_map is not None:
        mapping = label_map if isinstance(label_map, dict) else read_label_map(label_map)
        missing = [folder for folder in folders if folder not in mapping]
        if missing:
            raise CaiTConfigError(
                f"The label map has no class for the folders {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}."
            )
        indices = {folder: mapping[folder] for folder in folders}
    elif all(_WORDNET_ID.fullmatch(folder) for folder in folders):
        if num_classes != len(IMAGENET_NAMES):
            raise CaiTConfigError(
                "The class folders are WordNet ids (ImageNet-1k), but the model "
                f"has {num_classes} classes; map them with a label map "
                "(--label-map FILE)."
            )
        unknown = [folder for folder in folders if folder not in _IMAGENET_INDEX]
        if unknown:
            raise CaiTConfigError(
                f"The class folders {unknown[:5]} are not ImageNet-1k WordNet ids."
            )
        indices = {folder: _IMAGENET_INDEX[folder] for folder in folders}
    elif all(folder.isdigit() for folder in folders):
        indices = {folder: int(folder) for folder in folders}
    else:
        raise CaiTConfigError(
            "Class folders must all be ImageNet WordNet ids (n01440764) or all "
            f"class indices (0, 1, ...), got {sorted(folders)[:5]}; map other "
            "names to class indices with a label map (--label-map FILE)."
        )
    by_index = {}
    for folder, index in indices.items():
        by_index.setdefault(index, []).append(folder)
    shared = [folders for folders in by_index.values() if len(folders) > 1]
    if shared:
        raise CaiTConfigError(
            f"The class folders {shared[0]} map to the same class "
            f"{indices[shared[0][0]]}; each class needs one folder."
        )
    outside = {f: i for f, i in indices.items() if not 0 <= i < num_classes}
    if outside:
        raise CaiTConfigError(
            f"Class indices outside the model's {num_classes} classes: {outside}."
        )
    return indices


def _class_folders(directory):
    if not os.path.isdir(directory):
        raise CaiTFileNotFoundError(f"Evaluation folder '{directory}' does not exist.")
    folders = sorted(
        entry.name for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not folders:
        raise CaiTConfigError(
            f"'{directory}' has no class folders: expected the ImageFolder "
            "layout DIR/<class>/<image>."
        )
    return folders


def _class_name(index, folder, num_classes):
    return IMAGENET_NAMES[index][1] if num_classes == len(IMAGENET_NAMES) else folder


def evaluate_folder(
    directory, model, output_dir=None, label_map=None,
    batch_size=DEFAULT_BATCH_SIZE, progress=False, engine="keras",
    precision="float32", cache_dir=None,
):
    """Top-1 and top-5 accuracy of a classifier on an ImageFolder layout.

    `directory` holds one folder per class, its images at any depth below
    (the image extensions Pillow reads). Images are read and preprocessed
    by the streamed pipeline of `predict_files`. An image that cannot be
    read is counted in `failed` and left out of the accuracy.

    Args:
        directory: str or path-like. The folder of class folders.
        model: a `CaiTImageClassifier` or a preset (name, directory,
            `hf://` handle).
        output_dir: `None`, or a folder (created) to write `summary.json`,
            `per_class.csv` and, with at most 50 classes and matplotlib
            installed, `confusion_matrix.png`, each atomically.
        label_map: `None` (folders are WordNet ids or class indices, see
            `class_indices`), a dict `{folder: index}`, or a file for
            `read_label_map`.
        batch_size: int. Images per forward pass.
        progress: bool. Show a progress bar on stderr.
        engine, precision, cache_dir: the inference engine, as in
            `keras_cait.predict_files`.

    Returns:
        The summary dict (also `summary.json`): `images`, `evaluated`,
        `failed`, `failures` (`[{"image", "error"}]`), `top1` and `top5`
        (percentages of the evaluated images, `None` when there are none;
        `top5` counts the `min(5, num_classes)` best classes), `top1_correct`,
        `top5_correct`, `engine`, `precision`, `seconds` and
        `images_per_second` (reading and
        prediction, after the model is loaded), `num_classes`, `classes` (one
        dict per class folder: `class_id`, `folder`, `label`, `images`,
        `failed`, `top1_correct`, `top5_correct`), `confusion_matrix`
        (`{"rows", "columns", "counts"}`: true class folders by top-1
        predicted class, plus an `"other"` column for classes without a
        folder; `None` above 50 classes) and `files` (what was written).

    Raises:
        CaiTFileNotFoundError: `directory` or the label map is missing.
        CaiTConfigError: no class folder, a folder that cannot be mapped to
            a class, or a model that cannot classify files.

    Example:
    ```python
    summary = keras_cait.evaluate_folder("imagenet/val", "cait_xxs24_224",
                                         output_dir="eval/")
    summary["top1"], summary["top5"]   # e.g. (78.4, 94.3)
    ```
    """
    check_batch_size(batch_size)
    engines.check_engine(engine, precision)
    directory = os.fspath(directory)
    folders = _class_folders(directory)
    if label_map is not None and not isinstance(label_map, dict):
        label_map = read_label_map(label_map)  # before the model loads
    predictor = make_predictor(
        model, TOP_K, engine=engine, precision=precision, cache_dir=cache_dir
    )
    num_classes = predictor.num_classes
    indices = class_indices(folders, num_classes, label_map)
    folders = sorted(folders, key=lambda folder: (indices[folder], folder))
    paths, targets = [], []
    for folder in folders:
        files = image_files_under(os.path.join(directory, folder))
        paths += files
        targets += [indices[folder]] * len(files)
    if not paths:
        raise CaiTConfigError(f"The class folders of '{directory}' hold no image files.")

    stats = {
        index: {"images": 0, "failed": 0, "top1_correct": 0, "top5_correct": 0}
        for index in indices.values()
    }
    predicted_top1, failures = [], []
    started = time.perf_counter()
    for batch, _, records in predict_batches(
        predictor, paths, batch_size, progress=progress
    ):
        for offset, record in enumerate(records):
            target = targets[batch.start + offset]
            row = stats[target]
            row["images"] += 1
            if "error" in record:
                row["failed"] += 1
                failures.append(record)
                predicted_top1.append(None)
                continue
            ranked = [p["class_id"] for p in record["predictions"]]
            row["top1_correct"] += ranked[0] == target
            row["top5_correct"] += target in ranked
            predicted_top1.append(ranked[0])
    seconds = time.perf_counter() - started

    evaluated = len(paths) - len(failures)
    top1 = sum(row["top1_correct"] for row in stats.values())
    top5 = sum(row["top5_correct"] for row in stats.values())
    summary = {
        "directory": directory,
        "model": (
            os.fspath(model) if isinstance(model, (str, os.PathLike))
            else model.name
        ),
        "backend": keras.config.backend(),
        "engine": engine,
        "precision": precision,
        "num_classes": num_classes,
        "images": len(paths),
        "evaluated": evaluated,
        "failed": len(failures),
        "top1": 100.0 * top1 / evaluated if evaluated else None,
        "top5": 100.0 * top5 / evaluated if evaluated else None,
        "top1_correct": top1,
        "top5_correct": top5,
        "seconds": seconds,
        "images_per_second": len(paths) / seconds if seconds > 0 else None,
        "classes": [
            {
                "class_id": indices[folder],
                "folder": folder,
                "label": _class_name(indices[folder], folder, num_classes),
                **stats[indices[folder]],
            }
            for folder in folders
        ],
        "confusion_matrix": None,
        "failures": failures,
        "files": [],
    }
    if len(folders) <= MAX_CONFUSION_CLASSES:
        summary["confusion_matrix"] = confusion_matrix(
            [indices[folder] for folder in folders],
            [_class_name(indices[f], f, num_classes) for f in folders],
            targets,
            predicted_top1,
        )
    if output_dir is not None:
        _write_results(summary, os.fspath(output_dir))
    return summary


def confusion_matrix(class_ids, labels, targets, predictions):
    """Counts of (true class, top-1 predicted class) over the evaluated
    images.

    Args:
        class_ids: the class indices of the rows (and first columns), in
            order.
        labels: their names.
        targets: per image, its true class index.
        predictions: per image, its top-1 class index, or `None` for an
            image that failed (not counted).

    Returns:
        `{"rows": labels, "columns": labels (+ "other"), "counts": list of
        lists of int}`; the `"other"` column counts predictions of classes
        without a row, and is there only when some were made.
    """
    position = {class_id: i for i, class_id in enumerate(class_ids)}
    counts = np.zeros((len(class_ids), len(class_ids) + 1), np.int64)
    for target, predicted in zip(targets, predictions):
        if predicted is not None:
            counts[position[target], position.get(predicted, len(class_ids))] += 1
    columns = list(labels)
    if counts[:, -1].any():
        columns.append("other")
    else:
        counts = counts[:, :-1]
    return {"rows": list(labels), "columns": columns, "counts": counts.tolist()}


def _per_class_csv(summary):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["class_id", "folder", "label", "images", "failed", "top1_correct",
         "top5_correct", "top1", "top5"]
    )
    for row in summary["classes"]:
        evaluated = row["images"] - row["failed"]
        writer.writerow(
            [row["class_id"], row["folder"], row["label"], row["images"],
             row["failed"], row["top1_correct"], row["top5_correct"],
             f"{100 * row['top1_correct'] / evaluated:.3f}" if evaluated else "",
             f"{100 * row['top5_correct'] / evaluated:.3f}" if evaluated else ""]
        )
    return buffer.getvalue()


def _write_results(summary, output_dir):
    """Writes the result files; lists them in `summary["files"]`."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    matrix = summary["confusion_matrix"]
    if matrix is not None:
        try:
            visualization.require_matplotlib("Drawing a confusion matrix")
        except CaiTConfigError as error:
            warnings.warn(f"No confusion_matrix.png: {error}", stacklevel=3)
        else:
            picture = os.path.join(output_dir, "confusion_matrix.png")
            visualization.save_confusion_matrix(
                matrix["counts"], matrix["rows"], matrix["columns"], picture,
                title=f"{summary['model']}: top-1 {summary['top1'] or 0:.2f}%",
            )
            written.append(picture)
    table = os.path.join(output_dir, "per_class.csv")
    with staged_path(table) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as f:
            f.write(_per_class_csv(summary))
    written.append(table)
    path = os.path.join(output_dir, "summary.json")
    summary["files"] = [path, *written]
    with staged_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


def format_summary(summary):
    """The summary as the lines `keras-cait evaluate` prints."""

    def percent(value):
        return "n/a" if value is None else f"{value:.3f}%"

    failed = f" ({summary['failed']} failed)" if summary["failed"] else ""
    speed = summary["images_per_second"]
    return "\n".join(
        [
            f"top-1   {percent(summary['top1'])}  "
            f"({summary['top1_correct']} of {summary['evaluated']})",
            f"top-{min(5, summary['num_classes'])}   {percent(summary['top5'])}  "
            f"({summary['top5_correct']} of {summary['evaluated']})",
            f"images  {summary['images']}{failed}",
            f"speed   {speed:.1f} images/s" if speed else "speed   n/a",
        ]
    )
