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
`os.replace`, under a file lock, so readers never see half a file. An entry
is used only if `meta.json` matches the source exactly (repo, revision,
size, sha256, keras-cait version) and the weights file has the size and
sha256 recorded there; anything else is rebuilt.
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile

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


def file_sha256(path, chunk_size=1 << 22):
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


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
            sha256=file_sha256(path),
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


def _write_atomically(path, write):
    """Calls `write(tmp_path)` then moves the result to `path`."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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

    def _valid_meta(self, directory, identity):
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
        weights = os.path.join(directory, WEIGHTS_FILE)
        try:
            size = os.path.getsize(weights)
        except OSError:
            return None
        if size != meta.get("weights_size"):
            return None
        if file_sha256(weights) != meta.get("weights_sha256"):
            return None
        return meta

    def load(self, identity):
        """The cached arrays for `identity`, or `None` if there is no valid
        entry (missing, stale, half-written or corrupt)."""
        from keras_cait.errors import CaiTError
        from keras_cait.presets.timm_repo import read_state_dict

        directory = self.entry_dir(identity)
        if self._valid_meta(directory, identity) is None:
            return None
        try:
            return read_state_dict(os.path.join(directory, WEIGHTS_FILE))
        except (CaiTError, OSError):
            return None

    def store(self, identity, arrays):
        """Writes `arrays` ({timm key: Keras-layout array}) for `identity`."""
        from safetensors.numpy import save_file

        directory = self.entry_dir(identity)
        os.makedirs(directory, exist_ok=True)
        weights = os.path.join(directory, WEIGHTS_FILE)
        meta_path = os.path.join(directory, META_FILE)
        # Invalidate the old entry first: a crash below leaves no meta.json.
        if os.path.exists(meta_path):
            os.remove(meta_path)
        arrays = {key: value for key, value in arrays.items()}
        _write_atomically(weights, lambda tmp: save_file(arrays, tmp))
        meta = dict(
            identity.key_fields(),
            commit=identity.commit,
            weights_file=WEIGHTS_FILE,
            weights_size=os.path.getsize(weights),
            weights_sha256=file_sha256(weights),
        )

        def write_meta(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)

        _write_atomically(meta_path, write_meta)
        return directory

    def get_or_convert(self, identity, convert):
        """Returns `(arrays, from_cache)`: the cached arrays, or `convert()`'s
        result after storing it. Conversion runs under a file lock, so two
        processes converting the same source do it once."""
        import filelock

        arrays = self.load(identity)
        if arrays is not None:
            return arrays, True
        directory = self.entry_dir(identity)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        with filelock.FileLock(directory + ".lock", timeout=_LOCK_TIMEOUT_S):
            arrays = self.load(identity)
            if arrays is not None:
                return arrays, True
            arrays = convert()
            self.store(identity, arrays)
        return arrays, False
