"""The CaiT configuration schema: the arguments, their one validator
(`check_backbone_config`, also run with size limits on configurations read
from files), and the checkpoint layout they imply (`checkpoint_layout`:
timm's keys and shapes, the transpose to Keras layout and each Keras
variable's path). Nothing here imports Keras or a model.
"""

import collections
import math
import numbers

import numpy as np

from keras_cait_base.errors import CaiTConfigError, CaiTUnsafeModelError

# timm's evaluation transform for CaiT: ImageNet mean and standard deviation
# of [0, 1] pixels, and the resize filters a preset may name.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

# Pooling of `CaiTImageClassifier` (timm's `global_pool`).
POOLINGS = ("token", "avg")

# `CaiTBackbone`'s arguments and defaults (`None`: required), besides
# Keras's `name`, `trainable` and `dtype`; tests/test_models.py checks them
# against the signature.
BACKBONE_DEFAULTS = dict(
    hidden_dim=None,
    num_layers=None,
    num_heads=None,
    image_shape=(224, 224, 3),
    patch_size=16,
    num_class_attention_layers=2,
    mlp_ratio=4.0,
    class_attention_mlp_ratio=4.0,
    use_qkv_bias=True,
    layer_scale_init_value=1e-5,
    dropout_rate=0.0,
    attention_dropout=0.0,
    drop_path_rate=0.0,
    layer_norm_epsilon=1e-6,
    data_format=None,
    position_embedding_shape=None,
)
# `None` defaults that are not "required": `None` means a documented default.
_OPTIONAL_NONE = {"data_format", "position_embedding_shape"}
DATA_FORMATS = ("channels_last", "channels_first")
CLASSIFIER_ARGUMENTS = ("backbone", "num_classes", "preprocessor", "pooling",
                        "activation", "dropout", "head_dtype", "compile")
_KERAS_KEYS = {"name", "trainable", "dtype"}

# Limits for configurations read from files (`limits=True`); far above every
# published CaiT (depth 48, width 768, 448x448 images).
BACKBONE_INT_LIMITS = dict(
    hidden_dim=16384,
    num_layers=512,
    num_heads=1024,
    patch_size=1024,
    num_class_attention_layers=64,
)
# Images per forward pass when the caller gives none.
DEFAULT_BATCH_SIZE = 32
MAX_IMAGE_SIDE = 8192
MAX_CHANNELS = 64
MAX_MLP_RATIO = 64
MAX_CLASSES = 10_000_000
DEFAULT_MAX_PARAMETERS = 2_000_000_000


class _Checker:
    """Checks values one at a time, naming each as its source calls it."""

    def __init__(self, source, limits, names):
        self.source = source
        self.limits = limits
        self.names = names or {}
        self.error = CaiTUnsafeModelError if limits else CaiTConfigError

    def fail(self, message):
        return self.error(f"{self.source}: {message}")

    def label(self, key):
        return f"`{self.names.get(key, key)}`"

    def integer(self, key, value, low=1, high=math.inf):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.fail(
                f"{self.label(key)} must be int, got {type(value).__name__} "
                f"{value!r:.80}."
            )
        if not self.limits:
            high = math.inf
        if value < low or value > high:
            if high == math.inf:
                expected = "a positive integer" if low == 1 else f"an integer >= {low}"
            else:
                expected = f"in [{low}, {high}]"
            raise self.fail(f"{self.label(key)} must be {expected}, got {value}.")
        return int(value)

    def number(self, key, value, low, high, low_open=False, high_open=False):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail(
                f"{self.label(key)} must be a number, got "
                f"{type(value).__name__} {value!r:.80}."
            )
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            value = math.inf
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            if low == 0 and low_open and high == math.inf:
                expected = "positive"
            else:
                expected = (
                    f"in {'(' if low_open else '['}{low}, {high}"
                    f"{')' if high_open else ']'}"
                )
            raise self.fail(f"{self.label(key)} must be {expected}, got {value!r}.")
        return value

    def unknown_keys(self, config, allowed, class_name):
        unknown = sorted(set(config) - set(allowed) - _KERAS_KEYS)
        if unknown:
            raise self.fail(f"unexpected arguments {unknown} for {class_name}.")


