"""The cache of exported inference artefacts: one folder per key, made once,
checked on every load.

A key is the SHA-256 of everything that changes an artefact's graph or its
numbers (`artifact_key`). An artefact is exported into a temporary folder
next to its final place, with a `manifest.json` listing each file's size
and SHA-256, then renamed into place: readers never see half an artefact.
Two processes making the same artefact take turns on a lock file (`fcntl`
where it exists); where it does not, the first rename wins and the other
process uses that artefact. An artefact whose files no longer match their
manifest (truncated, edited, half deleted) is exported again, with a
warning. A process hashes an artefact's files once: it checks them again only
when a file's size, modification time or inode has changed.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings

from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.files import sha256_file

MANIFEST = "manifest.json"
CACHE_ENV = "KERAS_CAIT_CACHE"
# `<cache>/sources/<key>.json`: the artefact made from a preset's files.
SOURCES = "sources"


class CorruptArtifactError(CaiTConfigError):
    """An artefact's files do not match its manifest."""


# `{folder: (files' stat signature, manifest)}` of artefacts hashed by this process.
_HASHED = {}


def _signature(folder, names):
    stats = [os.stat(os.path.join(folder, name)) for name in (MANIFEST, *sorted(names))]
    return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)


def default_cache_dir(override=None):
    """The artefact cache folder.

    Args:
        override: `None`, or a folder (str or path-like) that wins over the
            environment.

    Returns:
        str: `override`, else `$KERAS_CAIT_CACHE`, else
        `$XDG_CACHE_HOME/keras-cait/engines`, else
        `~/.cache/keras-cait/engines`.
    """
    if override is not None:
        return os.path.abspath(os.fspath(override))
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "keras-cait", "engines")


def artifact_key(fields):
    """The key of an artefact: the SHA-256 (hex) of `fields` as canonical
    JSON (sorted keys). `fields` is a JSON-serialisable dict."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_list(folder):
    names = []
    for root, _, files in os.walk(folder):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), folder)
            if relative != MANIFEST:
                names.append(relative.replace(os.sep, "/"))
    return sorted(names)


def verify_artifact(folder, key=None):
    """Checks an artefact folder against its manifest.

    Args:
        folder: str. The artefact folder.
        key: `None` or the key the folder must have been made for.

    Returns:
        The manifest (dict): `key`, `fields`, `files` (`{name: {"size",
        "sha256"}}`) and `metadata` (what the exporter returned).

    Raises:
        CorruptArtifactError: the manifest is missing or unreadable, its
            fields do not give its key, it is for another key, or a file is
            missing, has another size or another SHA-256; the message names
            the file.
    """
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptArtifactError(
            f"Artefact '{folder}': no readable {MANIFEST} ({error})."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("key") != artifact_key(manifest.get("fields")):
        raise CorruptArtifactError(
            f"Artefact '{folder}': its manifest's fields do not give its key "
            "(the manifest was edited)."
        )
    if key is not None and manifest.get("key") != key:
        raise CorruptArtifactError(
            f"Artefact '{folder}': its manifest is for key "
            f"{manifest.get('key')!r}, not {key!r}."
        )
    try:
        signature = _signature(folder, files)
    except OSError:  # a file missing: named below
        signature = None
    if signature is not None and _HASHED.get(folder) == (signature, manifest):
        return manifest
    for name, expected in files.items():
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise CorruptArtifactError(f"Artefact file '{file}' is missing.")
        size = os.path.getsize(file)
        if size != expected["size"]:
            raise CorruptArtifactError(
                f"Artefact file '{file}' has {size} bytes, its manifest says "
                f"{expected['size']}."
            )
        if sha256_file(file) != expected["sha256"]:
            raise CorruptArtifactError(
                f"Artefact file '{file}' does not match its SHA-256 in the manifest."
            )
    with contextlib.suppress(OSError):
        if _signature(folder, files) == signature:  # unchanged while hashing
            _HASHED[folder] = (signature, manifest)
    return manifest


@contextlib.contextmanager
def _lock(path):
    """An exclusive lock on `path` (created) while the block runs; nothing
    where `fcntl` does not exist (the rename then decides)."""
    try:
        import fcntl  # optional: POSIX only
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _share(path):
    """Gives `path` (and a folder's files) the modes of a file the user
    creates (`umask`), not the owner-only modes of `tempfile`'s: a cache
    shared by several users or Ray nodes stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    if os.path.isdir(path):
        os.chmod(path, 0o777 & ~umask)
        for name in _file_list(path):
            os.chmod(os.path.join(path, name), 0o666 & ~umask)
    else:
        os.chmod(path, 0o666 & ~umask)


def _remove(folder):
    """Moves `folder` aside (one rename), then deletes it."""
    aside = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(folder))
    try:
        os.rename(folder, os.path.join(aside, "artifact"))
    except FileNotFoundError:
        pass
    shutil.rmtree(aside, ignore_errors=True)


