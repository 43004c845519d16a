"""The CaiT configuration schema: argument names, constants and limits.

What a `CaiTBackbone` or `CaiTImageClassifier` configuration may hold, checked
without building (or importing) a model: the loaders and the safety checks
validate configurations from files here before anything is allocated.
"""

import math

from keras_cait.errors import CaiTUnsafeModelError

# timm's evaluation transform for CaiT: ImageNet mean and standard deviation
# of [0, 1] pixels, and the resize filters a preset may name.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

# Pooling of `CaiTImageClassifier` (timm's `global_pool`).
POOLINGS = ("token", "avg")

# `CaiTBackbone` and `CaiTImageClassifier` constructor arguments (besides
# Keras's `name`, `trainable` and `dtype`); `tests/test_schema.py` checks
# them against the signatures.
BACKBONE_ARGUMENTS = (
    "hidden_dim",
    "num_layers",
    "num_heads",
    "image_shape",
    "patch_size",
    "num_class_attention_layers",
    "mlp_ratio",
    "class_attention_mlp_ratio",
    "use_qkv_bias",
    "layer_scale_init_value",
    "dropout_rate",
    "attention_dropout",
    "drop_path_rate",
    "layer_norm_epsilon",
)
CLASSIFIER_ARGUMENTS = (
    "backbone",
    "num_classes",
    "preprocessor",
    "pooling",
    "activation",
    "dropout",
    "head_dtype",
    "compile",
)


def _unsafe(source, message):
    return CaiTUnsafeModelError(f"{source}: {message}")


# Upper bounds for integer arguments of keras-cait models; far above every
# published CaiT (depth 48, width 768, 448x448 images).
BACKBONE_INT_LIMITS = dict(
    hidden_dim=16384,
    num_layers=512,
    num_heads=1024,
    patch_size=1024,
    num_class_attention_layers=64,
)
MAX_IMAGE_SIDE = 8192
MAX_CHANNELS = 64
MAX_CLASSES = 10_000_000
DEFAULT_MAX_PARAMETERS = 2_000_000_000
_BASE_KEYS = {"name", "trainable", "dtype"}


