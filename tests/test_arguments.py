"""A new user's mistakes in Python: a misspelt keyword argument is an
error naming the nearest valid one, and a list of photos of any sizes
works in `predict`, `get_attention_maps` and the converter."""

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.models.cait_image_converter import stack_images
from keras_cait_base.errors import CaiTConfigError, CaiTImageError
from tests.hf_cache import TIMM


@pytest.mark.parametrize(
    "call, wrong, right",
    [
        (lambda: keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224", num_class=3),
         "num_class", "num_classes"),
        (lambda: keras_cait.CaiTBackbone.from_preset("cait_xxs24_224", drop_path=0.1),
         "drop_path", "drop_path_rate"),
        (lambda: keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224", load_weight=False),
         "load_weight", "load_weights"),
        (lambda: keras_cait.CaiTBackbone.from_preset("cait_xxs24_224", load_weight=False),
         "load_weight", "load_weights"),
        (lambda: keras_cait.CaiTImageClassifierPreprocessor.from_preset("cait_xxs24_224", image_sise=96),
         "image_sise", "image_size"),
        (lambda: keras_cait.CaiTImageConverter.from_preset("cait_xxs24_224", crop_pc=0.9),
         "crop_pc", "crop_pct"),
        (lambda: keras_cait.load_for_finetuning("cait_xxs24_224", 3, drop_path=0.1),
         "drop_path", "drop_path_rate"),
        (lambda: keras_cait.finetuning_optimizer(None, 1e-4, beta1=0.8),
         "beta1", "beta_1"),
    ],
)
def test_a_misspelt_keyword_argument_names_the_nearest_valid_one(call, wrong, right):
    with pytest.raises(CaiTConfigError, match=rf"unexpected keyword argument '{wrong}'\. Did you mean '{right}'\?"):
        call()


def test_a_keyword_argument_far_from_any_is_refused_with_the_valid_names():
    with pytest.raises(CaiTConfigError, match=r"'nonsense_kwarg'\. Valid keyword arguments: .*num_classes"):
        keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224", nonsense_kwarg=1)


def test_valid_keyword_arguments_still_work():
    model = keras_cait.CaiTImageClassifier.from_preset(
        str(TIMM / "tiny_token_head"), num_classes=3, drop_path_rate=0.1,
        dtype="float32", name="small",
    )
    assert model.num_classes == 3 and model.backbone.drop_path_rate == 0.1
    assert model.name == "small"


@pytest.fixture(scope="module")
def small_classifier():
    converter = keras_cait.CaiTImageConverter(image_size=32)
    backbone = keras_cait.CaiTBackbone(
        hidden_dim=48, num_layers=1, num_heads=1, image_shape=(32, 32, 3),
        num_class_attention_layers=1,
    )
    return keras_cait.CaiTImageClassifier(
        backbone, 3, preprocessor=keras_cait.CaiTImageClassifierPreprocessor(converter)
    )


def _photos():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype="uint8") for shape in ((40, 50, 3), (60, 30, 3))]


def test_the_converter_returns_a_list_for_photos_of_different_sizes():
    converter = keras_cait.CaiTImageConverter(image_size=32)
    photos = _photos()
    outputs = converter(photos)
    assert isinstance(outputs, list) and len(outputs) == 2  # as KerasHub's converters
    for photo, output in zip(photos, outputs):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(output),
                                      keras.ops.convert_to_numpy(converter(photo)))
    same = converter([photos[0], photos[0]])  # one size: a stacked batch
    assert tuple(same.shape) == (2, 32, 32, 3)
    assert stack_images(outputs).shape == (2, 32, 32, 3)


def test_predict_and_attention_maps_take_photos_of_any_sizes(small_classifier):
    photos = _photos()
    logits = small_classifier.predict(photos, verbose=0)
    converter = small_classifier.preprocessor.image_converter
    inputs = np.stack([keras.ops.convert_to_numpy(converter(p)) for p in photos])
    one_by_one = keras.ops.convert_to_numpy(small_classifier(inputs))
    np.testing.assert_allclose(logits, one_by_one, atol=1e-5)
    maps = small_classifier.get_attention_maps(photos)
    np.testing.assert_allclose(maps["predictions"], one_by_one, atol=1e-5)
    assert maps["class_attention_0"].shape[0] == 2


def test_unpreprocessed_photos_of_different_sizes_name_the_sizes(small_classifier):
    with pytest.raises(CaiTImageError, match=r"different sizes \[\(40, 50, 3\), \(60, 30, 3\)\]"):
        small_classifier.get_attention_maps(_photos(), preprocess=False)
