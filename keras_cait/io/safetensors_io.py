"""Validated reading of safetensors files.

`read_safetensors` parses the safetensors header itself and checks every
claim it makes against the file before any tensor memory is allocated: the
header length, its JSON, each tensor's dtype, shape and byte range, that the
ranges tile the data section exactly (no gaps, overlaps or trailing bytes),
and optionally the file's SHA-256. Tensor data is then read with NumPy
(`readinto`, never memory-mapped). Every failure is a keras-cait exception
that names the file and the problem.

`SafetensorsReader` does the same one tensor at a time (memory: the largest
tensor, not the file), and `Float32SafetensorsWriter` writes a file one
tensor at a time, header first; the preset loader streams conversions
through both.

The format (https://github.com/huggingface/safetensors): 8 bytes, a
little-endian unsigned 64-bit header length `n`; `n` bytes of UTF-8 JSON
mapping tensor names to `{"dtype", "shape", "data_offsets"}` (plus an
optional `"__metadata__"` object of strings); then the data section, whose
offsets are relative to its start.
"""

import hashlib
import json
import math
import os
import struct
import warnings

import ml_dtypes
import numpy as np

from keras_cait.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTIntegrityError,
    CaiTWeightsError,
)
from keras_cait.io.files import SHA256_PATTERN, sha256_file

# safetensors dtype codes -> little-endian NumPy dtypes.
SAFETENSORS_DTYPES = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

# The safetensors library refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000
_HEADER_LENGTH_BYTES = 8
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_CHUNK = 1 << 20


def _fail(path, message):
    return CaiTWeightsError(f"{path}: {message}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_sha256(expected_sha256, source="expected_sha256"):
    """Returns a SHA-256 hex digest in lower case, or raises.

    Args:
        expected_sha256: string of 64 hexadecimal digits (any case; an
            optional `"sha256:"` prefix is accepted).
        source: string naming where the digest comes from, quoted in errors.

    Raises:
        CaiTConfigError: the value is not a SHA-256 hex digest.
    """
    if not isinstance(expected_sha256, str):
        raise CaiTConfigError(
            f"{source}: a SHA-256 digest must be a string of 64 hexadecimal "
            f"digits, got {type(expected_sha256).__name__}."
        )
    digest = expected_sha256.strip().lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:"):]
    if not SHA256_PATTERN.fullmatch(digest):
        raise CaiTConfigError(
            f"{source}: {expected_sha256!r} is not a SHA-256 digest (64 "
            "hexadecimal digits)."
        )
    return digest


def verify_sha256(path, expected_sha256):
    """Checks that a file's SHA-256 digest is `expected_sha256`.

    Args:
        path: path of the file.
        expected_sha256: string, the expected hex digest.

    Raises:
        CaiTConfigError: `expected_sha256` is not a SHA-256 digest.
        CaiTFileNotFoundError: the file does not exist.
        CaiTIntegrityError: the digests differ (the file was modified,
            truncated or corrupted).

    Example:
    ```python
    keras_cait.io.safetensors_io.verify_sha256("model.safetensors", "3f0a...")
    ```
    """
    expected = normalize_sha256(expected_sha256, source=f"{path}: expected_sha256")
    _check_is_file(path)
    actual = _open_error_guard(path, sha256_file)
    if actual != expected:
        raise CaiTIntegrityError(
            f"{path}: SHA-256 mismatch: the file's digest is {actual}, "
            f"expected {expected}. The file was modified, truncated or "
            "corrupted; delete it and download it again."
        )


def _check_is_file(path):
    if not os.path.exists(path):
        raise CaiTFileNotFoundError(f"{path}: no such file.")
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file (a directory?).")


def _open_error_guard(path, function):
    try:
        return function(path)
    except OSError as error:
        raise _fail(path, f"cannot be read: {error}.") from error


def _parse_json_object(path, raw):
    def no_duplicates(pairs):
        result = {}
        for key, value in pairs:
            if key in result:
                raise _fail(path, f"the header names {key!r} twice.")
            result[key] = value
        return result

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _fail(
            path, f"the header is not UTF-8 text ({error}); not a safetensors file."
        ) from None
    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise _fail(
            path,
            f"the header is not valid JSON ({error.msg} at character "
            f"{error.pos}); not a safetensors file, or a corrupt one.",
        ) from None
    except RecursionError:
        raise _fail(path, "the header JSON is nested too deeply.") from None
    if not isinstance(header, dict):
        raise _fail(
            path, f"the header must be a JSON object, got {type(header).__name__}."
        )
    return header


def _check_metadata(path, metadata):
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "`__metadata__` must be an object of strings to strings.")


