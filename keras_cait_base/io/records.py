"""Prediction records in JSON Lines or CSV: appended as a run goes, read
back to resume it.

A record is a dict. One that succeeded:
`{"image": path, "predictions": [{"label", "class_id", "probability"}, ...]}`
(best first; `"embedding": [float, ...]` too when asked for). One that
failed: `{"image": path, "error": reason}`. In a `.jsonl` file each record
is one line of JSON; in a `.csv` file one row under the header
`image,error,class_id_1,label_1,probability_1,...[,embedding]` (an empty
`label_k` is `null`; the embedding is one cell of space-separated floats).
Floats are written with Python's `repr`, so both formats read back to the
same records.

A record is complete when its line ends with a newline; an interrupted
writer leaves at most one incomplete line, the last, which `RecordWriter`
drops when it resumes.
"""

import csv
import io
import json
import os

from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError

RECORD_FORMATS = (".jsonl", ".csv")
_ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def record_format(path):
    """The format of a records file from its extension: `".jsonl"` or
    `".csv"`.

    Raises:
        CaiTConfigError: another extension.
    """
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in RECORD_FORMATS:
        raise CaiTConfigError(
            f"Output '{path}': expected a .jsonl or .csv file name, got "
            f"{extension or 'no extension'!r}."
        )
    return extension


def check_output(path, resume):
    """Checks, before a run starts, that it may write records to `path`.

    Raises:
        CaiTConfigError: the extension is not `.jsonl` or `.csv`, or the
            file exists and `resume` is false (a finished or interrupted
            run is never overwritten).
    """
    record_format(path)
    if os.path.exists(path) and not resume:
        raise CaiTConfigError(
            f"Output '{path}' already exists: pass --resume (resume=True) to "
            "continue it, or remove it."
        )


def csv_columns(top, embeddings):
    """The CSV header for `top` classes per record (and the embedding)."""
    columns = ["image", "error"]
    for rank in range(1, top + 1):
        columns += [f"class_id_{rank}", f"label_{rank}", f"probability_{rank}"]
    return columns + (["embedding"] if embeddings else [])


def _csv_row(record, columns):
    row = dict.fromkeys(columns, "")
    row["image"] = record["image"]
    if "error" in record:
        row["error"] = record["error"]
        return [row[c] for c in columns]
    for rank, prediction in enumerate(record["predictions"], 1):
        row[f"class_id_{rank}"] = str(prediction["class_id"])
        row[f"label_{rank}"] = prediction["label"] or ""
        row[f"probability_{rank}"] = repr(prediction["probability"])
    if "embedding" in record:
        row["embedding"] = " ".join(repr(float(v)) for v in record["embedding"])
    return [row[c] for c in columns]


def _csv_record(row, columns):
    cells = dict(zip(columns, row))
    if cells["error"]:
        return {"image": cells["image"], "error": cells["error"]}
    predictions, rank = [], 1
    while cells.get(f"class_id_{rank}"):
        predictions.append(
            {
                "label": cells[f"label_{rank}"] or None,
                "class_id": int(cells[f"class_id_{rank}"]),
                "probability": float(cells[f"probability_{rank}"]),
            }
        )
        rank += 1
    record = {"image": cells["image"], "predictions": predictions}
    if "embedding" in cells:
        record["embedding"] = [float(v) for v in cells["embedding"].split()]
    return record


def _lines(handle):
    """`(line, end offset)` for each complete line (ending with a newline)
    of a binary file; a last line without a newline is not returned."""
    offset = 0
    for line in handle:
        if not line.endswith(b"\n"):
            return
        offset += len(line)
        yield line.decode(**_ENCODING), offset


def iter_records(path):
    """Yields `(record, end_offset)` for each complete record of a records
    file, in order; `end_offset` is the byte offset just after it. An
    incomplete last line is skipped.

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTConfigError: a complete line is not a record (not JSON, or a
            CSV row of the wrong width or under another header).
    """
    path = os.fspath(path)
    extension = record_format(path)
    if not os.path.isfile(path):
        raise CaiTFileNotFoundError(f"Records file '{path}' not found.")
    with open(path, "rb") as handle:
        lines = _lines(handle)
        if extension == ".jsonl":
            for number, (line, offset) in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CaiTConfigError(
                        f"'{path}', line {number}: not a JSON record ({error})."
                    ) from None
                if not isinstance(record, dict) or "image" not in record or not (
                    "error" in record or isinstance(record.get("predictions"), list)
                ):
                    raise CaiTConfigError(
                        f"'{path}', line {number}: not a record (a JSON object "
                        "with 'image', and 'predictions' or 'error')."
                    )
                yield record, offset
            return
        state = {}
        reader = csv.reader(_offsets(lines, state))
        columns = next(reader, None)
        if columns is not None and columns[:2] != ["image", "error"]:
            raise CaiTConfigError(
                f"'{path}': not a records CSV (its header starts with "
                f"{columns[:2]}, expected ['image', 'error'])."
            )
        for row in _csv_rows(reader, path):
            if len(row) != len(columns):
                raise CaiTConfigError(
                    f"'{path}', line {reader.line_num}: {len(row)} cells "
                    f"under a header of {len(columns)}."
                )
            yield _csv_record(row, columns), state["offset"]


