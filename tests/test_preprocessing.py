"""CaiTImageConverter / CaiTImageClassifierPreprocessor: timm's evaluation
transform, on every backend, in tf.data and in `predict()`."""

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import keras_cait
from keras_cait_base.image_geometry import center_crop_offset, resized_shape
from tests.support import IMAGES, TIMM, TINY_BACKBONE, to_numpy

PHOTOS = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",  # greyscale
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
}
MEAN = np.array(keras_cait.models.cait_image_converter.IMAGENET_MEAN, "float32")
STD = np.array(keras_cait.models.cait_image_converter.IMAGENET_STD, "float32")


@pytest.fixture(scope="module")
def photos():
    return {name: keras_cait.load_image(IMAGES / f) for name, f in PHOTOS.items()}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(TIMM / "preprocess.npz"))


def mad(a, b):
    return float(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64")).mean())


def timm_resized_shape(height, width, size, crop_pct):
    """timm/torchvision's float formulas, for comparison."""
    scale = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    if scale[0] == scale[1]:  # torchvision Resize(int)
        if width <= height:
            return int(scale[0] * height / width), scale[0]
        return scale[0], int(scale[0] * width / height)
    ratio = min(height / scale[0], width / scale[1])  # timm ResizeKeepRatio(longest=0)
    return round(height / ratio), round(width / ratio)


def pil_eval_transform(image, size, crop_pct):
    """timm's eval transform written with PIL, for sizes the reference file lacks."""
    new = timm_resized_shape(*image.shape[:2], size, crop_pct)
    pil = Image.fromarray(image).resize((new[1], new[0]), Image.BICUBIC)
    top, left = (int(round((n - s) / 2)) for n, s in zip(new, size))
    pil = pil.crop((left, top, left + size[1], top + size[0]))
    return (np.asarray(pil, "float32") / 255.0 - MEAN) / STD


# --- parity with timm's reference transform ---------------------------------


@pytest.mark.parametrize(
    "key, size, crop_pct",
    [("224", 224, 1.0), ("384", 384, 1.0), ("224_crop0875", 224, 0.875)],
)
def test_matches_timm_reference(photos, reference, key, size, crop_pct):
    converter = keras_cait.CaiTImageConverter(image_size=size, crop_pct=crop_pct)
    errors = {}
    for name, image in photos.items():
        out = to_numpy(converter(image))
        expected = reference[f"{name}_{key}"]
        assert out.shape == expected.shape == (size, size, 3)
        assert out.dtype == np.float32
        errors[name] = mad(out, expected)
    print(f"{keras.config.backend()} {key} MAD:", errors)
    assert max(errors.values()) < 0.01, errors


def test_crop_pct_is_honoured_and_the_pil_transform_matches_timm(photos, reference):
    # The 0.875 reference (the crop_pct=0.875 converter matches it: test_matches_timm_reference)
    # is far from the crop_pct=1.0 transform; the test's PIL transform reproduces it.
    full = keras_cait.CaiTImageConverter(image_size=224, crop_pct=1.0)
    for name in ("chelsea", "astronaut", "rocket"):
        expected = reference[f"{name}_224_crop0875"]
        assert mad(to_numpy(full(photos[name])), expected) > 0.05
        assert mad(pil_eval_transform(photos[name], (224, 224), 0.875), expected) < 1e-6


def test_greyscale_photo(photos):
    # camera.png is mode "L": 1 channel or RGB-expanded, the same grey in each channel.
    grey = np.asarray(Image.open(IMAGES / "camera.png"))[..., None]
    assert grey.shape == (512, 512, 1)
    converter = keras_cait.CaiTImageConverter(image_size=224)
    out = to_numpy(converter(grey))
    np.testing.assert_allclose(out, to_numpy(converter(photos["camera"])), atol=1e-6)
    pixels = out * STD + MEAN
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-5)


