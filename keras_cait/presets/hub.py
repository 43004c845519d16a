"""Downloads from the Hugging Face Hub, through `huggingface_hub`.

Everything goes through `huggingface_hub` (its cache, token, offline mode
and progress bars); this module only turns its exceptions into keras-cait
errors that say which file is missing and what to do about it.
"""

import os
import pathlib

from keras_cait.errors import CaiTConfigError, CaiTFileNotFoundError


def _offline_advice(repo_id, revision, filenames):
    import huggingface_hub

    where = huggingface_hub.constants.HF_HUB_CACHE
    mode = (
        "offline mode is on (HF_HUB_OFFLINE=1)"
        if huggingface_hub.constants.HF_HUB_OFFLINE
        else "the Hub could not be reached"
    )
    rev = f" --revision {revision}" if revision else ""
    return (
        f"{mode} and nothing is cached for it in {where}. Pre-download it "
        f"while online with `hf download {repo_id} {' '.join(filenames)}{rev}` "
        f"(or `huggingface-cli download ...`), or pass a local directory "
        "holding the files to `from_preset`."
    )


def _describe(repo_id, revision):
    return f"hf://{repo_id}" + (f"@{revision}" if revision else "")


def download_file(repo_id, filename, revision=None, label=None):
    """Downloads (or finds in the cache) one file of a Hub repo.

    Args:
        repo_id: string, e.g. `"timm/cait_xxs24_224.fb_dist_in1k"`.
        filename: string, e.g. `"model.safetensors"`.
        revision: `None` (the repo's `main`), a branch, tag or commit.
        label: `None` or `(repo_id, revision)` to quote in errors instead
            (the handle as the user wrote it).

    Returns:
        A `(local_path, commit)` tuple; `commit` is the resolved commit id
        (the name of the cache's snapshot folder), or `None`.

    Raises:
        CaiTFileNotFoundError: the repo, revision or file does not exist, or
            it is not cached and the Hub cannot be reached.
        CaiTConfigError: the repo id or revision is malformed.
    """
    import huggingface_hub
    from huggingface_hub import errors

    shown_repo, shown_revision = label or (repo_id, revision)
    source = _describe(shown_repo, shown_revision)
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id=repo_id, filename=filename, revision=revision
        )
    except errors.HFValidationError as e:
        raise CaiTConfigError(f"{source}: not a valid Hugging Face repo id ({e}).") from e
    except errors.LocalEntryNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: '{filename}' is not available: "
            + _offline_advice(shown_repo, shown_revision, [filename])
        ) from e
    except errors.RemoteEntryNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: the repo has no '{filename}'."
        ) from e
    except errors.RevisionNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: revision {shown_revision!r} does not exist in the repo."
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: the repo does not exist or is private/gated (log in "
            "with `hf auth login` or set HF_TOKEN for private repos)."
        ) from e
    return path, snapshot_commit(path)


def download_repo(repo_id, revision=None):
    """Downloads (or finds in the cache) a whole Hub repo.

    Args:
        repo_id: string. The repo id.
        revision: `None` (`main`), a branch, tag or commit.

    Returns:
        The local snapshot directory.

    Raises:
        CaiTFileNotFoundError: as `download_file`.
    """
    import huggingface_hub
    from huggingface_hub import errors

    source = _describe(repo_id, revision)
    try:
        return huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision)
    except errors.HFValidationError as e:
        raise CaiTConfigError(f"{source}: not a valid Hugging Face repo id ({e}).") from e
    except errors.LocalEntryNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: the repo is not available: "
            + _offline_advice(repo_id, revision, [])
        ) from e
    except errors.RevisionNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: revision {revision!r} does not exist in the repo."
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: the repo does not exist or is private/gated."
        ) from e


def snapshot_commit(path):
    """The commit id of a file inside the Hugging Face cache, or `None`.

    The cache stores a repo's files under `snapshots/<commit>/`.
    """
    parts = pathlib.Path(os.path.abspath(path)).parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts):
            candidate = parts[index + 1]
            if len(candidate) == 40 and all(c in "0123456789abcdef" for c in candidate):
                return candidate
    return None
