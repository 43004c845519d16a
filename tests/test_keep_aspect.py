"""Photos at their own aspect ratio on a model of any image size: the converter's
`keep_aspect_ratio`, `predict` on a list, collection runs and `predict --keep-aspect`."""

import numpy as np
import pytest

import keras_cait
from keras_cait.inference import batch_prediction
from keras_cait.inference.batch_prediction import BatchPredictor, SizeGroupingPredictor
from keras_cait_base.errors import CaiTConfigError, CaiTImageError
from keras_cait_cli import main as cli
from tests.support import TIMM, make_photos, to_numpy

TINY = str(TIMM / "tiny_token_head")  # 32x32, patch 8


def _converter(**kwargs):
    return keras_cait.CaiTImageConverter(image_size=32, keep_aspect_ratio=True, size_multiple=8,
                                         **kwargs)


def _keeping(backbone, num_classes=10):
    """A classifier on `backbone` whose converter keeps the aspect ratio."""
    preprocessor = keras_cait.CaiTImageClassifierPreprocessor(_converter())
    return keras_cait.CaiTImageClassifier(backbone, num_classes=num_classes, preprocessor=preprocessor)


def _photo(height, width, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype("uint8")


@pytest.fixture(scope="module")
def dynamic():
    return keras_cait.CaiTImageClassifier.from_preset(TINY, image_shape=(None, None, 3))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keep_aspect_photos")
    paths = make_photos(folder, 9)
    (folder / "z_broken.jpg").write_text("not an image")
    return [*paths, str(folder / "z_broken.jpg")]


@pytest.mark.parametrize("shape, expected", [
    ((60, 90), (32, 48)), ((90, 60), (48, 32)),  # shorter side 32, longer 48
    ((61, 91), (32, 48)),  # int(32 * 91 / 61) = 47, rounded to 48
    ((40, 40), (32, 32)), ((20, 200), (32, 320)),
])
def test_shorter_side_resized_no_crop_sides_multiples(shape, expected):
    output = to_numpy(_converter()(_photo(*shape)))
    assert output.shape == (*expected, 3)
    # The same resize as the cropping converter's, before its crop.
    plain = keras_cait.CaiTImageConverter(image_size=32)
    if expected[0] == expected[1]:
        np.testing.assert_allclose(output, to_numpy(plain(_photo(*shape))), atol=1e-6)


def test_crop_pct_sets_the_shorter_side_as_timm():
    converter = keras_cait.CaiTImageConverter(image_size=224, crop_pct=0.875, keep_aspect_ratio=True,
                                              size_multiple=16)
    # timm resizes the shorter side to floor(224 / 0.875) = 256 before its crop.
    assert to_numpy(converter(_photo(300, 451))).shape == (256, 384, 3)


def test_config_round_trip_and_bad_arguments():
    converter = _converter()
    again = keras_cait.CaiTImageConverter.from_config(converter.get_config())
    assert (again.keep_aspect_ratio, again.size_multiple) == (True, 8)
    assert converter.compute_output_shape((2, 50, 70, 3)) == (2, None, None, 3)
    with pytest.raises(CaiTConfigError, match="keep_aspect_ratio"):
        keras_cait.CaiTImageConverter(keep_aspect_ratio="yes")
    with pytest.raises(CaiTConfigError, match="size_multiple"):
        keras_cait.CaiTImageConverter(size_multiple=0)


def test_predict_on_a_list_runs_each_photo_as_one_array_and_keeps_the_order(dynamic, monkeypatch):
    classifier = _keeping(dynamic.backbone)
    photos = [_photo(60, 90, 1), _photo(90, 60, 2), _photo(61, 91, 3), _photo(40, 40, 4)]
    seen, call = [], keras_cait.CaiTImageConverter.__call__

    def recorded(self, inputs, *args, **kwargs):
        seen.append(type(inputs))
        return call(self, inputs, *args, **kwargs)
    monkeypatch.setattr(keras_cait.CaiTImageConverter, "__call__", recorded)
    got = classifier.predict(photos, verbose=0)
    # One array per photo: never one ragged batch of the list (`tf.ragged.constant` is slow).
    assert len(seen) == 4 and not any("Ragged" in kind.__name__ for kind in seen), seen
    expected = np.concatenate([to_numpy(classifier(to_numpy(_converter()(p))[None])) for p in photos])
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(CaiTImageError, match="different sizes"):
        classifier.get_attention_maps(photos)


def test_collection_runs_one_size_per_batch_in_input_order(dynamic, photos, monkeypatch, tmp_path):
    shapes, paddings, outputs = [], [], BatchPredictor.outputs

    def recorded(self, images, batch_size=None):
        shapes.append(np.shape(images))
        paddings.append(batch_size)
        return outputs(self, images, batch_size)
    monkeypatch.setattr(BatchPredictor, "outputs", recorded)
    records = list(keras_cait.predict_files(photos, TINY, top=3, batch_size=4, keep_aspect_ratio=True))
    assert [r["image"] for r in records] == photos
    assert records[-1]["error"].startswith(f"'{photos[-1]}'")
    # Each pass is one stacked size of at most the batch size; photos of one size share.
    assert all(len(shape) == 4 and shape[0] <= 4 for shape in shapes)
    assert sum(shape[0] for shape in shapes) == len(photos)
    assert len(shapes) < len(photos)
    # A short batch is padded to the next power of two, not to the batch size.
    assert paddings == [{1: 1, 2: 2, 3: 4, 4: 4}[shape[0]] for shape in shapes]
    converter = keras_cait.CaiTImageConverter.from_config(dict(
        dynamic.preprocessor.image_converter.get_config(), keep_aspect_ratio=True, size_multiple=8))
    sizes = set()
    for record, path in zip(records[:-1], photos[:-1]):
        image = to_numpy(converter(keras_cait.load_image(path)))[None]
        sizes.add(image.shape)
        logits = to_numpy(dynamic(image))[0]
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        for prediction in record["predictions"]:
            assert prediction["probability"] == pytest.approx(
                probabilities[prediction["class_id"]], abs=1e-5)
    assert len(sizes) > 1  # the photos really come in several sizes
    # `predict --keep-aspect` writes the same records.
    output = tmp_path / "records.jsonl"
    status = cli.main(["predict", *photos, "--preset", TINY, "--output", str(output),
                       "--top", "3", "--batch-size", "4", "--keep-aspect"])
    assert status == cli.FAILED_INPUTS  # the broken file
    assert keras_cait.read_records(output) == records


def test_a_fixed_size_model_is_refused():
    fixed = keras_cait.CaiTImageClassifier.from_preset(TINY)
    keeping = _keeping(fixed.backbone, num_classes=fixed.num_classes)
    with pytest.raises(CaiTConfigError, match=r"keeps the aspect ratio.*\(None, None, 3\)"):
        keeping.predict([_photo(60, 90), _photo(40, 40)], verbose=0)
    with pytest.raises(CaiTConfigError, match=r"image_shape=\(None, None, 3\)"):
        SizeGroupingPredictor(fixed)
    with pytest.raises(CaiTConfigError, match="engine='keras'"):
        batch_prediction.make_predictor(TINY, engine="onnxruntime", keep_aspect_ratio=True)
