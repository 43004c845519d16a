"""The shipped preset files: reading, validating and registering them.

Each pretrained variant is one JSON file in the top-level `presets/` folder
of the repository, shipped in the wheel as `keras_cait/presets/` (in a source
checkout, `keras_cait/presets` is a link to the top-level folder). A
file names its weights' source, the `CaiTBackbone` arguments, the classifier
head, the preprocessing and the published figures of the checkpoint.
"""

import difflib
import functools
import math
import pathlib

from keras_cait.convert.timm_config import TIMM_ARCHITECTURES
from keras_cait.errors import CaiTConfigError, CaiTFileNotFoundError
from keras_cait.io.files import SHA256_PATTERN, read_json
from keras_cait.schema import INTERPOLATIONS, POOLINGS

PRESETS_DIR = pathlib.Path(__file__).resolve().parents[1] / "presets"

# The `CaiTBackbone` arguments a preset must give, with their JSON types.
_BACKBONE_TYPES = dict(
    image_shape=list,
    patch_size=int,
    hidden_dim=int,
    num_layers=int,
    num_heads=int,
    num_class_attention_layers=int,
    mlp_ratio=float,
    class_attention_mlp_ratio=float,
    use_qkv_bias=bool,
    layer_scale_init_value=float,
    dropout_rate=float,
    attention_dropout=float,
    drop_path_rate=float,
    layer_norm_epsilon=float,
)
_TOP_LEVEL = (
    "name",
    "description",
    "architecture",
    "weights",
    "backbone",
    "classifier",
    "preprocessing",
    "num_params",
    "imagenet_top1",
    "license",
)


def _fail(source, message):
    raise CaiTConfigError(f"{source}: {message}")


def _is_type(value, expected):
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_keys(source, where, mapping, required, optional=()):
    if not isinstance(mapping, dict):
        _fail(source, f"`{where}` must be an object, got {type(mapping).__name__}.")
    for key in required:
        if key not in mapping:
            _fail(source, f"`{where}.{key}` is missing." if where else f"`{key}` is missing.")
    for key in mapping:
        if key not in required and key not in optional:
            name = f"{where}.{key}" if where else key
            _fail(source, f"unknown key `{name}`.")


def _check_field(source, name, value, expected, condition=None, expectation=""):
    if not _is_type(value, expected) or (condition and not condition(value)):
        _fail(
            source,
            f"`{name}` must be {expectation or expected.__name__}, got {value!r}.",
        )


