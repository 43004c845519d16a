"""Safe loading of `.keras` model files and keras-cait preset directories.

Keras's `safe_mode` stays on (`keras_safe_mode`) and decides which classes
and functions a file may name; what it lacks is checked here before Keras
reads anything (docs/safety.md): the archive's members, the keras-cait
arguments in `config.json` (a parameter budget included), HDF5 links to
other files, and, after loading, finite weights. Every refusal is a
keras-cait exception naming the file and the problem.
"""

import contextlib
import math
import os
import posixpath
import re
import zipfile

import h5py
import keras
import numpy as np

# Private Keras APIs (keras>=3.15.1,<4, pinned): `load_model` on an open
# file, and the scope that forces `safe_mode` on.
from keras.src.saving import saving_lib  # isort: skip
from keras.src.saving.serialization_lib import SafeModeScope  # isort: skip

from keras_cait.serialization import registered_class
from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTError,
    CaiTFileNotFoundError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from keras_cait_base.io.files import parse_json_object, read_json
from keras_cait_base.schema import (
    DEFAULT_MAX_PARAMETERS,
    check_backbone_config,
    check_classifier_config,
)

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
ASSETS_PREFIX = "assets/"

# Size limits of the archive members, in bytes.
MAX_CONFIG_BYTES = 16 * 2**20
MAX_METADATA_BYTES = 2**20
DEFAULT_MAX_WEIGHTS_BYTES = 16 * 2**30
# A member that decompresses to more than this ratio is a ZIP bomb (Keras
# stores members uncompressed; DEFLATE rarely exceeds ~10x on weights).
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR_BYTES = 2**20


def _unsafe(source, message):
    return CaiTUnsafeModelError(f"{source}: {message}")


def _check_object(source, node, max_parameters):
    """Checks the arguments of a keras-cait object, found as Keras finds
    it: by registered name (the class name when none is given)."""
    registered = node.get("registered_name", node.get("class_name"))
    cls = keras.saving.get_registered_object(registered) if isinstance(registered, str) else None
    if not isinstance(cls, type):
        return  # not registered: Keras's safe_mode decides
    where = f"{source}: {cls.__name__}"
    inner = node.get("config")
    if issubclass(cls, registered_class("CaiTBackbone")):
        check_backbone_config(inner, where, max_parameters=max_parameters)
    elif issubclass(cls, registered_class("CaiTImageClassifier")):
        check_classifier_config(inner, where, max_parameters=max_parameters)
    elif cls.__module__.split(".")[0] == "keras_cait":
        _check_plain_numbers(where, inner)


# Other keras-cait classes (layers, preprocessing) have no argument above
# this; a larger integer (e.g. an image size of 10**9) is hostile.
MAX_PLAIN_INT = 2**24


