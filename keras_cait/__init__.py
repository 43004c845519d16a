"""keras-cait: CaiT image models for Keras 3 (TensorFlow, JAX, PyTorch).

Pick the backend with the `KERAS_BACKEND` environment variable before
importing Keras; keras-cait imports none of the backends itself.
"""

from keras_cait.attention import (
    attention_model,
    class_attention_grid,
    get_attention_maps,
    head_maps,
    saliency_map,
    upsample_maps,
)
from keras_cait.convert.timm_weights import load_timm_state_dict
from keras_cait.errors import (
    CaiTConfigError,
    CaiTError,
    CaiTFileNotFoundError,
    CaiTImageError,
    CaiTWeightsError,
)
from keras_cait.image_io import load_image
from keras_cait.layers import (
    CaiTMLP,
    ClassAttention,
    ClassAttentionBlock,
    ClassToken,
    DropPath,
    LayerScale,
    PatchEmbedding,
    SelfAttentionBlock,
    TalkingHeadsAttention,
)
from keras_cait.models import CaiTBackbone, CaiTImageClassifier
from keras_cait.preprocessing import (
    CaiTImageClassifierPreprocessor,
    CaiTImageConverter,
)
from keras_cait.presets import decode_predictions, get_preset, list_presets
from keras_cait.version import __version__

__all__ = [
    # attention maps (keras_cait.attention)
    "attention_model",
    "class_attention_grid",
    "get_attention_maps",
    "head_maps",
    "saliency_map",
    "upsample_maps",
    "CaiTBackbone",
    "CaiTConfigError",
    "CaiTError",
    "CaiTFileNotFoundError",
    "CaiTImageClassifier",
    "CaiTImageClassifierPreprocessor",
    "CaiTImageConverter",
    "CaiTImageError",
    "CaiTMLP",
    "CaiTWeightsError",
    "ClassAttention",
    "ClassAttentionBlock",
    "ClassToken",
    "DropPath",
    "LayerScale",
    "PatchEmbedding",
    "SelfAttentionBlock",
    "TalkingHeadsAttention",
    "__version__",
    "load_image",
    "decode_predictions",
    "get_preset",
    "list_presets",
    "load_timm_state_dict",
]
