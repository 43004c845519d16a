"""timm's CaiT keywords <-> keras-cait's arguments, both directions: a timm
`config.json` read as `timm.create_model(architecture, **model_args)` reads
it, checked by `keras_cait_base.schema` under timm's names, and back."""

import math

from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.schema import check_backbone_config, check_classifier_config

# The arguments timm's `cait.py` gives each registered architecture
# (`img_size` comes from the architecture's pretrained config).
TIMM_ARCHITECTURES = {
    "cait_xxs24_224": dict(img_size=224, embed_dim=192, depth=24, num_heads=4, init_values=1e-5),
    "cait_xxs24_384": dict(img_size=384, embed_dim=192, depth=24, num_heads=4, init_values=1e-5),
    "cait_xxs36_224": dict(img_size=224, embed_dim=192, depth=36, num_heads=4, init_values=1e-5),
    "cait_xxs36_384": dict(img_size=384, embed_dim=192, depth=36, num_heads=4, init_values=1e-5),
    "cait_xs24_384": dict(img_size=384, embed_dim=288, depth=24, num_heads=6, init_values=1e-5),
    "cait_s24_224": dict(img_size=224, embed_dim=384, depth=24, num_heads=8, init_values=1e-5),
    "cait_s24_384": dict(img_size=384, embed_dim=384, depth=24, num_heads=8, init_values=1e-5),
    "cait_s36_384": dict(img_size=384, embed_dim=384, depth=36, num_heads=8, init_values=1e-6),
    "cait_m36_384": dict(img_size=384, embed_dim=768, depth=36, num_heads=16, init_values=1e-6),
    "cait_m48_448": dict(img_size=448, embed_dim=768, depth=48, num_heads=16, init_values=1e-6),
}

# timm's `Cait.__init__` defaults for the keywords keras-cait supports.
TIMM_CAIT_DEFAULTS = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    num_classes=1000,
    global_pool="token",
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    drop_rate=0.0,
    pos_drop_rate=0.0,
    proj_drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
    init_values=1e-4,
    depth_token_only=2,
    mlp_ratio_token_only=4.0,
)

# timm `Cait` keyword -> `CaiTBackbone` argument. Besides these, `img_size`
# and `in_chans` make `image_shape`, and `pos_drop_rate` must equal
# `proj_drop_rate` (keras-cait has one `dropout_rate` for both).
BACKBONE_KEYWORDS = dict(
    patch_size="patch_size",
    embed_dim="hidden_dim",
    depth="num_layers",
    num_heads="num_heads",
    depth_token_only="num_class_attention_layers",
    mlp_ratio="mlp_ratio",
    mlp_ratio_token_only="class_attention_mlp_ratio",
    qkv_bias="use_qkv_bias",
    init_values="layer_scale_init_value",
    proj_drop_rate="dropout_rate",
    attn_drop_rate="attention_dropout",
    drop_path_rate="drop_path_rate",
)
# timm `Cait` keyword -> `CaiTImageClassifier` argument.
CLASSIFIER_KEYWORDS = dict(num_classes="num_classes", global_pool="pooling", drop_rate="dropout")
# timm's CaiT LayerNorms (`partial(nn.LayerNorm, eps=1e-6)`).
TIMM_LAYER_NORM_EPSILON = 1e-6

# How errors name each argument: as `config.json` does.
_TIMM_NAMES = {
    **{keras: f"model_args.{timm}" for timm, keras in BACKBONE_KEYWORDS.items()},
    **{keras: f"model_args.{timm}" for timm, keras in CLASSIFIER_KEYWORDS.items()},
    "image_shape": "model_args.img_size",
    "image_shape height": "model_args.img_size",
    "image_shape width": "model_args.img_size",
    "image_shape channels": "model_args.in_chans",
}


