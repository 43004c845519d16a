"""The cache of converted weights.

Converting a timm checkpoint (reading it, checking every tensor against the
model, transposing to Keras layouts) happens once per source file; the
Keras-layout arrays are then kept under the Keras cache directory:

    <root>/<repo>/<key>/weights.safetensors   Keras-layout arrays, by timm key
    <root>/<repo>/<key>/meta.json             what they were made from

`<root>` is `$KERAS_CAIT_CACHE` if set, else `$KERAS_HOME/keras_cait/converted`
(`~/.keras/keras_cait/converted` by default). `<key>` hashes the repo id, the
revision, the source file's size and sha256 and the cache format. Both files
are written to a temporary file in the same folder and moved into place with
`os.replace`, under a file lock, so readers never see half a file;
`meta.json` is written last. An entry is used only if `meta.json` matches the
source exactly (repo, revision, size, sha256, keras-cait version) and the
weights file has the size and sha256 recorded there and holds finite float32
tensors; anything else is rebuilt.

Everything streams, one tensor at a time, so memory never holds a second
copy of the weights: `store` takes a `TensorStream` (the shapes up front,
then one tensor at a time), writes the safetensors header first and then
each tensor as it is produced, hashing as it writes; `open` checks an entry
in one pass and returns it as an open `keras_cait.io.safetensors_io.SafetensorsReader`
that the loader reads and assigns one tensor at a time. A conversion that
fails midway (a NaN tensor, a truncated source) leaves no entry and no
temporary file.
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile

import filelock

from keras_cait.errors import CaiTError
from keras_cait.io.files import sha256_file, staged_path
from keras_cait.io.safetensors_io import (
    Float32SafetensorsWriter,
    SafetensorsReader,
)
from keras_cait.version import __version__

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
_LOCK_TIMEOUT_S = 1800


def cache_root():
    """The folder holding converted weights (see the module docstring)."""
    root = os.environ.get("KERAS_CAIT_CACHE")
    if root:
        return os.path.abspath(os.path.expanduser(root))
    base = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    if not os.access(base, os.W_OK) and not os.access(
        os.path.dirname(base) or ".", os.W_OK
    ):
        # As keras.utils.get_file does for an unwritable home.
        base = os.path.join(tempfile.gettempdir(), ".keras")
    return os.path.join(base, "keras_cait", "converted")


@dataclasses.dataclass(frozen=True)
class SourceIdentity:
    """What a converted entry is made from.

    Attributes:
        repo_id: the Hub repo id, or `"local:<absolute directory>"`.
        revision: the requested revision (`None` means `main`).
        commit: the resolved commit id, if known (recorded, not keyed).
        filename: the source file's name in the repo.
        size: the source file's size in bytes.
        sha256: the source file's sha256 hex digest.
    """

    repo_id: str
    revision: str
    commit: str
    filename: str
    size: int
    sha256: str

    @classmethod
    def of_file(cls, path, repo_id, revision=None, commit=None):
        """Describes a local source file (hashing it)."""
        return cls(
            repo_id=repo_id,
            revision=revision,
            commit=commit,
            filename=os.path.basename(path),
            size=os.path.getsize(path),
            sha256=sha256_file(path),
        )

    def key_fields(self):
        return dict(
            format_version=FORMAT_VERSION,
            repo_id=self.repo_id,
            revision=self.revision or "main",
            filename=self.filename,
            source_size=self.size,
            source_sha256=self.sha256,
            keras_cait_version=__version__,
        )


class TensorStream:
    """Keras-layout float32 tensors for `ConversionCache.store`, produced one
    at a time while the cache file is written.

    Args:
        shapes: dict of timm key to Keras-layout shape (known up front: the
            cache file's header is written before any tensor).
        produce: callable taking a key and returning that tensor (an array
            of that shape); called once per key, in the file's order.
        close: `None` or a callable run when writing ends (for example to
            close the source file), whether it succeeded or not.
    """

    def __init__(self, shapes, produce, close=None):
        self.shapes = {key: tuple(shape) for key, shape in shapes.items()}
        self.produce = produce
        self._close = close

    def close(self):
        if self._close is not None:
            self._close()
            self._close = None


class ConversionCache:
    """Converted Keras-layout weights, keyed by their source file.

    Args:
        root: `None` (see `cache_root()`) or a folder.
    """

    def __init__(self, root=None):
        self.root = root or cache_root()

    def entry_dir(self, identity):
        """The folder of the entry for `identity`."""
        fields = json.dumps(identity.key_fields(), sort_keys=True)
        key = hashlib.sha256(fields.encode()).hexdigest()[:32]
        repo = re.sub(r"[^A-Za-z0-9._-]+", "--", identity.repo_id).strip("-")[-120:]
        return os.path.join(self.root, repo or "repo", key)

    def _read_meta(self, directory, identity):
        try:
            with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        for key, value in identity.key_fields().items():
            if meta.get(key) != value:
                return None
        return meta

    def open(self, identity):
        """The entry for `identity`, checked, as an open
        `keras_cait.io.safetensors_io.SafetensorsReader` (close it, or use it in a
        `with` block), or `None` if there is no valid entry (missing, stale,
        half-written or corrupt).

        The entry is checked in one pass over the open file, one tensor at a
        time: its size and sha256 against `meta.json`, its header, and that
        every tensor is finite float32. Tensors read later come from the
        same open file, so a concurrent rebuild cannot change them.
        """
        directory = self.entry_dir(identity)
        meta = self._read_meta(directory, identity)
        if meta is None:
            return None
        try:
            reader = SafetensorsReader(os.path.join(directory, WEIGHTS_FILE))
        except (CaiTError, OSError):
            return None
        try:
            valid = reader.size == meta.get("weights_size")
            if valid:
                digest = hashlib.sha256()
                for name, _ in reader.items(digest=digest):
                    if reader.dtype_code(name) != "F32":
                        valid = False
                        break
                valid = valid and digest.hexdigest() == meta.get("weights_sha256")
        except (CaiTError, OSError):
            valid = False
        if not valid:
            reader.close()
            return None
        return reader

    def store(self, identity, tensors):
        """Writes the entry for `identity`, one tensor at a time.

        The weights file's header is written first, then each tensor as it
        is produced, to a temporary file hashed as it is written and moved
        into place; `meta.json` is written last. If producing a tensor fails
        (a NaN in the source, a truncated file), the error propagates and no
        entry and no temporary file is left.

        Args:
            identity: the `SourceIdentity` the tensors are made from.
            tensors: a `TensorStream` of Keras-layout arrays by timm key
                (stored as float32).

        Returns:
            The entry's folder.
        """
        stream = tensors
        directory = self.entry_dir(identity)
        weights = os.path.join(directory, WEIGHTS_FILE)
        meta_path = os.path.join(directory, META_FILE)
        written = {}

        def write_weights(tmp):
            with open(tmp, "wb") as f:
                writer = Float32SafetensorsWriter(f, stream.shapes, path=weights)
                for key in writer.order:
                    writer.write(key, stream.produce(key))
                written["size"], written["sha256"] = writer.finish()

        try:
            os.makedirs(directory, exist_ok=True)
            # Invalidate the old entry first: a crash below leaves no meta.json.
            if os.path.exists(meta_path):
                os.remove(meta_path)
            with staged_path(weights) as temporary:
                write_weights(temporary)
        except BaseException:
            # Nothing of a failed conversion stays: no weights file, and
            # no folder if it is empty.
            if os.path.exists(weights):
                os.remove(weights)
            try:
                os.rmdir(directory)
            except OSError:
                pass
            raise
        finally:
            stream.close()
        meta = dict(
            identity.key_fields(),
            commit=identity.commit,
            weights_file=WEIGHTS_FILE,
            weights_size=written["size"],
            weights_sha256=written["sha256"],
        )

        def write_meta(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)

        with staged_path(meta_path) as temporary:
            write_meta(temporary)
        return directory

    def _locked(self, identity):
        directory = self.entry_dir(identity)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        return filelock.FileLock(directory + ".lock", timeout=_LOCK_TIMEOUT_S)

    def open_or_convert(self, identity, convert):
        """Returns `(reader, from_cache)`: the entry for `identity` as an open
        `SafetensorsReader` (see `open`), converting and storing it first if
        there is no valid entry. Conversion runs under a file lock, so two
        processes converting the same source do it once.

        Args:
            identity: a `SourceIdentity`.
            convert: callable returning a `TensorStream` for `store`.
        """
        reader = self.open(identity)
        if reader is not None:
            return reader, True
        with self._locked(identity):
            reader = self.open(identity)
            if reader is not None:
                return reader, True
            directory = self.store(identity, convert())
            # Written by this process under the lock: no second hashing pass.
            return SafetensorsReader(os.path.join(directory, WEIGHTS_FILE)), False
