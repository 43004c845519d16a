"""Position-embedding resampling against timm's `resample_abs_pos_embed`."""

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

import keras_cait
from keras_cait.convert.resample import resample_position_embedding, resize_weights
from keras_cait_base.errors import CaiTConfigError, CaiTWeightsError
from tests.support import TIMM, reference_classifier, to_numpy

CASES = {
    "14_to_24": ((14, 14), (24, 24)),
    "14_to_10": ((14, 14), (10, 10)),
    "24_to_14": ((24, 24), (14, 14)),
    "14_to_16x20": ((14, 14), (16, 20)),
}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(TIMM / "pos_embed_resample.npz"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_timm(reference, case):
    out = resample_position_embedding(reference[f"{case}_in"], *CASES[case])
    expected = reference[f"{case}_out"]
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_plain_bicubic_coefficient_would_not_match(reference):
    """PyTorch's non-antialiased coefficient (-0.75) misses timm by far more than 1e-5."""
    grid = reference["14_to_24_in"][0].reshape(14, 14, -1)
    for a, close in ((-0.5, True), (-0.75, False)):
        weights = resize_weights(14, 24, a)
        out = np.einsum("ri,icd->rcd", weights, grid)
        out = np.einsum("cj,rjd->rcd", weights, out).reshape(1, 576, -1)
        error = np.abs(out - reference["14_to_24_out"]).max()
        assert (error < 1e-5) == close, (a, error)


def test_weight_rows_are_normalised_and_local():
    for old, new in ((14, 24), (24, 14), (7, 3), (5, 5)):
        np.testing.assert_allclose(resize_weights(old, new).sum(axis=1), 1.0, atol=1e-12)
    # Downsampling by 2 widens the support to 4 input pixels on each side.
    assert np.count_nonzero(resize_weights(24, 12)[6]) == 8
    np.testing.assert_allclose(resize_weights(9, 9), np.eye(9), atol=1e-12)


def test_same_grid_is_identity_constant_stays_constant_and_2d_accepted():
    pos = np.random.default_rng(0).standard_normal((1, 12, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample_position_embedding(pos, (3, 4), (3, 4)), pos)
    assert resample_position_embedding(pos[0], (3, 4), (6, 2)).shape == (1, 12, 8)
    constant = np.full((1, 20, 3), 0.25, np.float32)
    out = resample_position_embedding(constant, (4, 5), (7, 3))
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_bad_inputs():
    pos = np.zeros((1, 16, 4), np.float32)
    bad = pos.copy()
    bad[0, 0, 0] = np.nan
    for arguments, error, match in (
        ((pos, (3, 3), (4, 4)), CaiTWeightsError, "16 tokens.*needs 9"),
        ((np.zeros((2, 16, 4)), (4, 4), (2, 2)), CaiTWeightsError, r"\(1, num_patches, dim\)"),
        ((pos, (4, 4), (0, 3)), CaiTConfigError, "new_grid"),
        ((pos, 16, (2, 2)), CaiTConfigError, "old_grid"),
        ((bad, (4, 4), (2, 2)), CaiTWeightsError, "non-finite"),
    ):
        with pytest.raises(error, match=match):
            resample_position_embedding(*arguments)


# --- Loading and saving models at another resolution -------------------------

TINY_TIMM = TIMM / "tiny_token_head"  # 32x32 images, patch 8: a 4x4 grid


def _embedding(model):
    backbone = getattr(model, "backbone", model)
    return to_numpy(backbone.get_layer("patch_embedding").position_embedding)


def _check_other_weights_equal(model, reference):
    got = {v.path: v for v in model.weights}
    for variable in reference.weights:
        if not variable.path.endswith("position_embedding"):
            np.testing.assert_array_equal(
                to_numpy(got[variable.path]), to_numpy(variable), err_msg=variable.path)


@pytest.mark.parametrize("image_shape", [(48, 48, 3), (40, 56, 3)])
def test_from_preset_timm_directory_at_new_resolution(image_shape):
    state_dict = load_file(TINY_TIMM / "model.safetensors")
    grid = (image_shape[0] // 8, image_shape[1] // 8)
    expected = resample_position_embedding(state_dict["pos_embed"], (4, 4), grid)
    classifier = keras_cait.CaiTImageClassifier.from_preset(str(TINY_TIMM), image_shape=image_shape)
    assert classifier.backbone.image_shape == image_shape
    np.testing.assert_allclose(_embedding(classifier), expected, atol=1e-6)
    _check_other_weights_equal(classifier, reference_classifier("tiny_token_head"))
    # Its logits against timm's: test_dynamic_image_size.py::test_equals_the_build_time_*.
    backbone = keras_cait.CaiTBackbone.from_preset(str(TINY_TIMM), image_shape=image_shape)
    np.testing.assert_allclose(_embedding(backbone), expected, atol=1e-6)


def test_keras_preset_directory_at_new_resolution_and_round_trip(tiny_preset, tmp_path):
    reference = reference_classifier("tiny_token_head")
    image_shape = (24, 40, 3)
    expected = resample_position_embedding(_embedding(reference), (4, 4), (3, 5))
    classifier = keras_cait.CaiTImageClassifier.from_preset(tiny_preset, image_shape=image_shape)
    np.testing.assert_allclose(_embedding(classifier), expected, atol=1e-6)
    _check_other_weights_equal(classifier, reference)

    # Saving the resampled model as a preset and loading it back keeps the embedding.
    classifier.save_to_preset(str(tmp_path / "resampled"))
    again = keras_cait.CaiTImageClassifier.from_preset(str(tmp_path / "resampled"))
    assert again.backbone.image_shape == image_shape
    np.testing.assert_array_equal(_embedding(again), _embedding(classifier))


def test_with_image_shape_copies_and_resamples():
    reference = reference_classifier("tiny_token_head")
    resized = keras_cait.with_image_shape(reference, (56, 32, 3))
    assert type(resized) is type(reference) and resized.backbone.grid_size == (7, 4)
    expected = resample_position_embedding(_embedding(reference), (4, 4), (7, 4))
    np.testing.assert_array_equal(_embedding(resized), expected)
    _check_other_weights_equal(resized, reference)
    # The same grid copies the embedding unchanged.
    backbone = keras_cait.with_image_shape(reference.backbone, (32, 32, 3))
    np.testing.assert_array_equal(_embedding(backbone), _embedding(reference))
    with pytest.raises(CaiTConfigError, match="height, width, 3"):
        keras_cait.with_image_shape(reference, (64, 64, 1))
    with pytest.raises(CaiTConfigError, match="CaiTBackbone"):
        keras_cait.with_image_shape(keras.Sequential([keras.layers.Dense(1)]), (64, 64, 3))