def _csv_rows(reader, path):
    try:
        yield from reader
    except csv.Error as error:
        raise CaiTConfigError(
            f"'{path}', line {reader.line_num}: not a CSV row ({error})."
        ) from None


def _offsets(lines, state):
    """Passes lines on to `csv.reader`, noting the end offset of the last
    line read in `state["offset"]`."""
    for line, offset in lines:
        state["offset"] = offset
        yield line


def read_records(path):
    """The complete records of a `.jsonl` or `.csv` records file, in order
    (an incomplete last line is left out).

    Args:
        path: str or path-like, a file written by `write_predictions` or
            `keras-cait predict --output`.

    Returns:
        A list of record dicts (see this module's docstring).

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTConfigError: a line is not a record.

    Example:
    ```python
    records = keras_cait.read_records("results.jsonl")
    failed = [r["image"] for r in records if "error" in r]
    ```
    """
    return [record for record, _ in iter_records(path)]


def _csv_line(cells):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


class RecordWriter:
    """Appends records to a `.jsonl` or `.csv` file, one line (row) per
    record, flushed after each `write()`.

    Without `resume` the file must not exist. With `resume` an existing
    file's complete records are kept (`kept` counts them; `kept_failures`
    those with an `error`), its incomplete last line is cut off, and new
    records are appended after them.

    Args:
        path: str or path-like ending in `.jsonl` or `.csv`.
        top: int. Predictions per record (the CSV header has `top` groups).
        embeddings: bool. Whether records carry an `"embedding"`.
        resume: bool. Continue an existing file.
        expected_images: `None` or the sequence of image paths the file is
            for, in order: kept records must be its first ones.

    Raises:
        CaiTConfigError: the path has another extension; the file exists
            and `resume` is false; a kept record is not the expected image,
            or was written with another `top` or `embeddings`.

    Example:
    ```python
    with RecordWriter("results.jsonl", top=5, embeddings=False) as writer:
        writer.write(records)
    ```
    """

    def __init__(self, path, top, embeddings, resume=False, expected_images=None):
        self.path = os.fspath(path)
        self.format = record_format(self.path)
        self.columns = csv_columns(top, embeddings)
        self.top = top
        self.embeddings = embeddings
        self.kept = 0
        self.kept_failures = 0
        self._handle = None
        check_output(self.path, resume)
        self._end = self._scan(expected_images) if os.path.exists(self.path) else 0

    def _scan(self, expected_images):
        end = 0
        if self.format == ".csv":
            with open(self.path, "rb") as handle:
                first = handle.readline()
            if first.endswith(b"\n"):
                header = next(csv.reader([first.decode(**_ENCODING)]))
                if header != self.columns:
                    self._mismatch(f"its columns are {header}, expected {self.columns}")
                end = len(first)
        for index, (record, offset) in enumerate(iter_records(self.path)):
            if expected_images is not None and (
                index >= len(expected_images) or record["image"] != expected_images[index]
            ):
                expected = (
                    repr(expected_images[index]) if index < len(expected_images)
                    else "no more inputs"
                )
                raise CaiTConfigError(
                    f"Cannot resume '{self.path}': its record {index + 1} is for "
                    f"{record['image']!r}, expected {expected}. It was written "
                    "for other inputs (or another order)."
                )
            if "error" in record:
                self.kept_failures += 1
            elif len(record["predictions"]) != self.top or (
                "embedding" in record
            ) != self.embeddings:
                self._mismatch(
                    f"record {index + 1} has {len(record['predictions'])} "
                    f"predictions{' and an embedding' if 'embedding' in record else ''}"
                )
            self.kept += 1
            end = offset
        return end

    def _mismatch(self, detail):
        raise CaiTConfigError(
            f"Cannot resume '{self.path}': it was written with other options "
            f"({detail}; this run writes {self.top} predictions per record"
            f"{' and embeddings' if self.embeddings else ''}). Use the same "
            "--top and --embeddings."
        )

    def __enter__(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(self.path):
            self._handle = open(self.path, "r+b")
            self._handle.truncate(self._end)
            self._handle.seek(self._end)
        else:
            self._handle = open(self.path, "xb")
        if self._end == 0 and self.format == ".csv":
            self._append(_csv_line(self.columns))
        return self

    def _append(self, text):
        self._handle.write(text.encode(**_ENCODING))
        self._handle.flush()

    def write(self, records):
        """Appends records (dicts) and flushes them to the file."""
        if self.format == ".jsonl":
            text = "".join(json.dumps(record) + "\n" for record in records)
        else:
            text = "".join(_csv_line(_csv_row(r, self.columns)) for r in records)
        self._append(text)

    def __exit__(self, *exc_info):
        self._handle.close()
        self._handle = None
