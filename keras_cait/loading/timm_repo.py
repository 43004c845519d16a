"""timm-format repositories (`config.json` + `model.safetensors`).

A timm `config.json` is read the way `timm.create_model(architecture,
**model_args)` reads it (see `keras_cait.convert.timm_config`); its
`pretrained_cfg` gives the preprocessing.
"""

from keras_cait.convert.timm_config import (
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
)
from keras_cait.errors import CaiTConfigError
from keras_cait.schema import IMAGENET_MEAN, IMAGENET_STD, check_backbone_config

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
    """A timm CaiT checkpoint described by its `config.json`.

    Args:
        config: dict. timm's `config.json`.
        source: string. Where it comes from, quoted in errors.
    """

    def __init__(self, config, source):
        self.config = config
        self.source = source
        architecture = config.get("architecture")
        if not isinstance(architecture, str):
            raise CaiTConfigError(
                f"{source}: `architecture` must be a string naming a timm "
                f"model, got {architecture!r}."
            )
        self.arguments = resolve_timm_arguments(
            architecture, config.get("model_args"), source=source
        )
        self.architecture = architecture
        # Hostile sizes (e.g. depth 10**9) are refused before any building.
        check_backbone_config(self.backbone_kwargs(), source)

    def backbone_kwargs(self):
        """`CaiTBackbone` arguments of the checkpoint."""
        return backbone_kwargs_from_timm(self.arguments)

    def classifier_kwargs(self):
        """`CaiTImageClassifier` arguments (other than the backbone)."""
        return classifier_kwargs_from_timm(self.arguments)

    def preprocessing(self):
        """The evaluation preprocessing of the checkpoint's `pretrained_cfg`."""
        cfg = self.config.get("pretrained_cfg") or {}
        if not isinstance(cfg, dict):
            raise CaiTConfigError(f"{self.source}: `pretrained_cfg` must be an object.")
        height, width, _ = self.backbone_kwargs()["image_shape"]
        prep = dict(_DEFAULT_PREPROCESSING, image_size=[height, width])
        if "input_size" in cfg:
            size = cfg["input_size"]
            if (
                not isinstance(size, list)
                or len(size) != 3
                or not all(isinstance(v, int) for v in size)
            ):
                raise CaiTConfigError(
                    f"{self.source}: `pretrained_cfg.input_size` must be "
                    f"[channels, height, width], got {size!r}."
                )
            prep["image_size"] = list(size[1:])
        for key in ("crop_pct", "interpolation", "mean", "std"):
            if cfg.get(key) is not None:
                prep[key] = cfg[key]
        if not isinstance(prep["crop_pct"], (int, float)) or not 0 < prep["crop_pct"] <= 1:
            raise CaiTConfigError(
                f"{self.source}: `pretrained_cfg.crop_pct` must be a number "
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
                    f"{self.source}: `pretrained_cfg.{key}` must be three "
                    f"numbers, got {value!r}."
                )
            prep[key] = [float(v) for v in value]
        prep["crop_pct"] = float(prep["crop_pct"])
        return prep
