"""Lets KerasHub's base classes load CaiT timm checkpoints.

KerasHub 0.32's `get_preset_loader` sends every `config.json` with an
`architecture` to `keras_hub.src.utils.timm.preset_loader.TimmPresetLoader`
(imported at call time), which rejects CaiT. `install()` replaces it with a
subclass that hands CaiT configs to `loader.get_loader`, for the KerasHub
releases it was checked against.
"""


import warnings

import keras_hub

# Private KerasHub module, checked against keras-hub 0.32.0.
from keras_hub.src.utils.timm import preset_loader as timm_module

from keras_cait.loading import loader

CHECKED_KERAS_HUB = ("0.32.",)


def is_cait_config(config):
    architecture = config.get("architecture") if isinstance(config, dict) else None
    return isinstance(architecture, str) and architecture.startswith("cait")


def install():
    """Installs the CaiT branch of KerasHub's timm dispatch.

    Returns:
        True if installed (or already installed), False for an unchecked
        KerasHub version (KerasHub's base classes then reject CaiT; the
        keras-cait classes keep working).
    """
    if not keras_hub.__version__.startswith(CHECKED_KERAS_HUB):
        warnings.warn(
            f"keras-cait: KerasHub {keras_hub.__version__} is not a version "
            "keras-cait's timm dispatch was checked against; use "
            "keras_cait.CaiTImageClassifier.from_preset(...) rather than "
            "keras_hub.models.ImageClassifier.from_preset(...).",
            stacklevel=2,
        )
        return False
    original = timm_module.TimmPresetLoader
    if getattr(original, "_keras_cait_dispatch", False):
        return True

    class TimmPresetLoader(original):
        """KerasHub's timm loader, with CaiT handled by keras-cait."""

        _keras_cait_dispatch = True

        def __new__(cls, preset, config):
            if is_cait_config(config):
                return loader.get_loader(preset, config=config)
            return super().__new__(cls)

    TimmPresetLoader.__module__ = original.__module__
    timm_module.TimmPresetLoader = TimmPresetLoader
    return True
