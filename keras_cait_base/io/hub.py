"""Downloads from the Hugging Face Hub, through `huggingface_hub`.

Everything goes through `huggingface_hub` (its cache, token, offline mode
and progress bars); this module only turns its exceptions into keras-cait
errors that say which file is missing and what to do about it.
"""

import contextlib
import os
import pathlib
import re

import huggingface_hub
from huggingface_hub import errors as hub_errors

from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError


def _offline_advice(repo_id, revision, filenames):
    where = huggingface_hub.constants.HF_HUB_CACHE
    mode = (
        "offline mode is on (HF_HUB_OFFLINE=1)"
        if huggingface_hub.constants.HF_HUB_OFFLINE
        else "the Hub could not be reached"
    )
    rev = f" --revision {revision}" if revision else ""
    handle = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    return (
        f"{mode} and nothing is cached for it in {where}. Download the whole "
        f"repo on an online machine with `hf download {repo_id}{rev} "
        "--local-dir DIR`, copy DIR here and run `keras-cait cache-weights "
        f"{handle} --from DIR`; or pass a local directory holding the files "
        "to `from_preset`."
    )


@contextlib.contextmanager
def _hub_errors(repo_id, revision, filename=None):
    """Turns `huggingface_hub`'s exceptions into keras-cait errors naming
    the handle (`hf://repo_id@revision`) and `filename` (`None`: the repo)."""
    source = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    what = f"'{filename}'" if filename else "the repo"
    try:
        yield
    except hub_errors.HFValidationError as e:
        raise CaiTConfigError(f"{source}: not a valid Hugging Face repo id ({e}).") from e
    except hub_errors.LocalEntryNotFoundError as e:
        advice = _offline_advice(repo_id, revision, [filename] if filename else [])
        raise CaiTFileNotFoundError(f"{source}: {what} is not available: {advice}") from e
    except hub_errors.RemoteEntryNotFoundError as e:
        raise CaiTFileNotFoundError(f"{source}: the repo has no {what}.") from e
    except hub_errors.RevisionNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: revision {revision!r} does not exist in the repo."
        ) from e
    except hub_errors.RepositoryNotFoundError as e:
        raise CaiTFileNotFoundError(
            f"{source}: the repo does not exist or is private/gated (log in "
            "with `hf auth login` or set HF_TOKEN for private repos)."
        ) from e


def download_file(repo_id, filename, revision=None, label=None):
    """Downloads (or finds in the cache) one file of a Hub repo at
    `revision` (`None`: `main`); `label`, a `(repo_id, revision)` pair, is
    quoted in errors instead when given.

    Returns:
        `(local_path, commit)`: `commit` is the resolved commit id, or `None`.


    Raises:
        CaiTFileNotFoundError: the repo, revision or file does not exist, or
            it is not cached and the Hub cannot be reached.
        CaiTConfigError: the repo id or revision is malformed.
    """
    with _hub_errors(*(label or (repo_id, revision)), filename):
        path = huggingface_hub.hf_hub_download(
            repo_id=repo_id, filename=filename, revision=revision
        )
    return path, snapshot_commit(path)


def download_repo(repo_id, revision=None):
    """Downloads (or finds in the cache) a whole Hub repo at `revision`
    (`None`: `main`); returns the local snapshot directory. Raises as
    `download_file`."""
    with _hub_errors(repo_id, revision):
        return huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision)


def snapshot_commit(path):
    """The commit id of a file inside the Hugging Face cache (stored under
    `snapshots/<commit>/`), or `None`."""
    parts = pathlib.Path(os.path.abspath(path)).parts
    if "snapshots" not in parts:
        return None
    index = len(parts) - 1 - parts[::-1].index("snapshots")
    candidate = parts[index + 1] if index + 1 < len(parts) else ""
    return candidate if re.fullmatch(r"[0-9a-f]{40}", candidate) else None
