"""Small file helpers: JSON objects, SHA-256 and atomic writes."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile

from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def read_json(path, source=None):
    """Reads a JSON object from a file, naming the file in errors.

    Args:
        path: path of the `.json` file.
        source: string quoted in errors instead of `path` (e.g. the handle
            the file was downloaded for).

    Returns:
        The parsed dict.

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTConfigError: it is not UTF-8 JSON, or not a JSON object.
    """
    source = source or path
    if not os.path.isfile(path):
        raise CaiTFileNotFoundError(f"{source}: '{os.path.basename(path)}' is missing.")
    with open(path, "rb") as f:
        return parse_json_object(f.read(), source)


def parse_json_object(data, source):
    """`data` (UTF-8 bytes or a string) parsed as a JSON object.

    Raises:
        CaiTConfigError: naming `source`: not UTF-8 JSON, nested too deeply,
            or not a JSON object.
    """
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaiTConfigError(f"{source} is not valid JSON ({e}).") from None
    except RecursionError:
        raise CaiTConfigError(f"{source}: the JSON is nested too deeply.") from None
    if not isinstance(value, dict):
        raise CaiTConfigError(
            f"{source}: expected a JSON object, got {type(value).__name__}."
        )
    return value



def sha256_file(path, chunk_size=1 << 22):
    """The SHA-256 hex digest of a file, read in chunks.

    Example:
    ```python
    sha256_file("model.safetensors")  # '3f0a...'
    ```
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_path(path):
    """Yields a temporary path next to `path`, to write a file or folder
    into; when the block ends without an error it is renamed to `path`
    (replacing what was there), otherwise removed. Readers of `path` never
    see a half-written result.

    Example:
    ```python
    with staged_path("out/model.onnx") as temporary:
        write_onnx(temporary)
    ```
    """
    target = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        staged = os.path.join(staging, os.path.basename(target))
        yield staged
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
