"""timm CaiT checkpoints: a repo or directory (`config.json` +
`model.safetensors`), or a shipped preset naming one.

A timm `config.json` is read the way `timm.create_model(architecture,
**model_args)` reads it (see `keras_cait.convert.timm_config`); its
`pretrained_cfg` gives the preprocessing.
"""

from keras_cait.convert.timm_config import (
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
    timm_arguments_from_keras,
)
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.schema import IMAGENET_MEAN, IMAGENET_STD

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# timm's defaults for ImageNet checkpoints, used when a config has no
# `pretrained_cfg` entry for them.
_DEFAULT_PREPROCESSING = dict(
    crop_pct=0.875,
    interpolation="bicubic",
    mean=list(IMAGENET_MEAN),
    std=list(IMAGENET_STD),
)


class TimmCheckpoint:
    """A timm CaiT checkpoint: `label` (naming it in errors), timm's
    `architecture`, the checked `backbone_kwargs`, `classifier_kwargs`
    (`num_classes`, `pooling`, `dropout`), `preprocessing` (`image_size`,
    `crop_pct`, `interpolation`, `mean`, `std`), `fetch_weights` (returns
    the local path of its `model.safetensors`; it may download) and the
    expected `sha256` of that file, or `None`."""

    def __init__(
        self,
        label,
        architecture,
        backbone_kwargs,
        classifier_kwargs,
        preprocessing,
        fetch_weights,
        sha256=None,
    ):
        self.label = label
        self.architecture = architecture
        self.backbone_kwargs = dict(backbone_kwargs)
        self.backbone_kwargs["image_shape"] = tuple(self.backbone_kwargs["image_shape"])
        self.classifier_kwargs = dict(classifier_kwargs)
        self.preprocessing = dict(preprocessing)
        self.fetch_weights = fetch_weights
        self.sha256 = sha256
        self.label_names = None  # timm's `label_names`, when the config has them

    @classmethod
    def from_config(cls, config, source, fetch_weights=None):
        """The checkpoint the timm `config.json` dict `config` describes
        (`source` names it in errors).

        Raises:

            CaiTConfigError: the config is not a CaiT config, or a value is
                of the wrong type; `CaiTUnsafeModelError` (a subclass) when
                it is out of range (e.g. `depth` 10**9), before anything is
                built.
        """
        architecture = config.get("architecture")
        if not isinstance(architecture, str):
            raise CaiTConfigError(
                f"{source}: `architecture` must be a string naming a timm "
                f"model, got {architecture!r:.80}."
            )
        arguments = resolve_timm_arguments(
            architecture, config.get("model_args"), source=source
        )
        backbone_kwargs = backbone_kwargs_from_timm(arguments, source)
        checkpoint = cls(
            source,
            architecture,
            backbone_kwargs,
            classifier_kwargs_from_timm(arguments, source),
            _preprocessing(config, backbone_kwargs["image_shape"], source),
            fetch_weights,
        )
        checkpoint.label_names = _label_names(config, checkpoint.classifier_kwargs)
        return checkpoint

    def timm_model_args(self):
        """The keywords of `timm.create_model(self.architecture, ...)` that
        build this checkpoint's model."""
        return timm_arguments_from_keras(self.backbone_kwargs, self.classifier_kwargs)


def _preprocessing(config, image_shape, source):
    """The evaluation preprocessing of a timm config's `pretrained_cfg`."""
    cfg = config.get("pretrained_cfg") or {}
    if not isinstance(cfg, dict):
        raise CaiTConfigError(f"{source}: `pretrained_cfg` must be an object.")
    prep = dict(_DEFAULT_PREPROCESSING, image_size=list(image_shape[:2]))
    if "input_size" in cfg:
        size = cfg["input_size"]
        if (
            not isinstance(size, list)
            or len(size) != 3
            or not all(isinstance(v, int) for v in size)
        ):
            raise CaiTConfigError(
                f"{source}: `pretrained_cfg.input_size` must be "
                f"[channels, height, width], got {size!r}."
            )
        prep["image_size"] = list(size[1:])
    for key in ("crop_pct", "interpolation", "mean", "std"):
        if cfg.get(key) is not None:
            prep[key] = cfg[key]
    if not isinstance(prep["crop_pct"], (int, float)) or not 0 < prep["crop_pct"] <= 1:
        raise CaiTConfigError(
            f"{source}: `pretrained_cfg.crop_pct` must be a number "
            f"in (0, 1], got {prep['crop_pct']!r}."
        )
    for key in ("mean", "std"):
        value = prep[key]
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in value
            )
        ):
            raise CaiTConfigError(
                f"{source}: `pretrained_cfg.{key}` must be three "
                f"numbers, got {value!r}."
            )
        prep[key] = [float(v) for v in value]
    prep["crop_pct"] = float(prep["crop_pct"])
    return prep


def _label_names(config, classifier_kwargs):
    """timm's `label_names` when they are one string per class, else `None`
    (timm also allows an id -> name object; the weights load either way)."""
    names = config.get("label_names")
    if (
        isinstance(names, list)
        and len(names) == classifier_kwargs["num_classes"]
        and all(isinstance(n, str) for n in names)
    ):
        return names
    return None
