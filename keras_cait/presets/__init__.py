"""Pretrained presets and `from_preset` loading (names, `hf://` handles,
local directories)."""

from keras_cait.presets.decode import decode_predictions
from keras_cait.presets.keras_hub_dispatch import install as _install_dispatch
from keras_cait.presets.registry import (
    get_preset,
    list_presets,
    register_presets,
)

register_presets()
_install_dispatch()

__all__ = ["decode_predictions", "get_preset", "list_presets", "register_presets"]
