"""Misspelt keyword arguments name the nearest valid one; photo lists of any sizes work."""

import numpy as np
import pytest

import keras_cait
from keras_cait.model_extensions.image_lists import stack_images
from keras_cait_base.errors import CaiTConfigError, CaiTImageError
from tests.support import to_numpy

P = "cait_xxs24_224"
C, B = keras_cait.CaiTImageClassifier, keras_cait.CaiTBackbone


def _mean(wrong, right):
    return rf"unexpected keyword argument '{wrong}'\. Did you mean '{right}'\?"


@pytest.mark.parametrize("call, message", [
    (lambda: C.from_preset(P, num_class=3), _mean("num_class", "num_classes")),
    (lambda: B.from_preset(P, drop_path=0.1), _mean("drop_path", "drop_path_rate")),
    (lambda: C.from_preset(P, load_weight=False), _mean("load_weight", "load_weights")),
    (lambda: B.from_preset(P, load_weight=False), _mean("load_weight", "load_weights")),
    (lambda: keras_cait.CaiTImageClassifierPreprocessor.from_preset(P, image_sise=96),
     _mean("image_sise", "image_size")),
    (lambda: keras_cait.CaiTImageConverter.from_preset(P, crop_pc=0.9), _mean("crop_pc", "crop_pct")),
    (lambda: keras_cait.load_for_finetuning(P, 3, drop_path=0.1), _mean("drop_path", "drop_path_rate")),
    (lambda: keras_cait.finetuning_optimizer(None, 1e-4, beta1=0.8), _mean("beta1", "beta_1")),
    # Far from any valid name: the valid names are listed.
    (lambda: C.from_preset(P, nonsense_kwarg=1),
     r"'nonsense_kwarg'\. Valid keyword arguments: .*num_classes"),
])
def test_a_wrong_keyword_argument_names_the_valid_ones(call, message):
    with pytest.raises(CaiTConfigError, match=message):
        call()


def test_photos_of_any_sizes_in_the_converter_predict_and_attention_maps(tiny_classifier):
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, shape, dtype="uint8") for shape in ((40, 50, 3), (60, 30, 3))]
    converter = keras_cait.CaiTImageConverter(image_size=32)
    outputs = converter(photos)
    assert isinstance(outputs, list) and len(outputs) == 2  # as KerasHub's converters
    for photo, output in zip(photos, outputs):
        np.testing.assert_array_equal(to_numpy(output), to_numpy(converter(photo)))
    stacked = converter([photos[0], photos[0]])  # one size: stacked
    assert tuple(stacked.shape) == (2, 32, 32, 3)
    np.testing.assert_allclose(to_numpy(stacked), to_numpy(converter(np.stack(photos[:1] * 2))),
                               atol=1e-6)
    assert stack_images(outputs).shape == (2, 32, 32, 3)
    logits = tiny_classifier.predict(photos, verbose=0)
    inputs = np.stack([to_numpy(tiny_classifier.preprocessor.image_converter(p)) for p in photos])
    one_by_one = to_numpy(tiny_classifier(inputs))
    np.testing.assert_allclose(logits, one_by_one, atol=1e-5)
    maps = tiny_classifier.get_attention_maps(photos)
    np.testing.assert_allclose(maps["predictions"], one_by_one, atol=1e-5)
    assert maps["class_attention_0"].shape[0] == 2
    with pytest.raises(CaiTImageError, match=r"different sizes \[\(40, 50, 3\), \(60, 30, 3\)\]"):
        tiny_classifier.get_attention_maps(photos, preprocess=False)