def _checked(folder, key):
    """The manifest of a valid artefact at `folder`, or `None` when there is
    none; a broken one is removed with a warning."""
    if not os.path.isdir(folder):
        return None
    try:
        return verify_artifact(folder, key)
    except CorruptArtifactError as error:
        warnings.warn(f"{error} Exporting it again.", stacklevel=4)
        _remove(folder)
        return None


def ensure_artifact(cache_dir, fields, export, source_fields=None):
    """The folder of the artefact for `fields`, exported by `export` when
    the cache has no valid one.

    Args:
        cache_dir: str. The cache folder (created).
        fields: JSON-serialisable dict, everything that changes the
            artefact (see `artifact_key`).
        export: callable `export(folder) -> metadata`: writes the artefact's
            files into the (empty, temporary) `folder` and returns a
            JSON-serialisable dict kept in the manifest as `"metadata"`.
        source_fields: `None`, or a dict describing the files the model
            was loaded from: recorded (`remember_source`) so that a later
            run finds the artefact without loading the model.

    Returns:
        `(folder, manifest)`: the artefact's folder and its verified
        manifest.

    Raises:
        Whatever `export` raises (nothing is left in the cache then).
    """
    os.makedirs(cache_dir, exist_ok=True)
    folder, manifest = _ensure(cache_dir, artifact_key(fields), fields, export)
    if source_fields is not None:
        try:
            remember_source(cache_dir, source_fields, manifest["key"])
        except OSError as error:  # a read-only cache still serves its artefacts
            warnings.warn(
                f"Artefact cache '{cache_dir}': could not record which preset "
                f"files made artefact {manifest['key'][:12]} ({error}); the next "
                "run loads the model again to find it.",
                stacklevel=2,
            )
    return folder, manifest


def _ensure(cache_dir, key, fields, export):
    folder = os.path.join(cache_dir, key)
    manifest = _checked(folder, key)
    if manifest is not None:
        return folder, manifest
    with _lock(os.path.join(cache_dir, f"{key}.lock")):
        manifest = _checked(folder, key)  # made while we waited
        if manifest is not None:
            return folder, manifest
        staging = tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir)
        try:
            metadata = export(staging)
            files = {
                name: {
                    "size": os.path.getsize(os.path.join(staging, name)),
                    "sha256": sha256_file(os.path.join(staging, name)),
                }
                for name in _file_list(staging)
            }
            manifest = {"key": key, "fields": fields, "files": files,
                        "metadata": metadata}
            with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
            _share(staging)
            try:
                os.rename(staging, folder)
            except OSError:
                # Another process (without a lock) renamed its copy first.
                existing = _checked(folder, key)
                if existing is None:
                    raise
                return folder, existing
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder, verify_artifact(folder, key)

def _source_path(cache_dir, source_fields):
    return os.path.join(cache_dir, SOURCES, f"{artifact_key(source_fields)}.json")


def remember_source(cache_dir, source_fields, key):
    """Records (atomically) that the artefact `key` was made from the
    model that `source_fields` describe (a preset's files, see
    `keras_cait_base.engines.preset_source_fields`)."""
    path = _source_path(cache_dir, source_fields)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump({"source": source_fields, "key": key}, f, sort_keys=True)
        _share(staging)
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(staging)
        raise


def artifact_of_source(cache_dir, source_fields):
    """`(folder, manifest)` of the valid artefact recorded for
    `source_fields` by `remember_source`, or `None` (nothing recorded, an
    unreadable record, or an artefact that no longer matches its manifest:
    the caller then loads the model and makes it again, with a warning)."""
    try:
        with open(_source_path(cache_dir, source_fields), encoding="utf-8") as f:
            record = json.load(f)
        if record["source"] != source_fields:
            return None
        folder = os.path.join(cache_dir, record["key"])
        return folder, verify_artifact(folder, record["key"])
    except (OSError, ValueError, KeyError, TypeError, CorruptArtifactError):
        return None
