"""Validated reading of safetensors files.

`read_safetensors` parses the safetensors header itself and checks every
claim it makes against the file before any tensor memory is allocated: the
header length, its JSON, each tensor's dtype, shape and byte range, that the
ranges tile the data section exactly (no gaps, overlaps or trailing bytes),
and optionally the file's SHA-256. Tensor data is then read with NumPy.
Every failure is a keras-cait exception that names the file and the problem.

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
import re
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
_SHA256 = re.compile(r"[0-9a-f]{64}")
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
    if not _SHA256.fullmatch(digest):
        raise CaiTConfigError(
            f"{source}: {expected_sha256!r} is not a SHA-256 digest (64 "
            "hexadecimal digits)."
        )
    return digest


def sha256_file(path):
    """The SHA-256 hex digest of a file, computed in 1 MiB chunks.

    Args:
        path: path of the file.

    Example:
    ```python
    keras_cait.safe_io.sha256_file("model.safetensors")  # '3f0a...'
    ```
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    keras_cait.safe_io.verify_sha256("model.safetensors", "3f0a...")
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
    entries, metadata, _ = keras_cait.safe_io.read_safetensors_header(
        "model.safetensors"
    )
    ```
    """
    _check_is_file(path)
    size = os.path.getsize(path)
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes); expected a safetensors file.")
    if size < _HEADER_LENGTH_BYTES:
        raise _fail(
            path,
            f"the file is truncated: {size} bytes, shorter than the 8-byte "
            "header length of a safetensors file.",
        )

    def read_header(p):
        with open(p, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(_HEADER_LENGTH_BYTES))
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
            return f.read(length)

    raw = _open_error_guard(path, read_header)
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
    return entries, metadata, data_start


def _read_tensors(path, entries, data_start):
    tensors = {}
    with open(path, "rb") as f:
        for name, (code, shape, begin, end) in entries.items():
            array = np.empty(shape, dtype=SAFETENSORS_DTYPES[code])
            f.seek(data_start + begin)
            view = memoryview(array.reshape(-1).view(np.uint8))
            if f.readinto(view) != end - begin:
                raise _fail(path, f"tensor {name!r}: the file ended early.")
            tensors[name] = array
    return tensors


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
    from keras_cait.safe_io import read_safetensors
    state_dict = read_safetensors("model.safetensors")
    keras_cait.load_timm_state_dict(classifier, state_dict)
    ```
    """
    path = os.fspath(path)
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    entries, _, data_start = read_safetensors_header(path)
    tensors = _open_error_guard(
        path, lambda p: _read_tensors(p, entries, data_start)
    )
    return {
        name: _finalize(path, name, entries[name][0], array, allow_non_finite)
        for name, array in tensors.items()
    }
