"""`keras-cait cache-weights`: fill the Hugging Face cache on an offline
machine, so that `from_preset` and `keras-cait predict` find the weights
with `HF_HUB_OFFLINE=1`.

Two sources, both copied from an online machine:

- a folder of downloaded files, e.g. from
  `hf download timm/cait_xxs24_224.fb_dist_in1k --local-dir DIR`
  (`config.json` and `model.safetensors`): `keras-cait cache-weights
  cait_xxs24_224 --from DIR` stores them as the snapshot of the preset's
  repo (`hf://` handles work too);
- a Hugging Face cache folder (`~/.cache/huggingface/hub`, holding
  `models--<owner>--<name>` folders): `keras-cait cache-weights --from DIR`
  merges every repo in it into this machine's cache.

Imports neither Keras nor `keras_cait` (it answers in well under a second).
The cache is `--cache-dir`, else `HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`, as `huggingface_hub` resolves it.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import tempfile

REQUIRED_FILES = ("config.json", "model.safetensors")
_COMMIT = re.compile(r"[0-9a-f]{40}")


class CacheWeightsError(ValueError):
    """A source folder or handle that cannot fill the cache; the message
    says what to do."""


def default_cache_dir():
    """The Hugging Face hub cache `huggingface_hub` would use."""
    if os.environ.get("HF_HUB_CACHE"):
        return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return pathlib.Path(home).expanduser() / "hub"


def repo_of(preset, presets_dir):
    """`(repo_id, revision)` of a preset name or an `hf://owner/name[@rev]`
    handle, read from the shipped preset JSON (no Keras import)."""
    if preset.startswith("hf://"):
        handle = preset[len("hf://"):]
    else:
        path = pathlib.Path(presets_dir) / f"{preset}.json"
        if not path.is_file():
            names = sorted(p.stem for p in pathlib.Path(presets_dir).glob("*.json"))
            raise CacheWeightsError(
                f"unknown preset {preset!r}; choose one of {', '.join(names)} "
                "(`keras-cait presets`) or give an hf://owner/name handle."
            )
        handle = json.loads(path.read_text(encoding="utf-8"))["weights"]["source"][len("hf://"):]
    repo_id, _, revision = handle.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CacheWeightsError(f"{preset!r} is not an hf://owner/name handle.")
    return repo_id, revision or None


def _check_source_files(directory):
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise CacheWeightsError(
                f"{directory} has no {name}: download the whole repo on an "
                "online machine (`hf download <repo> --local-dir DIR`) and copy DIR."
            )
    try:
        json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheWeightsError(
            f"{directory / 'config.json'} is not JSON ({error}); download it again."
        ) from error
    weights = directory / "model.safetensors"
    with open(weights, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = f.read(size) if 0 < size < 100_000_000 else b""
    try:
        json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = b""
    if not header:
        raise CacheWeightsError(
            f"{weights} is not a safetensors file (truncated or corrupt); "
            "download it again."
        )


def _check_architecture(directory, preset, presets_dir):
    """Refuses a preset name whose files are another variant's (timm's
    `config.json` names its `architecture`)."""
    if preset.startswith("hf://"):
        return
    expected = json.loads(
        (pathlib.Path(presets_dir) / f"{preset}.json").read_text(encoding="utf-8")
    ).get("architecture")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # _check_source_files reports it
    found = config.get("architecture") if isinstance(config, dict) else None
    if expected and found and found != expected:
        raise CacheWeightsError(
            f"{directory / 'config.json'} is for {found!r}, not {expected!r}: "
            "name the preset the files belong to, or download that preset's repo."
        )


def _commit_of(directory, revision):
    """The commit the files came from: the revision when it is a commit id,
    else the one `hf download --local-dir` records, else a digest of the
    files (stable: caching the same files twice gives one snapshot)."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    metadata = directory / ".cache" / "huggingface" / "download" / "config.json.metadata"
    if metadata.is_file():
        first = metadata.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip()
        if _COMMIT.fullmatch(first):
            return first
    digest = hashlib.sha1()
    for name in REQUIRED_FILES:
        with open(directory / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _write_ref(repo_folder, ref, commit):
    refs = repo_folder / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=refs, delete=False) as f:
        f.write(commit)  # no newline: huggingface_hub reads it as is
    os.replace(f.name, refs / ref)


