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
from keras_cait.convert.resample import (
    resample_position_embedding,
    with_image_shape,
)
from keras_cait.convert.timm_weights import load_timm_state_dict
from keras_cait.distribution import get_layout_map
from keras_cait.errors import (
    CaiTConfigError,
    CaiTError,
    CaiTFileNotFoundError,
    CaiTImageError,
    CaiTIntegrityError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from keras_cait.export import export_model
from keras_cait.finetuning import (
    LayerDecayAdamW,
    finetuning_optimizer,
    layer_decay_multipliers,
    load_for_finetuning,
)
from keras_cait.image_io import load_image
from keras_cait.intermediates import get_intermediate_outputs, intermediate_model
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
from keras_cait.safe_io import read_safetensors
from keras_cait.safe_loading import load_model
from keras_cait.version import __version__

__all__ = [
    "export_model",
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
    "CaiTIntegrityError",
    "CaiTMLP",
    "CaiTUnsafeModelError",
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
    # safe loading (keras_cait.safe_loading, keras_cait.safe_io)
    "load_model",
    "read_safetensors",
    # resolution, features, multi-device, fine-tuning (issue 6)
    "LayerDecayAdamW",
    "finetuning_optimizer",
    "get_intermediate_outputs",
    "get_layout_map",
    "intermediate_model",
    "layer_decay_multipliers",
    "load_for_finetuning",
    "resample_position_embedding",
    "with_image_shape",
]