def check_batch_size(value, name="batch_size"):
    """The one check of a `batch_size` argument (images per forward pass).

    Returns:
        `value` as a Python int.

    Raises:
        CaiTConfigError: (a `ValueError`) `value` is not a positive int (a
            bool is not; a NumPy integer is), naming `name`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise CaiTConfigError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def check_backbone_config(
    config, source="CaiTBackbone", limits=True, max_parameters=None, names=None
):
    """Validates `CaiTBackbone` arguments; returns them complete and normalised.

    Args:
        config: dict of `CaiTBackbone` arguments (the `config` of a
            serialised backbone, or keyword arguments). Keras's `name`,
            `trainable` and `dtype` pass through unchecked.
        source: string naming where the arguments come from, quoted in errors.
        limits: bool. `True` for configurations read from files: the integer
            arguments, image sides, `mlp_ratio`s and the parameter count
            (`max_parameters`) are bounded, and every error is a
            `CaiTUnsafeModelError`. `False` (what `CaiTBackbone` itself
            checks): the model's own constraints only, errors are
            `CaiTConfigError`.
        max_parameters: int or `None` (2 billion): with `limits`, the largest
            accepted parameter count (from `checkpoint_layout`).
        names: `None` or a dict naming arguments in errors as the source
            calls them, e.g. `{"num_layers": "model_args.depth"}`;
            `"image_shape height"`, `"image_shape width"` and
            `"image_shape channels"` name the parts of `image_shape`.

    Returns:
        A dict of every argument of `BACKBONE_DEFAULTS` (missing ones at
        their defaults), integers as `int`, rates and ratios as `float`,
        `image_shape` a tuple, plus `name`/`trainable`/`dtype` if given.

    Raises:
        CaiTConfigError: (`CaiTUnsafeModelError` with `limits`) an argument
            is missing, unknown, of the wrong type or out of range, the image
            sides are not divisible by `patch_size`, `hidden_dim` by
            `num_heads`, or the model would exceed `max_parameters`.

    """

    check = _Checker(source, limits, names)
    if not isinstance(config, dict):
        raise check.fail(
            f"the CaiTBackbone arguments must be an object, got "
            f"{type(config).__name__}."
        )
    check.unknown_keys(config, BACKBONE_DEFAULTS, "CaiTBackbone")
    values = {**BACKBONE_DEFAULTS, **config}
    for key, default in BACKBONE_DEFAULTS.items():
        if default is None and values[key] is None and key not in _OPTIONAL_NONE:
            raise check.fail(f"the required argument {check.label(key)} is missing.")
    for key in BACKBONE_INT_LIMITS:
        values[key] = check.integer(key, values[key], high=BACKBONE_INT_LIMITS[key])
    shape = values["image_shape"]
    if isinstance(shape, (str, bytes)) or not isinstance(
        shape, collections.abc.Sequence
    ) or len(shape) != 3:
        raise check.fail(
            f"{check.label('image_shape')} must be (height, width, channels), "
            f"got {shape!r:.80}."
        )
    highs = (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE, MAX_CHANNELS)
    axes = ("height", "width", "channels")
    # `None` height and width: any size at call time (both or neither).
    dynamic = shape[0] is None and shape[1] is None
    values["image_shape"] = tuple(
        None if dynamic and axis != "channels"
        else check.integer(f"image_shape {axis}", value, high=high)
        for axis, value, high in zip(axes, shape, highs)
    )
    for axis, side in zip(axes, values["image_shape"][:2]):
        if side is not None and side % values["patch_size"]:
            raise check.fail(
                f"the image {axis} {side} in {check.label(f'image_shape {axis}')} "
                f"is not divisible by {check.label('patch_size')} "
                f"({values['patch_size']})."
            )
    values["position_embedding_shape"] = _check_position_embedding_shape(
        check, values
    )
    if values["hidden_dim"] % values["num_heads"]:
        raise check.fail(
            f"{check.label('hidden_dim')} ({values['hidden_dim']}) must be "
            f"divisible by {check.label('num_heads')} ({values['num_heads']})."
        )
    ratio_high = MAX_MLP_RATIO if limits else math.inf
    for key in ("mlp_ratio", "class_attention_mlp_ratio"):
        values[key] = check.number(key, values[key], 0, ratio_high, low_open=True)
    for key in ("dropout_rate", "attention_dropout", "drop_path_rate"):
        values[key] = check.number(key, values[key], 0, 1, high_open=True)
    values["layer_scale_init_value"] = check.number(
        "layer_scale_init_value", values["layer_scale_init_value"], -1e6, 1e6
    )
    values["layer_norm_epsilon"] = check.number(
        "layer_norm_epsilon", values["layer_norm_epsilon"], 0, 1, low_open=True
    )
    # `None` is `keras.config.image_data_format()`, resolved by the model.
    if values["data_format"] is not None and values["data_format"] not in DATA_FORMATS:
        raise check.fail(
            f"{check.label('data_format')} must be None or one of {DATA_FORMATS}, got "
            f"{values['data_format']!r:.80}."
        )
    if not isinstance(values["use_qkv_bias"], bool):
        raise check.fail(f"{check.label('use_qkv_bias')} must be true or false.")
    if limits:
        max_parameters = max_parameters or DEFAULT_MAX_PARAMETERS
        count = sum(math.prod(t.shape) for t in checkpoint_layout(values))
        if count > max_parameters:
            raise check.fail(
                f"the model would have {count:,} parameters, more than the "
                f"limit of {max_parameters:,} (`max_parameters`)."
            )
    return values


def _check_position_embedding_shape(check, values):
    """`position_embedding_shape` as `None` or a tuple `(height, width)` of
    sides divisible by `patch_size`; required when `image_shape` has `None`
    sides."""
    shape = values["position_embedding_shape"]
    label = check.label("position_embedding_shape")
    if shape is None:
        if values["image_shape"][0] is None:
            raise check.fail(
                f"{label} (height, width) is required when "
                f"{check.label('image_shape')} is (None, None, channels): the "
                "position embedding is stored for that size and resampled to "
                "each input's patch grid."
            )
        return None
    if isinstance(shape, (str, bytes)) or not isinstance(
        shape, collections.abc.Sequence
    ) or len(shape) != 2:
        raise check.fail(f"{label} must be None or (height, width), got {shape!r:.80}.")
    sides = tuple(
        check.integer(f"position_embedding_shape {axis}", side, high=MAX_IMAGE_SIDE)
        for axis, side in zip(("height", "width"), shape)
    )
    for side in sides:
        if side % values["patch_size"]:
            raise check.fail(
                f"{label} {sides} is not divisible by "
                f"{check.label('patch_size')} ({values['patch_size']})."
            )
    return sides


def position_embedding_grid(config):
    """The patch grid `(rows, columns)` the position embedding is stored
    for: `position_embedding_shape`, else `image_shape`, over `patch_size`."""
    k = {**BACKBONE_DEFAULTS, **config}
    height, width = k["position_embedding_shape"] or k["image_shape"][:2]
    return height // k["patch_size"], width // k["patch_size"]


def check_classifier_config(config, source="CaiTImageClassifier", limits=True,
                            max_parameters=None, names=None):
    """Validates `CaiTImageClassifier` arguments (and a serialised backbone's).

    Args:
        config: dict of `CaiTImageClassifier` arguments, e.g. the `config`
            of a serialised classifier. A `backbone` entry, if present, must
            be a serialised `CaiTBackbone` (its arguments are checked).
        source, limits, max_parameters, names: as `check_backbone_config`
            (`limits` also bounds `num_classes` by `MAX_CLASSES`).

    Returns:
        A dict of `num_classes` (int), `pooling` and `dropout` (float).

    Raises:
        CaiTConfigError: (`CaiTUnsafeModelError` with `limits`) an argument
            is unknown, missing, of the wrong type or out of range.
    """
    check = _Checker(source, limits, names)
    if not isinstance(config, dict):
        raise check.fail(
            "the CaiTImageClassifier arguments must be an object, got "
            f"{type(config).__name__}."
        )
    check.unknown_keys(config, CLASSIFIER_ARGUMENTS, "CaiTImageClassifier")
    if "num_classes" not in config:
        raise check.fail(f"the required argument {check.label('num_classes')} is missing.")
    values = dict(
        num_classes=check.integer(
            "num_classes", config["num_classes"], low=0, high=MAX_CLASSES
        ),
        pooling=config.get("pooling", "token"),
        dropout=check.number("dropout", config.get("dropout", 0.0), 0, 1, high_open=True),
    )
    if values["pooling"] not in POOLINGS:
        raise check.fail(
            f"{check.label('pooling')} must be one of {POOLINGS}, got "
            f"{values['pooling']!r:.80}."
        )
    if "backbone" in config:
        backbone = config["backbone"]
        if not isinstance(backbone, dict) or backbone.get("class_name") != "CaiTBackbone":
            raise check.fail("`backbone` must be a serialised CaiTBackbone.")
        check_backbone_config(
            backbone.get("config"), f"{source}: CaiTBackbone", limits, max_parameters
        )
    return values


# ---------------------------------------------------------------------------
# The checkpoint layout


CheckpointTensor = collections.namedtuple("CheckpointTensor", "key shape axes path")
CheckpointTensor.__doc__ = """One tensor of a CaiT checkpoint.

Attributes:
    key: timm's key (`state_dict` name), e.g. `"blocks.0.attn.qkv.weight"`.
    shape: tuple, its shape in timm (PyTorch) layout.
    axes: `None` (same layout) or the permutation taking it to Keras layout
        (`numpy.transpose(array, axes)`).
    path: the Keras variable's path (`keras.Variable.path`), e.g.
        `"self_attention_block_0/attn/qkv/kernel"`.
"""

def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _channel_values(name, values, positive):
    try:
        values = tuple(float(v) for v in np.ravel(values))
    except (TypeError, ValueError):
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise CaiTConfigError(
            f"CaiTImageConverter: `{name}` must be one finite float or three "
            f"(one per RGB channel). Received: {values!r}"
        )
    if positive and min(values) <= 0:
        raise CaiTConfigError(
            f"CaiTImageConverter: `{name}` must be positive. Received: {values!r}"
        )
    return values


def check_converter_config(
    image_size, crop_pct, interpolation, mean, std, keep_aspect_ratio, size_multiple
):
    """The check of `CaiTImageConverter`'s arguments (timm's evaluation
    transform; see its docstring).

    Returns:
        A dict of the arguments, standardised: `image_size` a `(height,
        width)` pair of ints, `crop_pct` a float, `mean` and `std` three
        floats each, `size_multiple` an int.

    Raises:
        CaiTConfigError: (a `ValueError`) an argument of the wrong type or
            out of range, naming it.
    """
    def fail(argument, expected, value):
        return CaiTConfigError(
            f"CaiTImageConverter: `{argument}` must be {expected}. Received: {value!r}"
        )

    if not isinstance(keep_aspect_ratio, bool):
        raise fail("keep_aspect_ratio", "a bool", keep_aspect_ratio)
    if not _is_int(size_multiple) or size_multiple < 1:
        raise fail("size_multiple", "a positive int (the model's patch size)", size_multiple)
    size = (image_size, image_size) if _is_int(image_size) else image_size
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(_is_int(v) and v >= 1 for v in size)
    ):
        raise fail(
            "image_size", "a positive int or a (height, width) pair of positive ints",
            image_size,
        )
    if (
        isinstance(crop_pct, bool)
        or not isinstance(crop_pct, numbers.Real)
        or not 0.0 < crop_pct <= 1.0
    ):
        raise fail("crop_pct", "a float in (0, 1]", crop_pct)
    if interpolation not in INTERPOLATIONS:
        raise fail("interpolation", f"one of {INTERPOLATIONS}", interpolation)
    return dict(
        image_size=(int(size[0]), int(size[1])),
        crop_pct=float(crop_pct),
        mean=_channel_values("mean", mean, positive=False),
        std=_channel_values("std", std, positive=True),
        size_multiple=int(size_multiple),
    )


_LINEAR = (1, 0)  # nn.Linear (out, in) -> Dense kernel (in, out)
_CONV = (2, 3, 1, 0)  # nn.Conv2d (out, in, kh, kw) -> Conv2D kernel (kh, kw, in, out)


def keras_shape(tensor):
    """The Keras-layout shape of a `CheckpointTensor`."""
    if tensor.axes is None:
        return tensor.shape
    return tuple(tensor.shape[axis] for axis in tensor.axes)


def checkpoint_layout(config, num_classes=0):
    """The tensors of a CaiT checkpoint for these arguments, in timm's names
    and layouts, computed from the arguments alone (nothing is built).

    The keys and shapes are those of timm's `Cait(...).state_dict()`; the
    paths are those of `CaiTImageClassifier(CaiTBackbone(**config),
    num_classes)`'s variables (its head is the layer `predictions`).

    Args:
        config: dict of (valid) `CaiTBackbone` arguments; missing ones take
            their defaults.
        num_classes: int. The head's classes; `0` means no `head.*` tensors.

    Returns:
        A list of `CheckpointTensor`, in timm's module order (embeddings,
        blocks, class-attention blocks, final norm, head).
    """
    k = {**BACKBONE_DEFAULTS, **config}
    height, width, channels = k["image_shape"]
    p, d, heads = k["patch_size"], k["hidden_dim"], k["num_heads"]
    layout = []

    def add(key, shape, path, axes=None):
        layout.append(CheckpointTensor(key, tuple(shape), axes, path))

    def linear(key, path, in_dim, out_dim, bias=True):
        add(f"{key}.weight", (out_dim, in_dim), f"{path}/kernel", _LINEAR)
        if bias:
            add(f"{key}.bias", (out_dim,), f"{path}/bias")

    def norm(key, path):
        add(f"{key}.weight", (d,), f"{path}/gamma")
        add(f"{key}.bias", (d,), f"{path}/beta")

    def block(key, path, mlp_ratio):
        add(f"{key}.gamma_1", (d,), f"{path}/layer_scale_1/gamma")
        add(f"{key}.gamma_2", (d,), f"{path}/layer_scale_2/gamma")
        norm(f"{key}.norm1", f"{path}/norm1")
        norm(f"{key}.norm2", f"{path}/norm2")
        hidden = int(d * mlp_ratio)
        linear(f"{key}.mlp.fc1", f"{path}/mlp/fc1", d, hidden)
        linear(f"{key}.mlp.fc2", f"{path}/mlp/fc2", hidden, d)

    add("cls_token", (1, 1, d), "class_token/class_token")
    rows, columns = position_embedding_grid(k)
    add("pos_embed", (1, rows * columns, d),
        "patch_embedding/position_embedding")
    add("patch_embed.proj.weight", (d, channels, p, p),
        "patch_embedding/projection/kernel", _CONV)
    add("patch_embed.proj.bias", (d,), "patch_embedding/projection/bias")
    for i in range(k["num_layers"]):
        key, path = f"blocks.{i}", f"self_attention_block_{i}"
        block(key, path, k["mlp_ratio"])
        linear(f"{key}.attn.qkv", f"{path}/attn/qkv", d, 3 * d, k["use_qkv_bias"])
        linear(f"{key}.attn.proj", f"{path}/attn/proj", d, d)
        linear(f"{key}.attn.proj_l", f"{path}/attn/proj_l", heads, heads)
        linear(f"{key}.attn.proj_w", f"{path}/attn/proj_w", heads, heads)
    for i in range(k["num_class_attention_layers"]):
        key, path = f"blocks_token_only.{i}", f"class_attention_block_{i}"
        block(key, path, k["class_attention_mlp_ratio"])
        for name in ("q", "k", "v"):
            linear(f"{key}.attn.{name}", f"{path}/attn/{name}", d, d, k["use_qkv_bias"])
        linear(f"{key}.attn.proj", f"{path}/attn/proj", d, d)
    norm("norm", "final_layernorm")
    if num_classes:
        linear("head", "predictions", d, num_classes)
    return layout
