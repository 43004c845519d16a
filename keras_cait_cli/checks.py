"""Checks of `keras-cait` arguments that need no Keras: they answer a cheap
mistake (an unknown preset, an output that exists, a missing folder, a
backend that is not installed) in a fraction of a second, before Keras,
a backend and the model are loaded. Also the quiet environment and the
backend choice, which must be settled before anything imports Keras.

Each check raises `ArgumentProblem` with a sentence that says what to do.
"""

import difflib
import errno
import glob
import importlib.util
import os
import pathlib

BACKEND_PREFERENCE = ("jax", "torch", "tensorflow")
RECORD_EXTENSIONS = (".jsonl", ".csv")
_INSTALL_HINTS = {
    "jax": 'pip install jax  (from a clone: pip install -e ".[jax]")',
    "torch": 'pip install torch  (from a clone: pip install -e ".[torch]")',
    "tensorflow": 'pip install tensorflow  (from a clone: pip install -e ".[tensorflow]")',
}
# Environment that silences TensorFlow's C++/absl logs (oneDNN notes, the
# CUDA probe's "failed call to cuInit" on a CPU machine) and gRPC; read
# when TensorFlow is first imported.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
}


class ArgumentProblem(ValueError):
    """A command-line argument that cannot work; the message says why and
    what to do."""


def quiet_environment(verbose, environ=None):
    """Sets `QUIET_ENVIRONMENT` (keeping values the user set) unless
    `verbose`; call before anything imports TensorFlow."""
    environ = os.environ if environ is None else environ
    if verbose:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        environ.setdefault(name, value)


def installed(module):
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(requested, environ=None):
    """The Keras backend to run on, and the line that says why.

    Args:
        requested: `--backend` (or `None`).
        environ: the environment (`os.environ`).

    Returns:
        `(backend, reason)`: `--backend`, else `KERAS_BACKEND`, else the
        first of `BACKEND_PREFERENCE` that is installed.

    Raises:
        ArgumentProblem: the backend chosen is not installed (with the
            install command), or none is.
    """
    environ = os.environ if environ is None else environ
    if requested:
        backend, reason = requested, "--backend"
    elif environ.get("KERAS_BACKEND"):
        backend, reason = environ["KERAS_BACKEND"], "KERAS_BACKEND"
    else:
        available = [name for name in BACKEND_PREFERENCE if installed(name)]
        if not available:
            raise ArgumentProblem(
                "no Keras backend is installed: "
                f"{_INSTALL_HINTS['jax']}, then run the command again."
            )
        return available[0], (
            f"the first installed of {', '.join(BACKEND_PREFERENCE)}; "
            "choose with --backend or KERAS_BACKEND"
        )
    if backend in _INSTALL_HINTS and not installed(backend):
        raise ArgumentProblem(
            f"the {backend} backend ({reason}) is not installed: "
            f"{_INSTALL_HINTS[backend]}, or choose another with --backend."
        )
    return backend, reason


