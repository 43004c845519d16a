"""CaiTImageClassifierPreprocessor: the preprocessor of CaiTImageClassifier."""

from keras_hub.models import ImageClassifierPreprocessor

from keras_cait.loading.loader import load_preset
from keras_cait.models.cait_backbone import CaiTBackbone
from keras_cait.models.cait_image_converter import CaiTImageConverter
from keras_cait.serialization import register


@register
class CaiTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Image classification preprocessor for CaiT.

    Runs a `CaiTImageConverter` (timm's evaluation transform) on `x` and
    passes `y` and `sample_weight` through unchanged. Attached to a
    `keras_cait.CaiTImageClassifier`, it runs inside `predict()`, `fit()` and
    `evaluate()`, so these take raw images (uint8 or float in `[0, 255]`);
    calling the model directly (`model(x)`) never preprocesses.

    Args:
        image_converter: a `keras_cait.CaiTImageConverter`, or `None` to pass
            images through unchanged.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        x: one image `(height, width, channels)` or a batch
            `(batch, height, width, channels)`; see `CaiTImageConverter`.
        y: optional labels, passed through.
        sample_weight: optional sample weights, passed through.

    Returns:
        `x`, `(x, y)` or `(x, y, sample_weight)` like
        `keras.utils.pack_x_y_sample_weight`.

    Example:
    ```python
    preprocessor = keras_cait.CaiTImageClassifierPreprocessor(
        keras_cait.CaiTImageConverter(image_size=224)
    )
    classifier = keras_cait.CaiTImageClassifier(
        backbone, num_classes=1000, preprocessor=preprocessor
    )
    logits = classifier.predict(raw_uint8_images)
    ```
    """

    backbone_cls = CaiTBackbone
    image_converter_cls = CaiTImageConverter

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Instantiates the preprocessor of a preset (its
        `CaiTImageConverter` carries the preset's timm transform; a preset
        name needs no network); see `CaiTBackbone.from_preset`."""
        return load_preset(cls, preset, **kwargs)
