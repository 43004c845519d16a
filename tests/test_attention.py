"""Attention maps: one-pass models, timm parity, and the NumPy helpers."""

import functools

import numpy as np
import pytest

import keras_cait
from tests.support import TINY_BACKBONE, expected, reference_classifier, to_numpy

MAP_TOLERANCE = 1e-5  # timm's reference README: attention maps within 1e-5
OUTPUT_TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def _reference(name):
    return reference_classifier(name), expected(name)


def _images(count, seed):
    return np.random.default_rng(seed).normal(size=(count, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("name", ["tiny_token_head", "tiny_avg_headless", "cait_xxs24_224"])
def test_classifier_maps_match_timm(name):
    classifier, reference = _reference(name)
    prefix = "talking_head_attention_"
    blocks = sorted(int(key.rsplit("_", 1)[1]) for key in reference if key.startswith(prefix))
    outputs = classifier.get_attention_maps(reference["images"], indices=blocks)
    map_keys = sorted(k for k in reference if "attention" in k)
    assert sorted(k for k in outputs if "attention" in k) == map_keys
    for key in map_keys:
        assert outputs[key].shape == reference[key].shape, key
        np.testing.assert_allclose(outputs[key], reference[key], atol=MAP_TOLERANCE, rtol=0,
                                   err_msg=key)
    # The predictions come from the same pass and equal timm's head output.
    head_key = "logits" if classifier.num_classes else "pre_logits"
    np.testing.assert_allclose(outputs["predictions"], reference[head_key],
                               atol=OUTPUT_TOLERANCE, rtol=0)


def test_only_class_attention_by_default():
    # The maps' values (softmax rows): test_classifier_maps_match_timm.
    backbone = _reference("tiny_token_head")[0].backbone
    images = _images(3, seed=0)
    outputs = backbone.get_attention_maps(images)
    assert set(outputs) == {"features", "class_attention_0", "class_attention_1"}
    assert outputs["class_attention_0"].shape == (3, 4, 1, 1 + backbone.num_patches)
    np.testing.assert_allclose(outputs["features"], to_numpy(backbone(images)), atol=1e-5, rtol=0)


def test_one_forward_pass_and_predict_path_untouched():
    classifier = _reference("tiny_token_head")[0]
    backbone = classifier.backbone
    derived = classifier.attention_model(indices=[1])
    operations = derived._operations
    # No second pass through the whole backbone: each block is called once, in the graph.
    assert backbone not in operations
    for layer in backbone.layers[1:]:
        assert operations.count(layer) == 1, layer.name
    # The derived model shares the weights (the plain models compute no maps:
    # test_plain_forward_computes_no_attention_maps).
    assert {id(w) for w in derived.weights} == {id(w) for w in classifier.weights}
    images = _images(2, seed=1)
    outputs = classifier.get_attention_maps(images, indices=[1])
    np.testing.assert_allclose(outputs["predictions"], to_numpy(classifier(images)), atol=1e-5,
                               rtol=0)
    backbone_outputs = backbone.get_attention_maps(images, [1])
    for key in ("class_attention_0", "class_attention_1", "talking_head_attention_1"):
        np.testing.assert_allclose(outputs[key], backbone_outputs[key], atol=1e-6, rtol=0)


def test_attention_models_are_cached_and_do_not_change_the_weights():
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    before = [w.path for w in backbone.weights]
    first = backbone.attention_model(indices=[1, 0])
    assert set(first.output) == {"features", "class_attention_0", "class_attention_1",
                                 "talking_head_attention_0", "talking_head_attention_1"}
    assert backbone.attention_model(indices=(0, -1, 0)) is first
    assert backbone.attention_model(None) is first
    assert backbone.attention_model(2) is first  # the last two blocks
    last = backbone.attention_model(1)
    assert set(last.output) - set(first.output) == set()
    assert "talking_head_attention_0" not in last.output
    other = backbone.attention_model()
    assert other is not first
    assert set(other.output) == {"features", "class_attention_0", "class_attention_1"}
    # Saving after deriving: test_intermediates.py::test_backbone_still_saves_after_deriving.
    assert [w.path for w in backbone.weights] == before


def _ramp_attention(batch=2, heads=3, rows=2, columns=3):
    """Class attention whose patch entries are their row-major index."""
    attention = np.zeros((batch, heads, 1, 1 + rows * columns), "float32")
    attention[..., 0, 0] = 100.0  # the class token's own entry is dropped
    attention[..., 0, 1:] = np.arange(rows * columns)
    return attention * (1 + np.arange(heads)[None, :, None, None])


def test_class_attention_grid_is_row_major_without_the_class_token():
    grid = keras_cait.class_attention_grid(_ramp_attention(), (2, 3))
    assert grid.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(grid[0, 0], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(grid[1, 2], 3 * np.array([[0, 1, 2], [3, 4, 5]]))
    assert keras_cait.class_attention_grid(_ramp_attention()[0], (2, 3)).shape == (3, 2, 3)  # unbatched


def test_head_maps_upsample_each_patch_to_its_pixels():
    maps = keras_cait.head_maps(_ramp_attention(), (2, 3), image_size=(4, 9), resample="nearest")
    assert maps.shape == (2, 3, 4, 9)
    # Nearest: patch (r, c) covers pixels [2r:2r+2, 3c:3c+3].
    np.testing.assert_array_equal(maps[0, 0, 2:4, 3:6], 4.0)
    np.testing.assert_array_equal(maps[0, 0, 0:2, 6:9], 2.0)
    smooth = keras_cait.head_maps(_ramp_attention(), (2, 3), image_size=(20, 30))
    assert smooth.shape == (2, 3, 20, 30)
    assert smooth.min() >= 0.0 and smooth.max() <= 15.0 + 1e-4
    assert len(np.unique(smooth[0, 0])) > 6  # bilinear: a gradient, not squares


def test_saliency_is_head_averaged_and_normalised_and_flat_is_zero():
    attention = _ramp_attention()
    attention[1, 0, 0, 1:] = [0, 0, 0, 0, 9, 0]  # image 1: head 0 peaks at (1, 1)
    saliency = keras_cait.saliency_map(attention, (2, 3))
    assert saliency.shape == (2, 2, 3) and saliency.dtype == np.float32
    np.testing.assert_allclose(saliency[0], np.arange(6).reshape(2, 3) / 5, atol=1e-6)
    # Image 1: mean of heads [0,0,0,0,9,0], 2*ramp, 3*ramp -> (5*ramp + 9e4) / 3.
    expected_map = (5 * np.arange(6) + 9 * (np.arange(6) == 4)) / 3
    expected_map = (expected_map - expected_map.min()) / np.ptp(expected_map)
    np.testing.assert_allclose(saliency[1].ravel(), expected_map, atol=1e-6)
    upsampled = keras_cait.saliency_map(attention, (2, 3), image_size=64, resample="bicubic")
    assert upsampled.shape == (2, 64, 64)
    assert upsampled.min() == 0.0 and upsampled.max() == 1.0
    flat = keras_cait.saliency_map(np.full((1, 2, 1, 5), 0.2, "float32"), 2)
    np.testing.assert_array_equal(flat, np.zeros((1, 2, 2)))  # zero, not NaN


@pytest.mark.parametrize("call, message", [
    (lambda: keras_cait.class_attention_grid(np.zeros((4, 1, 10)), (3, 4)), "1, 13"),
    (lambda: keras_cait.class_attention_grid(np.zeros((4, 2, 10)), 3), "heads, 1, 10"),
    (lambda: keras_cait.upsample_maps(np.zeros((2, 2)), 4, resample="area"), "resample"),
    (lambda: keras_cait.upsample_maps(np.zeros((2, 2)), (0, 4)), "image_size"),
])
def test_helper_errors_name_the_argument(call, message):
    with pytest.raises(keras_cait.CaiTConfigError, match=message):
        call()


def test_plain_forward_computes_no_attention_maps(monkeypatch):
    """The backbone's own graph asks no block for its maps; the attention model asks every one."""
    classifier = reference_classifier("tiny_token_head")  # fresh: not yet traced
    asked = []
    for cls in (keras_cait.TalkingHeadsAttention, keras_cait.ClassAttention):
        def spy(self, inputs, return_attention=False, _original=cls.call, **kwargs):
            asked.append(return_attention)
            return _original(self, inputs, return_attention=return_attention, **kwargs)
        monkeypatch.setattr(cls, "call", spy)
    images = np.zeros((1,) + tuple(classifier.backbone.image_shape), "float32")
    classifier.predict(images, verbose=0)
    num_blocks = classifier.backbone.num_layers + classifier.backbone.num_class_attention_layers
    assert asked == [False] * num_blocks
    asked.clear()
    classifier.get_attention_maps(images)
    assert asked == [True] * num_blocks