def check_preset(preset, presets_dir):
    """A preset name must be shipped; a path must be a preset folder."""
    if preset.startswith("hf://"):
        return
    names = sorted(p.stem for p in pathlib.Path(presets_dir).glob("*.json"))
    if preset in names:
        return
    path = pathlib.Path(preset).expanduser()
    if path.is_file():
        if path.suffix == ".keras":
            raise ArgumentProblem(
                f"--preset {preset} is a .keras file; --preset takes a preset "
                "folder: write one with `model.save_to_preset(DIR)` (or load "
                "the file in Python with `keras_cait.load_model`)."
            )
        raise ArgumentProblem(
            f"--preset {preset} is a file; give a preset folder "
            "(`model.save_to_preset(DIR)`), a preset name or an hf:// handle."
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArgumentProblem(
                f"--preset {preset} has no config.json: give a folder written "
                "by `model.save_to_preset(DIR)` or a timm checkpoint folder "
                "(config.json and model.safetensors)."
            )
        return
    if os.sep in preset or preset.startswith("."):
        raise ArgumentProblem(f"--preset {preset}: no such folder.")
    close = difflib.get_close_matches(preset, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ArgumentProblem(
        f"Unknown preset {preset!r}.{hint} Choose one of {', '.join(names)} "
        "(`keras-cait presets`), a local preset folder or an hf://owner/name "
        "handle."
    )


def _nearest_existing(path):
    """`path` or the nearest of its ancestors that exists (None if none does)."""
    return next((part for part in (path, *path.parents) if part.exists()), None)


def _check_parent_writable(path, option):
    ancestor = _nearest_existing(path.parent if str(path.parent) else pathlib.Path("."))
    if ancestor is None:
        return
    if not ancestor.is_dir():
        raise ArgumentProblem(
            f"{option} {path}: {ancestor} is a file, not a folder; choose another path."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK) or _read_only_system(ancestor):
        raise ArgumentProblem(
            f"{option} {path}: {ancestor} is not writable; choose a "
            "folder you can write to."
        )


def _read_only_system(folder):
    # /proc and /sys answer os.access for root but refuse new files.
    resolved = str(pathlib.Path(folder).resolve())
    return resolved in ("/proc", "/sys") or resolved.startswith(("/proc/", "/sys/"))


def check_output_file(output, resume):
    """`--output FILE`: a .jsonl/.csv path that does not exist (or exists,
    with `--resume`), in a folder that can be written."""
    path = pathlib.Path(output).expanduser()
    if path.suffix.lower() not in RECORD_EXTENSIONS:
        raise ArgumentProblem(
            f"--output {output}: the file must end in .jsonl or .csv "
            f"(got {path.suffix or 'no extension'!r})."
        )
    if path.is_dir():
        raise ArgumentProblem(f"--output {output} is a folder; give a .jsonl or .csv file.")
    if path.exists() and not resume:
        raise ArgumentProblem(
            f"--output {output} already exists: add --resume to continue it, "
            "or remove it (or choose another name) to start again."
        )
    _check_parent_writable(path, "--output")


def check_new_folder(folder, option):
    """An output folder (`--attention DIR`, `evaluate --output DIR`) must
    not hold files already: nothing is overwritten."""
    path = pathlib.Path(folder).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ArgumentProblem(f"{option} {folder} is a file; give a folder.")
        if any(path.iterdir()):
            raise ArgumentProblem(
                f"{option} {folder} already holds files: choose a new or "
                "empty folder, or remove it; nothing is overwritten."
            )
        return
    _check_parent_writable(path, option)


def check_cache_folder(folder, option="--cache-dir"):
    """A cache folder may exist or not, but no part of its path may be a
    file (the artefact would only fail after the model loads)."""
    part = _nearest_existing(pathlib.Path(folder).expanduser())
    if part is not None and not part.is_dir():
        raise ArgumentProblem(
            f"{option} {folder}: {part} is a file; give a folder (created if missing)."
        )


def check_inputs(inputs):
    """`predict`'s inputs: each @list file exists, and at least one input
    exists or matches (a missing image among others is not an error of the
    command: it gets an error record)."""
    found = False
    for item in inputs:
        if item.startswith("@"):
            if not os.path.isfile(item[1:]):
                raise ArgumentProblem(f"list file {item[1:]} (from {item}) does not exist.")
            found = True
        elif glob.has_magic(item):
            found = found or bool(glob.glob(item, recursive=True))
        else:
            found = found or os.path.exists(item)
    if not found:
        shown = ", ".join(inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        raise ArgumentProblem(
            f"no input exists ({shown}); give images, folders, globs or @list.txt files."
        )


def check_folder(folder, option):
    """An input folder that exists and is not empty."""
    path = pathlib.Path(folder).expanduser()
    if not path.exists():
        raise ArgumentProblem(f"{option}{folder} does not exist.")
    if not path.is_dir():
        raise ArgumentProblem(f"{option}{folder} is a file; give a folder of class folders.")
    if not any(path.iterdir()):
        raise ArgumentProblem(f"{option}{folder} is empty; it should hold one folder per class.")


def check_file(path, option):
    """An input file that exists."""
    if not os.path.isfile(os.path.expanduser(path)):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ArgumentProblem(f"{option} {path} {what}; give a file.")


_ERRNO_ADVICE = {
    errno.EEXIST: "already exists: choose another path or remove it",
    errno.ENOENT: "does not exist: check the path (its folder must exist)",
    errno.ENOTDIR: "has a file where a folder is expected: choose another path",
    errno.EISDIR: "is a folder where a file is expected: give a file path",
    errno.EACCES: "is not accessible (permission denied): choose a path you can read and write",
    errno.EPERM: "is not permitted: choose a path you can write to",
    errno.EROFS: "is on a read-only file system: choose a writable folder",
    errno.ENOSPC: "cannot be written: the disk is full; free space or choose another disk",
    errno.EDQUOT: "cannot be written: the disk quota is exceeded",
    errno.ENAMETOOLONG: "has a name that is too long: choose a shorter path",
}


def os_error_sentence(error):
    """An `OSError` as one sentence naming the path and what to do."""
    path = error.filename or ""
    other = f" -> {error.filename2}" if getattr(error, "filename2", None) else ""
    advice = _ERRNO_ADVICE.get(error.errno)
    if advice and path:
        return f"{path}{other} {advice}."
    if advice:
        return f"{error.strerror or error}: {advice.split(': ', 1)[-1]}."
    return str(error)
