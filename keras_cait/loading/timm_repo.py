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
from keras_cait.errors import CaiTConfigError
from keras_cait.schema import IMAGENET_MEAN, IMAGENET_STD

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
    """A timm CaiT checkpoint: its architecture, head, preprocessing and
    where its weights are.

    Args:
        label: string naming the checkpoint in errors.
        architecture: string, timm's architecture (e.g. `"cait_xxs24_224"`).
        backbone_kwargs: dict. The `CaiTBackbone` arguments (checked).
        classifier_kwargs: dict. `num_classes`, `pooling` and `dropout`.
        preprocessing: dict. `image_size`, `crop_pct`, `interpolation`,
            `mean`, `std`.
        fetch_weights: callable returning the local path of the checkpoint's
            `model.safetensors` (it may download).
        sha256: `None` or the weights file's expected SHA-256 hex digest.
    """

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

    @classmethod
    def from_config(cls, config, source, fetch_weights=None):
        """The checkpoint a timm `config.json` describes.

        Args:
            config: dict. timm's `config.json`.
            source: string. Where it comes from, quoted in errors.
            fetch_weights: see the class.

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
        return cls(
            source,
            architecture,
            backbone_kwargs,
            classifier_kwargs_from_timm(arguments, source),
            _preprocessing(config, backbone_kwargs["image_shape"], source),
            fetch_weights,
        )

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