def _check_plain_numbers(source, config):
    """Numbers directly in a keras-cait class's config (not in nested
    serialised objects, which are checked on their own) must be finite and
    at most `MAX_PLAIN_INT` in magnitude."""
    stack = [("", config)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            if "class_name" in value and key:
                continue
            stack.extend((f"{key}.{k}" if key else k, v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        elif not math.isfinite(value) or abs(value) > MAX_PLAIN_INT:
            raise _unsafe(
                source, f"`{key}` = {value!r:.40} is out of range (finite, "
                f"|value| <= {MAX_PLAIN_INT})."
            )


def check_model_config(config, source="config.json", max_parameters=None):
    """Validates the arguments of the keras-cait objects in a serialised
    Keras object tree (a `.keras` archive's or a preset's parsed
    `config.json`) before it is deserialised; which classes may appear at
    all is Keras's `safe_mode`'s decision.

    Args:
        source: string naming the file, quoted in errors.
        max_parameters: int or `None` (2 billion), the largest accepted CaiT
            backbone, in parameters.

    Raises:
        CaiTUnsafeModelError: a keras-cait object's arguments are hostile
            (wrong types, out of range, too many parameters).
    """
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node or "registered_name" in node:
                _check_object(source, node, max_parameters)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _check_member_name(path, name):
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or ".." in parts
        or (len(name) > 1 and name[1] == ":")
        or posixpath.normpath(name).startswith("..")
    ):
        raise _unsafe(path, f"archive member {name!r} has an unsafe path.")
    allowed = name in (CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER) or (
        name.startswith(ASSETS_PREFIX)
    )
    if not allowed:
        raise _unsafe(
            path, f"unexpected archive member {name!r}; a .keras file holds "
            f"{CONFIG_MEMBER}, {METADATA_MEMBER}, {WEIGHTS_MEMBER} and assets/."
        )


def _check_members(path, archive, max_weights_bytes):
    names = set()
    limits = {
        CONFIG_MEMBER: MAX_CONFIG_BYTES,
        METADATA_MEMBER: MAX_METADATA_BYTES,
        WEIGHTS_MEMBER: max_weights_bytes,
    }
    for info in archive.infolist():
        _check_member_name(path, info.filename)
        if info.filename in names:
            raise _unsafe(path, f"archive member {info.filename!r} appears twice.")
        names.add(info.filename)
        limit = limits.get(info.filename, max_weights_bytes)
        if info.file_size > limit:
            raise _unsafe(
                path, f"archive member {info.filename!r} is {info.file_size:,} "
                f"bytes, above the {limit:,}-byte limit."
            )
        if (
            info.file_size > _RATIO_FLOOR_BYTES
            and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        ):
            raise _unsafe(
                path, f"archive member {info.filename!r} expands from "
                f"{info.compress_size:,} to {info.file_size:,} bytes: a "
                "decompression bomb."
            )
    for required in (CONFIG_MEMBER, WEIGHTS_MEMBER):
        if required not in names:
            raise CaiTWeightsError(
                f"{path}: the archive has no {required!r}; not a complete "
                ".keras model file."
            )


def _read_json_member(path, archive, name):
    if name in archive.namelist():
        return parse_json_object(archive.read(name), f"{path}: {name}")
    return None


def _check_h5(source, file):
    """Opens an HDF5 file (a path or file object) and checks its links."""
    try:
        h5 = h5py.File(file, "r")
    except (OSError, ValueError) as error:
        raise CaiTWeightsError(
            f"{source} is not a readable HDF5 file (truncated or corrupt): {error}."
        ) from None
    with h5:
        _check_h5_links(source, h5)


def _check_h5_links(source, h5):
    groups = [h5]
    while groups:
        group = groups.pop()
        for key in group:
            link = group.get(key, getlink=True)
            if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
                raise _unsafe(
                    source, f"{group.name.rstrip('/')}/{key} is an HDF5 "
                    f"{type(link).__name__}; keras-cait refuses links that "
                    "can read other files."
                )
            item = group[key]
            if isinstance(item, h5py.Group):
                groups.append(item)
            elif isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
                raise _unsafe(
                    source, f"dataset {item.name} stores its data in another file."
                )


def _check_shard_names(path, index):
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CaiTConfigError(f"{path}: `weight_map` must be an object.")
    for value in weight_map.values():
        for name in value if isinstance(value, list) else [value]:
            if (
                not isinstance(name, str)
                or not name
                or os.path.basename(name) != name
                or name in (".", "..")
                or "\\" in name
                or os.path.isabs(name)
            ):
                raise _unsafe(
                    path, f"shard name {name!r} is not a plain file name in "
                    "the preset directory (`../` and absolute paths are "
                    "refused)."
                )


def _check_root_object(path, data):
    """A preset's `config.json`/`task.json`/`preprocessor.json` is one
    serialised object: `class_name`, `config` and `registered_name`."""
    for key, expected in (("class_name", str), ("config", dict),
                          ("registered_name", str)):
        if not isinstance(data.get(key), expected):
            what = "an object" if expected is dict else "a string"
            raise CaiTConfigError(
                f"{path}: `{key}` must be {what}, got "
                f"{type(data.get(key)).__name__}"
                + (" (the key is missing)." if key not in data else ".")
            )


def check_preset_directory(directory, max_parameters=None):
    """Checks a keras-cait (`save_to_preset`) preset directory before
    KerasHub deserialises anything from it: every JSON file parses and
    passes `check_model_config` (`max_parameters` likewise), shard names in
    `model.weights.json` are plain file names, HDF5 files have no links to
    other files.

    Raises:
        CaiTConfigError: a JSON file is malformed.
        CaiTUnsafeModelError: something unsafe is requested.
        CaiTWeightsError: an HDF5 file is truncated or corrupt.
    """
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".json"):
            data = read_json(path)
            if "registered_name" in data or "class_name" in data:
                _check_root_object(path, data)
            check_model_config(data, path, max_parameters)
            if name == "model.weights.json":
                _check_shard_names(path, data)
        elif name.endswith(".h5"):
            _check_h5(path, path)


def _check_finite(path, model):
    for variable in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
            if not np.all(np.isfinite(value.astype("float32"))):
                raise CaiTWeightsError(
                    f"{path}: weight {variable.path!r} holds NaN or Inf "
                    "values; pass `allow_non_finite=True` to load it anyway."
                )


# What Keras 3.15's deserialization says when `safe_mode` (or its module
# rules) refuses an object: lambdas, `Lambda`/`TFSMLayer` layers, unknown
# classes or modules, functions that are not Keras objects, non-modelling
# APIs.
_KERAS_REFUSAL = re.compile(
    r"safe_mode|Could not locate|Could not deserialize|KerasSaveable|Non-modeling"
)


@contextlib.contextmanager
def keras_safe_mode(source):
    """Runs Keras deserialization in `safe_mode`, even if the process called
    `keras.config.enable_unsafe_deserialization()`, and turns its refusals
    into `CaiTUnsafeModelError`s naming `source`.

    Args:
        source: string naming the file being deserialised, quoted in errors.
    """
    with SafeModeScope(True):
        try:
            yield
        except (TypeError, ValueError) as error:
            if isinstance(error, CaiTError) or not _KERAS_REFUSAL.search(str(error)):
                raise
            raise CaiTUnsafeModelError(
                f"{source}: Keras's safe_mode refused to load it (keras-cait "
                "never loads code, lambdas, Lambda layers or classes Keras "
                f"does not know from a file): {type(error).__name__}: {error}"
            ) from None


def load_model(
    path,
    compile=True,
    allow_non_finite=False,
    max_weights_bytes=DEFAULT_MAX_WEIGHTS_BYTES,
    max_parameters=DEFAULT_MAX_PARAMETERS,
):
    """Loads a `.keras` file after checking that it is safe and intact (see
    the module docstring); the file is opened once and the same handle is
    checked and loaded.

    Args:
        path: path of a `.keras` file.
        compile: bool. Whether to restore the saved compile configuration.
        allow_non_finite: bool. Accept weights holding NaN or Inf.
        max_weights_bytes: int. Largest accepted `model.weights.h5` member.
        max_parameters: int. Largest accepted CaiT backbone, in
            parameters.

    Returns:
        The model (e.g. a `keras_cait.CaiTImageClassifier`).

    Raises:
        CaiTFileNotFoundError: the file does not exist.
        CaiTUnsafeModelError: the archive or config asks for something
            unsafe (code, foreign classes, hostile arguments, unsafe member
            paths, oversized members).
        CaiTConfigError: `config.json` or `metadata.json` is not valid JSON.
        CaiTWeightsError: the file is empty, truncated or corrupt, the
            weights do not fit the model, or a weight is NaN/Inf.
    """

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaiTFileNotFoundError(f"{path}: no such file.")
    if not os.path.isfile(path):
        raise CaiTConfigError(f"{path}: is not a file; expected a .keras archive.")
    if not path.endswith(".keras"):
        raise CaiTConfigError(f"{path}: expected a file name ending in .keras.")
    if os.path.getsize(path) == 0:
        raise CaiTWeightsError(f"{path}: the file is empty (0 bytes).")
    with open(path, "rb") as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                _check_members(path, archive, max_weights_bytes)
                config = _read_json_member(path, archive, CONFIG_MEMBER)
                _read_json_member(path, archive, METADATA_MEMBER)

                check_model_config(config, f"{path}: {CONFIG_MEMBER}", max_parameters)
                with archive.open(WEIGHTS_MEMBER) as member:
                    _check_h5(f"{path}: {WEIGHTS_MEMBER}", member)
        except CaiTError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
                ValueError, NotImplementedError) as error:
            raise CaiTWeightsError(
                f"{path}: not a readable .keras archive (truncated or "
                f"corrupt): {error}."
            ) from None
        handle.seek(0)
        try:
            # Through the checked open handle, so the file cannot be swapped
            # between the checks and the load.
            with keras_safe_mode(f"{path}: {CONFIG_MEMBER}"):
                model = saving_lib.load_model(handle, compile=compile, safe_mode=True)
        except CaiTError:
            raise
        except Exception as error:  # Keras reports e.g. UnboundLocalError.
            raise CaiTWeightsError(
                f"{path}: Keras could not load the model: "
                f"{type(error).__name__}: {error}. The file is truncated, "
                "corrupt, or its weights do not match its config.json."
            ) from None
    if not allow_non_finite:
        _check_finite(path, model)
    return model
