"""Safe loading of `.keras` model files.

`load_model(path)` inspects a `.keras` archive completely before Keras
deserialises anything from it, and keeps Keras's `safe_mode` on:

- archive: a readable ZIP holding only `config.json`, `metadata.json`,
  `model.weights.h5` and `assets/...`; no absolute or `../` member names;
  member sizes within limits and no decompression bombs;
- `config.json`: valid JSON, and every serialised object in it resolves to
  an allow-listed class: a Keras/KerasHub/keras-cait layer, model, optimizer,
  loss, metric, initializer, regularizer, constraint, dtype policy or
  learning-rate schedule; never a Lambda, a Python function outside Keras's
  activations/losses/metrics, or anything from another module (`os`,
  `subprocess`, ...);
- keras-cait classes: their arguments are validated (types, ranges, a
  parameter budget) before any layer is built, so a hostile config cannot
  make the loader allocate billions of parameters;
- `model.weights.h5`: a readable HDF5 file without external links, soft
  links, external storage or virtual datasets;
- after loading: every weight is finite unless the caller allows NaN/Inf.

Every refusal is a keras-cait exception naming the file and the problem.
"""

import importlib
import json
import math
import os
import posixpath
import zipfile

import h5py
import keras
import numpy as np

# Private Keras API (keras>=3.15.1,<4, pinned): `load_model` on an open file.
from keras.src.saving import saving_lib  # isort: skip

