"""Running a built CaiT model at another resolution.

`from_preset(..., image_shape=...)` changes the resolution while loading; this
changes it on a model already in memory (e.g. one loaded from a `.keras`
file), resampling the position embedding as timm's
`resample_abs_pos_embed` does.
"""

from keras_cait.convert.timm_weights import ModelTensors, load_timm_weights
from keras_cait.models.cait_backbone import CaiTBackbone
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait_base.errors import CaiTConfigError


def with_image_shape(model, image_shape):
    """A copy of a keras-cait model built for another input size.

    Rebuilds the model from its config with the new `image_shape` and copies
    every weight through `load_timm_weights`, which resamples the position
    embedding. For checkpoints on disk, `from_preset(handle,
    image_shape=...)` does the same in one step.


    Args:
        model: a `CaiTBackbone` or `CaiTImageClassifier` (e.g. loaded with
            `keras.saving.load_model`).
        image_shape: `(height, width, channels)`; height and width divisible
            by the patch size, channels as in `model`; `(None, None,
            channels)` for any size at call time (the position embedding
            stays stored at the model's size and is resampled per call).

    Returns:
        A new model of the same class. A classifier's preprocessor is copied
        with its image size set to the new height and width.

    Raises:
        CaiTConfigError: `model` is not a keras-cait model, or the channels
            differ.
        CaiTWeightsError: the model's variables are not CaiT's (e.g. a
            quantized model).

    Example:
    ```python
    model = keras.saving.load_model("cait_224.keras")
    model_384 = with_image_shape(model, (384, 384, 3))
    model_384.save("cait_384.keras")
    ```
    """
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, CaiTBackbone) or not (
        model is backbone or isinstance(model, CaiTImageClassifier)
    ):
        raise CaiTConfigError(
            "`model` must be a keras_cait.CaiTBackbone or CaiTImageClassifier, "
            f"got {type(model).__name__}."
        )
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or image_shape[2] != backbone.image_shape[2]:
        raise CaiTConfigError(
            f"`image_shape` must be (height, width, {backbone.image_shape[2]}) "
            f"for this model, got {image_shape!r}."
        )
    config = backbone.get_config()
    config["image_shape"] = image_shape
    # Any size: the embedding stays at its stored grid; a fixed size:
    # resampled once, below.
    config["position_embedding_shape"] = (
        tuple(backbone.grid_size[i] * backbone.patch_size for i in (0, 1))
        if image_shape[0] is None
        else None
    )
    new_backbone = type(backbone).from_config(config)
    if model is backbone:
        new_model = new_backbone
    else:
        preprocessor = None
        if model.preprocessor is not None:
            preprocessor = type(model.preprocessor).from_config(
                model.preprocessor.get_config()
            )
            converter = getattr(preprocessor, "image_converter", None)
            if image_shape[0] is not None and hasattr(converter, "image_size"):
                converter.image_size = image_shape[:2]
        config = model.get_config()
        config.update(backbone=new_backbone, preprocessor=preprocessor)
        config["compile"] = False
        new_model = type(model).from_config(config)

    load_timm_weights(
        new_model, ModelTensors(model), model.name, source_grid=backbone.grid_size
    )
    return new_model
