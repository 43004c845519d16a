"""safetensors files, read through `safetensors.safe_open`, one tensor at a time.

The `safetensors` library parses and checks the file (header, dtypes,
shapes, byte ranges that tile the data exactly); this module turns its
errors into keras-cait errors naming the file (and the tensor where one is
at fault), and adds what it lacks: the SHA-256 check when a digest is known,
the refusal of NaN/Inf, float64 converted to float32, and bounded memory
(`safe_open` memory-maps the file, and every page read stays resident while
the file is open, so `SafetensorsFile` reopens it every 64 MB).
"""

import os
import re
import warnings

import ml_dtypes  # noqa: F401  safe_open(framework="np") reads BF16 once it is imported
import numpy as np
from safetensors import SafetensorError, safe_open

from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTIntegrityError,
    CaiTWeightsError,
)
from keras_cait_base.io.files import SHA256_PATTERN, sha256_file

# The safetensors dtypes read into NumPy, by NumPy name.
DTYPE_NAMES = dict(
    BOOL="bool", U8="uint8", I8="int8", U16="uint16", I16="int16", U32="uint32",
    I32="int32", U64="uint64", I64="int64", F16="float16", BF16="bfloat16",
    F32="float32", F64="float64",
)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

# Bytes read through one `safe_open` handle before it is reopened (the pages
# of its memory map are resident until then).
REOPEN_EVERY_BYTES = 64 << 20

# What the library's header errors mean, for the message.
_REASONS = (
    ("header too small", "the file is truncated"),
    ("invalid shape, data type, or offset", "the header lies about sizes: a tensor's shape and dtype disagree with its byte range"),
    ("invalid header length", "the header length is wrong: the file is truncated or not a safetensors file"),
    ("header too large", "the header is larger than the library's limit: not a safetensors file"),
    ("not fully covered", "the tensors do not cover the file: it is truncated or has extra bytes"),
    ("invalid UTF-8", "not a safetensors file"),
    ("invalid JSON", "not a safetensors file, or a corrupt one"),
)


def _fail(path, message):
    return CaiTWeightsError(f"{path}: {message}")


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
    digest = expected_sha256.strip().lower().removeprefix("sha256:")
    if not SHA256_PATTERN.fullmatch(digest):
        raise CaiTConfigError(
            f"{source}: {expected_sha256!r} is not a SHA-256 digest (64 "
            "hexadecimal digits)."
        )
    return digest


def verify_sha256(path, expected_sha256, expected_by="the caller"):
    """Checks that a file's SHA-256 digest is `expected_sha256`.

    Args:
        path: path of the file.
        expected_sha256: string, the expected hex digest.
        expected_by: string naming who expects it, quoted in errors (e.g.
            `"preset 'cait_xxs24_224'"`).

    Raises:
        CaiTConfigError: `expected_sha256` is not a SHA-256 digest.
        CaiTFileNotFoundError: the file does not exist.
        CaiTIntegrityError: the digests differ (the file was modified,
            truncated or corrupted).
    """
    expected = normalize_sha256(expected_sha256, source=f"{path}: expected_sha256")
    _check_is_file(path)
    try:
        actual = sha256_file(path)
    except OSError as error:
        raise _fail(path, f"cannot be read: {error}.") from error
    if actual != expected:
        raise CaiTIntegrityError(
            f"{path}: SHA-256 mismatch: the file's digest is {actual}, "
            f"{expected_by} expects {expected}. The file was modified, "
            "truncated or corrupted; delete it and download it again."
        )


def _check_is_file(path):
    if not os.path.exists(path):
        raise CaiTFileNotFoundError(f"{path}: no such file.")
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file (a directory?).")


def _library_error(path, error):
    message = str(error)
    reason = next((r for pattern, r in _REASONS if pattern in message), None)
    named = re.search(r"tensor `(.*)`", message)
    if named:
        reason = (
            f"tensor {named.group(1)!r}: its byte range overlaps another "
            "tensor's or leaves a gap"
        )
    detail = f"{reason} ({message})" if reason else message
    return _fail(path, f"not a valid safetensors file: {detail}.")


def checked_array(array, key, source, allow_non_finite=False):
    """Applies keras-cait's rules to one tensor read from a checkpoint.

    float64 is converted to float32 with a warning (an error if a value
    does not fit); NaN and Inf are refused unless `allow_non_finite`.

    Args:
        array: NumPy array.
        key: string, the tensor's name, quoted in messages.
        source: string naming the file or state dict, quoted in messages.
        allow_non_finite: bool.

    Returns:
        The array (float32 if it was float64).

    Raises:
        CaiTWeightsError: a float64 value beyond the float32 range, or
            NaN/Inf values (unless `allow_non_finite`).
    """
    if array.dtype == np.float64:
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32)
        if (np.isfinite(array) & ~np.isfinite(converted)).any():
            raise _fail(
                source,
                f"tensor {key!r} is float64 with values beyond the float32 "
                "range; it cannot be converted.",
            )
        warnings.warn(
            f"{source}: tensor {key!r} is float64; converted to float32.",
            stacklevel=3,
        )
        array = converted
    if array.dtype.name in FLOAT_DTYPES and not allow_non_finite:
        finite = np.isfinite(array)
        if not finite.all():
            count = int(finite.size - np.count_nonzero(finite))
            raise _fail(
                source,
                f"tensor {key!r} holds {count} NaN or Inf values; pass "
                "`allow_non_finite=True` to load it anyway.",
            )
    return array


