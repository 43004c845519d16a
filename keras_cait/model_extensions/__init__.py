"""What the model classes attach beyond the maths, kept out of `models/`:
derived models (attention maps, intermediates), lists of photos of any
sizes, and KerasHub 0.32 workarounds for `fit()` and saved training state
(docs/keras_hub_upstream.md)."""

from keras_cait.model_extensions.image_lists import ImageListPredict
from keras_cait.model_extensions.training_state import TrainingState


class TaskMixin(ImageListPredict, TrainingState):
    """`predict()` on lists of photos, `fit()` and `compile_from_config()`
    for a KerasHub task. Put it first among the bases."""


__all__ = ["TaskMixin"]