@pytest.mark.parametrize("size, crop_pct", [((160, 224), 1.0), ((224, 128), 0.9)])
def test_non_square_image_size(photos, size, crop_pct):
    converter = keras_cait.CaiTImageConverter(image_size=size, crop_pct=crop_pct)
    for name in ("chelsea", "astronaut"):
        out = to_numpy(converter(photos[name]))
        assert out.shape == size + (3,)
        assert mad(out, pil_eval_transform(photos[name], size, crop_pct)) < 0.01


# --- the resize/crop arithmetic ----------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    size=st.tuples(st.integers(1, 600), st.integers(1, 600))
    | st.integers(1, 600).map(lambda s: (s, s)),
    crop_pct=st.sampled_from([1.0, 0.95, 0.9, 0.875, 0.5]),
)
def test_resized_shape_equals_timm_formulas(height, width, size, crop_pct):
    new = resized_shape(height, width, size, crop_pct)
    assert new == timm_resized_shape(height, width, size, crop_pct)
    assert all(isinstance(v, int) for v in new)
    # The resized image covers the crop.
    assert new[0] >= size[0] and new[1] >= size[1]


def test_resized_shape_on_tensors_equals_ints():
    # The path taken when the image size is only known at run time.
    backend = keras_cait.models.cait_image_converter.DynamicBackend()
    for height, width, size in [(300, 451, (224, 224)), (451, 300, (224, 224)),
                                (300, 451, (160, 224)), (427, 640, (224, 128)), (99, 7, (33, 17))]:
        tensors = resized_shape(keras.ops.convert_to_tensor(height),
                                keras.ops.convert_to_tensor(width), size, 0.875, backend)
        expected = resized_shape(height, width, size, 0.875)
        assert tuple(int(to_numpy(v)) for v in tensors) == expected


def test_center_crop_offset_rounds_like_python():
    for size in range(10, 60):
        for crop in range(1, size + 1):
            assert center_crop_offset(size, crop) == int(round((size - crop) / 2))


# --- input forms -----------------------------------------------------------------


def test_input_forms():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 41, 57, 3), dtype=np.uint8)
    converter = keras_cait.CaiTImageConverter(image_size=(24, 32))
    batch = to_numpy(converter(images))
    assert batch.shape == (2, 24, 32, 3)
    # One image is the batch's first entry; float input is the same as uint8.
    np.testing.assert_allclose(to_numpy(converter(images[0])), batch[0], atol=1e-6)
    np.testing.assert_allclose(to_numpy(converter(images.astype("float32"))), batch, atol=1e-6)
    # The output follows the layer's dtype policy.
    half = keras_cait.CaiTImageConverter(image_size=(24, 32), dtype="bfloat16")
    assert keras.backend.standardize_dtype(half(images).dtype) == "bfloat16"
    # Alpha is dropped.
    alpha = rng.integers(0, 256, (2, 41, 57, 1), dtype=np.uint8)
    rgba = np.concatenate([images, alpha], axis=-1)
    np.testing.assert_allclose(to_numpy(converter(rgba)), batch, atol=1e-6)


def test_output_range_and_statistics():
    # A constant image stays flat: (value / 255 - mean) / std exactly.
    image = np.full((50, 70, 3), 128, np.uint8)
    out = to_numpy(keras_cait.CaiTImageConverter(image_size=16)(image))
    np.testing.assert_allclose(out, np.broadcast_to((128 / 255 - MEAN) / STD, out.shape), atol=1e-5)
    # Bicubic overshoot at an upsampled step is clipped to [0, 255] first, as PIL does.
    edges = np.zeros((10, 10, 3), np.uint8)
    edges[:, 5:] = 255
    out = to_numpy(keras_cait.CaiTImageConverter(image_size=40)(edges))
    pixels = out * STD + MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert pixels.min() < 1e-5 and pixels.max() > 1 - 1e-5  # black and white kept


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=(224, 224, 3)), "image_size"),
        (dict(image_size="224"), "image_size"),
        (dict(crop_pct=0.0), "crop_pct"),
        (dict(crop_pct=1.2), "crop_pct"),
        (dict(interpolation="lanczos7"), "interpolation"),
        (dict(mean=(0.5, 0.5)), "mean"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
    ],
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(keras_cait.CaiTConfigError, match=word):
        keras_cait.CaiTImageConverter(**kwargs)


