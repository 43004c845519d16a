"""What every collection run shares, whatever runs the model: the batch of
images and how a file is read without stopping the run, the forward loop,
the progress bar, and the loop that writes and resumes a records file.
Imports no deep-learning framework."""

import contextlib
import dataclasses
import json
import os
import sys

import numpy as np
from huggingface_hub.utils import tqdm

from keras_cait_base.errors import CaiTConfigError, CaiTError
from keras_cait_base.io.images import load_image
from keras_cait_base.io.records import RecordWriter

# The model input of an unreadable file (its outputs are discarded): a
# single black pixel, which the converter resizes to the model's size.
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)
# Batches decoded ahead of the model: enough to overlap decoding with the
# forward pass, bounded so that memory stays flat on any collection.
PREFETCH_BATCHES = 2


@dataclasses.dataclass
class ImageBatch:
    """A batch of a collection run.

    Attributes:
        start: int. The index of the batch's first image in the run's paths.
        paths: list of str, the batch's image paths.
        images: float NumPy array `(len(paths), height, width, 3)`: the
            converter's outputs (the model inputs); a black placeholder for
            a file that failed. A list of arrays, one per image, for a
            converter whose outputs differ in size (`keep_aspect_ratio`).
        errors: list, per image `None` or the reason it could not be read
            (a one-line message naming the file).
    """

    start: int
    paths: list
    images: np.ndarray
    errors: list


def read_image(path):
    """Reads one image of a collection, never raising.

    Returns:
        `(image, None)`, image a uint8 `(height, width, 3)` array (as
        `load_image`), or, when the file cannot be read, `(placeholder,
        reason)`: any exception becomes a one-line reason (naming the file
        for `load_image`'s errors), so a run never stops on one file. A Ray
        `map_batches` worker or a benchmark reads files with it too.
    """
    try:
        return load_image(path), None
    except CaiTError as error:  # the file's problem, named by load_image
        return _PLACEHOLDER, " ".join(str(error).split())
    except Exception as error:  # anything else, too: one record, not a stop
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        return _PLACEHOLDER, f"Cannot read image '{path}': {reason}"


@contextlib.contextmanager
def progress_bar(total, initial=0, enabled=True, description="classifying"):
    """A tqdm bar on stderr counting images, with images/s and the ETA."""
    with tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=" images",
        file=sys.stderr,
        disable=not enabled,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
        "[{elapsed}<{remaining}, {rate_noinv_fmt}]",
    ) as bar:
        yield bar


def predict_batches(predictor, paths, batch_size, start=0, progress=False,
                    fixed_shape=False):
    """Runs `predictor` over `paths[start:]` through the streamed pipeline:
    the forward loop of every collection run (one process, Ray actors,
    evaluation, the command line).

    Args:
        fixed_shape: bool. Pad every batch to `batch_size`, even in a run of
            fewer paths (a Ray actor's calls then all have one shape).

    Yields:
        `(batch, outputs, records)` per batch, in order: the `ImageBatch`,
        the model's outputs (dict of NumPy arrays) and its records.
    """
    # One forward shape for the whole run (resumed or not): the last batch
    # is padded, a run shorter than `batch_size` is one batch.
    if not fixed_shape:
        batch_size = min(batch_size, len(paths))
    with progress_bar(len(paths), start, progress) as bar:
        for batch in predictor.image_batches(paths, batch_size, start):
            outputs = predictor.outputs(batch.images, batch_size)
            yield batch, outputs, predictor.records(batch, outputs)
            bar.update(len(batch.paths))


def write_records(predictor, paths, output, batch_size, resume=False, progress=True):
    """`write_predictions` with a `BatchPredictor` and expanded paths.

    Args:
        predictor: a `BatchPredictor`.
        paths: list of str image paths (see `expand_image_paths`).
        output, batch_size, resume, progress: as in `write_predictions`.

    Returns:
        The summary dict of `write_predictions`.
    """

    def produce(kept):
        # Restart at the batch the kept records end in: the batches are
        # those of an uninterrupted run.
        start = len(paths) if kept == len(paths) else kept - kept % batch_size
        for batch, _, records in predict_batches(predictor, paths, batch_size, start):
            yield records[max(0, kept - batch.start):]

    return write_record_stream(
        output, paths, predictor.top, predictor.embeddings, resume, progress, produce
    )


def write_record_stream(output, paths, top, embeddings, resume, progress, produce):
    """The records loop of every run that writes a records file, in one
    process (`write_records`) or on Ray (`write_predictions_on_ray`).

    Args:
        output, resume, progress: as in `write_predictions`.
        paths: list of str, the run's image paths.
        top, embeddings: the records' options (a resumed file must have
            the same).
        produce: a function of `kept` (the records kept from an earlier
            run) returning an iterator of lists of records: those of
            `paths[kept:]`, in order.

    Returns:
        The summary dict of `write_predictions`.

    Raises:
        CaiTConfigError: a record is not the next path's, or records are
            missing; or as `RecordWriter`.
    """
    summary = {"output": output, "images": len(paths), "kept": 0, "written": 0}
    with RecordWriter(output, top, embeddings, resume, expected_images=paths) as writer:
        summary["kept"] = writer.kept
        failed = writer.kept_failures
        remaining = paths[writer.kept:]
        with progress_bar(len(paths), writer.kept, progress) as bar:
            for records in produce(writer.kept):
                written = summary["written"]
                images = [record["image"] for record in records]
                expected = remaining[written : written + len(records)]
                if images != expected:
                    raise CaiTConfigError(
                        f"Got the records of {images[:2]!r:.200} where those of "
                        f"{expected[:2]!r:.200} were expected (records out of order)."
                    )
                writer.write(records)
                summary["written"] += len(records)
                failed += sum("error" in record for record in records)
                bar.update(len(records))
    if summary["written"] != len(remaining):
        raise CaiTConfigError(
            f"Got {summary['written']} records for {len(remaining)} images."
        )
    summary["failed"] = failed
    return summary


class RecordsActor:
    """The callable class of a Ray Data `map_batches` worker
    (`keras_cait.write_predictions_on_ray`): batches of image paths in,
    their records out. A subclass sets `self.predictor` (a `BatchPredictor`
    or an `EnginePredictor`) once per actor.

    Args:
        batch_size: int. Every forward pass is padded to this size (one
            compiled shape per actor).
        directory: `None` or the driver's working directory: the actor
            works there when its node has it, so that relative paths (and
            error messages naming them) are those of the driver.

    Input batches are dicts with an `"image"` column of str paths; output
    batches have a `"record"` column: each record as a line of JSON (Ray
    stores the strings as they are, so floats come back exactly).
    """

    predictor = None

    def __init__(self, batch_size, directory=None):
        if directory and os.path.isdir(directory):
            os.chdir(directory)
        self.batch_size = batch_size

    def __call__(self, batch):
        paths = [str(path) for path in batch["image"]]
        batches = predict_batches(self.predictor, paths, self.batch_size, fixed_shape=True)
        records = [record for _, _, records in batches for record in records]
        return {"record": np.array([json.dumps(record) for record in records], object)}