from keras_cait.errors import (
    CaiTConfigError,
    CaiTError,
    CaiTFileNotFoundError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from keras_cait.io.files import read_json
from keras_cait.schema import (
    DEFAULT_MAX_PARAMETERS,
    check_backbone_config,
    check_classifier_config,
)
from keras_cait.serialization import registered_class

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

# Packages whose classes may appear in a config.
ALLOWED_PACKAGES = ("keras", "keras_hub", "keras_cait")
# Serialised special values Keras decodes without running code.
SAFE_SPECIAL_CLASSES = (
    "__keras_tensor__",
    "__tensor__",
    "__numpy__",
    "__bytes__",
    "__ellipsis__",
    "__slice__",
)
# Modules whose *functions* may be named (activations, losses, metrics).
ALLOWED_FUNCTION_MODULES = (
    "builtins",
    "keras.activations",
    "keras.src.activations",
    "keras.losses",
    "keras.src.losses",
    "keras.metrics",
    "keras.src.metrics",
)
_FUNCTION_NAMESPACES = ("activations", "losses", "metrics")


def _allowed_bases():
    return (
        keras.layers.Layer,
        keras.optimizers.Optimizer,
        keras.optimizers.schedules.LearningRateSchedule,
        keras.losses.Loss,
        keras.metrics.Metric,
        keras.initializers.Initializer,
        keras.regularizers.Regularizer,
        keras.constraints.Constraint,
        keras.DTypePolicy,
    )


def _denied_bases():
    # Layers that run user code or load other files.
    return (keras.layers.Lambda, keras.layers.TFSMLayer)


def _unsafe(source, message):
    return CaiTUnsafeModelError(f"{source}: {message}")


# --------------------------------------------------------------------------
# The config tree
# --------------------------------------------------------------------------


def _resolve_class(source, node):
    class_name = node.get("class_name")
    module = node.get("module")
    registered = node.get("registered_name")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise _unsafe(source, f"invalid class name {class_name!r:.80}.")
    if isinstance(registered, str) and ">" in registered:
        package = registered.split(">", 1)[0]
        if package not in ALLOWED_PACKAGES:
            raise _unsafe(
                source, f"class {registered!r} comes from package {package!r}, "
                f"outside the allow-list {list(ALLOWED_PACKAGES)}."
            )
        obj = keras.saving.get_registered_object(registered)
        if obj is not None:
            return obj
    if module is None:
        raise _unsafe(source, f"class {class_name!r} names no module.")
    if not isinstance(module, str) or not all(
        part.isidentifier() for part in module.split(".")
    ):
        raise _unsafe(source, f"invalid module name {module!r:.80}.")
    if module.split(".")[0] not in ALLOWED_PACKAGES:
        raise _unsafe(
            source, f"class {class_name!r} names module {module!r}, outside "
            f"the allow-list {list(ALLOWED_PACKAGES)}; refusing to import it."
        )
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise _unsafe(source, f"module {module!r} does not exist.") from None
    obj = getattr(imported, class_name, None)
    if obj is None:
        raise _unsafe(source, f"{module}.{class_name} does not exist.")
    return obj


def _check_function(source, node):
    module = node.get("module")
    name = node.get("config")
    if not isinstance(name, str) or not isinstance(module, str):
        raise _unsafe(source, "a serialised function needs a module and a name.")
    if not any(
        module == allowed or module.startswith(allowed + ".")
        for allowed in ALLOWED_FUNCTION_MODULES
    ):
        raise _unsafe(
            source, f"function {name!r} from module {module!r} is not a Keras "
            "activation, loss or metric; refusing to load code from a file."
        )
    if not any(
        callable(getattr(getattr(keras, namespace), name, None))
        for namespace in _FUNCTION_NAMESPACES
    ):
        raise _unsafe(
            source, f"function {name!r} is not a Keras activation, loss or "
            "metric."
        )


def _check_object(source, node, max_parameters):
    class_name = node["class_name"]
    if class_name in ("__lambda__", "Lambda"):
        raise _unsafe(
            source, "the model contains a Lambda (Python code); keras-cait "
            "never loads code from a file."
        )
    if class_name in SAFE_SPECIAL_CLASSES:
        return
    if not isinstance(class_name, str) or class_name.startswith("__"):
        raise _unsafe(source, f"refusing serialised object {class_name!r:.80}.")
    if class_name == "function":
        _check_function(source, node)
        return
    cls = _resolve_class(source, node)
    where = f"{source}: {class_name}"
    if not isinstance(cls, type) or not issubclass(cls, _allowed_bases()):
        raise _unsafe(
            source, f"{class_name!r} is not a Keras layer, model, optimizer, "
            "loss, metric, initializer, regularizer, constraint or dtype "
            "policy; refusing to load it."
        )
    if issubclass(cls, _denied_bases()):
        raise _unsafe(
            source, f"{cls.__name__} layers run code or load other files; "
            "keras-cait refuses them."
        )
    inner = node.get("config")
    if issubclass(cls, registered_class("CaiTBackbone")):
        check_backbone_config(inner, where, max_parameters)
    elif issubclass(cls, registered_class("CaiTImageClassifier")):
        check_classifier_config(inner, where, max_parameters)
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
    """Checks a serialised Keras object tree before it is deserialised.

    Every object must resolve to an allow-listed class (see the module
    docstring); keras-cait models get their arguments validated.

    Args:
        config: the parsed JSON (a `.keras` archive's or a preset's
            `config.json`).
        source: string naming the file, quoted in errors.
        max_parameters: int or `None`, the largest accepted CaiT backbone
            (estimated parameters; default 2 billion).

    Raises:
        CaiTUnsafeModelError: the config asks for something unsafe.

    Example:
    ```python
    with open("config.json") as f:
        keras_cait.loading.safe_loading.check_model_config(json.load(f))
    ```
    """
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                _check_object(source, node, max_parameters)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


# --------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------


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


def _read_json_member(path, archive, name, required=True):
    source = f"{path}: {name}"
    try:
        raw = archive.read(name)
    except KeyError:
        if required:
            raise CaiTWeightsError(f"{source} is missing.") from None
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CaiTConfigError(f"{source} is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise CaiTConfigError(
            f"{source} is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}."
        ) from None
    except RecursionError:
        raise CaiTConfigError(f"{source} is nested too deeply.") from None
    if not isinstance(value, dict):
        raise CaiTConfigError(
            f"{source} must be a JSON object, got {type(value).__name__}."
        )
    return value


def _check_weights_h5(path, archive):

    source = f"{path}: {WEIGHTS_MEMBER}"
    with archive.open(WEIGHTS_MEMBER) as member:
        try:
            h5 = h5py.File(member, "r")
        except (OSError, ValueError) as error:
            raise CaiTWeightsError(
                f"{source} is not a readable HDF5 file (truncated or "
                f"corrupt): {error}."
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


def _check_h5_file(path):

    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise CaiTWeightsError(
            f"{path}: not a readable HDF5 file (truncated or corrupt): {error}."
        ) from None
    with h5:
        _check_h5_links(path, h5)


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
    KerasHub deserialises anything from it.

    Every JSON file must parse; every serialised object in them must pass
    `check_model_config`; shard names in `model.weights.json` must be plain
    file names; HDF5 weights files must have no links to other files.

    Args:
        directory: the preset directory.
        max_parameters: int or `None`, see `check_model_config`.

    Raises:
        CaiTConfigError: a JSON file is malformed.
        CaiTUnsafeModelError: something unsafe is requested.
        CaiTWeightsError: an HDF5 file is truncated or corrupt.

    Example:
    ```python
    keras_cait.loading.safe_loading.check_preset_directory("./my_cait_preset")
    ```
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
            _check_h5_file(path)


def _check_finite(path, model):
    for variable in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
            if not np.all(np.isfinite(value.astype("float32"))):
                raise CaiTWeightsError(
                    f"{path}: weight {variable.path!r} holds NaN or Inf "
                    "values; pass `allow_non_finite=True` to load it anyway."
                )


def _keras_load(path, handle, compile):
    """Loads through the already-checked open handle when Keras allows it
    (its `saving_lib` takes file objects), so the file cannot be swapped
    between the checks and the load."""
    return saving_lib.load_model(handle, compile=compile, safe_mode=True)


def load_model(
    path,
    compile=True,
    allow_non_finite=False,
    max_weights_bytes=DEFAULT_MAX_WEIGHTS_BYTES,
    max_parameters=DEFAULT_MAX_PARAMETERS,
):
    """Loads a `.keras` file after checking that it is safe and intact.

    Keras's `safe_mode` stays on. Before Keras sees the file, the archive's
    members, `config.json` (allow-listed classes only; keras-cait arguments
    validated) and the HDF5 weights (no links to other files) are checked;
    afterwards, every weight must be finite. The file is opened once and
    the same handle is checked and loaded.

    Args:
        path: path of a `.keras` file.
        compile: bool. Whether to restore the saved compile configuration.
        allow_non_finite: bool. Accept weights holding NaN or Inf.
        max_weights_bytes: int. Largest accepted `model.weights.h5` member.
        max_parameters: int. Largest accepted CaiT backbone, in (estimated)
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

    Example:
    ```python
    import keras_cait
    model = keras_cait.load_model("cait.keras")
    ```
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
                _read_json_member(path, archive, METADATA_MEMBER, required=False)
                check_model_config(config, f"{path}: {CONFIG_MEMBER}", max_parameters)
                _check_weights_h5(path, archive)
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
            model = _keras_load(path, handle, compile)
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