def _int_arg(source, key, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _unsafe(
            source, f"`{key}` must be an integer, got {type(value).__name__} "
            f"{value!r:.80}."
        )
    if not low <= value <= high:
        raise _unsafe(source, f"`{key}` must be in [{low}, {high}], got {value}.")
    return value


def _float_arg(source, key, value, low, high, low_inclusive=True, high_inclusive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _unsafe(
            source, f"`{key}` must be a number, got {type(value).__name__} "
            f"{value!r:.80}."
        )
    ok_low = value >= low if low_inclusive else value > low
    ok_high = value <= high if high_inclusive else value < high
    if not (math.isfinite(value) and ok_low and ok_high):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise _unsafe(
            source, f"`{key}` must be in {left}{low}, {high}{right}, got {value!r}."
        )
    return float(value)


def _check_keys(source, class_name, allowed, config):
    unknown = sorted(set(config) - set(allowed) - _BASE_KEYS)
    if unknown:
        raise _unsafe(
            source, f"unexpected arguments {unknown} for {class_name}."
        )


def estimate_backbone_parameters(config):
    """An upper estimate of a `CaiTBackbone`'s parameter count from its
    (validated) config dict."""
    d = config["hidden_dim"]
    h = config["num_heads"]
    height, width, channels = config["image_shape"]
    p = config["patch_size"]
    patches = (height // p) * (width // p)
    mlp = int(d * config.get("mlp_ratio", 4.0))
    ca_mlp = int(d * config.get("class_attention_mlp_ratio", 4.0))
    attention = 4 * d * d + 4 * d  # q, k, v and the output projection
    common = 6 * d  # two LayerNorms and two LayerScales
    sa_block = attention + 2 * h * h + 2 * h + common + 2 * d * mlp + mlp + d
    ca_block = attention + common + 2 * d * ca_mlp + ca_mlp + d
    embedding = p * p * channels * d + d + patches * d + d  # conv, pos, cls
    return (
        embedding
        + config["num_layers"] * sa_block
        + config["num_class_attention_layers"] * ca_block
        + 2 * d  # final LayerNorm
    )


def check_backbone_config(config, source="config", max_parameters=None):
    """Validates a `CaiTBackbone` config dict before anything is built.

    Args:
        config: dict, the `config` of a serialised `CaiTBackbone`.
        source: string naming where the config comes from, quoted in errors.
        max_parameters: int or `None`; refuse configs above this estimated
            parameter count (default 2 billion).

    Raises:
        CaiTUnsafeModelError: an argument has the wrong type, is out of
            range, is unknown, or the model would be too large.

    Example:
    ```python
    keras_cait.schema.check_backbone_config(backbone.get_config())
    ```
    """
    max_parameters = max_parameters or DEFAULT_MAX_PARAMETERS
    source = f"{source} (CaiTBackbone)"
    if not isinstance(config, dict):
        raise _unsafe(source, "the config must be an object.")
    _check_keys(source, "CaiTBackbone", BACKBONE_ARGUMENTS, config)
    for key in ("hidden_dim", "num_layers", "num_heads"):
        if key not in config:
            raise _unsafe(source, f"the required argument `{key}` is missing.")
    values = dict(config)
    for key, high in BACKBONE_INT_LIMITS.items():
        if key in values:
            _int_arg(source, key, values[key], 1, high)
    values.setdefault("patch_size", 16)
    values.setdefault("num_class_attention_layers", 2)
    image_shape = values.setdefault("image_shape", [224, 224, 3])
    if not isinstance(image_shape, (list, tuple)) or len(image_shape) != 3:
        raise _unsafe(
            source, "`image_shape` must be [height, width, channels], got "
            f"{image_shape!r:.80}."
        )
    for axis, value, high in zip(
        ("height", "width", "channels"), image_shape,
        (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE, MAX_CHANNELS),
    ):
        _int_arg(source, f"image_shape {axis}", value, 1, high)
    for axis, value in zip(("height", "width"), image_shape[:2]):
        if value % values["patch_size"]:
            raise _unsafe(
                source, f"the image {axis} {value} is not divisible by "
                f"`patch_size` {values['patch_size']}."
            )
    if values["hidden_dim"] % values["num_heads"]:
        raise _unsafe(source, "`hidden_dim` must be divisible by `num_heads`.")
    for key in ("mlp_ratio", "class_attention_mlp_ratio"):
        if key in values:
            _float_arg(source, key, values[key], 0, 64, low_inclusive=False)
    for key in ("dropout_rate", "attention_dropout", "drop_path_rate"):
        if key in values:
            _float_arg(source, key, values[key], 0, 1, high_inclusive=False)
    if "layer_scale_init_value" in values:
        _float_arg(source, "layer_scale_init_value",
                   values["layer_scale_init_value"], -1e6, 1e6)
    if "layer_norm_epsilon" in values:
        _float_arg(source, "layer_norm_epsilon", values["layer_norm_epsilon"],
                   0, 1, low_inclusive=False)
    if "use_qkv_bias" in values and not isinstance(values["use_qkv_bias"], bool):
        raise _unsafe(source, "`use_qkv_bias` must be true or false.")
    estimate = estimate_backbone_parameters(values)
    if estimate > max_parameters:
        raise _unsafe(
            source, f"the model would have about {estimate:,} parameters, "
            f"more than the limit of {max_parameters:,} (`max_parameters`)."
        )


def check_classifier_config(config, source="config", max_parameters=None):
    """Validates a `CaiTImageClassifier` config dict (and its backbone's)
    before anything is built.

    Args:
        config: dict, the `config` of a serialised `CaiTImageClassifier`.
        source: string naming where the config comes from, quoted in errors.
        max_parameters: int or `None`, passed to `check_backbone_config`.

    Raises:
        CaiTUnsafeModelError: an argument has the wrong type or is out of
            range.
    """
    source = f"{source} (CaiTImageClassifier)"
    if not isinstance(config, dict):
        raise _unsafe(source, "the config must be an object.")
    _check_keys(source, "CaiTImageClassifier", CLASSIFIER_ARGUMENTS, config)
    if "num_classes" not in config:
        raise _unsafe(source, "the required argument `num_classes` is missing.")
    _int_arg(source, "num_classes", config["num_classes"], 0, MAX_CLASSES)
    if config.get("pooling", "token") not in POOLINGS:
        raise _unsafe(
            source, f"`pooling` must be one of {POOLINGS}, got "
            f"{config.get('pooling')!r:.80}."
        )
    if "dropout" in config:
        _float_arg(source, "dropout", config["dropout"], 0, 1, high_inclusive=False)
    backbone = config.get("backbone")
    if not isinstance(backbone, dict) or backbone.get("class_name") != "CaiTBackbone":
        raise _unsafe(source, "`backbone` must be a serialised CaiTBackbone.")