@pytest.mark.parametrize("shape", [(8, 8), (2, 2, 8, 8, 3), (8, 8, 2), (8, 8, 5)])
def test_bad_image_shapes(shape):
    converter = keras_cait.CaiTImageConverter(image_size=4)
    with pytest.raises(keras_cait.CaiTImageError, match=r"shape|channels"):
        converter(np.zeros(shape, np.uint8))


# --- config, serialization, presets -----------------------------------------------


def test_config_round_trip():
    kwargs = dict(image_size=(96, 128), crop_pct=0.9, interpolation="bilinear",
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), antialias=False)
    converter = keras_cait.CaiTImageConverter(**kwargs, name="my_converter")
    config = converter.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    restored = keras_cait.CaiTImageConverter.from_config(config)
    image = np.random.default_rng(1).integers(0, 256, (100, 150, 3), np.uint8)
    np.testing.assert_allclose(to_numpy(restored(image)), to_numpy(converter(image)), atol=1e-6)
    # `image_size` stays settable on the preprocessor, as on KerasHub's.
    preprocessor = keras_cait.CaiTImageClassifierPreprocessor(restored)
    preprocessor.image_size = (64, 48)
    assert preprocessor.image_converter.get_config()["image_size"] == (64, 48)
    assert to_numpy(preprocessor(image)).shape == (64, 48, 3)


def test_save_to_preset_round_trip(tmp_path):
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    converter = keras_cait.CaiTImageConverter(image_size=32, crop_pct=0.875)
    preprocessor = keras_cait.CaiTImageClassifierPreprocessor(converter)
    backbone.save_to_preset(tmp_path)
    preprocessor.save_to_preset(tmp_path)
    assert (tmp_path / "preprocessor.json").exists()
    assert (tmp_path / "image_converter.json").exists()
    loaded = keras_cait.CaiTImageClassifierPreprocessor.from_preset(str(tmp_path))
    assert type(loaded) is keras_cait.CaiTImageClassifierPreprocessor
    assert loaded.image_converter.get_config() == converter.get_config()
    loaded_converter = keras_cait.CaiTImageConverter.from_preset(str(tmp_path))
    assert loaded_converter.get_config() == converter.get_config()
    image = np.random.default_rng(2).integers(0, 256, (45, 60, 3), np.uint8)
    np.testing.assert_allclose(to_numpy(loaded(image)), to_numpy(preprocessor(image)), atol=1e-6)


# --- inside pipelines ---------------------------------------------------------------


def test_tf_data_map_of_images_of_unknown_size():
    """Batched maps, with labels: KerasHub's harness (test_keras_hub_harness.py)."""
    tf = pytest.importorskip("tensorflow")
    images = np.random.default_rng(3).integers(0, 256, (3, 40, 57, 3), dtype=np.uint8)
    converter = keras_cait.CaiTImageConverter(image_size=32, crop_pct=0.875)
    eager = to_numpy(converter(images))

    def generate():
        yield from images

    spec = tf.TensorSpec((None, None, 3), tf.uint8)
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec).map(converter)
    assert ds.element_spec.shape.as_list() == [32, 32, 3]
    np.testing.assert_allclose(np.stack([x.numpy() for x in ds]), eager, atol=1e-5)
    # Unknown channels in a traced graph: a clear error (re-raised by AutoGraph).
    spec = tf.TensorSpec((None, None, None), tf.uint8)
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    with pytest.raises(Exception, match="(?s)CaiTImageError.*channels=3"):
        ds.map(converter)