class SafetensorsFile:
    """A safetensors file, read one tensor at a time with `safe_open` (a
    context manager).

    The file is opened (and its header checked by `safetensors`) when this
    object is created. Reading a tensor returns a new NumPy array checked by
    `checked_array`; the memory map is released every `REOPEN_EVERY_BYTES`.

    Args:
        path: path of a `.safetensors` file.
        allow_non_finite: bool. Accept floating-point tensors holding NaN or
            Inf (refused by default).

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTWeightsError: the file is not a valid safetensors file (empty,
            truncated, random bytes, a header inconsistent with itself or
            the file), or holds a dtype NumPy cannot read.
    """

    def __init__(self, path, allow_non_finite=False):
        self.path = os.fspath(path)
        self.allow_non_finite = allow_non_finite
        _check_is_file(self.path)
        if os.path.getsize(self.path) == 0:
            raise _fail(self.path, "the file is empty (0 bytes); expected a safetensors file.")
        self._handle = None
        self._open()
        self._keys = self._handle.offset_keys()
        self._dtypes = {}
        self._shapes = {}
        for key in self._keys:
            view = self._handle.get_slice(key)
            code = view.get_dtype()
            if code not in DTYPE_NAMES:
                self.close()
                raise _fail(
                    self.path,
                    f"tensor {key!r} has dtype {code}; keras-cait reads "
                    f"{sorted(DTYPE_NAMES)}.",
                )
            self._dtypes[key] = DTYPE_NAMES[code]
            self._shapes[key] = tuple(view.get_shape())
        self._since_open = 0

    def _open(self):
        try:
            self._handle = safe_open(self.path, framework="np")
        except SafetensorError as error:
            raise _library_error(self.path, error) from None
        except OSError as error:
            raise _fail(self.path, f"cannot be read: {error}.") from None

    def close(self):
        """Releases the file (and its memory map)."""
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def keys(self):
        """Tensor names, in the order of their data in the file."""
        return list(self._keys)

    def __contains__(self, key):
        return key in self._shapes

    def shape(self, key):
        """A tensor's shape (a tuple), from the header."""
        return self._shapes[key]

    def dtype(self, key):
        """A tensor's NumPy dtype name (`"float32"`, `"bfloat16"`, ...)."""
        return self._dtypes[key]

    def read(self, key):
        """Reads one tensor.

        Returns:
            A new NumPy array (`bfloat16` tensors as `ml_dtypes.bfloat16`,
            `float64` converted to float32, see `checked_array`).

        Raises:
            KeyError: no tensor has that name.
            CaiTWeightsError: the tensor holds NaN/Inf (unless
                `allow_non_finite`), or the file cannot be read.
        """
        if key not in self._shapes:
            raise KeyError(key)
        if self._since_open >= REOPEN_EVERY_BYTES:
            self.close()
            self._since_open = 0
        if self._handle is None:
            self._open()
        try:
            array = self._handle.get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise _fail(self.path, f"tensor {key!r} cannot be read: {error}.") from None
        self._since_open += array.nbytes
        return checked_array(array, key, self.path, self.allow_non_finite)


def read_safetensors(path, expected_sha256=None, allow_non_finite=False):
    """Reads a safetensors file into NumPy arrays.

    Args:
        path: path of a `.safetensors` file.
        expected_sha256: `None` or the file's SHA-256 hex digest. When given,
            the file is hashed before anything else is read, and a mismatch
            raises `CaiTIntegrityError`.
        allow_non_finite: bool. Accept floating-point tensors holding NaN or
            Inf (refused by default).

    Returns:
        A dict mapping each tensor name to a NumPy array, in file order
        (float64 converted to float32, BF16 as `ml_dtypes.bfloat16`).

    Raises:
        CaiTFileNotFoundError, CaiTIntegrityError, CaiTConfigError: as
            `verify_sha256`.
        CaiTWeightsError: as `SafetensorsFile`, or a tensor holds NaN/Inf
            (unless `allow_non_finite`).

    Example:
    ```python
    keras_cait.load_timm_state_dict(classifier, read_safetensors("model.safetensors"))
    ```
    """

    path = os.fspath(path)
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    with SafetensorsFile(path, allow_non_finite=allow_non_finite) as tensors:
        return {key: tensors.read(key) for key in tensors.keys()}