def _check_entry(path, name, entry, data_size):
    """Validates one header entry; returns `(dtype_code, shape, begin, end)`."""
    if not name:
        raise _fail(path, "a tensor has an empty name.")
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise _fail(
            path,
            f"tensor {name!r}: the header entry must have exactly the keys "
            f"{sorted(_ENTRY_KEYS)}, got {keys}.",
        )
    code = entry["dtype"]
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise _fail(
            path,
            f"tensor {name!r}: unsupported dtype {code!r}; expected one of "
            f"{sorted(SAFETENSORS_DTYPES)}.",
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(
            path,
            f"tensor {name!r}: `shape` must be a list of non-negative integers, "
            f"got {shape!r}.",
        )
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _fail(
            path,
            f"tensor {name!r}: `data_offsets` must be [begin, end] with "
            f"0 <= begin <= end, got {offsets!r}.",
        )
    begin, end = offsets
    expected_bytes = math.prod(shape) * SAFETENSORS_DTYPES[code].itemsize
    if end - begin != expected_bytes:
        raise _fail(
            path,
            f"tensor {name!r}: the header lies about its size: shape {shape} "
            f"of {code} needs {expected_bytes} bytes, but `data_offsets` "
            f"{offsets} span {end - begin}.",
        )
    if end > data_size:
        raise _fail(
            path,
            f"tensor {name!r}: `data_offsets` {offsets} end past the data "
            f"section ({data_size} bytes); the file is truncated or its "
            "header is wrong.",
        )
    return code, tuple(shape), begin, end


def read_safetensors_header(path):
    """Reads and validates a safetensors header without reading tensor data.

    Args:
        path: path of a `.safetensors` file.

    Returns:
        A tuple `(entries, metadata, data_start)`: `entries` maps each tensor
        name to `(dtype_code, shape, begin, end)` (byte offsets relative to
        `data_start`), `metadata` is the `__metadata__` dict (or `{}`).

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTWeightsError: the file is empty, truncated, not a safetensors
            file, or its header is inconsistent with itself or the file size.

    Example:
    ```python
    entries, metadata, _ = keras_cait.io.safetensors_io.read_safetensors_header(
        "model.safetensors"
    )
    ```
    """
    path = os.fspath(path)
    _check_is_file(path)

    def read(p):
        with open(p, "rb") as f:
            entries, metadata, data_start, _ = _read_header(path, f)
        return entries, metadata, data_start

    return _open_error_guard(path, read)


def _read_header(path, f):
    """Validates the header of the open file `f` (read from its start);
    returns `(entries, metadata, data_start, raw_header_bytes)`."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes); expected a safetensors file.")
    if size < _HEADER_LENGTH_BYTES:
        raise _fail(
            path,
            f"the file is truncated: {size} bytes, shorter than the 8-byte "
            "header length of a safetensors file.",
        )
    f.seek(0)
    prefix = f.read(_HEADER_LENGTH_BYTES)
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise _fail(
            path,
            f"the header claims {length} bytes, more than the "
            f"{MAX_HEADER_BYTES}-byte limit; not a safetensors file.",
        )
    if length > size - _HEADER_LENGTH_BYTES:
        raise _fail(
            path,
            f"the header claims {length} bytes but only "
            f"{size - _HEADER_LENGTH_BYTES} follow; the file is "
            "truncated or not a safetensors file.",
        )
    raw = f.read(length)
    header = _parse_json_object(path, raw)
    data_start = _HEADER_LENGTH_BYTES + len(raw)
    data_size = size - data_start
    metadata = header.pop("__metadata__", {})
    _check_metadata(path, metadata)
    entries = {
        name: _check_entry(path, name, entry, data_size)
        for name, entry in header.items()
    }
    # The byte ranges must tile the data section: no gaps, no overlaps and
    # no trailing bytes that no tensor accounts for.
    position = 0
    for name, (_, _, begin, end) in sorted(
        entries.items(), key=lambda item: (item[1][2], item[1][3])
    ):
        if begin < position:
            raise _fail(
                path,
                f"tensor {name!r}: bytes [{begin}, {end}) overlap another "
                "tensor's.",
            )
        if begin > position:
            raise _fail(
                path,
                f"tensor {name!r} starts at byte {begin} of the data section, "
                f"leaving bytes [{position}, {begin}) unaccounted for.",
            )
        position = end
    if position != data_size:
        raise _fail(
            path,
            f"{data_size - position} trailing bytes after the last tensor are "
            "not described by the header; the file is corrupt or was "
            "modified.",
        )
    return entries, metadata, data_start, prefix + raw


def _read_raw(path, f, name, entry, data_start):
    """Reads one tensor's bytes into a new array of its file dtype."""
    code, shape, begin, end = entry
    array = np.empty(shape, dtype=SAFETENSORS_DTYPES[code])
    f.seek(data_start + begin)
    view = memoryview(array.reshape(-1).view(np.uint8))
    if f.readinto(view) != end - begin:
        raise _fail(path, f"tensor {name!r}: the file ended early.")
    return array


def _finalize(path, name, code, array, allow_non_finite):
    if code == "F64":
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32)
        overflow = np.isfinite(array) & ~np.isfinite(converted)
        if overflow.any():
            raise _fail(
                path,
                f"tensor {name!r} is float64 with values beyond the float32 "
                "range; it cannot be converted.",
            )
        warnings.warn(
            f"{path}: tensor {name!r} is float64; converted to float32.",
            stacklevel=4,
        )
        array = converted
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if code in FLOAT_DTYPES and not allow_non_finite:
        finite = np.isfinite(array)
        if not finite.all():
            count = int(finite.size - np.count_nonzero(finite))
            raise _fail(
                path,
                f"tensor {name!r} holds {count} NaN or Inf values; pass "
                "`allow_non_finite=True` to load it anyway.",
            )
    return array