def resolve_timm_arguments(architecture, model_args=None, source="config.json"):
    """Every supported timm `Cait` keyword: the `architecture`'s (e.g.
    `"cait_xxs24_224"`) with `model_args` (timm's `config.json` entry) on
    top. Only the keywords are checked here, not their values.

    Raises:
        CaiTConfigError: the architecture is not CaiT, a keyword is not
            supported, `img_size` is neither an int nor `[height, width]`,
            or `pos_drop_rate` differs from `proj_drop_rate`.
    """
    if architecture not in TIMM_ARCHITECTURES:
        raise CaiTConfigError(
            f"{source}: architecture {architecture!r:.80} is not a CaiT "
            f"architecture; expected one of {sorted(TIMM_ARCHITECTURES)}."
        )
    arguments = dict(TIMM_CAIT_DEFAULTS)
    arguments.update(TIMM_ARCHITECTURES[architecture])
    model_args = model_args or {}
    if not isinstance(model_args, dict):
        raise CaiTConfigError(
            f"{source}: `model_args` must be an object, got "
            f"{type(model_args).__name__}."
        )
    for key, value in model_args.items():
        if key not in TIMM_CAIT_DEFAULTS:
            raise CaiTConfigError(
                f"{source}: `model_args.{key}` is not a timm `Cait` keyword "
                f"keras-cait supports (supported: {sorted(TIMM_CAIT_DEFAULTS)})."
            )
        arguments[key] = value
    if isinstance(arguments["img_size"], (list, tuple)) and len(arguments["img_size"]) != 2:
        raise CaiTConfigError(
            f"{source}: `model_args.img_size` must be an int or [height, "
            f"width], got {arguments['img_size']!r:.80}."
        )
    if arguments["pos_drop_rate"] != arguments["proj_drop_rate"]:
        raise CaiTConfigError(
            f"{source}: keras-cait uses one `dropout_rate` for timm's "
            "`pos_drop_rate` and `proj_drop_rate`; got different values "
            f"{arguments['pos_drop_rate']!r:.40} and "
            f"{arguments['proj_drop_rate']!r:.40}."
        )
    return arguments


def backbone_kwargs_from_timm(arguments, source="config.json"):
    """`CaiTBackbone` arguments of resolved timm `Cait` keywords, checked by
    `keras_cait_base.schema.check_backbone_config` (with its size limits; errors
    name timm's keywords, e.g. `model_args.depth`).

    Raises:
        CaiTUnsafeModelError: a value has the wrong type or is out of range.
    """
    img_size = arguments["img_size"]
    if not isinstance(img_size, (list, tuple)):
        img_size = (img_size, img_size)
    kwargs = {keras: arguments[timm] for timm, keras in BACKBONE_KEYWORDS.items()}
    kwargs["image_shape"] = (*img_size, arguments["in_chans"])
    kwargs["layer_norm_epsilon"] = TIMM_LAYER_NORM_EPSILON
    return check_backbone_config(kwargs, source, names=_TIMM_NAMES)


def classifier_kwargs_from_timm(arguments, source="config.json"):
    """`CaiTImageClassifier` arguments (`num_classes`, `pooling`, `dropout`)
    of resolved timm `Cait` keywords, checked as `backbone_kwargs_from_timm`.
    """
    kwargs = {keras: arguments[timm] for timm, keras in CLASSIFIER_KEYWORDS.items()}
    return check_classifier_config(kwargs, source, names=_TIMM_NAMES)


def timm_arguments_from_keras(backbone_kwargs, classifier_kwargs=None):
    """timm `Cait` keywords building the same model as `backbone_kwargs` and
    `classifier_kwargs` (`None`: 1000 classes, `"token"`, no dropout), the
    inverse of `backbone_kwargs_from_timm` and `classifier_kwargs_from_timm`.

    Raises:

        CaiTConfigError: the arguments are invalid, or `layer_norm_epsilon`
            is not timm's 1e-6 (timm's `Cait` has no keyword for it).
    """
    backbone = check_backbone_config(backbone_kwargs, "CaiTBackbone", limits=False)
    head = {"num_classes": 1000, **(classifier_kwargs or {})}
    head = check_classifier_config(head, "CaiTImageClassifier", limits=False)
    if not math.isclose(backbone["layer_norm_epsilon"], TIMM_LAYER_NORM_EPSILON):
        raise CaiTConfigError(
            f"`layer_norm_epsilon={backbone['layer_norm_epsilon']}` has no timm "
            f"equivalent; timm's CaiT uses {TIMM_LAYER_NORM_EPSILON}."
        )
    height, width, channels = backbone["image_shape"]
    # A model of any input size: timm's `img_size` is the stored grid's.
    height, width = backbone["position_embedding_shape"] or (height, width)
    keywords = {timm: backbone[keras] for timm, keras in BACKBONE_KEYWORDS.items()}
    keywords.update({timm: head[keras] for timm, keras in CLASSIFIER_KEYWORDS.items()})
    keywords.update(
        img_size=height if height == width else [height, width],
        in_chans=channels,
        pos_drop_rate=backbone["dropout_rate"],
    )
    return keywords
