"""keras-cait: CaiT image models for Keras 3 (TensorFlow, JAX, PyTorch).

Pick the backend with the `KERAS_BACKEND` environment variable before
importing Keras; keras-cait imports none of the backends itself. Importing
the package registers its classes with Keras and its presets with KerasHub.
"""

from keras_cait.convert.resample import resample_position_embedding
from keras_cait.convert.timm_export import export_to_timm
from keras_cait.convert.timm_weights import load_timm_state_dict
from keras_cait.explain.saliency import (
    class_attention_grid,
    head_maps,
    saliency_map,
    upsample_maps,
)
from keras_cait.inference.batch_prediction import predict_files, write_predictions
from keras_cait.inference.evaluation import evaluate_folder
from keras_cait.inference.predictions import decode_predictions
from keras_cait.inference.ray_prediction import write_predictions_on_ray
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
from keras_cait.layers._fast_paths import set_fast_paths, use_fast_paths
from keras_cait.loading.safe_loading import load_model
from keras_cait.models import CaiTBackbone
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait.models.cait_image_classifier_preprocessor import (
    CaiTImageClassifierPreprocessor,
)
from keras_cait.models.cait_image_converter import CaiTImageConverter
from keras_cait.training.finetuning import (
    LayerDecayAdamW,
    finetuning_optimizer,
    layer_decay_multipliers,
    load_for_finetuning,
)
from keras_cait.training.resolution import with_image_shape
from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTError,
    CaiTFileNotFoundError,
    CaiTImageError,
    CaiTIntegrityError,
    CaiTUnsafeModelError,
    CaiTWeightsError,
)
from keras_cait_base.io.images import load_image
from keras_cait_base.io.records import read_records
from keras_cait_base.io.safetensors_io import read_safetensors
from keras_cait_base.registry import get_preset, list_presets
from keras_cait_base.version import __version__

__all__ = [
    "set_fast_paths",
    "use_fast_paths",
    "__version__",
    # models
    "CaiTBackbone",
    "CaiTImageClassifier",
    "CaiTImageClassifierPreprocessor",
    "CaiTImageConverter",
    # layers
    "CaiTMLP",
    "ClassAttention",
    "ClassAttentionBlock",
    "ClassToken",
    "DropPath",
    "LayerScale",
    "PatchEmbedding",
    "SelfAttentionBlock",
    "TalkingHeadsAttention",
    "CaiTConfigError",
    "CaiTError",
    "CaiTFileNotFoundError",
    "CaiTImageError",
    "CaiTIntegrityError",
    "CaiTUnsafeModelError",
    "CaiTWeightsError",
    # presets and weights
    "get_preset",
    "list_presets",
    "load_timm_state_dict",
    "export_to_timm",
    "read_safetensors",
    "load_model",
    # images, predictions, image collections (streamed to records), evaluation
    "load_image",
    "decode_predictions",
    "predict_files",
    "write_predictions",
    "write_predictions_on_ray",
    "read_records",
    "evaluate_folder",
    # attention pictures (the maps: model.get_attention_maps)
    "class_attention_grid",
    "head_maps",
    "saliency_map",
    "upsample_maps",
    # resolution, fine-tuning
    "resample_position_embedding",
    "with_image_shape",
    "LayerDecayAdamW",
    "finetuning_optimizer",
    "layer_decay_multipliers",
    "load_for_finetuning",
]