def cache_files(directory, repo_id, revision, cache_dir):
    """Stores the files of `directory` as a snapshot of `repo_id`.

    Returns:
        dict: `repo_id`, `commit`, `files` (names), `snapshot` (path).
    """
    directory = pathlib.Path(directory)
    _check_source_files(directory)
    commit = _commit_of(directory, revision)
    repo_folder = pathlib.Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_folder / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    files = sorted(
        p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".staging-", dir=snapshots))
    try:
        for name in files:
            shutil.copyfile(directory / name, staging / name)
        target = snapshots / commit
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ref = revision if revision and not _COMMIT.fullmatch(revision) else "main"
    _write_ref(repo_folder, ref, commit)
    return {"repo_id": repo_id, "commit": commit, "files": files, "snapshot": str(target)}


def merge_cache(directory, cache_dir):
    """Copies every `models--*` repo of a Hugging Face cache folder into
    `cache_dir` (blobs, snapshots and refs; links kept).

    Returns:
        list of the repo ids copied.
    """
    directory = pathlib.Path(directory)
    repos = sorted(p for p in directory.glob("models--*") if p.is_dir())
    if not repos:
        raise CacheWeightsError(
            f"{directory} holds neither config.json + model.safetensors nor a "
            "Hugging Face cache (models--<owner>--<name> folders): copy the "
            "folder `hf download <repo> --local-dir DIR` wrote, or "
            "~/.cache/huggingface/hub, from the online machine."
        )
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for repo in repos:
        shutil.copytree(repo, cache_dir / repo.name, symlinks=True, dirs_exist_ok=True)
        copied.append(repo.name[len("models--"):].replace("--", "/", 1))
    return copied


def cache_weights(source, preset=None, cache_dir=None, presets_dir=None):
    """Fills the Hugging Face cache from `source`; returns a one-line report.

    Args:
        source: folder of downloaded files (needs `preset`) or a copied
            Hugging Face cache folder.
        preset: `None`, a preset name or an `hf://owner/name[@revision]`.
        cache_dir: the cache to fill; `None` for `default_cache_dir()`.
        presets_dir: the shipped preset JSON folder (for preset names).

    Raises:
        CacheWeightsError: the source or the preset cannot be used.
        OSError: the cache cannot be written.
    """
    source = pathlib.Path(source).expanduser()
    if not source.is_dir():
        what = "is a file" if source.exists() else "does not exist"
        raise CacheWeightsError(
            f"--from {source} {what}; give the folder of downloaded files or a "
            "copied Hugging Face cache folder."
        )
    cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if (source / "config.json").exists() or (source / "model.safetensors").exists():
        if preset is None:
            raise CacheWeightsError(
                f"{source} holds a repo's files: name the preset they belong to, "
                f"e.g. `keras-cait cache-weights cait_xxs24_224 --from {source}`."
            )
        repo_id, revision = repo_of(preset, presets_dir)
        _check_architecture(source, preset, presets_dir)
        info = cache_files(source, repo_id, revision, cache_dir)
        return (
            f"cached hf://{repo_id} ({', '.join(info['files'])}) in {cache_dir}; "
            "offline, set HF_HUB_OFFLINE=1"
            + ("" if os.environ.get("HF_HUB_CACHE") == str(cache_dir) else f" HF_HUB_CACHE={cache_dir}")
        )
    copied = merge_cache(source, cache_dir)
    return f"cached {', '.join('hf://' + r for r in copied)} in {cache_dir}"
