"""The CaiT model: backbone, classifier, image converter, preprocessor and
presets side by side, as KerasHub's `models/vit/`. Importing the folder
registers the presets with KerasHub and lets KerasHub's base classes load
CaiT's timm checkpoints."""

# Private KerasHub API, checked against keras-hub 0.32.0 (pinned).
from keras_hub.src.utils.preset_utils import register_presets

from keras_cait.loading import keras_hub_dispatch
from keras_cait.models.cait_backbone import CaiTBackbone
from keras_cait.models.cait_presets import backbone_presets

register_presets(backbone_presets, CaiTBackbone)
keras_hub_dispatch.install()
