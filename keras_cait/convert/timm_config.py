"""Reading timm CaiT configurations as `CaiTBackbone` arguments.

A timm `config.json` is read the way `timm.create_model(architecture,
**model_args)` reads it: the architecture's own arguments first, then every
`Cait` keyword of `model_args` on top.
"""

from keras_cait.errors import CaiTConfigError

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

# The expected Python types of each supported keyword.
_NUMBER = (int, float)
_KEYWORD_TYPES = dict(
    img_size=(int, list, tuple),
    patch_size=(int,),
    in_chans=(int,),
    num_classes=(int,),
    global_pool=(str,),
    embed_dim=(int,),
    depth=(int,),
    num_heads=(int,),
    mlp_ratio=_NUMBER,
    qkv_bias=(bool,),
    drop_rate=_NUMBER,
    pos_drop_rate=_NUMBER,
    proj_drop_rate=_NUMBER,
    attn_drop_rate=_NUMBER,
    drop_path_rate=_NUMBER,
    init_values=_NUMBER,
    depth_token_only=(int,),
    mlp_ratio_token_only=_NUMBER,
)


def _check_type(key, value, source):
    expected = _KEYWORD_TYPES[key]
    wrong_bool = isinstance(value, bool) and bool not in expected
    if wrong_bool or not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise CaiTConfigError(
            f"{source}: `model_args.{key}` must be {names}, got "
            f"{type(value).__name__} {value!r}."
        )
    if key == "img_size" and isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise CaiTConfigError(
                f"{source}: `model_args.img_size` must be an int or two "
                f"ints [height, width], got {value!r}."
            )


def resolve_timm_arguments(architecture, model_args=None, source="config.json"):
    """Merges a timm architecture's arguments with `model_args` overrides.

    Args:
        architecture: string. A timm CaiT architecture such as
            `"cait_xxs24_224"`.
        model_args: dict or `None`. `Cait` keywords that override the
            architecture's (timm's `config.json` `model_args`).
        source: string. Where the values come from, quoted in errors.

    Returns:
        A dict of every supported `Cait` keyword.

    Raises:
        CaiTConfigError: the architecture is not CaiT, a keyword is not
            supported, or a value has the wrong type.
    """
    if architecture not in TIMM_ARCHITECTURES:
        raise CaiTConfigError(
            f"{source}: architecture {architecture!r} is not a CaiT "
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
        if key not in _KEYWORD_TYPES:
            raise CaiTConfigError(
                f"{source}: `model_args.{key}` is not a timm `Cait` keyword "
                f"keras-cait supports (supported: {sorted(_KEYWORD_TYPES)})."
            )
        _check_type(key, value, source)
        arguments[key] = value
    if arguments["global_pool"] not in ("token", "avg"):
        raise CaiTConfigError(
            f"{source}: `global_pool` must be 'token' or 'avg', got "
            f"{arguments['global_pool']!r}."
        )
    if arguments["pos_drop_rate"] != arguments["proj_drop_rate"]:
        raise CaiTConfigError(
            f"{source}: keras-cait uses one `dropout_rate` for timm's "
            "`pos_drop_rate` and `proj_drop_rate`; got different values "
            f"{arguments['pos_drop_rate']} and {arguments['proj_drop_rate']}."
        )
    return arguments


def backbone_kwargs_from_timm(arguments):
    """Maps resolved timm `Cait` keywords to `CaiTBackbone` arguments."""
    img_size = arguments["img_size"]
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    return dict(
        image_shape=(int(img_size[0]), int(img_size[1]), arguments["in_chans"]),
        patch_size=arguments["patch_size"],
        hidden_dim=arguments["embed_dim"],
        num_layers=arguments["depth"],
        num_heads=arguments["num_heads"],
        num_class_attention_layers=arguments["depth_token_only"],
        mlp_ratio=float(arguments["mlp_ratio"]),
        class_attention_mlp_ratio=float(arguments["mlp_ratio_token_only"]),
        use_qkv_bias=arguments["qkv_bias"],
        layer_scale_init_value=float(arguments["init_values"]),
        dropout_rate=float(arguments["proj_drop_rate"]),
        attention_dropout=float(arguments["attn_drop_rate"]),
        drop_path_rate=float(arguments["drop_path_rate"]),
        layer_norm_epsilon=1e-6,
    )


def classifier_kwargs_from_timm(arguments):
    """Maps resolved timm `Cait` keywords to `CaiTImageClassifier` arguments
    (other than the backbone)."""
    return dict(
        num_classes=arguments["num_classes"],
        pooling=arguments["global_pool"],
        dropout=float(arguments["drop_rate"]),
    )