def validate_preset(data, source="preset"):
    """Checks a preset JSON dict against the preset schema.

    Args:
        data: dict. The parsed preset file.
        source: string. Where it comes from, quoted in errors.

    Returns:
        `data`, unchanged.

    Raises:
        CaiTConfigError: naming the key that is missing, unknown or of the
            wrong type or value.
    """
    _check_keys(source, "", data, _TOP_LEVEL)
    _check_field(source, "name", data["name"], str, bool, "a non-empty string")
    _check_field(
        source,
        "description",
        data["description"],
        str,
        lambda v: v.strip() and "\n" not in v,
        "a one-line string",
    )
    _check_field(
        source,
        "architecture",
        data["architecture"],
        str,
        lambda v: v in TIMM_ARCHITECTURES,
        f"one of timm's CaiT architectures {sorted(TIMM_ARCHITECTURES)}",
    )

    weights = data["weights"]
    _check_keys(source, "weights", weights, ("format", "source"), ("sha256",))
    _check_field(
        source, "weights.format", weights["format"], str, lambda v: v == "timm", "'timm'"
    )
    _check_field(
        source,
        "weights.source",
        weights["source"],
        str,
        lambda v: v.startswith("hf://") and len(v) > 5,
        "an 'hf://owner/repo[@revision]' handle",
    )
    if weights.get("sha256") is not None:
        _check_field(
            source,
            "weights.sha256",
            weights["sha256"],
            str,
            SHA256_PATTERN.fullmatch,
            "null or 64 lowercase hex digits",
        )

    backbone = data["backbone"]
    _check_keys(source, "backbone", backbone, tuple(_BACKBONE_TYPES))
    for key, expected in _BACKBONE_TYPES.items():
        _check_field(source, f"backbone.{key}", backbone[key], expected)
    _check_field(
        source,
        "backbone.image_shape",
        backbone["image_shape"],
        list,
        lambda v: len(v) == 3 and all(_is_type(x, int) and x > 0 for x in v),
        "[height, width, channels] of positive ints",
    )

    classifier = data["classifier"]
    _check_keys(source, "classifier", classifier, ("num_classes", "pooling"))
    _check_field(
        source,
        "classifier.num_classes",
        classifier["num_classes"],
        int,
        lambda v: v >= 0,
        "a non-negative int",
    )
    _check_field(
        source,
        "classifier.pooling",
        classifier["pooling"],
        str,
        lambda v: v in POOLINGS,
        f"one of {POOLINGS}",
    )

    prep = data["preprocessing"]
    _check_keys(
        source,
        "preprocessing",
        prep,
        ("image_size", "crop_pct", "interpolation", "mean", "std"),
    )
    _check_field(
        source,
        "preprocessing.image_size",
        prep["image_size"],
        list,
        lambda v: len(v) == 2 and all(_is_type(x, int) and x > 0 for x in v),
        "[height, width] of positive ints",
    )
    _check_field(
        source,
        "preprocessing.crop_pct",
        prep["crop_pct"],
        float,
        lambda v: 0 < v <= 1,
        "a number in (0, 1]",
    )
    _check_field(
        source,
        "preprocessing.interpolation",
        prep["interpolation"],
        str,
        lambda v: v in INTERPOLATIONS,
        f"one of {INTERPOLATIONS}",
    )
    for key in ("mean", "std"):
        _check_field(
            source,
            f"preprocessing.{key}",
            prep[key],
            list,
            lambda v, key=key: len(v) == 3
            and all(_is_type(x, float) and math.isfinite(x) for x in v)
            and (key == "mean" or all(x > 0 for x in v)),
            "three numbers" + (" > 0" if key == "std" else ""),
        )
    _check_field(
        source, "num_params", data["num_params"], int, lambda v: v > 0, "a positive int"
    )
    _check_field(
        source,
        "imagenet_top1",
        data["imagenet_top1"],
        float,
        lambda v: 0 <= v <= 100,
        "a percentage in [0, 100]",
    )
    _check_field(source, "license", data["license"], str, bool, "a non-empty string")
    return data


def read_preset_file(path):
    """Reads and validates one preset JSON file.

    Args:
        path: path of a preset `.json` file.

    Returns:
        The preset dict.

    Raises:
        CaiTConfigError: the file is not valid JSON, does not follow the
            schema, or its `name` differs from its file name.
    """
    path = pathlib.Path(path)
    data = read_json(str(path))
    validate_preset(data, source=str(path))
    if data["name"] != path.stem:
        raise CaiTConfigError(
            f"{path}: `name` is {data['name']!r} but the file is named "
            f"{path.name!r}; they must agree."
        )
    return data


@functools.cache
def _all_presets():
    files = sorted(PRESETS_DIR.glob("*.json"))
    if not files:
        raise CaiTFileNotFoundError(
            f"No preset files found in {PRESETS_DIR}; the keras-cait "
            "installation is incomplete."
        )
    return {path.stem: read_preset_file(path) for path in files}


def list_presets():
    """Lists the names of keras-cait's pretrained presets.

    Returns:
        A sorted list of preset names, e.g. `"cait_xxs24_224"`.

    Example:
    ```python
    keras_cait.list_presets()  # ['cait_m36_384', ..., 'cait_xxs36_384']
    ```
    """
    return sorted(_all_presets())


def get_preset(name):
    """Returns the preset dict of a preset name.

    Args:
        name: string. A name from `list_presets()`.

    Raises:
        CaiTConfigError: the name is unknown; the message lists the
            available presets and suggests the closest.
    """
    presets = _all_presets()
    if name in presets:
        return presets[name]
    raise CaiTConfigError(unknown_preset_message(name))


def unknown_preset_message(name):
    """An error message for an unknown preset name, with suggestions."""
    names = sorted(_all_presets())
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"Unknown preset {name!r}.{hint} keras-cait's presets are: "
        f"{', '.join(names)}. A preset can also be an 'hf://owner/repo"
        "[@revision]' handle or a local directory."
    )