class SafetensorsReader:
    """A validated safetensors file, read one tensor at a time.

    The header is read and checked completely when the reader is created
    (as by `read_safetensors_header`) and the file stays open, so every
    tensor comes from the file that was checked even if the path is
    replaced meanwhile. Each tensor read is checked the way
    `read_safetensors` checks it (float64 to float32, NaN/Inf), so the
    memory in use is the size of one tensor, not of the file. Nothing is
    memory-mapped.

    Args:
        path: path of a `.safetensors` file.
        allow_non_finite: bool. Accept floating-point tensors holding NaN or
            Inf (refused by default).

    Attributes:
        entries: dict of tensor name to `(dtype_code, shape, begin, end)`,
            as `read_safetensors_header` returns it.
        metadata: the header's `__metadata__` dict (or `{}`).
        size: the open file's size in bytes.

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTWeightsError: the file is empty, truncated, not a safetensors
            file, or its header is inconsistent with itself or the file size.

    Example:
    ```python
    with keras_cait.io.safetensors_io.SafetensorsReader("model.safetensors") as reader:
        for name, array in reader.items():
            print(name, array.shape)
    ```
    """

    def __init__(self, path, allow_non_finite=False):
        self.path = os.fspath(path)
        self.allow_non_finite = allow_non_finite
        _check_is_file(self.path)
        self._file = _open_error_guard(self.path, lambda p: open(p, "rb"))
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            (
                self.entries,
                self.metadata,
                self.data_start,
                self._header_bytes,
            ) = _open_error_guard(self.path, lambda p: _read_header(p, self._file))
        except BaseException:
            self._file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Closes the file."""
        self._file.close()

    @property
    def closed(self):
        return self._file.closed

    def names(self):
        """Tensor names in the order of their data in the file."""
        return [
            name
            for name, _ in sorted(
                self.entries.items(), key=lambda item: (item[1][2], item[1][3])
            )
        ]

    def __contains__(self, name):
        return name in self.entries

    def __len__(self):
        return len(self.entries)

    def dtype_code(self, name):
        """The safetensors dtype code (`"F32"`, `"BF16"`, ...) of a tensor."""
        return self.entries[name][0]

    def shape(self, name):
        """The shape of a tensor, as a tuple, from the header."""
        return self.entries[name][1]

    def _raw(self, name):
        return _open_error_guard(
            self.path,
            lambda p: _read_raw(
                p, self._file, name, self.entries[name], self.data_start
            ),
        )

    def read(self, name):
        """Reads and checks one tensor.

        Args:
            name: string, the tensor's name.

        Returns:
            A NumPy array: `F64` tensors are converted to float32 with a
            warning (an error if a value does not fit in float32), `BF16`
            tensors are `ml_dtypes.bfloat16` arrays.

        Raises:
            KeyError: no tensor has that name.
            CaiTWeightsError: the file cannot be read or ended early, or the
                tensor holds NaN/Inf (unless `allow_non_finite`).
        """
        code = self.entries[name][0]
        return _finalize(self.path, name, code, self._raw(name), self.allow_non_finite)

    def __getitem__(self, name):
        return self.read(name)

    def items(self, digest=None):
        """Yields `(name, array)` for every tensor in file order, reading
        one tensor at a time (each checked as by `read`).

        Args:
            digest: `None` or a `hashlib` object. It is fed every byte of
                the file in order (the header, then each tensor's bytes as
                they are read), so after the last tensor it holds the whole
                file's digest.
        """
        if digest is not None:
            digest.update(self._header_bytes)
        for name in self.names():
            code = self.entries[name][0]
            raw = self._raw(name)
            if digest is not None:
                digest.update(memoryview(raw.reshape(-1).view(np.uint8)))
            yield name, _finalize(self.path, name, code, raw, self.allow_non_finite)


def read_safetensors(path, expected_sha256=None, allow_non_finite=False):
    """Reads a safetensors file into NumPy arrays, validating everything.

    Nothing is allocated for the tensors until the header has been checked
    against the file size, so a file that lies about its sizes cannot
    trigger a large allocation.

    Args:
        path: path of a `.safetensors` file.
        expected_sha256: `None` or the file's SHA-256 hex digest. When given,
            the file is hashed (streaming) before anything else is read, and
            a mismatch raises `CaiTIntegrityError`.
        allow_non_finite: bool. Accept floating-point tensors holding NaN or
            Inf (refused by default).

    Returns:
        A dict mapping each tensor name to a NumPy array. `F64` tensors are
        converted to float32 with a warning (an error if a value does not
        fit in float32); `BF16` tensors are `ml_dtypes.bfloat16` arrays.

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTIntegrityError: the SHA-256 digest differs from `expected_sha256`.
        CaiTConfigError: `expected_sha256` is not a SHA-256 digest.
        CaiTWeightsError: the file is empty, truncated, random bytes, its
            header is invalid or inconsistent, a dtype is unsupported, or a
            tensor holds NaN/Inf (unless `allow_non_finite`).

    Example:
    ```python
    from keras_cait.io.safetensors_io import read_safetensors
    state_dict = read_safetensors("model.safetensors")
    keras_cait.load_timm_state_dict(classifier, state_dict)
    ```
    """
    path = os.fspath(path)
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    with SafetensorsReader(path, allow_non_finite=allow_non_finite) as reader:
        # Header order, as before (the dict's insertion order).
        return {name: reader.read(name) for name in reader.entries}


class Float32SafetensorsWriter:
    """Writes a float32 safetensors file one tensor at a time.

    The header (every name, shape and byte range) is written first, from the
    shapes given up front; then each tensor's bytes are written as they are
    produced, so only one tensor needs to be in memory. The file's SHA-256
    is computed while writing. The bytes are those `safetensors.numpy.save_file`
    writes for the same float32 arrays (tensors sorted by name, the header
    padded with spaces to a multiple of 8 bytes), so `safetensors` and
    `read_safetensors` read it back.

    Args:
        file: a binary file object opened for writing, positioned at 0.
        shapes: mapping of tensor name to shape.
        path: string naming the file in errors.

    Raises:
        CaiTWeightsError: (from `write`/`finish`) a tensor comes out of
            order, with another shape, not finite-sized, or one is missing.

    Example:
    ```python
    shapes = {"a": (2, 3), "b": (4,)}
    with open("out.safetensors", "wb") as f:
        writer = Float32SafetensorsWriter(f, shapes)
        for name in writer.order:
            writer.write(name, np.zeros(shapes[name], "float32"))
        size, sha256 = writer.finish()
    ```
    """

    def __init__(self, file, shapes, path="safetensors file"):
        self.path = path
        self._file = file
        self.order = sorted(shapes)
        self.shapes = {name: tuple(int(d) for d in shapes[name]) for name in self.order}
        header = {}
        position = 0
        for name in self.order:
            size = math.prod(self.shapes[name]) * 4
            header[name] = {
                "dtype": "F32",
                "shape": list(self.shapes[name]),
                "data_offsets": [position, position + size],
            }
            position += size
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        raw += b" " * (-len(raw) % _HEADER_LENGTH_BYTES)
        self._digest = hashlib.sha256()
        self._size = 0
        self._next = 0
        self._put(struct.pack("<Q", len(raw)) + raw)

    def _put(self, data):
        self._file.write(data)
        self._digest.update(data)
        self._size += len(data)

    def write(self, name, array):
        """Writes the next tensor (in `order`) as little-endian float32."""
        if self._next >= len(self.order) or self.order[self._next] != name:
            expected = (
                self.order[self._next] if self._next < len(self.order) else "none"
            )
            raise _fail(
                self.path,
                f"tensor {name!r} written out of order; the next tensor is "
                f"{expected!r}.",
            )
        array = np.asarray(array, dtype="<f4", order="C")
        if tuple(array.shape) != self.shapes[name]:
            raise _fail(
                self.path,
                f"tensor {name!r} has shape {tuple(array.shape)}; the header "
                f"says {self.shapes[name]}.",
            )
        self._put(memoryview(array.reshape(-1).view(np.uint8)))
        self._next += 1

    def finish(self):
        """Checks every tensor was written and flushes.

        Returns:
            `(size_in_bytes, sha256_hex_digest)` of the file written.
        """
        if self._next != len(self.order):
            raise _fail(
                self.path,
                f"only {self._next} of {len(self.order)} tensors were written.",
            )
        self._file.flush()
        return self._size, self._digest.hexdigest()
